//! Stateless validation of commands: everything that can be decided without the ledger's
//! state, so the gRPC layer rejects it before it reaches the log. `Ledger::apply` checks
//! again, because serde builds ids and amounts without running their constructors.

use super::types::validate_id;
use super::{
    Amounts, Command, Dimension, InvalidInput, LimitKind, LimitSpec, RequestId, Scope, TenantId,
    TenantPolicy, Usage, Window, AMOUNT_MAX, LEASE_SETTLE_CALLS_MAX, LEASE_TTL_MS_MAX,
    LEASE_TTL_MS_MIN, LEASE_UNITS_MAX, RATE_PERIOD_MS_MAX, TTL_MS_MAX, TTL_MS_MIN,
};

/// Longest repetition or velocity window a policy may use: one day. Runaway detection is
/// about minutes; a day-long window is a budget, and budgets exist for that.
pub const RUNAWAY_WINDOW_MS_MAX: u64 = 86_400_000;
/// Shortest velocity window: one second, so the average per window means something.
pub const VELOCITY_WINDOW_MS_MIN: u64 = 1_000;
/// Largest velocity factor: beyond 10_000x the detector would never fire.
pub const VELOCITY_FACTOR_MAX: u32 = 10_000;
/// Highest shape floor: more calls of one shape than one agent can make in the longest
/// window; a higher floor would never let shape velocity fire (0 turns it off).
pub const SHAPE_FLOOR_MAX: u64 = 100_000_000;
/// Longest trip cool-down: 30 days; longer is "reset only" (0).
pub const TRIP_COOLDOWN_MS_MAX: u64 = 30 * 86_400_000;
/// Longest session duration a limit may allow: one week. A run longer than that is not
/// one task.
pub const SESSION_DURATION_MS_MAX: u64 = 7 * 86_400_000;

fn fail<T>(message: String) -> Result<T, InvalidInput> {
    Err(InvalidInput(message))
}

impl Command {
    fn validate_reserve(&self) -> Result<(), InvalidInput> {
        let Command::Reserve {
            agent,
            tool,
            estimate,
            ttl_ms,
            fingerprint,
            shape,
            usage,
            session,
            ..
        } = self
        else {
            return Ok(());
        };
        session.as_ref().map_or(Ok(()), |s| s.validate())?;
        agent.validate()?;
        tool.validate()?;
        estimate.validate("estimate")?;
        validate_usage("estimate", estimate, usage.as_ref())?;
        validate_ttl(*ttl_ms)?;
        if let Some(fingerprint) = fingerprint {
            validate_id("fingerprint", fingerprint)?;
        }
        shape.as_ref().map_or(Ok(()), |s| validate_id("shape", s))
    }

    fn validate_lease(&self) -> Result<(), InvalidInput> {
        let (want, units, ttl_ms) = match self {
            Command::Lease {
                agent,
                tool,
                want,
                units,
                floor,
                ttl_ms,
                ..
            } => {
                agent.validate()?;
                tool.validate()?;
                floor.validate("floor")?;
                (want, units, ttl_ms)
            }
            Command::Settle {
                calls,
                want,
                units,
                ttl_ms,
                keep,
                keep_units,
                ..
            } => {
                validate_lease_calls(calls)?;
                keep.validate("keep")?;
                if *keep_units > LEASE_UNITS_MAX {
                    return fail(format!(
                        "keep_units is {keep_units}; at most LEASE_UNITS_MAX ({LEASE_UNITS_MAX})"
                    ));
                }
                (want, units, ttl_ms)
            }
            _ => return Ok(()),
        };
        want.validate("want")?;
        if *units > LEASE_UNITS_MAX {
            return fail(format!(
                "units is {units}; at most LEASE_UNITS_MAX ({LEASE_UNITS_MAX})"
            ));
        }
        if *ttl_ms != 0 && !(LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX).contains(ttl_ms) {
            return fail(format!(
                "ttl_ms is {ttl_ms}; 0 (the default, LEASE_TTL_MS_DEFAULT) or within \
                 LEASE_TTL_MS_MIN ({LEASE_TTL_MS_MIN}) and LEASE_TTL_MS_MAX ({LEASE_TTL_MS_MAX})"
            ));
        }
        Ok(())
    }

    /// Checks ids, amounts, TTL, limits and policies; looks at nothing but the command.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if let Some(request_id) = self.request_id() {
            request_id.validate()?;
        }
        if let Some(tenant) = self.tenant() {
            tenant.validate()?;
        }
        match self {
            Command::Reserve { .. } => self.validate_reserve(),
            Command::Commit {
                actual,
                usage,
                abandoned,
                ..
            } => validate_commit(actual, usage.as_ref(), *abandoned),
            Command::Release { .. } => Ok(()),
            Command::Record {
                agent,
                tool,
                actual,
                usage,
                session,
                ..
            } => {
                session.as_ref().map_or(Ok(()), |s| s.validate())?;
                agent.validate()?;
                tool.validate()?;
                actual.validate("actual")?;
                validate_usage("actual", actual, usage.as_ref())
            }
            Command::PutPrice { model, price, .. } => {
                model.validate()?;
                price.validate()
            }
            Command::DeletePrice { model, .. } => model.validate(),
            Command::PutTenant { policy, .. } => policy.validate(),
            Command::PutLimit { limit, .. } => limit.validate(),
            Command::DeleteLimit { limit_id, .. } => limit_id.validate(),
            Command::Freeze { agent, .. } | Command::Unfreeze { agent, .. } => {
                agent.as_ref().map_or(Ok(()), |a| a.validate())
            }
            Command::ResetTrip { agent, .. } => agent.validate(),
            Command::Tick | Command::AlertsDelivered { .. } => Ok(()),
            Command::Lease { .. } | Command::Settle { .. } => self.validate_lease(),
            Command::CreateKey { tenant, key, .. } => {
                super::keys::validate_spec(tenant.as_ref(), key)
            }
            Command::RotateKey { key_id, .. } | Command::RevokeKey { key_id, .. } => {
                key_id.validate()
            }
        }
    }

    /// The client's request id; None for `Tick`.
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            Command::Reserve { request_id, .. }
            | Command::Commit { request_id, .. }
            | Command::Release { request_id, .. }
            | Command::Record { request_id, .. }
            | Command::PutTenant { request_id, .. }
            | Command::PutLimit { request_id, .. }
            | Command::DeleteLimit { request_id, .. }
            | Command::Freeze { request_id, .. }
            | Command::Unfreeze { request_id, .. }
            | Command::ResetTrip { request_id, .. }
            | Command::PutPrice { request_id, .. }
            | Command::DeletePrice { request_id, .. }
            | Command::CreateKey { request_id, .. }
            | Command::RotateKey { request_id, .. }
            | Command::RevokeKey { request_id, .. }
            | Command::Lease { request_id, .. }
            | Command::Settle { request_id, .. } => Some(request_id),
            Command::Tick | Command::AlertsDelivered { .. } => None,
        }
    }

    /// The tenant the command acts for; None for `Tick` and commands on admin keys.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Command::Reserve { tenant, .. }
            | Command::Commit { tenant, .. }
            | Command::Release { tenant, .. }
            | Command::Record { tenant, .. }
            | Command::PutTenant { tenant, .. }
            | Command::PutLimit { tenant, .. }
            | Command::DeleteLimit { tenant, .. }
            | Command::Freeze { tenant, .. }
            | Command::Unfreeze { tenant, .. }
            | Command::ResetTrip { tenant, .. }
            | Command::PutPrice { tenant, .. }
            | Command::DeletePrice { tenant, .. }
            | Command::Lease { tenant, .. }
            | Command::Settle { tenant, .. } => Some(tenant),
            Command::CreateKey { tenant, .. }
            | Command::RotateKey { tenant, .. }
            | Command::RevokeKey { tenant, .. } => tenant.as_ref(),
            Command::Tick | Command::AlertsDelivered { .. } => None,
        }
    }
}

fn validate_lease_calls(calls: &[crate::LeaseCall]) -> Result<(), InvalidInput> {
    if calls.len() > LEASE_SETTLE_CALLS_MAX {
        return fail(format!(
            "a settle reports {} calls; at most LEASE_SETTLE_CALLS_MAX ({LEASE_SETTLE_CALLS_MAX})",
            calls.len()
        ));
    }
    for call in calls {
        call.request_id.validate()?;
        call.estimate.validate("estimate")?;
        call.actual.validate("actual")?;
        if let Some(fingerprint) = &call.fingerprint {
            validate_id("fingerprint", fingerprint)?;
        }
        if let Some(shape) = &call.shape {
            validate_id("shape", shape)?;
        }
    }
    Ok(())
}

fn validate_ttl(ttl_ms: u64) -> Result<(), InvalidInput> {
    if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&ttl_ms) {
        return fail(format!(
            "ttl_ms is {ttl_ms}; it must be within TTL_MS_MIN ({TTL_MS_MIN}) and TTL_MS_MAX ({TTL_MS_MAX})"
        ));
    }
    Ok(())
}

fn validate_commit(
    actual: &Amounts,
    usage: Option<&Usage>,
    abandoned: bool,
) -> Result<(), InvalidInput> {
    actual.validate("actual")?;
    if abandoned && (usage.is_some() || *actual != Amounts::default()) {
        return fail(
            "an abandoned commit charges the reservation's estimate; it carries neither an \
             actual nor usage"
                .into(),
        );
    }
    validate_usage("actual", actual, usage)
}

/// Usage replaces the cost of `amounts`: both at once would say two things.
fn validate_usage(
    what: &str,
    amounts: &Amounts,
    usage: Option<&Usage>,
) -> Result<(), InvalidInput> {
    let Some(usage) = usage else {
        return Ok(());
    };
    usage.validate()?;
    if amounts.cost_micros != 0 {
        return fail(format!(
            "{what} gives both a cost and usage; give one: the cost is derived from usage"
        ));
    }
    Ok(())
}

fn check_amount(what: &str, value: u64) -> Result<(), InvalidInput> {
    if value == 0 || value > AMOUNT_MAX {
        return fail(format!(
            "{what} is {value}; it must be within 1 and AMOUNT_MAX ({AMOUNT_MAX})"
        ));
    }
    Ok(())
}

impl LimitSpec {
    /// A limit is sane: ids valid, amounts in 1..=AMOUNT_MAX, rate periods in
    /// 1..=RATE_PERIOD_MS_MAX, and concurrency limits exactly on `Dimension::Concurrency`.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        self.id.validate()?;
        if let Err(InvalidInput(why)) = self.thresholds.validate() {
            return fail(format!("limit {}: {why}", self.id));
        }
        match &self.scope {
            Scope::Tenant | Scope::EachAgent | Scope::EachSession => {}
            Scope::Agent(agent) => agent.validate()?,
            Scope::ToolPerAgent(tool) | Scope::ToolTenant(tool) => tool.validate()?,
        }
        self.validate_session_rules()?;
        let is_concurrency_kind = matches!(self.kind, LimitKind::Concurrency { .. });
        if is_concurrency_kind != (self.dimension == Dimension::Concurrency) {
            return fail(format!(
                "limit {}: concurrency limits count Dimension::Concurrency, and only they may",
                self.id
            ));
        }
        match self.kind {
            LimitKind::Budget { amount, .. } => check_amount("budget amount", amount),
            LimitKind::Rate {
                amount,
                period_ms,
                burst,
            } => {
                check_amount("rate amount", amount)?;
                check_amount("rate burst", burst)?;
                if !(1..=RATE_PERIOD_MS_MAX).contains(&period_ms) {
                    return fail(format!(
                        "rate period_ms is {period_ms}; it must be within 1 and RATE_PERIOD_MS_MAX ({RATE_PERIOD_MS_MAX})"
                    ));
                }
                Ok(())
            }
            LimitKind::Concurrency { max } => check_amount("concurrency max", max),
            LimitKind::Duration { ms } => self.validate_duration(ms),
        }
    }

    /// Session limits: a duration only on sessions, counting calls; a session's budget
    /// lasts as long as the session.
    fn validate_session_rules(&self) -> Result<(), InvalidInput> {
        let is_duration = matches!(self.kind, LimitKind::Duration { .. });
        if is_duration && self.scope != Scope::EachSession {
            return fail(format!(
                "limit {}: duration limits attach only to scope each_session",
                self.id
            ));
        }
        let windowed =
            matches!(self.kind, LimitKind::Budget { window, .. } if window != Window::Lifetime);
        if windowed && self.scope == Scope::EachSession {
            return fail(format!(
                "limit {}: a session's budget lasts the session: its window must be lifetime",
                self.id
            ));
        }
        Ok(())
    }

    fn validate_duration(&self, ms: u64) -> Result<(), InvalidInput> {
        if self.dimension != Dimension::Calls {
            return fail(format!(
                "limit {}: duration limits count Dimension::Calls",
                self.id
            ));
        }
        if !(1..=SESSION_DURATION_MS_MAX).contains(&ms) {
            return fail(format!(
                "duration ms is {ms}; it must be within 1 and SESSION_DURATION_MS_MAX ({SESSION_DURATION_MS_MAX})"
            ));
        }
        Ok(())
    }
}

impl TenantPolicy {
    /// A policy is sane: windows within bounds, a repetition count of 0 (off) or at least
    /// 2, velocity on a spend dimension, a bounded cool-down.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.repeat_max == 1 {
            return fail(
                "repeat_max is 1, which would trip on every fingerprint; use 0 (off) or >= 2"
                    .into(),
            );
        }
        if !(1..=RUNAWAY_WINDOW_MS_MAX).contains(&self.repeat_window_ms) {
            return fail(format!(
                "repeat_window_ms is {}; it must be within 1 and RUNAWAY_WINDOW_MS_MAX ({RUNAWAY_WINDOW_MS_MAX})",
                self.repeat_window_ms
            ));
        }
        if !(VELOCITY_WINDOW_MS_MIN..=RUNAWAY_WINDOW_MS_MAX).contains(&self.velocity_window_ms) {
            return fail(format!(
                "velocity_window_ms is {}; it must be within VELOCITY_WINDOW_MS_MIN ({VELOCITY_WINDOW_MS_MIN}) and RUNAWAY_WINDOW_MS_MAX ({RUNAWAY_WINDOW_MS_MAX})",
                self.velocity_window_ms
            ));
        }
        if self.velocity_factor > VELOCITY_FACTOR_MAX {
            return fail(format!(
                "velocity_factor is {}, above VELOCITY_FACTOR_MAX ({VELOCITY_FACTOR_MAX})",
                self.velocity_factor
            ));
        }
        if self.velocity_dimension == Dimension::Concurrency {
            return fail("velocity_dimension must be tokens, cost or calls".into());
        }
        if self.velocity_floor > AMOUNT_MAX {
            return fail(format!(
                "velocity_floor is {}, above AMOUNT_MAX ({AMOUNT_MAX})",
                self.velocity_floor
            ));
        }
        if self.shape_floor > SHAPE_FLOOR_MAX {
            return fail(format!(
                "shape_floor is {}, above SHAPE_FLOOR_MAX ({SHAPE_FLOOR_MAX}); use 0 to turn shape velocity off",
                self.shape_floor
            ));
        }
        if self.trip_cooldown_ms > TRIP_COOLDOWN_MS_MAX {
            return fail(format!(
                "trip_cooldown_ms is {}, above TRIP_COOLDOWN_MS_MAX ({TRIP_COOLDOWN_MS_MAX})",
                self.trip_cooldown_ms
            ));
        }
        self.quotas.validate()
    }
}

impl Amounts {
    /// True if any dimension of `self` exceeds `other`.
    pub(super) fn exceeds(&self, other: &Amounts) -> bool {
        self.tokens > other.tokens
            || self.cost_micros > other.cost_micros
            || self.calls > other.calls
    }
}
