//! Shadow evaluation: a policy's candidate version judged on the same
//! input as the live version, and the two verdicts compared. The chain
//! records a [`ShadowCall`] for each call of a policy that has a
//! candidate; whoever serves runs it later, off the response path, so a
//! candidate never changes an answer nor delays it.
//!
//! What is compared is each version's raw verdict, before mode and
//! onError: allowed against denied, and for a mutator the object it
//! produced. Messages are not compared (a reworded denial is still a
//! denial). A candidate that fails (deadline, trap, memory, bad output)
//! is an error of its own, never an agreement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::invoke::{MutationOutput, PolicyError, Verdict};
use crate::policy::Policy;

/// Which entry point the live version was called through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Validate,
    Mutate,
}

/// What one version returned, as it came out of the call.
#[derive(Debug, Clone)]
enum Returned {
    Verdict {
        allowed: bool,
        message: Option<String>,
        /// A mutator's object, as the JSON text it wrote.
        object: Option<String>,
    },
    Failed {
        kind: &'static str,
        message: String,
    },
}

impl Returned {
    fn validated(result: &Result<Verdict, PolicyError>) -> Self {
        match result {
            Ok(verdict) => Self::Verdict {
                allowed: verdict.allowed,
                message: verdict.message.clone(),
                object: None,
            },
            Err(error) => Self::failed(error),
        }
    }

    fn mutated(result: &Result<MutationOutput, PolicyError>) -> Self {
        match result {
            Ok(output) => Self::Verdict {
                allowed: output.verdict.allowed,
                message: output.verdict.message.clone(),
                object: output.object.clone(),
            },
            Err(error) => Self::failed(error),
        }
    }

    fn failed(error: &PolicyError) -> Self {
        Self::Failed {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

/// A candidate evaluation to run: the candidate, the exact request text
/// the live version saw, and what the live version said.
#[derive(Debug, Clone)]
pub struct ShadowCall {
    /// The live policy's name.
    pub policy: Arc<str>,
    candidate: Arc<Policy>,
    call: Call,
    request: Arc<str>,
    live: Returned,
}

impl ShadowCall {
    /// For a validator's call on `request`.
    pub(crate) fn validated(
        policy: &Policy,
        candidate: &Arc<Policy>,
        request: Arc<str>,
        live: &Result<Verdict, PolicyError>,
    ) -> Box<Self> {
        Box::new(Self {
            policy: policy.name.clone(),
            candidate: candidate.clone(),
            call: Call::Validate,
            request,
            live: Returned::validated(live),
        })
    }

    /// For a mutator's call on `request` (the object as the chain had it
    /// when this mutator ran).
    pub(crate) fn mutated(
        policy: &Policy,
        candidate: &Arc<Policy>,
        request: Arc<str>,
        live: &Result<MutationOutput, PolicyError>,
    ) -> Box<Self> {
        Box::new(Self {
            policy: policy.name.clone(),
            candidate: candidate.clone(),
            call: Call::Mutate,
            request,
            live: Returned::mutated(live),
        })
    }

    /// The candidate this call runs.
    pub fn candidate(&self) -> &Arc<Policy> {
        &self.candidate
    }

    /// Runs the candidate under its own limits (no review deadline: the
    /// answer has gone already) and compares.
    pub async fn run(self) -> ShadowResult {
        let started = Instant::now();
        let returned = match self.call {
            Call::Validate => {
                Returned::validated(&self.candidate.validate(&self.request, None).await)
            }
            Call::Mutate => Returned::mutated(&self.candidate.mutate(&self.request, None).await),
        };
        let duration = started.elapsed();
        let (comparison, live, candidate) = compare(&self.request, &self.live, &returned);
        ShadowResult {
            policy: self.policy,
            comparison,
            live,
            candidate,
            duration,
        }
    }
}

/// How the candidate's verdict compares with the live version's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Both allowed (with the same object, for a mutator) or both denied.
    Agree,
    /// One allowed and the other denied, or they produced different
    /// objects, or the live version failed and the candidate did not.
    Disagree,
    /// The candidate failed: nothing to compare.
    Error,
}

impl Comparison {
    /// `agree`, `disagree` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agree => "agree",
            Self::Disagree => "disagree",
            Self::Error => "error",
        }
    }
}

/// One version's verdict, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// Allowed; for a mutator that changed the object, the RFC 6902 patch
    /// from its input (JSON text).
    Allow {
        patch: Option<String>,
    },
    Deny {
        message: Option<String>,
    },
    /// The call failed: its kind (`timeout`, `trap`, ...) and message.
    Error {
        kind: &'static str,
        message: String,
    },
}

/// A candidate evaluation's outcome.
#[derive(Debug, Clone)]
pub struct ShadowResult {
    /// The live policy's name.
    pub policy: Arc<str>,
    pub comparison: Comparison,
    pub live: Said,
    pub candidate: Said,
    /// How long the candidate took.
    pub duration: Duration,
}

/// A verdict with a mutator's object checked and parsed.
enum Judged {
    Allow(Option<Value>),
    Deny(Option<String>),
    Error(&'static str, String),
}

/// Compares two raw verdicts on the same request text.
fn compare(request: &str, live: &Returned, candidate: &Returned) -> (Comparison, Said, Said) {
    // The input object, parsed only when some version returned an object.
    let wrote_object = |r: &Returned| {
        matches!(
            r,
            Returned::Verdict {
                object: Some(_),
                ..
            }
        )
    };
    let input: Option<Value> = if wrote_object(live) || wrote_object(candidate) {
        serde_json::from_str::<Value>(request)
            .ok()
            .and_then(|mut request| request.get_mut("object").map(Value::take))
            .filter(Value::is_object)
    } else {
        None
    };
    let live = judge(live, input.as_ref());
    let candidate = judge(candidate, input.as_ref());
    let comparison = match (&live, &candidate) {
        (_, Judged::Error(..)) => Comparison::Error,
        (Judged::Allow(a), Judged::Allow(b)) if a == b => Comparison::Agree,
        (Judged::Deny(_), Judged::Deny(_)) => Comparison::Agree,
        _ => Comparison::Disagree,
    };
    (
        comparison,
        said(live, input.as_ref()),
        said(candidate, input.as_ref()),
    )
}

/// Applies the chain's own rules to a verdict: an object that is not
/// valid, or changes identity fields, is an error; one equal to the input
/// is no change; an object for a review without one is ignored.
fn judge(returned: &Returned, input: Option<&Value>) -> Judged {
    match returned {
        Returned::Failed { kind, message } => Judged::Error(kind, message.clone()),
        Returned::Verdict {
            allowed: false,
            message,
            ..
        } => Judged::Deny(message.clone()),
        Returned::Verdict {
            allowed: true,
            object,
            ..
        } => match (object, input) {
            (Some(text), Some(input)) => match crate::invoke::parse_mutated(input, text) {
                Ok(object) if object == *input => Judged::Allow(None),
                Ok(object) => Judged::Allow(Some(object)),
                Err(error) => Judged::Error(error.kind(), error.to_string()),
            },
            _ => Judged::Allow(None),
        },
    }
}

fn said(judged: Judged, input: Option<&Value>) -> Said {
    match judged {
        Judged::Allow(object) => Said::Allow {
            patch: object.zip(input).and_then(|(object, input)| {
                serde_json::to_string(&json_patch::diff(input, &object)).ok()
            }),
        },
        Judged::Deny(message) => Said::Deny { message },
        Judged::Error(kind, message) => Said::Error { kind, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str =
        r#"{"uid":"u","object":{"kind":"Pod","metadata":{"name":"p","labels":{"a":"1"}}}}"#;

    fn allow(object: Option<&str>) -> Returned {
        Returned::Verdict {
            allowed: true,
            message: None,
            object: object.map(str::to_string),
        }
    }

    fn deny(message: &str) -> Returned {
        Returned::Verdict {
            allowed: false,
            message: Some(message.to_string()),
            object: None,
        }
    }

    fn failed() -> Returned {
        Returned::Failed {
            kind: "timeout",
            message: "ran out of time".to_string(),
        }
    }

    fn comparison(live: &Returned, candidate: &Returned) -> Comparison {
        compare(REQUEST, live, candidate).0
    }

    #[test]
    fn allowed_against_denied_disagrees_and_messages_do_not_count() {
        assert_eq!(comparison(&allow(None), &allow(None)), Comparison::Agree);
        assert_eq!(comparison(&deny("x"), &deny("y")), Comparison::Agree);
        assert_eq!(comparison(&allow(None), &deny("no")), Comparison::Disagree);
        assert_eq!(comparison(&deny("no"), &allow(None)), Comparison::Disagree);
        let (_, live, candidate) = compare(REQUEST, &allow(None), &deny("no"));
        assert_eq!(live, Said::Allow { patch: None });
        assert_eq!(
            candidate,
            Said::Deny {
                message: Some("no".to_string())
            }
        );
    }

    #[test]
    fn a_candidate_error_is_its_own_result_and_a_live_error_disagrees() {
        assert_eq!(comparison(&allow(None), &failed()), Comparison::Error);
        assert_eq!(comparison(&failed(), &failed()), Comparison::Error);
        assert_eq!(comparison(&failed(), &allow(None)), Comparison::Disagree);
        assert_eq!(comparison(&failed(), &deny("no")), Comparison::Disagree);
    }

    #[test]
    fn mutators_disagree_on_a_different_object_only() {
        let same = r#"{"kind":"Pod","metadata":{"name":"p","labels":{"a":"1"}}}"#;
        let two = r#"{"kind":"Pod","metadata":{"name":"p","labels":{"a":"2"}}}"#;
        let three = r#"{"kind":"Pod","metadata":{"labels":{"a":"3"},"name":"p"}}"#;
        // Returning the input unchanged is the same as returning nothing.
        assert_eq!(
            comparison(&allow(Some(same)), &allow(None)),
            Comparison::Agree
        );
        assert_eq!(
            comparison(&allow(Some(two)), &allow(Some(two))),
            Comparison::Agree
        );
        assert_eq!(
            comparison(&allow(Some(two)), &allow(Some(three))),
            Comparison::Disagree
        );
        assert_eq!(
            comparison(&allow(Some(two)), &allow(None)),
            Comparison::Disagree
        );
        let (_, live, candidate) = compare(REQUEST, &allow(Some(two)), &allow(Some(three)));
        assert_eq!(
            live,
            Said::Allow {
                patch: Some(
                    r#"[{"op":"replace","path":"/metadata/labels/a","value":"2"}]"#.to_string()
                )
            }
        );
        assert_eq!(
            candidate,
            Said::Allow {
                patch: Some(
                    r#"[{"op":"replace","path":"/metadata/labels/a","value":"3"}]"#.to_string()
                )
            }
        );
    }

    #[test]
    fn a_candidate_object_the_chain_would_refuse_is_an_error() {
        let renamed = r#"{"kind":"Pod","metadata":{"name":"q"}}"#;
        let (result, _, candidate) = compare(REQUEST, &allow(None), &allow(Some(renamed)));
        assert_eq!(result, Comparison::Error);
        assert!(
            matches!(
                candidate,
                Said::Error {
                    kind: "invalid_output",
                    ..
                }
            ),
            "{candidate:?}"
        );
        assert_eq!(
            comparison(&allow(None), &allow(Some("not json"))),
            Comparison::Error
        );
    }
}
