//! What operators type, turned into wire values: durations, times, scopes, a limit's kind
//! and a tenant's policy. Pure functions with errors that say what to write instead; no
//! I/O, nothing sent anywhere.

use clap::{ArgGroup, Args, ValueEnum};
use tollgate_client::{v1, AUDIT_QUERY_RECORDS_MAX};

use super::money::{parse_amount, AmountArg};
use crate::grpc::convert::policy_to_pb;
use tollgate_ledger::TenantPolicy;

/// Milliseconds in each unit [`format_duration_ms`] writes, longest first.
const DURATION_UNITS_MS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];
/// Nanoseconds in a millisecond: durations are kept in whole milliseconds.
const NANOS_PER_MS: u32 = 1_000_000;
const DURATION_HELP: &str = "write e.g. 500ms, 60s, 1.5s, 1m, 1h, 1d or 1h30m";

/// Parses a duration as `humantime` reads it: `500ms`, `60s`, `1m`, `1h`, `1d`, sums
/// (`1h30m`, `1h 30m`), decimals (`1.5s`) and long names (`2 days`); `0` alone is zero.
/// The result is in whole milliseconds; overflow is an error, not a wrap.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    use humantime::DurationError;
    let text = text.trim();
    let duration = humantime::parse_duration(text).map_err(|error| match error {
        DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("duration {text:?}: {value} needs a unit (ms, s, m, h, d); {DURATION_HELP}")
        }
        DurationError::Empty => format!("empty duration; {DURATION_HELP}"),
        other => format!("duration {text:?}: {other}; {DURATION_HELP}"),
    })?;
    if duration.subsec_nanos() % NANOS_PER_MS != 0 {
        return Err(format!(
            "duration {text:?} is not a whole number of milliseconds; {DURATION_HELP}"
        ));
    }
    u64::try_from(duration.as_millis()).map_err(|_| format!("duration {text:?} is too long"))
}

/// A rate's period: a duration longer than zero.
pub fn parse_period_ms(text: &str) -> Result<u64, String> {
    match parse_duration_ms(text)? {
        0 => Err("--per must be longer than zero".into()),
        period_ms => Ok(period_ms),
    }
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
/// RFC 3339 (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.250+02:00`, `T` or a space
/// between date and time) or a bare date (`2024-05-01`, midnight UTC).
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

/// RFC 3339 or a bare date, with the `time` crate. RFC 3339 lets applications choose the
/// separator between date and time; we take `T`, `t` and a space, as people write them.
fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    use time::{Date, OffsetDateTime};

    const DATE_LEN: usize = "2024-05-01".len();
    if text.len() == DATE_LEN {
        let date = Date::parse(text, format_description!("[year]-[month]-[day]"))
            .map_err(|e| e.to_string())?;
        return unix_ms(date.midnight().assume_utc());
    }
    if !matches!(text.as_bytes().get(DATE_LEN), Some(b'T' | b't' | b' ')) {
        return Err("expected T between the date and the time".into());
    }
    unix_ms(OffsetDateTime::parse(text, &Rfc3339).map_err(|e| e.to_string())?)
}

fn unix_ms(at: time::OffsetDateTime) -> Result<u64, String> {
    u64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| "before 1970-01-01T00:00:00Z".into())
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds (`2024-05-01T12:00:00.000Z`);
/// a value beyond year 9999 is printed as plain milliseconds.
pub fn format_time_ms(ms: u64) -> String {
    use time::macros::format_description;
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|at| at.format(format).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// `audit query --limit`: at most [`AUDIT_QUERY_RECORDS_MAX`], the most the cluster
/// answers at once.
pub fn parse_query_limit(text: &str) -> Result<u32, String> {
    let limit: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("--limit {text:?} is not a whole number"))?;
    if limit > AUDIT_QUERY_RECORDS_MAX {
        return Err(format!(
            "--limit {limit} is above {AUDIT_QUERY_RECORDS_MAX}, the most one query returns; \
             page with --after-seq, or use tollgate audit export"
        ));
    }
    Ok(limit)
}

/// Parses a limit's scope: `tenant`, `each-agent`, `agent:NAME`, `tool:NAME` (per agent;
/// also spelled `tool-per-agent:NAME`), `tool-tenant:NAME` (summed over the tenant) or
/// `each-session`.
/// Only the first `:` separates, so tools like `llm:gpt-x` need no quoting.
pub fn parse_scope(text: &str) -> Result<v1::Scope, String> {
    use v1::scope::Scope;
    let help = "write tenant, each-agent, agent:NAME, tool:NAME (per agent), tool-tenant:NAME \
                or each-session";
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
        None if text == "each-session" => Scope::EachSession(v1::Empty {}),
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
    /// Cost: money (5usd) or micro-units (1 USD = 1_000_000).
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
    /// Cost: money (5usd) or micro-units (1 USD = 1_000_000).
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

/// A switch given as `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOffArg {
    On,
    Off,
}

/// The kind of a limit: exactly one of --budget, --rate, --concurrency (clap's group
/// `kind`), each option only with its kind, so clap reports a wrong combination as a usage
/// error before anything runs. Options conflict with the other kinds rather than require
/// their own: clap waives a requirement when a conflicting argument is present.
#[derive(Clone, Debug, Default, PartialEq, Eq, Args)]
#[group(skip)]
#[command(group(ArgGroup::new("kind").required(true).multiple(false)))]
pub struct LimitKindArgs {
    /// Budget: cap on spend (committed + held) in --window. Cost as money: 5usd, 5.25usd,
    /// $5, 5 USD (6 decimals at most); a bare integer is a count, and for cost micro-units
    /// (50000000 = $50).
    #[arg(long, value_name = "AMOUNT", group = "kind", value_parser = parse_amount)]
    pub budget: Option<AmountArg>,
    /// The budget's window [default: lifetime].
    #[arg(long, value_enum, conflicts_with_all = ["rate", "concurrency", "duration_ms"])]
    pub window: Option<WindowArg>,
    /// Rate: AMOUNT per --per, smoothed, with a --burst. AMOUNT as for --budget.
    #[arg(long, value_name = "AMOUNT", group = "kind", requires = "per_ms", value_parser = parse_amount)]
    pub rate: Option<AmountArg>,
    /// The rate's period, longer than zero, e.g. 1s, 1.5s, 1m, 1h.
    #[arg(
        long = "per",
        value_name = "DURATION",
        conflicts_with_all = ["budget", "concurrency", "duration_ms"],
        value_parser = parse_period_ms
    )]
    pub per_ms: Option<u64>,
    /// Most a rate lets through at once, as AMOUNT [default: the rate's AMOUNT].
    #[arg(
        long,
        value_name = "AMOUNT",
        requires = "rate",
        conflicts_with_all = ["budget", "concurrency"],
        value_parser = parse_amount
    )]
    pub burst: Option<AmountArg>,
    /// Concurrency: at most N reservations in flight.
    #[arg(long, value_name = "N", group = "kind")]
    pub concurrency: Option<u64>,
    /// Duration (scope each-session): calls only within DURATION of the session's first,
    /// e.g. 10m, 1h.
    #[arg(long = "duration", value_name = "DURATION", group = "kind", value_parser = parse_period_ms)]
    pub duration_ms: Option<u64>,
}

impl LimitKindArgs {
    /// The limit's kind and what it counts. clap has checked which flags go together; what
    /// is left needs the dimension: money counts only as cost.
    pub fn to_wire(
        &self,
        dimension: Option<DimensionArg>,
    ) -> Result<(v1::limit::Kind, v1::Dimension), String> {
        use v1::limit::Kind;
        if let Some(ms) = self.duration_ms {
            return match dimension {
                None | Some(DimensionArg::Calls) => {
                    Ok((Kind::Duration(v1::Duration { ms }), v1::Dimension::Calls))
                }
                Some(_) => Err("--duration limits count calls; drop --dimension".into()),
            };
        }
        let dimension = limit_dimension(self.concurrency.is_some(), dimension)?;
        let is_cost = dimension == v1::Dimension::Cost;
        let kind = if let Some(max) = self.concurrency {
            Kind::Concurrency(v1::Concurrency { max })
        } else if let Some(budget) = self.budget {
            Kind::Budget(v1::Budget {
                window: self.window.unwrap_or_default().to_wire().into(),
                amount: budget.in_dimension("--budget", is_cost)?,
            })
        } else if let Some(rate) = self.rate {
            let amount = rate.in_dimension("--rate", is_cost)?;
            let burst = self.burst.map(|b| b.in_dimension("--burst", is_cost));
            Kind::Rate(v1::Rate {
                amount,
                period_ms: self.per_ms.ok_or("--rate needs --per DURATION")?,
                burst: burst.transpose()?.unwrap_or(amount),
            })
        } else {
            return Err(
                "give one of --budget AMOUNT, --rate AMOUNT --per DURATION, \
                        --concurrency N, --duration DURATION"
                    .into(),
            );
        };
        Ok((kind, dimension))
    }
}

/// The dimension a limit counts: a concurrency limit counts concurrency (the default for
/// it), every other kind needs --dimension tokens|cost|calls.
pub fn limit_dimension(
    is_concurrency: bool,
    dimension: Option<DimensionArg>,
) -> Result<v1::Dimension, String> {
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
    /// repetition detection off [default: 5].
    #[arg(long, value_name = "N")]
    pub repeat_max: Option<u32>,
    /// Window of repetition detection, sliding with time [default: 10m].
    #[arg(long = "repeat-window", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub repeat_window_ms: Option<u64>,
    /// Trip an agent whose spend in --velocity-window exceeds N times its recent rate;
    /// 0 turns velocity detection off [default: 10].
    #[arg(long, value_name = "N")]
    pub velocity_factor: Option<u32>,
    /// Window of velocity detection [default: 60s].
    #[arg(long = "velocity-window", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub velocity_window_ms: Option<u64>,
    /// What velocity watches [default: cost].
    #[arg(long, value_enum)]
    pub velocity_dimension: Option<SpendDimensionArg>,
    /// Spend in one window below which velocity never trips: for cost money (1usd, $0.50)
    /// or bare micro-units, else a count [default: $10.00 of cost].
    #[arg(long, value_name = "AMOUNT", value_parser = parse_amount)]
    pub velocity_floor: Option<AmountArg>,
    /// Trip an agent whose calls of one argument shape in --velocity-window exceed
    /// --velocity-factor times that shape's recent rate and N; 0 turns shape velocity off
    /// [default: 60].
    #[arg(long, value_name = "N")]
    pub shape_floor: Option<u64>,
    /// How long a trip lasts; 0s: until an operator runs reset-trip [default: 0s].
    #[arg(long = "trip-cooldown", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub trip_cooldown_ms: Option<u64>,
    /// Let clients hold budget leases: slices of the tenant's limits inside which they
    /// decide calls locally, reported by settles (docs/SPEC.md, "Leases") [default: off].
    #[arg(long, value_enum, value_name = "on|off")]
    pub leases: Option<OnOffArg>,
    #[command(flatten)]
    pub quotas: TenantQuotasArgs,
}

/// A tenant's quotas: how much of each shared bound it may hold. Flags left out keep the
/// defaults (see `tollgate tenant get`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Args)]
pub struct TenantQuotasArgs {
    /// Most agents [default: 100000].
    #[arg(long, value_name = "N")]
    pub quota_agents: Option<u32>,
    /// Most distinct tools its limits may name [default: 64].
    #[arg(long, value_name = "N")]
    pub quota_tools: Option<u32>,
    /// Most limits [default: 64].
    #[arg(long, value_name = "N")]
    pub quota_limits: Option<u32>,
    /// Most API keys [default: 100].
    #[arg(long, value_name = "N")]
    pub quota_keys: Option<u32>,
    /// Most reservations in flight [default: 100000].
    #[arg(long, value_name = "N")]
    pub quota_reservations_in_flight: Option<u32>,
    /// Most answers remembered for retries (10 minutes each); reserves and records are
    /// refused at it [default: 200000].
    #[arg(long, value_name = "N")]
    pub quota_answers: Option<u32>,
    /// Most commands waiting in a node's proposal queue [default: 2048].
    #[arg(long, value_name = "N")]
    pub quota_proposals_queued: Option<u32>,
    /// Most sessions remembered (each forgotten 2 h after its last call) [default: 10000].
    #[arg(long, value_name = "N")]
    pub quota_sessions: Option<u32>,
}

impl TenantQuotasArgs {
    /// Sets the quotas whose flags were given.
    fn set(&self, quotas: &mut v1::TenantQuotas) {
        let flags = [
            (self.quota_agents, &mut quotas.agents),
            (self.quota_tools, &mut quotas.tools),
            (self.quota_limits, &mut quotas.limits),
            (self.quota_keys, &mut quotas.keys),
            (
                self.quota_reservations_in_flight,
                &mut quotas.reservations_in_flight,
            ),
            (self.quota_answers, &mut quotas.answers),
            (self.quota_proposals_queued, &mut quotas.proposals_queued),
            (self.quota_sessions, &mut quotas.sessions),
        ];
        for (flag, quota) in flags {
            if let Some(value) = flag {
                *quota = u64::from(value);
            }
        }
    }
}

impl TenantPolicyArgs {
    /// `None` when no flag was given; else the server's default policy with the flags set,
    /// or why the flags do not fit together (money as the floor of a count).
    pub fn to_wire(&self) -> Result<Option<v1::TenantPolicy>, String> {
        if *self == TenantPolicyArgs::default() {
            return Ok(None);
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
        if let Some(floor) = self.velocity_floor {
            let is_cost = policy.velocity_dimension == i32::from(v1::Dimension::Cost);
            policy.velocity_floor = floor.in_dimension("--velocity-floor", is_cost)?;
        }
        policy.repeat_max = self.repeat_max.unwrap_or(policy.repeat_max);
        policy.repeat_window_ms = self.repeat_window_ms.unwrap_or(policy.repeat_window_ms);
        policy.velocity_factor = self.velocity_factor.unwrap_or(policy.velocity_factor);
        policy.velocity_window_ms = self.velocity_window_ms.unwrap_or(policy.velocity_window_ms);
        policy.shape_floor = self.shape_floor.unwrap_or(policy.shape_floor);
        policy.trip_cooldown_ms = self.trip_cooldown_ms.unwrap_or(policy.trip_cooldown_ms);
        if let Some(leases) = self.leases {
            policy.leases = leases == OnOffArg::On;
        }
        self.quotas
            .set(policy.quotas.get_or_insert_with(Default::default));
        Ok(Some(policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::limit::Kind;
    use v1::scope::Scope;

    #[test]
    fn durations_parse_in_every_unit_and_in_sums() {
        let cases = [
            ("500ms", 500),
            ("60s", 60_000),
            ("1m", 60_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("1m500ms", 60_500),
            ("0", 0),
            ("0s", 0),
            (" 2s ", 2_000),
            ("1.5s", 1_500),
            ("90sec", 90_000),
            ("2 days", 172_800_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text:?}");
        }
    }

    #[test]
    fn bad_or_overflowing_durations_are_errors_not_wraps() {
        for bad in [
            "",
            "s",
            "60",
            "1x",
            "-1s",
            "1mm",
            "m1",
            "1us",
            "1.5ms",
            "213503982334601d",
            "18446744073709551615ms1ms",
            "99999999999999999999ms",
        ] {
            let error = parse_duration_ms(bad).expect_err(bad);
            assert!(
                error.contains("1h30m") || error.contains("too long"),
                "{error}"
            );
        }
        let missing_unit = parse_duration_ms("60").unwrap_err();
        assert!(missing_unit.contains("needs a unit"), "{missing_unit}");
        assert_eq!(
            parse_period_ms("0s"),
            Err("--per must be longer than zero".into())
        );
        assert_eq!(parse_period_ms("1m"), Ok(60_000));
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
        let cases = [
            ("1714564800000", 1_714_564_800_000),
            ("2024-05-01T12:00:00Z", 1_714_564_800_000),
            ("2024-05-01t12:00:00z", 1_714_564_800_000),
            ("2024-05-01 12:00:00Z", 1_714_564_800_000),
            ("2024-05-01T12:00:00.25Z", 1_714_564_800_250),
            ("2024-05-01T14:00:00+02:00", 1_714_564_800_000),
            ("2024-05-01T11:30:00-00:30", 1_714_564_800_000),
            // RFC 3339 allows any number of fraction digits; beyond milliseconds they are cut.
            ("2024-05-01T12:00:00.1234567891Z", 1_714_564_800_123),
            ("2024-05-01", 1_714_521_600_000),
            ("1970-01-01T00:00:00Z", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_time_ms(text), Ok(ms), "{text:?}");
        }
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
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00Zjunk",
            "2024-05-01X12:00:00Z",
            "1969-12-31T23:59:59Z",
            "2024-05-01T12:00:00Ž",
            "2024-05-01Ž12:00:00Z",
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
        assert_eq!(scope("each-session"), Ok(Scope::EachSession(v1::Empty {})));
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
            "each-session",
        ] {
            let scope = parse_scope(text).unwrap();
            assert_eq!(tollgate_client::scope_to_string(Some(&scope)), text);
        }
    }

    // Which flags go together is clap's to check: see the command-line tests in cli.rs.

    #[test]
    fn limit_kinds_fill_their_defaults_and_read_money_as_cost() {
        let budget = LimitKindArgs {
            budget: Some(AmountArg::Money { micros: 5_000_000 }),
            ..LimitKindArgs::default()
        };
        assert_eq!(
            budget.to_wire(Some(DimensionArg::Cost)),
            Ok((
                Kind::Budget(v1::Budget {
                    window: v1::Window::Lifetime.into(),
                    amount: 5_000_000
                }),
                v1::Dimension::Cost
            ))
        );
        let error = budget.to_wire(Some(DimensionArg::Tokens)).unwrap_err();
        assert!(error.contains("--budget $5.00 is money"), "{error}");
        let rate = LimitKindArgs {
            rate: Some(AmountArg::Bare(60)),
            per_ms: Some(60_000),
            ..LimitKindArgs::default()
        };
        assert_eq!(
            rate.to_wire(Some(DimensionArg::Calls)),
            Ok((
                Kind::Rate(v1::Rate {
                    amount: 60,
                    period_ms: 60_000,
                    burst: 60
                }),
                v1::Dimension::Calls
            ))
        );
        let concurrency = LimitKindArgs {
            concurrency: Some(4),
            ..LimitKindArgs::default()
        };
        assert_eq!(
            concurrency.to_wire(None),
            Ok((
                Kind::Concurrency(v1::Concurrency { max: 4 }),
                v1::Dimension::Concurrency
            ))
        );
        assert!(LimitKindArgs::default()
            .to_wire(Some(DimensionArg::Cost))
            .is_err());
        let duration = LimitKindArgs {
            duration_ms: Some(1_800_000),
            ..LimitKindArgs::default()
        };
        let half_hour = Kind::Duration(v1::Duration { ms: 1_800_000 });
        assert_eq!(
            duration.to_wire(None),
            Ok((half_hour, v1::Dimension::Calls))
        );
        assert!(duration.to_wire(Some(DimensionArg::Cost)).is_err());
    }

    #[test]
    fn concurrency_limits_and_only_they_count_concurrency() {
        assert_eq!(limit_dimension(true, None), Ok(v1::Dimension::Concurrency));
        assert!(limit_dimension(true, Some(DimensionArg::Cost)).is_err());
        assert!(limit_dimension(false, None).is_err());
        assert!(limit_dimension(false, Some(DimensionArg::Concurrency)).is_err());
        assert_eq!(
            limit_dimension(false, Some(DimensionArg::Tokens)),
            Ok(v1::Dimension::Tokens)
        );
    }

    #[test]
    fn no_policy_flag_sends_no_policy_and_one_flag_keeps_the_other_defaults() {
        assert_eq!(TenantPolicyArgs::default().to_wire(), Ok(None));
        let policy = TenantPolicyArgs {
            expiry: Some(ExpiryArg::Release),
            ..TenantPolicyArgs::default()
        }
        .to_wire()
        .unwrap()
        .unwrap();
        assert_eq!(
            policy,
            v1::TenantPolicy {
                expiry: v1::ExpiryPolicy::Release.into(),
                repeat_max: 5,
                repeat_window_ms: 600_000,
                velocity_factor: 10,
                velocity_window_ms: 60_000,
                velocity_dimension: v1::Dimension::Cost.into(),
                velocity_floor: 10_000_000,
                trip_cooldown_ms: 0,
                quotas: Some(crate::grpc::convert::quotas_to_pb(
                    &tollgate_ledger::TenantQuotas::default()
                )),
                shape_floor: tollgate_ledger::SHAPE_FLOOR_DEFAULT,
                leases: false,
            }
        );
        let quotas = TenantPolicyArgs {
            quotas: TenantQuotasArgs {
                quota_answers: Some(5_000),
                ..TenantQuotasArgs::default()
            },
            ..TenantPolicyArgs::default()
        }
        .to_wire()
        .unwrap()
        .unwrap()
        .quotas
        .unwrap();
        assert_eq!(quotas.answers, 5_000);
        assert_eq!(quotas.agents, tollgate_ledger::AGENTS_QUOTA_DEFAULT);
        let velocity = TenantPolicyArgs {
            velocity_factor: Some(8),
            velocity_dimension: Some(SpendDimensionArg::Tokens),
            trip_cooldown_ms: Some(300_000),
            shape_floor: Some(0),
            ..TenantPolicyArgs::default()
        }
        .to_wire()
        .unwrap()
        .unwrap();
        assert_eq!(velocity.velocity_factor, 8);
        assert_eq!(velocity.shape_floor, 0);
        assert_eq!(
            velocity.velocity_dimension,
            i32::from(v1::Dimension::Tokens)
        );
        assert_eq!(velocity.trip_cooldown_ms, 300_000);
        assert_eq!(velocity.expiry, i32::from(v1::ExpiryPolicy::Charge));
        assert!(!velocity.leases, "leases are off unless asked for");
        let leases = |flag| {
            TenantPolicyArgs {
                leases: Some(flag),
                ..TenantPolicyArgs::default()
            }
            .to_wire()
            .unwrap()
            .unwrap()
        };
        let on = leases(OnOffArg::On);
        assert!(on.leases);
        assert_eq!(on.repeat_max, 5, "the other fields keep their defaults");
        assert!(!leases(OnOffArg::Off).leases);
    }

    #[test]
    fn the_velocity_floor_is_money_only_when_velocity_watches_cost() {
        let floor = |dimension, amount| {
            TenantPolicyArgs {
                velocity_dimension: dimension,
                velocity_floor: Some(amount),
                ..TenantPolicyArgs::default()
            }
            .to_wire()
            .map(|policy| policy.unwrap().velocity_floor)
        };
        let half = AmountArg::Money { micros: 500_000 };
        assert_eq!(floor(None, half), Ok(500_000));
        assert_eq!(
            floor(Some(SpendDimensionArg::Cost), AmountArg::Bare(7)),
            Ok(7)
        );
        assert_eq!(
            floor(Some(SpendDimensionArg::Calls), AmountArg::Bare(7)),
            Ok(7)
        );
        assert!(floor(Some(SpendDimensionArg::Tokens), half).is_err());
    }
}
