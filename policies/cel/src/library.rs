//! The Kubernetes CEL libraries the rules people paste in rely on, beside
//! the `cel` crate's standard library and its `strings`, `lists` and
//! `math` extensions: quantities (`quantity()`, `isQuantity()` and their
//! methods), regular-expression `find`/`findAll`, and the list functions
//! `sum`, `min`, `max` and `isSorted`.

use std::cmp::Ordering;
use std::sync::Arc;

use cel::extractors::This;
use cel::objects::Opaque;
use cel::{Context, ExecutionError, Value};

use crate::quantity::Quantity;

/// A quantity as a CEL value.
#[derive(Debug, PartialEq, Eq)]
struct QuantityValue(Quantity);

impl Opaque for QuantityValue {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.Quantity"
    }
}

type Result<T> = std::result::Result<T, ExecutionError>;

fn error(function: &str, message: impl ToString) -> ExecutionError {
    ExecutionError::function_error(function, message)
}

fn quantity_of(function: &str, value: &Value) -> Result<Quantity> {
    match value {
        Value::Opaque(opaque) => opaque
            .downcast_ref::<QuantityValue>()
            .map(|q| q.0)
            .ok_or_else(|| error(function, "not a quantity")),
        Value::Int(int) => Ok(Quantity::from_integer(*int)),
        _ => Err(error(function, format!("not a quantity: {value:?}"))),
    }
}

fn quantity_value(quantity: Quantity) -> Value {
    Value::Opaque(Arc::new(QuantityValue(quantity)))
}

fn string_of<'a>(function: &str, value: &'a Value) -> Result<&'a str> {
    match value {
        Value::String(text) => Ok(text.as_str()),
        _ => Err(error(function, format!("not a string: {value:?}"))),
    }
}

fn list_of<'a>(function: &str, value: &'a Value) -> Result<&'a [Value]> {
    match value {
        Value::List(list) => Ok(list.as_slice()),
        _ => Err(error(function, format!("not a list: {value:?}"))),
    }
}

/// Orders two values of one comparable kind (numbers, strings,
/// quantities).
fn compare(function: &str, a: &Value, b: &Value) -> Result<Ordering> {
    let ordering = match (a, b) {
        (Value::Int(a), Value::Int(b)) => a.cmp(b),
        (Value::UInt(a), Value::UInt(b)) => a.cmp(b),
        (Value::Float(a), Value::Float(b)) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Opaque(_), Value::Opaque(_)) => {
            quantity_of(function, a)?.cmp(&quantity_of(function, b)?)
        }
        _ => return Err(error(function, format!("cannot compare {a:?} and {b:?}"))),
    };
    Ok(ordering)
}

/// The element of the list `value` that is `wanted` of all the others.
fn extreme(function: &str, value: &Value, wanted: Ordering) -> Result<Value> {
    let list = list_of(function, value)?;
    let mut best: Option<&Value> = None;
    for item in list {
        best = match best {
            Some(current) if compare(function, item, current)? != wanted => Some(current),
            _ => Some(item),
        };
    }
    best.cloned()
        .ok_or_else(|| error(function, "the list is empty"))
}

/// A regular expression, compiled per call (the pattern is usually a
/// literal; the `regex` crate's compile is cheap next to a review).
fn regex(function: &str, pattern: &str) -> Result<regex::Regex> {
    regex::Regex::new(pattern).map_err(|e| error(function, e))
}

/// Adds the libraries to `context`.
///
/// # Errors
/// When a name is already taken (a bug: the names are fixed).
pub fn install(context: &mut Context<'_, '_>) -> std::result::Result<(), String> {
    let add = |result: std::result::Result<(), cel::DeclarationError>| {
        result.map_err(|e| format!("installing the CEL libraries: {e}"))
    };
    add(
        context.add_function("quantity", |text: Arc<String>| -> Result<Value> {
            Quantity::parse(&text)
                .map(quantity_value)
                .map_err(|e| error("quantity", e))
        }),
    )?;
    add(
        context.add_function("isQuantity", |text: Arc<String>| -> bool {
            Quantity::parse(&text).is_ok()
        }),
    )?;
    add(context.add_function(
        "isGreaterThan",
        |This(this): This<Value>, other: Value| -> Result<bool> {
            Ok(quantity_of("isGreaterThan", &this)? > quantity_of("isGreaterThan", &other)?)
        },
    ))?;
    add(context.add_function(
        "isLessThan",
        |This(this): This<Value>, other: Value| -> Result<bool> {
            Ok(quantity_of("isLessThan", &this)? < quantity_of("isLessThan", &other)?)
        },
    ))?;
    add(context.add_function(
        "compareTo",
        |This(this): This<Value>, other: Value| -> Result<i64> {
            Ok(
                match quantity_of("compareTo", &this)?.cmp(&quantity_of("compareTo", &other)?) {
                    Ordering::Less => -1,
                    Ordering::Equal => 0,
                    Ordering::Greater => 1,
                },
            )
        },
    ))?;
    add(context.add_function(
        "add",
        |This(this): This<Value>, other: Value| -> Result<Value> {
            quantity_of("add", &this)?
                .checked_add(quantity_of("add", &other)?)
                .map(quantity_value)
                .ok_or_else(|| error("add", "overflow"))
        },
    ))?;
    add(context.add_function(
        "sub",
        |This(this): This<Value>, other: Value| -> Result<Value> {
            quantity_of("sub", &this)?
                .checked_sub(quantity_of("sub", &other)?)
                .map(quantity_value)
                .ok_or_else(|| error("sub", "overflow"))
        },
    ))?;
    add(
        context.add_function("asInteger", |This(this): This<Value>| -> Result<i64> {
            quantity_of("asInteger", &this)?
                .as_integer()
                .ok_or_else(|| error("asInteger", "not a whole number that fits an int"))
        }),
    )?;
    add(
        context.add_function("isInteger", |This(this): This<Value>| -> Result<bool> {
            Ok(quantity_of("isInteger", &this)?.is_integer())
        }),
    )?;
    add(context.add_function(
        "asApproximateFloat",
        |This(this): This<Value>| -> Result<f64> {
            Ok(quantity_of("asApproximateFloat", &this)?.as_approximate_float())
        },
    ))?;
    add(
        context.add_function("sign", |This(this): This<Value>| -> Result<i64> {
            Ok(quantity_of("sign", &this)?.sign())
        }),
    )?;

    add(context.add_function(
        "find",
        |This(this): This<Value>, pattern: Arc<String>| -> Result<Value> {
            let text = string_of("find", &this)?;
            let found = regex("find", &pattern)?
                .find(text)
                .map_or("", |m| m.as_str());
            Ok(Value::String(Arc::new(found.to_owned())))
        },
    ))?;
    add(context.add_function(
        "findAll",
        |This(this): This<Value>,
         cel::extractors::Arguments(args): cel::extractors::Arguments|
         -> Result<Value> {
            let text = string_of("findAll", &this)?;
            let pattern = args
                .first()
                .map(|v| string_of("findAll", v))
                .transpose()?
                .ok_or_else(|| error("findAll", "needs a pattern"))?;
            let limit = match args.get(1) {
                Some(Value::Int(n)) if *n >= 0 => usize::try_from(*n).unwrap_or(usize::MAX),
                Some(Value::Int(_)) | None => usize::MAX,
                Some(other) => return Err(error("findAll", format!("not a count: {other:?}"))),
            };
            let found = regex("findAll", pattern)?
                .find_iter(text)
                .take(limit)
                .map(|m| Value::String(Arc::new(m.as_str().to_owned())))
                .collect();
            Ok(Value::List(Arc::new(found)))
        },
    ))?;

    add(
        context.add_function("sum", |This(this): This<Value>| -> Result<Value> {
            let list = list_of("sum", &this)?;
            let mut total: Option<Value> = None;
            for item in list {
                total = Some(match (total, item) {
                    (None, item) => item.clone(),
                    (Some(Value::Int(a)), Value::Int(b)) => Value::Int(
                        a.checked_add(*b)
                            .ok_or_else(|| error("sum", "integer overflow"))?,
                    ),
                    (Some(Value::UInt(a)), Value::UInt(b)) => Value::UInt(
                        a.checked_add(*b)
                            .ok_or_else(|| error("sum", "integer overflow"))?,
                    ),
                    (Some(Value::Float(a)), Value::Float(b)) => Value::Float(a + b),
                    (Some(a @ Value::Opaque(_)), b @ Value::Opaque(_)) => quantity_value(
                        quantity_of("sum", &a)?
                            .checked_add(quantity_of("sum", b)?)
                            .ok_or_else(|| error("sum", "overflow"))?,
                    ),
                    (Some(a), b) => {
                        return Err(error("sum", format!("cannot add {a:?} and {b:?}")));
                    }
                });
            }
            Ok(total.unwrap_or(Value::Int(0)))
        }),
    )?;
    // `list.min()` and `list.max()`, as in Kubernetes.
    add(context.add_function("min", |This(this): This<Value>| {
        extreme("min", &this, Ordering::Less)
    }))?;
    add(context.add_function("max", |This(this): This<Value>| {
        extreme("max", &this, Ordering::Greater)
    }))?;
    add(
        context.add_function("isSorted", |This(this): This<Value>| -> Result<bool> {
            let list = list_of("isSorted", &this)?;
            for pair in list.windows(2) {
                if compare("isSorted", &pair[0], &pair[1])? == Ordering::Greater {
                    return Ok(false);
                }
            }
            Ok(true)
        }),
    )?;
    Ok(())
}
