//! What clients saw, and the checker that holds the cluster to docs/SPEC.md with it.
//!
//! A history is one [`Event`] per operation a client made (JSON lines on disk). [`check`]
//! replays the cluster's own audit trail (its total order of decisions, including expiries
//! and the grants of clients that crashed) through a small reference model of tenant-wide
//! lifetime budgets, then compares every acknowledged answer with the audit record of its
//! request id. Everything is one pass over sorted or hashed data: O(n log n) in the number
//! of events plus audit records. It never talks to a cluster and decides nothing.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tollgate_ledger::{Amounts, AuditEvent, AuditRecord, Dimension, LimitKind};

/// Most violations one report lists in full; beyond it they are counted, so a badly
/// broken run does not print a million lines.
pub const VIOLATIONS_LISTED_MAX: usize = 200;

/// One operation a client made, as it saw it. Times are the client's (the simulator's
/// shifted clock, unix milliseconds); `invoked_ms <= completed_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Which simulated client (worker) made it.
    pub client: u64,
    pub request_id: String,
    pub op: Op,
    pub invoked_ms: u64,
    pub completed_ms: u64,
    pub result: OpResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    Reserve {
        tenant: String,
        agent: String,
        tool: String,
        tokens: u64,
        cost_micros: u64,
        calls: u64,
        ttl_ms: u64,
    },
    Commit {
        tenant: String,
        reservation_id: u64,
        tokens: u64,
        cost_micros: u64,
        calls: u64,
    },
    Release {
        tenant: String,
        reservation_id: u64,
    },
    Record {
        tenant: String,
        agent: String,
        tool: String,
        tokens: u64,
        cost_micros: u64,
        calls: u64,
    },
}

impl Op {
    pub fn tenant(&self) -> &str {
        match self {
            Op::Reserve { tenant, .. }
            | Op::Commit { tenant, .. }
            | Op::Release { tenant, .. }
            | Op::Record { tenant, .. } => tenant,
        }
    }

    /// The amounts the operation carries: the estimate of a reserve, the actual of a commit
    /// or record, nothing for a release.
    pub fn amounts(&self) -> Amounts {
        match *self {
            Op::Reserve {
                tokens,
                cost_micros,
                calls,
                ..
            }
            | Op::Commit {
                tokens,
                cost_micros,
                calls,
                ..
            }
            | Op::Record {
                tokens,
                cost_micros,
                calls,
                ..
            } => Amounts {
                tokens,
                cost_micros,
                calls,
            },
            Op::Release { .. } => Amounts::default(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Op::Reserve { .. } => "reserve",
            Op::Commit { .. } => "commit",
            Op::Release { .. } => "release",
            Op::Record { .. } => "record",
        }
    }

    /// The audit record kind this operation produces when it takes effect.
    fn kind(&self) -> Kind {
        match self {
            Op::Reserve { .. } => Kind::Reserve,
            Op::Commit { .. } => Kind::Commit,
            Op::Release { .. } => Kind::Release,
            Op::Record { .. } => Kind::Record,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum OpResult {
    /// A reserve was granted.
    Granted { reservation_id: u64, log_index: u64 },
    /// A reserve was denied (limit, frozen or tripped); `reason` is for people.
    Denied { reason: String, log_index: u64 },
    /// A commit, release or record took effect.
    Done { log_index: u64 },
    /// Definite: the cluster said no and changed nothing (NOT_FOUND, FAILED_PRECONDITION...).
    Rejected { code: String, message: String },
    /// Timed out or unavailable: it may or may not have taken effect.
    Ambiguous { error: String },
    /// Decided by the client inside lease `lease_id`, without the cluster: a reserve granted,
    /// or its commit or release. The cluster hears of the call at the lease's next settle,
    /// or never, if the client dies first (the lease's expiry then charges the whole slice).
    Local { lease_id: u64 },
}

impl OpResult {
    /// The log index of an acknowledged answer; `None` for rejections, ambiguous answers and
    /// an index of 0 (unknown: the client could not read it).
    pub fn log_index(&self) -> Option<u64> {
        match *self {
            OpResult::Granted { log_index, .. }
            | OpResult::Denied { log_index, .. }
            | OpResult::Done { log_index } => (log_index > 0).then_some(log_index),
            OpResult::Rejected { .. } | OpResult::Ambiguous { .. } | OpResult::Local { .. } => None,
        }
    }

    pub fn is_acknowledged(&self) -> bool {
        matches!(
            self,
            OpResult::Granted { .. }
                | OpResult::Denied { .. }
                | OpResult::Done { .. }
                | OpResult::Local { .. }
        )
    }
}

/// Collects events from many tasks. Clones share one history.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&self, event: Event) {
        debug_assert!(
            event.invoked_ms <= event.completed_ms,
            "event ends before it starts"
        );
        self.lock().push(event);
    }

    /// How many events have been recorded so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A copy of the events so far, in the order they were recorded.
    pub fn events(&self) -> Vec<Event> {
        self.lock().clone()
    }

    /// Takes the events out (clones of this recorder are left empty).
    pub fn into_events(self) -> Vec<Event> {
        std::mem::take(&mut *self.lock())
    }

    /// Writes the events as JSON lines, one event a line.
    pub fn write_jsonl(&self, path: &Path) -> anyhow::Result<()> {
        write_jsonl(path, &self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        // A panic while holding the lock leaves a valid Vec; keep recording.
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Writes events as JSON lines.
pub fn write_jsonl(path: &Path, events: &[Event]) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for event in events {
        serde_json::to_writer(&mut out, event)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads a history written by [`Recorder::write_jsonl`]; blank lines are skipped.
pub fn load_jsonl(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut events = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not an event", path.display(), number + 1))?;
        events.push(event);
    }
    Ok(events)
}

/// A budget the checker holds the cluster to: scope Tenant (every call of the tenant
/// counts), window Lifetime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSpec {
    pub tenant: String,
    pub limit_id: String,
    pub dimension: Dimension,
    pub amount: u64,
}

/// What the cluster reports for a budget at the end of the run (from a usage query taken
/// when nothing was in flight that could still change it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalUsage {
    pub tenant: String,
    pub limit_id: String,
    pub used: u64,
    pub held: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Events checked.
    pub ops: u64,
    /// Events with a definite answer: granted, denied or done.
    pub acknowledged: u64,
    /// Events the cluster refused without effect.
    pub rejected: u64,
    /// Events whose effect is unknown (timeouts, unavailability).
    pub ambiguous: u64,
    /// Each broken promise, in words; empty when the history is consistent.
    pub violations: Vec<String>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Collects violations up to `VIOLATIONS_LISTED_MAX`, counting the rest.
#[derive(Default)]
struct Violations {
    listed: Vec<String>,
    unlisted: u64,
}

impl Violations {
    fn push(&mut self, violation: String) {
        if self.listed.len() < VIOLATIONS_LISTED_MAX {
            self.listed.push(violation);
        } else {
            self.unlisted += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.unlisted > 0 {
            self.listed.push(format!(
                "... and {} more violations (only VIOLATIONS_LISTED_MAX = {VIOLATIONS_LISTED_MAX} are listed)",
                self.unlisted
            ));
        }
        self.listed
    }
}

/// The class of an audit record for the exactly-once check: a reserve is decided once
/// (grant or deny); a trip shares its reserve's request id by design (SPEC: the trip and
/// its cause are audited next to the denial), so it is its own class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Reserve,
    Commit,
    Release,
    Record,
    Trip,
    Admin,
    Expire,
    /// A charge's consequence: one request may cross several thresholds, so never indexed.
    Threshold,
    /// A lease granted, renewed, returned or expired: one settle may renew a lease and
    /// return another's rest, so never indexed.
    Lease,
    /// One call decided inside a lease, reported by a settle.
    LeaseCall,
}

impl Kind {
    fn of(event: &AuditEvent) -> Kind {
        match event {
            AuditEvent::Grant | AuditEvent::Deny(_) => Kind::Reserve,
            AuditEvent::Commit { .. } => Kind::Commit,
            AuditEvent::Release => Kind::Release,
            AuditEvent::Record { .. } => Kind::Record,
            AuditEvent::Trip(_) => Kind::Trip,
            AuditEvent::Expire { .. } => Kind::Expire,
            AuditEvent::TenantPut
            | AuditEvent::LimitPut(_)
            | AuditEvent::LimitDelete(_)
            | AuditEvent::Freeze
            | AuditEvent::Unfreeze
            | AuditEvent::TripReset
            | AuditEvent::KeyCreate(_)
            | AuditEvent::KeyRotate(_)
            | AuditEvent::KeyRevoke(_)
            | AuditEvent::PricePut(_)
            | AuditEvent::PriceDelete(_) => Kind::Admin,
            AuditEvent::ThresholdCrossed(_) => Kind::Threshold,
            AuditEvent::LeaseGrant | AuditEvent::LeaseReturn { .. } | AuditEvent::LeaseExpire => {
                Kind::Lease
            }
            AuditEvent::LeaseCall { .. } => Kind::LeaseCall,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Reserve => "grant/deny",
            Kind::Commit => "commit",
            Kind::Release => "release",
            Kind::Record => "record",
            Kind::Trip => "trip",
            Kind::Admin => "admin",
            Kind::Expire => "expire",
            Kind::Threshold => "threshold crossing",
            Kind::Lease => "lease",
            Kind::LeaseCall => "call in a lease",
        }
    }
}

fn describe(record: &AuditRecord) -> String {
    let mut words = format!(
        "audit seq {} at {} ms: {}",
        record.seq,
        record.at_ms,
        event_name(&record.event)
    );
    if let Some(id) = record.reservation_id {
        words.push_str(&format!(" of reservation {id}"));
    }
    if let Some(agent) = &record.agent {
        words.push_str(&format!(" by agent {agent}"));
    }
    if let Some(request_id) = &record.request_id {
        words.push_str(&format!(" (request {request_id})"));
    }
    words
}

fn event_name(event: &AuditEvent) -> &'static str {
    match event {
        AuditEvent::Grant => "grant",
        AuditEvent::Deny(_) => "deny",
        AuditEvent::Commit { late: true, .. } => "late commit",
        AuditEvent::Commit { .. } => "commit",
        AuditEvent::Release => "release",
        AuditEvent::Expire { .. } => "expiry",
        AuditEvent::Record { .. } => "record",
        AuditEvent::TenantPut => "tenant put",
        AuditEvent::LimitPut(_) => "limit put",
        AuditEvent::LimitDelete(_) => "limit delete",
        AuditEvent::Freeze => "freeze",
        AuditEvent::Unfreeze => "unfreeze",
        AuditEvent::Trip(_) => "trip",
        AuditEvent::TripReset => "trip reset",
        AuditEvent::KeyCreate(_) => "key create",
        AuditEvent::KeyRotate(_) => "key rotate",
        AuditEvent::KeyRevoke(_) => "key revoke",
        AuditEvent::PricePut(_) => "price put",
        AuditEvent::PriceDelete(_) => "price delete",
        AuditEvent::ThresholdCrossed(_) => "threshold crossed",
        AuditEvent::LeaseGrant => "lease grant",
        AuditEvent::LeaseCall { .. } => "call in a lease",
        AuditEvent::LeaseReturn { .. } => "lease return",
        AuditEvent::LeaseExpire => "lease expiry",
    }
}

/// Checks a history against the cluster's audit trail, budgets and final usage.
///
/// `audit` must be the whole trail of the tenants in `events` and `budgets` (any order; it
/// is sorted by seq here). Reports, each in words: (1) a grant that took committed + held
/// above a budget; (2) totals of the audit replay that differ from `final_usage`, and
/// acknowledged commits or records missing from the audit or with other amounts; (3) a
/// request id applied twice; (4) answers that disagree with the audit (granted vs denied,
/// reservation id), real-time order not respected by log indexes, and audit order that
/// disagrees with log-index order.
pub fn check(
    events: &[Event],
    audit: &[AuditRecord],
    budgets: &[BudgetSpec],
    final_usage: &[FinalUsage],
) -> CheckReport {
    let mut violations = Violations::default();
    let mut audit: Vec<&AuditRecord> = audit.iter().collect();
    audit.sort_by_key(|r| r.seq);

    check_audit_order(&audit, &mut violations);
    for budget in budgets {
        check_budget(budget, &audit, final_usage, &mut violations);
    }
    let by_request = index_by_request(&audit, &mut violations);
    check_answers(events, &by_request, &mut violations);
    let ops = logical_ops(events, &by_request, &mut violations);
    check_real_time(&ops, &mut violations);
    check_log_order(&ops, &mut violations);

    let mut report = CheckReport {
        ops: events.len() as u64,
        ..CheckReport::default()
    };
    for event in events {
        match event.result {
            OpResult::Granted { .. }
            | OpResult::Denied { .. }
            | OpResult::Done { .. }
            | OpResult::Local { .. } => report.acknowledged += 1,
            OpResult::Rejected { .. } => report.rejected += 1,
            OpResult::Ambiguous { .. } => report.ambiguous += 1,
        }
    }
    report.violations = violations.finish();
    report
}

/// Sequence numbers are unique and time never runs backwards along them (SPEC: time comes
/// from the leader's stamp, which never decreases).
fn check_audit_order(audit: &[&AuditRecord], violations: &mut Violations) {
    for pair in audit.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        if before.seq == after.seq {
            violations.push(format!(
                "audit seq {} appears twice: the export is corrupt or two replicas' trails were mixed",
                after.seq
            ));
        }
        if after.at_ms < before.at_ms {
            violations.push(format!(
                "audit time runs backwards: seq {} at {} ms follows seq {} at {} ms; the leader's timestamps must never decrease",
                after.seq, after.at_ms, before.seq, before.at_ms
            ));
        }
    }
}

/// What the reference model remembers of an expired reservation, for a late commit.
struct Expired {
    estimate: u64,
    charged: bool,
}

/// Replays the audit trail through a reference model of one tenant-wide lifetime budget:
/// held per reservation and per lease, committed as a sum. Only a grant (of a reservation,
/// or of a lease or its top-up) may not take committed + held above the amount; commits
/// above their estimate, records, a lease's calls beyond its slice and expiry charges may.
///
/// If the trail holds the limit's `LimitPut`, reservations granted before it do not count
/// (the ledger does not charge a limit that was added while they were in flight), and a
/// later `LimitPut` with a budget kind updates the amount.
fn check_budget(
    budget: &BudgetSpec,
    audit: &[&AuditRecord],
    final_usage: &[FinalUsage],
    violations: &mut Violations,
) {
    let mine = |r: &&&AuditRecord| {
        r.tenant
            .as_ref()
            .is_some_and(|t| t.as_str() == budget.tenant)
    };
    let put_of_limit = |r: &AuditRecord| matches!(&r.event, AuditEvent::LimitPut(spec) if spec.id.as_str() == budget.limit_id);
    let mut model = BudgetModel {
        budget,
        name: format!(
            "budget {}/{} ({:?}, amount {})",
            budget.tenant, budget.limit_id, budget.dimension, budget.amount
        ),
        active: !audit.iter().filter(mine).any(|r| put_of_limit(r)),
        amount: budget.amount,
        held: HashMap::new(),
        held_sum: 0,
        committed: 0,
        expired: HashMap::new(),
        leases: HashMap::new(),
    };
    for record in audit.iter().filter(mine) {
        model.apply(record, violations);
    }
    if let Some(usage) = final_usage
        .iter()
        .find(|u| u.tenant == budget.tenant && u.limit_id == budget.limit_id)
    {
        model.check_final_usage(usage, violations);
    }
}

/// The reference model of one budget while its tenant's trail is replayed.
struct BudgetModel<'a> {
    budget: &'a BudgetSpec,
    /// How violations name the budget.
    name: String,
    /// Whether the limit exists yet at this point of the trail.
    active: bool,
    amount: u64,
    held: HashMap<u64, u64>,
    held_sum: u64,
    committed: u64,
    expired: HashMap<u64, Expired>,
    /// What each live lease holds of this budget's dimension.
    leases: HashMap<u64, u64>,
}

impl BudgetModel<'_> {
    fn dim(&self, amounts: &Amounts) -> u64 {
        amounts.get(self.budget.dimension)
    }

    fn apply(&mut self, record: &AuditRecord, violations: &mut Violations) {
        let reservation = record.reservation_id.map(|id| id.0);
        match (&record.event, reservation) {
            (AuditEvent::LimitPut(spec), _) if spec.id.as_str() == self.budget.limit_id => {
                self.active = true;
                if let LimitKind::Budget { amount, .. } = spec.kind {
                    self.amount = amount;
                }
            }
            (AuditEvent::Grant, None) if self.active => violations.push(format!(
                "{}: a grant without a reservation id",
                describe(record)
            )),
            (AuditEvent::Grant, Some(id)) if self.active => self.grant(record, id, violations),
            (AuditEvent::Commit { late, .. }, Some(id)) => {
                self.commit(record, id, *late, violations)
            }
            (AuditEvent::Release, Some(id)) => self.release(record, id, violations),
            (AuditEvent::Expire { charged }, Some(id)) => self.expire(id, *charged),
            (AuditEvent::Record { .. }, _) if self.active => {
                self.committed = self.committed.saturating_add(self.dim(&record.amounts));
            }
            (AuditEvent::LeaseGrant, Some(id)) if self.active => {
                self.lease_grant(record, id, violations)
            }
            (AuditEvent::LeaseCall { charged: true, .. }, Some(id)) => self.lease_call(record, id),
            (AuditEvent::LeaseReturn { .. }, Some(id)) => self.end_lease(id, false),
            (AuditEvent::LeaseExpire, Some(id)) => self.end_lease(id, true),
            _ => {}
        }
    }

    /// A lease granted or renewed: its record carries the slice it now holds, so the hold
    /// moves to that; growing it is a grant and must fit.
    fn lease_grant(&mut self, record: &AuditRecord, id: u64, violations: &mut Violations) {
        let slice = self.dim(&record.amounts);
        let before = self.leases.insert(id, slice);
        if before.is_none() && (self.held.contains_key(&id) || self.expired.contains_key(&id)) {
            violations.push(format!(
                "{}: lease id {id} is also a reservation id; ids must be unique for the life of the cluster",
                describe(record)
            ));
        }
        let before = before.unwrap_or(0);
        self.held_sum = self.held_sum.saturating_sub(before).saturating_add(slice);
        let total = self.committed.saturating_add(self.held_sum);
        if slice > before && total > self.amount {
            violations.push(format!(
                "{}: OVERSPEND BY LEASE at {}: committed {} + held {} = {total} exceeds the amount by {}; a lease may only hold what fits (SPEC guarantee 1)",
                self.name,
                describe(record),
                self.committed,
                self.held_sum,
                total - self.amount
            ));
        }
    }

    /// One call of a lease, charged: it uses up the lease's hold first, the rest is an
    /// overrun charged on top. A lease granted before the limit existed is not ours.
    fn lease_call(&mut self, record: &AuditRecord, id: u64) {
        let actual = self.dim(&record.amounts);
        let Some(held) = self.leases.get_mut(&id) else {
            return;
        };
        let used = actual.min(*held);
        *held -= used;
        self.held_sum = self.held_sum.saturating_sub(used);
        self.committed = self.committed.saturating_add(actual);
    }

    /// A lease ended: its rest given back (a return) or charged (an expiry).
    fn end_lease(&mut self, id: u64, charged: bool) {
        let Some(held) = self.leases.remove(&id) else {
            return;
        };
        self.held_sum = self.held_sum.saturating_sub(held);
        if charged {
            self.committed = self.committed.saturating_add(held);
        }
    }

    fn grant(&mut self, record: &AuditRecord, id: u64, violations: &mut Violations) {
        let estimate = self.dim(&record.amounts);
        if self.held.insert(id, estimate).is_some() {
            violations.push(format!(
                "{}: reservation id {id} granted twice; a tenant's reservation ids must be unique for the life of the cluster",
                describe(record)
            ));
        }
        self.held_sum = self.held_sum.saturating_add(estimate);
        let (committed, held_sum, amount) = (self.committed, self.held_sum, self.amount);
        let total = committed.saturating_add(held_sum);
        if total > amount {
            violations.push(format!(
                "{}: OVERSPEND BY GRANT at {}: committed {committed} + held {held_sum} = {total} exceeds the amount by {}; a reservation may only be granted if it fits (SPEC guarantee 1)",
                self.name,
                describe(record),
                total - amount
            ));
        }
    }

    fn commit(&mut self, record: &AuditRecord, id: u64, late: bool, violations: &mut Violations) {
        let actual = self.dim(&record.amounts);
        if let Some(estimate) = self.held.remove(&id) {
            self.held_sum = self.held_sum.saturating_sub(estimate);
            self.committed = self.committed.saturating_add(actual);
            if late {
                violations.push(format!(
                    "{}: flagged late, but the reservation had not expired in the audit trail",
                    describe(record)
                ));
            }
        } else if let Some(gone) = self.expired.remove(&id) {
            if !late {
                violations.push(format!(
                    "{}: commit after the reservation's expiry is not flagged late",
                    describe(record)
                ));
            }
            // A late commit trues the expiry charge up or down to the actual.
            if gone.charged {
                self.committed = self.committed.saturating_sub(gone.estimate);
            }
            self.committed = self.committed.saturating_add(actual);
        }
        // Otherwise the reservation was granted before the limit existed: not ours.
    }

    fn release(&mut self, record: &AuditRecord, id: u64, violations: &mut Violations) {
        if let Some(estimate) = self.held.remove(&id) {
            self.held_sum = self.held_sum.saturating_sub(estimate);
        } else if self.expired.contains_key(&id) {
            violations.push(format!(
                "{}: a release after expiry took effect; SPEC says it is rejected and the expiry charge stands",
                describe(record)
            ));
        }
    }

    fn expire(&mut self, id: u64, charged: bool) {
        let Some(estimate) = self.held.remove(&id) else {
            return;
        };
        self.held_sum = self.held_sum.saturating_sub(estimate);
        if charged {
            self.committed = self.committed.saturating_add(estimate);
        }
        self.expired.insert(id, Expired { estimate, charged });
    }

    /// The cluster's final `used` and `held` equal the replay's.
    fn check_final_usage(&self, usage: &FinalUsage, violations: &mut Violations) {
        let (name, committed, held_sum) = (&self.name, self.committed, self.held_sum);
        if usage.used != committed {
            violations.push(format!(
                "{name}: the cluster reports {} used but its audit trail replays to {committed} committed (off by {}); a charge was applied without its audit record, or recorded without being applied",
                usage.used,
                usage.used as i128 - committed as i128
            ));
        }
        if usage.held != held_sum {
            violations.push(format!(
                "{name}: the cluster reports {} held but its audit trail replays to {held_sum} held by {} reservations in flight (off by {}); a hold leaked or vanished",
                usage.held,
                self.held.len(),
                usage.held as i128 - held_sum as i128
            ));
        }
    }
}

type RequestKey<'a> = (&'a str, &'a str, Kind);

/// Audit records by (tenant, request id, kind), reporting any key that occurs twice: a
/// request id applied twice (SPEC guarantee 2).
fn index_by_request<'a>(
    audit: &[&'a AuditRecord],
    violations: &mut Violations,
) -> HashMap<RequestKey<'a>, &'a AuditRecord> {
    let mut by_request: HashMap<RequestKey<'a>, &'a AuditRecord> = HashMap::new();
    for record in audit {
        let (Some(tenant), Some(request_id)) = (&record.tenant, &record.request_id) else {
            continue;
        };
        let kind = Kind::of(&record.event);
        if matches!(kind, Kind::Threshold | Kind::Lease) {
            continue;
        }
        let key = (tenant.as_str(), request_id.as_str(), kind);
        if let Some(first) = by_request.get(&key) {
            violations.push(format!(
                "request {request_id} of tenant {tenant} was applied twice ({} twice): first {}, again {}; a retry must return the first answer and change nothing (SPEC guarantee 2)",
                kind.name(),
                describe(first),
                describe(record)
            ));
            continue;
        }
        by_request.insert(key, record);
    }
    by_request
}

/// Each answer agrees with the audit record of its request id.
fn check_answers(
    events: &[Event],
    by_request: &HashMap<RequestKey<'_>, &AuditRecord>,
    violations: &mut Violations,
) {
    for event in events {
        let key = (
            event.op.tenant(),
            event.request_id.as_str(),
            event.op.kind(),
        );
        let record = by_request.get(&key).copied();
        let who = format!(
            "client {} {} (request {}, invoked at {} ms, completed at {} ms)",
            event.client,
            event.op.name(),
            event.request_id,
            event.invoked_ms,
            event.completed_ms
        );
        match (&event.result, record) {
            // A call decided in a lease is audited at the lease's settle under the reserve's
            // request id (`lease_call`), or covered by the lease's expiry if the client died;
            // the budget replay holds the lease to its slice either way.
            (OpResult::Ambiguous { .. } | OpResult::Local { .. }, _) => continue,
            (OpResult::Rejected { code, message }, Some(record)) => {
                violations.push(format!(
                    "{who} was rejected ({code}: {message}) yet took effect: {}; a rejection must change nothing",
                    describe(record)
                ));
                continue;
            }
            (OpResult::Rejected { .. }, None) => continue,
            (_, None) => {
                violations.push(format!(
                    "{who} was acknowledged ({:?}) but has no audit record: an acknowledged decision is missing from the trail (lost on failover, or never audited)",
                    event.result
                ));
                continue;
            }
            (result, Some(record)) => {
                if let Some(mismatch) = disagreement(&event.op, result, record) {
                    violations.push(format!(
                        "{who} disagrees with {}: {mismatch}",
                        describe(record)
                    ));
                }
            }
        }
    }
}

/// Why an acknowledged answer does not match its audit record, if it does not.
fn disagreement(op: &Op, result: &OpResult, record: &AuditRecord) -> Option<String> {
    let reservation = record.reservation_id.map(|id| id.0);
    match (op, result, &record.event) {
        (Op::Reserve { .. }, OpResult::Granted { reservation_id, .. }, AuditEvent::Grant) => {
            if reservation != Some(*reservation_id) {
                return Some(format!(
                    "the client was granted reservation {reservation_id}, the audit says {reservation:?}"
                ));
            }
        }
        (Op::Reserve { .. }, OpResult::Denied { .. }, AuditEvent::Deny(_)) => {}
        (Op::Reserve { .. }, OpResult::Granted { .. }, AuditEvent::Deny(reason)) => {
            return Some(format!(
                "the client was granted, the audit says denied ({reason:?})"
            ));
        }
        (Op::Reserve { .. }, OpResult::Denied { reason, .. }, AuditEvent::Grant) => {
            return Some(format!(
                "the client was denied ({reason}), the audit says granted"
            ));
        }
        (Op::Commit { reservation_id, .. }, OpResult::Done { .. }, AuditEvent::Commit { .. })
        | (Op::Release { reservation_id, .. }, OpResult::Done { .. }, AuditEvent::Release) => {
            if reservation != Some(*reservation_id) {
                return Some(format!(
                    "the client settled reservation {reservation_id}, the audit says {reservation:?}"
                ));
            }
        }
        (Op::Record { .. }, OpResult::Done { .. }, AuditEvent::Record { .. }) => {}
        (_, result, event) => {
            return Some(format!(
                "answer {result:?} does not fit audit event {event:?}"
            ));
        }
    }
    // Grants carry the estimate, commits and records the actual; a release carries the
    // estimate it gave back, which the client does not send, so it is not compared.
    let sent = op.amounts();
    let compare = matches!(
        (op, &record.event),
        (Op::Reserve { .. }, _) | (Op::Commit { .. }, _) | (Op::Record { .. }, _)
    );
    if compare && sent != record.amounts {
        return Some(format!(
            "the client sent {} tokens, {} cost micros, {} calls; the audit holds {} tokens, {} cost micros, {} calls",
            sent.tokens,
            sent.cost_micros,
            sent.calls,
            record.amounts.tokens,
            record.amounts.cost_micros,
            record.amounts.calls
        ));
    }
    if let (
        Op::Reserve { agent, tool, .. } | Op::Record { agent, tool, .. },
        Some(record_agent),
        Some(record_tool),
    ) = (op, &record.agent, &record.tool)
    {
        if agent != record_agent.as_str() || tool != record_tool.as_str() {
            return Some(format!(
                "the client sent agent {agent} tool {tool}; the audit holds agent {record_agent} tool {record_tool}"
            ));
        }
    }
    None
}

/// One logical operation: every event with the same (tenant, request id, kind) is the
/// same operation retried, which takes effect once, somewhere between its first
/// invocation and its first acknowledgement.
struct Logical<'a> {
    event: &'a Event,
    invoked_ms: u64,
    completed_ms: u64,
    log_index: u64,
    /// The audit seq of the operation's record, if the trail has it.
    seq: Option<u64>,
}

/// Merges acknowledged events with a log index into logical operations, reporting retries
/// that were answered with another log index than the first answer.
fn logical_ops<'a>(
    events: &'a [Event],
    by_request: &HashMap<RequestKey<'_>, &AuditRecord>,
    violations: &mut Violations,
) -> Vec<Logical<'a>> {
    let mut ops: Vec<Logical<'a>> = Vec::new();
    let mut position: HashMap<RequestKey<'a>, usize> = HashMap::new();
    for event in events {
        let Some(log_index) = event.result.log_index() else {
            continue;
        };
        let key = (
            event.op.tenant(),
            event.request_id.as_str(),
            event.op.kind(),
        );
        match position.get(&key) {
            Some(&i) => {
                let op = &mut ops[i];
                if op.log_index != log_index {
                    violations.push(format!(
                        "request {} ({}) was answered with log index {} and, when sent again, with log index {log_index}; a retry must return the first answer, including where it was applied",
                        event.request_id,
                        event.op.name(),
                        op.log_index
                    ));
                }
                op.invoked_ms = op.invoked_ms.min(event.invoked_ms);
                op.completed_ms = op.completed_ms.min(event.completed_ms);
                op.log_index = op.log_index.min(log_index);
            }
            None => {
                position.insert(key, ops.len());
                ops.push(Logical {
                    event,
                    invoked_ms: event.invoked_ms,
                    completed_ms: event.completed_ms,
                    log_index,
                    seq: by_request.get(&key).map(|r| r.seq),
                });
            }
        }
    }
    ops
}

/// Real-time order: if A completed before B was invoked, A's log index is below B's. Sweeps
/// operations by invocation time, keeping the largest log index of those already completed.
fn check_real_time(ops: &[Logical<'_>], violations: &mut Violations) {
    let mut by_invocation: Vec<&Logical<'_>> = ops.iter().collect();
    by_invocation.sort_by_key(|op| op.invoked_ms);
    let mut by_completion: Vec<&Logical<'_>> = ops.iter().collect();
    by_completion.sort_by_key(|op| op.completed_ms);

    let mut completed = by_completion.iter().peekable();
    let mut newest: Option<&Logical<'_>> = None;
    for op in by_invocation {
        while let Some(&&done) = completed.peek() {
            if done.completed_ms >= op.invoked_ms {
                break;
            }
            if newest.is_none_or(|n| done.log_index > n.log_index) {
                newest = Some(done);
            }
            completed.next();
        }
        let Some(earlier) = newest else { continue };
        if earlier.log_index >= op.log_index {
            let (a, b) = (earlier.event, op.event);
            violations.push(format!(
                "real-time order broken: client {} {} (request {}) completed at {} ms with log index {}, before client {} {} (request {}) was invoked at {} ms, which got log index {}; a later operation must be ordered after it (SPEC guarantee 3)",
                a.client,
                a.op.name(),
                a.request_id,
                earlier.completed_ms,
                earlier.log_index,
                b.client,
                b.op.name(),
                b.request_id,
                op.invoked_ms,
                op.log_index
            ));
        }
    }
}

/// Audit order agrees with log order: for acknowledged operations, a smaller log index
/// means a smaller audit seq. Commands in one entry share its index, so the check compares
/// each operation with the largest seq of all entries before its own.
fn check_log_order(ops: &[Logical<'_>], violations: &mut Violations) {
    let mut pairs: Vec<(u64, u64, &Logical<'_>)> = ops
        .iter()
        .filter_map(|op| Some((op.log_index, op.seq?, op)))
        .collect();
    pairs.sort_by_key(|&(index, seq, _)| (index, seq));
    // The operation with the largest seq among entries before the current one's, and the
    // same for the current entry (folded in when the next entry starts).
    let mut before: Option<&Logical<'_>> = None;
    let mut current: Option<&Logical<'_>> = None;
    for &(index, seq, op) in &pairs {
        if let Some(group) = current.filter(|g| g.log_index != index) {
            if before.is_none_or(|b| group.seq > b.seq) {
                before = Some(group);
            }
            current = None;
        }
        if let Some(earlier) = before.filter(|b| b.seq > Some(seq)) {
            violations.push(format!(
                "audit order disagrees with log order: request {} answered with log index {} is audit seq {}, but request {} with the later log index {index} is the earlier audit seq {seq}; if one was a retry, its answer must carry the first application's log index",
                earlier.event.request_id,
                earlier.log_index,
                earlier.seq.unwrap_or_default(),
                op.event.request_id
            ));
        }
        if current.is_none_or(|c| Some(seq) > c.seq) {
            current = Some(op);
        }
    }
}

#[cfg(test)]
mod tests;
