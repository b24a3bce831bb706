//! Kubernetes resource quantities (`100m`, `128Mi`, `1.5Gi`, `1e3`): the
//! API's grammar, parsed far enough to compare two quantities or to size a
//! memory limit in bytes.

use serde::Deserialize;

/// A quantity as written in a policy's settings. YAML users write `cpu: 1`
/// as often as `cpu: "1"`, so a number is accepted and kept as its text;
/// check it with [`parse`] in `validate_settings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(String);

impl Quantity {
    /// The quantity as written, e.g. to put into a container.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(serde_json::Number),
        }
        Ok(Quantity(match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text,
            Raw::Number(number) => number.to_string(),
        }))
    }
}

/// The value of a quantity in base units, or `None` when it is not one.
///
/// Follows the API's grammar: a signed decimal number, then either a
/// binary suffix (`Ki` .. `Ei`), a decimal suffix (`n`, `u`, `m`, `k`,
/// `M` .. `E`) or a decimal exponent (`e3`, `E-2`). A float is precise
/// enough to order the quantities of a settings file and a container.
pub fn parse(text: &str) -> Option<f64> {
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let unsigned = number.strip_prefix(['+', '-']).unwrap_or(number);
    let number_ok = !unsigned.is_empty()
        && unsigned != "."
        && unsigned.chars().filter(|c| *c == '.').count() <= 1
        && unsigned.chars().all(|c| c.is_ascii_digit() || c == '.');
    if !number_ok {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let digits = exponent.strip_prefix(['e', 'E'])?;
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            10f64.powi(digits.parse().ok()?)
        }
    };
    Some(value * multiplier)
}

/// A quantity of memory in whole bytes, as Kubernetes sizes a memory
/// limit: fractions of a byte round up (`1.5` is 2 bytes). `None` when
/// `text` is not a quantity, is negative, or does not fit in a `u64`.
pub fn bytes(text: &str) -> Option<u64> {
    let value = parse(text)?;
    // 2^64 is exactly representable; anything at or above it does not fit.
    if !(0.0..18_446_744_073_709_551_616.0).contains(&value) {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(value.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::{bytes, parse};

    #[test]
    fn memory_sizes_in_bytes() {
        assert_eq!(bytes("32Mi"), Some(32 << 20));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes("1Ti"), Some(1 << 40));
        assert_eq!(bytes("64M"), Some(64_000_000));
        assert_eq!(bytes("1.5"), Some(2));
        assert_eq!(bytes("0"), Some(0));
        assert_eq!(bytes("-1Mi"), None);
        assert_eq!(bytes("16Ei"), None);
        assert_eq!(bytes("99999999999999999999Gi"), None);
        assert_eq!(bytes("1 Gi"), None);
    }

    #[test]
    fn parses_the_api_grammar() {
        assert_eq!(parse("100m"), Some(0.1));
        assert_eq!(parse("1"), Some(1.0));
        assert_eq!(parse("0.5"), Some(0.5));
        assert_eq!(parse("128Mi"), Some(128.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1G"), Some(1e9));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("2E-1"), Some(0.2));
        assert_eq!(parse("+4k"), Some(4000.0));
    }

    #[test]
    fn orders_mixed_suffixes() {
        assert!(parse("1Gi") > parse("1G"));
        assert!(parse("500m") < parse("1"));
        assert!(parse("256Mi") > parse("128Mi"));
    }

    #[test]
    fn rejects_what_is_not_a_quantity() {
        for text in [
            "", "m", "abc", "1.2.3", "1 Gi", "1gb", "1e", "1ex", ".", "1Ki2",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }
}
