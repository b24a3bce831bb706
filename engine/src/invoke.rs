//! One call into a policy: a fresh sandboxed store, a fresh instance, a
//! deadline, a memory cap, and the typed classification of what went wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::bindings::AdmissionPolicy;
use crate::bindings::portcullis::policy::types as wit;
use crate::config::Limits;
use crate::matcher::MatchError;
use crate::module::CompiledModule;
use crate::sandbox::StoreState;
use crate::sandbox::{self, GuestLog, MemoryCap, MemoryLimitExceeded};

/// Longest message, warning or annotation value kept from a policy.
pub const MAX_TEXT: usize = 4 * 1024;
/// Most warnings or audit annotations kept from one verdict.
pub const MAX_ITEMS: usize = 32;

/// A policy call that failed. Typed so that callers decide by variant,
/// never by message text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The call ran past its deadline and was stopped.
    #[error("exceeded its deadline of {} ms", .0.as_millis())]
    Deadline(Duration),
    /// The policy tried to grow its memory past the cap.
    #[error("exceeded its memory limit of {0} bytes")]
    MemoryLimit(u64),
    /// The policy trapped (a panic, an `unreachable`, a stack overflow...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The policy returned an error of its own.
    #[error("reported an error: {0}")]
    Reported(String),
    /// The policy answered something the host cannot use.
    #[error("returned invalid output: {0}")]
    InvalidOutput(String),
    /// The call could not start (e.g. every instance slot is busy).
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    /// Not run: the review's deadline (the API server's `?timeout=`) had
    /// already passed.
    #[error("was not run: the review's deadline had passed")]
    NoTimeLeft,
    /// Not run: the process-wide memory budget had no room for this call's
    /// memory cap before its deadline (too many memory-hungry calls at once).
    #[error("was not run: the memory budget of {budget} bytes had no room for its {wanted} bytes")]
    MemoryBudget { budget: u64, wanted: u64 },
    /// Not run: the policy exceeded its deadline or memory limit this many
    /// times in a row, and fails fast for a while (its circuit breaker).
    #[error(
        "was not run: it exceeded its deadline or memory limit {failures} times in a row; \
         its calls fail fast for another {} ms",
        .retry_in.as_millis()
    )]
    CircuitOpen { failures: u32, retry_in: Duration },
    /// Not run: whether the policy applies to the request could not be
    /// decided (its namespace is not known, a match condition failed).
    #[error("could not be matched: {0}")]
    Match(#[from] MatchError),
}

impl PolicyError {
    /// A short, stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Deadline(_) => "timeout",
            Self::MemoryLimit(_) => "memory",
            Self::Trap(_) => "trap",
            Self::Reported(_) => "reported",
            Self::InvalidOutput(_) => "invalid_output",
            Self::Instantiate(_) => "instantiate",
            Self::NoTimeLeft => "timeout",
            Self::MemoryBudget { .. } => "memory_budget",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Match(error) => error.kind(),
        }
    }
}

/// What a policy decided, with its texts capped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub message: Option<String>,
    pub code: Option<u16>,
    pub warnings: Vec<String>,
    pub audit_annotations: Vec<(String, String)>,
}

impl From<wit::Verdict> for Verdict {
    fn from(verdict: wit::Verdict) -> Self {
        Self {
            allowed: verdict.allowed,
            message: verdict.message.map(cap_text),
            code: verdict.code,
            warnings: verdict
                .warnings
                .into_iter()
                .take(MAX_ITEMS)
                .map(cap_text)
                .collect(),
            audit_annotations: verdict
                .audit_annotations
                .into_iter()
                .take(MAX_ITEMS)
                .map(|(key, value)| (cap_text(key), cap_text(value)))
                .collect(),
        }
    }
}

/// What a mutating policy returned: its verdict and, when it changed the
/// object, the new object as JSON text (not yet parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutationOutput {
    pub verdict: Verdict,
    pub object: Option<String>,
}

/// What a policy says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    pub validates: bool,
    pub mutates: bool,
    pub resources: Vec<String>,
}

fn cap_text(text: String) -> String {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut capped = sandbox::truncate_utf8(&text, MAX_TEXT).to_string();
    capped.push_str("... (truncated)");
    capped
}

/// Extra time past the deadline before the async backstop gives up on a
/// call that did not yield (the epoch callback normally fires first).
const BACKSTOP: Duration = Duration::from_millis(50);

/// A single call: its store and what it captured.
struct Call {
    store: Store<StoreState>,
    stderr: MemoryOutputPipe,
    limits: Limits,
}

impl Call {
    fn new(module: &CompiledModule, policy: &Arc<str>, limits: Limits) -> Self {
        let (wasi, stderr) = sandbox::wasi_context();
        let memory = usize::try_from(limits.memory).unwrap_or(usize::MAX);
        let state = StoreState::new(wasi, MemoryCap::new(memory), GuestLog::new(policy.clone()));
        let mut store = Store::new(module.engine.engine(), state);
        store.limiter(|state| &mut state.memory);
        let deadline = Instant::now() + limits.timeout;
        // Checked on every epoch tick: stop at the deadline, otherwise yield
        // to the runtime so a busy policy never starves other requests.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Self {
            store,
            stderr,
            limits,
        }
    }

    async fn instantiate(
        &mut self,
        module: &CompiledModule,
    ) -> Result<AdmissionPolicy, PolicyError> {
        module
            .pre
            .instantiate_async(&mut self.store)
            .await
            .map_err(|err| match self.classify(err) {
                PolicyError::Trap(message) => PolicyError::Instantiate(message),
                other => other,
            })
    }

    /// Calls the optional `prepare` export of `instance`.
    async fn prepare(
        &mut self,
        instance: &wasmtime::component::Instance,
        settings: &str,
    ) -> Result<Result<bool, String>, PolicyError> {
        let missing = || PolicyError::InvalidOutput("the module does not export prepare".into());
        let interface = instance
            .get_export_index(&mut self.store, None, crate::prepare::PREPARE_INTERFACE)
            .ok_or_else(missing)?;
        let func = instance
            .get_export_index(&mut self.store, Some(&interface), "prepare")
            .ok_or_else(missing)?;
        let func = instance
            .get_typed_func::<(&str,), (Result<bool, String>,)>(&mut self.store, &func)
            .map_err(|err| PolicyError::InvalidOutput(format!("prepare: {err:#}")))?;
        let (prepared,) = func
            .call_async(&mut self.store, (settings,))
            .await
            .map_err(|err| self.classify(err))?;
        Ok(prepared)
    }

    /// Maps a wasmtime error to a typed policy error, by type, never text.
    fn classify(&self, err: wasmtime::Error) -> PolicyError {
        if err.downcast_ref::<MemoryLimitExceeded>().is_some() {
            return PolicyError::MemoryLimit(self.limits.memory);
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PolicyError::Deadline(self.limits.timeout),
            Some(Trap::StackOverflow) => {
                PolicyError::Trap("stack overflow (wasm call stack exhausted)".to_string())
            }
            Some(trap) => {
                let panic = self.guest_stderr();
                if panic.is_empty() {
                    PolicyError::Trap(trap.to_string())
                } else {
                    PolicyError::Trap(format!("{trap}; policy said: {panic}"))
                }
            }
            None => PolicyError::Trap(format!("{err:#}")),
        }
    }

    /// What the policy wrote to stderr (a panic message), on one line,
    /// without the Rust runtime's boilerplate.
    fn guest_stderr(&self) -> String {
        let bytes = self.stderr.contents();
        cap_text(clean_guest_stderr(&String::from_utf8_lossy(&bytes)))
    }
}

/// Joins stderr into one line, dropping the Rust runtime's backtrace hint
/// and the anonymous thread name a wasm panic carries.
fn clean_guest_stderr(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("note: run with `RUST_BACKTRACE"))
        .map(|line| {
            line.strip_prefix("thread '<unnamed>' ")
                .and_then(|rest| rest.split_once(") ").map(|(_, tail)| tail))
                .unwrap_or(line)
        })
        .collect();
    lines.join(" ")
}

/// Runs `work` under the call's backstop deadline, once the call's memory
/// cap fits in the engine's budget (waiting at most the call's deadline).
async fn bounded<T>(
    module: &CompiledModule,
    limits: Limits,
    work: impl Future<Output = Result<T, PolicyError>>,
) -> Result<T, PolicyError> {
    let _reservation = module
        .engine
        .reserve_memory(limits.memory, limits.timeout)
        .await
        .map_err(|full| PolicyError::MemoryBudget {
            budget: full.budget,
            wanted: full.wanted,
        })?;
    match tokio::time::timeout(limits.timeout + BACKSTOP, work).await {
        Ok(result) => result,
        Err(_) => Err(PolicyError::Deadline(limits.timeout)),
    }
}

impl CompiledModule {
    /// Calls the optional `prepare` in a fresh instance; `Ok(Err(reason))`
    /// is a rejection of the settings, `Ok(Ok(false))` nothing to prepare.
    ///
    /// # Errors
    /// A [`PolicyError`] when the call itself fails.
    pub async fn prepare(
        &self,
        policy: &Arc<str>,
        limits: Limits,
        settings: &str,
    ) -> Result<Result<bool, String>, PolicyError> {
        let mut call = Call::new(self, policy, limits);
        bounded(self, limits, async {
            let instance = self
                .pre
                .instance_pre()
                .instantiate_async(&mut call.store)
                .await
                .map_err(|err| call.classify(err))?;
            call.prepare(&instance, settings).await
        })
        .await
    }

    /// Calls `metadata`.
    ///
    /// # Errors
    /// A [`PolicyError`] when the call fails.
    pub async fn metadata(
        &self,
        policy: &Arc<str>,
        limits: Limits,
    ) -> Result<Metadata, PolicyError> {
        let mut call = Call::new(self, policy, limits);
        bounded(self, limits, async {
            let instance = call.instantiate(self).await?;
            let meta = instance
                .portcullis_policy_policy()
                .call_metadata(&mut call.store)
                .await
                .map_err(|err| call.classify(err))?;
            Ok(Metadata {
                name: meta.name,
                version: meta.version,
                validates: meta.validates,
                mutates: meta.mutates,
                resources: meta.resources,
            })
        })
        .await
    }

    /// Calls `validate-settings`; `Ok(Err(reason))` is a rejection.
    ///
    /// # Errors
    /// A [`PolicyError`] when the call itself fails.
    pub async fn validate_settings(
        &self,
        policy: &Arc<str>,
        limits: Limits,
        settings: &str,
    ) -> Result<Result<(), String>, PolicyError> {
        let mut call = Call::new(self, policy, limits);
        bounded(self, limits, async {
            let instance = call.instantiate(self).await?;
            instance
                .portcullis_policy_policy()
                .call_validate_settings(&mut call.store, settings)
                .await
                .map_err(|err| call.classify(err))
        })
        .await
    }

    /// Calls `validate` on one AdmissionRequest (JSON text).
    ///
    /// # Errors
    /// A [`PolicyError`] when the call fails or the policy reports an error.
    pub async fn validate(
        &self,
        policy: &Arc<str>,
        limits: Limits,
        request: &str,
        settings: &str,
    ) -> Result<Verdict, PolicyError> {
        let mut call = Call::new(self, policy, limits);
        bounded(self, limits, async {
            let instance = call.instantiate(self).await?;
            let result = instance
                .portcullis_policy_policy()
                .call_validate(&mut call.store, request, settings)
                .await
                .map_err(|err| call.classify(err))?;
            result
                .map(Verdict::from)
                .map_err(|message| PolicyError::Reported(cap_text(message)))
        })
        .await
    }

    /// Calls `mutate` on one AdmissionRequest (JSON text).
    ///
    /// # Errors
    /// A [`PolicyError`] when the call fails or the policy reports an error.
    pub async fn mutate(
        &self,
        policy: &Arc<str>,
        limits: Limits,
        request: &str,
        settings: &str,
    ) -> Result<MutationOutput, PolicyError> {
        let mut call = Call::new(self, policy, limits);
        bounded(self, limits, async {
            let instance = call.instantiate(self).await?;
            let result = instance
                .portcullis_policy_policy()
                .call_mutate(&mut call.store, request, settings)
                .await
                .map_err(|err| call.classify(err))?;
            let mutation = result.map_err(|message| PolicyError::Reported(cap_text(message)))?;
            Ok(MutationOutput {
                verdict: mutation.verdict.into(),
                object: mutation.object,
            })
        })
        .await
    }
}

/// Runs `prepare` in an instance of `component` (the instrumented copy of
/// `module`), then hands the live store and instance to `snapshot`, which
/// reads the state `prepare` left.
///
/// # Errors
/// A [`PolicyError`] when instantiating or the call fails; the settings'
/// rejection as `Reported`.
pub(crate) async fn prepare_and_snapshot<R>(
    module: &CompiledModule,
    component: &wasmtime::component::Component,
    policy: &Arc<str>,
    limits: Limits,
    settings: &str,
    snapshot: impl AsyncFnOnce(
        &mut Store<StoreState>,
        wasmtime::component::Instance,
    ) -> Result<R, PolicyError>,
) -> Result<R, PolicyError> {
    let mut call = Call::new(module, policy, limits);
    bounded(module, limits, async {
        let instance = module
            .engine
            .linker()
            .instantiate_async(&mut call.store, component)
            .await
            .map_err(|err| call.classify(err))?;
        match call.prepare(&instance, settings).await? {
            Ok(true) => {}
            Ok(false) => {
                return Err(PolicyError::InvalidOutput(
                    "prepare answered false in the instrumented copy, true before".into(),
                ));
            }
            Err(reason) => return Err(PolicyError::Reported(reason)),
        }
        snapshot(&mut call.store, instance).await
    })
    .await
}

/// Identity fields a mutation may not change: the API server would refuse
/// the patch, or worse, apply it to another object.
const IDENTITY: [&str; 5] = [
    "/apiVersion",
    "/kind",
    "/metadata/name",
    "/metadata/namespace",
    "/metadata/uid",
];

/// Parses a policy's mutated object and checks it is still the same object.
pub(crate) fn parse_mutated(previous: &Value, text: &str) -> Result<Value, PolicyError> {
    let object: Value = serde_json::from_str(text).map_err(|err| {
        PolicyError::InvalidOutput(format!("mutated object is not valid JSON: {err}"))
    })?;
    if !object.is_object() {
        return Err(PolicyError::InvalidOutput(
            "mutated object is not a JSON object".to_string(),
        ));
    }
    for pointer in IDENTITY {
        let before = previous.pointer(pointer);
        let after = object.pointer(pointer);
        if before != after {
            return Err(PolicyError::InvalidOutput(format!(
                "mutation changed {} from {} to {}; identity fields cannot be mutated",
                pointer.trim_start_matches('/').replace('/', "."),
                before.map_or("nothing".to_string(), Value::to_string),
                after.map_or("nothing".to_string(), Value::to_string),
            )));
        }
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn long_texts_are_capped() {
        let capped = cap_text("x".repeat(MAX_TEXT + 10));
        assert!(capped.ends_with("... (truncated)"));
        assert_eq!(capped.len(), MAX_TEXT + "... (truncated)".len());
    }

    #[test]
    fn verdicts_keep_at_most_max_items() {
        let verdict = Verdict::from(wit::Verdict {
            allowed: true,
            message: None,
            code: None,
            warnings: vec!["w".to_string(); MAX_ITEMS + 5],
            audit_annotations: vec![],
        });
        assert_eq!(verdict.warnings.len(), MAX_ITEMS);
    }

    #[test]
    fn guest_panics_read_cleanly() {
        let stderr = "thread '<unnamed>' (1) panicked at src/lib.rs:148:33:\n\
                      misbehave: deliberate panic\n\
                      note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            clean_guest_stderr(stderr),
            "panicked at src/lib.rs:148:33: misbehave: deliberate panic"
        );
    }

    #[test]
    fn error_kinds_are_stable() {
        assert_eq!(
            PolicyError::Deadline(Duration::from_millis(5)).kind(),
            "timeout"
        );
        assert_eq!(
            PolicyError::Deadline(Duration::from_millis(250)).to_string(),
            "exceeded its deadline of 250 ms"
        );
    }

    #[test]
    fn mutated_objects_must_be_json_objects() {
        let before = json!({"kind": "Pod", "metadata": {"name": "a"}});
        let err = parse_mutated(&before, "not json").expect_err("invalid");
        assert!(
            err.to_string()
                .starts_with("returned invalid output: mutated object is not valid JSON")
        );
        assert!(parse_mutated(&before, "[1]").is_err());
    }

    #[test]
    fn identity_fields_cannot_change() {
        let before = json!({"kind": "Pod", "metadata": {"name": "a", "namespace": "ns"}});
        let renamed = r#"{"kind":"Pod","metadata":{"name":"b","namespace":"ns"}}"#;
        let err = parse_mutated(&before, renamed).expect_err("renamed");
        assert_eq!(
            err.to_string(),
            "returned invalid output: mutation changed metadata.name from \"a\" to \"b\"; \
             identity fields cannot be mutated"
        );
        let labelled =
            r#"{"kind":"Pod","metadata":{"name":"a","namespace":"ns","labels":{"x":"y"}}}"#;
        assert!(parse_mutated(&before, labelled).is_ok());
    }
}
