//! Deciding whether the requesting user may touch a namespace, and
//! wording the denial.

use portcullis_sdk::{Request, Verdict};

use crate::settings::{Reservation, Settings};

/// The namespace name a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// The name itself.
    Exact(String),
    /// Only `metadata.generateName` is known (the mutating phase of a
    /// CREATE): the final name starts with it.
    Generated(String),
}

/// What made a reservation cover a name, for the message.
enum Cover<'a> {
    Name(&'a str),
    Prefix(&'a str),
}

/// The verdict for `name` under `settings`.
pub fn judge(settings: &Settings, name: &Name, request: &Request) -> Verdict {
    let user = &request.user_info;
    let bypass = settings.bypass_users.contains(&user.username)
        || user
            .groups
            .iter()
            .any(|g| settings.bypass_groups.contains(g));
    if bypass {
        return Verdict::allow();
    }
    // First match decides, so a specific reservation listed before a
    // broader one can hand part of a prefix to someone else.
    let Some((reservation, cover)) = settings
        .reservations
        .iter()
        .find_map(|r| covers(r, name).map(|cover| (r, cover)))
    else {
        return Verdict::allow();
    };
    let permitted = reservation.users.contains(&user.username)
        || user.groups.iter().any(|g| reservation.groups.contains(g));
    if permitted {
        return Verdict::allow();
    }
    Verdict::deny(message(name, reservation, &cover, request))
}

/// Whether `reservation` covers `name`, and how (names before prefixes).
fn covers<'a>(reservation: &'a Reservation, name: &Name) -> Option<Cover<'a>> {
    match name {
        Name::Exact(name) => reservation
            .names
            .iter()
            .find(|n| *n == name)
            .map(|n| Cover::Name(n))
            .or_else(|| {
                reservation
                    .prefixes
                    .iter()
                    .find(|p| name.starts_with(p.as_str()))
                    .map(|p| Cover::Prefix(p))
            }),
        // A generated name is generateName and five more characters. It
        // may be reserved when it could start with a prefix (generateName
        // starts with it, or is the start of it) or be a reserved name;
        // a reservation must not be escaped by guessing, so "may" counts.
        Name::Generated(start) => reservation
            .names
            .iter()
            .find(|n| {
                n.strip_prefix(start.as_str())
                    .is_some_and(|rest| rest.len() == GENERATED_SUFFIX_LEN && generable(rest))
            })
            .map(|n| Cover::Name(n))
            .or_else(|| {
                reservation
                    .prefixes
                    .iter()
                    .find(|p| {
                        start.starts_with(p.as_str())
                            || p.strip_prefix(start.as_str()).is_some_and(|rest| {
                                rest.len() <= GENERATED_SUFFIX_LEN && generable(rest)
                            })
                    })
                    .map(|p| Cover::Prefix(p))
            }),
    }
}

/// Characters the API server appends to `generateName`.
const GENERATED_SUFFIX_LEN: usize = 5;

/// What those characters are drawn from (the API server's name generator
/// leaves out vowels and look-alikes).
const GENERATED_ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";

/// Whether the name generator can produce `text`.
fn generable(text: &str) -> bool {
    text.chars().all(|c| GENERATED_ALPHABET.contains(c))
}

/// `namespace "payments-prod" is reserved (prefix "payments-") for users
/// [alice] and groups [team-payments]; user "bob" may not create it`.
fn message(name: &Name, reservation: &Reservation, cover: &Cover<'_>, request: &Request) -> String {
    let what = match name {
        Name::Exact(name) => format!("namespace {name:?}"),
        Name::Generated(start) => format!("a namespace generated from {start:?}"),
    };
    let cover = match cover {
        Cover::Name(n) => format!("name {n:?}"),
        Cover::Prefix(p) => format!("prefix {p:?}"),
    };
    let mut whom = Vec::new();
    if !reservation.users.is_empty() {
        whom.push(format!("users [{}]", reservation.users.join(", ")));
    }
    if !reservation.groups.is_empty() {
        whom.push(format!("groups [{}]", reservation.groups.join(", ")));
    }
    let verb = request.operation.as_str().to_ascii_lowercase();
    format!(
        "{what} is reserved ({cover}) for {}; user {:?} may not {verb} it",
        whom.join(" and "),
        request.user_info.username
    )
}
