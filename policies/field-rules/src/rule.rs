//! Evaluating compiled rules against an object, and wording what fails.
//!
//! `*` segments the `if` and `then` pointers share (the same segments up
//! to and including a `*`) are bound together: the rule is checked once
//! per element they visit, so "every container with X must have Y" reads
//! `if: /spec/containers/*/X`, `then: /spec/containers/*/Y`. Within one
//! binding, `if` holds when **any** location it reaches passes its test,
//! and then **every** location `then` reaches must pass.

use regex_lite::Regex;
use serde_json::Value;

use crate::pointer::{self, Location, Pointer, Segment};

/// A compiled rule.
#[derive(Debug)]
pub struct Rule<'a> {
    pub name: &'a str,
    pub kinds: &'a [String],
    pub api_groups: &'a [String],
    pub operations: &'a [String],
    pub when: Condition,
    pub then: Condition,
    pub message: Option<&'a str>,
}

/// A pointer and a test on what it reaches.
#[derive(Debug)]
pub struct Condition {
    /// The pointer as written.
    pub text: String,
    pub pointer: Pointer,
    pub test: Test,
}

/// What a location must be.
#[derive(Debug)]
pub enum Test {
    /// `true`: set (present and not null); `false`: not set.
    Present(bool),
    /// Exactly this JSON value.
    Equals(Value),
    /// A string (or a number or boolean, as JSON text) the regex finds a
    /// match in; unanchored.
    Matches(String, Regex),
    /// `true`: a list with an element equal to this value; `false`: not
    /// such a list (an unset list passes).
    Contains(Value, bool),
}

impl Test {
    fn passes(&self, value: Option<&Value>) -> bool {
        let set = value.filter(|v| !v.is_null());
        match self {
            Test::Present(want) => set.is_some() == *want,
            Test::Equals(want) => value == Some(want),
            Test::Matches(_, regex) => scalar_text(set).is_some_and(|text| regex.is_match(&text)),
            Test::Contains(item, want) => {
                let has = set
                    .and_then(Value::as_array)
                    .is_some_and(|list| list.contains(item));
                has == *want
            }
        }
    }

    /// `/spec/tls is set`: why the `if` held.
    fn held(&self, at: &Location) -> String {
        match self {
            Test::Present(true) => format!("{at} is set"),
            Test::Present(false) => format!("{at} is not set"),
            Test::Equals(value) => format!("{at} is {value}"),
            Test::Matches(pattern, _) => format!("{at} matches {pattern:?}"),
            Test::Contains(item, true) => format!("{at} contains {item}"),
            Test::Contains(item, false) => format!("{at} does not contain {item}"),
        }
    }

    /// `/metadata/annotations/x must be set`: what `then` required.
    fn required(&self, at: &Location, value: Option<&Value>) -> String {
        let actual = match value.filter(|v| !v.is_null()) {
            Some(value) => format!("it is {value}"),
            None => "it is not set".to_string(),
        };
        match self {
            Test::Present(true) => format!("{at} must be set"),
            Test::Present(false) => format!("{at} must not be set ({actual})"),
            Test::Equals(want) => format!("{at} must be {want} ({actual})"),
            Test::Matches(pattern, _) => format!("{at} must match {pattern:?} ({actual})"),
            Test::Contains(item, true) => format!("{at} must contain {item} ({actual})"),
            Test::Contains(item, false) => format!("{at} must not contain {item} ({actual})"),
        }
    }
}

/// Strings as they are, numbers and booleans as JSON text; nothing else
/// can match a regex.
fn scalar_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

impl Rule<'_> {
    /// Whether the rule is about objects of this kind and API group, on
    /// this operation.
    pub fn applies_to(&self, group: &str, kind: &str, operation: &str) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && (self.api_groups.is_empty() || self.api_groups.iter().any(|g| g == group))
            && (self.operations.is_empty() || self.operations.iter().any(|o| o == operation))
    }

    /// One message per `then` location that fails where `if` holds.
    pub fn violations(&self, object: &Value) -> Vec<String> {
        let shared = shared_prefix(&self.when.pointer.segments, &self.then.pointer.segments);
        let when_rest = &self.when.pointer.segments[shared..];
        let then_rest = &self.then.pointer.segments[shared..];
        let mut out = Vec::new();
        let prefix = &self.when.pointer.segments[..shared];
        for (base, value) in pointer::expand(object, prefix, Location::default()) {
            // A shared prefix ends in `*`, so it only yields elements that
            // exist; `None` happens only for an empty prefix, never here.
            let Some(value) = value else { continue };
            let held = pointer::expand(value, when_rest, base.clone())
                .into_iter()
                .find(|(_, v)| self.when.test.passes(*v));
            let Some((held_at, _)) = held else { continue };
            for (at, v) in pointer::expand(value, then_rest, base.clone()) {
                if self.then.test.passes(v) {
                    continue;
                }
                let why = match self.message {
                    Some(message) => format!("{message} (at {at})"),
                    None => format!(
                        "{}, so {}",
                        self.when.test.held(&held_at),
                        self.then.test.required(&at, v)
                    ),
                };
                out.push(format!("rule {:?}: {why}", self.name));
            }
        }
        out
    }
}

/// How many leading segments the two pointers share up to and including
/// the last shared `*`; 0 when they share no `*`.
fn shared_prefix(a: &[Segment], b: &[Segment]) -> usize {
    a.iter()
        .zip(b)
        .take_while(|(x, y)| x == y)
        .enumerate()
        .filter(|(_, (x, _))| **x == Segment::Each)
        .map(|(i, _)| i + 1)
        .last()
        .unwrap_or(0)
}
