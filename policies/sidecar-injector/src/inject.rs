//! Injecting the configured items into one pod spec.
//!
//! Everything is keyed by name, which is what makes the injection
//! idempotent: an item whose name is already there is left alone, so a
//! second run finds nothing to add.

use serde_json::{Map, Value};

use crate::settings::Settings;

/// Injects into `spec` and returns what it added (e.g. `container proxy`,
/// `env MESH_ID in app`), or an error naming the field of an odd shape.
///
/// Sidecars are appended to `containers`, volumes to `volumes`, env vars to
/// each app container's `env`; init containers are appended to
/// `initContainers`, or put before the pod's own when
/// `initContainersFirst` says so. A list is created only when absent.
pub fn inject(spec: &mut Map<String, Value>, settings: &Settings) -> Result<Vec<String>, String> {
    let mut added = Vec::new();
    // Before anything is injected: the injected sidecars are not app
    // containers and get no env.
    added.extend(add_env(spec, settings)?);

    let taken: Vec<String> = ["containers", "initContainers"]
        .into_iter()
        .map(|field| names(spec, field))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let missing = |list: &[Map<String, Value>]| -> Vec<Value> {
        list.iter()
            .filter(|c| {
                !taken
                    .iter()
                    .any(|name| Some(name.as_str()) == c["name"].as_str())
            })
            .map(|c| Value::Object(c.clone()))
            .collect()
    };
    let sidecars = missing(&settings.containers);
    let inits = missing(&settings.init_containers);
    added.extend(names_of("container", &sidecars));
    added.extend(names_of("initContainer", &inits));
    append(spec, "containers", sidecars)?;
    if settings.init_containers_first {
        prepend(spec, "initContainers", inits)?;
    } else {
        append(spec, "initContainers", inits)?;
    }

    let volumes = names(spec, "volumes")?;
    let volumes: Vec<Value> = settings
        .volumes
        .iter()
        .filter(|v| {
            !volumes
                .iter()
                .any(|name| Some(name.as_str()) == v["name"].as_str())
        })
        .map(|v| Value::Object(v.clone()))
        .collect();
    added.extend(names_of("volume", &volumes));
    append(spec, "volumes", volumes)?;
    Ok(added)
}

/// Adds the env vars each targeted app container lacks (by name); a value
/// already there is never overwritten.
fn add_env(spec: &mut Map<String, Value>, settings: &Settings) -> Result<Vec<String>, String> {
    if settings.env.is_empty() {
        return Ok(Vec::new());
    }
    let injected: Vec<&str> = settings.container_names().collect();
    let Some(containers) = list_mut(spec, "containers")? else {
        return Ok(Vec::new());
    };
    let mut added = Vec::new();
    for (i, container) in containers.iter_mut().enumerate() {
        let Some(container) = container.as_object_mut() else {
            return Err(format!("containers/{i} is not a JSON object"));
        };
        let name = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let targeted =
            settings.env_containers.is_empty() || settings.env_containers.contains(&name);
        if !targeted || injected.contains(&name.as_str()) {
            continue;
        }
        let present = names(container, "env").map_err(|e| format!("containers/{i}/{e}"))?;
        let vars: Vec<Value> = settings
            .env
            .iter()
            .filter(|v| {
                !present
                    .iter()
                    .any(|n| Some(n.as_str()) == v["name"].as_str())
            })
            .map(|v| Value::Object(v.clone()))
            .collect();
        added.extend(
            names_of("env", &vars)
                .into_iter()
                .map(|var| format!("{var} in {name}")),
        );
        append(container, "env", vars).map_err(|e| format!("containers/{i}/{e}"))?;
    }
    Ok(added)
}

/// The `name`s of the items of `object[field]` (empty when absent).
fn names(object: &Map<String, Value>, field: &str) -> Result<Vec<String>, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .filter_map(|item| Some(item.get("name")?.as_str()?.to_string()))
            .collect()),
        Some(_) => Err(format!("{field} is not a JSON array")),
    }
}

/// `object[field]` as a list, `None` when absent or `null`.
fn list_mut<'a>(
    object: &'a mut Map<String, Value>,
    field: &str,
) -> Result<Option<&'a mut Vec<Value>>, String> {
    match object.get_mut(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(_) => Err(format!("{field} is not a JSON array")),
    }
}

/// Appends `items` to `object[field]`, creating the list only when there is
/// something to add (appending keeps the patch to `add` operations at the
/// end of the list).
fn append(object: &mut Map<String, Value>, field: &str, items: Vec<Value>) -> Result<(), String> {
    if items.is_empty() {
        return Ok(());
    }
    match list_mut(object, field)? {
        Some(list) => list.extend(items),
        None => {
            object.insert(field.to_string(), Value::Array(items));
        }
    }
    Ok(())
}

/// Puts `items` before the items of `object[field]`.
fn prepend(object: &mut Map<String, Value>, field: &str, items: Vec<Value>) -> Result<(), String> {
    if items.is_empty() {
        return Ok(());
    }
    match list_mut(object, field)? {
        Some(list) => {
            list.splice(0..0, items);
        }
        None => {
            object.insert(field.to_string(), Value::Array(items));
        }
    }
    Ok(())
}

fn names_of(what: &str, items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| format!("{what} {}", item["name"].as_str().unwrap_or_default()))
        .collect()
}
