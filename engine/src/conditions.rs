//! A policy's `matchConditions`: CEL expressions that must all be true for
//! the policy to judge a request, as a webhook's `matchConditions` in
//! Kubernetes. Parsed once at load (a syntax error refuses the config);
//! evaluated against `object`, `oldObject` and `request` only for a
//! request every cheaper check has already matched, and each variable is
//! made from the request's JSON at most once per review, only if some
//! condition reads it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::objects::Key;
use cel::{Context, Env, Program, Value as CelValue};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::selector::{ObjectJson, qualified_name};

/// The most conditions a policy may have (as the API server allows a
/// webhook).
pub const MAX_CONDITIONS: usize = 64;

/// One condition as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawMatchCondition {
    pub name: String,
    pub expression: String,
}

/// A condition that did not give a bool, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("matchCondition {name:?} could not be evaluated: {message}")]
pub struct ConditionError {
    pub name: String,
    pub message: String,
}

/// A policy's conditions, parsed. Compared by what was written.
pub struct MatchConditions {
    env: Arc<Env>,
    conditions: Vec<Condition>,
    /// The variables some condition reads: only those are made.
    reads: Reads,
}

struct Condition {
    name: String,
    expression: String,
    program: Program,
}

#[derive(Debug, Clone, Copy, Default)]
struct Reads {
    object: bool,
    old_object: bool,
    request: bool,
}

impl std::fmt::Debug for MatchConditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.conditions
                    .iter()
                    .map(|c| (c.name.as_str(), c.expression.as_str())),
            )
            .finish()
    }
}

impl PartialEq for MatchConditions {
    fn eq(&self, other: &Self) -> bool {
        self.conditions.len() == other.conditions.len()
            && self
                .conditions
                .iter()
                .zip(&other.conditions)
                .all(|(a, b)| a.name == b.name && a.expression == b.expression)
    }
}

impl Eq for MatchConditions {}

/// The variable Kubernetes offers for authorization checks; this server
/// has no authorizer to ask.
const AUTHORIZER: &str = "authorizer";

/// The environment conditions are parsed and run in: CEL's standard
/// library with its macros, and the `strings`, `lists` and `math`
/// extensions.
fn environment() -> Result<Env, String> {
    let mut env = Env::stdlib();
    for (name, extension) in [
        ("strings", cel::extensions::strings as fn(&mut Env) -> _),
        ("lists", cel::extensions::lists),
        ("math", cel::extensions::math),
    ] {
        env.add_extension(extension)
            .map_err(|e| format!("the CEL {name} extension: {e}"))?;
    }
    Ok(env)
}

impl MatchConditions {
    /// Checks and parses conditions as the API server checks a webhook's:
    /// at most 64, each with a unique qualified name and an expression
    /// that parses. `authorizer` is refused: there is none to ask.
    ///
    /// # Errors
    /// The first problem, prefixed with the condition's index (and name).
    pub fn compile(raw: Vec<RawMatchCondition>) -> Result<Self, String> {
        if raw.len() > MAX_CONDITIONS {
            return Err(format!(
                "at most {MAX_CONDITIONS} conditions are allowed, not {}",
                raw.len()
            ));
        }
        let env = environment()?;
        let mut reads = Reads::default();
        let mut conditions: Vec<Condition> = Vec::with_capacity(raw.len());
        for (index, RawMatchCondition { name, expression }) in raw.into_iter().enumerate() {
            qualified_name(&name).map_err(|m| format!("[{index}].name: {name:?}: {m}"))?;
            if conditions.iter().any(|c| c.name == name) {
                return Err(format!("[{index}].name: {name:?} is used twice"));
            }
            let at = format!("[{index}] ({name})");
            if expression.trim().is_empty() {
                return Err(format!("{at}.expression: must not be empty"));
            }
            let program = env.compile(&expression).map_err(|errors| {
                let errors: Vec<String> = errors
                    .errors
                    .iter()
                    .map(|e| format!("{}:{}: {}", e.pos.0, e.pos.1, e.msg))
                    .collect();
                format!(
                    "{at}.expression: syntax error at {} in {expression:?}",
                    errors.join("; ")
                )
            })?;
            let references = program.references();
            if references.has_variable(AUTHORIZER) {
                return Err(format!(
                    "{at}.expression: `{AUTHORIZER}` is not supported: this server cannot ask \
                     the API server's authorizer (match on request.userInfo instead)"
                ));
            }
            reads.object |= references.has_variable("object");
            reads.old_object |= references.has_variable("oldObject");
            reads.request |= references.has_variable("request");
            conditions.push(Condition {
                name,
                expression,
                program,
            });
        }
        Ok(Self {
            env: Arc::new(env),
            conditions,
            reads,
        })
    }

    /// Whether there are no conditions.
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Evaluates every condition, as the API server does: any false means
    /// no match (even if another failed); otherwise the first that failed
    /// or gave no bool is the error; otherwise a match.
    ///
    /// # Errors
    /// A [`ConditionError`] naming the condition.
    pub(crate) fn evaluate(&self, variables: &Variables<'_>) -> Result<bool, ConditionError> {
        let named = |condition: &Condition, message: String| ConditionError {
            name: condition.name.clone(),
            message,
        };
        let Some(first) = self.conditions.first() else {
            return Ok(true);
        };
        let mut context = Context::with_env(self.env.clone());
        let made = [
            (self.reads.object, "object", &variables.object),
            (self.reads.old_object, "oldObject", &variables.old_object),
            (self.reads.request, "request", &variables.request),
        ];
        for (read, name, cached) in made {
            if read {
                let value = variables
                    .get(cached, name)
                    .map_err(|message| named(first, message))?;
                context.add_variable_from_value(name, value);
            }
        }
        let mut failed = None;
        for condition in &self.conditions {
            match condition.program.execute(&context) {
                Ok(CelValue::Bool(true)) => {}
                Ok(CelValue::Bool(false)) => return Ok(false),
                Ok(other) => {
                    failed.get_or_insert_with(|| {
                        named(
                            condition,
                            format!("it gave a {} where a bool is needed", other.type_of()),
                        )
                    });
                }
                Err(error) => {
                    failed.get_or_insert_with(|| named(condition, error.to_string()));
                }
            }
        }
        failed.map_or(Ok(true), Err)
    }
}

/// The variables a review offers conditions, made on first use and kept
/// for the review.
pub(crate) struct Variables<'r> {
    /// The AdmissionRequest as received.
    request_json: &'r RawValue,
    object_json: Option<ObjectJson<'r>>,
    old_object_json: Option<ObjectJson<'r>>,
    object: OnceLock<Result<CelValue, String>>,
    old_object: OnceLock<Result<CelValue, String>>,
    request: OnceLock<Result<CelValue, String>>,
}

impl<'r> Variables<'r> {
    pub(crate) fn new(
        request: &'r RawValue,
        object: Option<ObjectJson<'r>>,
        old_object: Option<ObjectJson<'r>>,
    ) -> Self {
        Self {
            request_json: request,
            object_json: object,
            old_object_json: old_object,
            object: OnceLock::new(),
            old_object: OnceLock::new(),
            request: OnceLock::new(),
        }
    }

    /// The variable kept in `cached`, made now if it was not yet.
    fn get(
        &self,
        cached: &OnceLock<Result<CelValue, String>>,
        name: &str,
    ) -> Result<CelValue, String> {
        cached
            .get_or_init(|| {
                let made = match name {
                    "object" => object_value(self.object_json),
                    "oldObject" => object_value(self.old_object_json),
                    _ => request_value(self.request_json),
                };
                made.map_err(|error| format!("`{name}` cannot be read: {error}"))
            })
            .clone()
    }
}

/// An object as CEL sees it; `null` when the request has none (`object`
/// of a DELETE, `oldObject` of a CREATE).
fn object_value(object: Option<ObjectJson<'_>>) -> Result<CelValue, serde_json::Error> {
    match object {
        None => Ok(CelValue::Null),
        Some(ObjectJson::Raw(raw)) => serde_json::from_str::<Cel>(raw.get()).map(|c| c.0),
        Some(ObjectJson::Parsed(value)) => Cel::deserialize(value).map(|c| c.0),
    }
}

/// `request`: the AdmissionRequest's fields without `object` and
/// `oldObject`, which the API server leaves out of it too (they are
/// variables of their own).
fn request_value(request: &RawValue) -> Result<CelValue, serde_json::Error> {
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = CelValue;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an AdmissionRequest")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CelValue, A::Error> {
            let mut fields = HashMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if key == "object" || key == "oldObject" {
                    map.next_value::<IgnoredAny>()?;
                } else {
                    let Cel(value) = map.next_value()?;
                    fields.insert(Key::String(Arc::new(key)), value);
                }
            }
            Ok(CelValue::from(fields))
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(request.get());
    deserializer.deserialize_map(Fields)
}

/// JSON read straight into a CEL value: whole numbers that fit are `int`
/// (Kubernetes' schemas say integer), larger ones `uint`, others `double`.
struct Cel(CelValue);

impl<'de> Deserialize<'de> for Cel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CelVisitor).map(Cel)
    }
}

struct CelVisitor;

impl<'de> Visitor<'de> for CelVisitor {
    type Value = CelValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<CelValue, E> {
        Ok(CelValue::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<CelValue, E> {
        Ok(CelValue::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<CelValue, E> {
        Ok(i64::try_from(v).map_or(CelValue::UInt(v), CelValue::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<CelValue, E> {
        Ok(CelValue::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<CelValue, E> {
        Ok(CelValue::String(Arc::new(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<CelValue, E> {
        Ok(CelValue::String(Arc::new(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<CelValue, E> {
        Ok(CelValue::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<CelValue, E> {
        Ok(CelValue::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<CelValue, D::Error> {
        deserializer.deserialize_any(CelVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CelValue, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Cel(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(CelValue::List(Arc::new(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CelValue, A::Error> {
        let mut entries = HashMap::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((key, Cel(value))) = map.next_entry::<String, Cel>()? {
            entries.insert(Key::String(Arc::new(key)), value);
        }
        Ok(CelValue::from(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(pairs: &[(&str, &str)]) -> Result<MatchConditions, String> {
        MatchConditions::compile(
            pairs
                .iter()
                .map(|(name, expression)| RawMatchCondition {
                    name: name.to_string(),
                    expression: expression.to_string(),
                })
                .collect(),
        )
    }

    const REQUEST: &str = r#"{"uid":"u","operation":"UPDATE","namespace":"team-a","name":"p",
        "kind":{"group":"","version":"v1","kind":"Pod"},
        "resource":{"group":"","version":"v1","resource":"pods"},
        "userInfo":{"username":"alice","groups":["devs","system:authenticated"]},
        "dryRun":false,"options":{"kind":"UpdateOptions"},
        "object":{"metadata":{"name":"p","labels":{"app":"web"}},"spec":{"replicas":3,"big":18446744073709551615,"ratio":0.5}},
        "oldObject":{"metadata":{"name":"p"}}}"#;

    fn evaluate(conditions: &MatchConditions, request: &str) -> Result<bool, ConditionError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Objects<'a> {
            #[serde(borrow)]
            object: Option<&'a RawValue>,
            #[serde(borrow)]
            old_object: Option<&'a RawValue>,
        }
        let raw: &RawValue = serde_json::from_str(request).expect("json");
        let objects: Objects<'_> = serde_json::from_str(request).expect("json");
        let variables = Variables::new(
            raw,
            objects.object.map(ObjectJson::Raw),
            objects.old_object.map(ObjectJson::Raw),
        );
        conditions.evaluate(&variables)
    }

    #[test]
    fn conditions_see_object_old_object_and_request() {
        for expression in [
            "object.metadata.labels.app == 'web'",
            "!has(oldObject.metadata.labels)",
            "request.operation == 'UPDATE' && request.namespace == 'team-a'",
            "request.userInfo.username == 'alice' && 'devs' in request.userInfo.groups",
            "request.kind.kind == 'Pod' && request.resource.resource == 'pods'",
            "request.dryRun == false && request.options.kind == 'UpdateOptions'",
            "!has(request.object) && !has(request.oldObject)",
            "object.spec.replicas == 3 && object.spec.replicas > 2",
            "object.spec.big == 18446744073709551615u && object.spec.ratio == 0.5",
            "'web'.upperAscii() == 'WEB' && math.greatest(1, 2) == 2",
            "object.metadata.labels.exists(k, k.startsWith('a'))",
        ] {
            let conditions = compile(&[("c", expression)]).expect(expression);
            assert_eq!(evaluate(&conditions, REQUEST), Ok(true), "{expression}");
        }
    }

    #[test]
    fn all_must_be_true_and_a_false_wins_over_an_error() {
        let conditions =
            compile(&[("a", "true"), ("b", "object.metadata.name == 'q'")]).expect("valid");
        assert_eq!(evaluate(&conditions, REQUEST), Ok(false));

        let conditions =
            compile(&[("broken", "object.nope.deeper"), ("no", "false")]).expect("valid");
        assert_eq!(evaluate(&conditions, REQUEST), Ok(false));

        let conditions =
            compile(&[("yes", "true"), ("broken", "object.nope.deeper == 1")]).expect("valid");
        let err = evaluate(&conditions, REQUEST).expect_err("no such key");
        assert_eq!(err.name, "broken");
        assert!(
            err.to_string()
                .starts_with("matchCondition \"broken\" could not be evaluated: "),
            "{err}"
        );

        let conditions = compile(&[("not-bool", "object.metadata.name")]).expect("valid");
        let err = evaluate(&conditions, REQUEST).expect_err("a string");
        assert_eq!(
            err.to_string(),
            "matchCondition \"not-bool\" could not be evaluated: it gave a string where a bool is needed"
        );
    }

    #[test]
    fn a_missing_object_is_null() {
        let delete = r#"{"uid":"u","operation":"DELETE","oldObject":{"metadata":{"name":"p"}}}"#;
        let conditions =
            compile(&[("c", "object == null && oldObject.metadata.name == 'p'")]).expect("valid");
        assert_eq!(evaluate(&conditions, delete), Ok(true));
    }

    #[test]
    fn conditions_are_checked_at_load() {
        for (pairs, expected) in [
            (
                vec![("bad name!", "true")],
                "[0].name: \"bad name!\": name part must consist of",
            ),
            (
                vec![("a", "true"), ("a", "false")],
                "[1].name: \"a\" is used twice",
            ),
            (vec![("a", " ")], "[0] (a).expression: must not be empty"),
            (
                vec![("ok", "true"), ("broken", "object.metadata.name ==")],
                "[1] (broken).expression: syntax error at 1:",
            ),
            (
                vec![(
                    "rbac",
                    "authorizer.group('apps').resource('deployments').check('create').allowed()",
                )],
                "[0] (rbac).expression: `authorizer` is not supported",
            ),
        ] {
            let err = compile(&pairs).expect_err(expected);
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let many: Vec<(String, &str)> = (0..65).map(|i| (format!("c{i}"), "true")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, e)| (n.as_str(), *e)).collect();
        assert_eq!(
            compile(&many).expect_err("65").as_str(),
            "at most 64 conditions are allowed, not 65"
        );
        assert!(compile(&many[..64]).is_ok());
        assert!(compile(&[("example.com/prefixed", "true")]).is_ok());
    }

    #[test]
    fn parsed_objects_read_the_same() {
        let value = serde_json::json!({"metadata": {"labels": {"app": "web"}}, "n": 1});
        let from_value = object_value(Some(ObjectJson::Parsed(&value))).expect("value");
        let text = value.to_string();
        let raw: &RawValue = serde_json::from_str(&text).expect("json");
        let from_raw = object_value(Some(ObjectJson::Raw(raw))).expect("raw");
        assert_eq!(from_value, from_raw);
    }
}
