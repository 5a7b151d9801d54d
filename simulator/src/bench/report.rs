//! The benchmark's table: one row per run, latencies in milliseconds.

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

pub fn table(results: &[RunResult]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<14} {:<6} {:<6} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7}\n",
        "system",
        "work",
        "mode",
        "clients",
        "pairs/s",
        "res p50",
        "res p99",
        "res p999",
        "com p50",
        "com p99",
        "com p999",
        "cpu us/pr",
        "srv us/pr",
        "errors"
    ));
    for r in results {
        out.push_str(&format!(
            "{:<14} {:<6} {:<6} {:>7} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9.1} {:>9} {:>7}\n",
            r.label,
            format!("{:?}", r.workload).to_lowercase(),
            format!("{:?}", r.mode).to_lowercase(),
            r.clients,
            r.throughput_pairs_s,
            ms(r.reserve.p50_us),
            ms(r.reserve.p99_us),
            ms(r.reserve.p999_us),
            ms(r.commit.p50_us),
            ms(r.commit.p99_us),
            ms(r.commit.p999_us),
            r.cpu_client_us_per_pair,
            r.cpu_servers_us_per_pair
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "-".into()),
            r.errors + r.denied,
        ));
    }
    if let Some(r) = results.first() {
        out.push_str(&format!(
            "latencies in ms; cpu us/pr: CPU µs per pair of {}",
            r.cpu_scope
        ));
    }
    out
}
