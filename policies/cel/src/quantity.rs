//! Kubernetes resource quantities (`500m`, `1.5Gi`, `2e3`), as the
//! Kubernetes CEL library's `quantity()` reads and compares them.
//!
//! A quantity is kept exactly, as a count of nano-units in an `i128`: every
//! suffix Kubernetes accepts (`n` to `E`, `Ki` to `Ei`) is a whole number
//! of nano-units, so sums and comparisons never round. Digits finer than a
//! nano-unit are rounded up, as Kubernetes rounds a quantity it cannot
//! represent at its smallest scale. (`portcullis_sdk::quantity` reads a
//! quantity as a float, which is enough to size a memory limit but not
//! to add and compare exactly.)

use std::cmp::Ordering;
use std::fmt;

/// Nano-units in one unit.
const NANO: i128 = 1_000_000_000;

/// A parsed quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    nanos: i128,
}

/// Why text is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError(String);

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Quantity {
    /// Parses Kubernetes quantity syntax: an optional sign, a decimal
    /// number, and either a suffix (`n u m k M G T P E`, `Ki Mi Gi Ti Pi
    /// Ei`) or a decimal exponent (`e3`, `E-2`).
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let invalid = || QuantityError(format!("invalid quantity {text:?}"));
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(invalid());
        }
        // The multiplier as (nano-units per unit, power of ten to apply).
        let (per_unit, exponent): (i128, i32) = match suffix {
            "" => (NANO, 0),
            "n" => (1, 0),
            "u" => (1_000, 0),
            "m" => (1_000_000, 0),
            "k" => (NANO * 1_000, 0),
            "M" => (NANO * 1_000_000, 0),
            "G" => (NANO * 1_000_000_000, 0),
            "T" => (NANO * 1_000_000_000_000, 0),
            "P" => (NANO * 1_000_000_000_000_000, 0),
            "E" => (NANO * 1_000_000_000_000_000_000, 0),
            "Ki" => (NANO << 10, 0),
            "Mi" => (NANO << 20, 0),
            "Gi" => (NANO << 30, 0),
            "Ti" => (NANO << 40, 0),
            "Pi" => (NANO << 50, 0),
            "Ei" => (NANO << 60, 0),
            exp if exp.starts_with(['e', 'E']) => {
                let power: i32 = exp[1..].parse().map_err(|_| invalid())?;
                if !(-30..=30).contains(&power) {
                    return Err(invalid());
                }
                (NANO, power)
            }
            _ => return Err(invalid()),
        };
        // value = digits / 10^fraction_len * 10^exponent * per_unit
        let digits: String = format!("{whole}{fraction}");
        if digits.len() > 30 {
            return Err(QuantityError(format!("quantity {text:?} is too large")));
        }
        let mantissa: i128 = digits.parse().map_err(|_| invalid())?;
        let scale = exponent - i32::try_from(fraction.len()).map_err(|_| invalid())?;
        let too_large = || QuantityError(format!("quantity {text:?} is too large"));
        let scaled = mantissa.checked_mul(per_unit).ok_or_else(too_large)?;
        let nanos = if scale >= 0 {
            10i128
                .checked_pow(scale.unsigned_abs())
                .and_then(|power| scaled.checked_mul(power))
                .ok_or_else(too_large)?
        } else {
            let divisor = 10i128
                .checked_pow(scale.unsigned_abs())
                .ok_or_else(invalid)?;
            // Rounded up, away from zero, as Kubernetes does.
            (scaled + divisor - 1) / divisor
        };
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// A whole number of units.
    pub fn from_integer(value: i64) -> Self {
        Self {
            nanos: i128::from(value) * NANO,
        }
    }

    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.nanos
            .checked_add(other.nanos)
            .map(|nanos| Self { nanos })
    }

    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.nanos
            .checked_sub(other.nanos)
            .map(|nanos| Self { nanos })
    }

    /// -1, 0 or 1.
    pub fn sign(self) -> i64 {
        match self.nanos.cmp(&0) {
            Ordering::Less => -1,
            Ordering::Equal => 0,
            Ordering::Greater => 1,
        }
    }

    /// Whether it is a whole number of units that fits an `int`.
    pub fn is_integer(self) -> bool {
        self.nanos % NANO == 0 && i64::try_from(self.nanos / NANO).is_ok()
    }

    /// The whole number of units, when [`Quantity::is_integer`].
    pub fn as_integer(self) -> Option<i64> {
        if self.nanos % NANO != 0 {
            return None;
        }
        i64::try_from(self.nanos / NANO).ok()
    }

    /// The value as a float (rounded).
    pub fn as_approximate_float(self) -> f64 {
        // Precision is lost beyond 2^53 nano-units either way.
        #[allow(clippy::cast_precision_loss)]
        let value = self.nanos as f64 / NANO as f64;
        value
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.nanos / NANO;
        let fraction = (self.nanos % NANO).abs();
        if fraction == 0 {
            write!(f, "{whole}")
        } else {
            let sign = if self.nanos < 0 && whole == 0 {
                "-"
            } else {
                ""
            };
            let digits = format!("{fraction:09}");
            write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        Quantity::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn reads_every_suffix_kubernetes_writes() {
        assert_eq!(q("500m"), q("0.5"));
        assert_eq!(q("1Ki"), q("1024"));
        assert_eq!(q("1.5Gi"), q("1610612736"));
        assert_eq!(q("1k"), q("1000"));
        assert_eq!(q("2e3"), q("2000"));
        assert_eq!(q("2E-3"), q("2m"));
        assert_eq!(q("100n"), q("0.0000001"));
        assert_eq!(q("1Ei"), Quantity::from_integer(1 << 60));
        assert_eq!(
            q("-1.5"),
            Quantity::parse("-1500m").unwrap_or_else(|e| panic!("{e}"))
        );
        assert_eq!(q("+3"), Quantity::from_integer(3));
        assert_eq!(q(".5"), q("500m"));
    }

    #[test]
    fn compares_across_suffixes() {
        assert!(q("1Gi") > q("1G"));
        assert!(q("250m") < q("1"));
        assert!(q("128Mi") < q("1Gi"));
        assert_eq!(q("1Mi").cmp(&q("1024Ki")), Ordering::Equal);
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for bad in [
            "", "m", "1.2.3", "1x", "1KB", "1e", "e3", "--1", "1e99", "Gi",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn integers_and_floats() {
        assert_eq!(q("2k").as_integer(), Some(2000));
        assert_eq!(q("1500m").as_integer(), None);
        assert!(!q("1500m").is_integer());
        assert!((q("1500m").as_approximate_float() - 1.5).abs() < 1e-12);
        assert_eq!(q("1500m").to_string(), "1.5");
        assert_eq!(q("-250m").to_string(), "-0.25");
        assert_eq!(q("-2").sign(), -1);
        assert_eq!(q("0").sign(), 0);
    }

    #[test]
    fn finer_than_a_nano_unit_rounds_up() {
        assert_eq!(q("1e-12"), q("1n"));
    }
}
