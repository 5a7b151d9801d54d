//! What a benchmark run measures: latency histograms per operation, pair counts, and CPU
//! time of this process and of named server processes.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency a histogram records (60 s, in µs); longer ones are clamped to it, so a
/// stuck request still counts and memory stays bounded.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant figures kept by each histogram: 3 gives 0.1 % resolution at ~100 KB each.
const HISTOGRAM_SIGFIG: u8 = 3;

/// A latency histogram in microseconds (HDR: bounded memory, 0.1 % resolution).
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        // 1 µs .. 60 s at 3 significant figures is a valid configuration.
        Latency(
            Histogram::new_with_bounds(1, LATENCY_US_MAX, HISTOGRAM_SIGFIG)
                .expect("valid histogram bounds"),
        )
    }
}

impl Latency {
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.clamp(1, LATENCY_US_MAX));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// The recorded values as (value, count) pairs: how a child process hands its histogram
    /// to the parent (see `procs.rs`).
    pub fn to_counts(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    /// A histogram from `to_counts`' pairs; values are clamped into the bounds.
    pub fn from_counts(counts: &[(u64, u64)]) -> Latency {
        let mut latency = Latency::default();
        for &(value, count) in counts {
            let _ = latency.0.record_n(value.clamp(1, LATENCY_US_MAX), count);
        }
        latency
    }

    pub fn summary(&self) -> LatencySummary {
        let h = &self.0;
        LatencySummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean().round() as u64,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: u64,
}

/// What one worker saw in the measured window.
#[derive(Default)]
pub struct WorkerStats {
    pub reserve: Latency,
    pub commit: Latency,
    /// Reserve and commit both succeeded.
    pub pairs: u64,
    /// Reserves denied by a limit (the workload's budgets are sized so this stays 0).
    pub denied: u64,
    /// Operations that failed (unavailable, rejected, out of retries).
    pub errors: u64,
    /// Open loop: sends that were still due when the run ended (the system fell behind).
    pub missed: u64,
    /// etcd: compare-and-swap attempts that lost the race and were retried.
    pub conflicts: u64,
    pub error_last: Option<String>,
    /// Budget runs (`--budget`, `--budget-runs-out`): when pairs completed and denials
    /// happened, from the run's start (warm-up included); None otherwise.
    pub timeline: Option<Timeline>,
}

/// Most buckets of a timeline: bounds memory per worker whatever the run's length.
pub const TIMELINE_BUCKETS_MAX: usize = 2_000;
/// Narrowest timeline bucket, in microseconds.
pub const TIMELINE_BUCKET_US_MIN: u64 = 10_000;

/// Pairs completed and budget denials per time bucket since the run's start, and the first
/// denial and last grant exactly: what "before exhaustion" and "false denial" are computed
/// from. Every process counts from the same wall-clock start, so timelines merge.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Timeline {
    pub bucket_us: u64,
    pub pairs: Vec<u64>,
    pub denials: Vec<u64>,
    /// Every pair completed, warm-up included (what the clients spent).
    pub pairs_all: u64,
    pub first_denial_us: Option<u64>,
    pub last_grant_us: Option<u64>,
}

impl Timeline {
    /// A timeline covering `span_us` with buckets at least `TIMELINE_BUCKET_US_MIN` wide.
    pub fn new(span_us: u64) -> Timeline {
        let bucket_us = span_us
            .div_ceil(TIMELINE_BUCKETS_MAX as u64)
            .max(TIMELINE_BUCKET_US_MIN);
        let buckets = (span_us / bucket_us + 1).min(TIMELINE_BUCKETS_MAX as u64 + 1) as usize;
        Timeline {
            bucket_us,
            pairs: vec![0; buckets],
            denials: vec![0; buckets],
            pairs_all: 0,
            first_denial_us: None,
            last_grant_us: None,
        }
    }

    fn bucket(&self, at_us: u64) -> usize {
        ((at_us / self.bucket_us) as usize).min(self.pairs.len().saturating_sub(1))
    }

    pub fn pair(&mut self, granted_us: u64, done_us: u64) {
        let bucket = self.bucket(done_us);
        self.pairs[bucket] += 1;
        self.pairs_all += 1;
        self.last_grant_us = self.last_grant_us.max(Some(granted_us));
    }

    pub fn denial(&mut self, at_us: u64) {
        let bucket = self.bucket(at_us);
        self.denials[bucket] += 1;
        self.first_denial_us = Some(self.first_denial_us.map_or(at_us, |t| t.min(at_us)));
    }

    /// Adds another timeline of the same shape (same run); a different shape is a bug in
    /// the harness and is refused.
    pub fn merge(&mut self, other: &Timeline) -> Result<(), String> {
        if other.bucket_us != self.bucket_us || other.pairs.len() != self.pairs.len() {
            return Err("timelines of different shapes".into());
        }
        for (a, b) in self.pairs.iter_mut().zip(&other.pairs) {
            *a += b;
        }
        for (a, b) in self.denials.iter_mut().zip(&other.denials) {
            *a += b;
        }
        self.pairs_all += other.pairs_all;
        self.first_denial_us = match (self.first_denial_us, other.first_denial_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_grant_us = self.last_grant_us.max(other.last_grant_us);
        Ok(())
    }

    /// Pairs completed in the whole buckets between `from_us` and `until_us`, and the time
    /// those buckets cover (bucket resolution: a rate is the one over the other).
    pub fn pairs_between(&self, from_us: u64, until_us: u64) -> (u64, u64) {
        let first = from_us.div_ceil(self.bucket_us) as usize;
        let end = ((until_us / self.bucket_us) as usize).min(self.pairs.len());
        if end <= first {
            return (0, 0);
        }
        let pairs = self.pairs[first..end].iter().sum();
        (pairs, (end - first) as u64 * self.bucket_us)
    }

    /// Denials in buckets that end before `until_us`.
    pub fn denials_before(&self, until_us: u64) -> u64 {
        self.denials
            .iter()
            .enumerate()
            .filter(|&(i, _)| (i as u64 + 1) * self.bucket_us <= until_us)
            .map(|(_, n)| n)
            .sum()
    }
}

impl WorkerStats {
    pub fn merge(&mut self, other: WorkerStats) {
        self.reserve.merge(&other.reserve);
        self.commit.merge(&other.commit);
        self.pairs += other.pairs;
        self.denied += other.denied;
        self.errors += other.errors;
        self.missed += other.missed;
        self.conflicts += other.conflicts;
        if other.error_last.is_some() {
            self.error_last = other.error_last;
        }
        match (&mut self.timeline, other.timeline) {
            (Some(mine), Some(theirs)) => {
                if let Err(error) = mine.merge(&theirs) {
                    self.errors += 1;
                    self.error_last = Some(error);
                }
            }
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

/// CPU seconds (user + system) used so far by this process.
pub fn cpu_self_s() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return 0.0;
        }
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// CPU seconds (user + system) used so far by process `pid`, from /proc; None if it is gone.
pub fn cpu_pid_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing paren are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the paren: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / ticks)
}

/// Resident memory of this process in bytes, from /proc/self/statm.
pub fn rss_self_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

/// CPU of this process and of the named server processes, sampled at two instants.
#[derive(Clone, Debug)]
pub struct CpuSample {
    pub self_s: f64,
    pub servers_s: Option<f64>,
}

impl CpuSample {
    pub fn take(server_pids: &[u32]) -> CpuSample {
        let servers_s = if server_pids.is_empty() {
            None
        } else {
            server_pids
                .iter()
                .map(|&pid| cpu_pid_s(pid))
                .sum::<Option<f64>>()
        };
        CpuSample {
            self_s: cpu_self_s(),
            servers_s,
        }
    }
}
