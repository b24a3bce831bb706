//! The subcommands.

pub mod certs;
pub mod eval;
pub mod new;
pub mod serve;
pub mod test;
