//! Leases: slices of a tenant's limits held for one client process, inside which it decides
//! calls itself and reports them with `Settle` (docs/SPEC.md, "Leases").
//!
//! A lease is held exactly like a reservation: on the counters of every limit that applies
//! to its (agent, tool), under the limits' generations, so `committed + held <= amount`
//! holds whatever its client does. Per dimension it holds one slice on every limit of that
//! dimension (a budget holds it, a rate took it from the bucket), and `units` slots of every
//! concurrency limit. Calls reported by a settle move their actual from held to committed
//! (above what the lease still holds: charged directly, an overrun). An unsettled lease
//! expires `LEASE_GRACE_MS` after its TTL and its whole slice is charged (fail safe).
//!
//! Sizing: per limit, a fair share of what is left, `room / (leases holding its counter +
//! 1)`, where the leases holding a counter are counted per agent for per-agent scopes and
//! per tenant otherwise (tool-scoped counters included: an upper bound, so shares are never
//! too large).
//!
//! Recall: the ledger sets `recalled` on leases (changing no amount) when a limit they hold
//! denies a reserve or refuses a lease ask, when their tenant or agent is frozen, when their
//! agent trips, and when their tenant's limits or policy change. The next settle returns
//! the rest and ends the lease.

use smallvec::SmallVec;

use super::alerts::Crossings;
use super::audit::{AuditEvent, Fact};
use super::commands::{agent_room, for_each_counter, for_each_hold, unknown_tenant};
use super::limits::{self, is_per_agent};
use super::runaway;
use super::state::{Agent, Lease, LeaseTombstone, ReservationKey, Tenant};
use super::{
    AgentId, Amounts, Command, Dimension, LeaseCall, LeaseRefusal, LeaseTerms, Ledger, LimitId,
    LimitKind, Outcome, RequestId, ReservationId, TenantId, ToolId, EXPIRED_TOMBSTONES_MAX,
    LEASE_GRACE_MS, LEASE_TTL_MS_DEFAULT,
};

/// The dimensions a slice has (concurrency is counted in units).
const DIMENSIONS: [Dimension; 3] = [Dimension::Tokens, Dimension::Cost, Dimension::Calls];

fn set(amounts: &mut Amounts, dimension: Dimension, value: u64) {
    match dimension {
        Dimension::Tokens => amounts.tokens = value,
        Dimension::Cost => amounts.cost_micros = value,
        Dimension::Calls => amounts.calls = value,
        Dimension::Concurrency => {}
    }
}

/// When an unsettled lease is reclaimed: its TTL (0: the default) and the grace after.
fn expiry_at(now_ms: u64, ttl_ms: u64) -> u64 {
    let ttl_ms = if ttl_ms == 0 {
        LEASE_TTL_MS_DEFAULT
    } else {
        ttl_ms
    };
    now_ms.saturating_add(ttl_ms).saturating_add(LEASE_GRACE_MS)
}

/// The fields of a `Lease` command.
struct Ask<'a> {
    request_id: &'a RequestId,
    agent: &'a AgentId,
    tool: &'a ToolId,
    want: &'a Amounts,
    units: u32,
    floor: &'a Amounts,
    ttl_ms: u64,
}

/// The fields of a `Settle` command.
struct SettleAsk<'a> {
    request_id: &'a RequestId,
    lease_id: ReservationId,
    calls: &'a [LeaseCall],
    want: &'a Amounts,
    units: u32,
    ttl_ms: u64,
}

/// What a lease may hold of some limits: the slice and units granted (at most what was
/// asked and a fair share of each limit), and each limit's fair share, to name those too
/// short for a floor.
struct Share {
    slice: Amounts,
    units: u32,
    /// Whether some concurrency limit applies (a lease then needs at least one unit).
    concurrency: bool,
    /// (limit index, generation, fair share of its dimension or of its slots).
    fair: SmallVec<[(usize, u64, u64); 8]>,
}

/// The fair share of the limits at `indexes` for a lease of `agent` asking `want` and
/// `units`. `own`: the asking lease's current hold (a resize), which counts as room and
/// is not one of the other leases holding the counters. Changes nothing.
fn share(
    tenant: &Tenant,
    agent: &Agent,
    indexes: impl Iterator<Item = usize>,
    (want, units): (&Amounts, u32),
    own: Option<(&Amounts, u32)>,
    now_ms: u64,
) -> Share {
    let zero = Amounts::default();
    let mut out = Share {
        slice: *want,
        units,
        concurrency: false,
        fair: SmallVec::new(),
    };
    for index in indexes {
        let Some(entry) = tenant.limits.get(index) else {
            continue;
        };
        let per_agent = is_per_agent(&entry.spec.scope);
        let counter = if per_agent {
            agent
                .counter_index(entry.generation)
                .map(|i| &agent.counters[i].counter)
        } else {
            Some(&entry.counter)
        };
        let holders = if per_agent {
            agent.leases
        } else {
            tenant.leases
        };
        let others = if own.is_some() {
            holders.saturating_sub(1)
        } else {
            holders
        };
        let room = limits::lease_room(&entry.spec, counter, own.unwrap_or((&zero, 0)), now_ms);
        let fair = room / (u64::from(others) + 1);
        match entry.spec.kind {
            LimitKind::Concurrency { .. } => {
                out.concurrency = true;
                out.units = out.units.min(u32::try_from(fair).unwrap_or(u32::MAX));
            }
            LimitKind::Budget { .. } | LimitKind::Rate { .. } => {
                let d = entry.spec.dimension;
                let capped = out.slice.get(d).min(fair);
                set(&mut out.slice, d, capped);
            }
            LimitKind::Duration { .. } => continue,
        }
        out.fair.push((index, entry.generation, fair));
    }
    out
}

impl Ledger {
    /// Executes a `Lease` or a `Settle` on the existing tenant `t`.
    pub(super) fn execute_lease(
        &mut self,
        now_ms: u64,
        cmd: &Command,
        (t, tenant_id): (u32, &TenantId),
    ) -> Outcome {
        match cmd {
            Command::Lease {
                request_id,
                agent,
                tool,
                want,
                units,
                floor,
                ttl_ms,
                ..
            } => {
                let ask = Ask {
                    request_id,
                    agent,
                    tool,
                    want,
                    units: *units,
                    floor,
                    ttl_ms: *ttl_ms,
                };
                self.lease(now_ms, (t, tenant_id), &ask)
            }
            Command::Settle {
                request_id,
                lease_id,
                calls,
                want,
                units,
                ttl_ms,
                ..
            } => {
                let ask = SettleAsk {
                    request_id,
                    lease_id: *lease_id,
                    calls,
                    want,
                    units: *units,
                    ttl_ms: *ttl_ms,
                };
                self.settle(now_ms, (t, tenant_id), &ask)
            }
            _ => Outcome::Done,
        }
    }

    /// Live leases of the tenant, or of one of its agents: what a Freeze waits for to reach
    /// 0 (returned, recalled and settled, or expired). 0 for an unknown tenant or agent.
    pub fn leases_on(&self, tenant: &TenantId, agent: Option<&AgentId>) -> usize {
        let Ok(t) = self.tenant(tenant) else {
            return 0;
        };
        let count = match agent {
            None => t.leases,
            Some(agent) => t.agent(agent).map_or(0, |a| a.leases),
        };
        count as usize
    }

    /// A lease ask: refused (off, frozen, tripped, too little room), or granted a fair
    /// share of every limit that applies.
    fn lease(&mut self, now_ms: u64, (t, tenant_id): (u32, &TenantId), ask: &Ask<'_>) -> Outcome {
        let agent_index = match self.admit_lease(now_ms, (t, tenant_id), ask) {
            Ok(index) => index,
            Err(answer) => return answer,
        };
        let Some(tenant) = self.tenants.get(t) else {
            return unknown_tenant(tenant_id);
        };
        let Some(agent) = tenant.agents.get(agent_index) else {
            return unknown_tenant(tenant_id);
        };
        let applicable = limits::applicable(&tenant.limits, ask.agent, Some(ask.tool), false);
        let share = share(
            tenant,
            agent,
            applicable.iter(),
            (ask.want, ask.units),
            None,
            now_ms,
        );
        let short: SmallVec<[(u64, bool); 4]> = share
            .fair
            .iter()
            .filter(|&&(index, _, fair)| {
                let spec = &tenant.limits[index].spec;
                match spec.kind {
                    LimitKind::Concurrency { .. } => fair == 0,
                    _ => fair < ask.floor.get(spec.dimension),
                }
            })
            .map(|&(index, generation, _)| {
                (generation, is_per_agent(&tenant.limits[index].spec.scope))
            })
            .collect();
        let below_floor = DIMENSIONS
            .iter()
            .any(|&d| share.slice.get(d) < ask.floor.get(d));
        if !short.is_empty() || below_floor || (share.concurrency && share.units == 0) {
            // Their slices come back within a settle, so the next ask may fit.
            self.recall_where(t, |lease| {
                short.iter().any(|&(generation, per_agent)| {
                    lease.holds.contains(&generation) && (!per_agent || lease.agent == agent_index)
                })
            });
            return Outcome::LeaseRefused(LeaseRefusal::Room);
        }
        self.grant_lease(now_ms, (t, agent_index), &applicable, ask, &share)
    }

    /// The checks before sizing: leases on, the bounds on reservations in flight (a lease
    /// counts as one), no freeze, no trip. Creates the agent on its first call. Ok: the
    /// agent's index; Err: the answer.
    fn admit_lease(
        &mut self,
        now_ms: u64,
        (t, tenant_id): (u32, &TenantId),
        ask: &Ask<'_>,
    ) -> Result<u32, Outcome> {
        if !self
            .tenants
            .get(t)
            .is_some_and(|tenant| tenant.policy.leases)
        {
            return Err(Outcome::LeaseRefused(LeaseRefusal::Off));
        }
        if let Some(rejected) = self.in_flight_room(t, tenant_id) {
            return Err(rejected);
        }
        let agents_total = self.agents_total;
        let Some(tenant) = self.tenants.get_mut(t) else {
            return Err(unknown_tenant(tenant_id));
        };
        if tenant.frozen {
            return Err(Outcome::LeaseRefused(LeaseRefusal::Frozen));
        }
        let index = match tenant.agents.find(ask.agent.as_bytes()) {
            Some(index) => index,
            None => {
                if let Some(rejected) = agent_room(agents_total, tenant) {
                    return Err(rejected);
                }
                self.agents_total += 1;
                tenant.agents.push(Agent::new(ask.agent.clone(), now_ms))
            }
        };
        let Some(agent) = tenant.agents.get_mut(index) else {
            return Err(unknown_tenant(tenant_id));
        };
        if agent.frozen {
            return Err(Outcome::LeaseRefused(LeaseRefusal::Frozen));
        }
        if agent
            .runaway
            .as_deref()
            .is_some_and(|r| r.trip_at(now_ms).is_some())
        {
            return Err(Outcome::LeaseRefused(LeaseRefusal::Tripped));
        }
        agent.last_used_ms = now_ms;
        Ok(index)
    }

    /// Granted: holds the share on every applicable limit and puts the lease in flight.
    fn grant_lease(
        &mut self,
        now_ms: u64,
        (t, agent_index): (u32, u32),
        applicable: &limits::Applicable,
        ask: &Ask<'_>,
        share: &Share,
    ) -> Outcome {
        let Some(tenant) = self.tenants.get_mut(t) else {
            return Outcome::Done;
        };
        let Tenant {
            limits,
            agents,
            reservations_issued,
            leases,
            policy,
            id: tenant_id,
            ..
        } = tenant;
        let Some(agent) = agents.get_mut(agent_index) else {
            return Outcome::Done;
        };
        let (slice, units) = (share.slice, share.units);
        let mut holds = SmallVec::new();
        for_each_counter(
            limits,
            (agent, None),
            applicable,
            |spec, generation, counter| {
                limits::hold_slice(spec, counter, &slice, units, now_ms);
                holds.push(generation);
            },
        );
        agent.refs = agent.refs.saturating_add(1);
        agent.leases = agent.leases.saturating_add(1);
        *leases = leases.saturating_add(1);
        *reservations_issued = reservations_issued.saturating_add(1);
        let id = *reservations_issued;
        let key = (t, id);
        let lease = Lease {
            tenant: t,
            agent: agent_index,
            tool: ask.tool.clone(),
            slice,
            units,
            holds,
            granted_at_ms: now_ms,
            renewed_at_ms: now_ms,
            expires_at_ms: expiry_at(now_ms, ask.ttl_ms),
            recalled: false,
        };
        let terms = terms(id, &lease, policy);
        self.audit.append(
            now_ms,
            Fact {
                tenant: Some(tenant_id),
                agent: Some(ask.agent),
                tool: Some(ask.tool),
                request_id: Some(ask.request_id),
                reservation_id: Some(ReservationId(id)),
                event: AuditEvent::LeaseGrant,
                amounts: slice,
            },
        );
        self.leases_by_expiry.insert((lease.expires_at_ms, key));
        self.leases_of.insert(key);
        self.leases.insert(key, lease);
        Outcome::Leased(terms)
    }
}

/// The terms a client gets: what the lease holds now and the tenant's repetition policy.
fn terms(id: u64, lease: &Lease, policy: &super::TenantPolicy) -> LeaseTerms {
    LeaseTerms {
        lease_id: ReservationId(id),
        slice: lease.slice,
        units: lease.units,
        expires_at_ms: lease.expires_at_ms,
        repeat_max: policy.repeat_max,
        repeat_window_ms: policy.repeat_window_ms,
    }
}

impl Ledger {
    /// A settle: charges the calls, then resizes and renews the lease, or ends it. A lease
    /// that expired (and is still remembered) had its whole slice charged: its calls are
    /// audited, not charged again.
    fn settle(
        &mut self,
        now_ms: u64,
        (t, tenant_id): (u32, &TenantId),
        s: &SettleAsk<'_>,
    ) -> Outcome {
        let key = (t, s.lease_id.0);
        let Some(mut lease) = self.leases.remove(&key) else {
            if self.lease_tombstones.contains_key(&key) {
                return self.settle_expired(now_ms, key, s);
            }
            return self.unknown_reservation(t, s.lease_id.0);
        };
        let charged_calls = u32::try_from(s.calls.len()).unwrap_or(u32::MAX);
        if self.charge_calls(now_ms, key, &mut lease, s) {
            // The trip recalls the agent's leases, this one included.
            self.recall_where(t, |other| other.agent == lease.agent);
            lease.recalled = true;
        }
        if let Some(recalled) = self.lease_ending(now_ms, &lease, s) {
            self.end_lease(now_ms, key, &lease, s.request_id, recalled);
            return Outcome::Settled {
                lease: None,
                recalled,
                expired: false,
                charged_calls,
            };
        }
        let Some(terms) = self.renew_lease(now_ms, key, &mut lease, s) else {
            return unknown_tenant(tenant_id);
        };
        self.leases.insert(key, lease);
        Outcome::Settled {
            lease: Some(terms),
            recalled: false,
            expired: false,
            charged_calls,
        }
    }

    /// Charges each reported call against the lease's holds and feeds it to runaway
    /// detection, one audit record per call. True if the agent tripped on one of them.
    fn charge_calls(
        &mut self,
        now_ms: u64,
        (t, id): ReservationKey,
        lease: &mut Lease,
        s: &SettleAsk<'_>,
    ) -> bool {
        let mut tripped = false;
        let Some(tenant) = self.tenants.get_mut(t) else {
            return false;
        };
        for call in s.calls {
            let trip = note_call(tenant, lease.agent, call, now_ms);
            let before = lease.slice;
            let mut crossings = Crossings::default();
            for_each_hold(
                tenant,
                (lease.agent, None),
                &lease.holds,
                |spec, counter| {
                    limits::consume_slice(
                        spec,
                        counter,
                        before.get(spec.dimension),
                        &call.actual,
                        now_ms,
                    );
                    crossings.note(spec, counter, now_ms);
                },
            );
            for d in DIMENSIONS {
                set(
                    &mut lease.slice,
                    d,
                    before.get(d).saturating_sub(call.actual.get(d)),
                );
            }
            let fact = |event| Fact {
                tenant: Some(&tenant.id),
                agent: tenant.agents.get(lease.agent).map(|a| &a.id),
                tool: Some(&lease.tool),
                request_id: Some(&call.request_id),
                reservation_id: Some(ReservationId(id)),
                event,
                amounts: call.actual,
            };
            if let Some(cause) = trip {
                tripped = true;
                let mut trip_fact = fact(AuditEvent::Trip(cause));
                trip_fact.reservation_id = None;
                trip_fact.amounts = call.estimate;
                self.audit.append(now_ms, trip_fact);
            }
            let event = AuditEvent::LeaseCall {
                overrun: call.actual.exceeds(&before),
                charged: true,
            };
            crossings.append_with_cause(
                (&mut self.audit, &mut self.crossings_applied),
                now_ms,
                fact(event),
            );
        }
        if let Some(agent) = tenant.agents.get_mut(lease.agent) {
            agent.last_used_ms = now_ms;
        }
        tripped
    }

    /// Whether the lease ends at this settle: Some(true) if the ledger ends it (recalled,
    /// leases off, tenant or agent frozen or tripped), Some(false) if its holder returns it
    /// (nothing wanted), None if it goes on.
    fn lease_ending(&self, now_ms: u64, lease: &Lease, s: &SettleAsk<'_>) -> Option<bool> {
        let tenant = self.tenants.get(lease.tenant)?;
        let agent = tenant.agents.get(lease.agent)?;
        let tripped = agent
            .runaway
            .as_deref()
            .is_some_and(|r| r.trip_at(now_ms).is_some());
        if lease.recalled || !tenant.policy.leases || tenant.frozen || agent.frozen || tripped {
            return Some(true);
        }
        (*s.want == Amounts::default() && s.units == 0).then_some(false)
    }

    /// Resizes the lease to what the settle wants, at most a fair share of each limit it
    /// holds (the top-up fits every one of them), renews it and audits the new slice.
    fn renew_lease(
        &mut self,
        now_ms: u64,
        key: ReservationKey,
        lease: &mut Lease,
        s: &SettleAsk<'_>,
    ) -> Option<LeaseTerms> {
        let tenant = self.tenants.get_mut(key.0)?;
        let share = {
            let agent = tenant.agents.get(lease.agent)?;
            let indexes = lease.holds.iter().filter_map(|&generation| {
                tenant
                    .limits
                    .iter()
                    .position(|l| l.generation == generation)
            });
            let own = Some((&lease.slice, lease.units));
            share(tenant, agent, indexes, (s.want, s.units), own, now_ms)
        };
        let (mut grow, mut shrink) = (Amounts::default(), Amounts::default());
        for d in DIMENSIONS {
            let (now, next) = (lease.slice.get(d), share.slice.get(d));
            set(&mut grow, d, next.saturating_sub(now));
            set(&mut shrink, d, now.saturating_sub(next));
        }
        let grow_units = share.units.saturating_sub(lease.units);
        let shrink_units = lease.units.saturating_sub(share.units);
        for_each_hold(
            tenant,
            (lease.agent, None),
            &lease.holds,
            |spec, counter| {
                limits::shrink_slice(spec, counter, &shrink, shrink_units, now_ms);
                limits::hold_slice(spec, counter, &grow, grow_units, now_ms);
            },
        );
        lease.slice = share.slice;
        lease.units = share.units;
        lease.renewed_at_ms = now_ms;
        self.leases_by_expiry.remove(&(lease.expires_at_ms, key));
        lease.expires_at_ms = expiry_at(now_ms, s.ttl_ms);
        self.leases_by_expiry.insert((lease.expires_at_ms, key));
        let terms = terms(key.1, lease, &tenant.policy);
        self.audit.append(
            now_ms,
            Fact {
                tenant: Some(&tenant.id),
                agent: tenant.agents.get(lease.agent).map(|a| &a.id),
                tool: Some(&lease.tool),
                request_id: Some(s.request_id),
                reservation_id: Some(ReservationId(key.1)),
                event: AuditEvent::LeaseGrant,
                amounts: lease.slice,
            },
        );
        Some(terms)
    }

    /// Takes a lease (already out of `leases`) out of its indexes and counts, its unused
    /// rest given back, and audits the return.
    fn end_lease(
        &mut self,
        now_ms: u64,
        key: ReservationKey,
        lease: &Lease,
        request_id: &RequestId,
        recalled: bool,
    ) {
        self.unindex_lease(key, lease);
        self.unref_agent(key.0, lease.agent);
        let Some(tenant) = self.tenants.get_mut(key.0) else {
            return;
        };
        for_each_hold(
            tenant,
            (lease.agent, None),
            &lease.holds,
            |spec, counter| {
                limits::shrink_slice(spec, counter, &lease.slice, lease.units, now_ms);
            },
        );
        self.audit.append(
            now_ms,
            Fact {
                tenant: Some(&tenant.id),
                agent: tenant.agents.get(lease.agent).map(|a| &a.id),
                tool: Some(&lease.tool),
                request_id: Some(request_id),
                reservation_id: Some(ReservationId(key.1)),
                event: AuditEvent::LeaseReturn { recalled },
                amounts: lease.slice,
            },
        );
    }

    /// Out of the expiry and tenant indexes and the live counts (not the agent's
    /// references: a tombstone may still hold one).
    fn unindex_lease(&mut self, key: ReservationKey, lease: &Lease) {
        self.leases_by_expiry.remove(&(lease.expires_at_ms, key));
        self.leases_of.remove(&key);
        if let Some(tenant) = self.tenants.get_mut(key.0) {
            tenant.leases = tenant.leases.saturating_sub(1);
            if let Some(agent) = tenant.agents.get_mut(lease.agent) {
                agent.leases = agent.leases.saturating_sub(1);
            }
        }
    }

    /// A settle of a lease that expired: its whole slice was charged then, so its calls are
    /// audited as not charged and nothing changes on the counters.
    fn settle_expired(&mut self, now_ms: u64, key: ReservationKey, s: &SettleAsk<'_>) -> Outcome {
        let (Some(tombstone), Some(tenant)) =
            (self.lease_tombstones.get(&key), self.tenants.get(key.0))
        else {
            return self.unknown_reservation(key.0, key.1);
        };
        let lease = &tombstone.lease;
        for call in s.calls {
            self.audit.append(
                now_ms,
                Fact {
                    tenant: Some(&tenant.id),
                    agent: tenant.agents.get(lease.agent).map(|a| &a.id),
                    tool: Some(&lease.tool),
                    request_id: Some(&call.request_id),
                    reservation_id: Some(ReservationId(key.1)),
                    event: AuditEvent::LeaseCall {
                        overrun: call.actual.exceeds(&call.estimate),
                        charged: false,
                    },
                    amounts: call.actual,
                },
            );
        }
        Outcome::Settled {
            lease: None,
            recalled: false,
            expired: true,
            charged_calls: 0,
        }
    }

    /// Ends an unsettled lease at its expiry time: its whole slice is charged whatever the
    /// tenant's expiry policy (its holder may have spent it all), its units freed, and it
    /// is remembered for a late settle.
    pub(super) fn expire_lease(&mut self, key: ReservationKey, expires_at_ms: u64) {
        self.leases_by_expiry.remove(&(expires_at_ms, key));
        let Some(lease) = self.leases.remove(&key) else {
            debug_assert!(false, "lease expiry index names an unknown lease");
            return;
        };
        self.unindex_lease(key, &lease);
        let Some(tenant) = self.tenants.get_mut(key.0) else {
            return;
        };
        let mut crossings = Crossings::default();
        for_each_hold(
            tenant,
            (lease.agent, None),
            &lease.holds,
            |spec, counter| {
                limits::expire_slice(spec, counter, &lease.slice, lease.units, expires_at_ms);
                crossings.note(spec, counter, expires_at_ms);
            },
        );
        let fact = Fact {
            tenant: Some(&tenant.id),
            agent: tenant.agents.get(lease.agent).map(|a| &a.id),
            tool: Some(&lease.tool),
            request_id: None,
            reservation_id: Some(ReservationId(key.1)),
            event: AuditEvent::LeaseExpire,
            amounts: lease.slice,
        };
        crossings.append_with_cause(
            (&mut self.audit, &mut self.crossings_applied),
            expires_at_ms,
            fact,
        );
        self.lease_tombstones_by_time.insert((expires_at_ms, key));
        self.lease_tombstones.insert(
            key,
            LeaseTombstone {
                lease,
                expired_at_ms: expires_at_ms,
            },
        );
        while self.lease_tombstones.len() > EXPIRED_TOMBSTONES_MAX {
            self.forget_oldest_lease_tombstone();
        }
    }

    pub(super) fn forget_oldest_lease_tombstone(&mut self) {
        if let Some((_, key)) = self.lease_tombstones_by_time.pop_first() {
            if let Some(tombstone) = self.lease_tombstones.remove(&key) {
                self.unref_agent(key.0, tombstone.lease.agent);
            }
        }
    }

    /// Recalls the tenant's live leases that `recall` picks. Changes no amount: the next
    /// settle of each returns its rest.
    fn recall_where(&mut self, t: u32, recall: impl Fn(&Lease) -> bool) {
        if self.tenants.get(t).is_none_or(|tenant| tenant.leases == 0) {
            return;
        }
        for key in self.leases_of.range((t, 0)..=(t, u64::MAX)) {
            if let Some(lease) = self.leases.get_mut(key) {
                if recall(lease) {
                    lease.recalled = true;
                }
            }
        }
    }

    /// Recalls the tenant's leases (all, or one agent's).
    pub(super) fn recall_leases(&mut self, t: u32, agent: Option<u32>) {
        self.recall_where(t, |lease| agent.is_none_or(|a| lease.agent == a));
    }

    /// After limit `limit_id` denied a reserve of agent `agent`: recalls the leases holding
    /// its counter (that agent's, for a per-agent limit).
    pub(super) fn recall_leases_holding(&mut self, t: u32, agent: u32, limit_id: &LimitId) {
        let Some(tenant) = self.tenants.get(t) else {
            return;
        };
        let Ok(index) = tenant.limits.binary_search_by(|l| l.spec.id.cmp(limit_id)) else {
            return;
        };
        let entry = &tenant.limits[index];
        let (generation, per_agent) = (entry.generation, is_per_agent(&entry.spec.scope));
        self.recall_where(t, |lease| {
            lease.holds.contains(&generation) && (!per_agent || lease.agent == agent)
        });
    }
}

/// Feeds one call decided inside a lease to runaway detection as a reserve and its commit
/// would: the fingerprint and shape are counted, the estimate and any overrun are spend.
/// Some: the cause of a trip that happened on this call.
fn note_call(
    tenant: &mut Tenant,
    agent: u32,
    call: &LeaseCall,
    now_ms: u64,
) -> Option<super::TripCause> {
    let Tenant { policy, agents, .. } = tenant;
    let agent = agents.get_mut(agent)?;
    let checked = runaway::Call {
        fingerprint: call.fingerprint.as_deref(),
        shape: call.shape.as_deref(),
        estimate: &call.estimate,
    };
    if agent.runaway.is_none() && !runaway::tracks(policy, &checked) {
        return None;
    }
    let state = agent.runaway.get_or_insert_with(Default::default);
    let verdict = state.check(policy, &checked, now_ms);
    state.note_spend(policy, &call.estimate, now_ms);
    state.note_overrun(policy, (&call.estimate, &call.actual), now_ms);
    match verdict {
        runaway::Verdict::Tripped {
            cause, new: true, ..
        } => Some(cause),
        _ => None,
    }
}
