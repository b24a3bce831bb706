//! The subcommands.

pub mod certs;
pub mod eval;
pub mod serve;
pub mod test;
