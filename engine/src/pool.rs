//! The evaluation pool: policy calls run on threads of their own, one per
//! core, not on the runtime that serves the network.
//!
//! A policy is CPU work that yields only on epoch ticks (every
//! millisecond). On the network's workers it would hold a worker for up to
//! a tick between polls, delaying every connection that worker owns; here
//! the network's workers stay free to accept, read and answer, and the
//! operating system shares the cores between the two pools. How many
//! reviews may be evaluated or wait at once is bounded by the caller (the
//! server's evaluation limiter); the pool only runs them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// Why the pool could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the policy evaluation threads")]
pub struct PoolError(#[source] std::io::Error);

/// Why a task on the pool gave no result.
#[derive(Debug, thiserror::Error)]
#[error("the evaluation task ended without a result")]
pub struct TaskError(#[source] tokio::task::JoinError);

/// Threads that run policy evaluations.
#[derive(Debug)]
pub struct EvalPool {
    /// `None` only while dropping.
    runtime: Option<Runtime>,
    threads: usize,
}

impl EvalPool {
    /// A pool of `threads` threads (at least one), named
    /// `portcullis-eval`.
    ///
    /// # Errors
    /// When the threads cannot be started.
    pub fn new(threads: usize) -> Result<Self, PoolError> {
        let threads = threads.max(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("portcullis-eval")
            .enable_time()
            .build()
            .map_err(PoolError)?;
        Ok(Self {
            runtime: Some(runtime),
            threads,
        })
    }

    /// A pool with one thread per core.
    ///
    /// # Errors
    /// When the threads cannot be started.
    pub fn per_core() -> Result<Self, PoolError> {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// How many threads the pool runs.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on the pool; awaiting the result does not tie up the
    /// caller's runtime. Dropping the returned future cancels the work
    /// (a client that went away stops its evaluation).
    pub fn run<F>(&self, work: F) -> Evaluating<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = match &self.runtime {
            Some(runtime) => runtime.spawn(work),
            // Unreachable: the runtime is taken only in `drop`.
            None => tokio::spawn(work),
        };
        Evaluating { handle }
    }

    /// Runs `work` on the pool with no one waiting for it: it runs to its
    /// end (policy calls end at their deadlines), or until the pool stops.
    /// For work that follows an answer, such as shadow evaluations.
    pub fn detach<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(work)),
            // Unreachable: the runtime is taken only in `drop`.
            None => drop(tokio::spawn(work)),
        }
    }
}

impl Drop for EvalPool {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed on an async
        // thread (where the server's drain ends): let the threads stop by
        // themselves; running evaluations end at their deadlines.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Work running on the pool. Aborted when dropped.
#[derive(Debug)]
pub struct Evaluating<T> {
    handle: JoinHandle<T>,
}

impl<T> Future for Evaluating<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.handle).poll(cx).map_err(TaskError)
    }
}

impl<T> Drop for Evaluating<T> {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_pools_threads() {
        let pool = EvalPool::new(2).expect("pool");
        assert_eq!(pool.threads(), 2);
        let name = pool
            .run(async { std::thread::current().name().map(str::to_string) })
            .await
            .expect("a result");
        assert_eq!(name.as_deref(), Some("portcullis-eval"));
        let caller = std::thread::current().name().map(str::to_string);
        assert_ne!(caller.as_deref(), Some("portcullis-eval"));
    }

    #[tokio::test]
    async fn dropping_the_result_cancels_the_work() {
        let pool = EvalPool::new(1).expect("pool");
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let work = pool.run(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = done.send(());
        });
        drop(work);
        // Cancelled, the task drops its sender unsent; run on, it sends.
        let outcome = tokio::time::timeout(Duration::from_secs(10), finished)
            .await
            .expect("the task neither finished nor was cancelled");
        assert!(outcome.is_err(), "cancelled work ran on");
    }

    #[tokio::test]
    async fn detached_work_runs_to_its_end_on_the_pool() {
        let pool = EvalPool::new(1).expect("pool");
        let (done, finished) = tokio::sync::oneshot::channel();
        pool.detach(async move {
            let _ = done.send(std::thread::current().name().map(str::to_string));
        });
        let name = tokio::time::timeout(Duration::from_secs(10), finished)
            .await
            .expect("detached work did not run")
            .expect("a result");
        assert_eq!(name.as_deref(), Some("portcullis-eval"));
    }

    #[tokio::test]
    async fn a_panic_is_an_error_not_a_crash() {
        let pool = EvalPool::new(1).expect("pool");
        let result = pool.run(async { panic!("boom") }).await;
        assert!(result.is_err());
        // The pool still works.
        assert_eq!(pool.run(async { 7 }).await.expect("a result"), 7);
    }

    #[tokio::test]
    async fn the_pool_can_be_dropped_on_an_async_thread() {
        let pool = EvalPool::new(1).expect("pool");
        assert_eq!(pool.run(async { 1 }).await.expect("a result"), 1);
        drop(pool);
    }
}
