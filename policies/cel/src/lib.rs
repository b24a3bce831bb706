//! `cel`: a validating policy whose rules are CEL expressions written the
//! way Kubernetes' `ValidatingAdmissionPolicy` writes them, so an existing
//! policy's `validations`, `matchConditions`, `variables` and
//! `auditAnnotations` paste in unchanged (see README.md).
//!
//! Layout: `settings.rs` reads the settings and parses every expression;
//! `library.rs` adds the Kubernetes CEL libraries (quantities, regex
//! `find`, list aggregates); `quantity.rs` is Kubernetes' quantity
//! arithmetic; this file binds the variables and runs the rules.

mod library;
mod quantity;
mod settings;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::objects::Key;
use cel::{Context, Value as CelValue};
use portcullis_sdk::{Metadata, Policy, Request, Verdict};
use serde_json::Value;

pub use settings::Settings;
use settings::{Expression, Rules};

/// The policy.
pub struct CelPolicy;

impl Policy for CelPolicy {
    type Settings = Settings;

    const METADATA: Metadata = Metadata {
        name: "cel",
        version: env!("CARGO_PKG_VERSION"),
        resources: &["*"],
        validates: true,
        mutates: false,
    };

    fn validate_settings(settings: &Settings) -> Result<(), String> {
        let rules = settings.compile()?;
        // The libraries install into a context the same way every call.
        library::install(&mut Context::with_env(rules.env.clone()))
    }

    /// Parsing the expressions is most of a call's cost (the CEL
    /// environment and the parser, ~40 us each natively per expression):
    /// done once here, the host serves every call from the result.
    fn prepare(settings: &Settings) -> Result<bool, String> {
        let rules = settings.compile()?;
        let _ = PREPARED.set((settings.0.clone(), rules));
        Ok(true)
    }

    fn validate(request: &Request, settings: &Settings) -> Result<Verdict, String> {
        match PREPARED.get() {
            // The host prepares each (module, settings) pair apart, so this
            // holds; checked anyway, as the settings are at hand.
            Some((prepared_for, rules)) if *prepared_for == settings.0 => evaluate(rules, request),
            _ => evaluate(&settings.compile()?, request),
        }
    }
}

/// The rules `prepare` parsed, with the settings they came from.
static PREPARED: OnceLock<(Value, Rules)> = OnceLock::new();

/// Runs `rules` on `request`, as a `ValidatingAdmissionPolicy` would: the
/// match conditions (all must hold, else the request is allowed), the
/// variables in order, every validation, then the audit annotations.
///
/// # Errors
/// An expression that fails to evaluate, or does not give the type it
/// must: a policy error, handled by the policy's `onError` (Kubernetes
/// would apply the policy's `failurePolicy`).
pub fn evaluate(rules: &Rules, request: &Request) -> Result<Verdict, String> {
    let mut context = Context::with_env(rules.env.clone());
    library::install(&mut context)?;
    // Only what some expression reads is converted: the object is most of
    // a call's conversion work, and `request` or `oldObject` often unread.
    let reads = |name: &str| rules.reads.contains(name);
    if reads("object") {
        context.add_variable_from_value(
            "object",
            json_to_cel(request.object().unwrap_or(&Value::Null)),
        );
    }
    if reads("oldObject") {
        context.add_variable_from_value(
            "oldObject",
            json_to_cel(request.old_object().unwrap_or(&Value::Null)),
        );
    }
    if reads("request") {
        context.add_variable_from_value("request", request_to_cel(request));
    }
    if reads("params") {
        context.add_variable_from_value("params", json_to_cel(&rules.params));
    }
    // The API server adds the namespace's object; a webhook's request has
    // none, so rules that read it see null.
    context.add_variable_from_value("namespaceObject", CelValue::Null);
    context.add_variable_from_value("variables", CelValue::from(HashMap::<Key, CelValue>::new()));

    for (name, condition) in &rules.match_conditions {
        match run(&context, condition).map_err(|e| explain_null_object(request, e))? {
            CelValue::Bool(true) => {}
            CelValue::Bool(false) => return Ok(Verdict::allow()),
            other => {
                return Err(format!(
                    "match condition {name:?} must be a bool, got {}",
                    describe(&other)
                ));
            }
        }
    }

    // Each variable sees the ones before it. One that fails is left out:
    // Kubernetes evaluates variables lazily, so only a rule that uses it
    // fails (with "no such key", and the variable's own error named).
    let mut variables: HashMap<Key, CelValue> = HashMap::new();
    let mut failed_variables: Vec<String> = Vec::new();
    for (name, expression) in &rules.variables {
        match run(&context, expression) {
            Ok(value) => {
                variables.insert(Key::String(Arc::new(name.clone())), value);
                context.add_variable_from_value("variables", CelValue::from(variables.clone()));
            }
            Err(error) => failed_variables.push(format!("variables.{name}: {error}")),
        }
    }
    let with_variables = |error: String| {
        let error = if failed_variables.is_empty() {
            error
        } else {
            format!("{error} ({})", failed_variables.join("; "))
        };
        explain_null_object(request, error)
    };

    let mut violations = Vec::new();
    let mut code = None;
    for validation in &rules.validations {
        match run(&context, &validation.expression).map_err(with_variables)? {
            CelValue::Bool(true) => {}
            CelValue::Bool(false) => {
                violations.push(message(&context, validation));
                code.get_or_insert(validation.code);
            }
            other => {
                return Err(format!(
                    "{} must be a bool, got {}",
                    validation.expression.field,
                    describe(&other)
                ));
            }
        }
    }

    let mut verdict = if violations.is_empty() || !rules.actions.deny {
        Verdict::allow()
    } else {
        Verdict::deny(violations.join("; ")).with_code(code.unwrap_or(422))
    };
    if rules.actions.warn {
        for violation in &violations {
            verdict = verdict.with_warning(violation.clone());
        }
    }
    if rules.actions.audit && !violations.is_empty() {
        let failures = serde_json::to_string(&violations).map_err(|e| e.to_string())?;
        verdict = verdict.with_audit_annotation("validation_failures", failures);
    }
    for (key, expression) in &rules.audit_annotations {
        match run(&context, expression).map_err(with_variables)? {
            CelValue::String(value) => verdict = verdict.with_audit_annotation(key, value.as_str()),
            CelValue::Null => {}
            other => {
                return Err(format!(
                    "{} must be a string or null, got {}",
                    expression.field,
                    describe(&other)
                ));
            }
        }
    }
    Ok(verdict)
}

/// A rule that reads `object` on a request without one (DELETE) fails
/// with the interpreter's words for null; say what happened.
fn explain_null_object(request: &Request, error: String) -> String {
    if request.object().is_none() && error.contains("null") {
        format!(
            "{error}; `object` is null: this {} request has none (match CREATE and UPDATE, \
             or test `object != null` first)",
            request.operation.as_str()
        )
    } else {
        error
    }
}

/// Evaluates one expression; an error names it.
fn run(context: &Context<'_, '_>, expression: &Expression) -> Result<CelValue, String> {
    expression
        .program
        .execute(context)
        .map_err(|error| format!("{} ({:?}): {error}", expression.field, expression.source))
}

/// The message of a failed validation: its `messageExpression` when that
/// gives a non-empty single-line string, else its `message`, else the
/// failed expression (as Kubernetes words it).
fn message(context: &Context<'_, '_>, validation: &settings::Validation) -> String {
    if let Some(expression) = &validation.message_expression
        && let Ok(CelValue::String(text)) = run(context, expression)
    {
        let text = text.trim();
        if !text.is_empty() && !text.contains('\n') {
            return text.to_owned();
        }
    }
    match &validation.message {
        Some(message) if !message.is_empty() => message.clone(),
        _ => format!("failed expression: {}", validation.expression.source),
    }
}

fn describe(value: &CelValue) -> String {
    let text = format!("{value:?}");
    if text.len() > 80 {
        format!("{}...", &text[..text.floor_char_boundary(80)])
    } else {
        text
    }
}

/// JSON as CEL values: whole numbers that fit are `int` (Kubernetes'
/// schemas say integer), others `double`.
fn json_to_cel(value: &Value) -> CelValue {
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => CelValue::Int(i),
            (None, Some(u)) => CelValue::UInt(u),
            _ => CelValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(map) => CelValue::from(
            map.iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect::<HashMap<Key, CelValue>>(),
        ),
    }
}

/// The `request` variable: the AdmissionRequest's fields, as
/// `ValidatingAdmissionPolicy` expressions read them.
fn request_to_cel(request: &Request) -> CelValue {
    let gvk = |g: &portcullis_sdk::GroupVersionKind| serde_json::json!({"group": g.group, "version": g.version, "kind": g.kind});
    let gvr = |g: &portcullis_sdk::GroupVersionResource| serde_json::json!({"group": g.group, "version": g.version, "resource": g.resource});
    let json = serde_json::json!({
        "uid": request.uid,
        "kind": gvk(&request.kind),
        "resource": gvr(&request.resource),
        "subResource": request.sub_resource,
        "requestKind": request.request_kind.as_ref().map_or_else(|| gvk(&request.kind), gvk),
        "requestResource": request.request_resource.as_ref().map_or_else(|| gvr(&request.resource), gvr),
        "requestSubResource": request.request_sub_resource.clone().unwrap_or_else(|| request.sub_resource.clone()),
        "name": request.name,
        "namespace": request.namespace,
        "operation": request.operation.as_str(),
        "userInfo": {
            "username": request.user_info.username,
            "uid": request.user_info.uid,
            "groups": request.user_info.groups,
            "extra": request.user_info.extra,
        },
        "dryRun": request.dry_run,
        "options": request.options().cloned().unwrap_or(Value::Null),
    });
    json_to_cel(&json)
}

portcullis_sdk::export_policy!(CelPolicy);

#[cfg(test)]
mod tests;
