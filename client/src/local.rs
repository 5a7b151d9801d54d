//! The fail-open allowance: spend this process may make while the cluster is unreachable.
//! Purely local, never replicated; it exists so an operator can trade SPEC guarantee 1 for
//! availability at one call site, with a hard cap on how much that trade can cost.

use std::sync::Mutex;

use crate::types::Amounts;

pub(crate) struct LocalCap {
    cap: Amounts,
    /// Held estimates plus committed actuals of local reservations since the client was built.
    used: Mutex<Amounts>,
}

impl LocalCap {
    pub(crate) fn new(cap: Amounts) -> LocalCap {
        LocalCap {
            cap,
            used: Mutex::new(Amounts::ZERO),
        }
    }

    fn used_mut(&self) -> std::sync::MutexGuard<'_, Amounts> {
        self.used
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds `estimate` if it fits under the cap; otherwise says what is left.
    pub(crate) fn try_hold(&self, estimate: Amounts) -> Result<(), String> {
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

    /// A local reservation was committed: replace its estimate with what was spent. The
    /// actual may exceed the cap; spend that happened is counted, never dropped.
    pub(crate) fn settle(&self, estimate: Amounts, actual: Amounts) {
        let mut used = self.used_mut();
        let without = used.saturating_sub(estimate);
        *used = without
            .checked_add(actual)
            .unwrap_or(Amounts::new(u64::MAX, u64::MAX, u64::MAX));
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
        cap.settle(Amounts::new(50, 0, 1), Amounts::new(120, 7, 1));
        assert_eq!(
            cap.used(),
            Amounts::new(120, 7, 1),
            "overrun counted beyond the cap"
        );
        assert!(cap.try_hold(Amounts::new(0, 0, 1)).is_err());
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
