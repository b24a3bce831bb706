//! What a policy call is allowed: a memory cap, a bounded log, and a WASI
//! context that grants nothing (no files, network, environment or args).

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::portcullis::policy::host::Host as HostImports;
use crate::bindings::portcullis::policy::types::{Host as TypesHost, LogLevel};
use crate::log_text::LogText;

/// State of one store: one policy call. Dropped when the call ends.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) memory: MemoryCap,
    pub(crate) log: GuestLog,
}

impl StoreState {
    pub(crate) fn new(wasi: WasiCtx, memory: MemoryCap, log: GuestLog) -> Self {
        Self {
            wasi,
            table: ResourceTable::new(),
            memory,
            log,
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Bytes of a policy's stderr kept per call (a panic message lands there).
const STDERR_CAPTURE: usize = 8 * 1024;
/// Log lines a policy may emit per call; further lines are dropped.
const LOG_LINES_PER_CALL: u32 = 32;
/// Bytes of one log line kept; the rest is cut.
const LOG_LINE_MAX: usize = 1024;

/// The policy exceeded its memory cap. Returned from the limiter so that the
/// failed call carries this type, not a generic trap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (wanted {desired} bytes)")]
pub struct MemoryLimitExceeded {
    /// The cap.
    pub limit: usize,
    /// What the policy asked for.
    pub desired: usize,
}

/// The per-call memory cap, as a wasmtime resource limiter.
pub struct MemoryCap {
    limit: usize,
}

impl MemoryCap {
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            return Err(MemoryLimitExceeded {
                limit: self.limit,
                desired,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a policy needs few. Refusing
        // growth past this bound stops a table-based memory bomb.
        Ok(desired <= 100_000)
    }
}

/// A policy's log output for one call: tagged with the policy's name,
/// rate-limited and size-capped.
pub struct GuestLog {
    policy: Arc<str>,
    emitted: u32,
}

impl GuestLog {
    pub fn new(policy: Arc<str>) -> Self {
        Self { policy, emitted: 0 }
    }

    fn emit(&mut self, level: LogLevel, message: &str) {
        self.emitted = self.emitted.saturating_add(1);
        if self.emitted > LOG_LINES_PER_CALL {
            if self.emitted == LOG_LINES_PER_CALL + 1 {
                tracing::warn!(policy = %self.policy, "policy log limit reached; further lines dropped");
            }
            return;
        }
        // A policy may log what a request contains: escaped, so a newline
        // in it cannot forge a line of the host's log.
        let message = LogText(truncate_utf8(message, LOG_LINE_MAX));
        let policy = &*self.policy;
        match level {
            LogLevel::Trace => tracing::trace!(policy, "{message}"),
            LogLevel::Debug => tracing::debug!(policy, "{message}"),
            LogLevel::Info => tracing::info!(policy, "{message}"),
            LogLevel::Warn => tracing::warn!(policy, "{message}"),
            LogLevel::Error => tracing::error!(policy, "{message}"),
        }
    }
}

impl HostImports for StoreState {
    fn log(&mut self, level: LogLevel, message: String) {
        self.log.emit(level, &message);
    }
}

impl TypesHost for StoreState {}

/// Clocks that never move: a decision must not depend on when it is made
/// (and a policy cannot measure the host to time side channels).
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// Largest request for random bytes a policy may make (a hash map seed
/// needs 16).
const MAX_RANDOM_BYTES: u64 = 4096;

/// A WASI context granting nothing: no preopened directories, no
/// environment, no arguments, no network, stdin empty, stdout discarded,
/// frozen clocks, and "random" bytes from a fixed seed, so the same request
/// always gets the same decision. Stderr is captured (bounded) so a panic
/// message can be reported.
pub fn wasi_context() -> (WasiCtx, MemoryOutputPipe) {
    use rand::SeedableRng as _;
    let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
    let ctx = WasiCtx::builder()
        .stdout(wasmtime_wasi::p2::pipe::SinkOutputStream)
        .stderr(stderr.clone())
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .secure_random(rand::rngs::StdRng::seed_from_u64(0))
        .insecure_random(rand::rngs::StdRng::seed_from_u64(0))
        .insecure_random_seed(0)
        .max_random_size(MAX_RANDOM_BYTES)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    (ctx, stderr)
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }

    #[test]
    fn memory_cap_refuses_growth_past_the_limit() {
        use wasmtime::ResourceLimiter;
        let mut cap = MemoryCap::new(1 << 20);
        assert!(matches!(cap.memory_growing(0, 1 << 20, None), Ok(true)));
        let err = cap
            .memory_growing(0, 2 << 20, None)
            .expect_err("growth past the cap must fail");
        let typed = err
            .downcast_ref::<MemoryLimitExceeded>()
            .expect("the error is typed");
        assert_eq!(typed.limit, 1 << 20);
        assert_eq!(typed.desired, 2 << 20);
    }
}
