//! Agent GC: an agent that has been idle for `AGENT_IDLE_MS` and whose state decides nothing
//! that a fresh agent's would not is removed, so that agent names that come and go do not
//! fill `AGENTS_MAX` (or a tenant's quota) for good.
//!
//! An agent is removed only when all of these hold, so that removing it never changes a
//! decision: a call by the same name later starts a fresh agent that decides exactly as the
//! old one would have.
//! - No reservation in flight and no tombstone refers to it (`Agent::refs`), so no index in
//!   use goes stale, and it holds nothing.
//! - It is not frozen, and has no trip on record, not even one whose cool-down has ended:
//!   such a trip resets the agent's runaway state at its next reserve, wiping spend noted
//!   since (by records), which a fresh agent would keep.
//! - Each counter of a limit in force is as good as fresh: a budget holds nothing and its
//!   committed spend is of a past window (or zero), a rate's bucket is empty, a concurrency
//!   counter is zero.
//! - Its runaway state has run out under any policy: no fingerprint sighting counts any
//!   more, and its velocity average and each of its shapes' averages is zero or decayed to
//!   zero (`VELOCITY_DECAY_WINDOWS_MAX` windows of its length after its last spend or call).
//!   A shape still tracked then is the least recently seen, so it is forgotten first, as
//!   an empty slot of a fresh agent would be filled first.
//!
//! Ticks drive it, in ledger time: each tick visits at most `AGENT_GC_VISITS_PER_TICK` agent
//! slots, from a cursor (in the snapshot) that walks tenants and their agents in index
//! order, so every replica removes the same agents at the same log position. A removed
//! agent is not audited and is unknown to queries and admin commands until it calls again,
//! as before its first call.

use serde::{Deserialize, Serialize};

use super::limits::{self, LimitEntry};
use super::state::Agent;
use super::Ledger;

/// How long an agent must go unused before it may be removed: one day of ledger time.
pub const AGENT_IDLE_MS: u64 = 86_400_000;
/// Agent slots one tick visits: a full sweep of `AGENTS_MAX` agents takes about half an
/// hour of one-second ticks, and a tick stays cheap.
pub const AGENT_GC_VISITS_PER_TICK: usize = 1_024;

/// Where the next tick's sweep starts: (tenant index, agent slot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcCursor {
    tenant: u32,
    agent: u32,
}

/// Whether `agent` may be removed at `now_ms` (see the module's rules).
pub fn collectable(agent: &Agent, limits: &[LimitEntry], now_ms: u64) -> bool {
    let idle_ms = now_ms.saturating_sub(agent.last_used_ms);
    if agent.refs > 0 || agent.frozen || idle_ms < AGENT_IDLE_MS {
        return false;
    }
    let runaway_inert = agent.runaway.as_deref().is_none_or(|runaway| {
        runaway.trip.is_none()
            && runaway.repetition_forgotten(now_ms)
            && runaway.velocity_forgotten(now_ms)
    });
    runaway_inert
        && agent.counters.iter().all(|c| {
            limits
                .iter()
                .find(|l| l.generation == c.generation)
                .is_none_or(|l| limits::inert(&l.spec, &c.counter, now_ms))
        })
}

impl Ledger {
    /// One tick's share of agent GC: visits up to `AGENT_GC_VISITS_PER_TICK` agent slots
    /// from the cursor and removes the collectable agents among them.
    pub(super) fn collect_idle_agents(&mut self, now_ms: u64) {
        #[cfg(test)]
        if self.test_knobs.agent_gc_off {
            return;
        }
        let tenants = self.tenants.slots();
        if tenants == 0 {
            return;
        }
        let mut cursor = self.gc_cursor;
        for _ in 0..AGENT_GC_VISITS_PER_TICK {
            if cursor.tenant as usize >= tenants {
                cursor = GcCursor::default();
            }
            let Some(tenant) = self.tenants.get_mut(cursor.tenant) else {
                cursor.tenant += 1;
                continue;
            };
            if cursor.agent as usize >= tenant.agents.slots() {
                cursor = GcCursor {
                    tenant: cursor.tenant + 1,
                    agent: 0,
                };
                continue;
            }
            let remove = tenant
                .agents
                .get(cursor.agent)
                .is_some_and(|agent| collectable(agent, &tenant.limits, now_ms));
            if remove && tenant.agents.remove(cursor.agent).is_some() {
                self.agents_total = self.agents_total.saturating_sub(1);
            }
            cursor.agent += 1;
        }
        self.gc_cursor = cursor;
    }
}
