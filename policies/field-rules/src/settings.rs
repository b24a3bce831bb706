//! The settings as written, and compiling them into rules: pointers
//! parsed, regexes built, every problem reported at once.

use regex_lite::Regex;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::pointer::Pointer;
use crate::rule::{Condition, Rule, Test};

/// `rules: [...]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Every rule is checked; each denial names its rule.
    pub rules: Vec<RuleSpec>,
}

/// One rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    /// Unique; named in every message.
    pub name: String,
    /// Only objects of these kinds (`metadata`-level `kind`); all when empty.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only objects in these API groups (`""` is the core group); all when
    /// empty.
    #[serde(default)]
    pub api_groups: Vec<String>,
    /// Only these operations (`CREATE`, `UPDATE`); both when empty.
    #[serde(default)]
    pub operations: Vec<String>,
    /// When this holds...
    #[serde(rename = "if")]
    pub when: ConditionSpec,
    /// ...this must hold.
    pub then: ConditionSpec,
    /// Replaces the generated explanation in messages.
    #[serde(default)]
    pub message: Option<String>,
}

/// A condition as written: a pointer and exactly one test.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    pub pointer: String,
    #[serde(default)]
    pub present: Option<bool>,
    #[serde(default)]
    pub absent: Option<bool>,
    /// `Some(Value::Null)` for `equals: null`, which plain `Option` would
    /// read as "not given".
    #[serde(default, deserialize_with = "given")]
    pub equals: Option<Value>,
    #[serde(default)]
    pub matches: Option<String>,
    /// A list that has an element equal to this.
    #[serde(default, deserialize_with = "given")]
    pub contains: Option<Value>,
    /// Not a list that has an element equal to this (an unset list passes).
    #[serde(default, rename = "notContains", deserialize_with = "given")]
    pub not_contains: Option<Value>,
}

fn given<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl Settings {
    /// The rules ready to evaluate, or every problem joined with `; `.
    pub fn compile(&self) -> Result<Vec<Rule<'_>>, String> {
        let mut errors = Vec::new();
        if self.rules.is_empty() {
            errors.push("rules must list at least one rule".to_string());
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (index, spec) in self.rules.iter().enumerate() {
            let at = if spec.name.is_empty() {
                errors.push(format!("rules[{index}]: name must not be empty"));
                format!("rules[{index}]")
            } else {
                format!("rule {:?}", spec.name)
            };
            if let Some(first) = self.rules[..index].iter().position(|r| r.name == spec.name)
                && !spec.name.is_empty()
            {
                errors.push(format!(
                    "rules[{first}] and rules[{index}] are both named {:?}",
                    spec.name
                ));
            }
            if spec.kinds.iter().any(String::is_empty) {
                errors.push(format!("{at}: kinds must not contain an empty string"));
            }
            if let Some(op) = spec
                .operations
                .iter()
                .find(|op| !matches!(op.as_str(), "CREATE" | "UPDATE"))
            {
                errors.push(format!(
                    "{at}: operations: {op:?} is not CREATE or UPDATE (the operations with an object to check)"
                ));
            }
            if spec.message.as_deref().is_some_and(str::is_empty) {
                errors.push(format!("{at}: message must not be empty"));
            }
            let when = spec.when.compile(&format!("{at}: if"), &mut errors);
            let then = spec.then.compile(&format!("{at}: then"), &mut errors);
            if let (Some(when), Some(then)) = (when, then) {
                rules.push(Rule {
                    name: &spec.name,
                    kinds: &spec.kinds,
                    api_groups: &spec.api_groups,
                    operations: &spec.operations,
                    when,
                    then,
                    message: spec.message.as_deref(),
                });
            }
        }
        if errors.is_empty() {
            Ok(rules)
        } else {
            Err(errors.join("; "))
        }
    }
}

impl ConditionSpec {
    fn compile(&self, at: &str, errors: &mut Vec<String>) -> Option<Condition> {
        let pointer = Pointer::parse(&self.pointer)
            .map_err(|e| errors.push(format!("{at}.pointer {:?}: {e}", self.pointer)))
            .ok();
        let given: Vec<&str> = [
            self.present.map(|_| "present"),
            self.absent.map(|_| "absent"),
            self.equals.as_ref().map(|_| "equals"),
            self.matches.as_ref().map(|_| "matches"),
            self.contains.as_ref().map(|_| "contains"),
            self.not_contains.as_ref().map(|_| "notContains"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() != 1 {
            let found = if given.is_empty() {
                "none".to_string()
            } else {
                given.join(", ")
            };
            errors.push(format!(
                "{at} must give exactly one of present, absent, equals, matches, contains, notContains (found {found})"
            ));
            return None;
        }
        if let Some(value) = &self.contains {
            return Some(Condition {
                text: self.pointer.clone(),
                pointer: pointer?,
                test: Test::Contains(value.clone(), true),
            });
        }
        if let Some(value) = &self.not_contains {
            return Some(Condition {
                text: self.pointer.clone(),
                pointer: pointer?,
                test: Test::Contains(value.clone(), false),
            });
        }
        let test = match (self.present, self.absent, &self.equals, &self.matches) {
            (Some(present), ..) => Test::Present(present),
            (_, Some(absent), ..) => Test::Present(!absent),
            (_, _, Some(value), _) => Test::Equals(value.clone()),
            (_, _, _, Some(pattern)) => match Regex::new(pattern) {
                Ok(regex) => Test::Matches(pattern.clone(), regex),
                Err(e) => {
                    errors.push(format!(
                        "{at}.matches {pattern:?} is not a valid regex: {e}"
                    ));
                    return None;
                }
            },
            _ => return None,
        };
        Some(Condition {
            text: self.pointer.clone(),
            pointer: pointer?,
            test,
        })
    }
}
