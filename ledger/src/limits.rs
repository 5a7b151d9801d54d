//! Limits in force and their counters: which limits apply to a call, whether a call fits,
//! and how holds, commits, releases, expiries and records move the counters.
//!
//! Every function here is O(1) per limit; finding the applicable limits is O(limits of the
//! tenant), bounded by `LIMITS_PER_TENANT_MAX`. Nothing here scans agents or reservations.

use serde::{Deserialize, Serialize};

use super::rate::{clamp_i64, Gcra, Tat};
use super::window::window_start_ms as window_start_at;
use super::{AgentId, Amounts, LimitKind, LimitSpec, Remaining, Scope, ToolId};

/// Most limits one tenant may have. Every reservation is checked against each that applies,
/// so this bounds the cost of a decision.
pub const LIMITS_PER_TENANT_MAX: usize = 64;

/// The running state of one limit for one subject (the tenant, or one agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Counter {
    /// `committed` belongs to the window starting at `window_start_ms`; `held` is the sum of
    /// the estimates of reservations in flight and carries over window boundaries.
    /// `alerted_percent`: the highest soft threshold crossed in this window (0: none).
    Budget {
        window_start_ms: u64,
        committed: u64,
        held: u64,
        alerted_percent: u8,
    },
    Rate {
        tat: Tat,
    },
    Concurrency {
        in_flight: u64,
    },
    /// When the subject's first call was held or charged (0: never).
    Duration {
        started_ms: u64,
    },
}

impl Counter {
    pub fn fresh(kind: &LimitKind) -> Self {
        match kind {
            LimitKind::Budget { .. } => Counter::Budget {
                window_start_ms: 0,
                committed: 0,
                held: 0,
                alerted_percent: 0,
            },
            LimitKind::Rate { .. } => Counter::Rate {
                tat: Tat::default(),
            },
            LimitKind::Concurrency { .. } => Counter::Concurrency { in_flight: 0 },
            LimitKind::Duration { .. } => Counter::Duration { started_ms: 0 },
        }
    }

    /// Whether this counter's shape matches the kind (a mismatch would be a ledger bug:
    /// changing a limit's kind gives it a new generation and fresh counters).
    pub fn matches(&self, kind: &LimitKind) -> bool {
        matches!(
            (self, kind),
            (Counter::Budget { .. }, LimitKind::Budget { .. })
                | (Counter::Rate { .. }, LimitKind::Rate { .. })
                | (Counter::Concurrency { .. }, LimitKind::Concurrency { .. })
                | (Counter::Duration { .. }, LimitKind::Duration { .. })
        )
    }
}

/// A limit in force. `generation` is unique within the tenant for the life of the ledger:
/// reservations remember the generations they hold, and per-agent counters are keyed by it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitEntry {
    pub spec: LimitSpec,
    pub generation: u64,
    /// The tenant-wide counter (scopes `Tenant` and `ToolTenant`); unused for per-agent
    /// scopes, whose counters live with each agent.
    pub counter: Counter,
}

/// A per-agent counter, keyed by the generation of its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCounter {
    pub generation: u64,
    pub counter: Counter,
}

/// Whether the scope keeps one counter per agent rather than one for the tenant.
pub fn is_per_agent(scope: &Scope) -> bool {
    matches!(
        scope,
        Scope::EachAgent | Scope::Agent(_) | Scope::ToolPerAgent(_)
    )
}

/// Budget, rate or concurrency: an `Agent(name)` override replaces the `EachAgent` limits
/// of the same dimension and class.
fn kind_class(kind: &LimitKind) -> u8 {
    match kind {
        LimitKind::Budget { .. } => 0,
        LimitKind::Rate { .. } => 1,
        LimitKind::Concurrency { .. } => 2,
        LimitKind::Duration { .. } => 3,
    }
}

/// A replacement keeps the counters (spend so far still counts) when it only changes a
/// cap: a budget's amount, a rate's burst, a concurrency max. Any other change starts the
/// limit afresh under a new generation.
pub fn keeps_counters(old: &LimitSpec, new: &LimitSpec) -> bool {
    if old.scope != new.scope || old.dimension != new.dimension {
        return false;
    }
    match (old.kind, new.kind) {
        (LimitKind::Budget { window: a, .. }, LimitKind::Budget { window: b, .. }) => a == b,
        (
            LimitKind::Rate {
                amount: a,
                period_ms: p,
                ..
            },
            LimitKind::Rate {
                amount: b,
                period_ms: q,
                ..
            },
        ) => a == b && p == q,
        (LimitKind::Concurrency { .. }, LimitKind::Concurrency { .. })
        | (LimitKind::Duration { .. }, LimitKind::Duration { .. }) => true,
        _ => false,
    }
}

/// Indexes (into the tenant's sorted limits) of the limits that apply to a call, without
/// allocating: there are at most `LIMITS_PER_TENANT_MAX` of them.
pub struct Applicable {
    indexes: [u8; LIMITS_PER_TENANT_MAX],
    len: usize,
}

impl Applicable {
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.indexes[..self.len].iter().map(|&i| usize::from(i))
    }
}

/// The limits that apply to `agent` calling `tool`, in limit-id order. `tool: None` means
/// any tool (for usage queries): every tool limit is included. `EachSession` limits apply
/// only to a call `in_session`.
pub fn applicable(
    limits: &[LimitEntry],
    agent: &AgentId,
    tool: Option<&ToolId>,
    in_session: bool,
) -> Applicable {
    debug_assert!(limits.len() <= LIMITS_PER_TENANT_MAX);
    let has_agent_override = limits
        .iter()
        .any(|l| matches!(&l.spec.scope, Scope::Agent(a) if a == agent));
    let mut out = Applicable {
        indexes: [0; LIMITS_PER_TENANT_MAX],
        len: 0,
    };
    for (index, entry) in limits.iter().enumerate().take(LIMITS_PER_TENANT_MAX) {
        let spec = &entry.spec;
        let applies = match &spec.scope {
            Scope::Tenant => true,
            Scope::EachAgent => {
                !has_agent_override
                    || !limits.iter().any(|o| {
                        matches!(&o.spec.scope, Scope::Agent(a) if a == agent)
                            && o.spec.dimension == spec.dimension
                            && kind_class(&o.spec.kind) == kind_class(&spec.kind)
                    })
            }
            Scope::Agent(a) => a == agent,
            Scope::ToolPerAgent(t) | Scope::ToolTenant(t) => tool.is_none_or(|tool| t == tool),
            Scope::EachSession => in_session,
        };
        if applies {
            // index < LIMITS_PER_TENANT_MAX = 64, so it fits a u8.
            out.indexes[out.len] = index as u8;
            out.len += 1;
        }
    }
    out
}

/// The verdict of one limit on one reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub fits: bool,
    /// What remains before this reservation; negative after overruns.
    pub remaining_now: i64,
    /// What would remain once this reservation is held.
    pub remaining_after: i64,
    /// For rate limits that do not fit: when the same request would (None: never).
    pub retry_after_ms: Option<u64>,
}

fn gcra(kind: &LimitKind) -> Option<Gcra> {
    match *kind {
        LimitKind::Rate {
            amount,
            period_ms,
            burst,
        } => Some(Gcra {
            amount,
            period_ms,
            burst,
        }),
        _ => None,
    }
}

/// A budget's committed spend as seen at `now_ms`: zero once its window has rolled.
fn committed_in_window(window_start_stored_ms: u64, committed: u64, window_now_ms: u64) -> u64 {
    if window_start_stored_ms == window_now_ms {
        committed
    } else {
        0
    }
}

/// Whether a reservation of `estimate` fits `spec` given its counter (None: never used).
pub fn evaluate(
    spec: &LimitSpec,
    counter: Option<&Counter>,
    estimate: &Amounts,
    now_ms: u64,
) -> Verdict {
    let fresh = Counter::fresh(&spec.kind);
    let counter = match counter {
        Some(c) if c.matches(&spec.kind) => c,
        _ => &fresh,
    };
    let units = estimate.get(spec.dimension);
    match (spec.kind, *counter) {
        (
            LimitKind::Budget { window, amount },
            Counter::Budget {
                window_start_ms,
                committed,
                held,
                ..
            },
        ) => {
            let committed =
                committed_in_window(window_start_ms, committed, window_start_at(window, now_ms));
            let remaining_now = i128::from(amount) - i128::from(committed) - i128::from(held);
            let remaining_after = remaining_now - i128::from(units);
            Verdict {
                fits: remaining_after >= 0,
                remaining_now: clamp_i64(remaining_now),
                remaining_after: clamp_i64(remaining_after),
                retry_after_ms: None,
            }
        }
        (LimitKind::Rate { .. }, Counter::Rate { tat }) => {
            let Some(g) = gcra(&spec.kind) else {
                return unreachable_verdict();
            };
            let tat = tat.get();
            let check = g.check(tat, now_ms, units);
            Verdict {
                fits: check.is_ok(),
                remaining_now: g.remaining(tat, now_ms),
                remaining_after: g.remaining(g.charge(tat, now_ms, units), now_ms),
                retry_after_ms: check.err().flatten(),
            }
        }
        (LimitKind::Concurrency { max }, Counter::Concurrency { in_flight }) => {
            let remaining_now = i128::from(max) - i128::from(in_flight);
            Verdict {
                fits: remaining_now >= 1,
                remaining_now: clamp_i64(remaining_now),
                remaining_after: clamp_i64(remaining_now - 1),
                retry_after_ms: None,
            }
        }
        (LimitKind::Duration { ms }, Counter::Duration { started_ms }) => {
            duration_verdict(ms, started_ms, now_ms)
        }
        _ => unreachable_verdict(),
    }
}

/// A duration limit's verdict: remaining is the time left, in ms; a subject that has not
/// started has all of it.
fn duration_verdict(ms: u64, started_ms: u64, now_ms: u64) -> Verdict {
    let elapsed = if started_ms == 0 {
        0
    } else {
        now_ms.saturating_sub(started_ms)
    };
    let remaining = i128::from(ms) - i128::from(elapsed);
    Verdict {
        fits: remaining > 0,
        remaining_now: clamp_i64(remaining),
        remaining_after: clamp_i64(remaining),
        retry_after_ms: None,
    }
}

/// Starts a duration counter at its subject's first held or charged call.
fn start(started_ms: &mut u64, now_ms: u64) {
    if *started_ms == 0 {
        *started_ms = now_ms.max(1);
    }
}

/// `counter.matches(kind)` was established above, so the shapes always pair up; a verdict
/// that denies is the fail-closed answer should that ever break.
fn unreachable_verdict() -> Verdict {
    debug_assert!(false, "counter shape does not match its limit");
    Verdict {
        fits: false,
        remaining_now: 0,
        remaining_after: 0,
        retry_after_ms: None,
    }
}

/// Resets the counter if its shape does not match the kind, and rolls a budget's window.
fn normalize(spec: &LimitSpec, counter: &mut Counter, now_ms: u64) {
    if !counter.matches(&spec.kind) {
        debug_assert!(false, "counter shape does not match its limit");
        *counter = Counter::fresh(&spec.kind);
    }
    if let (
        LimitKind::Budget { window, .. },
        Counter::Budget {
            window_start_ms,
            committed,
            alerted_percent,
            ..
        },
    ) = (spec.kind, counter)
    {
        let start = window_start_at(window, now_ms);
        if *window_start_ms != start {
            *window_start_ms = start;
            *committed = 0;
            *alerted_percent = 0;
        }
    }
}

/// Holds a granted reservation's estimate.
pub fn hold(spec: &LimitSpec, counter: &mut Counter, estimate: &Amounts, now_ms: u64) {
    normalize(spec, counter, now_ms);
    let units = estimate.get(spec.dimension);
    match counter {
        Counter::Budget { held, .. } => *held = held.saturating_add(units),
        Counter::Rate { tat } => {
            if let Some(g) = gcra(&spec.kind) {
                tat.set(g.charge(tat.get(), now_ms, units));
            }
        }
        Counter::Concurrency { in_flight } => *in_flight = in_flight.saturating_add(1),
        Counter::Duration { started_ms } => start(started_ms, now_ms),
    }
}

/// Ends a hold. `charge: Some(amounts)` commits that spend (a commit, or an expiry that
/// charges the estimate); `None` charges nothing (a release, or an expiry that releases).
pub fn settle(
    spec: &LimitSpec,
    counter: &mut Counter,
    estimate: &Amounts,
    charge: Option<&Amounts>,
    now_ms: u64,
) {
    normalize(spec, counter, now_ms);
    let held_units = estimate.get(spec.dimension);
    match counter {
        Counter::Budget {
            committed, held, ..
        } => {
            debug_assert!(
                *held >= held_units,
                "budget held below a reservation's hold"
            );
            *held = held.saturating_sub(held_units);
            if let Some(charge) = charge {
                *committed = committed.saturating_add(charge.get(spec.dimension));
            }
        }
        Counter::Rate { tat } => {
            if let Some(g) = gcra(&spec.kind) {
                let charged = charge.map_or(0, |c| c.get(spec.dimension));
                let value = if charged >= held_units {
                    g.charge(tat.get(), now_ms, charged - held_units)
                } else {
                    g.refund(tat.get(), now_ms, held_units - charged)
                };
                tat.set(value);
            }
        }
        Counter::Concurrency { in_flight } => {
            debug_assert!(*in_flight >= 1, "concurrency in flight below a reservation");
            *in_flight = in_flight.saturating_sub(1);
        }
        Counter::Duration { .. } => {}
    }
}

/// Adds to a lease's hold on this limit: `slice` more of its dimension (a budget holds it, a
/// rate takes it from the bucket now) and `units` more concurrency slots.
pub fn hold_slice(
    spec: &LimitSpec,
    counter: &mut Counter,
    slice: &Amounts,
    units: u32,
    now_ms: u64,
) {
    normalize(spec, counter, now_ms);
    let amount = slice.get(spec.dimension);
    match counter {
        Counter::Budget { held, .. } => *held = held.saturating_add(amount),
        Counter::Rate { tat } => {
            if let Some(g) = gcra(&spec.kind) {
                tat.set(g.charge(tat.get(), now_ms, amount));
            }
        }
        Counter::Concurrency { in_flight } => {
            *in_flight = in_flight.saturating_add(u64::from(units));
        }
        // Leases never name a session, so they never hold a duration limit.
        Counter::Duration { .. } => {}
    }
}

/// Gives back part of a lease's hold, unused: `slice` of its dimension (a budget releases
/// it, a rate refunds it to the bucket) and `units` concurrency slots.
pub fn shrink_slice(
    spec: &LimitSpec,
    counter: &mut Counter,
    slice: &Amounts,
    units: u32,
    now_ms: u64,
) {
    normalize(spec, counter, now_ms);
    let amount = slice.get(spec.dimension);
    match counter {
        Counter::Budget { held, .. } => {
            debug_assert!(*held >= amount, "budget held below a lease's hold");
            *held = held.saturating_sub(amount);
        }
        Counter::Rate { tat } => {
            if let Some(g) = gcra(&spec.kind) {
                tat.set(g.refund(tat.get(), now_ms, amount));
            }
        }
        Counter::Concurrency { in_flight } => {
            debug_assert!(
                *in_flight >= u64::from(units),
                "concurrency below a lease's units"
            );
            *in_flight = in_flight.saturating_sub(u64::from(units));
        }
        Counter::Duration { .. } => {}
    }
}

/// Charges one call decided inside a lease that still holds `held` of this limit's
/// dimension: the part of its actual within `held` moves from held to committed (a rate
/// took it at grant), the part above is charged directly (an overrun).
pub fn consume_slice(
    spec: &LimitSpec,
    counter: &mut Counter,
    held_by_lease: u64,
    actual: &Amounts,
    now_ms: u64,
) {
    normalize(spec, counter, now_ms);
    let amount = actual.get(spec.dimension);
    match counter {
        Counter::Budget {
            committed, held, ..
        } => {
            let moved = amount.min(held_by_lease);
            debug_assert!(*held >= moved, "budget held below a lease's hold");
            *held = held.saturating_sub(moved);
            *committed = committed.saturating_add(amount);
        }
        Counter::Rate { tat } => {
            let overrun = amount.saturating_sub(held_by_lease);
            if let (Some(g), true) = (gcra(&spec.kind), overrun > 0) {
                tat.set(g.charge(tat.get(), now_ms, overrun));
            }
        }
        // A call inside a lease runs in one of the lease's units.
        Counter::Concurrency { .. } | Counter::Duration { .. } => {}
    }
}

/// Ends an unsettled lease: its whole held `slice` is charged (its holder may have spent it
/// all), its `units` slots are freed.
pub fn expire_slice(
    spec: &LimitSpec,
    counter: &mut Counter,
    slice: &Amounts,
    units: u32,
    now_ms: u64,
) {
    normalize(spec, counter, now_ms);
    let amount = slice.get(spec.dimension);
    match counter {
        Counter::Budget {
            committed, held, ..
        } => {
            debug_assert!(*held >= amount, "budget held below a lease's hold");
            *held = held.saturating_sub(amount);
            *committed = committed.saturating_add(amount);
        }
        // The bucket was charged the slice at grant: it stays charged.
        Counter::Rate { .. } | Counter::Duration { .. } => {}
        Counter::Concurrency { in_flight } => {
            debug_assert!(
                *in_flight >= u64::from(units),
                "concurrency below a lease's units"
            );
            *in_flight = in_flight.saturating_sub(u64::from(units));
        }
    }
}

/// What a lease could take of this limit now: a budget's amount less committed and held,
/// a rate's burst capacity left, a concurrency limit's free slots; `own` (the slice and
/// units the asking lease already holds) counts as free. Never negative.
pub fn lease_room(
    spec: &LimitSpec,
    counter: Option<&Counter>,
    (own, own_units): (&Amounts, u32),
    now_ms: u64,
) -> u64 {
    let remaining = evaluate(spec, counter, &Amounts::default(), now_ms).remaining_now;
    let own = match spec.kind {
        LimitKind::Concurrency { .. } => u64::from(own_units),
        _ => own.get(spec.dimension),
    };
    let room = i128::from(remaining) + i128::from(own);
    u64::try_from(room.max(0)).unwrap_or(u64::MAX)
}

/// Charges spend that was not held: a record, or a late commit after a releasing expiry.
pub fn charge(spec: &LimitSpec, counter: &mut Counter, actual: &Amounts, now_ms: u64) {
    normalize(spec, counter, now_ms);
    let units = actual.get(spec.dimension);
    match counter {
        Counter::Budget { committed, .. } => *committed = committed.saturating_add(units),
        Counter::Rate { tat } => {
            if let Some(g) = gcra(&spec.kind) {
                tat.set(g.charge(tat.get(), now_ms, units));
            }
        }
        // Concurrency counts reservations in flight; spend without one occupies no slot.
        Counter::Concurrency { .. } => {}
        Counter::Duration { started_ms } => start(started_ms, now_ms),
    }
}

/// A late commit after an expiry that charged the estimate: moves the charge to the actual.
/// An upward correction lands in the current window. A downward one is applied only while
/// the window of the expiry charge is still current; once it has rolled, the charge
/// belonged to a past window and the current one owes nothing back.
pub fn true_up(
    spec: &LimitSpec,
    counter: &mut Counter,
    estimate: &Amounts,
    actual: &Amounts,
    expired_at_ms: u64,
    now_ms: u64,
) {
    normalize(spec, counter, now_ms);
    let charged = estimate.get(spec.dimension);
    let actual_units = actual.get(spec.dimension);
    match counter {
        Counter::Budget {
            window_start_ms,
            committed,
            ..
        } => {
            if actual_units >= charged {
                *committed = committed.saturating_add(actual_units - charged);
            } else if let LimitKind::Budget { window, .. } = spec.kind {
                if *window_start_ms == window_start_at(window, expired_at_ms) {
                    *committed = committed.saturating_sub(charged - actual_units);
                }
            }
        }
        Counter::Rate { tat } => {
            if let Some(g) = gcra(&spec.kind) {
                let value = if actual_units >= charged {
                    g.charge(tat.get(), now_ms, actual_units - charged)
                } else {
                    g.refund(tat.get(), now_ms, charged - actual_units)
                };
                tat.set(value);
            }
        }
        Counter::Concurrency { .. } | Counter::Duration { .. } => {}
    }
}

/// Whether `counter` decides nothing, at `now_ms` or later, that a fresh counter would
/// not: a budget holds nothing and its committed spend is zero or of a past window, a
/// rate's bucket is empty, a concurrency counter is zero. (Agent GC removes only agents
/// whose counters all are.)
pub fn inert(spec: &LimitSpec, counter: &Counter, now_ms: u64) -> bool {
    match (spec.kind, *counter) {
        (
            LimitKind::Budget { window, .. },
            Counter::Budget {
                window_start_ms,
                committed,
                held,
                ..
            },
        ) => held == 0 && (committed == 0 || window_start_ms != window_start_at(window, now_ms)),
        (LimitKind::Rate { .. }, Counter::Rate { tat }) => {
            gcra(&spec.kind).is_some_and(|g| g.level_units(tat.get(), now_ms) == 0)
        }
        (LimitKind::Concurrency { .. }, Counter::Concurrency { in_flight }) => in_flight == 0,
        (LimitKind::Duration { .. }, Counter::Duration { started_ms }) => started_ms == 0,
        _ => false,
    }
}

/// What a usage query reports for one counter: (used, held, remaining, window start).
pub fn usage(
    spec: &LimitSpec,
    counter: Option<&Counter>,
    now_ms: u64,
) -> (u64, u64, i64, Option<u64>) {
    let verdict = evaluate(spec, counter, &Amounts::default(), now_ms);
    let fresh = Counter::fresh(&spec.kind);
    let counter = match counter {
        Some(c) if c.matches(&spec.kind) => c,
        _ => &fresh,
    };
    match (spec.kind, *counter) {
        (
            LimitKind::Budget { window, .. },
            Counter::Budget {
                window_start_ms,
                committed,
                held,
                ..
            },
        ) => {
            let start = window_start_at(window, now_ms);
            let committed = committed_in_window(window_start_ms, committed, start);
            let window_start = (window != super::Window::Lifetime).then_some(start);
            (committed, held, verdict.remaining_now, window_start)
        }
        (LimitKind::Rate { .. }, Counter::Rate { tat }) => {
            let level = gcra(&spec.kind).map_or(0, |g| g.level_units(tat.get(), now_ms));
            let level = u64::try_from(level).unwrap_or(u64::MAX);
            (level, 0, verdict.remaining_now, None)
        }
        (LimitKind::Concurrency { .. }, Counter::Concurrency { in_flight }) => {
            (in_flight, 0, verdict.remaining_now, None)
        }
        (LimitKind::Duration { .. }, Counter::Duration { started_ms }) => {
            let elapsed = if started_ms == 0 {
                0
            } else {
                now_ms.saturating_sub(started_ms)
            };
            (elapsed, 0, verdict.remaining_now, None)
        }
        _ => (0, 0, verdict.remaining_now, None),
    }
}

/// The highest soft threshold a budget's committed spend has crossed in the current window
/// (0: none, or not a budget).
pub fn alerted(spec: &LimitSpec, counter: &Counter, now_ms: u64) -> u8 {
    match (spec.kind, *counter) {
        (
            LimitKind::Budget { window, .. },
            Counter::Budget {
                window_start_ms,
                alerted_percent,
                ..
            },
        ) if window_start_ms == window_start_at(window, now_ms) => alerted_percent,
        _ => 0,
    }
}

/// The cap a limit's remaining is measured against, for picking the tightest limit.
pub fn capacity(kind: &LimitKind) -> u64 {
    match *kind {
        LimitKind::Budget { amount, .. } => amount,
        LimitKind::Rate { burst, .. } => burst,
        LimitKind::Concurrency { max } => max,
        LimitKind::Duration { ms } => ms,
    }
    .max(1)
}

/// Whether `a` (remaining, capacity) is tighter than `b`: less remaining relative to its
/// cap, compared exactly by cross-multiplying.
pub fn tighter(a: (i64, u64), b: (i64, u64)) -> bool {
    i128::from(a.0) * i128::from(b.1) < i128::from(b.0) * i128::from(a.1)
}

pub fn remaining_of(spec: &LimitSpec, remaining: i64) -> Remaining {
    Remaining {
        limit_id: spec.id.clone(),
        dimension: spec.dimension,
        remaining,
    }
}
