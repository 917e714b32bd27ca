//! Just enough of Kubernetes' resource quantities for `resourceFieldRef`:
//! parsing `500m`, `2`, `1.5Gi`, `1e3`… into an exact number of nano-units.

/// Nano-units per unit.
const NANO: i128 = 1_000_000_000;

/// Parses a quantity into nano-units (`"500m"` -> 500_000_000), exactly, rounding
/// up below a nano-unit like Kubernetes does. `None` if it is not a quantity or
/// does not fit.
pub(crate) fn parse_nanos(quantity: &str) -> Option<i128> {
    let s = quantity.trim();
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (negative, digits) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut mantissa: i128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(i128::from(b - b'0'))?;
    }
    // value = mantissa * 10^-fraction_digits * multiplier, in nano-units.
    let fraction_digits = i32::try_from(fraction.len()).ok()?;
    let (binary_power, decimal_exponent) = suffix_scale(suffix)?;
    let mut numerator = mantissa
        .checked_mul(1024_i128.checked_pow(binary_power)?)?
        .checked_mul(NANO)?;
    let exponent = decimal_exponent.checked_sub(fraction_digits)?;
    let mut denominator: i128 = 1;
    if exponent >= 0 {
        numerator = numerator.checked_mul(10_i128.checked_pow(exponent.unsigned_abs())?)?;
    } else {
        denominator = 10_i128.checked_pow(exponent.unsigned_abs())?;
    }
    let nanos = div_ceil(numerator, denominator);
    Some(if negative { -nanos } else { nanos })
}

/// `(power of 1024, power of 10)` of a quantity suffix.
fn suffix_scale(suffix: &str) -> Option<(u32, i32)> {
    let scale = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (1, 0),
        "Mi" => (2, 0),
        "Gi" => (3, 0),
        "Ti" => (4, 0),
        "Pi" => (5, 0),
        "Ei" => (6, 0),
        // A decimal exponent: `1e3`, `5E-2`.
        other => {
            let exponent = other.strip_prefix(['e', 'E'])?;
            (0, exponent.parse::<i32>().ok()?)
        }
    };
    Some(scale)
}

fn div_ceil(numerator: i128, denominator: i128) -> i128 {
    let quotient = numerator / denominator;
    if numerator % denominator > 0 {
        quotient + 1
    } else {
        quotient
    }
}

/// `ceil(value / divisor)` for two nano-unit amounts at the precision the kubelet
/// uses: milli-units for CPU, whole units for everything else (memory, storage).
pub(crate) fn divide_ceil(value_nanos: i128, divisor_nanos: i128, milli_precision: bool) -> i128 {
    let unit = if milli_precision { NANO / 1000 } else { NANO };
    let value = div_ceil(value_nanos, unit);
    let divisor = div_ceil(divisor_nanos, unit).max(1);
    div_ceil(value, divisor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        let cases: [(&str, i128); 13] = [
            ("1", NANO),
            ("500m", NANO / 2),
            ("0.5", NANO / 2),
            ("1.5", 3 * NANO / 2),
            ("2k", 2_000 * NANO),
            ("1Ki", 1024 * NANO),
            ("1.5Gi", 1_610_612_736 * NANO),
            ("256Gi", 274_877_906_944 * NANO),
            ("1e3", 1_000 * NANO),
            ("5E-2", 50_000_000),
            ("1n", 1),
            ("-3", -3 * NANO),
            ("+.5", NANO / 2),
        ];
        for (input, nanos) in cases {
            assert_eq!(parse_nanos(input), Some(nanos), "{input}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_quantity() {
        for input in ["", "abc", "1Xi", "1..2", ".", "1e", "1 Gi x"] {
            assert_eq!(parse_nanos(input), None, "{input}");
        }
    }

    #[test]
    fn divides_like_the_kubelet() {
        let q = |s| parse_nanos(s).expect("quantity");
        // CPU at milli precision: 250m / 1 -> 1 (rounded up); 250m / 1m -> 250.
        assert_eq!(divide_ceil(q("250m"), q("1"), true), 1);
        assert_eq!(divide_ceil(q("250m"), q("1m"), true), 250);
        // Memory at unit precision: 1Gi / 1Mi -> 1024; 1500 / 1k -> 2.
        assert_eq!(divide_ceil(q("1Gi"), q("1Mi"), false), 1024);
        assert_eq!(divide_ceil(q("1500"), q("1k"), false), 2);
    }
}
