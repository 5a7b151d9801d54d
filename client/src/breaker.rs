//! The circuit breaker that makes a dead cluster fail fast: once every endpoint has refused
//! the connection within one operation, later operations fail at once instead of retrying
//! to the deadline, and one operation per probe interval is let through to find out whether
//! the cluster is back. Only refused connections open it: a node that answers anything
//! (even UNAVAILABLE during an election) closes it. This module never sleeps or sends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Longest reason an open breaker repeats to every refused operation; the rest is cut.
const REASON_BYTES_MAX: usize = 1024;

/// What an operation may do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// The cluster is believed reachable: the usual retries to the deadline.
    Closed,
    /// The breaker is open and this operation is the interval's probe: it tries the
    /// endpoints once more.
    Probe,
    /// The breaker is open: fail now, for this reason.
    Refused(String),
}

pub(crate) struct Breaker {
    probe_interval: Duration,
    /// Mirrors `state.is_some()` so the common, closed case takes no lock.
    open: AtomicBool,
    state: Mutex<Option<Open>>,
}

struct Open {
    /// Why it opened: the endpoints and the last connect error.
    reason: String,
    /// When the next operation may probe.
    probe_at: Instant,
}

impl Breaker {
    pub(crate) fn new(probe_interval: Duration) -> Breaker {
        assert!(!probe_interval.is_zero(), "config validation guarantees it");
        Breaker {
            probe_interval,
            open: AtomicBool::new(false),
            state: Mutex::new(None),
        }
    }

    fn state(&self) -> MutexGuard<'_, Option<Open>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether an operation starting at `now` may try the cluster. While open, the first
    /// operation at or after the probe time is the probe, and the next probe is one
    /// interval later, so at most one operation per interval tries a dead cluster.
    pub(crate) fn admit(&self, now: Instant) -> Admit {
        if !self.open.load(Ordering::Acquire) {
            return Admit::Closed;
        }
        let mut state = self.state();
        let Some(open) = state.as_mut() else {
            return Admit::Closed;
        };
        if now >= open.probe_at {
            open.probe_at = now + self.probe_interval;
            return Admit::Probe;
        }
        let probe_in = open.probe_at.saturating_duration_since(now);
        Admit::Refused(format!(
            "{}; failing fast until a probe reaches a node (next in {} ms)",
            open.reason,
            probe_in.as_millis()
        ))
    }

    /// Every endpoint refused the connection: fail fast from now on, probing every interval.
    pub(crate) fn open(&self, now: Instant, reason: &str) {
        let mut reason = reason.to_owned();
        if reason.len() > REASON_BYTES_MAX {
            let mut cut = REASON_BYTES_MAX;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let mut state = self.state();
        if state.is_none() {
            tracing::warn!(%reason, "tollgate cluster refuses every connection: failing fast");
        }
        *state = Some(Open {
            reason,
            probe_at: now + self.probe_interval,
        });
        self.open.store(true, Ordering::Release);
    }

    /// A node answered: back to the usual retries.
    pub(crate) fn close(&self) {
        if !self.open.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.state();
        if state.take().is_some() {
            tracing::info!("tollgate cluster reachable again");
        }
        self.open.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(500);

    #[test]
    fn closed_until_opened_then_one_probe_per_interval() {
        let breaker = Breaker::new(INTERVAL);
        let start = Instant::now();
        assert_eq!(breaker.admit(start), Admit::Closed);

        breaker.open(start, "every endpoint refused");
        let Admit::Refused(reason) = breaker.admit(start + Duration::from_millis(1)) else {
            panic!("open refuses before the probe time")
        };
        assert!(reason.starts_with("every endpoint refused"), "{reason}");
        assert_eq!(breaker.admit(start + INTERVAL), Admit::Probe);
        assert!(
            matches!(breaker.admit(start + INTERVAL), Admit::Refused(_)),
            "one probe per interval"
        );
        assert_eq!(breaker.admit(start + INTERVAL * 2), Admit::Probe);

        breaker.close();
        assert_eq!(breaker.admit(start + INTERVAL * 2), Admit::Closed);
    }

    #[test]
    fn a_long_reason_is_cut_at_a_char_boundary() {
        let breaker = Breaker::new(INTERVAL);
        let start = Instant::now();
        breaker.open(start, &"é".repeat(REASON_BYTES_MAX));
        let Admit::Refused(reason) = breaker.admit(start) else {
            panic!("open")
        };
        assert!(reason.len() < REASON_BYTES_MAX + 100, "{}", reason.len());
    }
}
