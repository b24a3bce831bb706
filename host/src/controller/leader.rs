//! Leader election on a `coordination.k8s.io` Lease, as client-go's
//! leaderelection does it: the holder renews `renewTime`; another
//! candidate takes the lease over once it has seen the record unchanged
//! for longer than the lease's duration. Expiry is judged by when *this*
//! process saw the record change, never by comparing clocks across
//! machines. Writes use the lease's resourceVersion, so two candidates
//! racing for an expired lease cannot both win.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// Whether a candidate leads, shared with what acts on it.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// When the candidate last renewed successfully.
    renewed: Arc<Mutex<Option<Instant>>>,
    duration: Duration,
}

impl Leadership {
    /// Whether the candidate holds the lease and renewed it recently enough
    /// that no other can have taken it over yet: two thirds of the
    /// duration (client-go's renew deadline), so a leader stops acting
    /// before another may start.
    pub fn is_leader(&self) -> bool {
        self.renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < self.duration * 2 / 3)
    }

    fn set(&self, renewed: Option<Instant>) {
        *self
            .renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = renewed;
    }
}

/// One candidate for a lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The record as last seen (holder, renewTime) and when it was first
    /// seen so.
    observed: Option<(String, Option<MicroTime>, Instant)>,
    leadership: Leadership,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            observed: None,
            leadership: Leadership {
                renewed: Arc::new(Mutex::new(None)),
                duration,
            },
        }
    }

    /// Whether this candidate leads, for what acts on it.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Takes the lease if it is free or expired, renews it if held.
    /// Returns whether this candidate now leads.
    ///
    /// # Errors
    /// The API server could not be asked; leadership is then as
    /// [`LeaderElector::is_leader`] says.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return self.written(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = (holder.clone(), spec.renew_time.clone());
        let unchanged = self
            .observed
            .as_ref()
            .is_some_and(|(h, r, _)| (h, r) == (&record.0, &record.1));
        if !unchanged {
            self.observed = Some((record.0, record.1, Instant::now()));
        }
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.duration, Duration::from_secs);
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, _, seen)| seen.elapsed() > held_for);
        if !holder.is_empty() && holder != self.identity && !expired {
            self.leadership.set(None);
            return Ok(false);
        }
        if holder != self.identity {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            tracing::info!(lease = %self.name, previous = %holder, "taking over the controller lease");
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        let written = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await;
        self.written(written)
    }

    fn written(&mut self, result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
        match result {
            Ok(_) => {
                self.leadership.set(Some(Instant::now()));
                Ok(true)
            }
            // Another candidate wrote first.
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                self.leadership.set(None);
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// Gives the lease up, so another candidate takes over at once instead
    /// of after the duration.
    pub async fn release(&mut self) {
        if !self.leadership.is_leader() {
            return;
        }
        self.leadership.set(None);
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "controller lease released"),
            Err(error) => {
                tracing::warn!(lease = %self.name, error = %portcullis_engine::Report(&error), "cannot release the controller lease");
            }
        }
    }
}
