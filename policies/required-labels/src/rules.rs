//! The `labels` setting: which labels are required, in the order the
//! config lists them (so messages list them in that order too).

use std::fmt;

use regex_lite::Regex;
use serde::Deserialize;
use serde::de::{Deserializer, Error as _, MapAccess, Visitor};

/// `{ key: null | "regex", ... }` in config order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelRules(pub Vec<(String, Option<String>)>);

/// One required label, ready to check.
#[derive(Debug)]
pub struct Rule<'a> {
    /// The label key.
    pub key: &'a str,
    /// The value pattern as written, with its compiled full-match form.
    pub pattern: Option<(&'a str, Regex)>,
}

impl LabelRules {
    /// Compiles every pattern; the error names each key whose pattern does
    /// not compile.
    pub fn compile(&self) -> Result<Vec<Rule<'_>>, String> {
        let mut rules = Vec::with_capacity(self.0.len());
        let mut errors = Vec::new();
        for (key, pattern) in &self.0 {
            let compiled = match pattern {
                None => None,
                // Anchored so the whole value must match, not a substring.
                Some(p) => match Regex::new(&format!("^(?:{p})$")) {
                    Ok(re) => Some((p.as_str(), re)),
                    Err(e) => {
                        errors.push(format!("label {key:?} has an invalid regex {p:?}: {e}"));
                        continue;
                    }
                },
            };
            rules.push(Rule {
                key,
                pattern: compiled,
            });
        }
        if errors.is_empty() {
            Ok(rules)
        } else {
            Err(errors.join("; "))
        }
    }
}

impl<'de> Deserialize<'de> for LabelRules {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RulesVisitor)
    }
}

/// Reads the map entry by entry, keeping the order and refusing a key
/// given twice (JSON would otherwise keep only the last).
struct RulesVisitor;

impl<'de> Visitor<'de> for RulesVisitor {
    type Value = LabelRules;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map from label key to null or a regex")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LabelRules, A::Error> {
        let mut rules: Vec<(String, Option<String>)> = Vec::new();
        while let Some((key, pattern)) = map.next_entry::<String, Option<String>>()? {
            if rules.iter().any(|(k, _)| *k == key) {
                return Err(A::Error::custom(format!("label {key:?} is listed twice")));
            }
            rules.push((key, pattern));
        }
        Ok(LabelRules(rules))
    }
}
