//! The ledger's invariants, checked in full: after every command in debug builds (while
//! the state is small enough for it to be cheap) and on every restored snapshot.

use std::collections::HashMap;

use super::commands::{
    AGENTS_MAX, AGENTS_PER_TENANT_MAX, EXPIRED_TOMBSTONES_MAX, RESERVATIONS_IN_FLIGHT_MAX,
    RESERVATIONS_IN_FLIGHT_PER_TENANT_MAX, TENANTS_MAX,
};
use super::dedup::DEDUP_ENTRIES_MAX;
use super::limits::{is_per_agent, Counter, LIMITS_PER_TENANT_MAX};
use super::{Ledger, LimitKind};

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

    /// Every invariant of the state; O(state).
    pub(super) fn check_invariants(&self) -> Result<(), String> {
        ensure(self.tenants.len() <= TENANTS_MAX, || {
            "more than TENANTS_MAX tenants".into()
        })?;
        ensure(
            self.reservations.len() <= RESERVATIONS_IN_FLIGHT_MAX,
            || "more than RESERVATIONS_IN_FLIGHT_MAX reservations".into(),
        )?;
        ensure(self.tombstones.len() <= EXPIRED_TOMBSTONES_MAX, || {
            "more than EXPIRED_TOMBSTONES_MAX tombstones".into()
        })?;
        ensure(self.answers.len() <= DEDUP_ENTRIES_MAX, || {
            "more than DEDUP_ENTRIES_MAX answers".into()
        })?;

        // Reservations and their indexes agree.
        ensure(self.by_expiry.len() == self.reservations.len(), || {
            "expiry index and reservations differ in size".into()
        })?;
        for (&id, r) in &self.reservations {
            ensure(id >= 1 && id <= self.reservations_issued, || {
                format!("reservation r{id} was never issued")
            })?;
            ensure(self.by_expiry.contains(&(r.expires_at_ms, id)), || {
                format!("reservation r{id} missing from the expiry index")
            })?;
            ensure(r.expires_at_ms > self.now_ms, || {
                format!("reservation r{id} should have expired")
            })?;
            let tenant = self
                .tenants
                .get(r.tenant)
                .ok_or_else(|| format!("reservation r{id} of unknown tenant #{}", r.tenant))?;
            ensure(self.in_flight.contains(&(r.tenant, id)), || {
                format!("reservation r{id} missing from its tenant's index")
            })?;
            ensure(tenant.agents.get(r.agent).is_some(), || {
                format!("reservation r{id} of unknown agent #{}", r.agent)
            })?;
        }
        ensure(
            self.tombstones_by_time.len() == self.tombstones.len(),
            || "tombstone index and tombstones differ in size".into(),
        )?;
        for (&id, t) in &self.tombstones {
            ensure(
                self.tenants
                    .get(t.reservation.tenant)
                    .is_some_and(|tenant| tenant.agents.get(t.reservation.agent).is_some()),
                || format!("tombstone r{id} of an unknown tenant or agent"),
            )?;
            ensure(
                self.tombstones_by_time.contains(&(t.expired_at_ms, id)),
                || format!("tombstone r{id} missing from its index"),
            )?;
            ensure(!self.reservations.contains_key(&id), || {
                format!("reservation r{id} both in flight and expired")
            })?;
        }

        let mut agents_total = 0usize;
        let mut in_flight_total = 0usize;
        for (t, tenant) in self.tenants.iter().enumerate() {
            let tenant_id = &tenant.id;
            agents_total += tenant.agents.len();
            let t_index = u32::try_from(t).unwrap_or(u32::MAX);
            let in_flight = self.in_flight_of(t_index).count();
            ensure(in_flight == tenant.in_flight as usize, || {
                format!(
                    "tenant {tenant_id} counts {} reservations in flight, {in_flight} are listed",
                    tenant.in_flight
                )
            })?;
            in_flight_total += in_flight;
            ensure(tenant.agents.len() <= AGENTS_PER_TENANT_MAX, || {
                format!("tenant {tenant_id} has more than AGENTS_PER_TENANT_MAX agents")
            })?;
            ensure(in_flight <= RESERVATIONS_IN_FLIGHT_PER_TENANT_MAX, || {
                format!("tenant {tenant_id} has too many reservations in flight")
            })?;
            ensure(tenant.limits.len() <= LIMITS_PER_TENANT_MAX, || {
                format!("tenant {tenant_id} has more than LIMITS_PER_TENANT_MAX limits")
            })?;
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
            for id in self.in_flight_of(t_index) {
                ensure(
                    self.reservations
                        .get(&id)
                        .is_some_and(|r| r.tenant as usize == t),
                    || format!("tenant {tenant_id} indexes reservation r{id} it does not own"),
                )?;
            }

            // Held amounts and in-flight counts equal the sums over reservations in flight.
            let mut expected: HashMap<(u64, Option<u32>), (u128, u64)> = HashMap::new();
            for id in self.in_flight_of(t_index) {
                let Some(r) = self.reservations.get(&id) else {
                    continue;
                };
                for &generation in r.holds.iter() {
                    let Some(entry) = tenant.limits.iter().find(|l| l.generation == generation)
                    else {
                        continue;
                    };
                    let subject = is_per_agent(&entry.spec.scope).then_some(r.agent);
                    let sum = expected.entry((generation, subject)).or_default();
                    sum.0 += u128::from(r.estimate.get(entry.spec.dimension));
                    sum.1 += 1;
                }
            }
            let check = |generation: u64,
                         subject: Option<u32>,
                         kind: &LimitKind,
                         counter: &Counter|
             -> Result<(), String> {
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
            };
            for entry in &tenant.limits {
                if is_per_agent(&entry.spec.scope) {
                    continue;
                }
                check(entry.generation, None, &entry.spec.kind, &entry.counter)?;
            }
            for (a, agent) in (0u32..).zip(tenant.agents.iter()) {
                let agent_id = &agent.id;
                for (i, c) in agent.counters.iter().enumerate() {
                    ensure(
                        agent.counters[..i]
                            .iter()
                            .all(|o| o.generation != c.generation),
                        || format!("agent {agent_id}: two counters share a generation"),
                    )?;
                    let Some(entry) = tenant.limits.iter().find(|l| l.generation == c.generation)
                    else {
                        continue;
                    };
                    check(c.generation, Some(a), &entry.spec.kind, &c.counter)?;
                }
            }
            for &(generation, subject) in expected.keys() {
                if let Some(agent_index) = subject {
                    let agent = tenant.agents.get(agent_index);
                    let has_counter = agent.is_some_and(|a| a.counter_index(generation).is_some());
                    ensure(has_counter, || {
                        format!(
                            "agent #{agent_index} holds generation {generation} without a counter"
                        )
                    })?;
                }
            }
        }
        ensure(agents_total == self.agents_total, || {
            format!(
                "agents counted {} but {agents_total} exist",
                self.agents_total
            )
        })?;
        ensure(agents_total <= AGENTS_MAX, || {
            "more than AGENTS_MAX agents".into()
        })?;
        ensure(self.in_flight.len() == self.reservations.len(), || {
            "the in-flight index and the reservations differ in size".into()
        })?;
        ensure(in_flight_total == self.reservations.len(), || {
            "tenants index a different number of reservations than are in flight".into()
        })?;
        self.answers.check(self.tenants.len())?;
        self.audit.check()
    }
}
