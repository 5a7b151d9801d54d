//! Runaway detection: stop a looping agent early, before hard caps stop it late.
//!
//! Repetition: the same fingerprint `repeat_max` times within `repeat_window_ms` of its
//! first sighting (a tumbling window per fingerprint, anchored at the first sighting).
//! Velocity: spend in the current epoch-aligned window of `velocity_window_ms` above
//! `velocity_factor` times the agent's recent average per window (an integer EWMA with
//! weight 1/2^`VELOCITY_EWMA_SHIFT`) and above `velocity_floor`. A new agent has an average
//! of 0, so only the floor protects its first window. State is created lazily, only for
//! agents that send fingerprints, tenants with velocity on, or agents that tripped.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::{Amounts, TenantPolicy, TripCause};

/// Distinct fingerprints tracked per agent; beyond it the one seen first is forgotten. A
/// runaway repeats one fingerprint, which therefore stays tracked.
pub const FINGERPRINTS_PER_AGENT_MAX: usize = 16;
/// EWMA weight of the newest window: 1/2^3 = 1/8.
pub const VELOCITY_EWMA_SHIFT: u32 = 3;
/// Empty windows decayed one by one after a quiet spell; after more, the average is 0
/// ((7/8)^64 < 0.02%).
pub const VELOCITY_DECAY_WINDOWS_MAX: u64 = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trip {
    pub cause: TripCause,
    /// When the cool-down lets the agent through again; None: only a reset does.
    pub until_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FingerprintCount {
    /// xxh3 of the fingerprint: 8 bytes instead of up to `ID_BYTES_MAX`.
    hash: u64,
    first_seen_ms: u64,
    count: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Velocity {
    window_start_ms: u64,
    spent: u64,
    average: u64,
}

/// Per-agent runaway state, boxed behind an Option so quiet agents pay 8 bytes for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runaway {
    pub trip: Option<Trip>,
    fingerprints: Vec<FingerprintCount>,
    velocity: Velocity,
}

pub enum Verdict {
    Clear,
    /// Tripped now (`new`) or earlier and still within the cool-down.
    Tripped {
        cause: TripCause,
        until_ms: Option<u64>,
        new: bool,
    },
}

impl Runaway {
    /// Forgets what led to a trip, so a reset agent starts clean rather than re-tripping on
    /// its next call.
    pub fn reset(&mut self) {
        self.trip = None;
        self.fingerprints.clear();
        self.velocity.spent = 0;
    }

    /// Whether the velocity state holds no spend and no average (as a fresh agent's).
    pub fn velocity_is_zero(&self) -> bool {
        self.velocity.average == 0 && self.velocity.spent == 0
    }

    /// The trip in force at `now_ms`, if any.
    pub fn trip_at(&self, now_ms: u64) -> Option<&Trip> {
        self.trip
            .as_ref()
            .filter(|t| t.until_ms.is_none_or(|until| now_ms < until))
    }

    fn roll_velocity(&mut self, window_ms: u64, now_ms: u64) {
        let window_ms = window_ms.max(1);
        let start = now_ms - now_ms % window_ms;
        let v = &mut self.velocity;
        if start == v.window_start_ms {
            return;
        }
        if start > v.window_start_ms {
            let windows = (start - v.window_start_ms) / window_ms;
            v.average = ewma(v.average, v.spent);
            if windows > VELOCITY_DECAY_WINDOWS_MAX {
                v.average = 0;
            } else {
                for _ in 1..windows {
                    v.average = ewma(v.average, 0);
                }
            }
        }
        // A policy change of the window length may move the start backwards: start over.
        v.window_start_ms = start;
        v.spent = 0;
    }

    /// Counts the spend of a granted reserve or a record toward velocity.
    pub fn note_spend(&mut self, policy: &TenantPolicy, amounts: &Amounts, now_ms: u64) {
        if policy.velocity_factor == 0 {
            return;
        }
        self.roll_velocity(policy.velocity_window_ms, now_ms);
        let spend = amounts.get(policy.velocity_dimension);
        self.velocity.spent = self.velocity.spent.saturating_add(spend);
    }

    /// Decides a reserve: still tripped, trips now, or clear. Counts the fingerprint.
    pub fn check(
        &mut self,
        policy: &TenantPolicy,
        fingerprint: Option<&str>,
        estimate: &Amounts,
        now_ms: u64,
    ) -> Verdict {
        if let Some(trip) = &self.trip {
            if trip.until_ms.is_none_or(|until| now_ms < until) {
                return Verdict::Tripped {
                    cause: trip.cause.clone(),
                    until_ms: trip.until_ms,
                    new: false,
                };
            }
            // The cool-down has passed.
            self.reset();
        }
        let cause = self
            .check_repetition(policy, fingerprint, now_ms)
            .or_else(|| self.check_velocity(policy, estimate, now_ms));
        match cause {
            None => Verdict::Clear,
            Some(cause) => {
                let until_ms = (policy.trip_cooldown_ms > 0)
                    .then(|| now_ms.saturating_add(policy.trip_cooldown_ms));
                self.trip = Some(Trip {
                    cause: cause.clone(),
                    until_ms,
                });
                Verdict::Tripped {
                    cause,
                    until_ms,
                    new: true,
                }
            }
        }
    }

    fn check_repetition(
        &mut self,
        policy: &TenantPolicy,
        fingerprint: Option<&str>,
        now_ms: u64,
    ) -> Option<TripCause> {
        let fingerprint = fingerprint.filter(|_| policy.repeat_max > 0)?;
        let hash = xxh3_64(fingerprint.as_bytes());
        let window_ms = policy.repeat_window_ms;
        let count = match self.fingerprints.iter_mut().find(|f| f.hash == hash) {
            Some(f) => {
                if now_ms < f.first_seen_ms.saturating_add(window_ms) {
                    f.count = f.count.saturating_add(1);
                } else {
                    f.first_seen_ms = now_ms;
                    f.count = 1;
                }
                f.count
            }
            None => {
                let fresh = FingerprintCount {
                    hash,
                    first_seen_ms: now_ms,
                    count: 1,
                };
                if self.fingerprints.len() < FINGERPRINTS_PER_AGENT_MAX {
                    self.fingerprints.push(fresh);
                } else if let Some(oldest) =
                    self.fingerprints.iter_mut().min_by_key(|f| f.first_seen_ms)
                {
                    *oldest = fresh;
                }
                1
            }
        };
        (count >= policy.repeat_max).then(|| TripCause::Repetition {
            fingerprint: fingerprint.to_string(),
            count,
        })
    }

    fn check_velocity(
        &mut self,
        policy: &TenantPolicy,
        estimate: &Amounts,
        now_ms: u64,
    ) -> Option<TripCause> {
        if policy.velocity_factor == 0 {
            return None;
        }
        self.roll_velocity(policy.velocity_window_ms, now_ms);
        let spent = self
            .velocity
            .spent
            .saturating_add(estimate.get(policy.velocity_dimension));
        let baseline = self.velocity.average;
        let over_average =
            u128::from(spent) > u128::from(policy.velocity_factor) * u128::from(baseline);
        (over_average && spent > policy.velocity_floor)
            .then_some(TripCause::Velocity { spent, baseline })
    }
}

/// avg' = avg + (sample - avg) / 2^shift, in integers: (avg * (2^shift - 1) + sample) >> shift.
fn ewma(average: u64, sample: u64) -> u64 {
    let weight = (1u128 << VELOCITY_EWMA_SHIFT) - 1;
    let next = (u128::from(average) * weight + u128::from(sample)) >> VELOCITY_EWMA_SHIFT;
    u64::try_from(next).unwrap_or(u64::MAX)
}

/// Whether runaway state is worth creating for this reserve.
pub fn tracks(policy: &TenantPolicy, fingerprint: Option<&str>) -> bool {
    policy.velocity_factor > 0 || (policy.repeat_max > 0 && fingerprint.is_some())
}
