//! JSON Pointers (RFC 6901) with one extension: a segment that is exactly
//! `*` stands for every element of an array. Expanding a pointer against a
//! document gives the concrete locations it reaches, each rendered back as
//! a plain RFC 6901 pointer for messages.

use std::fmt;

use serde_json::Value;

/// One reference token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// An object member name or an array index, unescaped.
    Key(String),
    /// `*`: every element of an array.
    Each,
}

/// A parsed pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub segments: Vec<Segment>,
}

/// A concrete step of a location: a member name or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A concrete location in a document, printed as an RFC 6901 pointer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location(Vec<Step>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.0 {
            match step {
                Step::Key(key) => write!(f, "/{}", key.replace('~', "~0").replace('/', "~1"))?,
                Step::Index(index) => write!(f, "/{index}")?,
            }
        }
        Ok(())
    }
}

impl Location {
    fn with(&self, step: Step) -> Location {
        let mut steps = self.0.clone();
        steps.push(step);
        Location(steps)
    }
}

impl Pointer {
    /// Parses `/a/b~1c/*/d`. The empty pointer (the whole document) is
    /// refused: a rule about the whole object says nothing.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("must start with '/'".to_string());
        };
        let segments = rest
            .split('/')
            .map(|raw| {
                if raw == "*" {
                    Ok(Segment::Each)
                } else {
                    unescape(raw).map(Segment::Key)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Pointer { segments })
    }
}

/// `~1` is `/`, `~0` is `~`; any other `~` is an error (RFC 6901 section 3).
fn unescape(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => return Err(format!("segment {raw:?}: '~' must be followed by 0 or 1")),
        }
    }
    Ok(out)
}

/// Where `segments` lead from `value` (found at `at`): one location per
/// element a `*` visits, with the value there, or `None` when the path
/// ends before the last segment.
///
/// When the path ends early and a `*` is still to come, there are no
/// elements and so no locations; when no `*` is to come, the one location
/// it would have been is returned, missing.
pub fn expand<'a>(
    value: &'a Value,
    segments: &[Segment],
    at: Location,
) -> Vec<(Location, Option<&'a Value>)> {
    let Some((first, rest)) = segments.split_first() else {
        return vec![(at, Some(value))];
    };
    match first {
        Segment::Each => match value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .flat_map(|(index, item)| expand(item, rest, at.with(Step::Index(index))))
                .collect(),
            _ => Vec::new(),
        },
        Segment::Key(key) => {
            let (step, child) = match value {
                Value::Array(items) => match array_index(key) {
                    Some(index) => (Step::Index(index), items.get(index)),
                    None => (Step::Key(key.clone()), None),
                },
                Value::Object(map) => (Step::Key(key.clone()), map.get(key)),
                _ => (Step::Key(key.clone()), None),
            };
            let at = at.with(step);
            match child {
                Some(child) => expand(child, rest, at),
                None => missing(rest, at),
            }
        }
    }
}

/// The location a path would have reached had it not ended early.
fn missing<'a>(rest: &[Segment], mut at: Location) -> Vec<(Location, Option<&'a Value>)> {
    for segment in rest {
        match segment {
            Segment::Each => return Vec::new(),
            Segment::Key(key) => at = at.with(Step::Key(key.clone())),
        }
    }
    vec![(at, None)]
}

/// An RFC 6901 array index: `0` or digits without a leading zero. (`-`,
/// the element after the last, never exists.)
fn array_index(key: &str) -> Option<usize> {
    let digits = !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit());
    if !digits || (key.len() > 1 && key.starts_with('0')) {
        return None;
    }
    key.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn locations(doc: &Value, pointer: &str) -> Vec<(String, Option<Value>)> {
        let pointer = Pointer::parse(pointer).unwrap();
        expand(doc, &pointer.segments, Location::default())
            .into_iter()
            .map(|(at, v)| (at.to_string(), v.cloned()))
            .collect()
    }

    #[test]
    fn parses_and_unescapes() {
        assert_eq!(
            Pointer::parse("/a~1b/~0c/*/0").unwrap().segments,
            vec![
                Segment::Key("a/b".into()),
                Segment::Key("~c".into()),
                Segment::Each,
                Segment::Key("0".into())
            ]
        );
        assert_eq!(
            Pointer::parse("/").unwrap().segments,
            vec![Segment::Key(String::new())]
        );
        assert_eq!(Pointer::parse("a").unwrap_err(), "must start with '/'");
        assert_eq!(Pointer::parse("").unwrap_err(), "must start with '/'");
        assert_eq!(
            Pointer::parse("/a~2").unwrap_err(),
            "segment \"a~2\": '~' must be followed by 0 or 1"
        );
        assert!(Pointer::parse("/a~").is_err());
    }

    #[test]
    fn agrees_with_serde_json_without_wildcards() {
        let doc = json!({"a/b": {"~c": [10, 20]}, "m": {"": 1, "01": 2}});
        for p in [
            "/a~1b/~0c/1",
            "/a~1b/~0c/01",
            "/a~1b/~0c/-",
            "/m/",
            "/m/01",
            "/x/y",
        ] {
            let ours = locations(&doc, p);
            assert_eq!(ours.len(), 1, "{p}");
            assert_eq!(ours[0].1.as_ref(), doc.pointer(p), "{p}");
        }
        // The location is rendered re-escaped.
        assert_eq!(locations(&doc, "/a~1b/~0c/1")[0].0, "/a~1b/~0c/1");
        assert_eq!(locations(&doc, "/x/y~1z")[0], ("/x/y~1z".to_string(), None));
    }

    #[test]
    fn wildcard_visits_every_element() {
        let doc = json!({"c": [{"n": "a"}, {}, {"n": "c"}], "o": {"*": 1}});
        assert_eq!(
            locations(&doc, "/c/*/n"),
            vec![
                ("/c/0/n".to_string(), Some(json!("a"))),
                ("/c/1/n".to_string(), None),
                ("/c/2/n".to_string(), Some(json!("c"))),
            ]
        );
        // No array, an empty one, or a missing path before `*`: nothing.
        assert!(locations(&json!({"c": []}), "/c/*/n").is_empty());
        assert!(locations(&json!({}), "/c/*/n").is_empty());
        assert!(locations(&json!({"c": {"x": 1}}), "/c/*").is_empty());
        // Only arrays: on an object `*` reaches nothing (not even a member
        // named "*").
        assert!(locations(&doc, "/o/*").is_empty());
    }
}
