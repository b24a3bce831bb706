//! The glue between the contract and a [`Policy`]: JSON text in, typed
//! records out. [`Exports`] is what `export_policy!` exports; the plain
//! functions beside it are the same path without the WIT types, which is
//! what [`crate::testing`] runs natively.

use std::marker::PhantomData;

use crate::bindings::exports::portcullis::policy::policy::Guest;
use crate::bindings::exports::portcullis::policy::prepare::Guest as PrepareGuest;
use crate::bindings::portcullis::policy::types as wit;
use crate::{Metadata, Mutation, Policy, Request, Verdict, parse_settings};

/// Implements the contract's exports for the policy `P`.
pub struct Exports<P>(PhantomData<P>);

impl<P: Policy> Guest for Exports<P> {
    fn metadata() -> wit::PolicyMetadata {
        P::METADATA.into()
    }

    fn validate_settings(settings: String) -> Result<(), String> {
        validate_settings::<P>(&settings)
    }

    fn validate(request: String, settings: String) -> Result<wit::Verdict, String> {
        validate::<P>(&request, &settings).map(Into::into)
    }

    fn mutate(request: String, settings: String) -> Result<wit::Mutation, String> {
        let (verdict, object) = mutate::<P>(&request, &settings)?;
        Ok(wit::Mutation {
            verdict: verdict.into(),
            object,
        })
    }
}

impl<P: Policy> PrepareGuest for Exports<P> {
    fn prepare(settings: String) -> Result<bool, String> {
        // Kept, not discarded: the memory snapshot taken after this call
        // is where `P` keeps what it prepared.
        let settings = parse_settings::<P::Settings>(&settings)?;
        P::prepare(&settings)
    }
}

/// Parses the settings and lets the policy check them.
pub(crate) fn validate_settings<P: Policy>(settings: &str) -> Result<(), String> {
    let settings = parse_settings::<P::Settings>(settings)?;
    P::validate_settings(&settings)
}

/// Parses settings and request, then validates.
///
/// `validate_settings` is not repeated here: the host has already called
/// it when it loaded the module with these settings.
pub(crate) fn validate<P: Policy>(request: &str, settings: &str) -> Result<Verdict, String> {
    let settings = parse_settings::<P::Settings>(settings)?;
    let request = Request::from_json(request)?;
    let verdict = P::validate(&request, &settings);
    discard(request);
    discard(settings);
    verdict
}

/// Parses settings and request, mutates, and drops an unchanged object.
pub(crate) fn mutate<P: Policy>(
    request: &str,
    settings: &str,
) -> Result<(Verdict, Option<String>), String> {
    let settings = parse_settings::<P::Settings>(settings)?;
    let request = Request::from_json(request)?;
    let output = P::mutate(&request, &settings).and_then(|m: Mutation| m.into_output(&request));
    discard(request);
    discard(settings);
    output
}

/// Frees `value`, except inside a policy module: the host runs every call
/// in a fresh instance and throws its memory away afterwards, so walking
/// a parsed request to free it piece by piece (a tenth of a call's time)
/// buys nothing there. Natively (tests) it is an ordinary drop.
pub(crate) fn discard<T>(value: T) {
    if cfg!(target_family = "wasm") {
        std::mem::forget(value);
    } else {
        drop(value);
    }
}

impl From<Metadata> for wit::PolicyMetadata {
    fn from(m: Metadata) -> Self {
        wit::PolicyMetadata {
            name: m.name.to_string(),
            version: m.version.to_string(),
            validates: m.validates,
            mutates: m.mutates,
            resources: m.resources.iter().map(|r| r.to_string()).collect(),
        }
    }
}

impl From<Verdict> for wit::Verdict {
    fn from(v: Verdict) -> Self {
        wit::Verdict {
            allowed: v.allowed,
            message: v.message,
            code: v.code,
            warnings: v.warnings,
            audit_annotations: v.audit_annotations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    /// Denies objects without a `keep` key; adds `touched: true` when
    /// `touch` is set.
    struct Both;

    #[derive(Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Settings {
        touch: bool,
        reject: bool,
    }

    impl Default for Settings {
        fn default() -> Self {
            Settings {
                touch: true,
                reject: false,
            }
        }
    }

    impl Policy for Both {
        type Settings = Settings;
        const METADATA: Metadata = Metadata {
            name: "both",
            version: "1.2.3",
            resources: &["pods", "deployments.apps"],
            validates: true,
            mutates: true,
        };

        fn validate_settings(s: &Settings) -> Result<(), String> {
            if s.reject {
                Err("reject is set".into())
            } else {
                Ok(())
            }
        }

        fn validate(request: &Request, _: &Settings) -> Result<Verdict, String> {
            match request.object() {
                Some(o) if o.get("keep").is_some() => Ok(Verdict::allow()),
                _ => Ok(Verdict::deny("no keep").with_code(400)),
            }
        }

        fn mutate(request: &Request, s: &Settings) -> Result<Mutation, String> {
            let Some(mut object) = request.object().cloned() else {
                return Ok(Mutation::unchanged());
            };
            if s.touch {
                object["touched"] = json!(true);
            }
            Ok(Mutation::patched(object))
        }
    }

    struct ValidateOnly;

    impl Policy for ValidateOnly {
        type Settings = serde_json::Value;
        const METADATA: Metadata = Metadata {
            name: "validate-only",
            version: "0.1.0",
            resources: &["*"],
            validates: true,
            mutates: false,
        };
        fn validate(_: &Request, _: &serde_json::Value) -> Result<Verdict, String> {
            Ok(Verdict::allow())
        }
    }

    fn request(object: serde_json::Value) -> String {
        json!({"uid": "u", "operation": "CREATE", "object": object}).to_string()
    }

    #[test]
    fn metadata_converts() {
        let m = <Exports<Both> as Guest>::metadata();
        assert_eq!(m.name, "both");
        assert_eq!(m.version, "1.2.3");
        assert!(m.validates && m.mutates);
        assert_eq!(
            m.resources,
            vec!["pods".to_string(), "deployments.apps".to_string()]
        );
    }

    #[test]
    fn settings_are_checked_by_serde_then_by_the_policy() {
        let check = |s: &str| <Exports<Both> as Guest>::validate_settings(s.to_string());
        assert_eq!(check("{}"), Ok(()));
        assert_eq!(check(""), Ok(()));
        assert_eq!(check("null"), Ok(()));
        assert_eq!(
            check(r#"{"reject": true}"#),
            Err("reject is set".to_string())
        );
        assert_eq!(
            check(r#"{"touhc": true}"#),
            Err("invalid settings: unknown field `touhc`, expected `touch` or `reject` at line 1 column 8"
                .to_string())
        );
    }

    #[test]
    fn verdict_converts() {
        let v = <Exports<Both> as Guest>::validate(request(json!({})), "{}".into()).unwrap();
        assert!(!v.allowed);
        assert_eq!(v.message.as_deref(), Some("no keep"));
        assert_eq!(v.code, Some(400));
        let v =
            <Exports<Both> as Guest>::validate(request(json!({"keep": 1})), "{}".into()).unwrap();
        assert!(v.allowed);
        assert_eq!(v.message, None);
    }

    #[test]
    fn unparsable_request_is_an_error() {
        let err = <Exports<Both> as Guest>::validate("{not json".into(), "{}".into()).unwrap_err();
        assert!(err.starts_with("invalid admission request: "), "{err}");
        let err =
            <Exports<Both> as Guest>::mutate(r#"{"object": 5"#.into(), "{}".into()).unwrap_err();
        assert!(err.starts_with("invalid admission request: "), "{err}");
    }

    #[test]
    fn invalid_settings_are_an_error_on_every_call() {
        let err = <Exports<Both> as Guest>::validate(request(json!({})), r#"{"x":1}"#.into())
            .unwrap_err();
        assert!(
            err.starts_with("invalid settings: unknown field `x`"),
            "{err}"
        );
    }

    #[test]
    fn mutation_sends_changed_object() {
        let m = <Exports<Both> as Guest>::mutate(request(json!({"a": 1})), "{}".into()).unwrap();
        assert!(m.verdict.allowed);
        let object: serde_json::Value = serde_json::from_str(m.object.as_deref().unwrap()).unwrap();
        assert_eq!(object, json!({"a": 1, "touched": true}));
    }

    #[test]
    fn mutation_equal_to_the_request_sends_none() {
        let m = <Exports<Both> as Guest>::mutate(
            request(json!({"a": 1})),
            r#"{"touch": false}"#.into(),
        )
        .unwrap();
        assert!(m.verdict.allowed);
        assert_eq!(m.object, None);
        let m = <Exports<Both> as Guest>::mutate(
            request(json!({"a": 1, "touched": true})),
            "{}".into(),
        )
        .unwrap();
        assert_eq!(m.object, None);
    }

    #[test]
    fn unimplemented_side_says_so() {
        let err =
            <Exports<ValidateOnly> as Guest>::mutate(request(json!({})), "{}".into()).unwrap_err();
        assert_eq!(err, "policy validate-only does not support mutate");
        let err = validate_settings::<ValidateOnly>("{}");
        assert_eq!(err, Ok(()));
    }
}
