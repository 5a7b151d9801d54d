//! What operators type, turned into wire values: durations, times, scopes, a limit's kind
//! and a tenant's policy. Pure functions with errors that say what to write instead; no
//! I/O, nothing sent anywhere.

use clap::{Args, ValueEnum};
use tollgate_client::v1;

use crate::grpc::convert::policy_to_pb;
use tollgate_ledger::TenantPolicy;

/// Milliseconds in each duration unit an operator may write, longest first.
const DURATION_UNITS_MS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses `500ms`, `60s`, `1m`, `1h`, `1d`, or a sum of them (`1h30m`); `0` alone is zero.
/// The result is in milliseconds; overflow is an error, not a wrap.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let help = "write e.g. 500ms, 60s, 1m, 1h, 1d or 1h30m";
    if text.is_empty() {
        return Err(format!("empty duration; {help}"));
    }
    if text == "0" {
        return Ok(0);
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_len == 0 {
            return Err(format!(
                "duration {text:?}: expected a number at {rest:?}; {help}"
            ));
        }
        let (digits, after) = rest.split_at(digits_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let Some(&(_, unit_ms)) = DURATION_UNITS_MS.iter().find(|(name, _)| *name == unit) else {
            return Err(if unit.is_empty() {
                format!("duration {text:?}: {digits} needs a unit (ms, s, m, h, d); {help}")
            } else {
                format!("duration {text:?}: unknown unit {unit:?} (ms, s, m, h, d); {help}")
            });
        };
        total_ms = digits
            .parse::<u64>()
            .ok()
            .and_then(|count| count.checked_mul(unit_ms))
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
        rest = after;
    }
    Ok(total_ms)
}

/// Milliseconds as the parser reads them back: `1m30s`, `500ms`, `0s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut text = String::new();
    let mut rest_ms = ms;
    for (unit, unit_ms) in DURATION_UNITS_MS {
        let count = rest_ms / unit_ms;
        if count > 0 {
            text.push_str(&format!("{count}{unit}"));
            rest_ms %= unit_ms;
        }
    }
    text
}

/// Parses a point in time as unix milliseconds: digits alone are unix milliseconds; else
/// RFC 3339 (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.250+02:00`) or a bare date
/// (`2024-05-01`, midnight UTC).
pub fn parse_time_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map_err(|_| format!("time {text:?}: too large for unix milliseconds"));
    }
    parse_rfc3339_ms(text).map_err(|why| {
        format!(
            "time {text:?}: {why}; write RFC 3339 (2024-05-01T12:00:00Z), a date \
             (2024-05-01, midnight UTC) or unix milliseconds"
        )
    })
}

fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

    // ASCII only, so every byte index below is a char boundary.
    if !text.is_ascii() {
        return Err("not ASCII".into());
    }
    let bytes = text.as_bytes();
    let number = |from: usize, len: usize| -> Result<u32, String> {
        let field = text
            .get(from..from + len)
            .filter(|field| field.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("expected {len} digits at position {from}"))?;
        field.parse::<u32>().map_err(|e| e.to_string())
    };
    let expect = |at: usize, allowed: &[u8]| -> Result<(), String> {
        match bytes.get(at) {
            Some(b) if allowed.contains(b) => Ok(()),
            _ => Err(format!(
                "expected {:?} at position {at}",
                String::from_utf8_lossy(allowed)
            )),
        }
    };

    let year = i32::try_from(number(0, 4)?).map_err(|e| e.to_string())?;
    expect(4, b"-")?;
    let month = u8::try_from(number(5, 2)?).map_err(|e| e.to_string())?;
    expect(7, b"-")?;
    let day = u8::try_from(number(8, 2)?).map_err(|e| e.to_string())?;
    let month = Month::try_from(month).map_err(|e| e.to_string())?;
    let date = Date::from_calendar_date(year, month, day).map_err(|e| e.to_string())?;
    if bytes.len() == 10 {
        return unix_ms(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc());
    }

    expect(10, b"Tt ")?;
    let hour = number(11, 2)?;
    expect(13, b":")?;
    let minute = number(14, 2)?;
    expect(16, b":")?;
    let second = number(17, 2)?;
    let mut at = 19;
    let mut nanos: u32 = 0;
    if bytes.get(at) == Some(&b'.') {
        at += 1;
        let digits_len = bytes[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if !(1..=9).contains(&digits_len) {
            return Err("fractional seconds need 1 to 9 digits".into());
        }
        nanos = number(at, digits_len)? * 10u32.pow(9 - digits_len as u32);
        at += digits_len;
    }
    let offset = match bytes.get(at) {
        Some(b'Z' | b'z') if bytes.len() == at + 1 => UtcOffset::UTC,
        Some(sign @ (b'+' | b'-')) if bytes.len() == at + 6 => {
            expect(at + 3, b":")?;
            let sign: i8 = if *sign == b'-' { -1 } else { 1 };
            let hours = i8::try_from(number(at + 1, 2)?).map_err(|e| e.to_string())?;
            let minutes = i8::try_from(number(at + 4, 2)?).map_err(|e| e.to_string())?;
            UtcOffset::from_hms(sign * hours, sign * minutes, 0).map_err(|e| e.to_string())?
        }
        _ => return Err("expected a zone: Z or +HH:MM or -HH:MM".into()),
    };
    let hms = |v: u32| u8::try_from(v).map_err(|e| e.to_string());
    let time = Time::from_hms_nano(hms(hour)?, hms(minute)?, hms(second)?, nanos)
        .map_err(|e| e.to_string())?;
    unix_ms(PrimitiveDateTime::new(date, time).assume_offset(offset))
}

fn unix_ms(at: time::OffsetDateTime) -> Result<u64, String> {
    u64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| "before 1970-01-01T00:00:00Z".into())
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds (`2024-05-01T12:00:00.000Z`);
/// a value beyond year 9999 is printed as plain milliseconds.
pub fn format_time_ms(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            at.millisecond()
        ),
        Err(_) => format!("{ms} ms"),
    }
}

/// Parses a limit's scope: `tenant`, `each-agent`, `agent:NAME`, `tool:NAME` (per agent;
/// also spelled `tool-per-agent:NAME`) or `tool-tenant:NAME` (summed over the tenant).
/// Only the first `:` separates, so tools like `llm:gpt-x` need no quoting.
pub fn parse_scope(text: &str) -> Result<v1::Scope, String> {
    use v1::scope::Scope;
    let help = "write tenant, each-agent, agent:NAME, tool:NAME (per agent) or tool-tenant:NAME";
    let named = |name: &str| {
        if name.is_empty() {
            Err(format!(
                "scope {text:?} needs a name after the colon; {help}"
            ))
        } else {
            Ok(name.to_owned())
        }
    };
    let scope = match text.split_once(':') {
        None if text == "tenant" => Scope::Tenant(v1::Empty {}),
        None if text == "each-agent" => Scope::EachAgent(v1::Empty {}),
        Some(("agent", name)) => Scope::Agent(named(name)?),
        Some(("tool" | "tool-per-agent", name)) => Scope::ToolPerAgent(named(name)?),
        Some(("tool-tenant", name)) => Scope::ToolTenant(named(name)?),
        _ => return Err(format!("unknown scope {text:?}; {help}")),
    };
    Ok(v1::Scope { scope: Some(scope) })
}

/// What a limit counts, as typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DimensionArg {
    Tokens,
    /// Cost in micro-units (1 USD = 1_000_000).
    Cost,
    Calls,
    /// Reservations in flight (only with --concurrency).
    Concurrency,
}

impl DimensionArg {
    pub fn to_wire(self) -> v1::Dimension {
        match self {
            DimensionArg::Tokens => v1::Dimension::Tokens,
            DimensionArg::Cost => v1::Dimension::Cost,
            DimensionArg::Calls => v1::Dimension::Calls,
            DimensionArg::Concurrency => v1::Dimension::Concurrency,
        }
    }
}

/// A spend dimension (what velocity watches): never concurrency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SpendDimensionArg {
    Tokens,
    /// Cost in micro-units (1 USD = 1_000_000).
    Cost,
    Calls,
}

impl SpendDimensionArg {
    pub fn to_wire(self) -> v1::Dimension {
        match self {
            SpendDimensionArg::Tokens => v1::Dimension::Tokens,
            SpendDimensionArg::Cost => v1::Dimension::Cost,
            SpendDimensionArg::Calls => v1::Dimension::Calls,
        }
    }
}

/// A budget's window; calendar windows are in UTC and reset at their boundary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum WindowArg {
    #[default]
    Lifetime,
    Hour,
    Day,
    Week,
    Month,
}

impl WindowArg {
    pub fn to_wire(self) -> v1::Window {
        match self {
            WindowArg::Lifetime => v1::Window::Lifetime,
            WindowArg::Hour => v1::Window::Hour,
            WindowArg::Day => v1::Window::Day,
            WindowArg::Week => v1::Window::Week,
            WindowArg::Month => v1::Window::Month,
        }
    }
}

/// What happens to a reservation nobody committed or released within its TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExpiryArg {
    /// Charge the estimate (fail safe: the call may have happened).
    Charge,
    /// Give the estimate back.
    Release,
}

/// The kind of a limit: exactly one of --budget, --rate, --concurrency, with their options.
/// Amounts are integers in the limit's dimension; cost is in micro-units (1 USD = 1_000_000).
#[derive(Clone, Debug, Default, PartialEq, Eq, Args)]
pub struct LimitKindArgs {
    /// Budget: cap on spend (committed + held) in --window.
    #[arg(long, value_name = "AMOUNT")]
    pub budget: Option<u64>,
    /// The budget's window [default: lifetime].
    #[arg(long, value_enum)]
    pub window: Option<WindowArg>,
    /// Rate: AMOUNT per --per, smoothed, with a --burst.
    #[arg(long, value_name = "AMOUNT")]
    pub rate: Option<u64>,
    /// The rate's period, e.g. 1s, 1m, 1h.
    #[arg(long = "per", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub per_ms: Option<u64>,
    /// Most a rate lets through at once [default: the rate's AMOUNT].
    #[arg(long, value_name = "N")]
    pub burst: Option<u64>,
    /// Concurrency: at most N reservations in flight.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u64>,
}

impl LimitKindArgs {
    /// The limit's kind, or why the flags do not describe exactly one.
    pub fn to_wire(&self) -> Result<v1::limit::Kind, String> {
        use v1::limit::Kind;
        let given: Vec<&str> = [
            ("--budget", self.budget.is_some()),
            ("--rate", self.rate.is_some()),
            ("--concurrency", self.concurrency.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect();
        if given.len() != 1 {
            let got = if given.is_empty() {
                "none".to_owned()
            } else {
                given.join(" and ")
            };
            return Err(format!(
                "give exactly one of --budget AMOUNT, --rate AMOUNT --per DURATION, \
                 --concurrency N (got {got})"
            ));
        }
        if self.window.is_some() && self.budget.is_none() {
            return Err("--window applies to --budget only".into());
        }
        if (self.per_ms.is_some() || self.burst.is_some()) && self.rate.is_none() {
            return Err("--per and --burst apply to --rate only".into());
        }
        let kind = if let Some(amount) = self.budget {
            Kind::Budget(v1::Budget {
                window: self.window.unwrap_or_default().to_wire().into(),
                amount,
            })
        } else if let Some(amount) = self.rate {
            let period_ms = self
                .per_ms
                .ok_or("--rate needs --per DURATION, e.g. --rate 60 --per 1m")?;
            if period_ms == 0 {
                return Err("--per must be longer than zero".into());
            }
            Kind::Rate(v1::Rate {
                amount,
                period_ms,
                burst: self.burst.unwrap_or(amount),
            })
        } else {
            let max = self.concurrency.ok_or("--concurrency N is missing")?;
            Kind::Concurrency(v1::Concurrency { max })
        };
        Ok(kind)
    }
}

/// The dimension a limit counts: a concurrency limit counts concurrency (the default for
/// it), every other kind needs --dimension tokens|cost|calls.
pub fn limit_dimension(
    kind: &v1::limit::Kind,
    dimension: Option<DimensionArg>,
) -> Result<v1::Dimension, String> {
    let is_concurrency = matches!(kind, v1::limit::Kind::Concurrency(_));
    match (is_concurrency, dimension) {
        (true, None | Some(DimensionArg::Concurrency)) => Ok(v1::Dimension::Concurrency),
        (true, Some(other)) => Err(format!(
            "--concurrency limits count concurrency, not {}; drop --dimension",
            tollgate_client::Dimension::from(i32::from(other.to_wire()))
        )),
        (false, Some(DimensionArg::Concurrency)) => {
            Err("--dimension concurrency needs --concurrency N".into())
        }
        (false, Some(other)) => Ok(other.to_wire()),
        (false, None) => Err("--dimension tokens|cost|calls is required".into()),
    }
}

/// A tenant's runaway detection and expiry policy. Flags left out keep the server's
/// defaults; with no flag at all no policy is sent and the server applies its default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Args)]
pub struct TenantPolicyArgs {
    /// Expired reservations: charge the estimate, or release it [default: charge].
    #[arg(long, value_enum)]
    pub expiry: Option<ExpiryArg>,
    /// Trip an agent after the same fingerprint N times within --repeat-window; 0 turns
    /// repetition detection off [default: 20].
    #[arg(long, value_name = "N")]
    pub repeat_max: Option<u32>,
    /// Window of repetition detection [default: 60s].
    #[arg(long = "repeat-window", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub repeat_window_ms: Option<u64>,
    /// Trip an agent whose spend in --velocity-window exceeds N times its recent rate;
    /// 0 turns velocity detection off [default: 0].
    #[arg(long, value_name = "N")]
    pub velocity_factor: Option<u32>,
    /// Window of velocity detection [default: 60s].
    #[arg(long = "velocity-window", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub velocity_window_ms: Option<u64>,
    /// What velocity watches [default: cost].
    #[arg(long, value_enum)]
    pub velocity_dimension: Option<SpendDimensionArg>,
    /// Spend in one window below which velocity never trips [default: 1000000, i.e. 1 USD
    /// of cost].
    #[arg(long, value_name = "N")]
    pub velocity_floor: Option<u64>,
    /// How long a trip lasts; 0s: until an operator runs reset-trip [default: 0s].
    #[arg(long = "trip-cooldown", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub trip_cooldown_ms: Option<u64>,
}

impl TenantPolicyArgs {
    /// `None` when no flag was given; else the server's default policy with the flags set.
    pub fn to_wire(&self) -> Option<v1::TenantPolicy> {
        if *self == TenantPolicyArgs::default() {
            return None;
        }
        // The ledger owns the defaults; start from them so the two never drift apart.
        let mut policy = policy_to_pb(&TenantPolicy::default());
        if let Some(expiry) = self.expiry {
            policy.expiry = match expiry {
                ExpiryArg::Charge => v1::ExpiryPolicy::Charge,
                ExpiryArg::Release => v1::ExpiryPolicy::Release,
            }
            .into();
        }
        if let Some(dimension) = self.velocity_dimension {
            policy.velocity_dimension = dimension.to_wire().into();
        }
        policy.repeat_max = self.repeat_max.unwrap_or(policy.repeat_max);
        policy.repeat_window_ms = self.repeat_window_ms.unwrap_or(policy.repeat_window_ms);
        policy.velocity_factor = self.velocity_factor.unwrap_or(policy.velocity_factor);
        policy.velocity_window_ms = self.velocity_window_ms.unwrap_or(policy.velocity_window_ms);
        policy.velocity_floor = self.velocity_floor.unwrap_or(policy.velocity_floor);
        policy.trip_cooldown_ms = self.trip_cooldown_ms.unwrap_or(policy.trip_cooldown_ms);
        Some(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::limit::Kind;
    use v1::scope::Scope;

    #[test]
    fn durations_parse_in_every_unit_and_in_sums() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("60s"), Ok(60_000));
        assert_eq!(parse_duration_ms("1m"), Ok(60_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("1m500ms"), Ok(60_500));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        assert_eq!(parse_duration_ms(" 2s "), Ok(2_000));
    }

    #[test]
    fn bad_or_overflowing_durations_are_errors_not_wraps() {
        for bad in [
            "", "s", "60", "1x", "1.5s", "-1s", "1 s", "1mm", "m1", "1sec",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_duration_ms("213503982334601d").is_err());
        assert!(parse_duration_ms("18446744073709551615ms1ms").is_err());
        assert!(parse_duration_ms("99999999999999999999ms").is_err());
        let missing_unit = parse_duration_ms("60").unwrap_err();
        assert!(missing_unit.contains("needs a unit"), "{missing_unit}");
    }

    #[test]
    fn durations_print_as_they_parse() {
        for ms in [
            0, 1, 500, 1_000, 60_000, 60_500, 5_400_000, 86_400_000, 90_061_001,
        ] {
            let text = format_duration_ms(ms);
            assert_eq!(parse_duration_ms(&text), Ok(ms), "{text}");
        }
        assert_eq!(format_duration_ms(5_400_000), "1h30m");
        assert_eq!(format_duration_ms(0), "0s");
        assert_eq!(
            parse_duration_ms(&format_duration_ms(u64::MAX)),
            Ok(u64::MAX)
        );
    }

    #[test]
    fn times_parse_as_unix_ms_rfc3339_or_date() {
        assert_eq!(parse_time_ms("1714564800000"), Ok(1_714_564_800_000));
        assert_eq!(parse_time_ms("2024-05-01T12:00:00Z"), Ok(1_714_564_800_000));
        assert_eq!(parse_time_ms("2024-05-01t12:00:00z"), Ok(1_714_564_800_000));
        assert_eq!(parse_time_ms("2024-05-01 12:00:00Z"), Ok(1_714_564_800_000));
        assert_eq!(
            parse_time_ms("2024-05-01T12:00:00.25Z"),
            Ok(1_714_564_800_250)
        );
        assert_eq!(
            parse_time_ms("2024-05-01T14:00:00+02:00"),
            Ok(1_714_564_800_000)
        );
        assert_eq!(
            parse_time_ms("2024-05-01T11:30:00-00:30"),
            Ok(1_714_564_800_000)
        );
        assert_eq!(parse_time_ms("2024-05-01"), Ok(1_714_521_600_000));
        assert_eq!(parse_time_ms("1970-01-01T00:00:00Z"), Ok(0));
    }

    #[test]
    fn bad_times_are_rejected_with_a_hint() {
        for bad in [
            "",
            "yesterday",
            "2024-13-01",
            "2024-02-30",
            "2024-05-01T12:00:00",
            "2024-05-01T25:00:00Z",
            "2024-05-01T12:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00.1234567891Z",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00Zjunk",
            "1969-12-31T23:59:59Z",
            "2024-05-01T12:00:00Ž",
            "99999999999999999999",
        ] {
            let error = parse_time_ms(bad).expect_err(bad);
            assert!(error.contains(bad.trim()), "{error}");
        }
        assert!(parse_time_ms("soon").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn times_print_as_rfc3339_utc() {
        assert_eq!(
            format_time_ms(1_714_564_800_250),
            "2024-05-01T12:00:00.250Z"
        );
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_time_ms(&format_time_ms(1_714_564_800_250)),
            Ok(1_714_564_800_250)
        );
        assert_eq!(format_time_ms(u64::MAX), format!("{} ms", u64::MAX));
    }

    #[test]
    fn scopes_parse_in_every_form() {
        let scope = |text: &str| parse_scope(text).map(|s| s.scope.unwrap());
        assert_eq!(scope("tenant"), Ok(Scope::Tenant(v1::Empty {})));
        assert_eq!(scope("each-agent"), Ok(Scope::EachAgent(v1::Empty {})));
        assert_eq!(scope("agent:bot"), Ok(Scope::Agent("bot".into())));
        assert_eq!(
            scope("tool:search"),
            Ok(Scope::ToolPerAgent("search".into()))
        );
        assert_eq!(
            scope("tool-per-agent:llm:gpt-x"),
            Ok(Scope::ToolPerAgent("llm:gpt-x".into()))
        );
        assert_eq!(
            scope("tool-tenant:llm:gpt-x"),
            Ok(Scope::ToolTenant("llm:gpt-x".into()))
        );
        for bad in [
            "", "tenants", "agent", "agent:", "tool:", "tenant:x", "user:bob",
        ] {
            assert!(parse_scope(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn scopes_read_back_as_the_client_prints_them() {
        for text in [
            "tenant",
            "each-agent",
            "agent:a",
            "tool-per-agent:t",
            "tool-tenant:t",
        ] {
            let scope = parse_scope(text).unwrap();
            assert_eq!(tollgate_client::scope_to_string(Some(&scope)), text);
        }
    }

    #[test]
    fn a_limit_has_exactly_one_kind() {
        let none = LimitKindArgs::default();
        assert!(none.to_wire().unwrap_err().contains("got none"));
        let two = LimitKindArgs {
            budget: Some(1),
            rate: Some(2),
            per_ms: Some(1_000),
            ..LimitKindArgs::default()
        };
        assert!(two.to_wire().unwrap_err().contains("--budget and --rate"));
        let three = LimitKindArgs {
            budget: Some(1),
            rate: Some(2),
            concurrency: Some(3),
            ..LimitKindArgs::default()
        };
        assert!(three.to_wire().is_err());
    }

    #[test]
    fn limit_kind_options_belong_to_their_kind() {
        let window_on_rate = LimitKindArgs {
            rate: Some(2),
            per_ms: Some(1_000),
            window: Some(WindowArg::Day),
            ..LimitKindArgs::default()
        };
        assert!(window_on_rate.to_wire().is_err());
        let burst_on_budget = LimitKindArgs {
            budget: Some(2),
            burst: Some(1),
            ..LimitKindArgs::default()
        };
        assert!(burst_on_budget.to_wire().is_err());
        let rate_without_period = LimitKindArgs {
            rate: Some(2),
            ..LimitKindArgs::default()
        };
        assert!(rate_without_period.to_wire().unwrap_err().contains("--per"));
        let zero_period = LimitKindArgs {
            rate: Some(2),
            per_ms: Some(0),
            ..LimitKindArgs::default()
        };
        assert!(zero_period.to_wire().is_err());
    }

    #[test]
    fn limit_kinds_fill_their_defaults() {
        let budget = LimitKindArgs {
            budget: Some(5_000_000),
            ..LimitKindArgs::default()
        };
        assert_eq!(
            budget.to_wire(),
            Ok(Kind::Budget(v1::Budget {
                window: v1::Window::Lifetime.into(),
                amount: 5_000_000
            }))
        );
        let rate = LimitKindArgs {
            rate: Some(60),
            per_ms: Some(60_000),
            ..LimitKindArgs::default()
        };
        assert_eq!(
            rate.to_wire(),
            Ok(Kind::Rate(v1::Rate {
                amount: 60,
                period_ms: 60_000,
                burst: 60
            }))
        );
        let concurrency = LimitKindArgs {
            concurrency: Some(4),
            ..LimitKindArgs::default()
        };
        assert_eq!(
            concurrency.to_wire(),
            Ok(Kind::Concurrency(v1::Concurrency { max: 4 }))
        );
    }

    #[test]
    fn concurrency_limits_and_only_they_count_concurrency() {
        let concurrency = Kind::Concurrency(v1::Concurrency { max: 4 });
        let budget = Kind::Budget(v1::Budget::default());
        assert_eq!(
            limit_dimension(&concurrency, None),
            Ok(v1::Dimension::Concurrency)
        );
        assert!(limit_dimension(&concurrency, Some(DimensionArg::Cost)).is_err());
        assert!(limit_dimension(&budget, None).is_err());
        assert!(limit_dimension(&budget, Some(DimensionArg::Concurrency)).is_err());
        assert_eq!(
            limit_dimension(&budget, Some(DimensionArg::Tokens)),
            Ok(v1::Dimension::Tokens)
        );
    }

    #[test]
    fn no_policy_flag_sends_no_policy_and_one_flag_keeps_the_other_defaults() {
        assert_eq!(TenantPolicyArgs::default().to_wire(), None);
        let policy = TenantPolicyArgs {
            expiry: Some(ExpiryArg::Release),
            ..TenantPolicyArgs::default()
        }
        .to_wire()
        .unwrap();
        assert_eq!(
            policy,
            v1::TenantPolicy {
                expiry: v1::ExpiryPolicy::Release.into(),
                repeat_max: 20,
                repeat_window_ms: 60_000,
                velocity_factor: 0,
                velocity_window_ms: 60_000,
                velocity_dimension: v1::Dimension::Cost.into(),
                velocity_floor: 1_000_000,
                trip_cooldown_ms: 0,
            }
        );
        let velocity = TenantPolicyArgs {
            velocity_factor: Some(8),
            velocity_dimension: Some(SpendDimensionArg::Tokens),
            trip_cooldown_ms: Some(300_000),
            ..TenantPolicyArgs::default()
        }
        .to_wire()
        .unwrap();
        assert_eq!(velocity.velocity_factor, 8);
        assert_eq!(
            velocity.velocity_dimension,
            i32::from(v1::Dimension::Tokens)
        );
        assert_eq!(velocity.trip_cooldown_ms, 300_000);
        assert_eq!(velocity.expiry, i32::from(v1::ExpiryPolicy::Charge));
    }
}
