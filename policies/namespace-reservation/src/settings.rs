//! The settings: reservations, the operations they guard, who bypasses
//! them; and the load-time checks that reject settings that make no sense.

use portcullis_sdk::Operation;
use serde::Deserialize;

/// `reservations`, `operations`, `bypassGroups`, `bypassUsers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// Checked in order; the first one that covers a namespace decides.
    pub reservations: Vec<Reservation>,
    /// Which operations are guarded: `CREATE`, `UPDATE`, `DELETE`.
    pub operations: Vec<String>,
    /// Members of these groups may touch any reserved namespace (e.g.
    /// `system:masters` for break-glass access). None by default.
    pub bypass_groups: Vec<String>,
    /// These users may touch any reserved namespace. None by default.
    pub bypass_users: Vec<String>,
}

impl Default for Settings {
    /// CREATE and DELETE are guarded: creating a reserved namespace takes
    /// the name; deleting one destroys everything in it. UPDATE (labels,
    /// annotations) is opt-in.
    fn default() -> Self {
        Settings {
            reservations: Vec::new(),
            operations: vec!["CREATE".to_string(), "DELETE".to_string()],
            bypass_groups: Vec::new(),
            bypass_users: Vec::new(),
        }
    }
}

/// One reservation: which names it covers and who may use them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reservation {
    /// Exact namespace names.
    pub names: Vec<String>,
    /// Name prefixes, e.g. `payments-`.
    pub prefixes: Vec<String>,
    /// Users (`userInfo.username`) who may use the names.
    pub users: Vec<String>,
    /// Groups (`userInfo.groups`) whose members may use the names.
    pub groups: Vec<String>,
}

/// The operations the `operations` setting accepts.
const GUARDABLE: [&str; 3] = ["CREATE", "UPDATE", "DELETE"];

impl Settings {
    /// Whether `operation` is one the settings guard.
    pub fn guards(&self, operation: &Operation) -> bool {
        self.operations.iter().any(|o| o == operation.as_str())
    }

    /// Every problem with the settings, joined with `; `.
    pub fn check(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if self.reservations.is_empty() {
            errors.push("reservations must list at least one reservation".to_string());
        }
        for (index, reservation) in self.reservations.iter().enumerate() {
            reservation.check(&format!("reservations[{index}]"), &mut errors);
        }
        if self.operations.is_empty() {
            errors.push("operations must list at least one of CREATE, UPDATE, DELETE".to_string());
        }
        for operation in &self.operations {
            if !GUARDABLE.contains(&operation.as_str()) {
                errors.push(format!(
                    "operations: {operation:?} is not one of CREATE, UPDATE, DELETE"
                ));
            }
        }
        check_nonempty("bypassGroups", &self.bypass_groups, &mut errors);
        check_nonempty("bypassUsers", &self.bypass_users, &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Reservation {
    fn check(&self, at: &str, errors: &mut Vec<String>) {
        if self.names.is_empty() && self.prefixes.is_empty() {
            errors.push(format!("{at} must list at least one name or prefix"));
        }
        if self.users.is_empty() && self.groups.is_empty() {
            errors.push(format!("{at} must list at least one user or group"));
        }
        for name in &self.names {
            if !is_namespace_name(name) {
                errors.push(format!(
                    "{at}.names: {name:?} is not a valid namespace name \
                     (lower-case letters, digits and '-', at most 63)"
                ));
            }
        }
        for prefix in &self.prefixes {
            // An empty prefix would reserve every namespace; a prefix that
            // cannot begin a namespace name would reserve none.
            if prefix.is_empty() {
                errors.push(format!(
                    "{at}.prefixes: an empty prefix would reserve every namespace"
                ));
            } else if !is_namespace_prefix(prefix) {
                errors.push(format!(
                    "{at}.prefixes: {prefix:?} cannot begin a namespace name \
                     (lower-case letters, digits and '-', starting with a letter or digit)"
                ));
            }
        }
        check_nonempty(&format!("{at}.users"), &self.users, errors);
        check_nonempty(&format!("{at}.groups"), &self.groups, errors);
    }
}

fn check_nonempty(setting: &str, list: &[String], errors: &mut Vec<String>) {
    if list.iter().any(String::is_empty) {
        errors.push(format!("{setting} must not contain an empty string"));
    }
}

/// A DNS label (RFC 1123), which is what namespace names are.
fn is_namespace_name(name: &str) -> bool {
    is_namespace_prefix(name) && name.len() <= 63 && !name.ends_with('-')
}

/// The start of a DNS label: may end with `-`, as in `payments-`.
fn is_namespace_prefix(prefix: &str) -> bool {
    prefix.len() <= 63
        && prefix
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
