//! The settings: a `ValidatingAdmissionPolicy`'s `spec` (its
//! `validations`, `matchConditions`, `variables` and `auditAnnotations`
//! pasted in unchanged), or a whole `ValidatingAdmissionPolicy` document;
//! beside either, the `params` a binding would supply and its
//! `validationActions`. Every expression is parsed here, so a wrong one is
//! refused at load naming its field and position.

use std::sync::Arc;

use cel::{Env, Program};
use serde::Deserialize;
use serde_json::Value;

/// The settings as written; [`Settings::compile`] reads them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Settings(pub Value);

/// A `ValidatingAdmissionPolicy` spec, with the binding's parts inline.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpecDoc {
    #[serde(default)]
    validations: Vec<ValidationDoc>,
    #[serde(default)]
    match_conditions: Vec<NamedDoc>,
    #[serde(default)]
    variables: Vec<NamedDoc>,
    #[serde(default)]
    audit_annotations: Vec<AuditDoc>,
    /// Accepted and not used: the config's `match` and `onError` decide
    /// what the policy sees and what an error does.
    #[serde(default)]
    #[allow(dead_code)]
    param_kind: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    match_constraints: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    failure_policy: Option<String>,
    /// The binding's params and actions (inline form only).
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    validation_actions: Option<Vec<String>>,
}

/// A whole `ValidatingAdmissionPolicy`, with the binding's parts beside it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyDoc {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<Value>,
    spec: SpecDoc,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    validation_actions: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ValidationDoc {
    expression: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    message_expression: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedDoc {
    name: String,
    expression: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuditDoc {
    key: String,
    value_expression: String,
}

/// One parsed expression and where it came from.
#[derive(Debug)]
pub struct Expression {
    /// Where in the settings, e.g. `validations[2].expression`.
    pub field: String,
    pub source: String,
    pub program: Program,
}

/// A validation, parsed.
#[derive(Debug)]
pub struct Validation {
    pub expression: Expression,
    pub message: Option<String>,
    pub message_expression: Option<Expression>,
    /// The HTTP status of a denial.
    pub code: u16,
}

/// What a failed validation does (a binding's `validationActions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    pub deny: bool,
    pub warn: bool,
    pub audit: bool,
}

/// The settings, checked and parsed.
pub struct Rules {
    pub env: Arc<Env>,
    pub match_conditions: Vec<(String, Expression)>,
    pub variables: Vec<(String, Expression)>,
    pub validations: Vec<Validation>,
    pub audit_annotations: Vec<(String, Expression)>,
    pub params: Value,
    pub actions: Actions,
    /// The top-level variables some expression reads (`object`,
    /// `request`, ...): the others are not built for a call.
    pub reads: std::collections::HashSet<String>,
}

/// The environment every expression is parsed and run in: the standard
/// library, and the `strings`, `lists` and `math` extensions.
pub fn environment() -> Result<Env, String> {
    let mut env = Env::stdlib();
    for (name, extension) in [
        ("strings", cel::extensions::strings as fn(&mut Env) -> _),
        ("lists", cel::extensions::lists),
        ("math", cel::extensions::math),
    ] {
        env.add_extension(extension)
            .map_err(|e| format!("the CEL {name} extension: {e}"))?;
    }
    env.add_macro(cel::parser::Macro::receiver("bind", 3, bind_macro))
        .map_err(|e| format!("the cel.bind macro: {e}"))?;
    Ok(env)
}

/// `cel.bind(name, init, result)`, as cel-go's `ext.Bindings()` has it
/// (Kubernetes enables it for admission policies): `result` with `name`
/// bound to `init`, evaluated once. Expanded, like cel-go does, to a
/// comprehension over no elements whose accumulator is the binding.
fn bind_macro(
    helper: &mut cel::parser::MacroExprHelper<'_>,
    target: &mut Option<cel::IdedExpr>,
    args: &mut Vec<cel::IdedExpr>,
) -> Result<Option<cel::IdedExpr>, cel::ParseError> {
    use cel::common::ast::{ComprehensionExpr, Expr, ListExpr, LiteralValue};
    let on_cel =
        matches!(target.as_ref().map(|t| &t.expr), Some(Expr::Ident(name)) if name == "cel");
    if !on_cel || args.len() != 3 {
        // Another receiver's `bind(...)`: an ordinary call.
        return Ok(None);
    }
    let result = args.remove(2);
    let init = args.remove(1);
    let var = args.remove(0);
    let Expr::Ident(name) = &var.expr else {
        return Err(helper.new_error(
            var.id,
            "cel.bind() variable name must be a simple identifier",
        ));
    };
    let name = name.clone();
    let binding = ComprehensionExpr {
        iter_range: helper.next_expr(Expr::List(ListExpr::new(Vec::new()))),
        iter_var: "#unused".to_owned(),
        iter_var2: None,
        accu_var: name.clone(),
        accu_init: init,
        loop_cond: helper.next_expr(Expr::Literal(LiteralValue::Boolean(false.into()))),
        loop_step: helper.next_expr(Expr::Ident(name)),
        result,
    };
    Ok(Some(
        helper.next_expr(Expr::Comprehension(Box::new(binding))),
    ))
}

impl Settings {
    /// Checks and parses the settings.
    ///
    /// # Errors
    /// The first problem, naming the field (and, for an expression, the
    /// line and column).
    pub fn compile(&self) -> Result<Rules, String> {
        let is_document = self.0.get("kind").is_some() || self.0.get("spec").is_some();
        let (spec, params, actions) = if is_document {
            let doc: PolicyDoc = serde_json::from_value(self.0.clone())
                .map_err(|e| format!("a ValidatingAdmissionPolicy document: {e}"))?;
            if doc.kind != "ValidatingAdmissionPolicy" {
                return Err(format!(
                    "kind {:?}: only a ValidatingAdmissionPolicy (or its spec) is read",
                    doc.kind
                ));
            }
            if doc.spec.params.is_some() || doc.spec.validation_actions.is_some() {
                return Err(
                    "params and validationActions go beside spec, not inside it".to_string()
                );
            }
            (doc.spec, doc.params, doc.validation_actions)
        } else {
            let mut spec: SpecDoc =
                serde_json::from_value(self.0.clone()).map_err(|e| format!("settings: {e}"))?;
            let params = spec.params.take();
            let actions = spec.validation_actions.take();
            (spec, params, actions)
        };
        if spec.validations.is_empty() && spec.audit_annotations.is_empty() {
            return Err(
                "no validations and no auditAnnotations: the policy would do nothing".into(),
            );
        }
        let env = environment()?;
        let parse = |field: String, source: &str| -> Result<Expression, String> {
            let program = env.compile(source).map_err(|errors| {
                format!("{field}: {}", errors.to_string().replace("<input>", &field))
            })?;
            Ok(Expression {
                field,
                source: source.to_owned(),
                program,
            })
        };
        let named = |list: &str, docs: &[NamedDoc]| -> Result<Vec<(String, Expression)>, String> {
            let mut seen = std::collections::HashSet::new();
            docs.iter()
                .enumerate()
                .map(|(i, doc)| {
                    if !seen.insert(doc.name.as_str()) {
                        return Err(format!(
                            "{list}[{i}]: the name {:?} is used twice",
                            doc.name
                        ));
                    }
                    Ok((
                        doc.name.clone(),
                        parse(format!("{list}[{i}].expression"), &doc.expression)?,
                    ))
                })
                .collect()
        };
        let match_conditions = named("matchConditions", &spec.match_conditions)?;
        let variables = named("variables", &spec.variables)?;
        let validations: Vec<Validation> = spec
            .validations
            .iter()
            .enumerate()
            .map(|(i, doc)| {
                Ok(Validation {
                    expression: parse(format!("validations[{i}].expression"), &doc.expression)?,
                    message: doc.message.clone(),
                    message_expression: doc
                        .message_expression
                        .as_deref()
                        .map(|source| parse(format!("validations[{i}].messageExpression"), source))
                        .transpose()?,
                    code: reason_code(doc.reason.as_deref())
                        .map_err(|e| format!("validations[{i}].reason: {e}"))?,
                })
            })
            .collect::<Result<_, String>>()?;
        let audit_annotations: Vec<(String, Expression)> = spec
            .audit_annotations
            .iter()
            .enumerate()
            .map(|(i, doc)| {
                Ok((
                    doc.key.clone(),
                    parse(
                        format!("auditAnnotations[{i}].valueExpression"),
                        &doc.value_expression,
                    )?,
                ))
            })
            .collect::<Result<_, String>>()?;
        let reads = match_conditions
            .iter()
            .chain(&variables)
            .map(|(_, e)| e)
            .chain(validations.iter().flat_map(|v: &Validation| {
                std::iter::once(&v.expression).chain(v.message_expression.as_ref())
            }))
            .chain(audit_annotations.iter().map(|(_, e)| e))
            .flat_map(|e| {
                e.program
                    .references()
                    .variables()
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(Rules {
            env: Arc::new(env),
            reads,
            match_conditions,
            variables,
            validations,
            audit_annotations,
            params: params.unwrap_or(Value::Null),
            actions: read_actions(actions.as_deref())?,
        })
    }
}

/// The HTTP status of a denial for a validation's `reason` (Kubernetes'
/// own mapping; `Invalid` when none is given, as Kubernetes does).
fn reason_code(reason: Option<&str>) -> Result<u16, String> {
    Ok(match reason {
        None | Some("Invalid") => 422,
        Some("Unauthorized") => 401,
        Some("Forbidden") => 403,
        Some("RequestEntityTooLarge") => 413,
        Some(other) => {
            return Err(format!(
                "{other:?} is not one of Unauthorized, Forbidden, Invalid, RequestEntityTooLarge"
            ));
        }
    })
}

fn read_actions(actions: Option<&[String]>) -> Result<Actions, String> {
    let Some(actions) = actions else {
        return Ok(Actions {
            deny: true,
            warn: false,
            audit: false,
        });
    };
    let has = |name: &str| actions.iter().any(|a| a == name);
    if let Some(other) = actions
        .iter()
        .find(|a| !matches!(a.as_str(), "Deny" | "Warn" | "Audit"))
    {
        return Err(format!(
            "validationActions: {other:?} is not one of Deny, Warn, Audit"
        ));
    }
    if has("Deny") && has("Warn") {
        return Err(
            "validationActions: Deny and Warn together would warn about what is denied".into(),
        );
    }
    if actions.is_empty() {
        return Err("validationActions: empty; leave it out for Deny".into());
    }
    Ok(Actions {
        deny: has("Deny"),
        warn: has("Warn"),
        audit: has("Audit"),
    })
}
