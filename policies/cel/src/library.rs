//! The Kubernetes CEL libraries the rules people paste in rely on, beside
//! the `cel` crate's standard library and its `strings`, `lists` and
//! `math` extensions: quantities (`quantity()`, `isQuantity()` and their
//! methods), regular-expression `find`/`findAll`, and the list functions
//! `sum`, `min`, `max` and `isSorted`; and `url()`, `ip()` and `cidr()`.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use cel::extractors::This;
use cel::objects::{Key, Opaque};
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
    install_network(context)
}

/// A URL as Kubernetes' `url()` reads it: an absolute URL
/// (`scheme://host[:port]/path?query`) or an absolute path.
#[derive(Debug, PartialEq, Eq)]
struct UrlValue {
    scheme: String,
    host: String,
    path: String,
    query: String,
}

impl Opaque for UrlValue {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.URL"
    }
}

impl UrlValue {
    fn parse(text: &str) -> std::result::Result<Self, String> {
        let invalid = |why: &str| format!("invalid URL {text:?}: {why}");
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("it contains whitespace or control characters"));
        }
        let text = text.split_once('#').map_or(text, |(before, _)| before);
        let (rest, query) = text.split_once('?').unwrap_or((text, ""));
        if rest.starts_with('/') {
            return Ok(Self {
                scheme: String::new(),
                host: String::new(),
                path: rest.to_owned(),
                query: query.to_owned(),
            });
        }
        let (scheme, rest) = rest
            .split_once("://")
            .ok_or_else(|| invalid("not an absolute URL or an absolute path"))?;
        let valid_scheme = scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid_scheme {
            return Err(invalid("bad scheme"));
        }
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        Ok(Self {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
        })
    }

    /// The host without the port (IPv6 without its brackets).
    fn hostname(&self) -> &str {
        if let Some(inner) = self.host.strip_prefix('[') {
            return inner.split_once(']').map_or(inner, |(ip, _)| ip);
        }
        self.host
            .rsplit_once(':')
            .map_or(&self.host, |(name, _)| name)
    }

    fn port(&self) -> &str {
        if self.host.starts_with('[') {
            return self.host.rsplit_once("]:").map_or("", |(_, port)| port);
        }
        self.host.rsplit_once(':').map_or("", |(_, port)| port)
    }
}

/// An IP address or a CIDR, as Kubernetes' `ip()` and `cidr()` read them.
#[derive(Debug, PartialEq, Eq)]
struct IpValue(std::net::IpAddr);

impl Opaque for IpValue {
    fn runtime_type_name(&self) -> &str {
        "net.IP"
    }
}

#[derive(Debug, PartialEq, Eq)]
struct CidrValue {
    ip: std::net::IpAddr,
    prefix: u8,
}

impl Opaque for CidrValue {
    fn runtime_type_name(&self) -> &str {
        "net.CIDR"
    }
}

impl CidrValue {
    fn parse(text: &str) -> std::result::Result<Self, String> {
        let invalid = || format!("invalid CIDR {text:?}");
        let (ip, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let ip: std::net::IpAddr = ip.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(invalid());
        }
        Ok(Self { ip, prefix })
    }

    fn masked(&self) -> std::net::IpAddr {
        mask(self.ip, self.prefix)
    }

    fn contains(&self, ip: std::net::IpAddr) -> bool {
        ip.is_ipv4() == self.ip.is_ipv4() && mask(ip, self.prefix) == self.masked()
    }
}

fn mask(ip: std::net::IpAddr, prefix: u8) -> std::net::IpAddr {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & kept).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & kept).into())
        }
    }
}

/// Kubernetes' `ip()` refuses IPv4-mapped IPv6 and zones; std refuses
/// zones already.
fn parse_ip(text: &str) -> std::result::Result<std::net::IpAddr, String> {
    let ip: std::net::IpAddr = text.parse().map_err(|_| format!("invalid IP {text:?}"))?;
    if let std::net::IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "invalid IP {text:?}: IPv4-mapped IPv6 is not accepted"
        ));
    }
    Ok(ip)
}

fn opaque<'v, T: Opaque>(function: &str, value: &'v Value) -> Result<&'v T> {
    match value {
        Value::Opaque(o) => o
            .downcast_ref::<T>()
            .ok_or_else(|| error(function, "wrong type of value")),
        _ => Err(error(function, format!("wrong type of value: {value:?}"))),
    }
}

fn string_value(text: impl Into<String>) -> Value {
    Value::String(Arc::new(text.into()))
}

/// Adds Kubernetes' URL, IP and CIDR libraries to `context`.
///
/// # Errors
/// When a name is already taken (a bug: the names are fixed).
pub fn install_network(context: &mut Context<'_, '_>) -> std::result::Result<(), String> {
    let add = |result: std::result::Result<(), cel::DeclarationError>| {
        result.map_err(|e| format!("installing the CEL network libraries: {e}"))
    };
    add(
        context.add_function("url", |text: Arc<String>| -> Result<Value> {
            UrlValue::parse(&text)
                .map(|u| Value::Opaque(Arc::new(u)))
                .map_err(|e| error("url", e))
        }),
    )?;
    add(context.add_function("isURL", |text: Arc<String>| -> bool {
        UrlValue::parse(&text).is_ok()
    }))?;
    add(
        context.add_function("getScheme", |This(this): This<Value>| -> Result<Value> {
            Ok(string_value(
                opaque::<UrlValue>("getScheme", &this)?.scheme.clone(),
            ))
        }),
    )?;
    add(
        context.add_function("getHost", |This(this): This<Value>| -> Result<Value> {
            Ok(string_value(
                opaque::<UrlValue>("getHost", &this)?.host.clone(),
            ))
        }),
    )?;
    add(
        context.add_function("getHostname", |This(this): This<Value>| -> Result<Value> {
            Ok(string_value(
                opaque::<UrlValue>("getHostname", &this)?.hostname(),
            ))
        }),
    )?;
    add(
        context.add_function("getPort", |This(this): This<Value>| -> Result<Value> {
            Ok(string_value(opaque::<UrlValue>("getPort", &this)?.port()))
        }),
    )?;
    add(context.add_function(
        "getEscapedPath",
        |This(this): This<Value>| -> Result<Value> {
            Ok(string_value(
                opaque::<UrlValue>("getEscapedPath", &this)?.path.clone(),
            ))
        },
    ))?;
    add(
        context.add_function("getQuery", |This(this): This<Value>| -> Result<Value> {
            let url = opaque::<UrlValue>("getQuery", &this)?;
            let mut query: HashMap<Key, Vec<Value>> = HashMap::new();
            for pair in url.query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                query
                    .entry(Key::String(Arc::new(key.to_owned())))
                    .or_default()
                    .push(string_value(value));
            }
            Ok(Value::from(
                query
                    .into_iter()
                    .map(|(k, v)| (k, Value::List(Arc::new(v))))
                    .collect::<HashMap<Key, Value>>(),
            ))
        }),
    )?;

    // `ip('10.0.0.1')`, and `cidr('10.0.0.0/8').ip()`.
    add(
        context.add_function("ip", |This(this): This<Value>| -> Result<Value> {
            let ip = match &this {
                Value::String(text) => parse_ip(text).map_err(|e| error("ip", e))?,
                other => opaque::<CidrValue>("ip", other)?.ip,
            };
            Ok(Value::Opaque(Arc::new(IpValue(ip))))
        }),
    )?;
    add(context.add_function("isIP", |text: Arc<String>| -> bool {
        parse_ip(&text).is_ok()
    }))?;
    add(
        context.add_function("cidr", |text: Arc<String>| -> Result<Value> {
            CidrValue::parse(&text)
                .map(|c| Value::Opaque(Arc::new(c)))
                .map_err(|e| error("cidr", e))
        }),
    )?;
    add(context.add_function("isCIDR", |text: Arc<String>| -> bool {
        CidrValue::parse(&text).is_ok()
    }))?;
    add(
        context.add_function("family", |This(this): This<Value>| -> Result<i64> {
            Ok(if opaque::<IpValue>("family", &this)?.0.is_ipv4() {
                4
            } else {
                6
            })
        }),
    )?;
    add(
        context.add_function("isLoopback", |This(this): This<Value>| -> Result<bool> {
            Ok(opaque::<IpValue>("isLoopback", &this)?.0.is_loopback())
        }),
    )?;
    add(
        context.add_function("isUnspecified", |This(this): This<Value>| -> Result<bool> {
            Ok(opaque::<IpValue>("isUnspecified", &this)?
                .0
                .is_unspecified())
        }),
    )?;
    add(context.add_function(
        "isGlobalUnicast",
        |This(this): This<Value>| -> Result<bool> {
            let ip = opaque::<IpValue>("isGlobalUnicast", &this)?.0;
            // Go's definition: not unspecified, loopback, multicast, link-local
            // or the IPv4 broadcast address.
            Ok(!(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || match ip {
                    std::net::IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
                    std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
                }))
        },
    ))?;
    add(context.add_function(
        "containsIP",
        |This(this): This<Value>, other: Value| -> Result<bool> {
            let cidr = opaque::<CidrValue>("containsIP", &this)?;
            let ip = match &other {
                Value::String(text) => parse_ip(text).map_err(|e| error("containsIP", e))?,
                other => opaque::<IpValue>("containsIP", other)?.0,
            };
            Ok(cidr.contains(ip))
        },
    ))?;
    add(context.add_function(
        "containsCIDR",
        |This(this): This<Value>, other: Value| -> Result<bool> {
            let cidr = opaque::<CidrValue>("containsCIDR", &this)?;
            let parsed;
            let inner = match &other {
                Value::String(text) => {
                    parsed = CidrValue::parse(text).map_err(|e| error("containsCIDR", e))?;
                    &parsed
                }
                other => opaque::<CidrValue>("containsCIDR", other)?,
            };
            Ok(inner.prefix >= cidr.prefix && cidr.contains(inner.ip))
        },
    ))?;
    add(
        context.add_function("prefixLength", |This(this): This<Value>| -> Result<i64> {
            Ok(i64::from(
                opaque::<CidrValue>("prefixLength", &this)?.prefix,
            ))
        }),
    )?;
    add(
        context.add_function("masked", |This(this): This<Value>| -> Result<Value> {
            let cidr = opaque::<CidrValue>("masked", &this)?;
            Ok(Value::Opaque(Arc::new(CidrValue {
                ip: cidr.masked(),
                prefix: cidr.prefix,
            })))
        }),
    )?;
    Ok(())
}
