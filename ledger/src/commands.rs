//! What each command does to the ledger: reserve, commit, release, record, expire, admin.
//!
//! Every function checks everything that can reject before it changes anything, so a
//! `Rejected` outcome leaves the state as it was. Every decision appends an audit record.

use smallvec::SmallVec;

use super::alerts::Crossings;
use super::audit::{AuditEvent, Fact};
use super::limits::{self, is_per_agent, AgentCounter, Counter, Verdict};
use super::runaway;
use super::state::{Agent, Reservation, ReservationKey, Tenant, Tombstone};
use super::{
    AgentId, Amounts, Bound, Command, DenyReason, ExpiryPolicy, Ledger, LimitId, LimitKind,
    LimitSpec, Outcome, PriceRef, Rejection, Remaining, RequestId, ReservationId, Scope, SessionId,
    TenantId, TenantPolicy, ToolId, Usage,
};
use crate::sessions::Session;
use std::collections::BTreeMap;

/// Most tenants the ledger holds.
pub const TENANTS_MAX: usize = 100_000;
/// Most agents over all tenants. Agents are created on first use and removed only a day
/// after their last (`AGENT_IDLE_MS`), so this bounds the memory a stream of new agent names can take (~200 bytes each).
pub const AGENTS_MAX: usize = 2_000_000;
/// Most agents in one tenant, so one tenant cannot take every agent slot.
pub const AGENTS_PER_TENANT_MAX: usize = 1_000_000;
/// Most reservations in flight over all tenants.
pub const RESERVATIONS_IN_FLIGHT_MAX: usize = 1_000_000;
/// Most reservations in flight in one tenant.
pub const RESERVATIONS_IN_FLIGHT_PER_TENANT_MAX: usize = 100_000;
/// How long an expired reservation is remembered for a late commit: one hour, the longest
/// TTL. A commit later than that is rejected NOT_FOUND; the expiry charge stands.
pub const EXPIRED_RETENTION_MS: u64 = 3_600_000;
/// Most expired reservations remembered; beyond it the oldest is forgotten first.
pub const EXPIRED_TOMBSTONES_MAX: usize = 1_000_000;

pub(super) fn rejected(rejection: Rejection) -> Outcome {
    Outcome::Rejected(rejection)
}

pub(super) fn unknown_tenant(tenant: &TenantId) -> Outcome {
    rejected(Rejection::UnknownTenant {
        tenant: tenant.clone(),
    })
}

fn unknown_agent(tenant: &TenantId, agent: &AgentId) -> Outcome {
    rejected(Rejection::UnknownAgent {
        tenant: tenant.clone(),
        agent: agent.clone(),
    })
}

pub(super) fn bound_reached(bound: Bound, tenant: &TenantId) -> Outcome {
    rejected(Rejection::bound_reached(bound, tenant))
}

/// Checks the agent bounds before a new agent of `tenant` is created: the ledger's, then
/// the tenant's quota. Neither evicts anything: the new agent is refused.
pub(super) fn agent_room(agents_total: usize, tenant: &Tenant) -> Option<Outcome> {
    if agents_total >= AGENTS_MAX {
        return Some(bound_reached(Bound::Agents, &tenant.id));
    }
    let quota = tenant.policy.quotas.agents;
    if tenant.agents.len() as u64 >= quota {
        return Some(rejected(Rejection::quota_reached(
            Bound::AgentsPerTenant,
            quota,
            &tenant.id,
        )));
    }
    None
}

/// Checks the tenant's quota of limits before `spec` is added as a new limit (`replacing`
/// None) and, either way, its quota of distinct tools named by limits.
fn limit_room(tenant: &Tenant, spec: &LimitSpec, replacing: Option<usize>) -> Option<Outcome> {
    let quotas = &tenant.policy.quotas;
    if replacing.is_none() && tenant.limits.len() as u64 >= quotas.limits {
        return Some(rejected(Rejection::quota_reached(
            Bound::LimitsPerTenant,
            quotas.limits,
            &tenant.id,
        )));
    }
    let tool_of = |scope: &Scope| match scope {
        Scope::ToolPerAgent(tool) | Scope::ToolTenant(tool) => Some(tool.clone()),
        _ => None,
    };
    let new_tool = tool_of(&spec.scope)?;
    let mut tools: SmallVec<[ToolId; 8]> = (0..tenant.limits.len())
        .filter(|&i| Some(i) != replacing)
        .filter_map(|i| tool_of(&tenant.limits[i].spec.scope))
        .collect();
    tools.sort_unstable();
    tools.dedup();
    if tools.contains(&new_tool) || (tools.len() as u64) < quotas.tools {
        return None;
    }
    Some(rejected(Rejection::quota_reached(
        Bound::ToolsPerTenant,
        quotas.tools,
        &tenant.id,
    )))
}

/// The fields of a `Reserve` command.
pub(super) struct ReserveRequest<'a> {
    pub request_id: &'a RequestId,
    pub tenant: &'a TenantId,
    pub agent: &'a AgentId,
    pub tool: &'a ToolId,
    pub estimate: &'a Amounts,
    pub ttl_ms: u64,
    pub fingerprint: Option<&'a str>,
    pub session: Option<&'a SessionId>,
    pub shape: Option<&'a str>,
}

impl<'a> ReserveRequest<'a> {
    fn fact(&self, event: AuditEvent) -> Fact<'a> {
        Fact {
            tenant: Some(self.tenant),
            agent: Some(self.agent),
            tool: Some(self.tool),
            request_id: Some(self.request_id),
            reservation_id: None,
            event,
            amounts: *self.estimate,
        }
    }
}

/// Ranks the limits that would not hold, to name one in the denial: a budget or
/// concurrency limit (waiting will not help) before any rate, the first in limit-id order;
/// among rates, the one with the longest wait (never, if larger than its burst).
fn worse_denial(candidate: (bool, &Verdict), current: (bool, &Verdict)) -> bool {
    let (candidate_is_rate, candidate) = candidate;
    let (current_is_rate, current) = current;
    match (candidate_is_rate, current_is_rate) {
        (_, false) => false,
        (false, true) => true,
        (true, true) => {
            candidate.retry_after_ms.unwrap_or(u64::MAX)
                > current.retry_after_ms.unwrap_or(u64::MAX)
        }
    }
}

/// The session a call counts in: the one it names, if its tenant counts sessions.
fn session_mut<'t>(
    sessions: &'t mut BTreeMap<SessionId, Session>,
    session: Option<&SessionId>,
) -> Option<&'t mut Session> {
    sessions.get_mut(session?)
}

/// Applies `f` to the counter of each limit the reservation still holds (limits deleted
/// or reset since are skipped: their counters started afresh without this hold).
pub(super) fn for_each_hold(
    tenant: &mut Tenant,
    (agent, session): (u32, Option<&SessionId>),
    holds: &[u64],
    mut f: impl FnMut(&LimitSpec, &mut Counter),
) {
    let Tenant {
        limits,
        agents,
        sessions,
        ..
    } = tenant;
    let mut agent = agents.get_mut(agent);
    let mut session = session_mut(sessions, session);
    for &generation in holds {
        let Some(entry) = limits.iter_mut().find(|l| l.generation == generation) else {
            continue;
        };
        if entry.spec.scope == Scope::EachSession {
            let counter = session.as_deref_mut().and_then(|s| {
                let index = s.counters.iter().position(|c| c.generation == generation)?;
                Some(&mut s.counters[index].counter)
            });
            if let Some(counter) = counter {
                f(&entry.spec, counter);
            }
        } else if is_per_agent(&entry.spec.scope) {
            let Some(agent) = agent.as_deref_mut() else {
                continue;
            };
            let Some(index) = agent.counter_index(generation) else {
                continue;
            };
            f(&entry.spec, &mut agent.counters[index].counter);
        } else {
            f(&entry.spec, &mut entry.counter);
        }
    }
}

/// Applies `f` to the counter of every limit that applies to (agent, tool), creating the
/// agent's counters as needed (records, which are charged without a hold).
fn for_each_applicable(
    tenant: &mut Tenant,
    (agent_index, agent_id): (u32, &AgentId),
    (tool, session): (&ToolId, Option<&SessionId>),
    mut f: impl FnMut(&LimitSpec, &mut Counter),
) {
    let Tenant {
        limits,
        agents,
        sessions,
        ..
    } = tenant;
    let Some(agent) = agents.get_mut(agent_index) else {
        return;
    };
    let session = session_mut(sessions, session);
    let applicable = limits::applicable(limits, agent_id, Some(tool), session.is_some());
    for_each_counter(limits, (agent, session), &applicable, |spec, _, counter| {
        f(spec, counter)
    });
}

/// Applies `f` to the counter of every limit in `applicable` for a call of `agent` in
/// `session`: the tenant's, the agent's or the session's, created on first use (an
/// `EachSession` limit is skipped for a call in no session).
pub(super) fn for_each_counter(
    limits: &mut [limits::LimitEntry],
    (agent, mut session): (&mut Agent, Option<&mut Session>),
    applicable: &limits::Applicable,
    mut f: impl FnMut(&LimitSpec, u64, &mut Counter),
) {
    make_counter_room(agent, limits, applicable);
    if let Some(session) = session.as_deref_mut() {
        session.forget_stale_counters(limits);
    }
    for index in applicable.iter() {
        let limits::LimitEntry {
            spec,
            generation,
            counter: tenant_counter,
        } = &mut limits[index];
        let counter = if spec.scope == Scope::EachSession {
            match session.as_deref_mut() {
                Some(session) => session.counter_mut(*generation, spec),
                None => continue,
            }
        } else if is_per_agent(&spec.scope) {
            agent_counter(agent, *generation, spec)
        } else {
            tenant_counter
        };
        f(spec, *generation, counter);
    }
}

/// Before new per-agent counters are pushed: drops counters of limits no longer in force
/// and reserves exactly the room needed, so an agent's counters stay a tight array.
fn make_counter_room(
    agent: &mut Agent,
    limits: &[limits::LimitEntry],
    applicable: &limits::Applicable,
) {
    let missing = applicable
        .iter()
        .filter(|&i| {
            is_per_agent(&limits[i].spec.scope)
                && agent.counter_index(limits[i].generation).is_none()
        })
        .count();
    if missing > 0 {
        agent
            .counters
            .retain(|c| limits.iter().any(|l| l.generation == c.generation));
        agent.counters.reserve_exact(missing);
    }
}

fn agent_counter<'a>(agent: &'a mut Agent, generation: u64, spec: &LimitSpec) -> &'a mut Counter {
    let index = match agent.counter_index(generation) {
        Some(index) => index,
        None => {
            agent.counters.push(AgentCounter {
                generation,
                counter: Counter::fresh(&spec.kind),
            });
            agent.counters.len() - 1
        }
    };
    &mut agent.counters[index].counter
}

/// What a commit charges: the actual (its cost derived from usage, or the estimate of an
/// abandoned reservation), and where it came from, for the audit record.
pub(super) struct Settlement {
    actual: Amounts,
    abandoned: bool,
    price: Option<PriceRef>,
}

impl Settlement {
    fn event(&self, overrun: bool, late: bool) -> AuditEvent {
        AuditEvent::Commit {
            overrun,
            late,
            abandoned: self.abandoned,
            price: self.price.clone(),
        }
    }
}

/// How a reservation leaves flight: what its holds settle to and what its audit record
/// says. Commit, release and expiry all end a reservation through `end_in_flight`.
enum Ending<'a> {
    Commit {
        request_id: &'a RequestId,
        settled: &'a Settlement,
    },
    Release {
        request_id: &'a RequestId,
    },
    /// `charged`: the tenant's policy charges the estimate, else releases it.
    Expire {
        charged: bool,
    },
}

impl<'a> Ending<'a> {
    fn request_id(&self) -> Option<&'a RequestId> {
        match *self {
            Ending::Commit { request_id, .. } | Ending::Release { request_id } => Some(request_id),
            Ending::Expire { .. } => None,
        }
    }

    /// What the holds are charged: the actual, the estimate, or nothing.
    fn charge(&self, estimate: &Amounts) -> Option<Amounts> {
        match *self {
            Ending::Commit { settled, .. } => Some(settled.actual),
            Ending::Release { .. } | Ending::Expire { charged: false } => None,
            Ending::Expire { charged: true } => Some(*estimate),
        }
    }

    fn event(&self, estimate: &Amounts) -> AuditEvent {
        match *self {
            Ending::Commit { settled, .. } => {
                settled.event(settled.actual.exceeds(estimate), false)
            }
            Ending::Release { .. } => AuditEvent::Release,
            Ending::Expire { charged } => AuditEvent::Expire { charged },
        }
    }

    /// The amounts of the audit record: the actual for a commit, else the estimate.
    fn amounts(&self, estimate: &Amounts) -> Amounts {
        match *self {
            Ending::Commit { settled, .. } => settled.actual,
            Ending::Release { .. } | Ending::Expire { .. } => *estimate,
        }
    }
}

/// The tightest limit that holds for a reservation, or the denial by the worst one that
/// does not (`worse_denial`); changes nothing.
fn evaluate_limits(
    limits: &[limits::LimitEntry],
    (agent, session): (&Agent, Option<&Session>),
    applicable: &limits::Applicable,
    estimate: &Amounts,
    now_ms: u64,
) -> Result<Option<Remaining>, DenyReason> {
    let is_rate = |index: usize| matches!(limits[index].spec.kind, LimitKind::Rate { .. });
    let mut denial: Option<(usize, Verdict)> = None;
    let mut tightest: Option<(usize, i64)> = None;
    for index in applicable.iter() {
        let entry = &limits[index];
        let counter = if entry.spec.scope == Scope::EachSession {
            session.and_then(|s| s.counter(entry.generation))
        } else if is_per_agent(&entry.spec.scope) {
            agent
                .counter_index(entry.generation)
                .map(|i| &agent.counters[i].counter)
        } else {
            Some(&entry.counter)
        };
        let verdict = limits::evaluate(&entry.spec, counter, estimate, now_ms);
        if !verdict.fits {
            let replace = denial.as_ref().is_none_or(|(current, current_verdict)| {
                worse_denial(
                    (is_rate(index), &verdict),
                    (is_rate(*current), current_verdict),
                )
            });
            if replace {
                denial = Some((index, verdict));
            }
            continue;
        }
        let capacity = limits::capacity(&entry.spec.kind);
        let tighter = tightest.is_none_or(|(current, remaining)| {
            limits::tighter(
                (verdict.remaining_after, capacity),
                (remaining, limits::capacity(&limits[current].spec.kind)),
            )
        });
        if tighter {
            tightest = Some((index, verdict.remaining_after));
        }
    }
    if let Some((index, verdict)) = denial {
        let spec = &limits[index].spec;
        return Err(DenyReason::Limit {
            limit_id: spec.id.clone(),
            scope: spec.scope.clone(),
            dimension: spec.dimension,
            remaining: verdict.remaining_now,
            retry_after_ms: verdict.retry_after_ms,
        });
    }
    Ok(tightest.map(|(index, remaining)| limits::remaining_of(&limits[index].spec, remaining)))
}

impl Ledger {
    /// Executes a validated command whose request id is not remembered. `tenant` is the
    /// index of the command's tenant, None if it does not exist (yet).
    pub(super) fn execute(&mut self, now_ms: u64, cmd: &Command, tenant: Option<u32>) -> Outcome {
        match (cmd, tenant, cmd.tenant()) {
            (Command::Tick, _, _) => {
                self.collect_idle_agents(now_ms);
                self.forget_idle_sessions(now_ms);
                Outcome::Done
            }
            (Command::AlertsDelivered { up_to_seq }, _, _) => self.alerts_delivered(*up_to_seq),
            (
                Command::PutTenant {
                    request_id,
                    tenant: tenant_id,
                    policy,
                },
                _,
                _,
            ) => self.put_tenant(now_ms, request_id, tenant_id, tenant, policy),
            (
                Command::CreateKey { .. } | Command::RotateKey { .. } | Command::RevokeKey { .. },
                None,
                Some(tenant_id),
            ) => unknown_tenant(tenant_id),
            (
                Command::CreateKey { .. } | Command::RotateKey { .. } | Command::RevokeKey { .. },
                ..,
            ) => self.execute_key(now_ms, cmd),
            (_, Some(t), Some(tenant_id)) => self.execute_for_tenant(now_ms, cmd, (t, tenant_id)),
            // Every other command acts on an existing tenant.
            (_, _, tenant_id) => tenant_id.map_or(Outcome::Done, unknown_tenant),
        }
    }

    /// Executes a command on the existing tenant `t`.
    fn execute_for_tenant(
        &mut self,
        now_ms: u64,
        cmd: &Command,
        (t, tenant_id): (u32, &TenantId),
    ) -> Outcome {
        match cmd {
            Command::Reserve {
                request_id,
                tenant: _,
                agent,
                tool,
                estimate,
                ttl_ms,
                fingerprint,
                shape,
                usage,
                session,
            } => {
                let estimate = match self.priced(t, estimate, usage.as_ref()) {
                    Ok((estimate, _)) => estimate,
                    Err(rejection) => return rejected(rejection),
                };
                let request = ReserveRequest {
                    request_id,
                    tenant: tenant_id,
                    agent,
                    tool,
                    estimate: &estimate,
                    ttl_ms: *ttl_ms,
                    fingerprint: fingerprint.as_deref(),
                    session: session.as_ref(),
                    shape: shape.as_deref(),
                };
                self.reserve(now_ms, t, &request)
            }
            Command::Commit {
                request_id,
                reservation_id,
                actual,
                usage,
                abandoned,
                ..
            } => {
                let settled = match self.settlement(t, *reservation_id, actual, usage, *abandoned) {
                    Ok(settled) => settled,
                    Err(rejection) => return rejected(rejection),
                };
                self.commit(
                    now_ms,
                    request_id,
                    (t, tenant_id),
                    *reservation_id,
                    &settled,
                )
            }
            Command::Release {
                request_id,
                reservation_id,
                ..
            } => self.release(now_ms, request_id, t, *reservation_id),
            Command::Record { .. } => self.record_priced(now_ms, cmd, (t, tenant_id)),
            Command::Lease { .. } | Command::Settle { .. } => {
                self.execute_lease(now_ms, cmd, (t, tenant_id))
            }
            _ => self.execute_tenant_admin(now_ms, cmd, (t, tenant_id)),
        }
    }

    /// A Record, its cost derived from usage when it gives usage.
    fn record_priced(
        &mut self,
        now_ms: u64,
        cmd: &Command,
        (t, tenant_id): (u32, &TenantId),
    ) -> Outcome {
        let Command::Record {
            request_id,
            agent,
            tool,
            actual,
            usage,
            offline,
            session,
            ..
        } = cmd
        else {
            return Outcome::Done;
        };
        match self.priced(t, actual, usage.as_ref()) {
            Ok((actual, price)) => {
                let event = AuditEvent::Record {
                    price,
                    offline: *offline,
                };
                self.record(
                    now_ms,
                    request_id,
                    (t, tenant_id),
                    (agent, tool, session.as_ref()),
                    (actual, event),
                )
            }
            Err(rejection) => rejected(rejection),
        }
    }

    /// Executes an admin command on the existing tenant `t`.
    fn execute_tenant_admin(
        &mut self,
        now_ms: u64,
        cmd: &Command,
        (t, tenant_id): (u32, &TenantId),
    ) -> Outcome {
        match cmd {
            Command::PutPrice {
                request_id,
                model,
                price,
                ..
            } => self.put_price(now_ms, request_id, (t, tenant_id), model, price),
            Command::DeletePrice {
                request_id, model, ..
            } => self.delete_price(now_ms, request_id, (t, tenant_id), model),
            Command::PutLimit {
                request_id, limit, ..
            } => self.put_limit(now_ms, request_id, (t, tenant_id), limit),
            Command::DeleteLimit {
                request_id,
                limit_id,
                ..
            } => self.delete_limit(now_ms, request_id, (t, tenant_id), limit_id),
            Command::Freeze {
                request_id, agent, ..
            } => self.freeze(now_ms, request_id, (t, tenant_id), agent.as_ref(), true),
            Command::Unfreeze {
                request_id, agent, ..
            } => self.freeze(now_ms, request_id, (t, tenant_id), agent.as_ref(), false),
            Command::ResetTrip {
                request_id, agent, ..
            } => self.reset_trip(now_ms, request_id, (t, tenant_id), agent),
            Command::Reserve { .. }
            | Command::Commit { .. }
            | Command::Release { .. }
            | Command::Record { .. }
            | Command::PutTenant { .. }
            | Command::Tick
            | Command::AlertsDelivered { .. }
            | Command::CreateKey { .. }
            | Command::RotateKey { .. }
            | Command::RevokeKey { .. }
            | Command::Lease { .. }
            | Command::Settle { .. } => Outcome::Done,
        }
    }

    /// Executes a key command whose tenant, if it names one, exists.
    fn execute_key(&mut self, now_ms: u64, cmd: &Command) -> Outcome {
        match cmd {
            Command::CreateKey {
                request_id,
                tenant,
                key,
            } => self.create_key(now_ms, request_id, tenant.as_ref(), key),
            Command::RotateKey {
                request_id,
                tenant,
                key_id,
                digest,
            } => self.rotate_key(now_ms, request_id, tenant.as_ref(), (key_id, digest)),
            Command::RevokeKey {
                request_id,
                tenant,
                key_id,
            } => self.revoke_key(now_ms, request_id, tenant.as_ref(), key_id),
            _ => Outcome::Done,
        }
    }

    /// Admit (bounds, kill switch, runaway detection), evaluate the limits, hold.
    fn reserve(&mut self, now_ms: u64, t: u32, r: &ReserveRequest<'_>) -> Outcome {
        let agent_index = match self.admit(now_ms, t, r) {
            Ok(agent_index) => agent_index,
            Err(answer) => return answer,
        };
        let Some(tenant) = self.tenants.get(t) else {
            return unknown_tenant(r.tenant);
        };
        let Some(agent) = tenant.agents.get(agent_index) else {
            return unknown_agent(r.tenant, r.agent);
        };
        let session = r.session.and_then(|s| tenant.sessions.get(s));
        let applicable =
            limits::applicable(&tenant.limits, r.agent, Some(r.tool), session.is_some());
        let subject = (agent, session);
        match evaluate_limits(&tenant.limits, subject, &applicable, r.estimate, now_ms) {
            Ok(tightest) => self.hold(now_ms, (t, agent_index), &applicable, r, tightest),
            Err(reason) => {
                if let DenyReason::Limit { limit_id, .. } = &reason {
                    self.recall_leases_holding(t, agent_index, limit_id);
                }
                self.deny(now_ms, r, reason)
            }
        }
    }

    /// The checks before the limits: the ledger's bounds (a rejection), then the tenant's
    /// and the agent's freeze and runaway detection (denials, audited). Creates the agent on
    /// its first reserve. Ok: the agent's index; Err: the answer already decided.
    fn admit(&mut self, now_ms: u64, t: u32, r: &ReserveRequest<'_>) -> Result<u32, Outcome> {
        if let Some(rejected) = self.in_flight_room(t, r.tenant) {
            return Err(rejected);
        }
        let Some(tenant) = self.tenants.get_mut(t) else {
            return Err(unknown_tenant(r.tenant));
        };
        let existing = tenant.agents.find(r.agent.as_bytes());
        if existing.is_none() {
            if let Some(rejected) = agent_room(self.agents_total, tenant) {
                return Err(rejected);
            }
        }
        if let Some(rejected) = self.open_session(now_ms, t, r.session) {
            return Err(rejected);
        }
        let Some(tenant) = self.tenants.get_mut(t) else {
            return Err(unknown_tenant(r.tenant));
        };
        // From here on every path is a decision, recorded in the audit trail.
        if tenant.frozen {
            return Err(self.deny(now_ms, r, DenyReason::Frozen { agent: None }));
        }
        let agent_index = match existing {
            Some(index) => index,
            None => {
                self.agents_total += 1;
                tenant.agents.push(Agent::new(r.agent.clone(), now_ms))
            }
        };
        let Tenant { policy, agents, .. } = tenant;
        let Some(agent) = agents.get_mut(agent_index) else {
            return Err(unknown_agent(r.tenant, r.agent));
        };
        agent.last_used_ms = now_ms;
        if agent.frozen {
            let agent = Some(r.agent.clone());
            return Err(self.deny(now_ms, r, DenyReason::Frozen { agent }));
        }
        let call = runaway::Call {
            fingerprint: r.fingerprint,
            shape: r.shape,
            estimate: r.estimate,
        };
        if agent.runaway.is_some() || runaway::tracks(policy, &call) {
            let state = agent.runaway.get_or_insert_with(Default::default);
            if let runaway::Verdict::Tripped {
                cause,
                until_ms,
                new,
            } = state.check(policy, &call, now_ms)
            {
                if new {
                    self.audit
                        .append(now_ms, r.fact(AuditEvent::Trip(cause.clone())));
                    self.recall_leases(t, Some(agent_index));
                }
                return Err(self.deny(now_ms, r, DenyReason::Tripped { cause, until_ms }));
            }
        }
        Ok(agent_index)
    }

    /// The bounds on reservations in flight, a lease counting as one: the ledger's, then the
    /// tenant's quota. None: room for one more.
    pub(super) fn in_flight_room(&self, t: u32, tenant_id: &TenantId) -> Option<Outcome> {
        let Some(tenant) = self.tenants.get(t) else {
            return Some(unknown_tenant(tenant_id));
        };
        if self.reservations.len().saturating_add(self.leases.len()) >= RESERVATIONS_IN_FLIGHT_MAX {
            return Some(bound_reached(Bound::ReservationsInFlight, tenant_id));
        }
        let quota = tenant.policy.quotas.reservations_in_flight;
        if u64::from(tenant.in_flight) + u64::from(tenant.leases) >= quota {
            return Some(rejected(Rejection::quota_reached(
                Bound::ReservationsInFlightPerTenant,
                quota,
                tenant_id,
            )));
        }
        None
    }

    /// Granted: holds the estimate against every applicable limit and puts the reservation
    /// in flight.
    fn hold(
        &mut self,
        now_ms: u64,
        (t, agent_index): (u32, u32),
        applicable: &limits::Applicable,
        r: &ReserveRequest<'_>,
        tightest: Option<Remaining>,
    ) -> Outcome {
        let Some(tenant) = self.tenants.get_mut(t) else {
            return unknown_tenant(r.tenant);
        };
        let Tenant {
            policy,
            limits,
            agents,
            in_flight,
            reservations_issued,
            sessions,
            ..
        } = tenant;
        let Some(agent) = agents.get_mut(agent_index) else {
            return unknown_agent(r.tenant, r.agent);
        };
        let session = session_mut(sessions, r.session);
        let in_session = session.is_some();
        let mut holds = SmallVec::new();
        for_each_counter(
            limits,
            (agent, session),
            applicable,
            |spec, generation, counter| {
                limits::hold(spec, counter, r.estimate, now_ms);
                holds.push(generation);
            },
        );
        if let Some(state) = agent.runaway.as_deref_mut() {
            state.note_spend(policy, r.estimate, now_ms);
        }
        agent.refs = agent.refs.saturating_add(1);
        *reservations_issued = reservations_issued.saturating_add(1);
        let id = *reservations_issued;
        let expires_at_ms = now_ms.saturating_add(r.ttl_ms);
        *in_flight = in_flight.saturating_add(1);
        self.in_flight.insert((t, id));
        self.by_expiry.insert((expires_at_ms, (t, id)));
        self.reservations.insert(
            (t, id),
            Reservation {
                tenant: t,
                agent: agent_index,
                tool: r.tool.clone(),
                estimate: *r.estimate,
                granted_at_ms: now_ms,
                expires_at_ms,
                holds,
                session: in_session.then(|| r.session.cloned()).flatten(),
            },
        );
        let reservation_id = ReservationId(id);
        let mut fact = r.fact(AuditEvent::Grant);
        fact.reservation_id = Some(reservation_id);
        self.audit.append(now_ms, fact);
        Outcome::Granted {
            reservation_id,
            expires_at_ms,
            tightest,
        }
    }

    fn deny(&mut self, now_ms: u64, r: &ReserveRequest<'_>, reason: DenyReason) -> Outcome {
        self.audit
            .append(now_ms, r.fact(AuditEvent::Deny(reason.clone())));
        Outcome::Denied(reason)
    }

    /// Neither in flight nor remembered in tenant `t`: ended if the tenant was issued that
    /// id, else never issued. Only the tenant's own counter decides, so another tenant's
    /// reservation of the same number answers exactly as a number nobody was given.
    pub(super) fn unknown_reservation(&self, t: u32, id: u64) -> Outcome {
        let reservation = ReservationId(id);
        let issued = self
            .tenants
            .get(t)
            .map_or(0, |tenant| tenant.reservations_issued);
        if id == 0 || id > issued {
            rejected(Rejection::UnknownReservation { reservation })
        } else {
            rejected(Rejection::ReservationEnded { reservation })
        }
    }

    /// Takes reservation `key` out of flight at `at_ms`: out of the reservations and their
    /// indexes, its holds settled as `ending` says, and its audit record appended. The one
    /// path by which commit, release and expiry end a reservation. None: not in flight.
    fn end_in_flight(
        &mut self,
        key: ReservationKey,
        at_ms: u64,
        ending: Ending<'_>,
    ) -> Option<Reservation> {
        let reservation = self.reservations.remove(&key)?;
        self.by_expiry.remove(&(reservation.expires_at_ms, key));
        self.in_flight.remove(&key);
        let (_, id) = key;
        let Some(tenant) = self.tenants.get_mut(reservation.tenant) else {
            debug_assert!(false, "reservation of an unknown tenant");
            return None;
        };
        tenant.in_flight = tenant.in_flight.saturating_sub(1);
        let estimate = reservation.estimate;
        let charge = ending.charge(&estimate);
        let mut crossings = Crossings::default();
        for_each_hold(
            tenant,
            (reservation.agent, reservation.session.as_ref()),
            &reservation.holds,
            |spec, counter| {
                limits::settle(spec, counter, &estimate, charge.as_ref(), at_ms);
                if charge.is_some() {
                    crossings.note(spec, counter, at_ms);
                }
            },
        );
        let fact = Fact {
            tenant: Some(&tenant.id),
            agent: tenant.agents.get(reservation.agent).map(|a| &a.id),
            tool: Some(&reservation.tool),
            request_id: ending.request_id(),
            reservation_id: Some(ReservationId(id)),
            event: ending.event(&estimate),
            amounts: ending.amounts(&estimate),
        };
        crossings.append_with_cause((&mut self.audit, &mut self.crossings_applied), at_ms, fact);
        Some(reservation)
    }

    /// A commit in flight settles the holds at the actual; within `EXPIRED_RETENTION_MS`
    /// after expiry it trues the expiry up or down (late); later it is unknown.
    fn commit(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        (t, tenant_id): (u32, &TenantId),
        reservation_id: ReservationId,
        settled: &Settlement,
    ) -> Outcome {
        let key = (t, reservation_id.0);
        let ending = Ending::Commit {
            request_id,
            settled,
        };
        if let Some(reservation) = self.end_in_flight(key, now_ms, ending) {
            self.unref_agent(t, reservation.agent);
            let spent = (&reservation.estimate, &settled.actual);
            self.note_overrun((t, reservation.agent), spent, now_ms);
            return Outcome::Committed {
                reservation_id,
                overrun: settled.actual.exceeds(&reservation.estimate),
                late: false,
                cost_micros: settled.actual.cost_micros,
            };
        }
        if self.tombstones.contains_key(&key) {
            return self.commit_late(now_ms, request_id, (t, tenant_id), reservation_id, settled);
        }
        self.unknown_reservation(t, reservation_id.0)
    }

    /// Counts a commit's overrun toward the agent's velocity.
    fn note_overrun(&mut self, (t, agent): (u32, u32), spent: (&Amounts, &Amounts), now_ms: u64) {
        let Some(tenant) = self.tenants.get_mut(t) else {
            return;
        };
        let Tenant { policy, agents, .. } = tenant;
        if let Some(runaway) = agents
            .get_mut(agent)
            .and_then(|agent| agent.runaway.as_deref_mut())
        {
            runaway.note_overrun(policy, spent, now_ms);
        }
    }

    /// A commit of an expired reservation, still remembered: trues its expiry charge (or
    /// its release) to the actual.
    fn commit_late(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        (t, tenant_id): (u32, &TenantId),
        reservation_id: ReservationId,
        settled: &Settlement,
    ) -> Outcome {
        let actual = &settled.actual;
        let key = (t, reservation_id.0);
        let Some(tombstone) = self.tombstones.remove(&key) else {
            return self.unknown_reservation(t, reservation_id.0);
        };
        self.tombstones_by_time
            .remove(&(tombstone.expired_at_ms, key));
        self.unref_agent(t, tombstone.reservation.agent);
        let Some(tenant) = self.tenants.get_mut(t) else {
            return unknown_tenant(tenant_id);
        };
        let reservation = tombstone.reservation;
        let estimate = reservation.estimate;
        let mut crossings = Crossings::default();
        for_each_hold(
            tenant,
            (reservation.agent, reservation.session.as_ref()),
            &reservation.holds,
            |spec, counter| {
                if tombstone.charged {
                    limits::true_up(
                        spec,
                        counter,
                        &estimate,
                        actual,
                        tombstone.expired_at_ms,
                        now_ms,
                    );
                } else {
                    limits::charge(spec, counter, actual, now_ms);
                }
                crossings.note(spec, counter, now_ms);
            },
        );
        let overrun = actual.exceeds(&estimate);
        if let Some(runaway) = tenant
            .agents
            .get_mut(reservation.agent)
            .and_then(|agent| agent.runaway.as_deref_mut())
        {
            runaway.note_overrun(&tenant.policy, (&estimate, actual), now_ms);
        }
        let fact = Fact {
            tenant: Some(&tenant.id),
            agent: tenant.agents.get(reservation.agent).map(|a| &a.id),
            tool: Some(&reservation.tool),
            request_id: Some(request_id),
            reservation_id: Some(reservation_id),
            event: settled.event(overrun, true),
            amounts: *actual,
        };
        crossings.append_with_cause((&mut self.audit, &mut self.crossings_applied), now_ms, fact);
        Outcome::Committed {
            reservation_id,
            overrun,
            late: true,
            cost_micros: actual.cost_micros,
        }
    }

    fn release(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        t: u32,
        reservation_id: ReservationId,
    ) -> Outcome {
        let key = (t, reservation_id.0);
        if let Some(reservation) = self.end_in_flight(key, now_ms, Ending::Release { request_id }) {
            self.unref_agent(t, reservation.agent);
            return Outcome::Released { reservation_id };
        }
        if let Some(tombstone) = self.tombstones.get(&key) {
            return rejected(Rejection::ReleaseAfterExpiry {
                reservation: reservation_id,
                expired_at_ms: tombstone.expired_at_ms,
                charged: tombstone.charged,
            });
        }
        self.unknown_reservation(t, reservation_id.0)
    }

    fn record(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        (t, tenant_id): (u32, &TenantId),
        (agent_id, tool, session): (&AgentId, &ToolId, Option<&SessionId>),
        (actual, event): (Amounts, AuditEvent),
    ) -> Outcome {
        let actual = &actual;
        if let Some(rejected) = self.open_session(now_ms, t, session) {
            return rejected;
        }
        let Some(tenant) = self.tenants.get_mut(t) else {
            return unknown_tenant(tenant_id);
        };
        let agent_index = match tenant.agents.find(agent_id.as_bytes()) {
            Some(index) => index,
            None => {
                if let Some(rejected) = agent_room(self.agents_total, tenant) {
                    return rejected;
                }
                self.agents_total += 1;
                tenant.agents.push(Agent::new(agent_id.clone(), now_ms))
            }
        };
        let mut crossings = Crossings::default();
        for_each_applicable(
            tenant,
            (agent_index, agent_id),
            (tool, session),
            |spec, counter| {
                limits::charge(spec, counter, actual, now_ms);
                crossings.note(spec, counter, now_ms);
            },
        );
        let policy = &tenant.policy;
        if let Some(agent) = tenant.agents.get_mut(agent_index) {
            agent.last_used_ms = now_ms;
            if agent.runaway.is_some() || policy.velocity_factor > 0 {
                agent
                    .runaway
                    .get_or_insert_with(Default::default)
                    .note_spend(policy, actual, now_ms);
            }
        }
        let fact = Fact {
            tenant: Some(tenant_id),
            agent: Some(agent_id),
            tool: Some(tool),
            request_id: Some(request_id),
            reservation_id: None,
            event,
            amounts: *actual,
        };
        crossings.append_with_cause((&mut self.audit, &mut self.crossings_applied), now_ms, fact);
        Outcome::Recorded {
            cost_micros: actual.cost_micros,
        }
    }

    /// `amounts` with its cost derived from `usage` by the tenant's price table, and the
    /// entry used; `amounts` as they are without usage. Changes nothing.
    fn priced(
        &self,
        t: u32,
        amounts: &Amounts,
        usage: Option<&Usage>,
    ) -> Result<(Amounts, Option<PriceRef>), Rejection> {
        let (Some(usage), Some(tenant)) = (usage, self.tenants.get(t)) else {
            return Ok((*amounts, None));
        };
        let (priced, used) = tenant.priced(amounts, usage)?;
        Ok((priced, Some(used)))
    }

    /// What a commit charges: an abandoned reservation its estimate (in flight, or expired
    /// and still remembered), else the actual priced by `usage`. Changes nothing.
    fn settlement(
        &self,
        t: u32,
        reservation_id: ReservationId,
        actual: &Amounts,
        usage: &Option<Usage>,
        abandoned: bool,
    ) -> Result<Settlement, Rejection> {
        if abandoned {
            let key = (t, reservation_id.0);
            let estimate = self
                .reservations
                .get(&key)
                .or_else(|| self.tombstones.get(&key).map(|t| &t.reservation))
                .map(|r| r.estimate)
                .unwrap_or_default();
            return Ok(Settlement {
                actual: estimate,
                abandoned,
                price: None,
            });
        }
        let (actual, price) = self.priced(t, actual, usage.as_ref())?;
        Ok(Settlement {
            actual,
            abandoned,
            price,
        })
    }

    /// Ends a reservation whose TTL has passed, at its expiry time (log order decides).
    pub(super) fn expire(&mut self, key: ReservationKey, expires_at_ms: u64) {
        // Out of the index whatever follows: `advance` takes its entries until they are
        // later than now.
        self.by_expiry.remove(&(expires_at_ms, key));
        let charged = self
            .tenants
            .get(key.0)
            .is_some_and(|t| t.policy.expiry == ExpiryPolicy::Charge);
        let Some(reservation) = self.end_in_flight(key, expires_at_ms, Ending::Expire { charged })
        else {
            debug_assert!(false, "expiry index names an unknown reservation");
            return;
        };
        self.tombstones.insert(
            key,
            Tombstone {
                reservation,
                expired_at_ms: expires_at_ms,
                charged,
            },
        );
        self.tombstones_by_time.insert((expires_at_ms, key));
        while self.tombstones.len() > EXPIRED_TOMBSTONES_MAX {
            self.forget_oldest_tombstone();
        }
    }

    pub(super) fn forget_oldest_tombstone(&mut self) {
        if let Some((_, key)) = self.tombstones_by_time.pop_first() {
            if let Some(tombstone) = self.tombstones.remove(&key) {
                self.unref_agent(key.0, tombstone.reservation.agent);
            }
        }
    }

    /// A reservation or tombstone of agent `agent` of tenant `t` is gone.
    pub(super) fn unref_agent(&mut self, t: u32, agent: u32) {
        let agent = self
            .tenants
            .get_mut(t)
            .and_then(|tenant| tenant.agents.get_mut(agent));
        if let Some(agent) = agent {
            debug_assert!(agent.refs > 0, "an agent's references below zero");
            agent.refs = agent.refs.saturating_sub(1);
        }
    }

    fn put_tenant(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        tenant_id: &TenantId,
        tenant: Option<u32>,
        policy: &TenantPolicy,
    ) -> Outcome {
        match tenant.and_then(|t| self.tenants.get_mut(t)) {
            Some(existing) => {
                existing.policy = policy.clone();
                // Leases carry terms of the old policy (and may be off now).
                if let Some(t) = tenant {
                    self.recall_leases(t, None);
                }
            }
            None => {
                if self.tenants.len() >= TENANTS_MAX {
                    return bound_reached(Bound::Tenants, tenant_id);
                }
                self.tenants
                    .push(Tenant::new(tenant_id.clone(), policy.clone()));
            }
        }
        self.audit.append(
            now_ms,
            Fact::tenant(tenant_id, request_id, AuditEvent::TenantPut),
        );
        Outcome::Done
    }

    fn put_limit(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        (t, tenant_id): (u32, &TenantId),
        spec: &LimitSpec,
    ) -> Outcome {
        let Some(tenant) = self.tenants.get_mut(t) else {
            return unknown_tenant(tenant_id);
        };
        let found = tenant.limits.binary_search_by(|l| l.spec.id.cmp(&spec.id));
        if let Some(rejected) = limit_room(tenant, spec, found.ok()) {
            return rejected;
        }
        match found {
            Ok(index) => {
                let entry = &mut tenant.limits[index];
                if !limits::keeps_counters(&entry.spec, spec) {
                    tenant.generation_last = tenant.generation_last.saturating_add(1);
                    entry.generation = tenant.generation_last;
                    entry.counter = Counter::fresh(&spec.kind);
                }
                entry.spec = spec.clone();
            }
            Err(index) => {
                tenant.generation_last = tenant.generation_last.saturating_add(1);
                tenant.limits.insert(
                    index,
                    limits::LimitEntry {
                        spec: spec.clone(),
                        generation: tenant.generation_last,
                        counter: Counter::fresh(&spec.kind),
                    },
                );
            }
        }
        // Leases were sized against the old limits.
        self.recall_leases(t, None);
        self.audit.append(
            now_ms,
            Fact::tenant(tenant_id, request_id, AuditEvent::LimitPut(spec.clone())),
        );
        Outcome::Done
    }

    fn delete_limit(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        (t, tenant_id): (u32, &TenantId),
        limit_id: &LimitId,
    ) -> Outcome {
        let Some(tenant) = self.tenants.get_mut(t) else {
            return unknown_tenant(tenant_id);
        };
        let Ok(index) = tenant.limits.binary_search_by(|l| l.spec.id.cmp(limit_id)) else {
            return rejected(Rejection::UnknownLimit {
                tenant: tenant_id.clone(),
                limit: limit_id.clone(),
            });
        };
        tenant.limits.remove(index);
        self.recall_leases(t, None);
        self.audit.append(
            now_ms,
            Fact::tenant(
                tenant_id,
                request_id,
                AuditEvent::LimitDelete(limit_id.clone()),
            ),
        );
        Outcome::Done
    }

    fn freeze(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        (t, tenant_id): (u32, &TenantId),
        agent_id: Option<&AgentId>,
        frozen: bool,
    ) -> Outcome {
        let Some(tenant) = self.tenants.get_mut(t) else {
            return unknown_tenant(tenant_id);
        };
        match agent_id {
            None => {
                tenant.frozen = frozen;
                if frozen {
                    self.recall_leases(t, None);
                }
            }
            Some(agent_id) => match tenant.agents.find(agent_id.as_bytes()) {
                Some(index) => {
                    if let Some(agent) = tenant.agents.get_mut(index) {
                        agent.frozen = frozen;
                        agent.last_used_ms = now_ms;
                    }
                    if frozen {
                        self.recall_leases(t, Some(index));
                    }
                }
                None if !frozen => {
                    return unknown_agent(tenant_id, agent_id);
                }
                None => {
                    // Freezing an agent before its first call is allowed: the kill switch
                    // must work on a name an operator has just seen in a log.
                    if let Some(rejected) = agent_room(self.agents_total, tenant) {
                        return rejected;
                    }
                    let mut agent = Agent::new(agent_id.clone(), now_ms);
                    agent.frozen = true;
                    tenant.agents.push(agent);
                    self.agents_total += 1;
                }
            },
        }
        let event = if frozen {
            AuditEvent::Freeze
        } else {
            AuditEvent::Unfreeze
        };
        let mut fact = Fact::tenant(tenant_id, request_id, event);
        fact.agent = agent_id;
        self.audit.append(now_ms, fact);
        Outcome::Done
    }

    fn reset_trip(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        (t, tenant_id): (u32, &TenantId),
        agent_id: &AgentId,
    ) -> Outcome {
        let Some(tenant) = self.tenants.get_mut(t) else {
            return unknown_tenant(tenant_id);
        };
        let Some(agent) = tenant
            .agents
            .find(agent_id.as_bytes())
            .and_then(|index| tenant.agents.get_mut(index))
        else {
            return unknown_agent(tenant_id, agent_id);
        };
        if let Some(state) = agent.runaway.as_deref_mut() {
            state.reset();
        }
        let mut fact = Fact::tenant(tenant_id, request_id, AuditEvent::TripReset);
        fact.agent = Some(agent_id);
        self.audit.append(now_ms, fact);
        Outcome::Done
    }
}
