//! Translation between the wire format (`tollgate_proto::v1`) and the ledger's own types.
//! Input is validated here, before it can reach the log; errors say which field is wrong.

use tollgate_proto::v1 as pb;
use tonic::Status;

use crate::raft::proposer::AppliedOutcome;
use tollgate_ledger::{
    AgentId, Amounts, ApiKey, Command, DenyReason, Dimension, ExpiryPolicy, KeyId, LeaseCall,
    LeaseRefusal, LeaseTerms, LimitId, LimitKind, LimitSpec, LimitUsage, ModelId, Price,
    PriceEntry, RequestId, ReservationId, ReservationView, Role, Scope, SessionId, TenantId,
    TenantPolicy, TenantQuotas, Thresholds, ToolId, TripCause, Usage, Window, KEY_AGENTS_MAX,
    LEASE_SETTLE_CALLS_MAX, LEASE_TTL_MS_DEFAULT, PER_TOKENS_DEFAULT,
};

pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

pub fn tenant(value: &str) -> Result<TenantId, Status> {
    TenantId::new(value).map_err(|e| invalid(format!("tenant: {e}")))
}

pub fn agent(value: &str) -> Result<AgentId, Status> {
    AgentId::new(value).map_err(|e| invalid(format!("agent: {e}")))
}

/// An empty string means "none" for optional agent fields.
pub fn optional_agent(value: &str) -> Result<Option<AgentId>, Status> {
    if value.is_empty() {
        Ok(None)
    } else {
        agent(value).map(Some)
    }
}

pub fn tool(value: &str) -> Result<ToolId, Status> {
    ToolId::new(value).map_err(|e| invalid(format!("tool: {e}")))
}

pub fn optional_tool(value: &str) -> Result<Option<ToolId>, Status> {
    if value.is_empty() {
        Ok(None)
    } else {
        tool(value).map(Some)
    }
}

/// A session name; empty means the call belongs to no session.
pub fn optional_session(value: &str) -> Result<Option<SessionId>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    SessionId::new(value)
        .map(Some)
        .map_err(|e| invalid(format!("session: {e}")))
}

pub fn request_id(value: &str) -> Result<RequestId, Status> {
    RequestId::new(value).map_err(|e| invalid(format!("request_id: {e}")))
}

pub fn limit_id(value: &str) -> Result<LimitId, Status> {
    LimitId::new(value).map_err(|e| invalid(format!("limit id: {e}")))
}

pub fn amounts(value: Option<pb::Amounts>, what: &str) -> Result<Amounts, Status> {
    let value = value.ok_or_else(|| invalid(format!("{what} is missing")))?;
    let amounts = Amounts {
        tokens: value.tokens,
        cost_micros: value.cost_micros,
        // Every call is one call unless it says otherwise, whichever language sent it.
        calls: value.calls.unwrap_or(1),
    };
    amounts.validate(what).map_err(|e| invalid(e.0))?;
    Ok(amounts)
}

pub fn amounts_to_pb(value: &Amounts) -> pb::Amounts {
    pb::Amounts {
        tokens: value.tokens,
        cost_micros: value.cost_micros,
        calls: Some(value.calls),
    }
}

pub fn key_id(value: &str) -> Result<KeyId, Status> {
    KeyId::new(value).map_err(|e| invalid(format!("key_id: {e}")))
}

pub fn role(value: i32) -> Result<Role, Status> {
    match pb::KeyRole::try_from(value) {
        Ok(pb::KeyRole::Admin) => Ok(Role::Admin),
        Ok(pb::KeyRole::TenantAdmin) => Ok(Role::TenantAdmin),
        Ok(pb::KeyRole::Worker) => Ok(Role::Worker),
        _ => Err(invalid("role: expected admin, tenant-admin or worker")),
    }
}

pub fn role_to_pb(role: Role) -> pb::KeyRole {
    match role {
        Role::Admin => pb::KeyRole::Admin,
        Role::TenantAdmin => pb::KeyRole::TenantAdmin,
        Role::Worker => pb::KeyRole::Worker,
    }
}

/// A worker key's agents, sorted and without duplicates, at most `KEY_AGENTS_MAX`.
pub fn key_agents(values: &[String]) -> Result<Vec<AgentId>, Status> {
    if values.len() > KEY_AGENTS_MAX {
        return Err(invalid(format!(
            "agents: {} given, more than KEY_AGENTS_MAX ({KEY_AGENTS_MAX})",
            values.len()
        )));
    }
    let mut agents = values
        .iter()
        .map(|value| agent(value))
        .collect::<Result<Vec<_>, _>>()?;
    agents.sort_unstable();
    agents.dedup();
    Ok(agents)
}

/// A key as listed: everything but its digest, which never leaves the ledger.
pub fn key_to_pb(key: &ApiKey) -> pb::Key {
    pb::Key {
        key_id: key.id.to_string(),
        tenant: key
            .tenant
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        role: role_to_pb(key.role).into(),
        agents: key.agents.iter().map(ToString::to_string).collect(),
        name: key.name.clone(),
        created_at_ms: key.created_at_ms,
        rotated_at_ms: key.rotated_at_ms,
        revoked_at_ms: key.revoked_at_ms,
    }
}

pub fn applied(value: &AppliedOutcome) -> pb::Applied {
    pb::Applied {
        log_index: value.log_index,
        term: value.term,
        at_ms: value.at_ms,
    }
}

/// The answer to an admin command: where it was applied.
pub fn admin_response(value: &AppliedOutcome) -> pb::AdminResponse {
    pb::AdminResponse {
        applied: Some(applied(value)),
    }
}

pub fn dimension(value: i32) -> Result<Dimension, Status> {
    match pb::Dimension::try_from(value) {
        Ok(pb::Dimension::Tokens) => Ok(Dimension::Tokens),
        Ok(pb::Dimension::Cost) => Ok(Dimension::Cost),
        Ok(pb::Dimension::Calls) => Ok(Dimension::Calls),
        Ok(pb::Dimension::Concurrency) => Ok(Dimension::Concurrency),
        Ok(pb::Dimension::Unspecified) | Err(_) => Err(invalid(format!(
            "dimension {value} is not one of tokens, cost, calls, concurrency"
        ))),
    }
}

pub fn dimension_to_pb(value: Dimension) -> i32 {
    match value {
        Dimension::Tokens => pb::Dimension::Tokens,
        Dimension::Cost => pb::Dimension::Cost,
        Dimension::Calls => pb::Dimension::Calls,
        Dimension::Concurrency => pb::Dimension::Concurrency,
    }
    .into()
}

fn window(value: i32) -> Result<Window, Status> {
    match pb::Window::try_from(value) {
        Ok(pb::Window::Lifetime) => Ok(Window::Lifetime),
        Ok(pb::Window::Hour) => Ok(Window::Hour),
        Ok(pb::Window::Day) => Ok(Window::Day),
        Ok(pb::Window::Week) => Ok(Window::Week),
        Ok(pb::Window::Month) => Ok(Window::Month),
        Ok(pb::Window::Unspecified) | Err(_) => Err(invalid(format!(
            "window {value} is not one of lifetime, hour, day, week, month"
        ))),
    }
}

fn window_to_pb(value: Window) -> i32 {
    match value {
        Window::Lifetime => pb::Window::Lifetime,
        Window::Hour => pb::Window::Hour,
        Window::Day => pb::Window::Day,
        Window::Week => pb::Window::Week,
        Window::Month => pb::Window::Month,
    }
    .into()
}

pub fn scope(value: Option<pb::Scope>) -> Result<Scope, Status> {
    use pb::scope::Scope as S;
    match value.and_then(|scope| scope.scope) {
        Some(S::Tenant(_)) => Ok(Scope::Tenant),
        Some(S::EachAgent(_)) => Ok(Scope::EachAgent),
        Some(S::Agent(name)) => Ok(Scope::Agent(agent(&name)?)),
        Some(S::ToolPerAgent(name)) => Ok(Scope::ToolPerAgent(tool(&name)?)),
        Some(S::ToolTenant(name)) => Ok(Scope::ToolTenant(tool(&name)?)),
        Some(S::EachSession(_)) => Ok(Scope::EachSession),
        None => Err(invalid("limit scope is missing")),
    }
}

pub fn scope_to_pb(value: &Scope) -> pb::Scope {
    use pb::scope::Scope as S;
    let scope = match value {
        Scope::Tenant => S::Tenant(pb::Empty {}),
        Scope::EachAgent => S::EachAgent(pb::Empty {}),
        Scope::Agent(name) => S::Agent(name.to_string()),
        Scope::ToolPerAgent(name) => S::ToolPerAgent(name.to_string()),
        Scope::ToolTenant(name) => S::ToolTenant(name.to_string()),
        Scope::EachSession => S::EachSession(pb::Empty {}),
    };
    pb::Scope { scope: Some(scope) }
}

pub fn limit(value: Option<pb::Limit>) -> Result<LimitSpec, Status> {
    use pb::limit::Kind;
    let value = value.ok_or_else(|| invalid("limit is missing"))?;
    let kind = match value.kind {
        Some(Kind::Budget(budget)) => LimitKind::Budget {
            window: window(budget.window)?,
            amount: budget.amount,
        },
        Some(Kind::Rate(rate)) => LimitKind::Rate {
            amount: rate.amount,
            period_ms: rate.period_ms,
            burst: rate.burst,
        },
        Some(Kind::Concurrency(concurrency)) => LimitKind::Concurrency {
            max: concurrency.max,
        },
        Some(Kind::Duration(duration)) => LimitKind::Duration { ms: duration.ms },
        None => {
            return Err(invalid(
                "limit kind (budget, rate, concurrency or duration) is missing",
            ))
        }
    };
    Ok(LimitSpec {
        id: limit_id(&value.id)?,
        scope: scope(value.scope)?,
        dimension: dimension(value.dimension)?,
        kind,
        thresholds: match value.thresholds {
            None => Thresholds::default(),
            Some(t) => Thresholds::new(t.percent).map_err(|e| invalid(e.0))?,
        },
    })
}

pub fn limit_to_pb(value: &LimitSpec) -> pb::Limit {
    use pb::limit::Kind;
    let kind = match value.kind {
        LimitKind::Budget { window, amount } => Kind::Budget(pb::Budget {
            window: window_to_pb(window),
            amount,
        }),
        LimitKind::Rate {
            amount,
            period_ms,
            burst,
        } => Kind::Rate(pb::Rate {
            amount,
            period_ms,
            burst,
        }),
        LimitKind::Concurrency { max } => Kind::Concurrency(pb::Concurrency { max }),
        LimitKind::Duration { ms } => Kind::Duration(pb::Duration { ms }),
    };
    pb::Limit {
        id: value.id.to_string(),
        scope: Some(scope_to_pb(&value.scope)),
        dimension: dimension_to_pb(value.dimension),
        kind: Some(kind),
        thresholds: Some(pb::AlertThresholds {
            percent: value
                .thresholds
                .percents()
                .iter()
                .map(|&p| u32::from(p))
                .collect(),
        }),
    }
}

pub fn policy(value: Option<pb::TenantPolicy>) -> Result<TenantPolicy, Status> {
    let Some(value) = value else {
        return Ok(TenantPolicy::default());
    };
    let expiry = match pb::ExpiryPolicy::try_from(value.expiry) {
        Ok(pb::ExpiryPolicy::Unspecified | pb::ExpiryPolicy::Charge) => ExpiryPolicy::Charge,
        Ok(pb::ExpiryPolicy::Release) => ExpiryPolicy::Release,
        Err(_) => {
            return Err(invalid(format!(
                "expiry policy {} is unknown",
                value.expiry
            )))
        }
    };
    let velocity_dimension = if value.velocity_dimension == 0 {
        TenantPolicy::default().velocity_dimension
    } else {
        dimension(value.velocity_dimension)?
    };
    Ok(TenantPolicy {
        expiry,
        repeat_max: value.repeat_max,
        repeat_window_ms: value.repeat_window_ms,
        velocity_factor: value.velocity_factor,
        velocity_window_ms: value.velocity_window_ms,
        velocity_dimension,
        velocity_floor: value.velocity_floor,
        shape_floor: value.shape_floor,
        trip_cooldown_ms: value.trip_cooldown_ms,
        quotas: quotas(value.quotas),
        leases: value.leases,
    })
}

/// Quotas from the wire: each 0 (or all, absent) is the default; bounds are checked by
/// `TenantPolicy::validate` before the command is proposed.
pub fn quotas(value: Option<pb::TenantQuotas>) -> TenantQuotas {
    let defaults = TenantQuotas::default();
    let Some(value) = value else {
        return defaults;
    };
    let or = |wire: u64, default: u64| if wire == 0 { default } else { wire };
    TenantQuotas {
        agents: or(value.agents, defaults.agents),
        tools: or(value.tools, defaults.tools),
        limits: or(value.limits, defaults.limits),
        keys: or(value.keys, defaults.keys),
        reservations_in_flight: or(
            value.reservations_in_flight,
            defaults.reservations_in_flight,
        ),
        answers: or(value.answers, defaults.answers),
        proposals_queued: or(value.proposals_queued, defaults.proposals_queued),
        sessions: or(value.sessions, defaults.sessions),
    }
}

pub fn quotas_to_pb(value: &TenantQuotas) -> pb::TenantQuotas {
    pb::TenantQuotas {
        agents: value.agents,
        tools: value.tools,
        limits: value.limits,
        keys: value.keys,
        reservations_in_flight: value.reservations_in_flight,
        answers: value.answers,
        proposals_queued: value.proposals_queued,
        sessions: value.sessions,
    }
}

pub fn policy_to_pb(value: &TenantPolicy) -> pb::TenantPolicy {
    let expiry = match value.expiry {
        ExpiryPolicy::Charge => pb::ExpiryPolicy::Charge,
        ExpiryPolicy::Release => pb::ExpiryPolicy::Release,
    };
    pb::TenantPolicy {
        expiry: expiry.into(),
        repeat_max: value.repeat_max,
        repeat_window_ms: value.repeat_window_ms,
        velocity_factor: value.velocity_factor,
        velocity_window_ms: value.velocity_window_ms,
        velocity_dimension: dimension_to_pb(value.velocity_dimension),
        velocity_floor: value.velocity_floor,
        trip_cooldown_ms: value.trip_cooldown_ms,
        quotas: Some(quotas_to_pb(&value.quotas)),
        shape_floor: value.shape_floor,
        leases: value.leases,
    }
}

pub fn trip_cause_to_pb(value: &TripCause) -> pb::TripCause {
    use pb::trip_cause::Cause;
    let cause = match value {
        TripCause::Repetition { fingerprint, count } => Cause::Repetition(pb::Repetition {
            fingerprint: fingerprint.clone(),
            count: *count,
        }),
        TripCause::Velocity { spent, baseline } => Cause::Velocity(pb::Velocity {
            spent: *spent,
            baseline: *baseline,
        }),
        TripCause::ShapeVelocity {
            shape,
            calls,
            baseline,
        } => Cause::ShapeVelocity(pb::ShapeVelocity {
            shape: shape.clone(),
            calls: *calls,
            baseline: *baseline,
        }),
    };
    pb::TripCause { cause: Some(cause) }
}

pub fn denial_to_pb(value: &DenyReason) -> pb::reserve_response::Decision {
    use pb::reserve_response::Decision;
    match value {
        DenyReason::Limit {
            limit_id,
            scope,
            dimension,
            remaining,
            retry_after_ms,
        } => Decision::Denied(pb::DeniedByLimit {
            limit_id: limit_id.to_string(),
            scope: Some(scope_to_pb(scope)),
            dimension: dimension_to_pb(*dimension),
            remaining: *remaining,
            retry_after_ms: *retry_after_ms,
        }),
        DenyReason::Frozen { agent } => Decision::Frozen(pb::Frozen {
            agent: agent.as_ref().map(ToString::to_string).unwrap_or_default(),
        }),
        DenyReason::Tripped { cause, until_ms } => Decision::Tripped(pb::Tripped {
            cause: Some(trip_cause_to_pb(cause)),
            until_ms: *until_ms,
        }),
    }
}

pub fn usage_to_pb(value: &LimitUsage) -> pb::LimitUsage {
    pb::LimitUsage {
        limit: Some(limit_to_pb(&value.limit)),
        agent: value
            .agent
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        used: value.used,
        held: value.held,
        remaining: value.remaining,
        window_start_ms: value.window_start_ms,
        alerted_percent: u32::from(value.alerted_percent),
    }
}

pub fn reservation_to_pb(value: &ReservationView) -> pb::Reservation {
    pb::Reservation {
        reservation_id: value.reservation_id.0,
        tenant: value.tenant.to_string(),
        agent: value.agent.to_string(),
        tool: value.tool.to_string(),
        estimate: Some(amounts_to_pb(&value.estimate)),
        granted_at_ms: value.granted_at_ms,
        expires_at_ms: value.expires_at_ms,
    }
}

pub fn model(value: &str) -> Result<ModelId, Status> {
    ModelId::new(value).map_err(|e| invalid(format!("model: {e}")))
}

/// Usage from the wire; absent is None.
pub fn usage(value: Option<pb::Usage>) -> Result<Option<Usage>, Status> {
    let Some(value) = value else {
        return Ok(None);
    };
    let usage = Usage {
        model: model(&value.model).map_err(|e| invalid(format!("usage.{}", e.message())))?,
        input_tokens: value.input_tokens,
        output_tokens: value.output_tokens,
        cached_input_tokens: value.cached_input_tokens,
    };
    usage.validate().map_err(|e| invalid(e.0))?;
    Ok(Some(usage))
}

/// What a commit or record spent: its amounts, which may be absent when usage is given
/// (then one call, its tokens and cost derived from the usage).
pub fn spent(
    value: Option<pb::Amounts>,
    usage: &Option<Usage>,
    what: &str,
) -> Result<Amounts, Status> {
    match (value, usage) {
        (None, Some(_)) => Ok(Amounts {
            calls: 1,
            ..Amounts::default()
        }),
        (value, _) => amounts(value, what),
    }
}

/// A price entry from the wire: its model and price (per_tokens 0 means the default).
pub fn price(value: Option<pb::Price>) -> Result<(ModelId, Price), Status> {
    let value = value.ok_or_else(|| invalid("price is missing"))?;
    let price = Price {
        input_micros: value.input_micros,
        output_micros: value.output_micros,
        cached_input_micros: value.cached_input_micros.unwrap_or(value.input_micros),
        per_tokens: match value.per_tokens {
            0 => PER_TOKENS_DEFAULT,
            per => per,
        },
    };
    price.validate().map_err(|e| invalid(e.0))?;
    Ok((model(&value.model)?, price))
}

pub fn price_to_pb(entry: &PriceEntry) -> pb::Price {
    pb::Price {
        model: entry.model.to_string(),
        input_micros: entry.price.input_micros,
        output_micros: entry.price.output_micros,
        cached_input_micros: Some(entry.price.cached_input_micros),
        per_tokens: entry.price.per_tokens,
        version: entry.version,
    }
}

/// A slice's amounts (a lease's `want` or `floor`): `calls` absent is 0 here, since a slice
/// that says nothing about calls asks for none, unlike a single call's estimate.
pub fn slice(value: Option<pb::Amounts>, what: &str) -> Result<Amounts, Status> {
    let value = value.unwrap_or_default();
    let amounts = Amounts {
        tokens: value.tokens,
        cost_micros: value.cost_micros,
        calls: value.calls.unwrap_or(0),
    };
    amounts.validate(what).map_err(|e| invalid(e.0))?;
    Ok(amounts)
}

/// Whether `a` is at most `b` in every dimension.
fn within(a: &Amounts, b: &Amounts) -> bool {
    a.tokens <= b.tokens && a.cost_micros <= b.cost_micros && a.calls <= b.calls
}

/// A lease ask. It must ask for something, and its floor must fit in what it asks for: a
/// floor above the want could never be granted.
pub fn lease(request: pb::LeaseRequest) -> Result<Command, Status> {
    let want = slice(request.want, "want")?;
    let floor = slice(request.floor, "floor")?;
    if want == Amounts::default() && request.units == 0 {
        return Err(invalid(
            "want is zero and units is 0: a lease asks for a slice or concurrency slots",
        ));
    }
    if !within(&floor, &want) {
        return Err(invalid(format!(
            "floor {floor:?} is above want {want:?} in some dimension: it could never be granted"
        )));
    }
    Ok(Command::Lease {
        request_id: request_id(&request.request_id)?,
        tenant: tenant(&request.tenant)?,
        agent: agent(&request.agent)?,
        tool: tool(&request.tool)?,
        want,
        units: request.units,
        floor,
        ttl_ms: request.ttl_ms,
    })
}

/// One call a lease's holder reports; `calls` absent is 1 in its estimate and actual, as
/// for a reserve or a record.
fn lease_call(index: usize, call: pb::LeaseCall) -> Result<LeaseCall, Status> {
    let field = |name: &str| format!("calls[{index}].{name}");
    let id = RequestId::new(&call.request_id)
        .map_err(|e| invalid(format!("{}: {e}", field("request_id"))))?;
    Ok(LeaseCall {
        request_id: id,
        estimate: amounts(call.estimate, &field("estimate"))?,
        actual: amounts(call.actual, &field("actual"))?,
        fingerprint: (!call.fingerprint.is_empty()).then_some(call.fingerprint),
        shape: (!call.shape.is_empty()).then_some(call.shape),
    })
}

/// A settle: at most `LEASE_SETTLE_CALLS_MAX` calls, counted before any is converted.
pub fn settle(request: pb::SettleRequest) -> Result<Command, Status> {
    if request.calls.len() > LEASE_SETTLE_CALLS_MAX {
        return Err(invalid(format!(
            "a settle reports {} calls; at most LEASE_SETTLE_CALLS_MAX ({LEASE_SETTLE_CALLS_MAX}): \
             settle more often; nothing was done",
            request.calls.len()
        )));
    }
    let calls = request
        .calls
        .into_iter()
        .enumerate()
        .map(|(index, call)| lease_call(index, call))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Command::Settle {
        request_id: request_id(&request.request_id)?,
        tenant: tenant(&request.tenant)?,
        lease_id: ReservationId(request.lease_id),
        calls,
        want: slice(request.want, "want")?,
        units: request.units,
        ttl_ms: request.ttl_ms,
    })
}

/// A lease as the wire tells it; `ttl_ms` is the one asked for (0: the default).
pub fn lease_terms_to_pb(terms: &LeaseTerms, ttl_ms: u64) -> pb::LeaseTerms {
    pb::LeaseTerms {
        lease_id: terms.lease_id.0,
        slice: Some(amounts_to_pb(&terms.slice)),
        units: terms.units,
        expires_at_ms: terms.expires_at_ms,
        ttl_ms: match ttl_ms {
            0 => LEASE_TTL_MS_DEFAULT,
            ttl_ms => ttl_ms,
        },
        repeat_max: terms.repeat_max,
        repeat_window_ms: terms.repeat_window_ms,
    }
}

pub fn lease_refusal_to_pb(refusal: LeaseRefusal) -> pb::LeaseRefusal {
    match refusal {
        LeaseRefusal::Off => pb::LeaseRefusal::Off,
        LeaseRefusal::Frozen => pb::LeaseRefusal::Frozen,
        LeaseRefusal::Tripped => pb::LeaseRefusal::Tripped,
        LeaseRefusal::Room => pb::LeaseRefusal::Room,
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;

    fn tokens(tokens: u64, calls: Option<u64>) -> Option<pb::Amounts> {
        Some(pb::Amounts {
            tokens,
            cost_micros: 0,
            calls,
        })
    }

    fn call(id: &str) -> pb::LeaseCall {
        pb::LeaseCall {
            request_id: id.into(),
            estimate: tokens(10, None),
            actual: tokens(7, None),
            ..Default::default()
        }
    }

    fn settle_request(calls: Vec<pb::LeaseCall>) -> pb::SettleRequest {
        pb::SettleRequest {
            request_id: "s-1".into(),
            tenant: "acme".into(),
            lease_id: 3,
            calls,
            ..Default::default()
        }
    }

    fn message(result: Result<Command, Status>) -> String {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        status.message().to_owned()
    }

    /// A slice without calls asks for none; a call without calls is one call.
    #[test]
    fn calls_absent_are_none_in_a_slice_and_one_in_a_call() {
        let request = pb::LeaseRequest {
            request_id: "l-1".into(),
            tenant: "acme".into(),
            agent: "bot".into(),
            tool: "llm".into(),
            want: tokens(800, None),
            floor: tokens(100, None),
            units: 4,
            ttl_ms: 0,
        };
        let Command::Lease { want, floor, .. } = lease(request).unwrap() else {
            panic!("a lease");
        };
        assert_eq!((want.calls, floor.calls), (0, 0));
        let Command::Settle { calls, want, .. } =
            settle(settle_request(vec![call("c-1")])).unwrap()
        else {
            panic!("a settle");
        };
        assert_eq!((calls[0].estimate.calls, calls[0].actual.calls), (1, 1));
        assert_eq!(calls[0].actual.tokens, 7);
        assert_eq!(calls[0].fingerprint, None);
        assert_eq!(want, Amounts::default());
    }

    #[test]
    fn a_lease_that_asks_for_nothing_or_a_floor_above_its_want_is_refused() {
        let mut request = pb::LeaseRequest {
            request_id: "l-1".into(),
            tenant: "acme".into(),
            agent: "bot".into(),
            tool: "llm".into(),
            ..Default::default()
        };
        assert!(message(lease(request.clone())).contains("asks for a slice"));
        request.want = tokens(100, None);
        request.floor = tokens(101, None);
        assert!(message(lease(request)).contains("floor"));
    }

    #[test]
    fn a_settle_past_the_calls_bound_or_with_a_bad_call_names_it() {
        let calls = vec![call("c"); LEASE_SETTLE_CALLS_MAX + 1];
        assert!(message(settle(settle_request(calls))).contains("LEASE_SETTLE_CALLS_MAX"));
        let mut bad = call("c-2");
        bad.actual = None;
        let text = message(settle(settle_request(vec![call("c-1"), bad])));
        assert!(text.contains("calls[1].actual"), "{text}");
        let mut bad = call("");
        bad.fingerprint = "f".into();
        let text = message(settle(settle_request(vec![bad])));
        assert!(text.contains("calls[0].request_id"), "{text}");
    }
}
