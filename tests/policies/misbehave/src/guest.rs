//! The module's exports. Everything goes through the SDK's own glue
//! (`export_policy!`'s implementation) except `mutate` with behaviour
//! `invalid-json`: the SDK's `Mutation` holds a `serde_json::Value` and so
//! can only ever send valid JSON, and this behaviour exists to send
//! something else.

#![allow(unsafe_code)] // what the export macro expands to

use portcullis_sdk::bindings::exports::portcullis::policy::policy::Guest;
use portcullis_sdk::bindings::exports::portcullis::policy::prepare::Guest as PrepareGuest;
use portcullis_sdk::bindings::portcullis::policy::types as wit;
use portcullis_sdk::{Verdict, parse_settings};

use crate::{Behaviour, INVALID_JSON, Misbehave, Settings};

/// The SDK's implementation of the contract for [`Misbehave`].
type Sdk = portcullis_sdk::__private::Exports<Misbehave>;

/// The exports: the SDK's, with `invalid-json` answered here.
struct Exports;

impl Guest for Exports {
    fn metadata() -> wit::PolicyMetadata {
        <Sdk as Guest>::metadata()
    }

    fn validate_settings(settings: String) -> Result<(), String> {
        <Sdk as Guest>::validate_settings(settings)
    }

    fn validate(request: String, settings: String) -> Result<wit::Verdict, String> {
        <Sdk as Guest>::validate(request, settings)
    }

    fn mutate(request: String, settings: String) -> Result<wit::Mutation, String> {
        let invalid_json = parse_settings::<Settings>(&settings)
            .is_ok_and(|s| s.behaviour == Behaviour::InvalidJson);
        if invalid_json {
            return Ok(wit::Mutation {
                verdict: Verdict::allow().into(),
                object: Some(INVALID_JSON.to_string()),
            });
        }
        <Sdk as Guest>::mutate(request, settings)
    }
}

impl PrepareGuest for Exports {
    fn prepare(settings: String) -> Result<bool, String> {
        <Sdk as PrepareGuest>::prepare(settings)
    }
}

portcullis_sdk::bindings::export!(Exports with_types_in portcullis_sdk::bindings);
