//! `misbehave`: a test policy that misbehaves on purpose, so the
//! end-to-end tests can check that the host's sandbox contains it
//! (deadlines, memory caps, traps, invalid output, frozen clocks and
//! seeded randomness). Never deploy it. See README.md for the settings.
//!
//! Every behaviour is chosen by the settings and happens on every call of
//! `validate` and `mutate`, except `invalid-json` and `rename`, which only
//! make sense for `mutate` (their `validate` allows).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_sdk::{Metadata, Mutation, Policy, Request, Verdict};
use serde::Deserialize;
use serde_json::Value;

#[cfg(target_arch = "wasm32")]
mod guest;

/// The policy.
pub struct Misbehave;

/// What the policy does on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Spins forever.
    Loop,
    /// Allocates and touches 1 MiB blocks until allocation fails.
    MemoryBomb,
    /// Recurses without bound (a stack overflow): with small frames the
    /// engine's call stack runs out; with [`Settings::large_frames`] the
    /// guest's own stack in linear memory does first.
    Recursion,
    /// Panics with [`PANIC_MESSAGE`].
    Panic,
    /// Denies with a [`HUGE_MESSAGE_BYTES`] message.
    HugeMessage,
    /// `mutate` returns an object that is not valid JSON.
    InvalidJson,
    /// `mutate` changes an identity field ([`Settings::field`]).
    Rename,
    /// Burns [`Settings::iterations`] iterations of arithmetic, then allows.
    Slow,
    /// Allows at once: the well-behaved control.
    Allow,
    /// Denies with the wall clock's seconds since the Unix epoch.
    Clock,
    /// Denies with a hash keyed by std's random hash-map seed.
    Random,
    /// Keeps state in globals (a call counter, the last request's uid, a
    /// buffer that grows by 64 KiB a call) and denies with what it found:
    /// `calls=1 last=none buffer=65536` on every call when nothing carries
    /// from one call to the next.
    Stateful,
}

/// The identity field `rename` changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    /// `metadata.name`.
    #[default]
    Name,
    /// `metadata.namespace`.
    Namespace,
    /// `metadata.uid`.
    Uid,
}

impl Field {
    /// The field's key in `metadata`.
    pub fn key(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Namespace => "namespace",
            Field::Uid => "uid",
        }
    }
}

/// What `prepare` does (once per settings, at load, when the host
/// pre-initializes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prepare {
    /// Spins forever: the load must fail at the policy's deadline.
    Loop,
    /// Rejects the settings.
    Reject,
    /// Allocates until the memory limit stops it: the load must fail.
    MemoryBomb,
    /// Leaves state for every call: `stateful`'s counter at 1000 and its
    /// last uid `prepared`, so each call reports `calls=1001 last=prepared`
    /// when it starts from the prepared state and nothing else carries.
    Remember,
}

/// What `prepare` rejects the settings with.
pub const PREPARE_REJECTION: &str = "misbehave: settings rejected in prepare";

/// `{ "behaviour": "...", "field": "...", "iterations": N, "prepare": "..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// What to do on every call.
    pub behaviour: Behaviour,
    /// For `rename`: which identity field to change (default `name`).
    #[serde(default)]
    pub field: Option<Field>,
    /// For `slow` (required there): how many iterations to burn.
    #[serde(default)]
    pub iterations: Option<u64>,
    /// For `recursion`: give every frame a 4 KiB local array, so the
    /// guest's shadow stack (1 MiB of linear memory) overflows before the
    /// engine's call stack does.
    #[serde(default, rename = "largeFrames")]
    pub large_frames: bool,
    /// What `prepare` does; without it there is nothing to prepare.
    #[serde(default)]
    pub prepare: Option<Prepare>,
}

/// What `panic` panics with.
pub const PANIC_MESSAGE: &str = "misbehave: deliberate panic";
/// Size of the `huge-message` denial (10 MiB).
pub const HUGE_MESSAGE_BYTES: usize = 10 << 20;
/// An annotation on the request's object that overrides `iterations` for
/// `slow`, so a test can calibrate the burn against the machine it runs on
/// without reloading the config.
pub const ITERATIONS_ANNOTATION: &str = "misbehave.portcullis.dev/iterations";
/// The invalid JSON `invalid-json` returns as its mutated object.
pub const INVALID_JSON: &str = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "#;

impl Policy for Misbehave {
    type Settings = Settings;

    const METADATA: Metadata = portcullis_sdk::metadata!(validate, mutate, &["*"]);

    fn validate_settings(settings: &Settings) -> Result<(), String> {
        let b = settings.behaviour;
        if settings.field.is_some() && b != Behaviour::Rename {
            return Err("`field` is only used by behaviour `rename`".to_string());
        }
        if settings.large_frames && b != Behaviour::Recursion {
            return Err("`largeFrames` is only used by behaviour `recursion`".to_string());
        }
        match (b, settings.iterations) {
            (Behaviour::Slow, None) => Err("behaviour `slow` needs `iterations`".to_string()),
            (Behaviour::Slow, Some(_)) => Ok(()),
            (_, Some(_)) => Err("`iterations` is only used by behaviour `slow`".to_string()),
            (_, None) => Ok(()),
        }
    }

    fn prepare(settings: &Settings) -> Result<bool, String> {
        match settings.prepare {
            None => Ok(false),
            Some(Prepare::Loop) => spin(),
            Some(Prepare::Reject) => Err(PREPARE_REJECTION.to_string()),
            Some(Prepare::MemoryBomb) => memory_bomb(),
            Some(Prepare::Remember) => {
                STATEFUL_CALLS.store(1000, Ordering::Relaxed);
                if let Ok(mut last) = STATEFUL_LAST.lock() {
                    *last = Some("prepared".to_string());
                }
                Ok(true)
            }
        }
    }

    fn validate(request: &Request, settings: &Settings) -> Result<Verdict, String> {
        Ok(match settings.behaviour {
            Behaviour::Loop => spin(),
            Behaviour::MemoryBomb => memory_bomb(),
            Behaviour::Recursion => {
                let depth = if settings.large_frames {
                    recurse_large(0)
                } else {
                    recurse(0)
                };
                Verdict::deny(format!("returned from depth {depth}"))
            }
            Behaviour::Panic => panic!("{PANIC_MESSAGE}"),
            Behaviour::HugeMessage => Verdict::deny(huge_message()),
            Behaviour::Slow => {
                black_box(burn(iterations(request, settings)));
                Verdict::allow()
            }
            Behaviour::Clock => Verdict::deny(clock()),
            Behaviour::Random => Verdict::deny(random()),
            Behaviour::Stateful => Verdict::deny(stateful(request)),
            Behaviour::Allow | Behaviour::InvalidJson | Behaviour::Rename => Verdict::allow(),
        })
    }

    fn mutate(request: &Request, settings: &Settings) -> Result<Mutation, String> {
        match settings.behaviour {
            Behaviour::Rename => {
                let field = settings.field.unwrap_or_default();
                rename(request, field).map(Mutation::patched)
            }
            // The SDK's `Mutation` only carries valid JSON: the module's
            // own export (`guest.rs`) answers this one before the SDK does.
            Behaviour::InvalidJson => {
                Err("invalid-json is produced by the module's own export".to_string())
            }
            _ => {
                let verdict = Self::validate(request, settings)?;
                Ok(Mutation::unchanged().with_verdict(verdict))
            }
        }
    }
}

/// `slow`'s iteration count: the request's annotation, else the settings.
fn iterations(request: &Request, settings: &Settings) -> u64 {
    request
        .object()
        .and_then(|o| o.pointer("/metadata/annotations"))
        .and_then(|a| a.get(ITERATIONS_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|n| n.parse().ok())
        .or(settings.iterations)
        .unwrap_or(0)
}

/// Spins until the host stops it.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Allocates and touches 1 MiB blocks until allocation fails.
fn memory_bomb() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xA5; 1 << 20]);
        black_box(&mut hoard);
    }
}

/// Recurses until the stack runs out. The result is used after the call,
/// so the recursion cannot become a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let below = recurse(black_box(depth + 1));
    black_box(below).wrapping_add(depth)
}

/// [`recurse`] with a 4 KiB array in every frame, kept alive across the
/// call so it lives in the guest's stack in linear memory.
#[inline(never)]
fn recurse_large(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let mut frame = [0u8; 4096];
    frame[(depth % 4096) as usize] = depth as u8;
    black_box(&mut frame);
    let below = recurse_large(black_box(depth + 1));
    black_box(&frame);
    below.wrapping_add(u64::from(frame[(depth % 4096) as usize]))
}

/// Cheap arithmetic, `iterations` times.
fn burn(iterations: u64) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..iterations {
        x = black_box(x.rotate_left(5) ^ i).wrapping_mul(0x0100_0000_01b3);
    }
    x
}

fn huge_message() -> String {
    "x".repeat(HUGE_MESSAGE_BYTES)
}

/// Seconds since the Unix epoch by the wall clock the host gives.
fn clock() -> String {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs().to_string(),
        Err(before) => format!("-{}", before.duration().as_secs()),
    }
}

/// 8 bytes (hex) of a fixed value hashed with std's randomly keyed hasher:
/// the same on every call only if the host's randomness is seeded.
fn random() -> String {
    let hash = RandomState::new().hash_one(0x5eed_u64);
    format!("{hash:016x}")
}

/// What a call finds in state an earlier call may have left: the counter
/// after this call, the uid of the request before, the buffer's length
/// after this call grew it by 64 KiB.
static STATEFUL_CALLS: AtomicU64 = AtomicU64::new(0);
static STATEFUL_LAST: Mutex<Option<String>> = Mutex::new(None);

fn stateful(request: &Request) -> String {
    static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    let calls = STATEFUL_CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    let last = STATEFUL_LAST
        .lock()
        .map(|mut last| last.replace(request.uid.clone()))
        .unwrap_or_default();
    let buffer = BUFFER
        .lock()
        .map(|mut buffer| {
            buffer.extend(std::iter::repeat_n(0xa5u8, 64 << 10));
            buffer.len()
        })
        .unwrap_or_default();
    let last = last.as_deref().unwrap_or("none");
    format!("calls={calls} last={last} buffer={buffer}")
}

/// The request's object with `metadata.<field>` changed.
fn rename(request: &Request, field: Field) -> Result<Value, String> {
    let mut object = request
        .object()
        .cloned()
        .ok_or_else(|| "the request has no object to rename".to_string())?;
    let metadata = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| "the object has no metadata".to_string())?;
    let key = field.key();
    let renamed = match metadata.get(key).and_then(Value::as_str) {
        Some(old) => format!("{old}-renamed"),
        None => "renamed".to_string(),
    };
    metadata.insert(key.to_string(), Value::String(renamed));
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_sdk::parse_settings;

    fn parse(text: &str) -> Result<Settings, String> {
        let settings = parse_settings::<Settings>(text)?;
        Misbehave::validate_settings(&settings)?;
        Ok(settings)
    }

    #[test]
    fn every_behaviour_parses() {
        for (name, behaviour) in [
            ("loop", Behaviour::Loop),
            ("memory-bomb", Behaviour::MemoryBomb),
            ("recursion", Behaviour::Recursion),
            ("panic", Behaviour::Panic),
            ("huge-message", Behaviour::HugeMessage),
            ("invalid-json", Behaviour::InvalidJson),
            ("rename", Behaviour::Rename),
            ("allow", Behaviour::Allow),
            ("clock", Behaviour::Clock),
            ("random", Behaviour::Random),
        ] {
            let settings = parse(&format!(r#"{{"behaviour": "{name}"}}"#)).unwrap();
            assert_eq!(settings.behaviour, behaviour, "{name}");
        }
        let slow = parse(r#"{"behaviour": "slow", "iterations": 1000}"#).unwrap();
        assert_eq!(slow.behaviour, Behaviour::Slow);
        assert_eq!(slow.iterations, Some(1000));
    }

    #[test]
    fn rename_takes_a_field() {
        let s = parse(r#"{"behaviour": "rename"}"#).unwrap();
        assert_eq!(s.field.unwrap_or_default(), Field::Name);
        for (name, field) in [
            ("name", Field::Name),
            ("namespace", Field::Namespace),
            ("uid", Field::Uid),
        ] {
            let s = parse(&format!(r#"{{"behaviour": "rename", "field": "{name}"}}"#)).unwrap();
            assert_eq!(s.field, Some(field));
        }
        let err = parse(r#"{"behaviour": "rename", "field": "labels"}"#).unwrap_err();
        assert!(err.contains("unknown variant `labels`"), "{err}");
    }

    #[test]
    fn unknown_behaviours_and_fields_are_rejected() {
        let err = parse(r#"{"behaviour": "explode"}"#).unwrap_err();
        assert!(
            err.starts_with("invalid settings: unknown variant `explode`, expected one of"),
            "{err}"
        );
        let err = parse(r#"{"behaviour": "loop", "speed": 3}"#).unwrap_err();
        assert!(err.contains("unknown field `speed`"), "{err}");
        let err = parse("{}").unwrap_err();
        assert!(err.contains("missing field `behaviour`"), "{err}");
    }

    #[test]
    fn settings_that_do_not_fit_the_behaviour_are_rejected() {
        assert_eq!(
            parse(r#"{"behaviour": "slow"}"#).unwrap_err(),
            "behaviour `slow` needs `iterations`"
        );
        assert_eq!(
            parse(r#"{"behaviour": "loop", "iterations": 5}"#).unwrap_err(),
            "`iterations` is only used by behaviour `slow`"
        );
        assert_eq!(
            parse(r#"{"behaviour": "panic", "field": "uid"}"#).unwrap_err(),
            "`field` is only used by behaviour `rename`"
        );
        assert_eq!(
            parse(r#"{"behaviour": "loop", "largeFrames": true}"#).unwrap_err(),
            "`largeFrames` is only used by behaviour `recursion`"
        );
        assert!(
            parse(r#"{"behaviour": "recursion", "largeFrames": true}"#)
                .unwrap()
                .large_frames
        );
        let err = parse(r#"{"behaviour": "slow", "iterations": -1}"#).unwrap_err();
        assert!(err.starts_with("invalid settings: invalid value"), "{err}");
    }
}
