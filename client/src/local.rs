//! The fail-open allowance: spend this process may make while the cluster is unreachable,
//! and the reports of that spend waiting for the cluster's return. Never replicated; it
//! exists so an operator can trade SPEC guarantee 1 for availability at one call site, with
//! a hard cap on how much that trade can cost, and without losing what was spent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tollgate_proto::v1;

use crate::types::Amounts;

/// Most settled local reservations waiting to be reported to the cluster. At it no new
/// local grant is made: a report is never dropped to make room.
pub const OFFLINE_REPORTS_MAX: usize = 10_000;

pub(crate) struct LocalCap {
    cap: Amounts,
    /// Held estimates of local reservations plus what settled ones spent, until reported.
    used: Mutex<Amounts>,
    /// Settled local reservations as the Records (flagged offline) that report them, oldest
    /// first, with what each spent.
    reports: Mutex<VecDeque<(v1::RecordRequest, Amounts)>>,
    /// One report task at a time, so reports arrive in order and each once.
    reporting: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LocalCap {
    pub(crate) fn new(cap: Amounts) -> LocalCap {
        LocalCap {
            cap,
            used: Mutex::new(Amounts::ZERO),
            reports: Mutex::new(VecDeque::new()),
            reporting: AtomicBool::new(false),
        }
    }

    fn used_mut(&self) -> std::sync::MutexGuard<'_, Amounts> {
        lock(&self.used)
    }

    /// Holds `estimate` if it fits under the cap; otherwise says what is left.
    pub(crate) fn try_hold(&self, estimate: Amounts) -> Result<(), String> {
        let waiting = lock(&self.reports).len();
        if waiting >= OFFLINE_REPORTS_MAX {
            return Err(format!(
                "{waiting} local grants wait to be reported (OFFLINE_REPORTS_MAX)"
            ));
        }
        let mut used = self.used_mut();
        match used.checked_add(estimate) {
            Some(after) if after.fits_within(self.cap) => {
                *used = after;
                Ok(())
            }
            _ => Err(format!(
                "fail-open local cap exhausted: used {} of {}, asked {}",
                *used, self.cap, estimate
            )),
        }
    }

    /// A local reservation was committed (or abandoned, at its estimate): replace its
    /// estimate with what was spent and queue `report`. The actual may exceed the cap; spend
    /// that happened is counted, never dropped.
    pub(crate) fn settle(&self, estimate: Amounts, actual: Amounts, report: v1::RecordRequest) {
        {
            let mut used = self.used_mut();
            let without = used.saturating_sub(estimate);
            *used =
                without
                    .checked_add(actual)
                    .unwrap_or(Amounts::new(u64::MAX, u64::MAX, u64::MAX));
        }
        lock(&self.reports).push_back((report, actual));
    }

    /// Reports waiting for the cluster.
    pub(crate) fn reports_waiting(&self) -> usize {
        lock(&self.reports).len()
    }

    /// The oldest report waiting, to send (again: it keeps its request id).
    pub(crate) fn next_report(&self) -> Option<v1::RecordRequest> {
        lock(&self.reports)
            .front()
            .map(|(report, _)| report.clone())
    }

    /// The oldest report reached the cluster (or was refused for good): its spend is the
    /// cluster's to count now, and leaves the local allowance.
    pub(crate) fn reported(&self) {
        if let Some((_, spent)) = lock(&self.reports).pop_front() {
            let mut used = self.used_mut();
            *used = used.saturating_sub(spent);
        }
    }

    /// Claims the one report task; false if another runs.
    pub(crate) fn start_reporting(&self) -> bool {
        !self.reporting.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn stop_reporting(&self) {
        self.reporting.store(false, Ordering::Release);
    }

    /// A local reservation was released: the call did not happen. (A dropped one keeps its
    /// estimate counted: the call may have happened.)
    pub(crate) fn give_back(&self, estimate: Amounts) {
        let mut used = self.used_mut();
        *used = used.saturating_sub(estimate);
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> Amounts {
        *self.used_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_until_the_cap_then_refuses() {
        let cap = LocalCap::new(Amounts::new(100, 1_000, 3));
        cap.try_hold(Amounts::new(60, 100, 1)).unwrap();
        let refused = cap.try_hold(Amounts::new(60, 100, 1)).unwrap_err();
        assert!(
            refused.contains("fail-open local cap exhausted"),
            "{refused}"
        );
        cap.try_hold(Amounts::new(40, 100, 1)).unwrap();
        assert_eq!(cap.used(), Amounts::new(100, 200, 2));
    }

    #[test]
    fn release_gives_back_and_commit_counts_the_actual() {
        let cap = LocalCap::new(Amounts::new(100, 1_000, 10));
        cap.try_hold(Amounts::new(50, 0, 1)).unwrap();
        cap.give_back(Amounts::new(50, 0, 1));
        assert_eq!(cap.used(), Amounts::ZERO);
        cap.try_hold(Amounts::new(50, 0, 1)).unwrap();
        let report = v1::RecordRequest {
            request_id: "offline-1".into(),
            offline: true,
            ..Default::default()
        };
        cap.settle(Amounts::new(50, 0, 1), Amounts::new(120, 7, 1), report);
        assert_eq!(
            cap.used(),
            Amounts::new(120, 7, 1),
            "overrun counted beyond the cap"
        );
        assert!(cap.try_hold(Amounts::new(0, 0, 1)).is_err());
        // Reported, the spend is the cluster's to count: the allowance is whole again.
        assert_eq!(cap.next_report().unwrap().request_id, "offline-1");
        cap.reported();
        assert_eq!((cap.used(), cap.reports_waiting()), (Amounts::ZERO, 0));
        cap.try_hold(Amounts::new(0, 0, 1)).unwrap();
    }

    #[test]
    fn every_dimension_is_capped() {
        let cap = LocalCap::new(Amounts::new(1_000, 1_000, 1));
        cap.try_hold(Amounts::new(1, 1, 1)).unwrap();
        assert!(cap.try_hold(Amounts::new(1, 1, 1)).is_err(), "calls cap");
        assert!(cap.try_hold(Amounts::new(0, 1_000, 0)).is_err(), "cost cap");
        assert!(
            cap.try_hold(Amounts::new(u64::MAX, 0, 0)).is_err(),
            "overflow refused"
        );
    }
}
