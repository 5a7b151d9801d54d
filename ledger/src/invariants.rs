//! The ledger's invariants, checked in full: after every command in debug builds (while
//! the state is small enough for it to be cheap) and on every restored snapshot.

use std::collections::HashMap;

use super::commands::{
    AGENTS_MAX, AGENTS_PER_TENANT_MAX, EXPIRED_TOMBSTONES_MAX, RESERVATIONS_IN_FLIGHT_MAX,
    RESERVATIONS_IN_FLIGHT_PER_TENANT_MAX, TENANTS_MAX,
};
use super::dedup::DEDUP_ENTRIES_MAX;
use super::limits::{is_per_agent, Counter, LIMITS_PER_TENANT_MAX};
use super::state::Tenant;
use super::{Ledger, LimitKind, Scope, SessionId, TenantId};

/// Above this many reservations or agents, debug builds skip the full check after each
/// command (it is O(state)); property tests stay far below it.
const DEBUG_CHECK_STATE_MAX: usize = 512;

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(message())
    }
}

impl Ledger {
    pub(super) fn debug_check_invariants(&self) {
        if cfg!(debug_assertions)
            && self.reservations.len() <= DEBUG_CHECK_STATE_MAX
            && self.agents_total <= DEBUG_CHECK_STATE_MAX
        {
            if let Err(broken) = self.check_invariants() {
                panic!("ledger invariant broken: {broken}");
            }
        }
    }

    /// Every invariant of the state; O(state). One function per invariant, each named
    /// after what must hold.
    pub(super) fn check_invariants(&self) -> Result<(), String> {
        self.check_bounds()?;
        self.check_reservations_are_indexed()?;
        self.check_tombstones_are_indexed()?;
        self.check_agents_are_counted()?;
        self.check_agent_refs_are_counted()?;
        self.check_in_flight_is_counted()?;
        self.check_leases_are_indexed_and_counted()?;
        self.check_lease_tombstones_are_indexed()?;
        for (t, tenant) in (0u32..).zip(self.tenants.iter()) {
            check_limits_are_sorted_with_unique_generations(tenant)?;
            self.check_tenant_indexes_its_own_reservations(t, tenant)?;
            self.check_holds_sum_the_reservations(t, tenant)?;
            self.check_session_holds(t, tenant)?;
        }
        self.check_sessions_are_counted()?;
        self.answers.check(self.tenants.len())?;
        self.check_keys()?;
        self.audit.check()
    }

    /// A bound on everything: each collection within its named constant.
    fn check_bounds(&self) -> Result<(), String> {
        ensure(self.tenants.len() <= TENANTS_MAX, || {
            "more than TENANTS_MAX tenants".into()
        })?;
        ensure(self.tenants.len() == self.tenants.slots(), || {
            "a tenant's slot is vacant; tenants are never removed".into()
        })?;
        ensure(
            self.reservations.len() + self.leases.len() <= RESERVATIONS_IN_FLIGHT_MAX,
            || "more than RESERVATIONS_IN_FLIGHT_MAX reservations and leases".into(),
        )?;
        ensure(
            self.lease_tombstones.len() <= EXPIRED_TOMBSTONES_MAX,
            || "more than EXPIRED_TOMBSTONES_MAX lease tombstones".into(),
        )?;
        ensure(self.tombstones.len() <= EXPIRED_TOMBSTONES_MAX, || {
            "more than EXPIRED_TOMBSTONES_MAX tombstones".into()
        })?;
        ensure(self.answers.len() <= DEDUP_ENTRIES_MAX, || {
            "more than DEDUP_ENTRIES_MAX answers".into()
        })?;
        ensure(self.agents_total <= AGENTS_MAX, || {
            "more than AGENTS_MAX agents".into()
        })?;
        ensure(self.alerts_delivered_seq <= self.audit.head().seq, || {
            "alerts delivered past the audit chain's head".into()
        })?;
        for tenant in self.tenants.iter() {
            let tenant_id = &tenant.id;
            ensure(tenant.agents.len() <= AGENTS_PER_TENANT_MAX, || {
                format!("tenant {tenant_id} has more than AGENTS_PER_TENANT_MAX agents")
            })?;
            ensure(
                tenant.in_flight as usize + tenant.leases as usize
                    <= RESERVATIONS_IN_FLIGHT_PER_TENANT_MAX,
                || format!("tenant {tenant_id} has too many reservations in flight"),
            )?;
            ensure(tenant.limits.len() <= LIMITS_PER_TENANT_MAX, || {
                format!("tenant {tenant_id} has more than LIMITS_PER_TENANT_MAX limits")
            })?;
        }
        Ok(())
    }

    /// Every reservation in flight was issued by its own tenant, has not expired, belongs to
    /// a known tenant and agent, and is in the expiry and in-flight indexes.
    fn check_reservations_are_indexed(&self) -> Result<(), String> {
        ensure(self.by_expiry.len() == self.reservations.len(), || {
            "expiry index and reservations differ in size".into()
        })?;
        ensure(self.in_flight.len() == self.reservations.len(), || {
            "the in-flight index and the reservations differ in size".into()
        })?;
        for (&key, r) in &self.reservations {
            let (t, id) = key;
            ensure(r.tenant == t, || {
                format!("reservation r{id} of tenant #{} keyed under #{t}", r.tenant)
            })?;
            let tenant = self
                .tenants
                .get(t)
                .ok_or_else(|| format!("reservation r{id} of unknown tenant #{t}"))?;
            ensure(id >= 1 && id <= tenant.reservations_issued, || {
                format!("reservation r{id} was never issued by tenant {}", tenant.id)
            })?;
            ensure(self.by_expiry.contains(&(r.expires_at_ms, key)), || {
                format!("reservation r{id} missing from the expiry index")
            })?;
            ensure(r.expires_at_ms > self.now_ms, || {
                format!("reservation r{id} should have expired")
            })?;
            ensure(self.in_flight.contains(&key), || {
                format!("reservation r{id} missing from its tenant's index")
            })?;
            ensure(tenant.agents.get(r.agent).is_some(), || {
                format!("reservation r{id} of unknown agent #{}", r.agent)
            })?;
        }
        Ok(())
    }

    /// Every tombstone was issued by its own tenant, is of a known tenant and agent, in its
    /// index, and not in flight.
    fn check_tombstones_are_indexed(&self) -> Result<(), String> {
        ensure(
            self.tombstones_by_time.len() == self.tombstones.len(),
            || "tombstone index and tombstones differ in size".into(),
        )?;
        for (&key, tombstone) in &self.tombstones {
            let (t, id) = key;
            let r = &tombstone.reservation;
            ensure(r.tenant == t, || {
                format!("tombstone r{id} of tenant #{} keyed under #{t}", r.tenant)
            })?;
            ensure(
                self.tenants.get(t).is_some_and(|tenant| {
                    tenant.agents.get(r.agent).is_some()
                        && id >= 1
                        && id <= tenant.reservations_issued
                }),
                || format!("tombstone r{id} of an unknown tenant or agent, or never issued"),
            )?;
            ensure(
                self.tombstones_by_time
                    .contains(&(tombstone.expired_at_ms, key)),
                || format!("tombstone r{id} missing from its index"),
            )?;
            ensure(!self.reservations.contains_key(&key), || {
                format!("reservation r{id} both in flight and expired")
            })?;
        }
        Ok(())
    }

    /// Each agent's count of references is the number of reservations and tombstones that
    /// name it, so agent GC never removes an agent in use.
    fn check_agent_refs_are_counted(&self) -> Result<(), String> {
        let mut refs: HashMap<(u32, u32), u32> = HashMap::new();
        let held = self.reservations.values();
        for r in held.chain(self.tombstones.values().map(|t| &t.reservation)) {
            *refs.entry((r.tenant, r.agent)).or_default() += 1;
        }
        let leases = self.leases.values();
        for l in leases.chain(self.lease_tombstones.values().map(|t| &t.lease)) {
            *refs.entry((l.tenant, l.agent)).or_default() += 1;
        }
        for (t, tenant) in (0u32..).zip(self.tenants.iter()) {
            for (a, agent) in tenant.agents.iter_indexed() {
                let counted = refs.get(&(t, a)).copied().unwrap_or(0);
                ensure(agent.refs == counted, || {
                    format!(
                        "agent {} of tenant {} counts {} references, {counted} exist",
                        agent.id, tenant.id, agent.refs
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Every live lease was issued by its own tenant (its id not also a reservation's), has
    /// not expired, is of a known agent, is in the expiry and tenant indexes, and each
    /// tenant's and agent's count of live leases is what exists.
    fn check_leases_are_indexed_and_counted(&self) -> Result<(), String> {
        ensure(self.leases_by_expiry.len() == self.leases.len(), || {
            "lease expiry index and leases differ in size".into()
        })?;
        ensure(self.leases_of.len() == self.leases.len(), || {
            "lease tenant index and leases differ in size".into()
        })?;
        let mut counts: HashMap<(u32, Option<u32>), u32> = HashMap::new();
        for (&key, lease) in &self.leases {
            let (t, id) = key;
            let tenant = self
                .tenants
                .get(t)
                .filter(|tenant| lease.tenant == t && id >= 1 && id <= tenant.reservations_issued)
                .ok_or_else(|| format!("lease r{id} of tenant #{t} was never issued by it"))?;
            ensure(tenant.agents.get(lease.agent).is_some(), || {
                format!("lease r{id} of unknown agent #{}", lease.agent)
            })?;
            ensure(!self.reservations.contains_key(&key), || {
                format!("r{id} is both a reservation and a lease")
            })?;
            ensure(
                self.leases_by_expiry.contains(&(lease.expires_at_ms, key))
                    && lease.expires_at_ms > self.now_ms,
                || format!("lease r{id} missing from the expiry index, or overdue"),
            )?;
            ensure(self.leases_of.contains(&key), || {
                format!("lease r{id} missing from its tenant's index")
            })?;
            *counts.entry((t, None)).or_default() += 1;
            *counts.entry((t, Some(lease.agent))).or_default() += 1;
        }
        for (t, tenant) in (0u32..).zip(self.tenants.iter()) {
            let counted = counts.get(&(t, None)).copied().unwrap_or(0);
            ensure(tenant.leases == counted, || {
                format!(
                    "tenant {} counts {} leases, {counted} exist",
                    tenant.id, tenant.leases
                )
            })?;
            for (a, agent) in tenant.agents.iter_indexed() {
                let counted = counts.get(&(t, Some(a))).copied().unwrap_or(0);
                ensure(agent.leases == counted, || {
                    format!(
                        "agent {} counts {} leases, {counted} exist",
                        agent.id, agent.leases
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Every expired lease remembered is of its own tenant, in its index, and not live.
    fn check_lease_tombstones_are_indexed(&self) -> Result<(), String> {
        ensure(
            self.lease_tombstones_by_time.len() == self.lease_tombstones.len(),
            || "lease tombstone index and lease tombstones differ in size".into(),
        )?;
        for (&key, tombstone) in &self.lease_tombstones {
            let (t, id) = key;
            ensure(
                tombstone.lease.tenant == t
                    && self
                        .lease_tombstones_by_time
                        .contains(&(tombstone.expired_at_ms, key))
                    && !self.leases.contains_key(&key),
                || format!("lease tombstone r{id} of tenant #{t} is misplaced"),
            )?;
        }
        Ok(())
    }

    /// The session count is the number of sessions of all tenants, within its bounds.
    fn check_sessions_are_counted(&self) -> Result<(), String> {
        let total: usize = self.tenants.iter().map(|t| t.sessions.len()).sum();
        ensure(total == self.sessions_total, || {
            format!("sessions counted {} but {total} exist", self.sessions_total)
        })?;
        ensure(total <= crate::SESSIONS_MAX, || {
            format!("{total} sessions, above SESSIONS_MAX")
        })
    }

    /// The agent count is the number of agents of all tenants.
    fn check_agents_are_counted(&self) -> Result<(), String> {
        let agents_total: usize = self.tenants.iter().map(|t| t.agents.len()).sum();
        ensure(agents_total == self.agents_total, || {
            format!(
                "agents counted {} but {agents_total} exist",
                self.agents_total
            )
        })
    }

    /// Each tenant's in-flight count is what the in-flight index lists for it, and the
    /// tenants list every reservation in flight.
    fn check_in_flight_is_counted(&self) -> Result<(), String> {
        let mut in_flight_total = 0usize;
        for (t, tenant) in (0u32..).zip(self.tenants.iter()) {
            let in_flight = self.in_flight_of(t).count();
            ensure(in_flight == tenant.in_flight as usize, || {
                format!(
                    "tenant {} counts {} reservations in flight, {in_flight} are listed",
                    tenant.id, tenant.in_flight
                )
            })?;
            in_flight_total += in_flight;
        }
        ensure(in_flight_total == self.reservations.len(), || {
            "tenants index a different number of reservations than are in flight".into()
        })
    }

    /// What the in-flight index lists for a tenant is that tenant's.
    fn check_tenant_indexes_its_own_reservations(
        &self,
        t: u32,
        tenant: &Tenant,
    ) -> Result<(), String> {
        for id in self.in_flight_of(t) {
            ensure(
                self.reservations
                    .get(&(t, id))
                    .is_some_and(|r| r.tenant == t),
                || {
                    format!(
                        "tenant {} indexes reservation r{id} it does not own",
                        tenant.id
                    )
                },
            )?;
        }
        Ok(())
    }

    /// Held amounts and in-flight counts equal the sums over the reservations in flight,
    /// and every per-agent hold has its counter.
    fn check_holds_sum_the_reservations(&self, t: u32, tenant: &Tenant) -> Result<(), String> {
        let expected = self.holds_of(t, tenant);
        let tenant_id = &tenant.id;
        for entry in &tenant.limits {
            if is_per_agent(&entry.spec.scope) || entry.spec.scope == Scope::EachSession {
                continue;
            }
            let subject = (entry.generation, None);
            check_counter(
                tenant_id,
                &expected,
                subject,
                &entry.spec.kind,
                &entry.counter,
            )?;
        }
        for (a, agent) in tenant.agents.iter_indexed() {
            for (i, c) in agent.counters.iter().enumerate() {
                ensure(
                    agent.counters[..i]
                        .iter()
                        .all(|o| o.generation != c.generation),
                    || format!("agent {}: two counters share a generation", agent.id),
                )?;
                let Some(entry) = tenant.limits.iter().find(|l| l.generation == c.generation)
                else {
                    continue;
                };
                let subject = (c.generation, Some(a));
                check_counter(tenant_id, &expected, subject, &entry.spec.kind, &c.counter)?;
            }
        }
        for &(generation, subject) in expected.keys() {
            if let Some(agent_index) = subject {
                let agent = tenant.agents.get(agent_index);
                let has_counter = agent.is_some_and(|a| a.counter_index(generation).is_some());
                ensure(has_counter, || {
                    format!("agent #{agent_index} holds generation {generation} without a counter")
                })?;
            }
        }
        Ok(())
    }

    /// The sum of the estimates held, and the number of holds, per (limit generation,
    /// agent for per-agent limits), over the tenant's reservations in flight.
    fn holds_of(&self, t: u32, tenant: &Tenant) -> Holds {
        let mut expected = Holds::new();
        for id in self.in_flight_of(t) {
            let Some(r) = self.reservations.get(&(t, id)) else {
                continue;
            };
            for &generation in r.holds.iter() {
                let Some(entry) = tenant.limits.iter().find(|l| l.generation == generation) else {
                    continue;
                };
                if entry.spec.scope == Scope::EachSession {
                    continue;
                }
                let subject = is_per_agent(&entry.spec.scope).then_some(r.agent);
                let sum = expected.entry((generation, subject)).or_default();
                sum.0 += u128::from(r.estimate.get(entry.spec.dimension));
                sum.1 += 1;
            }
        }
        // A lease holds its slice on each budget and `units` slots of each concurrency limit.
        for key in self.leases_of.range((t, 0)..=(t, u64::MAX)) {
            let Some(lease) = self.leases.get(key) else {
                continue;
            };
            for &generation in lease.holds.iter() {
                let Some(entry) = tenant.limits.iter().find(|l| l.generation == generation) else {
                    continue;
                };
                let subject = is_per_agent(&entry.spec.scope).then_some(lease.agent);
                let sum = expected.entry((generation, subject)).or_default();
                sum.0 += u128::from(lease.slice.get(entry.spec.dimension));
                sum.1 += u64::from(lease.units);
            }
        }
        expected
    }

    /// Each session's counters hold what the reservations in flight in it hold, and every
    /// reservation in a session refers to a session the tenant remembers.
    fn check_session_holds(&self, t: u32, tenant: &Tenant) -> Result<(), String> {
        let mut expected: HashMap<(u64, &SessionId), (u128, u64)> = HashMap::new();
        for id in self.in_flight_of(t) {
            let Some(r) = self.reservations.get(&(t, id)) else {
                continue;
            };
            let Some(session) = &r.session else {
                continue;
            };
            ensure(tenant.sessions.contains_key(session), || {
                format!("reservation r{id} refers to forgotten session {session}")
            })?;
            for &generation in r.holds.iter() {
                let entry = tenant.limits.iter().find(|l| l.generation == generation);
                let Some(entry) = entry.filter(|e| e.spec.scope == Scope::EachSession) else {
                    continue;
                };
                let sum = expected.entry((generation, session)).or_default();
                sum.0 += u128::from(r.estimate.get(entry.spec.dimension));
                sum.1 += 1;
            }
        }
        for (name, session) in &tenant.sessions {
            for c in &session.counters {
                let Some(entry) = tenant.limits.iter().find(|l| l.generation == c.generation)
                else {
                    continue;
                };
                let sums = expected.remove(&(c.generation, name)).unwrap_or_default();
                let mut one = Holds::new();
                one.insert((c.generation, None), sums);
                let subject = (c.generation, None);
                check_counter(&tenant.id, &one, subject, &entry.spec.kind, &c.counter)?;
            }
        }
        ensure(expected.is_empty(), || {
            format!(
                "tenant {}: a session holds a limit without a counter",
                tenant.id
            )
        })
    }
}

/// (limit generation, agent index for per-agent limits) -> (sum of estimates held, holds).
type Holds = HashMap<(u64, Option<u32>), (u128, u64)>;

/// A tenant's limits are sorted by unique id, with unique generations no later than the
/// tenant's last, each with a counter of its kind.
fn check_limits_are_sorted_with_unique_generations(tenant: &Tenant) -> Result<(), String> {
    let tenant_id = &tenant.id;
    for pair in tenant.limits.windows(2) {
        ensure(pair[0].spec.id < pair[1].spec.id, || {
            format!("tenant {tenant_id}: limits not sorted by unique id")
        })?;
    }
    for (i, entry) in tenant.limits.iter().enumerate() {
        ensure(
            entry.generation >= 1 && entry.generation <= tenant.generation_last,
            || {
                format!(
                    "tenant {tenant_id}: limit {} has a future generation",
                    entry.spec.id
                )
            },
        )?;
        ensure(
            tenant.limits[..i]
                .iter()
                .all(|o| o.generation != entry.generation),
            || format!("tenant {tenant_id}: two limits share a generation"),
        )?;
        ensure(entry.counter.matches(&entry.spec.kind), || {
            format!(
                "tenant {tenant_id}: limit {} has a counter of another kind",
                entry.spec.id
            )
        })?;
    }
    Ok(())
}

/// A budget's counter holds the sum of its holds; a concurrency counter counts them.
fn check_counter(
    tenant_id: &TenantId,
    expected: &Holds,
    (generation, subject): (u64, Option<u32>),
    kind: &LimitKind,
    counter: &Counter,
) -> Result<(), String> {
    let (held_sum, count) = expected
        .get(&(generation, subject))
        .copied()
        .unwrap_or_default();
    match (kind, counter) {
        (LimitKind::Budget { .. }, Counter::Budget { held, .. }) => ensure(
            u128::from(*held) == held_sum.min(u128::from(u64::MAX)),
            || {
                format!(
                    "tenant {tenant_id}: budget generation {generation} of {subject:?} holds {held}, reservations sum to {held_sum}"
                )
            },
        ),
        (LimitKind::Concurrency { .. }, Counter::Concurrency { in_flight }) => {
            ensure(*in_flight == count, || {
                format!(
                    "tenant {tenant_id}: concurrency generation {generation} of {subject:?} counts {in_flight}, {count} reservations hold it"
                )
            })
        }
        _ => Ok(()),
    }
}
