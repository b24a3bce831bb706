//! The resource defaults of one container.

use serde_json::{Map, Value};

use crate::settings::Resources;
use portcullis_sdk::quantity;

/// Adds the default requests and limits of `defaults` that `container`
/// lacks, and returns what it added (as `resources.<field>.<name>`).
///
/// Per resource name, and only where adding keeps the container valid and
/// means what it says:
/// - a request is added only when the container sets neither a request
///   nor a limit for that resource: with a limit alone the API server
///   already defaults the request to the limit, and a smaller default
///   request would quietly change how the pod is scheduled;
/// - a limit is added only when the container sets no limit for that
///   resource and any request it sets is not above the default limit
///   (the API server rejects a request above its limit).
///
/// `resources`, `requests` and `limits` are created only when something is
/// added to them.
pub fn add_defaults(
    container: &mut Map<String, Value>,
    defaults: &Resources,
) -> Result<Vec<String>, String> {
    if defaults.requests.is_empty() && defaults.limits.is_empty() {
        return Ok(Vec::new());
    }
    let current = container.get("resources").unwrap_or(&Value::Null);
    if !current.is_null() && !current.is_object() {
        return Err("resources is not a JSON object".to_string());
    }
    let mut resources = current.as_object().cloned().unwrap_or_default();
    let mut requests = map_of(&resources, "requests")?;
    let mut limits = map_of(&resources, "limits")?;
    let mut added = Vec::new();

    for (name, value) in &defaults.requests {
        if !requests.contains_key(name) && !limits.contains_key(name) {
            requests.insert(name.clone(), Value::String(value.as_str().to_string()));
            added.push(format!("resources.requests.{name}"));
        }
    }
    for (name, value) in &defaults.limits {
        if limits.contains_key(name) {
            continue;
        }
        // `Some(None)`: a request that does not parse; leave it to the API
        // server to reject rather than guess.
        let request = requests
            .get(name)
            .map(|v| v.as_str().and_then(quantity::parse));
        let fits = match request {
            None => true,
            Some(request) => request.is_some() && request <= quantity::parse(value.as_str()),
        };
        if fits {
            limits.insert(name.clone(), Value::String(value.as_str().to_string()));
            added.push(format!("resources.limits.{name}"));
        }
    }
    if added.is_empty() {
        return Ok(added);
    }
    for (field, map) in [("requests", requests), ("limits", limits)] {
        if !map.is_empty() {
            resources.insert(field.into(), Value::Object(map));
        }
    }
    container.insert("resources".into(), Value::Object(resources));
    Ok(added)
}

/// `resources.<field>`, empty when absent or `null`.
fn map_of(resources: &Map<String, Value>, field: &str) -> Result<Map<String, Value>, String> {
    match resources.get(field) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(_) => Err(format!("resources.{field} is not a JSON object")),
    }
}
