//! The policy set in service and what the newest reload attempts said.
//! Shared by the server (which reads it) and the reloader (the only writer).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::policy_set::PolicySet;

/// Why the newest reload attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    pub at: SystemTime,
    /// The policy that failed, when the failure was one policy's.
    pub policy: Option<String>,
    pub message: String,
}

/// Counters and the newest failure, for `GET /policies`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Time of the newest attempt.
    pub last_attempt: Option<SystemTime>,
    /// Set while the newest attempt failed; cleared by a later success.
    pub last_error: Option<LoadFailure>,
    pub succeeded: u64,
    pub failed: u64,
    pub unchanged: u64,
    pub modules_compiled: u64,
    pub modules_reused: u64,
    /// Modules deserialized from the on-disk cache.
    pub modules_from_disk_cache: u64,
}

/// The current snapshot (swapped whole) and the reload status.
pub struct PolicyStore {
    current: ArcSwap<PolicySet>,
    status: Mutex<ReloadStatus>,
}

impl PolicyStore {
    /// A store serving `initial`.
    pub fn new(initial: PolicySet) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(initial),
            status: Mutex::new(ReloadStatus::default()),
        })
    }

    /// The set in service. Take it once per request and keep it for the
    /// whole request, so the request is answered by one generation.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Puts `set` in service in one atomic step. Requests that already hold
    /// the previous set finish on it.
    pub fn swap(&self, set: PolicySet) {
        self.current.store(Arc::new(set));
    }

    /// A copy of the reload status.
    pub fn status(&self) -> ReloadStatus {
        self.lock_status().clone()
    }

    /// Updates the reload status.
    pub fn update_status(&self, update: impl FnOnce(&mut ReloadStatus)) {
        update(&mut self.lock_status());
    }

    fn lock_status(&self) -> MutexGuard<'_, ReloadStatus> {
        // The status is plain data: a panic while it was held cannot leave
        // it inconsistent in a way worse than showing it.
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
