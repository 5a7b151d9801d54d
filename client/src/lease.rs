//! Budget leases on the client's side: a book of slots, one per (tenant, agent, tool), each
//! holding a slice of every limit that applies, inside which `Client::reserve` grants and
//! commits calls without a network round trip. A background task per client settles each
//! slot (reports the completed calls, renews and resizes the slice) at least every TTL/4 and
//! as soon as its remaining falls below half. The contract is docs/SPEC.md "Leases".
//!
//! The decision (`SlotState::grant`) and the bookkeeping of answers are plain functions on
//! state behind one `std::sync::Mutex` per slot, so the hot path is a lock, a few compares
//! and a push; everything that talks to the cluster runs outside that lock, one exchange
//! per slot at a time (the slot's `lane`, an async mutex that also keeps an unanswered
//! settle to resend with the same request id).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tollgate_proto::v1;

use crate::types::{duration_ms, Amounts};

/// Most (tenant, agent, tool) keys one client (and its clones) holds leases for; calls of
/// further keys go per call.
pub const LEASES_PER_CLIENT_MAX: usize = 1_024;
/// The client stops granting from a lease this long before `receipt + ttl`, so a clock
/// running fast cannot grant from a slice the cluster has reclaimed.
pub const LEASE_MARGIN_MS: u64 = 200;
/// Most completed calls one slot keeps unreported; at the bound it settles before granting.
pub const LEASE_SETTLE_CALLS_MAX: usize = 10_000;
/// Concurrency slots a client asks for per lease unless configured otherwise.
pub const LEASE_UNITS_DEFAULT: u32 = 64;
/// Most concurrency slots one lease may hold (the cluster's bound).
pub const LEASE_UNITS_MAX: u32 = 1_024;
/// A slice never asks for more than this many calls' worth of the last estimate.
pub const LEASE_SLICE_CALLS_MAX: u64 = 10_000;
/// How long a tenant without leases (refused OFF, or a cluster that has no Lease RPC) is
/// served per call before the client asks again.
pub const LEASE_OFF_MEMORY: Duration = Duration::from_secs(10);
/// After a refusal for room, a freeze or a trip, the key goes per call this long before the
/// next ask: the per-call reserve decides and audits the denial.
pub const LEASE_ASK_INTERVAL: Duration = Duration::from_millis(100);
/// Largest amount in any dimension the cluster accepts (its `AMOUNT_MAX`).
const AMOUNT_MAX: u64 = 1_000_000_000_000_000;
/// Longest id (fingerprint, shape) the cluster accepts (its `ID_BYTES_MAX`).
const ID_BYTES_MAX: usize = 128;
/// A lease's TTL when the cluster does not say (the cluster's `LEASE_TTL_MS_DEFAULT`).
const LEASE_TTL_DEFAULT: Duration = Duration::from_millis(2_000);
/// Fingerprints one slot tracks for the repetition guard; a new fingerprint beyond them
/// goes per call.
const FINGERPRINTS_PER_SLOT_MAX: usize = 256;
/// Grant times kept per fingerprint; a policy allowing more repeats than this sends the
/// fingerprint per call once that many fall in its window (the safe side).
const FINGERPRINT_TIMES_MAX: usize = 64;
/// A slot with no lease, nothing in flight and no grant for this long leaves the book.
const SLOT_IDLE_MAX: Duration = Duration::from_secs(30);
/// A lease with no grant for this many TTLs (and nothing in flight) is returned.
const LEASE_IDLE_TTLS: u32 = 2;

/// The terms of a lease as the cluster states them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Terms {
    pub(crate) lease_id: u64,
    pub(crate) slice: Amounts,
    pub(crate) units: u32,
    pub(crate) expires_at_ms: u64,
    pub(crate) ttl: Duration,
    pub(crate) repeat_max: u32,
    pub(crate) repeat_window: Duration,
}

impl From<v1::LeaseTerms> for Terms {
    fn from(t: v1::LeaseTerms) -> Self {
        Terms {
            lease_id: t.lease_id,
            slice: t.slice.map(Amounts::from).unwrap_or_default(),
            units: t.units.min(LEASE_UNITS_MAX),
            expires_at_ms: t.expires_at_ms,
            ttl: match t.ttl_ms {
                0 => LEASE_TTL_DEFAULT,
                ms => Duration::from_millis(ms),
            },
            repeat_max: t.repeat_max,
            repeat_window: Duration::from_millis(t.repeat_window_ms),
        }
    }
}

/// A lease the slot grants from.
#[derive(Debug)]
struct Held {
    terms: Terms,
    /// What is left of the slice to grant, per dimension (never below zero).
    remaining: Amounts,
    /// No grant at or after this instant: the first send of the exchange that brought the
    /// terms (never later than the cluster's grant) + ttl - margin.
    deadline: Instant,
    /// When the last settle was answered (or the lease granted).
    settled_at: Instant,
    /// The cluster wants the slice back: no more grants; the next settle returns it.
    recalled: bool,
}

/// What `SlotState::grant` decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Grant {
    /// Granted from the lease: the reservation holds a unit and the estimate.
    Granted { lease_id: u64, expires_at_ms: u64 },
    /// Reserve this call per call.
    PerCall,
    /// No lease yet: ask for one, then try again.
    Ask,
    /// Settle first (the slice is short, the report full, or the deadline near), then try
    /// again.
    Settle,
    /// Settle first so the cluster has seen every repetition of the fingerprint, then
    /// reserve this call per call.
    SettleThenPerCall,
}

/// What a slot knows; every field is read and written under the slot's mutex.
#[derive(Debug)]
pub(crate) struct SlotState {
    lease: Option<Held>,
    /// No ask before this instant (a refusal, or a tenant without leases).
    quiet_until: Option<Instant>,
    /// Local grants not yet committed, released or dropped.
    in_flight: u32,
    /// What the cluster must still hold for this lease beyond the calls already taken into
    /// a report: the estimates in flight and the actuals completed since the last report.
    outstanding: Amounts,
    /// Completed calls not yet taken into a report.
    calls: Vec<v1::LeaseCall>,
    /// Estimates granted since the last report, and since when: the demand that sizes `want`.
    demand: Amounts,
    demand_since: Instant,
    /// The last estimate granted or asked for: the floor of a slice.
    estimate_last: Amounts,
    /// The last grant or ask: an idle slot returns its lease, then leaves the book.
    used_at: Instant,
    /// Per fingerprint hash, the grant times in the repetition window, oldest first.
    fingerprints: HashMap<u64, VecDeque<Instant>>,
    /// A lease the cluster charged whole at expiry: calls of it completing late are covered.
    expired_lease: Option<u64>,
    /// Exchanges answered (lease asks and settles): a caller that waited for the lane knows
    /// whether one happened meanwhile.
    exchanges: u64,
    /// The background task has been asked to settle this slot.
    settle_wanted: bool,
}

fn half_spent(remaining: Amounts, slice: Amounts) -> bool {
    let below = |r: u64, s: u64| s > 0 && r.saturating_mul(2) < s;
    below(remaining.tokens, slice.tokens)
        || below(remaining.cost_micros, slice.cost_micros)
        || below(remaining.calls, slice.calls)
}

/// `a + b - c` per dimension, saturating: the remaining after a call settles.
fn add_sub(a: Amounts, b: Amounts, c: Amounts) -> Amounts {
    let f = |a: u64, b: u64, c: u64| a.saturating_add(b).saturating_sub(c);
    Amounts::new(
        f(a.tokens, b.tokens, c.tokens),
        f(a.cost_micros, b.cost_micros, c.cost_micros),
        f(a.calls, b.calls, c.calls),
    )
}

fn saturating_add(a: Amounts, b: Amounts) -> Amounts {
    add_sub(a, b, Amounts::ZERO)
}

/// `a * numerator / denominator` per dimension, saturating.
fn scale(a: Amounts, numerator: u128, denominator: u128) -> Amounts {
    let f = |x: u64| {
        let scaled = u128::from(x).saturating_mul(numerator) / denominator.max(1);
        u64::try_from(scaled).unwrap_or(u64::MAX)
    };
    Amounts::new(f(a.tokens), f(a.cost_micros), f(a.calls))
}

fn max_each(a: Amounts, b: Amounts) -> Amounts {
    Amounts::new(
        a.tokens.max(b.tokens),
        a.cost_micros.max(b.cost_micros),
        a.calls.max(b.calls),
    )
}

fn min_each(a: Amounts, b: Amounts) -> Amounts {
    Amounts::new(
        a.tokens.min(b.tokens),
        a.cost_micros.min(b.cost_micros),
        a.calls.min(b.calls),
    )
}

/// Amounts the cluster accepts: each dimension at most `AMOUNT_MAX` (a report carrying
/// more would be refused whole).
pub(crate) fn clamp_amounts(a: Amounts) -> Amounts {
    min_each(a, Amounts::new(AMOUNT_MAX, AMOUNT_MAX, AMOUNT_MAX))
}

/// An id the cluster accepts: 1 to `ID_BYTES_MAX` printable ASCII bytes, no space.
fn valid_id(id: &str) -> bool {
    (1..=ID_BYTES_MAX).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// True when a lease may decide `request`: no session, no usage (priced calls stay per
/// call), and nothing the cluster would refuse, so every reported call is valid.
pub(crate) fn leasable(request: &crate::types::ReserveRequest) -> bool {
    request.session.is_none()
        && request.usage.is_none()
        && clamp_amounts(request.estimate) == request.estimate
        && request.fingerprint.as_deref().is_none_or(valid_id)
        && request.shape.as_deref().is_none_or(valid_id)
}

/// The fingerprint as the repetition guard keys it.
pub(crate) fn fingerprint_key(fingerprint: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    fingerprint.hash(&mut hasher);
    hasher.finish()
}

/// What a completed call of a lease needs done besides the bookkeeping.
#[derive(Debug, PartialEq)]
pub(crate) enum Completed {
    /// Recorded in the slot; reported by the next settle.
    Kept,
    /// Its lease ended (returned or recalled) before the call completed: report it with a
    /// Record, which is always charged.
    Orphan(v1::LeaseCall),
    /// Its lease expired and was charged whole: the call is covered.
    Covered,
}

/// A report taken from a slot, ready to send.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) calls: Vec<v1::LeaseCall>,
    pub(crate) want: Amounts,
    pub(crate) lease_id: u64,
}

impl SlotState {
    pub(crate) fn new(now: Instant) -> SlotState {
        SlotState {
            lease: None,
            quiet_until: None,
            in_flight: 0,
            outstanding: Amounts::ZERO,
            calls: Vec::new(),
            demand: Amounts::ZERO,
            demand_since: now,
            estimate_last: Amounts::ZERO,
            used_at: now,
            fingerprints: HashMap::new(),
            expired_lease: None,
            exchanges: 0,
            settle_wanted: false,
        }
    }

    /// Decides one call: a local grant iff the estimate fits what remains in every
    /// dimension, a unit is free, the lease is before its deadline and not recalled, the
    /// report has room and the fingerprint would not reach the repetition policy.
    pub(crate) fn grant(
        &mut self,
        estimate: Amounts,
        fingerprint: Option<u64>,
        now: Instant,
    ) -> Grant {
        self.used_at = now;
        self.estimate_last = estimate;
        let Some(held) = &mut self.lease else {
            return match self.quiet_until {
                Some(until) if now < until => Grant::PerCall,
                _ => Grant::Ask,
            };
        };
        if held.recalled || now >= held.deadline {
            return Grant::PerCall;
        }
        if self.calls.len() >= LEASE_SETTLE_CALLS_MAX {
            return Grant::Settle;
        }
        if self.in_flight >= held.terms.units {
            return Grant::PerCall;
        }
        if !estimate.fits_within(held.remaining) {
            // Larger than a fair slice could ever be: per call. Else a refill may help.
            return if estimate.fits_within(held.terms.slice) {
                Grant::Settle
            } else {
                Grant::PerCall
            };
        }
        if let Some(key) = fingerprint {
            let window = held.terms.repeat_window;
            let repeat_max = held.terms.repeat_max;
            if repeat_max > 0 && !note_repeat(&mut self.fingerprints, key, repeat_max, window, now)
            {
                return Grant::SettleThenPerCall;
            }
        }
        held.remaining = held.remaining.saturating_sub(estimate);
        if half_spent(held.remaining, held.terms.slice) {
            self.settle_wanted = true;
        }
        self.outstanding = saturating_add(self.outstanding, estimate);
        self.demand = saturating_add(self.demand, estimate);
        self.in_flight += 1;
        Grant::Granted {
            lease_id: held.terms.lease_id,
            expires_at_ms: held.terms.expires_at_ms,
        }
    }

    /// A local grant completed with `call.actual` spent (its estimate when abandoned).
    pub(crate) fn complete(
        &mut self,
        lease_id: u64,
        estimate: Amounts,
        call: v1::LeaseCall,
    ) -> Completed {
        let Some(held) = self.lease.as_mut().filter(|h| h.terms.lease_id == lease_id) else {
            return if self.expired_lease == Some(lease_id) {
                Completed::Covered
            } else {
                Completed::Orphan(call)
            };
        };
        let actual = call.actual.map(Amounts::from).unwrap_or_default();
        held.remaining = add_sub(held.remaining, estimate, actual);
        if half_spent(held.remaining, held.terms.slice) {
            self.settle_wanted = true;
        }
        self.outstanding = add_sub(self.outstanding, actual, estimate);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.calls.push(call);
        if self.calls.len() >= LEASE_SETTLE_CALLS_MAX {
            self.settle_wanted = true;
        }
        Completed::Kept
    }

    /// A local grant was released: the call did not happen, its estimate is free again.
    pub(crate) fn release(&mut self, lease_id: u64, estimate: Amounts) {
        if let Some(held) = self.lease.as_mut().filter(|h| h.terms.lease_id == lease_id) {
            held.remaining = saturating_add(held.remaining, estimate);
            self.outstanding = self.outstanding.saturating_sub(estimate);
            self.in_flight = self.in_flight.saturating_sub(1);
        }
    }

    /// A new lease from a Lease ask sent first at `sent`.
    pub(crate) fn leased(&mut self, terms: Terms, sent: Instant, now: Instant) {
        self.exchanges += 1;
        self.quiet_until = None;
        self.in_flight = 0;
        self.outstanding = Amounts::ZERO;
        self.calls.clear();
        self.demand = Amounts::ZERO;
        self.demand_since = now;
        self.lease = Some(Held {
            remaining: terms.slice,
            deadline: local_deadline(sent, terms.ttl),
            settled_at: now,
            recalled: false,
            terms,
        });
    }

    /// No lease for this key until `until` (a refusal, or a tenant without leases).
    pub(crate) fn refused(&mut self, until: Instant) {
        self.exchanges += 1;
        self.quiet_until = Some(until);
    }

    /// Takes the completed calls into a report asking for `want` from now on (zero to
    /// return the lease); `None` without a lease.
    pub(crate) fn take_report(&mut self, returning: bool, now: Instant) -> Option<Report> {
        let held = self.lease.as_ref()?;
        let calls = std::mem::take(&mut self.calls);
        let taken = calls.iter().fold(Amounts::ZERO, |sum, call| {
            saturating_add(sum, call.actual.map(Amounts::from).unwrap_or_default())
        });
        self.outstanding = self.outstanding.saturating_sub(taken);
        let want = if returning {
            Amounts::ZERO
        } else {
            clamp_amounts(saturating_add(
                self.outstanding,
                self.free_wanted(held.terms.ttl, now),
            ))
        };
        self.demand = Amounts::ZERO;
        self.demand_since = now;
        self.settle_wanted = false;
        Some(Report {
            calls,
            want,
            lease_id: held.terms.lease_id,
        })
    }

    /// The free part of the slice to ask for: twice the demand per TTL, at least 8 of the
    /// last estimate, at most `LEASE_SLICE_CALLS_MAX` of it.
    fn free_wanted(&self, ttl: Duration, now: Instant) -> Amounts {
        let elapsed = now.saturating_duration_since(self.demand_since).as_micros();
        let per_two_ttls = scale(self.demand, ttl.as_micros().saturating_mul(2), elapsed);
        let floor = scale(self.estimate_last, 8, 1);
        let ceiling = scale(self.estimate_last, u128::from(LEASE_SLICE_CALLS_MAX), 1);
        min_each(max_each(per_two_ttls, floor), max_each(ceiling, floor))
    }

    /// The answer to a settle sent first at `sent`: the new terms (or the lease's end).
    /// Returns the completed calls that must go as Records (their lease ended before they
    /// could be reported inside it).
    pub(crate) fn settled(
        &mut self,
        answer: &v1::SettleResponse,
        sent: Instant,
        now: Instant,
    ) -> Vec<v1::LeaseCall> {
        self.exchanges += 1;
        match answer.lease {
            Some(terms) => {
                let terms = Terms::from(terms);
                self.lease = Some(Held {
                    remaining: terms.slice.saturating_sub(self.outstanding),
                    deadline: local_deadline(sent, terms.ttl),
                    settled_at: now,
                    recalled: answer.recalled,
                    terms,
                });
                Vec::new()
            }
            None => self.end(answer.expired),
        }
    }

    /// The lease is over (`expired`: charged whole by the cluster). Calls still in flight
    /// become orphans when they complete; completed ones not yet reported are returned.
    pub(crate) fn end(&mut self, expired: bool) -> Vec<v1::LeaseCall> {
        let Some(held) = self.lease.take() else {
            return Vec::new();
        };
        if expired {
            self.expired_lease = Some(held.terms.lease_id);
        }
        self.in_flight = 0;
        self.outstanding = Amounts::ZERO;
        let calls = std::mem::take(&mut self.calls);
        if expired {
            Vec::new()
        } else {
            calls
        }
    }

    /// Whether the background task should settle now, return the lease, or leave it.
    pub(crate) fn due(&self, now: Instant) -> Due {
        let Some(held) = &self.lease else {
            return Due::No;
        };
        let idle = now.saturating_duration_since(self.used_at);
        if self.in_flight == 0
            && self.calls.is_empty()
            && idle >= held.terms.ttl.saturating_mul(LEASE_IDLE_TTLS)
        {
            return Due::Return;
        }
        if held.recalled || self.settle_wanted || now >= self.next_settle_at(held) {
            Due::Settle
        } else {
            Due::No
        }
    }

    fn next_settle_at(&self, held: &Held) -> Instant {
        held.settled_at + held.terms.ttl / 4
    }

    /// When the background task should look at this slot again without being woken.
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        self.lease.as_ref().map(|held| self.next_settle_at(held))
    }

    /// True when the slot holds nothing and has not been used for `SLOT_IDLE_MAX`.
    pub(crate) fn removable(&self, now: Instant) -> bool {
        self.lease.is_none() && now.saturating_duration_since(self.used_at) >= SLOT_IDLE_MAX
    }

    /// The local deadline of the lease, if any.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.lease.as_ref().map(|held| held.deadline)
    }

    pub(crate) fn has_lease(&self) -> bool {
        self.lease.is_some()
    }

    /// True when the background task should settle this slot soon.
    pub(crate) fn wants_settle(&self) -> bool {
        self.settle_wanted
    }

    pub(crate) fn exchanges(&self) -> u64 {
        self.exchanges
    }

    #[cfg(test)]
    pub(crate) fn remaining(&self) -> Option<Amounts> {
        self.lease.as_ref().map(|held| held.remaining)
    }
}

/// The instant after which no grant is made from terms whose exchange was first sent at
/// `sent`.
fn local_deadline(sent: Instant, ttl: Duration) -> Instant {
    let usable = ttl.saturating_sub(Duration::from_millis(LEASE_MARGIN_MS));
    sent + usable
}

/// Counts a grant of fingerprint `key` at `now` unless it would be the `repeat_max`-th
/// within `window` (then false: the cluster must see it per call). Bounded: at most
/// `FINGERPRINTS_PER_SLOT_MAX` fingerprints of `FINGERPRINT_TIMES_MAX` times each.
fn note_repeat(
    fingerprints: &mut HashMap<u64, VecDeque<Instant>>,
    key: u64,
    repeat_max: u32,
    window: Duration,
    now: Instant,
) -> bool {
    let in_window = |t: &Instant| now.saturating_duration_since(*t) < window;
    if !fingerprints.contains_key(&key) && fingerprints.len() >= FINGERPRINTS_PER_SLOT_MAX {
        fingerprints.retain(|_, times| times.back().is_some_and(in_window));
        if fingerprints.len() >= FINGERPRINTS_PER_SLOT_MAX {
            return false;
        }
    }
    let times = fingerprints.entry(key).or_default();
    while times.front().is_some_and(|t| !in_window(t)) {
        times.pop_front();
    }
    let allowed = usize::try_from(repeat_max - 1).unwrap_or(usize::MAX);
    if times.len() >= allowed || times.len() >= FINGERPRINT_TIMES_MAX {
        return false;
    }
    times.push_back(now);
    true
}

/// What the background task does with a slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    No,
    Settle,
    Return,
}

#[derive(Debug)]
/// One (tenant, agent, tool): its state, and the lane through which its exchanges with the
/// cluster go one at a time.
pub(crate) struct Slot {
    pub(crate) tenant: String,
    pub(crate) agent: String,
    pub(crate) tool: String,
    /// The credentials of the client that opened the slot: its settles go with them.
    pub(crate) auth: crate::channel::Auth,
    state: Mutex<SlotState>,
    pub(crate) lane: Arc<tokio::sync::Mutex<Lane>>,
}

/// The exchange in progress on a slot.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    /// A settle sent and not answered, with when it was first sent: resent as is (same
    /// request id) until answered, so it is applied once.
    pub(crate) pending: Option<(v1::SettleRequest, Instant)>,
}

impl Slot {
    pub(crate) fn state(&self) -> MutexGuard<'_, SlotState> {
        // Nothing panics while the lock is held; a poisoned slot is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn is(&self, tenant: &str, agent: &str, tool: &str) -> bool {
        self.tenant == tenant && self.agent == agent && self.tool == tool
    }
}

/// The slots of one client and its clones, and the tenants that have no leases.
pub(crate) struct LeaseBook {
    inner: Mutex<BookInner>,
    /// Wakes the background task: a slot wants a settle.
    pub(crate) wake: Notify,
    /// The background task runs (at most one per book).
    task: AtomicBool,
}

/// The claim of a book's background task; released when the task ends (or its runtime).
pub(crate) struct TaskClaim(pub(crate) Arc<LeaseBook>);

impl TaskClaim {
    pub(crate) fn claim(book: &Arc<LeaseBook>) -> Option<TaskClaim> {
        book.task
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| TaskClaim(Arc::clone(book)))
    }
}

impl Drop for TaskClaim {
    fn drop(&mut self) {
        self.0.task.store(false, Ordering::Release);
    }
}

#[derive(Default)]
struct BookInner {
    /// Slots by the hash of their key (collisions share a bucket).
    slots: HashMap<u64, Vec<Arc<Slot>>>,
    count: usize,
    /// Tenants served per call until the instant (refused OFF, or no Lease RPC).
    off: HashMap<String, Instant>,
}

fn key_hash(tenant: &str, agent: &str, tool: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    (tenant, agent, tool).hash(&mut hasher);
    hasher.finish()
}

impl LeaseBook {
    pub(crate) fn new() -> LeaseBook {
        LeaseBook {
            inner: Mutex::new(BookInner::default()),
            wake: Notify::new(),
            task: AtomicBool::new(false),
        }
    }

    fn inner(&self) -> MutexGuard<'_, BookInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The slot of (tenant, agent, tool), opened if there is none and room; `None` when
    /// the tenant has no leases or the book is full.
    pub(crate) fn slot(
        &self,
        (tenant, agent, tool): (&str, &str, &str),
        auth: &crate::channel::Auth,
        now: Instant,
    ) -> Option<Arc<Slot>> {
        let hash = key_hash(tenant, agent, tool);
        let mut inner = self.inner();
        if let Some(slot) = inner
            .slots
            .get(&hash)
            .and_then(|bucket| bucket.iter().find(|s| s.is(tenant, agent, tool)))
        {
            return Some(Arc::clone(slot));
        }
        if inner.off.get(tenant).is_some_and(|until| now < *until) {
            return None;
        }
        if inner.count >= LEASES_PER_CLIENT_MAX {
            return None;
        }
        let slot = Arc::new(Slot {
            tenant: tenant.to_owned(),
            agent: agent.to_owned(),
            tool: tool.to_owned(),
            auth: auth.clone(),
            state: Mutex::new(SlotState::new(now)),
            lane: Arc::new(tokio::sync::Mutex::new(Lane::default())),
        });
        inner.slots.entry(hash).or_default().push(Arc::clone(&slot));
        inner.count += 1;
        Some(slot)
    }

    /// The tenant has no leases: per call until `until`; its slots are dropped.
    pub(crate) fn tenant_off(&self, tenant: &str, until: Instant, now: Instant) {
        let mut inner = self.inner();
        inner.off.retain(|_, until| now < *until);
        if inner.off.len() < LEASES_PER_CLIENT_MAX {
            inner.off.insert(tenant.to_owned(), until);
        }
        let mut removed = 0;
        for bucket in inner.slots.values_mut() {
            bucket.retain(|slot| {
                let keep = slot.tenant != tenant || slot.state().has_lease();
                removed += usize::from(!keep);
                keep
            });
        }
        inner.slots.retain(|_, bucket| !bucket.is_empty());
        inner.count -= removed;
    }

    /// Every slot, for the background task (a copy: no lock held while it works).
    pub(crate) fn all(&self) -> Vec<Arc<Slot>> {
        self.inner().slots.values().flatten().cloned().collect()
    }

    /// Drops slots that hold nothing and have been idle.
    pub(crate) fn sweep(&self, now: Instant) {
        let mut inner = self.inner();
        let mut removed = 0;
        for bucket in inner.slots.values_mut() {
            bucket.retain(|slot| {
                let keep = Arc::strong_count(slot) > 1 || !slot.state().removable(now);
                removed += usize::from(!keep);
                keep
            });
        }
        inner.slots.retain(|_, bucket| !bucket.is_empty());
        inner.count -= removed;
    }

    /// True while the background task runs.
    pub(crate) fn task_running(&self) -> bool {
        self.task.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner().count
    }
}

/// The wire form of a report.
pub(crate) fn settle_wire(slot: &Slot, report: Report, units: u32) -> v1::SettleRequest {
    v1::SettleRequest {
        request_id: crate::types::new_request_id(),
        tenant: slot.tenant.clone(),
        lease_id: report.lease_id,
        calls: report.calls,
        want: Some(report.want.into()),
        units,
        ttl_ms: duration_ms(Duration::ZERO),
    }
}

mod exchange;
#[cfg(test)]
mod tests;

pub(crate) use exchange::Leased;
