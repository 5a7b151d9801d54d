//! Turns a run into what a person asks of it: when was the runaway cut off, how much had
//! been spent by then, how many calls got through after it started repeating, were the
//! other agents still served, and does the whole history check out.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tollgate_ledger::{AuditEvent, AuditRecord, DenyReason, Dimension, TripCause};

use crate::history::{self, BudgetSpec, CheckReport, FinalUsage};
use crate::runner::{CallNote, CallOutcome, RunOutput};
use crate::scenario::{Expect, LimitKindToml, Role, Scenario};

/// One point of the primary budget's spend, for the chart: simulated ms since step 0.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub t_ms: u64,
    pub committed: u64,
    pub held: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cutoff {
    /// Simulated ms since step 0.
    pub t_ms: u64,
    /// Its place in the audit trail.
    pub seq: u64,
    pub agent: String,
    /// `tripped:repetition`, `tripped:velocity`, `tripped:shape-velocity`, `frozen`, or
    /// `limit ID`.
    pub reason: String,
    /// committed + held of the primary budget just before the denial.
    pub spend: u64,
}

/// A soft threshold of the primary budget crossed (an alert).
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub t_ms: u64,
    pub seq: u64,
    pub threshold_percent: u8,
    /// Committed spend in the window once the charge was made.
    pub used: u64,
}

/// An agent tripped by runaway detection.
#[derive(Clone, Debug, Serialize)]
pub struct TripMark {
    pub t_ms: u64,
    pub agent: String,
    /// `repetition` or `velocity`.
    pub cause: String,
}

/// A fault the run injected.
#[derive(Clone, Debug, Serialize)]
pub struct FaultMark {
    pub t_ms: u64,
    pub kind: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    pub budget_id: String,
    pub budget_dimension: String,
    pub budget_amount: u64,
    pub cutoff: Option<Cutoff>,
    /// Each runaway agent's first denial, in audit order.
    pub cutoffs: Vec<Cutoff>,
    /// Simulated ms from a runaway's first call to the cutoff.
    pub time_to_cutoff_ms: Option<u64>,
    /// Grants a runaway got from its first repeated fingerprint until it tripped.
    pub calls_after_first_repeat: Option<u64>,
    /// The same per runaway agent that repeated a fingerprint.
    pub calls_after_first_repeat_by_agent: BTreeMap<String, u64>,
    pub runaway_calls: u64,
    pub runaway_grants: u64,
    pub well_behaved_calls: u64,
    pub well_behaved_grants: u64,
    pub expired_charged: u64,
    /// Largest committed + held of the primary budget over the run.
    pub spend_peak: u64,
    /// Committed spend of the primary budget (current window) at the end.
    pub spend_final: u64,
    pub timeline: Vec<Point>,
    /// Each agent's cumulative committed spend of the primary budget's dimension:
    /// (simulated ms since step 0, spend) after each change.
    pub agent_spend: BTreeMap<String, Vec<(u64, u64)>>,
    pub alerts: Vec<Alert>,
    pub trips: Vec<TripMark>,
    pub faults: Vec<FaultMark>,
}

/// One expectation and how it fared.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    /// None: skipped (e.g. time-dependent against a real deployment).
    pub ok: Option<bool>,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    /// What the scenario proves: `detection`, `limit` or `alert`.
    pub proves: String,
    pub path: String,
    pub seed: u64,
    pub passed: bool,
    pub wall_ms: u64,
    pub metrics: Metrics,
    pub checks: Vec<Check>,
    pub history: CheckReport,
}

/// The primary budget's spend replayed from the audit trail, window by window.
#[derive(Default)]
struct Replay {
    /// (seq, point) after each record that changed the budget.
    points: Vec<(u64, Point)>,
    /// Committed spend per window start (0 for lifetime).
    committed_by_window: BTreeMap<u64, u64>,
    /// Grants that took committed + held above the amount: (seq, total).
    overspends: Vec<(u64, u64)>,
    /// Each agent's cumulative committed spend after each change: (point time, spend).
    agent_spend: BTreeMap<String, Vec<(u64, u64)>>,
    alerts: Vec<Alert>,
}

/// The budget a replay follows.
struct BudgetKey<'a> {
    tenant: &'a str,
    limit_id: &'a str,
    dimension: Dimension,
    window_ms: Option<u64>,
    amount: u64,
}

impl BudgetKey<'_> {
    fn window_of(&self, at_ms: u64) -> u64 {
        self.window_ms.map_or(0, |len| at_ms - at_ms % len)
    }
}

/// What is held, and what expired, while replaying one budget.
#[derive(Default)]
struct Holds {
    held: HashMap<u64, u64>,
    expired: HashMap<u64, u64>,
    held_sum: u64,
}

impl Holds {
    /// Applies one record to the holds and to its window's `committed`; false when the
    /// record does not change the budget.
    fn apply(&mut self, record: &AuditRecord, dimension: Dimension, committed: &mut u64) -> bool {
        let spent = record.amounts.get(dimension);
        let id = record.reservation_id.map(|r| r.0).unwrap_or(0);
        match &record.event {
            AuditEvent::Grant => {
                self.held.insert(id, spent);
                self.held_sum += spent;
            }
            AuditEvent::Commit { late, .. } => {
                if let Some(estimate) = self.held.remove(&id) {
                    self.held_sum -= estimate;
                    *committed += spent;
                } else if let Some(charge) = self.expired.remove(&id) {
                    debug_assert!(late);
                    *committed = committed.saturating_sub(charge) + spent;
                }
            }
            AuditEvent::Release => {
                if let Some(estimate) = self.held.remove(&id) {
                    self.held_sum -= estimate;
                }
            }
            AuditEvent::Expire { charged } => {
                if let Some(estimate) = self.held.remove(&id) {
                    self.held_sum -= estimate;
                    let charge = if *charged { estimate } else { 0 };
                    *committed += charge;
                    self.expired.insert(id, charge);
                }
            }
            AuditEvent::Record { .. } => *committed += spent,
            AuditEvent::LeaseGrant => {
                let before = self.held.insert(id, spent).unwrap_or(0);
                self.held_sum = self.held_sum - before + spent;
            }
            AuditEvent::LeaseCall { charged: true, .. } => {
                if let Some(held) = self.held.get_mut(&id) {
                    let used = spent.min(*held);
                    *held -= used;
                    self.held_sum -= used;
                    *committed += spent;
                }
            }
            AuditEvent::LeaseReturn { .. } | AuditEvent::LeaseExpire => {
                if let Some(held) = self.held.remove(&id) {
                    self.held_sum -= held;
                    if record.event == AuditEvent::LeaseExpire {
                        *committed += held;
                    }
                }
            }
            _ => return false,
        }
        true
    }
}

/// The tenant's records from the moment the budget was put on.
fn budget_records<'a>(
    audit: &'a [AuditRecord],
    budget: &'a BudgetKey<'a>,
) -> impl Iterator<Item = &'a AuditRecord> {
    let mut active = false;
    audit
        .iter()
        .filter(move |r| {
            r.tenant
                .as_ref()
                .is_some_and(|t| t.as_str() == budget.tenant)
        })
        .filter(move |r| {
            if let AuditEvent::LimitPut(spec) = &r.event {
                active |= spec.id.as_str() == budget.limit_id;
                return false;
            }
            active
        })
}

fn replay(audit: &[AuditRecord], budget: &BudgetKey<'_>, start_ms: u64) -> Replay {
    let mut holds = Holds::default();
    let mut window = 0;
    let mut out = Replay::default();
    let mut agents = AgentSpend::default();
    for record in budget_records(audit, budget) {
        let t_ms = record.at_ms.saturating_sub(start_ms);
        if let AuditEvent::ThresholdCrossed(c) = &record.event {
            if c.limit_id.as_str() == budget.limit_id {
                out.alerts.push(Alert {
                    t_ms,
                    seq: record.seq,
                    threshold_percent: c.threshold_percent,
                    used: c.used,
                });
            }
            continue;
        }
        window = window.max(budget.window_of(record.at_ms));
        let committed = out.committed_by_window.entry(window).or_default();
        let before = *committed;
        if !holds.apply(record, budget.dimension, committed) {
            continue;
        }
        agents.note(record, (before, *committed), t_ms, &mut out.agent_spend);
        let total = committed.saturating_add(holds.held_sum);
        let grant = matches!(record.event, AuditEvent::Grant | AuditEvent::LeaseGrant);
        if grant && total > budget.amount {
            out.overspends.push((record.seq, total));
        }
        out.points.push((
            record.seq,
            Point {
                t_ms,
                committed: *committed,
                held: holds.held_sum,
            },
        ));
    }
    out
}

/// Whose spend each change of the budget is: reservations by the agent that was granted them.
#[derive(Default)]
struct AgentSpend {
    agent_of: HashMap<u64, String>,
    total: BTreeMap<String, u64>,
}

impl AgentSpend {
    /// After `record` took the window's committed spend from `before` to `after`.
    fn note(
        &mut self,
        record: &AuditRecord,
        (before, after): (u64, u64),
        t_ms: u64,
        series: &mut BTreeMap<String, Vec<(u64, u64)>>,
    ) {
        let named = record.agent.as_ref().map(ToString::to_string);
        let id = record.reservation_id.map(|r| r.0);
        let agent = match (&record.event, id) {
            (AuditEvent::Grant | AuditEvent::LeaseGrant, Some(id)) => {
                if let Some(name) = &named {
                    if self.agent_of.len() < AGENT_RESERVATIONS_MAX {
                        self.agent_of.insert(id, name.clone());
                    }
                }
                named
            }
            (_, Some(id)) => self.agent_of.get(&id).cloned().or(named),
            _ => named,
        };
        let Some(agent) = agent else {
            return;
        };
        if before == after && series.contains_key(&agent) {
            return;
        }
        let total = self.total.entry(agent.clone()).or_default();
        *total = total.saturating_add(after).saturating_sub(before);
        let points = series.entry(agent).or_default();
        if points.len() < SERIES_POINTS_MAX {
            points.push((t_ms, *total));
        }
    }
}

/// Reservations whose agent a replay remembers (a scenario makes at most `CALLS_MAX`).
const AGENT_RESERVATIONS_MAX: usize = 1 << 16;
/// Points kept per agent's series (one per change of its spend).
const SERIES_POINTS_MAX: usize = 1 << 16;

fn trip_cause(cause: &TripCause) -> &'static str {
    match cause {
        TripCause::Repetition { .. } => "repetition",
        TripCause::Velocity { .. } => "velocity",
        TripCause::ShapeVelocity { .. } => "shape-velocity",
    }
}

fn deny_reason(reason: &DenyReason) -> String {
    match reason {
        DenyReason::Limit { limit_id, .. } => format!("limit {limit_id}"),
        DenyReason::Frozen { .. } => "frozen".into(),
        DenyReason::Tripped { cause, .. } => format!("tripped:{}", trip_cause(cause)),
    }
}

/// One runaway agent's fingerprints, as its calls are seen in log order.
#[derive(Default)]
struct Repeats<'a> {
    seen: HashMap<&'a str, u64>,
    /// Grants from the first repeat on; None until a fingerprint repeats.
    grants_after_repeat: Option<u64>,
    tripped: bool,
}

/// Grants between a runaway's first repeated fingerprint and its trip, in the order the
/// cluster decided them (audit order: calls decided in one log entry share its index), for
/// each runaway agent that repeated one.
fn calls_after_first_repeat(notes: &[CallNote], audit: &[AuditRecord]) -> BTreeMap<String, u64> {
    let decided: HashMap<&str, u64> = audit
        .iter()
        .filter(|r| matches!(r.event, AuditEvent::Grant | AuditEvent::Deny(_)))
        .filter_map(|r| Some((r.request_id.as_ref()?.as_str(), r.seq)))
        .collect();
    let mut ordered: Vec<(u64, &CallNote)> = notes
        .iter()
        .filter(|n| n.role == Role::Runaway)
        .filter_map(|n| Some((*decided.get(n.request_id.as_str())?, n)))
        .collect();
    ordered.sort_by_key(|(seq, _)| *seq);
    let ordered = ordered.into_iter().map(|(_, n)| n);
    let mut per_agent: BTreeMap<&str, Repeats<'_>> = BTreeMap::new();
    for note in ordered {
        let agent = per_agent.entry(&note.agent).or_default();
        if agent.tripped {
            continue;
        }
        if note.outcome == CallOutcome::Tripped {
            agent.tripped = true;
            continue;
        }
        let Some(fingerprint) = note.fingerprint.as_deref() else {
            continue;
        };
        let count = agent.seen.entry(fingerprint).or_default();
        *count += 1;
        if *count >= 2 || agent.grants_after_repeat.is_some() {
            let grants = agent.grants_after_repeat.get_or_insert(0);
            if note.outcome == CallOutcome::Granted {
                *grants += 1;
            }
        }
    }
    per_agent
        .into_iter()
        .filter_map(|(agent, a)| Some((agent.to_owned(), a.grants_after_repeat?)))
        .collect()
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The scenario's `expect.budget`, which the metrics follow.
struct Primary<'a> {
    id: &'a str,
    key: BudgetKey<'a>,
}

impl<'a> Primary<'a> {
    fn of(scenario: &'a Scenario) -> Self {
        let budget = scenario
            .limits
            .iter()
            .find(|l| l.id == scenario.expect.budget)
            .expect("validate checked expect.budget");
        let (window, amount) = match budget.kind_checked() {
            LimitKindToml::Budget { window, amount } => (window, amount),
            _ => unreachable!("validate checked that expect.budget is a budget"),
        };
        Primary {
            id: &budget.id,
            key: BudgetKey {
                tenant: &budget.tenant,
                limit_id: &budget.id,
                dimension: budget.dimension.ledger(),
                window_ms: window.length_ms(),
                amount,
            },
        }
    }
}

/// The runaway agents' first call and first denial, in audit order.
struct Runaways<'a> {
    first_call: Option<&'a AuditRecord>,
    cutoff: Option<&'a AuditRecord>,
    /// Each runaway agent's first denial, in audit order.
    cutoffs: Vec<&'a AuditRecord>,
    /// Whether a runaway was granted again after the cutoff.
    served_again: bool,
}

impl<'a> Runaways<'a> {
    fn of(scenario: &Scenario, audit: &'a [AuditRecord]) -> Self {
        let names: Vec<String> = scenario
            .agents
            .iter()
            .filter(|a| a.role == Role::Runaway)
            .flat_map(|a| a.names())
            .collect();
        let is_runaway = |r: &AuditRecord| {
            r.agent
                .as_ref()
                .is_some_and(|a| names.iter().any(|n| n == a.as_str()))
        };
        let first_call = audit
            .iter()
            .find(|r| is_runaway(r) && matches!(r.event, AuditEvent::Grant | AuditEvent::Deny(_)));
        let cutoff = audit
            .iter()
            .find(|r| is_runaway(r) && matches!(r.event, AuditEvent::Deny(_)));
        let served_again = cutoff.is_some_and(|c| {
            audit
                .iter()
                .any(|r| r.seq > c.seq && is_runaway(r) && r.event == AuditEvent::Grant)
        });
        let mut cutoffs: Vec<&AuditRecord> = Vec::new();
        for record in audit
            .iter()
            .filter(|r| is_runaway(r) && matches!(r.event, AuditEvent::Deny(_)))
        {
            if !cutoffs.iter().any(|c| c.agent == record.agent) {
                cutoffs.push(record);
            }
        }
        Runaways {
            first_call,
            cutoff,
            cutoffs,
            served_again,
        }
    }
}

/// The cutoff as a person reads it: when, who, why, and the spend just before it.
fn cutoff(record: &AuditRecord, rep: &Replay, start_ms: u64) -> Cutoff {
    let spend = rep
        .points
        .iter()
        .take_while(|(seq, _)| *seq < record.seq)
        .last()
        .map_or(0, |(_, p)| p.committed + p.held);
    Cutoff {
        t_ms: record.at_ms.saturating_sub(start_ms),
        seq: record.seq,
        agent: record
            .agent
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        reason: match &record.event {
            AuditEvent::Deny(reason) => deny_reason(reason),
            _ => String::new(),
        },
        spend,
    }
}

fn metrics(
    primary: &Primary<'_>,
    rep: &Replay,
    runaways: &Runaways<'_>,
    run: &RunOutput,
) -> Metrics {
    let repeats = calls_after_first_repeat(&run.notes, &run.audit);
    let count = |role: Role, granted_only: bool| {
        run.notes
            .iter()
            .filter(|n| n.role == role && (!granted_only || n.outcome == CallOutcome::Granted))
            .count() as u64
    };
    Metrics {
        budget_id: primary.id.to_owned(),
        budget_dimension: format!("{:?}", primary.key.dimension).to_lowercase(),
        budget_amount: primary.key.amount,
        time_to_cutoff_ms: match (runaways.first_call, runaways.cutoff) {
            (Some(first), Some(cut)) => Some(cut.at_ms.saturating_sub(first.at_ms)),
            _ => None,
        },
        cutoff: runaways.cutoff.map(|r| cutoff(r, rep, run.start_ms)),
        cutoffs: runaways
            .cutoffs
            .iter()
            .map(|r| cutoff(r, rep, run.start_ms))
            .collect(),
        calls_after_first_repeat: repeats.values().copied().max(),
        calls_after_first_repeat_by_agent: repeats,
        runaway_calls: count(Role::Runaway, false),
        runaway_grants: count(Role::Runaway, true),
        well_behaved_calls: count(Role::WellBehaved, false),
        well_behaved_grants: count(Role::WellBehaved, true),
        expired_charged: run
            .audit
            .iter()
            .filter(|r| r.event == AuditEvent::Expire { charged: true })
            .count() as u64,
        spend_peak: rep
            .points
            .iter()
            .map(|(_, p)| p.committed + p.held)
            .max()
            .unwrap_or(0),
        spend_final: rep.points.last().map_or(0, |(_, p)| p.committed),
        timeline: rep.points.iter().map(|(_, p)| p.clone()).collect(),
        agent_spend: rep.agent_spend.clone(),
        alerts: rep.alerts.clone(),
        trips: trips(primary.key.tenant, run),
        faults: run
            .faults
            .iter()
            .map(|(t_ms, kind)| FaultMark {
                t_ms: *t_ms,
                kind: serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{kind:?}")),
            })
            .collect(),
    }
}

/// Every trip of the budget's tenant, in audit order.
fn trips(tenant: &str, run: &RunOutput) -> Vec<TripMark> {
    run.audit
        .iter()
        .filter(|r| r.tenant.as_ref().is_some_and(|t| t.as_str() == tenant))
        .filter_map(|r| match &r.event {
            AuditEvent::Trip(cause) => Some(TripMark {
                t_ms: r.at_ms.saturating_sub(run.start_ms),
                agent: r
                    .agent
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                cause: trip_cause(cause).into(),
            }),
            _ => None,
        })
        .collect()
}

/// Computes the metrics and checks every expectation of the scenario.
pub fn evaluate(
    scenario: &Scenario,
    path: &str,
    seed: u64,
    run: &RunOutput,
    wall_ms: u64,
) -> ScenarioResult {
    let primary = Primary::of(scenario);
    let rep = replay(&run.audit, &primary.key, run.start_ms);
    let runaways = Runaways::of(scenario, &run.audit);
    let metrics = metrics(&primary, &rep, &runaways, run);

    // The whole history against the reference model.
    let (budgets, final_usage) = checkable_budgets(scenario, run);
    let history = history::check(&run.events, &run.audit, &budgets, &final_usage);
    let mut checks = vec![
        check_history(&history, budgets.len()),
        check_audit_chain(run),
        check_no_grant_over_budget(&primary, &rep),
    ];
    let facts = Facts {
        expect: &scenario.expect,
        metrics: &metrics,
        amount: primary.key.amount,
        time_controlled: run.time_controlled,
        served_again: runaways.served_again,
    };
    checks.extend(EXPECTATIONS.iter().filter_map(|check| check(&facts)));
    checks.extend(window_checks(scenario, run));

    let passed = checks.iter().all(|c| c.ok != Some(false));
    ScenarioResult {
        scenario: scenario.name.clone(),
        proves: scenario.proves.label().into(),
        path: path.into(),
        seed,
        passed,
        wall_ms,
        metrics,
        checks,
        history,
    }
}

impl Check {
    fn new(name: impl Into<String>, ok: Option<bool>, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }
}

fn check_history(history: &CheckReport, budgets: usize) -> Check {
    let detail = if history.is_ok() {
        format!(
            "{} ops ({} acknowledged, {} rejected, {} ambiguous) agree with the audit trail; {budgets} budget(s) replayed",
            history.ops, history.acknowledged, history.rejected, history.ambiguous,
        )
    } else {
        format!(
            "{} violation(s); first: {}",
            history.violations.len(),
            history.violations[0]
        )
    };
    Check::new("history", Some(history.is_ok()), detail)
}

fn check_audit_chain(run: &RunOutput) -> Check {
    Check::new(
        "audit chain",
        Some(run.audit_chain_error.is_none()),
        run.audit_chain_error
            .clone()
            .unwrap_or_else(|| "the hash chain verifies".into()),
    )
}

fn check_no_grant_over_budget(primary: &Primary<'_>, rep: &Replay) -> Check {
    let (id, amount) = (primary.id, primary.key.amount);
    let detail = match rep.overspends.first() {
        None => format!("committed + held of {id} never passed {amount} by a grant"),
        Some((seq, total)) => format!(
            "the grant at audit seq {seq} took committed + held of {id} to {total} > {amount}"
        ),
    };
    Check::new(
        "no grant over budget",
        Some(rep.overspends.is_empty()),
        detail,
    )
}

/// What the expectations of `[expect]` are checked against.
struct Facts<'a> {
    expect: &'a Expect,
    metrics: &'a Metrics,
    /// The primary budget's amount.
    amount: u64,
    time_controlled: bool,
    served_again: bool,
}

/// One check per expectation, in the order they are reported; each is None when the
/// scenario does not set its expectation.
const EXPECTATIONS: [fn(&Facts<'_>) -> Option<Check>; 17] = [
    check_cut_off,
    check_cut_off_by,
    check_runaways_cut_off,
    check_spend_at_cutoff,
    check_spend_at_cutoff_exact,
    check_calls_after_first_repeat,
    check_calls_after_first_repeat_exact,
    check_time_to_cutoff,
    check_well_behaved_served,
    check_runaway_grants,
    check_runaway_grants_exact,
    check_expired_charged,
    check_expired_charged_exact,
    check_spend_final,
    check_alert_before,
    check_thresholds_crossed,
    check_served_again,
];

fn check_cut_off(f: &Facts<'_>) -> Option<Check> {
    if !f.expect.cutoff {
        return None;
    }
    let m = f.metrics;
    let detail = match &m.cutoff {
        Some(c) => format!(
            "agent {} denied ({}) at {}",
            c.agent,
            c.reason,
            fmt_ms(c.t_ms)
        ),
        None => format!(
            "no runaway was ever denied ({} calls, {} granted)",
            m.runaway_calls, m.runaway_grants
        ),
    };
    Some(Check::new(
        "runaway cut off",
        Some(m.cutoff.is_some()),
        detail,
    ))
}

/// Whether a denial's reason is what `cutoff_by` names (`tripped` matches either cause).
fn reason_matches(wanted: &str, reason: &str) -> bool {
    match wanted {
        "tripped" => reason.starts_with("tripped:"),
        "frozen" => reason == "frozen",
        w if w.starts_with("tripped:") => reason == w,
        limit => reason.strip_prefix("limit ") == Some(limit),
    }
}

/// Every runaway agent that was denied was first denied for the expected reason.
fn check_cut_off_by(f: &Facts<'_>) -> Option<Check> {
    let wanted = f.expect.cutoff_by.as_ref()?;
    let cutoffs = &f.metrics.cutoffs;
    let wrong = cutoffs.iter().find(|c| !reason_matches(wanted, &c.reason));
    let detail = match (cutoffs.is_empty(), wrong) {
        (true, _) => format!("expected {wanted}, got no cutoff"),
        (false, Some(c)) => format!("expected {wanted}, {} was cut off by {}", c.agent, c.reason),
        (false, None) => {
            let reasons: Vec<String> = cutoffs
                .iter()
                .map(|c| format!("{}: {}", c.agent, c.reason))
                .take(4)
                .collect();
            let more = cutoffs.len().saturating_sub(4);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("expected {wanted}: {}{more}", reasons.join(", "))
        }
    };
    Some(Check::new(
        "cut off by",
        Some(!cutoffs.is_empty() && wrong.is_none()),
        detail,
    ))
}

fn check_runaways_cut_off(f: &Facts<'_>) -> Option<Check> {
    let want = f.expect.runaways_cut_off?;
    let got = f.metrics.cutoffs.len() as u64;
    Some(Check::new(
        "runaways cut off",
        Some(got == want),
        format!("{got} runaway agent(s) denied (exactly {want})"),
    ))
}

fn check_spend_at_cutoff_exact(f: &Facts<'_>) -> Option<Check> {
    let want = f.expect.spend_at_cutoff?;
    let spend = f.metrics.cutoff.as_ref().map(|c| c.spend);
    let dim = &f.metrics.budget_dimension;
    Some(Check::new(
        "spend at cutoff (exact)",
        Some(spend == Some(want)),
        match spend {
            Some(s) => format!("{} (exactly {})", fmt_amount(dim, s), fmt_amount(dim, want)),
            None => "no cutoff".into(),
        },
    ))
}

fn check_calls_after_first_repeat_exact(f: &Facts<'_>) -> Option<Check> {
    let want = f.expect.calls_after_first_repeat?;
    let by_agent = &f.metrics.calls_after_first_repeat_by_agent;
    let ok = !by_agent.is_empty() && by_agent.values().all(|n| *n == want);
    let got: Vec<String> = by_agent
        .iter()
        .take(8)
        .map(|(agent, n)| format!("{agent}: {n}"))
        .collect();
    Some(Check::new(
        "calls after first repeat (exact)",
        Some(ok),
        if by_agent.is_empty() {
            "no runaway repeated a fingerprint".into()
        } else {
            format!(
                "granted between the first repeat and the trip: {} (exactly {want} each)",
                got.join(", ")
            )
        },
    ))
}

fn check_runaway_grants_exact(f: &Facts<'_>) -> Option<Check> {
    let want = f.expect.runaway_grants?;
    let m = f.metrics;
    Some(Check::new(
        "runaway grants (exact)",
        Some(m.runaway_grants == want),
        format!(
            "{} granted of {} calls (exactly {want})",
            m.runaway_grants, m.runaway_calls
        ),
    ))
}

fn check_expired_charged_exact(f: &Facts<'_>) -> Option<Check> {
    let want = f.expect.expired_charged?;
    let charged = f.metrics.expired_charged;
    Some(Check::new(
        "expired and charged (exact)",
        f.time_controlled.then_some(charged == want),
        format!("{charged} reservation(s) expired and were charged (exactly {want})"),
    ))
}

fn check_spend_final(f: &Facts<'_>) -> Option<Check> {
    let want = f.expect.spend_final?;
    let got = f.metrics.spend_final;
    let dim = &f.metrics.budget_dimension;
    Some(Check::new(
        "spend at the end",
        Some(got == want),
        format!(
            "{} committed to {} (exactly {})",
            fmt_amount(dim, got),
            f.metrics.budget_id,
            fmt_amount(dim, want)
        ),
    ))
}

/// The budget's first alert came before the cutoff, while committed spend was still below
/// `alert_before_pct` of it.
fn check_alert_before(f: &Facts<'_>) -> Option<Check> {
    let max = f.expect.alert_before_pct?;
    let m = f.metrics;
    let first = m.alerts.first();
    let cutoff_seq = m.cutoff.as_ref().map_or(u64::MAX, |c| c.seq);
    let ok = first.is_some_and(|a| {
        a.seq < cutoff_seq && u128::from(a.used) * 100 < u128::from(max) * u128::from(f.amount)
    });
    Some(Check::new(
        "alert before",
        Some(ok),
        match first {
            Some(a) => format!(
                "first alert: {}% crossed at {} with {:.1}% committed{} (below {max}% and before the cutoff)",
                a.threshold_percent,
                fmt_ms(a.t_ms),
                pct(a.used, f.amount),
                if a.seq < cutoff_seq { ", before the cutoff" } else { ", after the cutoff" }
            ),
            None => "no threshold of the budget was crossed".into(),
        },
    ))
}

fn check_thresholds_crossed(f: &Facts<'_>) -> Option<Check> {
    let want = f.expect.thresholds_crossed.as_ref()?;
    let got: Vec<u32> = f
        .metrics
        .alerts
        .iter()
        .map(|a| u32::from(a.threshold_percent))
        .collect();
    Some(Check::new(
        "thresholds crossed",
        Some(&got == want),
        format!("{got:?} (exactly {want:?})"),
    ))
}

fn check_spend_at_cutoff(f: &Facts<'_>) -> Option<Check> {
    let max = f.expect.spend_at_cutoff_max_pct?;
    let amount = f.amount;
    let spend = f.metrics.cutoff.as_ref().map(|c| c.spend);
    Some(Check::new(
        "spend at cutoff",
        Some(spend.is_some_and(|s| s as u128 * 100 <= max as u128 * amount as u128)),
        match spend {
            Some(s) => format!("{:.1}% of the budget (at most {max}%)", pct(s, amount)),
            None => "no cutoff".into(),
        },
    ))
}

fn check_calls_after_first_repeat(f: &Facts<'_>) -> Option<Check> {
    let max = f.expect.calls_after_first_repeat_max?;
    let n = f.metrics.calls_after_first_repeat;
    Some(Check::new(
        "calls after first repeat",
        Some(n.is_some_and(|n| n <= max)),
        match n {
            Some(n) => format!("{n} granted between the first repeat and the trip (at most {max})"),
            None => "the runaway never repeated a fingerprint".into(),
        },
    ))
}

fn check_time_to_cutoff(f: &Facts<'_>) -> Option<Check> {
    let max = f.expect.time_to_cutoff_max_ms?;
    let t = f.metrics.time_to_cutoff_ms;
    let ok = f.time_controlled.then(|| t.is_some_and(|t| t <= max));
    Some(Check::new(
        "time to cutoff",
        ok,
        match (f.time_controlled, t) {
            (false, _) => "skipped: no controllable clock against --cluster".into(),
            (true, Some(t)) => format!("{} simulated (at most {})", fmt_ms(t), fmt_ms(max)),
            (true, None) => "no cutoff".into(),
        },
    ))
}

fn check_well_behaved_served(f: &Facts<'_>) -> Option<Check> {
    let min = f.expect.well_behaved_served_min_pct?;
    let (granted, calls) = (f.metrics.well_behaved_grants, f.metrics.well_behaved_calls);
    Some(Check::new(
        "well-behaved served",
        Some(calls > 0 && granted * 100 >= min * calls),
        format!(
            "{granted}/{calls} granted ({:.0}%, at least {min}%)",
            pct(granted, calls)
        ),
    ))
}

fn check_runaway_grants(f: &Facts<'_>) -> Option<Check> {
    let max = f.expect.runaway_grants_max?;
    let m = f.metrics;
    Some(Check::new(
        "runaway grants",
        Some(m.runaway_grants <= max),
        format!(
            "{} granted of {} calls (at most {max})",
            m.runaway_grants, m.runaway_calls
        ),
    ))
}

fn check_expired_charged(f: &Facts<'_>) -> Option<Check> {
    let min = f.expect.expired_charged_min?;
    let charged = f.metrics.expired_charged;
    Some(Check::new(
        "expired and charged",
        f.time_controlled.then_some(charged >= min),
        format!("{charged} reservation(s) expired and were charged (at least {min})"),
    ))
}

fn check_served_again(f: &Facts<'_>) -> Option<Check> {
    if !f.expect.served_again_after_cutoff {
        return None;
    }
    Some(Check::new(
        "served again in the next window",
        f.time_controlled.then_some(f.served_again),
        if f.served_again {
            "a runaway was granted again after its cutoff"
        } else {
            "no runaway was granted after its cutoff"
        },
    ))
}

/// Tenant-scope budgets the history checker can hold the cluster to: lifetime ones, and
/// calendar ones when the whole run (through settling) stays inside one window.
fn checkable_budgets(scenario: &Scenario, run: &RunOutput) -> (Vec<BudgetSpec>, Vec<FinalUsage>) {
    let last_ms = run
        .audit
        .last()
        .map_or(run.end_ms, |r| r.at_ms.max(run.end_ms));
    let mut budgets = Vec::new();
    let mut usage = Vec::new();
    for limit in scenario.limits.iter().filter(|l| l.is_tenant_scope()) {
        let LimitKindToml::Budget { window, amount } = limit.kind_checked() else {
            continue;
        };
        if limit.dimension.ledger() == Dimension::Concurrency {
            continue;
        }
        let one_window = window
            .length_ms()
            .is_none_or(|len| run.start_ms / len == last_ms / len);
        if !one_window {
            continue;
        }
        budgets.push(BudgetSpec {
            tenant: limit.tenant.clone(),
            limit_id: limit.id.clone(),
            dimension: limit.dimension.ledger(),
            amount,
        });
        if let Some(u) = run.usage.get(&(limit.tenant.clone(), limit.id.clone())) {
            usage.push(FinalUsage {
                tenant: limit.tenant.clone(),
                limit_id: limit.id.clone(),
                used: u.used,
                held: u.held,
            });
        }
    }
    (budgets, usage)
}

/// Calendar budgets: the cluster's `used` for its current window equals the spend the audit
/// trail puts in that window (calls across a boundary counted in the right window).
fn window_checks(scenario: &Scenario, run: &RunOutput) -> Vec<Check> {
    let mut out = Vec::new();
    for limit in scenario.limits.iter().filter(|l| l.is_tenant_scope()) {
        let LimitKindToml::Budget { window, amount } = limit.kind_checked() else {
            continue;
        };
        let Some(len) = window.length_ms() else {
            continue;
        };
        let Some(u) = run.usage.get(&(limit.tenant.clone(), limit.id.clone())) else {
            continue;
        };
        let name = format!("window {}", limit.id);
        let Some(start) = u.window_start_ms else {
            out.push(Check::new(
                name,
                Some(false),
                "the cluster reports no window start for a calendar budget",
            ));
            continue;
        };
        let key = BudgetKey {
            tenant: &limit.tenant,
            limit_id: &limit.id,
            dimension: limit.dimension.ledger(),
            window_ms: Some(len),
            amount,
        };
        let rep = replay(&run.audit, &key, run.start_ms);
        let expected = rep.committed_by_window.get(&start).copied().unwrap_or(0);
        let windows = rep.committed_by_window.len();
        out.push(Check::new(
            name,
            Some(u.used == expected),
            format!(
                "window starting {} ms after step 0: the cluster counts {} used, the audit trail puts {expected} in it ({windows} window(s) seen)",
                start as i128 - run.start_ms as i128,
                u.used
            ),
        ));
    }
    out
}

/// Simulated milliseconds for people: `850 ms`, `12.5 s`, `4.2 min`, `16.7 h`.
pub fn fmt_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=119_999 => format!("{:.1} s", ms as f64 / 1e3),
        120_000..=7_199_999 => format!("{:.1} min", ms as f64 / 6e4),
        _ => format!("{:.1} h", ms as f64 / 3.6e6),
    }
}

/// An amount of a dimension for people: `$4.20`, `12.3k tokens`, `57 calls`.
pub fn fmt_amount(dimension: &str, amount: u64) -> String {
    match dimension {
        "cost" => format!("${:.2}", amount as f64 / 1e6),
        "tokens" if amount >= 10_000 => format!("{:.1}k tok", amount as f64 / 1e3),
        "tokens" => format!("{amount} tok"),
        _ => format!("{amount} {dimension}"),
    }
}
