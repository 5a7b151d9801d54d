//! Turns a run into what a person asks of it: when was the runaway cut off, how much had
//! been spent by then, how many calls got through after it started repeating, were the
//! other agents still served, and does the whole history check out.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tollgate_ledger::{AuditEvent, AuditRecord, DenyReason, Dimension};

use crate::history::{self, BudgetSpec, CheckReport, FinalUsage};
use crate::runner::{CallNote, CallOutcome, RunOutput};
use crate::scenario::{LimitKindToml, Role, Scenario};

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
    pub agent: String,
    /// `tripped`, `frozen`, or `limit ID`.
    pub reason: String,
    /// committed + held of the primary budget just before the denial.
    pub spend: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    pub budget_id: String,
    pub budget_dimension: String,
    pub budget_amount: u64,
    pub cutoff: Option<Cutoff>,
    /// Simulated ms from a runaway's first call to the cutoff.
    pub time_to_cutoff_ms: Option<u64>,
    /// Grants a runaway got from its first repeated fingerprint until it tripped.
    pub calls_after_first_repeat: Option<u64>,
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
    pub path: String,
    pub seed: u64,
    pub passed: bool,
    pub wall_ms: u64,
    pub metrics: Metrics,
    pub checks: Vec<Check>,
    pub history: CheckReport,
}

/// The primary budget's spend replayed from the audit trail, window by window.
struct Replay {
    /// (seq, point) after each record that changed the budget.
    points: Vec<(u64, Point)>,
    /// Committed spend per window start (0 for lifetime).
    committed_by_window: BTreeMap<u64, u64>,
    /// Grants that took committed + held above the amount: (seq, total).
    overspends: Vec<(u64, u64)>,
}

fn replay(
    audit: &[AuditRecord],
    tenant: &str,
    limit_id: &str,
    dimension: Dimension,
    window_ms: Option<u64>,
    amount: u64,
    start_ms: u64,
) -> Replay {
    let window_of = |at: u64| window_ms.map_or(0, |len| at - at % len);
    let mut active = false;
    let mut held: HashMap<u64, u64> = HashMap::new();
    let mut expired: HashMap<u64, u64> = HashMap::new();
    let mut held_sum: u64 = 0;
    let mut window = 0;
    let mut by_window: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = Replay {
        points: Vec::new(),
        committed_by_window: BTreeMap::new(),
        overspends: Vec::new(),
    };
    for record in audit {
        if record.tenant.as_ref().is_none_or(|t| t.as_str() != tenant) {
            continue;
        }
        if let AuditEvent::LimitPut(spec) = &record.event {
            if spec.id.as_str() == limit_id {
                active = true;
            }
            continue;
        }
        if !active {
            continue;
        }
        window = window.max(window_of(record.at_ms));
        let spent = record.amounts.get(dimension);
        let id = record.reservation_id.map(|r| r.0).unwrap_or(0);
        let committed = by_window.entry(window).or_default();
        match &record.event {
            AuditEvent::Grant => {
                held.insert(id, spent);
                held_sum += spent;
                if committed.saturating_add(held_sum) > amount {
                    out.overspends.push((record.seq, *committed + held_sum));
                }
            }
            AuditEvent::Commit { late, .. } => {
                if let Some(estimate) = held.remove(&id) {
                    held_sum -= estimate;
                    *committed += spent;
                } else if let Some(charge) = expired.remove(&id) {
                    debug_assert!(late);
                    *committed = committed.saturating_sub(charge) + spent;
                }
            }
            AuditEvent::Release => {
                if let Some(estimate) = held.remove(&id) {
                    held_sum -= estimate;
                }
            }
            AuditEvent::Expire { charged } => {
                if let Some(estimate) = held.remove(&id) {
                    held_sum -= estimate;
                    let charge = if *charged { estimate } else { 0 };
                    *committed += charge;
                    expired.insert(id, charge);
                }
            }
            AuditEvent::Record => *committed += spent,
            _ => continue,
        }
        out.points.push((
            record.seq,
            Point {
                t_ms: record.at_ms.saturating_sub(start_ms),
                committed: *committed,
                held: held_sum,
            },
        ));
    }
    out.committed_by_window = by_window;
    out
}

fn deny_reason(reason: &DenyReason) -> String {
    match reason {
        DenyReason::Limit { limit_id, .. } => format!("limit {limit_id}"),
        DenyReason::Frozen { .. } => "frozen".into(),
        DenyReason::Tripped { .. } => "tripped".into(),
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

/// Grants between a runaway's first repeated fingerprint and its trip, in log order; the
/// largest over runaway agents. None when no runaway repeated a fingerprint.
fn calls_after_first_repeat(notes: &[CallNote]) -> Option<u64> {
    let mut ordered: Vec<&CallNote> = notes
        .iter()
        .filter(|n| n.role == Role::Runaway && n.log_index > 0)
        .collect();
    ordered.sort_by_key(|n| (n.log_index, n.invoked_ms));
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
        .values()
        .filter_map(|a| a.grants_after_repeat)
        .max()
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Computes the metrics and checks every expectation of the scenario.
pub fn evaluate(
    scenario: &Scenario,
    path: &str,
    seed: u64,
    run: &RunOutput,
    wall_ms: u64,
) -> ScenarioResult {
    let expect = &scenario.expect;
    let budget = scenario
        .limits
        .iter()
        .find(|l| l.id == expect.budget)
        .expect("validate checked expect.budget");
    let (window, amount) = match budget.kind_checked() {
        LimitKindToml::Budget { window, amount } => (window, amount),
        _ => unreachable!("validate checked that expect.budget is a budget"),
    };
    let dimension = budget.dimension.ledger();
    let rep = replay(
        &run.audit,
        &budget.tenant,
        &budget.id,
        dimension,
        window.length_ms(),
        amount,
        run.start_ms,
    );
    let runaways: Vec<String> = scenario
        .agents
        .iter()
        .filter(|a| a.role == Role::Runaway)
        .flat_map(|a| a.names())
        .collect();
    let is_runaway = |r: &AuditRecord| {
        r.agent
            .as_ref()
            .is_some_and(|a| runaways.iter().any(|n| n == a.as_str()))
    };
    let first_call = run
        .audit
        .iter()
        .find(|r| is_runaway(r) && matches!(r.event, AuditEvent::Grant | AuditEvent::Deny(_)));
    let cutoff_record = run
        .audit
        .iter()
        .find(|r| is_runaway(r) && matches!(r.event, AuditEvent::Deny(_)));
    let cutoff = cutoff_record.map(|r| {
        let spend = rep
            .points
            .iter()
            .take_while(|(seq, _)| *seq < r.seq)
            .last()
            .map_or(0, |(_, p)| p.committed + p.held);
        Cutoff {
            t_ms: r.at_ms.saturating_sub(run.start_ms),
            agent: r
                .agent
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            reason: match &r.event {
                AuditEvent::Deny(reason) => deny_reason(reason),
                _ => String::new(),
            },
            spend,
        }
    });
    let served_again = cutoff_record.is_some_and(|c| {
        run.audit
            .iter()
            .any(|r| r.seq > c.seq && is_runaway(r) && r.event == AuditEvent::Grant)
    });
    let count = |role: Role, granted_only: bool| {
        run.notes
            .iter()
            .filter(|n| n.role == role && (!granted_only || n.outcome == CallOutcome::Granted))
            .count() as u64
    };
    let metrics = Metrics {
        budget_id: budget.id.clone(),
        budget_dimension: format!("{dimension:?}").to_lowercase(),
        budget_amount: amount,
        time_to_cutoff_ms: match (first_call, cutoff_record) {
            (Some(first), Some(cut)) => Some(cut.at_ms.saturating_sub(first.at_ms)),
            _ => None,
        },
        cutoff,
        calls_after_first_repeat: calls_after_first_repeat(&run.notes),
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
    };

    let mut checks = Vec::new();
    let mut add = |name: &str, ok: Option<bool>, detail: String| {
        checks.push(Check {
            name: name.into(),
            ok,
            detail,
        })
    };

    // The whole history against the reference model.
    let (budgets, final_usage) = checkable_budgets(scenario, run);
    let history = history::check(&run.events, &run.audit, &budgets, &final_usage);
    add(
        "history",
        Some(history.is_ok()),
        if history.is_ok() {
            format!(
                "{} ops ({} acknowledged, {} rejected, {} ambiguous) agree with the audit trail; {} budget(s) replayed",
                history.ops,
                history.acknowledged,
                history.rejected,
                history.ambiguous,
                budgets.len()
            )
        } else {
            format!(
                "{} violation(s); first: {}",
                history.violations.len(),
                history.violations[0]
            )
        },
    );
    add(
        "audit chain",
        Some(run.audit_chain_error.is_none()),
        run.audit_chain_error
            .clone()
            .unwrap_or_else(|| "the hash chain verifies".into()),
    );
    add(
        "no grant over budget",
        Some(rep.overspends.is_empty()),
        match rep.overspends.first() {
            None => format!(
                "committed + held of {} never passed {amount} by a grant",
                budget.id
            ),
            Some((seq, total)) => format!(
                "the grant at audit seq {seq} took committed + held of {} to {total} > {amount}",
                budget.id
            ),
        },
    );
    if expect.cutoff {
        add(
            "runaway cut off",
            Some(metrics.cutoff.is_some()),
            match &metrics.cutoff {
                Some(c) => format!(
                    "agent {} denied ({}) at {}",
                    c.agent,
                    c.reason,
                    fmt_ms(c.t_ms)
                ),
                None => format!(
                    "no runaway was ever denied ({} calls, {} granted)",
                    metrics.runaway_calls, metrics.runaway_grants
                ),
            },
        );
    }
    if let Some(by) = &expect.cutoff_by {
        let reason = metrics.cutoff.as_ref().map(|c| c.reason.clone());
        let wanted = match by.as_str() {
            "tripped" | "frozen" => by.clone(),
            limit => format!("limit {limit}"),
        };
        add(
            "cut off by",
            Some(reason.as_deref() == Some(wanted.as_str())),
            format!(
                "expected {wanted}, got {}",
                reason.unwrap_or_else(|| "no cutoff".into())
            ),
        );
    }
    if let Some(max) = expect.spend_at_cutoff_max_pct {
        let spend = metrics.cutoff.as_ref().map(|c| c.spend);
        add(
            "spend at cutoff",
            Some(spend.is_some_and(|s| s as u128 * 100 <= max as u128 * amount as u128)),
            match spend {
                Some(s) => format!("{:.1}% of the budget (at most {max}%)", pct(s, amount)),
                None => "no cutoff".into(),
            },
        );
    }
    if let Some(max) = expect.calls_after_first_repeat_max {
        let n = metrics.calls_after_first_repeat;
        add(
            "calls after first repeat",
            Some(n.is_some_and(|n| n <= max)),
            match n {
                Some(n) => {
                    format!("{n} granted between the first repeat and the trip (at most {max})")
                }
                None => "the runaway never repeated a fingerprint".into(),
            },
        );
    }
    if let Some(max) = expect.time_to_cutoff_max_ms {
        let t = metrics.time_to_cutoff_ms;
        let ok = run.time_controlled.then(|| t.is_some_and(|t| t <= max));
        add(
            "time to cutoff",
            ok,
            match (run.time_controlled, t) {
                (false, _) => "skipped: no controllable clock against --cluster".into(),
                (true, Some(t)) => format!("{} simulated (at most {})", fmt_ms(t), fmt_ms(max)),
                (true, None) => "no cutoff".into(),
            },
        );
    }
    if let Some(min) = expect.well_behaved_served_min_pct {
        let (granted, calls) = (metrics.well_behaved_grants, metrics.well_behaved_calls);
        add(
            "well-behaved served",
            Some(calls > 0 && granted * 100 >= min * calls),
            format!(
                "{granted}/{calls} granted ({:.0}%, at least {min}%)",
                pct(granted, calls)
            ),
        );
    }
    if let Some(max) = expect.runaway_grants_max {
        add(
            "runaway grants",
            Some(metrics.runaway_grants <= max),
            format!(
                "{} granted of {} calls (at most {max})",
                metrics.runaway_grants, metrics.runaway_calls
            ),
        );
    }
    if let Some(min) = expect.expired_charged_min {
        add(
            "expired and charged",
            run.time_controlled
                .then_some(metrics.expired_charged >= min),
            format!(
                "{} reservation(s) expired and were charged (at least {min})",
                metrics.expired_charged
            ),
        );
    }
    if expect.served_again_after_cutoff {
        add(
            "served again in the next window",
            run.time_controlled.then_some(served_again),
            if served_again {
                "a runaway was granted again after its cutoff".into()
            } else {
                "no runaway was granted after its cutoff".into()
            },
        );
    }
    for (name, ok, detail) in window_checks(scenario, run) {
        add(&name, Some(ok), detail);
    }

    let passed = checks.iter().all(|c| c.ok != Some(false));
    ScenarioResult {
        scenario: scenario.name.clone(),
        path: path.into(),
        seed,
        passed,
        wall_ms,
        metrics,
        checks,
        history,
    }
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
fn window_checks(scenario: &Scenario, run: &RunOutput) -> Vec<(String, bool, String)> {
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
        let Some(start) = u.window_start_ms else {
            out.push((
                format!("window {}", limit.id),
                false,
                "the cluster reports no window start for a calendar budget".into(),
            ));
            continue;
        };
        let rep = replay(
            &run.audit,
            &limit.tenant,
            &limit.id,
            limit.dimension.ledger(),
            Some(len),
            amount,
            run.start_ms,
        );
        let expected = rep.committed_by_window.get(&start).copied().unwrap_or(0);
        let windows = rep.committed_by_window.len();
        out.push((
            format!("window {}", limit.id),
            u.used == expected,
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
