//! Money as operators type and read it. Cost is integer micro-units of the tenant's currency
//! (1 USD = 1_000_000) on the wire and in JSON; people write and read dollars. Integer
//! arithmetic only: no floating point ever touches an amount.

/// Micro-units in one unit of currency.
pub const MICROS_PER_UNIT: u64 = 1_000_000;
/// Decimals a money amount may have: one micro-unit is the smallest amount.
const DECIMALS_MAX: u32 = 6;
/// Decimals always shown, as on a bill (`$5.00`); more only when the amount has them.
const DECIMALS_SHOWN_MIN: usize = 2;

/// The forms an amount may take, for help texts and errors.
pub const AMOUNT_FORMS: &str = "write 5usd, 5.25usd, $5, 5 USD (cost, up to 6 decimals), or \
                                a bare integer (a count; for cost, micro-units: 5000000 = $5)";

/// An amount as typed: money (with a currency unit), or a bare integer whose meaning is
/// the limit's dimension (a count of tokens or calls, or micro-units of cost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmountArg {
    Bare(u64),
    Money { micros: u64 },
}

impl AmountArg {
    /// The amount in the units of what the limit counts: money only counts as cost.
    pub fn in_dimension(self, flag: &str, is_cost: bool) -> Result<u64, String> {
        match (self, is_cost) {
            (AmountArg::Bare(amount), _) => Ok(amount),
            (AmountArg::Money { micros }, true) => Ok(micros),
            (AmountArg::Money { micros }, false) => Err(format!(
                "{flag} {} is money, but what it counts here is tokens or calls: drop the \
                 currency, or count cost",
                format_micros(micros)
            )),
        }
    }
}

/// Parses an amount in any of [`AMOUNT_FORMS`]: `5usd`, `5.25 USD`, `$5`, `50000000`.
pub fn parse_amount(text: &str) -> Result<AmountArg, String> {
    let trimmed = text.trim();
    let (number, has_unit) = strip_unit(trimmed);
    let bad = |why: &str| format!("amount {text:?}: {why}; {AMOUNT_FORMS}");
    if number.starts_with('-') {
        return Err(bad("amounts cannot be negative"));
    }
    if !has_unit {
        return match number.parse::<u64>() {
            Ok(amount) if number.bytes().all(|b| b.is_ascii_digit()) => Ok(AmountArg::Bare(amount)),
            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Err(bad("too large")),
            _ if number.contains('.') => Err(bad("a decimal amount needs a currency")),
            _ => Err(bad("not a number with a known currency")),
        };
    }
    parse_decimal_micros(number)
        .map(|micros| AmountArg::Money { micros })
        .map_err(|why| bad(&why))
}

/// A price, always money, with or without its currency: `2.50`, `$2.50`, `2.5usd` →
/// 2_500_000 micro-units.
pub fn parse_price(text: &str) -> Result<u64, String> {
    let (number, _) = strip_unit(text.trim());
    if number.starts_with('-') {
        return Err(format!("price {text:?}: prices cannot be negative"));
    }
    parse_decimal_micros(number).map_err(|why| format!("price {text:?}: {why}"))
}

/// `$5` → `5`, `5 USD` → `5`; the flag says whether a currency was there.
fn strip_unit(text: &str) -> (&str, bool) {
    if let Some(rest) = text.strip_prefix('$') {
        return (rest, true);
    }
    let split = text.len().saturating_sub(3);
    match (text.get(..split), text.get(split..)) {
        (Some(number), Some(unit)) if unit.eq_ignore_ascii_case("usd") => (number.trim_end(), true),
        _ => (text, false),
    }
}

/// `49.04` → 49_040_000: digits, and at most [`DECIMALS_MAX`] after a point.
fn parse_decimal_micros(number: &str) -> Result<u64, String> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(whole) || (number.contains('.') && !digits_only(fraction)) {
        return Err("not a number".into());
    }
    let decimals = u32::try_from(fraction.len()).unwrap_or(u32::MAX);
    if decimals > DECIMALS_MAX {
        return Err(format!("at most {DECIMALS_MAX} decimals (one micro-unit)"));
    }
    let fraction_micros = if fraction.is_empty() {
        0
    } else {
        let value: u64 = fraction.parse().map_err(|_| "not a number")?;
        value * 10u64.pow(DECIMALS_MAX - decimals)
    };
    whole
        .parse::<u64>()
        .ok()
        .and_then(|units| units.checked_mul(MICROS_PER_UNIT))
        .and_then(|micros| micros.checked_add(fraction_micros))
        .ok_or_else(|| "too large".to_owned())
}

/// Micro-units as a decimal without currency, for JSON: `49040000` → `49.04`,
/// `1` → `0.000001`.
pub fn decimal_micros(micros: u64) -> String {
    let units = micros / MICROS_PER_UNIT;
    let fraction = format!("{:06}", micros % MICROS_PER_UNIT);
    let kept = fraction.trim_end_matches('0').len().max(DECIMALS_SHOWN_MIN);
    format!("{units}.{}", &fraction[..kept])
}

/// Micro-units as people read money: `$49.04`, `$0.000001`.
pub fn format_micros(micros: u64) -> String {
    format!("${}", decimal_micros(micros))
}

/// A signed amount (a remaining that overran is negative): `-$1.50`.
pub fn format_micros_signed(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    format!("{sign}{}", format_micros(micros.unsigned_abs()))
}

/// [`decimal_micros`] of a signed amount, for JSON.
pub fn decimal_micros_signed(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    format!("{sign}{}", decimal_micros(micros.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_in_every_accepted_form() {
        let money = |micros| Ok(AmountArg::Money { micros });
        let cases: &[(&str, Result<AmountArg, String>)] = &[
            ("5usd", money(5_000_000)),
            ("5.25usd", money(5_250_000)),
            ("5.25USD", money(5_250_000)),
            ("5 USD", money(5_000_000)),
            ("$5", money(5_000_000)),
            ("$49.04", money(49_040_000)),
            ("0.000001usd", money(1)),
            ("$0", money(0)),
            (" 7usd ", money(7_000_000)),
            ("$18446744073709.551615", money(u64::MAX)),
            ("50000000", Ok(AmountArg::Bare(50_000_000))),
            ("0", Ok(AmountArg::Bare(0))),
            ("18446744073709551615", Ok(AmountArg::Bare(u64::MAX))),
        ];
        for (text, expected) in cases {
            assert_eq!(&parse_amount(text), expected, "{text:?}");
        }
    }

    #[test]
    fn bad_amounts_say_why_and_name_the_accepted_forms() {
        let cases = [
            ("5xyz", "currency"),
            ("", "currency"),
            ("usd", "not a number"),
            ("$", "not a number"),
            ("-5usd", "negative"),
            ("$-5", "negative"),
            ("-5", "negative"),
            ("5.5", "needs a currency"),
            ("1.0000001usd", "at most 6 decimals"),
            ("18446744073710usd", "too large"),
            ("18446744073709551616", "too large"),
            ("5.usd", "not a number"),
            (".5usd", "not a number"),
            ("$5usd", "not a number"),
            ("1e6usd", "not a number"),
            ("+5", "currency"),
        ];
        for (text, why) in cases {
            let error = parse_amount(text).expect_err(text);
            assert!(error.contains(why), "{text:?}: {error}");
            assert!(error.contains("5.25usd"), "{text:?}: {error}");
        }
    }

    #[test]
    fn money_prints_with_integer_arithmetic_at_full_precision() {
        let cases = [
            (49_040_000, "$49.04"),
            (50_000_000, "$50.00"),
            (1, "$0.000001"),
            (0, "$0.00"),
            (1_234_567, "$1.234567"),
            (100_000, "$0.10"),
            (u64::MAX, "$18446744073709.551615"),
        ];
        for (micros, text) in cases {
            assert_eq!(format_micros(micros), text);
            assert_eq!(parse_amount(text), Ok(AmountArg::Money { micros }));
        }
        assert_eq!(decimal_micros(49_040_000), "49.04");
        assert_eq!(format_micros_signed(-1_500_000), "-$1.50");
        assert_eq!(decimal_micros_signed(i64::MIN), "-9223372036854.775808");
        assert_eq!(format_micros_signed(2), "$0.000002");
    }

    #[test]
    fn money_counts_only_as_cost() {
        let five = AmountArg::Money { micros: 5_000_000 };
        assert_eq!(five.in_dimension("--budget", true), Ok(5_000_000));
        let error = five.in_dimension("--budget", false).unwrap_err();
        assert!(error.contains("--budget $5.00 is money"), "{error}");
        assert_eq!(AmountArg::Bare(7).in_dimension("--rate", false), Ok(7));
        assert_eq!(AmountArg::Bare(7).in_dimension("--rate", true), Ok(7));
    }
}
