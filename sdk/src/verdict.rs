//! What a policy answers: a [`Verdict`] from `validate`, a [`Mutation`]
//! from `mutate`.

use serde_json::Value;

use crate::Request;

/// A decision about one request; becomes the contract's `verdict` record.
///
/// Built with [`Verdict::allow`] or [`Verdict::deny`] and the `with_*`
/// methods; the fields are public so tests can assert on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// False denies the request.
    pub allowed: bool,
    /// Why it was denied; kubectl shows it to the user.
    pub message: Option<String>,
    /// HTTP status code of a denial; the host uses 403 when none is given.
    pub code: Option<u16>,
    /// Warnings shown to the client, allowed or not.
    pub warnings: Vec<String>,
    /// Key/value pairs for the API server's audit log.
    pub audit_annotations: Vec<(String, String)>,
}

impl Verdict {
    /// Allows the request.
    pub fn allow() -> Self {
        Verdict {
            allowed: true,
            message: None,
            code: None,
            warnings: Vec::new(),
            audit_annotations: Vec::new(),
        }
    }

    /// Denies the request, telling the user why.
    pub fn deny(message: impl Into<String>) -> Self {
        Verdict {
            allowed: false,
            message: Some(message.into()),
            ..Verdict::allow()
        }
    }

    /// Sets the HTTP status code of a denial (e.g. 422 for an invalid
    /// object rather than the default 403).
    pub fn with_code(mut self, code: u16) -> Self {
        self.code = Some(code);
        self
    }

    /// Allows when there are no `problems`; otherwise denies with all of
    /// them joined by `; `, so one answer tells the user everything to fix
    /// rather than one thing per attempt.
    pub fn from_problems(problems: impl IntoIterator<Item = String>) -> Self {
        let problems: Vec<String> = problems.into_iter().collect();
        if problems.is_empty() {
            Verdict::allow()
        } else {
            Verdict::deny(problems.join("; "))
        }
    }

    /// Appends `; <hint>` to a denial's message, e.g. what would be
    /// allowed; an allow is returned as it is, without calling `hint`.
    pub fn with_hint(mut self, hint: impl FnOnce() -> String) -> Self {
        if !self.allowed {
            let message = self.message.get_or_insert_with(String::new);
            if !message.is_empty() {
                message.push_str("; ");
            }
            message.push_str(&hint());
        }
        self
    }

    /// Adds a warning for the client.
    pub fn with_warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    /// Adds an audit annotation.
    pub fn with_audit_annotation(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.audit_annotations.push((key.into(), value.into()));
        self
    }
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict::allow()
    }
}

/// What a mutating policy answers: a verdict and, when it changed
/// something, the whole new object.
///
/// The policy returns the full object rather than a patch; the host
/// computes the patch. When the new object equals the request's object the
/// SDK sends no object at all, so the host skips the diff; a policy can
/// therefore always return [`Mutation::patched`] without checking whether
/// it changed anything.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// The decision; a denial discards the object.
    pub verdict: Verdict,
    /// The new object, or `None` for "unchanged".
    pub object: Option<Value>,
}

impl Mutation {
    /// Allows the request without changing it.
    pub fn unchanged() -> Self {
        Mutation {
            verdict: Verdict::allow(),
            object: None,
        }
    }

    /// Allows the request with `object` as the new object.
    pub fn patched(object: Value) -> Self {
        Mutation {
            verdict: Verdict::allow(),
            object: Some(object),
        }
    }

    /// Denies the request; nothing is changed.
    pub fn deny(message: impl Into<String>) -> Self {
        Mutation::from(Verdict::deny(message))
    }

    /// Replaces the verdict, e.g. to add warnings or audit annotations to
    /// a patched object.
    pub fn with_verdict(mut self, verdict: Verdict) -> Self {
        self.verdict = verdict;
        self
    }

    /// What crosses the boundary: the object becomes `None` when it equals
    /// the request's object or the verdict denies, and is JSON text
    /// otherwise, with the managed fields the policy never saw put back.
    pub(crate) fn into_output(
        self,
        request: &Request,
    ) -> Result<(Verdict, Option<String>), String> {
        let object = match self.object {
            Some(mut object) if self.verdict.allowed && request.object() != Some(&object) => {
                request.restore_managed_fields(&mut object);
                let text = serde_json::to_string(&object)
                    .map_err(|e| format!("cannot serialize the mutated object: {e}"));
                crate::guest::discard(object);
                Some(text?)
            }
            _ => None,
        };
        Ok((self.verdict, object))
    }
}

impl From<Verdict> for Mutation {
    /// A verdict with no change to the object.
    fn from(verdict: Verdict) -> Self {
        Mutation {
            verdict,
            object: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn allow_is_empty() {
        let v = Verdict::allow();
        assert!(v.allowed);
        assert_eq!(v.message, None);
        assert_eq!(v.code, None);
        assert!(v.warnings.is_empty());
        assert!(v.audit_annotations.is_empty());
        assert_eq!(Verdict::default(), v);
    }

    #[test]
    fn builders_fill_every_field() {
        let v = Verdict::deny("no")
            .with_code(422)
            .with_warning("w1")
            .with_warning("w2")
            .with_audit_annotation("k", "v");
        assert_eq!(
            v,
            Verdict {
                allowed: false,
                message: Some("no".into()),
                code: Some(422),
                warnings: vec!["w1".into(), "w2".into()],
                audit_annotations: vec![("k".into(), "v".into())],
            }
        );
    }

    #[test]
    fn problems_deny_together_and_hints_only_follow_denials() {
        assert_eq!(Verdict::from_problems(Vec::new()), Verdict::allow());
        let denied = Verdict::from_problems(["a is bad".to_string(), "b is bad".to_string()])
            .with_hint(|| "allowed: c".to_string());
        assert_eq!(
            denied.message.as_deref(),
            Some("a is bad; b is bad; allowed: c")
        );
        let allowed = Verdict::allow().with_hint(|| unreachable!("not called on an allow"));
        assert_eq!(allowed, Verdict::allow());
    }

    /// A request whose object is `object`.
    fn with_object(object: &Value) -> Request {
        Request::from_json(&json!({ "object": object }).to_string()).unwrap()
    }

    #[test]
    fn unchanged_sends_no_object() {
        let original = json!({"a": 1});
        let (v, o) = Mutation::unchanged()
            .into_output(&with_object(&original))
            .unwrap();
        assert!(v.allowed);
        assert_eq!(o, None);
    }

    #[test]
    fn equal_object_sends_no_object() {
        let original = json!({"metadata": {"labels": {"a": "b"}}, "spec": {}});
        let (_, o) = Mutation::patched(original.clone())
            .into_output(&with_object(&original))
            .unwrap();
        assert_eq!(o, None);
    }

    #[test]
    fn changed_object_is_sent_as_json_text() {
        let original = json!({"a": 1});
        let (v, o) = Mutation::patched(json!({"a": 2}))
            .with_verdict(Verdict::allow().with_warning("changed a"))
            .into_output(&with_object(&original))
            .unwrap();
        assert_eq!(v.warnings, vec!["changed a".to_string()]);
        assert_eq!(o.as_deref(), Some(r#"{"a":2}"#));
    }

    #[test]
    fn object_without_original_is_sent() {
        let (_, o) = Mutation::patched(json!({}))
            .into_output(&Request::default())
            .unwrap();
        assert_eq!(o.as_deref(), Some("{}"));
    }

    #[test]
    fn managed_fields_the_policy_never_saw_are_sent_back() {
        let managed = json!([{"manager": "kubectl", "operation": "Update"}]);
        let request = with_object(&json!({"metadata": {"name": "a", "managedFields": managed}}));
        let seen = request.object().cloned().unwrap();
        assert_eq!(seen, json!({"metadata": {"name": "a"}}));
        let mut changed = seen;
        changed["metadata"]["labels"] = json!({"l": "v"});
        let (_, o) = Mutation::patched(changed).into_output(&request).unwrap();
        let sent: Value = serde_json::from_str(&o.unwrap()).unwrap();
        assert_eq!(
            sent,
            json!({"metadata": {"name": "a", "labels": {"l": "v"}, "managedFields": managed}})
        );
    }

    #[test]
    fn denial_sends_no_object() {
        let m = Mutation::patched(json!({"a": 2})).with_verdict(Verdict::deny("no"));
        let (v, o) = m.into_output(&with_object(&json!({"a": 1}))).unwrap();
        assert!(!v.allowed);
        assert_eq!(o, None);
        let (v, o) = Mutation::deny("no")
            .into_output(&Request::default())
            .unwrap();
        assert_eq!(v.message.as_deref(), Some("no"));
        assert_eq!(o, None);
    }
}
