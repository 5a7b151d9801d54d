//! Soft thresholds of budgets: the percentages of a budget whose crossing by committed
//! spend is written to the audit trail (`ThresholdCrossed`), once per window.
//!
//! Only committed spend counts (what was charged: commits, records, expiry charges), never
//! what is held: a hold may be released, and an alert says money was spent. Each budget
//! counter remembers the highest threshold it has crossed in its window
//! (`Counter::Budget::alerted_percent`), so a threshold is crossed at most once per window
//! and a window that rolls re-arms every threshold. Nothing here reads a clock.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::audit::{AuditEvent, AuditLog, Fact};
use super::limits::Counter;
use super::window::window_start_ms;
use super::{
    Amounts, Dimension, InvalidInput, Ledger, LimitId, LimitKind, LimitSpec, Outcome, Scope, Window,
};

/// Most thresholds one limit may carry: each crossing is an audit record and an alert, and
/// a handful of steps says all an operator needs.
pub const THRESHOLDS_PER_LIMIT_MAX: usize = 8;
/// The thresholds of a limit that names none.
pub const THRESHOLDS_DEFAULT_PERCENT: [u8; 3] = [50, 80, 95];

/// A budget's soft thresholds, in percent of its amount: 1 to 99, strictly ascending, at
/// most `THRESHOLDS_PER_LIMIT_MAX`. Empty turns alerts off for the limit. Rate and
/// concurrency limits carry them but never cross them (their level is not spend).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Thresholds(Vec<u8>);

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds(THRESHOLDS_DEFAULT_PERCENT.to_vec())
    }
}

impl Thresholds {
    /// Checks the percentages; the one way to build thresholds from input.
    pub fn new(percents: impl IntoIterator<Item = u32>) -> Result<Self, InvalidInput> {
        let mut out = Vec::new();
        for percent in percents {
            if out.len() == THRESHOLDS_PER_LIMIT_MAX {
                return Err(InvalidInput(format!(
                    "a limit has more than THRESHOLDS_PER_LIMIT_MAX ({THRESHOLDS_PER_LIMIT_MAX}) \
                     thresholds"
                )));
            }
            out.push(u8::try_from(percent).unwrap_or(u8::MAX));
        }
        let thresholds = Thresholds(out);
        thresholds.validate()?;
        Ok(thresholds)
    }

    /// No thresholds: the limit never alerts.
    pub fn off() -> Self {
        Thresholds(Vec::new())
    }

    pub fn percents(&self) -> &[u8] {
        &self.0
    }

    /// Rechecks thresholds that arrived through serde, which does not run `new`.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.0.len() > THRESHOLDS_PER_LIMIT_MAX {
            return Err(InvalidInput(format!(
                "a limit has {} thresholds, more than THRESHOLDS_PER_LIMIT_MAX \
                 ({THRESHOLDS_PER_LIMIT_MAX})",
                self.0.len()
            )));
        }
        if let Some(&bad) = self.0.iter().find(|p| !(1..=99).contains(*p)) {
            return Err(InvalidInput(format!(
                "threshold {bad} % is out of range; thresholds are 1 to 99 %"
            )));
        }
        if self.0.windows(2).any(|w| w[0] >= w[1]) {
            return Err(InvalidInput(format!(
                "thresholds {:?} are not strictly ascending",
                self.0
            )));
        }
        Ok(())
    }
}

/// One threshold crossed by one charge, for the audit record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ThresholdCrossing {
    pub limit_id: LimitId,
    pub scope: Scope,
    pub dimension: Dimension,
    pub threshold_percent: u8,
    /// Committed spend in the window once the charge was made.
    pub used: u64,
    /// The budget's amount.
    pub limit: u64,
    /// Start of the window, for windowed budgets (None: lifetime).
    pub window_start_ms: Option<u64>,
}

/// The crossings of one command, appended to the audit trail after its own record.
/// Two inline: a charge rarely crosses more than one threshold of one limit.
#[derive(Default)]
pub(super) struct Crossings(pub SmallVec<[ThresholdCrossing; 2]>);

impl Crossings {
    /// After `counter` was charged at `now_ms`: notes every threshold of `spec` that its
    /// committed spend has reached and that was not yet crossed in this window, and marks
    /// them crossed. Changes nothing else; a no-op for rate and concurrency limits.
    pub fn note(&mut self, spec: &LimitSpec, counter: &mut Counter, now_ms: u64) {
        let (
            LimitKind::Budget { window, amount },
            Counter::Budget {
                committed,
                alerted_percent,
                ..
            },
        ) = (spec.kind, counter)
        else {
            return;
        };
        for &percent in spec.thresholds.percents() {
            if percent <= *alerted_percent || !reached(*committed, amount, percent) {
                continue;
            }
            *alerted_percent = percent;
            self.0.push(ThresholdCrossing {
                limit_id: spec.id.clone(),
                scope: spec.scope.clone(),
                dimension: spec.dimension,
                threshold_percent: percent,
                used: *committed,
                limit: amount,
                window_start_ms: (window != Window::Lifetime)
                    .then(|| window_start_ms(window, now_ms)),
            });
        }
    }
}

impl Crossings {
    /// The audit facts of the crossings, each naming the tenant, agent, tool and request of
    /// `cause`, appended right after the cause's own record. Not its reservation: a
    /// reservation's records are its life (grant, then one end).
    pub fn facts<'a>(self, cause: &Fact<'a>) -> impl Iterator<Item = Fact<'a>> {
        let (tenant, agent, tool) = (cause.tenant, cause.agent, cause.tool);
        let request_id = cause.request_id;
        self.0.into_iter().map(move |crossing| Fact {
            tenant,
            agent,
            tool,
            request_id,
            reservation_id: None,
            event: AuditEvent::ThresholdCrossed(crossing),
            amounts: Amounts::default(),
        })
    }
}

impl Crossings {
    /// Appends a charge's own record, then the records of the crossings it caused, and
    /// counts them for the metric: the one way every charge (commit, late commit, expiry,
    /// record) reaches the audit trail. Takes the fields, not the ledger, because `cause`
    /// borrows the tenant.
    pub(super) fn append_with_cause(
        self,
        (audit, applied): (&mut AuditLog, &mut CrossingCounts),
        at_ms: u64,
        cause: Fact<'_>,
    ) {
        let crossed = self.facts(&cause);
        audit.append(at_ms, cause);
        for fact in crossed {
            applied.count(&fact.event);
            audit.append(at_ms, fact);
        }
    }
}

/// Crossings applied and not yet taken, counted by threshold: a fixed array, so a ledger
/// whose owner never takes them (a test, the simulator) grows nothing. Not state: a clone,
/// a restored snapshot and equality ignore it.
#[derive(Debug)]
pub(super) struct CrossingCounts([u32; 100]);

impl Default for CrossingCounts {
    fn default() -> Self {
        CrossingCounts([0; 100])
    }
}

impl Clone for CrossingCounts {
    fn clone(&self) -> Self {
        CrossingCounts::default()
    }
}

impl PartialEq for CrossingCounts {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl CrossingCounts {
    pub fn count(&mut self, event: &AuditEvent) {
        if let AuditEvent::ThresholdCrossed(c) = event {
            if let Some(n) = self.0.get_mut(usize::from(c.threshold_percent)) {
                *n = n.saturating_add(1);
            }
        }
    }
}

impl Ledger {
    /// Takes the crossings applied since the last call, as (threshold percent, count): what
    /// a node counts in its metrics. Allocates nothing when there are none.
    pub fn take_threshold_crossings(&mut self) -> impl Iterator<Item = (u8, u32)> + '_ {
        (1u8..100).filter_map(|percent| {
            let n = std::mem::take(&mut self.crossings_applied.0[usize::from(percent)]);
            (n > 0).then_some((percent, n))
        })
    }

    /// `AlertsDelivered`: moves the delivery cursor forward, never back nor past the head.
    pub(super) fn alerts_delivered(&mut self, up_to_seq: u64) -> Outcome {
        let head = self.audit.head().seq;
        self.alerts_delivered_seq = self.alerts_delivered_seq.max(up_to_seq.min(head));
        Outcome::Done
    }

    /// The audit sequence up to which every `ThresholdCrossed` record was delivered.
    pub fn alerts_delivered_seq(&self) -> u64 {
        self.alerts_delivered_seq
    }
}

/// Whether `committed` is at or above `percent` % of `amount`, exactly (no rounding). A
/// budget of 0 is reached by the first unit spent, never by nothing.
pub(super) fn reached(committed: u64, amount: u64, percent: u8) -> bool {
    committed > 0 && u128::from(committed) * 100 >= u128::from(amount) * u128::from(percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_checked_like_any_input() {
        for (input, ok) in [
            (vec![], true),
            (vec![50, 80, 95], true),
            (vec![1, 99], true),
            (vec![0], false),
            (vec![100], false),
            (vec![300], false),
            (vec![80, 50], false),
            (vec![50, 50], false),
            (vec![1, 2, 3, 4, 5, 6, 7, 8], true),
            (vec![1, 2, 3, 4, 5, 6, 7, 8, 9], false),
        ] {
            assert_eq!(Thresholds::new(input.clone()).is_ok(), ok, "{input:?}");
        }
        assert_eq!(Thresholds::default().percents(), &[50, 80, 95]);
    }

    #[test]
    fn reached_is_exact_at_the_boundary() {
        assert!(!reached(49, 100, 50));
        assert!(reached(50, 100, 50));
        // 1/3 of 1,000 is 333.33...: 333 is below 33.34 %, 334 is above.
        assert!(!reached(333, 1_000, 34));
        assert!(reached(340, 1_000, 34));
        assert!(!reached(0, 0, 50));
        assert!(reached(1, 0, 50));
        assert!(reached(u64::MAX, u64::MAX, 99));
    }
}
