//! The one control loop: everything that changes the server while it runs
//! arrives here as a [`Control`] message on one channel, and is acted on
//! one at a time, off the request path.
//!
//! Sources: the policy files' watcher (config and modules), the
//! certificate files' watcher, and requests to reload everything (SIGHUP,
//! forwarded by the binary through a [`ControlHandle`]). File events are
//! debounced; an explicit reload is not. The watchers only report: they
//! never reload by themselves.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::cert_reload::CertReloader;
use crate::reload::Reloader;
use crate::watch::{FileWatcher, Fingerprint, WatchError};

/// Messages queued beyond this are dropped: a full queue already holds a
/// change that will make the loop read every file again.
const QUEUE: usize = 64;

/// What the control loop is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The config or a module file changed.
    PoliciesChanged,
    /// A certificate, key or client-CA file changed.
    CertificatesChanged,
    /// Load policies and certificates again now (SIGHUP).
    ReloadAll,
}

/// How long file events must be quiet before a reload starts, and the
/// longest a burst may delay it.
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    pub quiet: Duration,
    pub max: Duration,
}

/// Sends requests to a running server's control loop.
#[derive(Debug, Clone)]
pub struct ControlHandle(mpsc::Sender<Control>);

impl ControlHandle {
    /// Asks for policies and certificates to be loaded again (what SIGHUP
    /// does). Returns at once; the reload happens in the control loop.
    pub fn reload(&self) {
        self.send(Control::ReloadAll);
    }

    fn send(&self, control: Control) {
        // Full: a queued message will reread every file anyway. Closed:
        // the server is stopping.
        let _ = self.0.try_send(control);
    }
}

/// What the loop must still do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Pending {
    policies: bool,
    certificates: bool,
    /// Whether every part of it came from file events (debounced).
    from_files: bool,
}

impl Pending {
    fn add(&mut self, control: Control) {
        let from_files = !self.any() || self.from_files;
        match control {
            Control::PoliciesChanged => self.policies = true,
            Control::CertificatesChanged => self.certificates = true,
            Control::ReloadAll => {
                self.policies = true;
                self.certificates = true;
            }
        }
        self.from_files = from_files && control != Control::ReloadAll;
    }

    fn any(self) -> bool {
        self.policies || self.certificates
    }
}

/// The control loop's state: the reloaders and the watchers feeding it.
pub struct ControlLoop {
    policies: Reloader,
    certificates: CertReloader,
    policy_watcher: FileWatcher,
    certificate_watcher: FileWatcher,
    messages: mpsc::Receiver<Control>,
    debounce: Debounce,
}

impl ControlLoop {
    /// Starts the watchers for the files `policies` and `certificates`
    /// read, and the channel that feeds the loop.
    ///
    /// # Errors
    /// When a file watcher cannot be started.
    pub fn new(
        policies: Reloader,
        certificates: CertReloader,
        debounce: Debounce,
    ) -> Result<(Self, ControlHandle), WatchError> {
        let (sender, messages) = mpsc::channel(QUEUE);
        let handle = ControlHandle(sender);
        let feed = |control: Control| {
            let handle = handle.clone();
            move || handle.send(control)
        };
        let mut policy_watcher = FileWatcher::new(feed(Control::PoliciesChanged))?;
        policy_watcher.watch(policies.watched());
        let mut certificate_watcher = FileWatcher::new(feed(Control::CertificatesChanged))?;
        certificate_watcher.watch(&certificates.watched());
        let control = Self {
            policies,
            certificates,
            policy_watcher,
            certificate_watcher,
            messages,
            debounce,
        };
        Ok((control, handle))
    }

    /// Acts on messages until `shutdown` resolves. A reload in progress at
    /// shutdown is abandoned: it swaps nothing until it completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut pending = Pending::default();
        let mut cluster_changes = self.policies.cluster_changes();
        let mut registry_poll = self.policies.registry_poll_interval().map(|every| {
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        loop {
            if !pending.any() {
                tokio::select! {
                    () = &mut shutdown => return,
                    message = self.messages.recv() => match message {
                        Some(control) => pending.add(control),
                        None => return,
                    },
                    () = changed(&mut cluster_changes) => {
                        pending.policies = true;
                        continue;
                    }
                    () = tick(&mut registry_poll) => {
                        // Asking the registry takes time: shutdown must
                        // not wait for it.
                        tokio::select! {
                            () = &mut shutdown => return,
                            changed = self.policies.registry_changed() => {
                                pending.policies |= changed;
                            }
                        }
                        continue;
                    }
                }
            }
            if pending.from_files {
                let watched = self.policies.watched().to_vec();
                let files = || Fingerprint::of(&watched);
                tokio::select! {
                    () = &mut shutdown => return,
                    () = settle(&mut self.messages, self.debounce, &mut pending, files) => {}
                }
            }
            let work = std::mem::take(&mut pending);
            if work.certificates {
                self.rotate_certificates();
            }
            if work.policies {
                tokio::select! {
                    () = &mut shutdown => return,
                    missed = self.reload_policies() => if missed {
                        // A change made while the reload ran, in a
                        // directory not yet watched, raised no event.
                        // Reload again at once, without a debounce.
                        pending.policies = true;
                    },
                }
            }
        }
    }

    /// Reloads policies; whether a watched file changed while it ran.
    async fn reload_policies(&mut self) -> bool {
        tracing::info!("reloading policies");
        // Success and failure are logged, counted and recorded in status
        // by the reloader; the loop only keeps the watches in step.
        let _ = self.policies.reload().await;
        self.policy_watcher.watch(self.policies.watched());
        self.policies.changed_since_read()
    }

    fn rotate_certificates(&mut self) {
        // Logged and counted by the reloader; a refused set keeps the old
        // identity serving.
        let _ = self.certificates.rotate();
        // A Secret volume swap replaces the directories the files resolve
        // to: watch where they lead now.
        self.certificate_watcher.watch(&self.certificates.watched());
    }
}

/// The next change of the cluster's policy resources; never, when they
/// are not watched (or the watcher is gone).
async fn changed(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match changes {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                *changes = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// The next tick of the registry poll; never, when there is none.
async fn tick(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Waits until the files have been quiet for `debounce.quiet`: no event,
/// and `files()` (what the files look like) the same at the start and the
/// end of the window, so a writer that pauses for less than that never
/// has a half-written file loaded, even if an event was lost. At most
/// `debounce.max` in all: a file that never stops changing must not
/// postpone reloads forever. Folds the burst into `pending`.
async fn settle<F>(
    messages: &mut mpsc::Receiver<Control>,
    debounce: Debounce,
    pending: &mut Pending,
    files: impl Fn() -> F,
) where
    F: PartialEq,
{
    let hard_deadline = tokio::time::Instant::now() + debounce.max;
    loop {
        let quiet_deadline = (tokio::time::Instant::now() + debounce.quiet).min(hard_deadline);
        let before = files();
        tokio::select! {
            message = messages.recv() => {
                let Some(control) = message else { return };
                pending.add(control);
                if !pending.from_files {
                    return;
                }
            }
            () = tokio::time::sleep_until(quiet_deadline) => {
                if files() == before {
                    return;
                }
                tracing::debug!("policy files changed without an event; waiting for them to settle");
            }
        }
        if tokio::time::Instant::now() >= hard_deadline {
            tracing::warn!(
                max_ms = debounce.max.as_millis() as u64,
                "policy files are still changing; reloading anyway (write them atomically: \
                 a new file renamed over the old)"
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Pending {
        let mut pending = Pending::default();
        pending.add(Control::PoliciesChanged);
        pending
    }

    #[tokio::test(start_paused = true)]
    async fn settle_waits_for_quiet_and_caps_a_burst() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let debounce = Debounce {
            quiet: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        // A burst that never goes quiet ends at the cap.
        let feeder = tokio::spawn(async move {
            for _ in 0..100 {
                if tx.send(Control::CertificatesChanged).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let mut pending = files();
        settle(&mut rx, debounce, &mut pending, || ()).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(500), "{waited:?}");
        assert!(waited < Duration::from_millis(600), "{waited:?}");
        assert!(pending.policies && pending.certificates && pending.from_files);
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn settle_returns_after_the_quiet_period() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let debounce = Debounce {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        tx.send(Control::PoliciesChanged).await.expect("send");
        let started = tokio::time::Instant::now();
        settle(&mut rx, debounce, &mut files(), || ()).await;
        // The queued event is folded in, then 100 ms of quiet.
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn an_explicit_reload_ends_the_debounce_at_once() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let debounce = Debounce {
            quiet: Duration::from_secs(1),
            max: Duration::from_secs(5),
        };
        tx.send(Control::ReloadAll).await.expect("send");
        let started = tokio::time::Instant::now();
        let mut pending = files();
        settle(&mut rx, debounce, &mut pending, || ()).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(pending.policies && pending.certificates && !pending.from_files);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_without_an_event_restarts_the_quiet_window() {
        let (_tx, mut rx) = mpsc::channel(QUEUE);
        let debounce = Debounce {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        // The files look different at each of the first three looks (a
        // writer still at work, its events lost), then stay the same.
        let looks = std::sync::atomic::AtomicU32::new(0);
        let look = || {
            looks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .min(3)
        };
        let started = tokio::time::Instant::now();
        settle(&mut rx, debounce, &mut files(), look).await;
        // Windows 1 and 2 saw changes; window 3 (looks 3 and 3) is quiet.
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[test]
    fn pending_work_merges() {
        let mut pending = Pending::default();
        assert!(!pending.any());
        pending.add(Control::CertificatesChanged);
        assert!(pending.certificates && !pending.policies && pending.from_files);
        pending.add(Control::ReloadAll);
        assert!(pending.certificates && pending.policies && !pending.from_files);
        pending.add(Control::PoliciesChanged);
        assert!(!pending.from_files, "an explicit reload is not debounced");
    }
}
