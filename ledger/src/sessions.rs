//! Sessions: one run of an agent on one task, named by the client on each reserve and
//! record. Agent frameworks cap a run by iterations inside one process; a worker that
//! restarts, or a task fanned out over many workers, escapes such a cap. Limits of scope
//! `EachSession` count the whole run, whichever worker makes the call.
//!
//! - A session exists only in a tenant with at least one `EachSession` limit: it is created
//!   on the first reserve or record that names it, and a call that names none is not
//!   counted by those limits.
//! - Its counters are keyed by limit generation, like an agent's.
//! - It is forgotten `SESSION_IDLE_MS` after its last call: longer than any reservation
//!   can be in flight plus the time a late commit is accepted, so nothing in flight or
//!   remembered ever refers to a forgotten session. A session that keeps calling after its
//!   budget or duration is spent stays remembered, and denied.
//! - Each tenant holds at most its `sessions` quota, the ledger `SESSIONS_MAX`: a call that
//!   would create one more is refused (RESOURCE_EXHAUSTED) and changes nothing.
//!
//! Ticks drive forgetting in ledger time: each visits at most `SESSION_GC_VISITS_PER_TICK`
//! sessions from a cursor kept in the snapshot, so every replica forgets the same sessions
//! at the same log position.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};

use serde::{Deserialize, Serialize};

use super::commands::EXPIRED_RETENTION_MS;
use super::limits::{AgentCounter, Counter, LimitEntry};
use super::{Bound, LimitSpec, Outcome, Rejection, Scope, SessionId, TTL_MS_MAX};
use crate::Ledger;

/// Sessions remembered over all tenants.
pub const SESSIONS_MAX: usize = 1_000_000;
/// Most sessions one tenant's quota may allow.
pub const SESSIONS_PER_TENANT_MAX: usize = 100_000;
/// Default quota of sessions per tenant.
pub const SESSIONS_QUOTA_DEFAULT: u64 = 10_000;
/// How long after its last call a session is forgotten: the longest TTL plus the time a
/// late commit is still accepted (two hours).
pub const SESSION_IDLE_MS: u64 = TTL_MS_MAX + EXPIRED_RETENTION_MS;
/// Sessions one tick visits when forgetting idle ones.
pub const SESSION_GC_VISITS_PER_TICK: usize = 1_024;

/// One session's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Counters of the `EachSession` limits this session has used, by limit generation.
    pub counters: Vec<AgentCounter>,
    pub last_used_ms: u64,
}

impl Session {
    pub fn counter(&self, generation: u64) -> Option<&Counter> {
        self.counters
            .iter()
            .find(|c| c.generation == generation)
            .map(|c| &c.counter)
    }

    /// The counter of limit `generation`, created fresh on first use.
    pub fn counter_mut(&mut self, generation: u64, spec: &LimitSpec) -> &mut Counter {
        let index = match self
            .counters
            .iter()
            .position(|c| c.generation == generation)
        {
            Some(index) => index,
            None => {
                self.counters.push(AgentCounter {
                    generation,
                    counter: Counter::fresh(&spec.kind),
                });
                self.counters.len() - 1
            }
        };
        &mut self.counters[index].counter
    }

    /// Drops the counters of limits no longer in force, so there is at most one per limit.
    pub fn forget_stale_counters(&mut self, limits: &[LimitEntry]) {
        self.counters
            .retain(|c| limits.iter().any(|l| l.generation == c.generation));
    }
}

/// Whether the tenant counts sessions at all: only a limit of scope `EachSession` does.
pub fn counted(limits: &[LimitEntry]) -> bool {
    limits
        .iter()
        .any(|l| matches!(l.spec.scope, Scope::EachSession))
}

/// Where the next tick's sweep of idle sessions starts: a tenant index and the last session
/// visited there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCursor {
    tenant: u32,
    after: Option<SessionId>,
}

/// Visits up to `budget` sessions of `sessions` after `after`; removes those idle at
/// `now_ms`. Returns the last one visited (None: the end was reached) and how many were
/// removed.
fn sweep_tenant(
    sessions: &mut BTreeMap<SessionId, Session>,
    after: Option<&SessionId>,
    budget: usize,
    now_ms: u64,
) -> (Option<SessionId>, usize, usize) {
    let range = match after {
        Some(after) => sessions.range((Excluded(after.clone()), Unbounded)),
        None => sessions.range::<SessionId, _>(..),
    };
    let visited: Vec<(SessionId, bool)> = range
        .take(budget)
        .map(|(id, s)| {
            let idle = now_ms.saturating_sub(s.last_used_ms) >= SESSION_IDLE_MS;
            (id.clone(), idle)
        })
        .collect();
    let mut removed = 0;
    for (id, idle) in &visited {
        if *idle && sessions.remove(id).is_some() {
            removed += 1;
        }
    }
    let last = (visited.len() == budget)
        .then(|| visited.last().map(|(id, _)| id.clone()))
        .flatten();
    (last, visited.len(), removed)
}

impl Ledger {
    /// Marks the session a call names as used now, creating it on its first call. Nothing
    /// when the call names none or its tenant counts none. Some: the rejection of a call
    /// that would create a session beyond a bound, which changed nothing.
    pub(super) fn open_session(
        &mut self,
        now_ms: u64,
        t: u32,
        session: Option<&SessionId>,
    ) -> Option<Outcome> {
        let tenant = self.tenants.get_mut(t)?;
        let name = session.filter(|_| counted(&tenant.limits))?;
        if let Some(session) = tenant.sessions.get_mut(name) {
            session.last_used_ms = now_ms;
            return None;
        }
        if self.sessions_total >= SESSIONS_MAX {
            return Some(Outcome::Rejected(Rejection::bound_reached(
                Bound::Sessions,
                &tenant.id,
            )));
        }
        let quota = tenant.policy.quotas.sessions;
        if tenant.sessions.len() as u64 >= quota {
            return Some(Outcome::Rejected(Rejection::quota_reached(
                Bound::SessionsPerTenant,
                quota,
                &tenant.id,
            )));
        }
        let session = Session {
            counters: Vec::new(),
            last_used_ms: now_ms,
        };
        tenant.sessions.insert(name.clone(), session);
        self.sessions_total += 1;
        None
    }

    /// One tick's share of forgetting idle sessions, from the cursor.
    pub(super) fn forget_idle_sessions(&mut self, now_ms: u64) {
        if self.sessions_total == 0 {
            return;
        }
        let tenants = self.tenants.slots();
        let mut cursor = std::mem::take(&mut self.session_cursor);
        let mut budget = SESSION_GC_VISITS_PER_TICK;
        // Each tenant is visited at most once per tick, so a tick ends.
        for _ in 0..tenants {
            if budget == 0 {
                break;
            }
            if cursor.tenant as usize >= tenants {
                cursor = SessionCursor::default();
            }
            let Some(tenant) = self.tenants.get_mut(cursor.tenant) else {
                cursor = next_tenant(&cursor);
                continue;
            };
            let (last, visited, removed) =
                sweep_tenant(&mut tenant.sessions, cursor.after.as_ref(), budget, now_ms);
            self.sessions_total = self.sessions_total.saturating_sub(removed);
            budget -= visited;
            cursor = match last {
                Some(after) => SessionCursor {
                    tenant: cursor.tenant,
                    after: Some(after),
                },
                None => next_tenant(&cursor),
            };
        }
        self.session_cursor = cursor;
    }
}

fn next_tenant(cursor: &SessionCursor) -> SessionCursor {
    SessionCursor {
        tenant: cursor.tenant.saturating_add(1),
        after: None,
    }
}
