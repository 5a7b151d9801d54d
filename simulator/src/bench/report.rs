//! The benchmark's table: one row per run, latencies in milliseconds (the shared style of
//! `crate::table`); the JSON of `--json` is the machine-readable form.

use super::RunResult;

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1e3)
}

/// One line per run, for progress on stderr.
pub fn line(r: &RunResult) -> String {
    format!(
        "{} {:?}/{:?} c={}: {:.0} pairs/s, reserve p99 {} ms, commit p99 {} ms, {} errors",
        r.label,
        r.workload,
        r.mode,
        r.clients,
        r.throughput_pairs_s,
        ms(r.reserve.p99_us),
        ms(r.commit.p99_us),
        r.errors
    )
}

/// One row per run, then a line saying what the CPU figures cover.
pub fn table(results: &[RunResult]) -> String {
    use crate::table::Align::{Left, Right};
    let mut table = crate::table::new(&[
        ("system", Left),
        ("work", Left),
        ("mode", Left),
        ("clients", Right),
        ("pairs/s", Right),
        ("res p50", Right),
        ("res p99", Right),
        ("res p999", Right),
        ("com p50", Right),
        ("com p99", Right),
        ("com p999", Right),
        ("cpu us/pr", Right),
        ("srv us/pr", Right),
        ("errors", Right),
    ]);
    for r in results {
        table.add_row(row(r));
    }
    let mut out = crate::table::render(&table);
    if let Some(r) = results.first() {
        out.push_str(&format!(
            "latencies in ms; cpu us/pr: CPU µs per pair of {}",
            r.cpu_scope
        ));
    }
    out
}

/// Budget runs: what happened at the edge, one row per run that had a budget.
pub fn budget_table(results: &[RunResult]) -> String {
    use crate::table::Align::{Left, Right};
    let mut table = crate::table::new(&[
        ("system", Left),
        ("clients", Right),
        ("procs", Right),
        ("pairs/s to exh", Right),
        ("exhausted s", Right),
        ("overspend µ", Right),
        ("audit", Left),
        ("false den", Right),
        ("denials", Right),
        ("res p50", Right),
        ("res p99", Right),
        ("raft ent/s", Right),
        ("srv cores", Right),
    ]);
    let opt = |v: Option<f64>, digits: usize| {
        v.map(|v| format!("{v:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    for r in results {
        let Some(b) = &r.budget else { continue };
        let audit = match (b.audit_matches, b.audit_complete) {
            (Some(true), Some(true)) => "matches",
            (Some(false), Some(true)) => "DIFFERS",
            (Some(_), _) => "incomplete",
            (None, _) => "-",
        };
        table.add_row(vec![
            r.label.clone(),
            r.clients.to_string(),
            r.processes.to_string(),
            format!("{:.0}", b.pairs_s_before_exhaustion),
            opt(b.exhausted_at_s, 2),
            b.overspend
                .map(|o| o.to_string())
                .unwrap_or_else(|| "-".into()),
            audit.into(),
            b.false_denials.to_string(),
            b.denials.to_string(),
            ms(r.reserve.p50_us),
            ms(r.reserve.p99_us),
            opt(r.raft_entries_s, 0),
            opt(r.cpu_servers_cores, 2),
        ]);
    }
    crate::table::render(&table)
}

fn row(r: &RunResult) -> Vec<String> {
    vec![
        r.label.clone(),
        format!("{:?}", r.workload).to_lowercase(),
        format!("{:?}", r.mode).to_lowercase(),
        r.clients.to_string(),
        format!("{:.0}", r.throughput_pairs_s),
        ms(r.reserve.p50_us),
        ms(r.reserve.p99_us),
        ms(r.reserve.p999_us),
        ms(r.commit.p50_us),
        ms(r.commit.p99_us),
        ms(r.commit.p999_us),
        format!("{:.1}", r.cpu_client_us_per_pair),
        r.cpu_servers_us_per_pair
            .map(|c| format!("{c:.1}"))
            .unwrap_or_else(|| "-".into()),
        (r.errors + r.denied).to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::stats::LatencySummary;
    use super::super::systems::{System, Workload};
    use super::super::Mode;
    use super::*;

    fn run(label: &str, pairs_s: f64, servers: Option<f64>) -> RunResult {
        let latency = |p50_us, p99_us, p999_us| LatencySummary {
            p50_us,
            p99_us,
            p999_us,
            ..LatencySummary::default()
        };
        RunResult {
            label: label.into(),
            system: System::Tollgate,
            workload: Workload::Hot,
            mode: Mode::Closed,
            clients: 64,
            connections: 4,
            coalesce: true,
            duration_s: 10.0,
            offered_rate: None,
            pairs: 1,
            throughput_pairs_s: pairs_s,
            denied: 1,
            errors: 2,
            missed: 0,
            conflicts: 0,
            error_last: None,
            reserve: latency(4_210, 9_870, 15_000),
            commit: latency(3_100, 8_000, 12_345),
            cpu_client_us_per_pair: 27.84,
            cpu_servers_us_per_pair: servers,
            cpu_scope: "client only (no --server-pids given)".into(),
            processes: 1,
            leases: false,
            cpu_servers_cores: None,
            raft_entries_s: None,
            budget: None,
        }
    }

    #[test]
    fn the_table_aligns_figures_right_and_ends_with_what_the_cpu_covers() {
        let table = table(&[
            run("tollgate", 7415.4, Some(142.46)),
            run("redis", 41254.0, None),
        ]);
        let expected = "\
| system   | work | mode   | clients | pairs/s | res p50 | res p99 | res p999 | com p50 | com p99 | com p999 | cpu us/pr | srv us/pr | errors |
|----------|------|--------|---------|---------|---------|---------|----------|---------|---------|----------|-----------|-----------|--------|
| tollgate | hot  | closed |      64 |    7415 |    4.21 |    9.87 |    15.00 |    3.10 |    8.00 |    12.35 |      27.8 |     142.5 |      3 |
| redis    | hot  | closed |      64 |   41254 |    4.21 |    9.87 |    15.00 |    3.10 |    8.00 |    12.35 |      27.8 |         - |      3 |
latencies in ms; cpu us/pr: CPU µs per pair of client only (no --server-pids given)";
        assert_eq!(table, expected);
    }
}
