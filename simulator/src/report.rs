//! The table a person reads at a glance, and the failures with the command that replays
//! them.

use std::fmt::Write;

use crate::evaluate::{fmt_amount, fmt_ms, Metrics, ScenarioResult};
use crate::table;

/// The results as a table, one line per scenario and seed.
pub fn table(results: &[ScenarioResult]) -> String {
    use table::Align::{Left, Right};
    let mut out = table::new(&[
        ("scenario", Left),
        ("seed", Right),
        ("outcome", Left),
        ("proves", Left),
        ("spend at cutoff / budget", Left),
        ("calls after 1st repeat", Right),
        ("time to cutoff", Right),
        ("cut off by", Left),
        ("alerts", Left),
        ("well-behaved served", Left),
        ("history", Left),
    ]);
    for r in results {
        out.add_row(row(r));
    }
    table::render(&out)
}

fn row(r: &ScenarioResult) -> Vec<String> {
    let m = &r.metrics;
    vec![
        r.scenario.clone(),
        r.seed.to_string(),
        if r.passed { "PASS" } else { "FAIL" }.into(),
        r.proves.clone(),
        spend_at_cutoff(m),
        m.calls_after_first_repeat
            .map_or("-".into(), |n| n.to_string()),
        m.time_to_cutoff_ms.map_or("-".into(), fmt_ms),
        cut_off_by(m),
        alerts(m),
        well_behaved_served(m),
        history(r),
    ]
}

fn spend_at_cutoff(m: &Metrics) -> String {
    let dim = m.budget_dimension.as_str();
    match &m.cutoff {
        Some(c) => format!(
            "{} / {} ({:.0}%)",
            fmt_amount(dim, c.spend),
            fmt_amount(dim, m.budget_amount),
            c.spend as f64 * 100.0 / m.budget_amount.max(1) as f64
        ),
        None => format!("no cutoff / {}", fmt_amount(dim, m.budget_amount)),
    }
}

/// The first cutoff's reason, and how many runaway agents were cut off when more than one.
fn cut_off_by(m: &Metrics) -> String {
    let Some(first) = &m.cutoff else {
        return "-".into();
    };
    match m.cutoffs.len() {
        0 | 1 => first.reason.clone(),
        n if m.cutoffs.iter().all(|c| c.reason == first.reason) => {
            format!("{} ({n} agents)", first.reason)
        }
        n => format!("{} and others ({n} agents)", first.reason),
    }
}

/// The soft thresholds of the budget crossed, in order, with the first one's time.
fn alerts(m: &Metrics) -> String {
    let Some(first) = m.alerts.first() else {
        return "-".into();
    };
    let crossed: Vec<String> = m
        .alerts
        .iter()
        .take(8)
        .map(|a| format!("{}%", a.threshold_percent))
        .collect();
    format!("{} (first at {})", crossed.join(" "), fmt_ms(first.t_ms))
}

fn well_behaved_served(m: &Metrics) -> String {
    if m.well_behaved_calls == 0 {
        return "-".to_string();
    }
    format!(
        "{:.0}% ({}/{})",
        m.well_behaved_grants as f64 * 100.0 / m.well_behaved_calls as f64,
        m.well_behaved_grants,
        m.well_behaved_calls
    )
}

fn history(r: &ScenarioResult) -> String {
    if r.history.violations.is_empty() {
        format!("{} ops ok", r.history.ops)
    } else {
        format!("{} VIOLATIONS", r.history.violations.len())
    }
}

/// Each failed expectation, and how to replay the run.
pub fn failures(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    for r in results.iter().filter(|r| !r.passed) {
        let _ = writeln!(out, "FAIL {} (seed {}):", r.scenario, r.seed);
        for check in r.checks.iter().filter(|c| c.ok == Some(false)) {
            let _ = writeln!(out, "  - {}: {}", check.name, check.detail);
        }
        for violation in r.history.violations.iter().take(10) {
            let _ = writeln!(out, "  - history: {violation}");
        }
        let _ = writeln!(
            out,
            "  replay: cargo run -p tollgate-sim -- run {} --seed {}",
            r.path, r.seed
        );
    }
    out
}

/// Every expectation of every run, for `--verbose`.
pub fn details(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    for r in results {
        let _ = writeln!(
            out,
            "{} (seed {}, {} ms wall):",
            r.scenario, r.seed, r.wall_ms
        );
        for check in &r.checks {
            let mark = match check.ok {
                Some(true) => "ok  ",
                Some(false) => "FAIL",
                None => "skip",
            };
            let _ = writeln!(out, "  {mark} {}: {}", check.name, check.detail);
        }
    }
    out
}
