//! Runaway detection: stop a looping agent early, before hard caps stop it late.
//!
//! Repetition: the same fingerprint `repeat_max` times within a window of `repeat_window_ms`
//! that slides with the ledger's time. Each fingerprint counts its sightings in
//! `REPEAT_BUCKETS` buckets of a sixteenth of the window each (rounded up), plus the bucket
//! in progress: a sighting counts for the whole window and about a sixteenth longer (17
//! buckets at most), so a loop is never missed and memory per fingerprint is fixed.
//! Velocity: spend in the current epoch-aligned window of `velocity_window_ms` above
//! `velocity_factor` times the agent's recent average per window (an integer EWMA with
//! weight 1/2^`VELOCITY_EWMA_SHIFT`) and above `velocity_floor`. Spend is what the agent is
//! charged: each granted estimate, the overrun of a commit above its estimate, each record.
//! A new agent has an average of 0, so only the floor protects its first window.
//! Shape velocity: the calls of one argument shape (a hash of the tool and the arguments'
//! keys and value types, which a loop keeps while it changes a value on every call) in the
//! same window above `velocity_factor` times that shape's own average calls per window and
//! above `shape_floor`; the same windows and EWMA as velocity. Each reserve that carries a
//! shape is one call of it. State is created lazily, only for agents that send fingerprints
//! or shapes, tenants with velocity on, or agents that tripped.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::{Amounts, TenantPolicy, TripCause};

/// Distinct fingerprints tracked per agent (and so at most this many times the tenant's
/// agent quota per tenant); beyond it the one seen least recently is forgotten. A runaway
/// repeats one fingerprint, which therefore stays tracked.
pub const FINGERPRINTS_PER_AGENT_MAX: usize = 16;
/// Buckets a repetition window is cut into: the window slides in steps of a sixteenth, and
/// a fingerprint's counts take `REPEAT_BUCKETS + 1` u16 (34 bytes).
pub const REPEAT_BUCKETS: u64 = 16;
/// The buckets kept: the window's sixteen and the one in progress.
const REPEAT_SLOTS: usize = REPEAT_BUCKETS as usize + 1;
/// EWMA weight of the newest window: 1/2^3 = 1/8.
pub const VELOCITY_EWMA_SHIFT: u32 = 3;
/// Empty windows decayed one by one after a quiet spell; after more, the average is 0
/// ((7/8)^64 < 0.02%).
pub const VELOCITY_DECAY_WINDOWS_MAX: u64 = 64;
/// Distinct argument shapes tracked per agent; beyond it the one seen least recently is
/// forgotten. An agent calls few tools, each with few shapes, and a runaway repeats one
/// shape, which therefore stays tracked. A shape takes 48 bytes, so shape state stays under
/// 400 bytes per agent whatever it sends.
pub const SHAPES_PER_AGENT_MAX: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trip {
    pub cause: TripCause,
    /// When the cool-down lets the agent through again; None: only a reset does.
    pub until_ms: Option<u64>,
}

/// One fingerprint's sightings in the sliding repetition window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FingerprintWindow {
    /// xxh3 of the fingerprint: 8 bytes instead of up to `ID_BYTES_MAX`.
    hash: u64,
    /// The newest bucket sighted (ledger time / bucket length).
    newest_bucket: u64,
    /// Sightings per bucket, bucket `b` at slot `b % REPEAT_SLOTS`.
    counts: [u16; REPEAT_SLOTS],
}

impl FingerprintWindow {
    fn new(hash: u64, bucket: u64) -> Self {
        Self {
            hash,
            newest_bucket: bucket,
            counts: [0; REPEAT_SLOTS],
        }
    }

    /// Counts a sighting in `bucket`; returns the sightings within the window.
    fn sight(&mut self, bucket: u64) -> u32 {
        self.slide_to(bucket);
        // Ledger time does not go back; were it to, the sighting counts as the newest.
        let slot = slot(self.newest_bucket.max(bucket));
        self.counts[slot] = self.counts[slot].saturating_add(1);
        self.counts.iter().map(|&c| u32::from(c)).sum()
    }

    /// Empties the buckets that have left the window by `bucket`.
    fn slide_to(&mut self, bucket: u64) {
        if bucket <= self.newest_bucket {
            return;
        }
        let gap = bucket - self.newest_bucket;
        if gap >= REPEAT_SLOTS as u64 {
            self.counts = [0; REPEAT_SLOTS];
        } else {
            for b in self.newest_bucket + 1..=bucket {
                self.counts[slot(b)] = 0;
            }
        }
        self.newest_bucket = bucket;
    }

    /// Whether every sighting has left the window by `bucket`.
    fn expired_by(&self, bucket: u64) -> bool {
        bucket.saturating_sub(self.newest_bucket) >= REPEAT_SLOTS as u64
    }
}

/// The index of the entry `found` picks in `entries`; else `fresh` goes in, pushed while
/// fewer than `max` are kept, else in place of the entry whose `last_seen` is oldest.
fn slot_for<T>(
    entries: &mut Vec<T>,
    max: usize,
    (found, last_seen): (impl Fn(&T) -> bool, impl Fn(&T) -> u64),
    fresh: T,
) -> usize {
    if let Some(index) = entries.iter().position(found) {
        return index;
    }
    if entries.len() < max {
        entries.push(fresh);
        return entries.len() - 1;
    }
    let stalest = entries
        .iter()
        .enumerate()
        .min_by_key(|(_, e)| last_seen(e))
        .map_or(0, |(index, _)| index);
    if let Some(slot) = entries.get_mut(stalest) {
        *slot = fresh;
    }
    stalest
}

fn slot(bucket: u64) -> usize {
    (bucket % REPEAT_SLOTS as u64) as usize
}

/// The length of one repetition bucket: a sixteenth of the window, rounded up, so that the
/// sixteen buckets before the one in progress cover at least the window.
fn repeat_bucket_ms(window_ms: u64) -> u64 {
    window_ms.div_ceil(REPEAT_BUCKETS).max(1)
}

/// A count in the current epoch-aligned window and the EWMA of the counts of past windows:
/// the agent's spend (velocity) or the calls of one shape (shape velocity).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Velocity {
    /// The window length the average is per.
    window_ms: u64,
    window_start_ms: u64,
    /// Counted in the window that starts at `window_start_ms`.
    total: u64,
    average: u64,
}

impl Velocity {
    /// Moves to the window holding `now_ms`, folding the windows that ended into the average.
    fn roll(&mut self, window_ms: u64, now_ms: u64) {
        let window_ms = window_ms.max(1);
        let start = now_ms - now_ms % window_ms;
        if window_ms != self.window_ms || start < self.window_start_ms {
            // An average per window of another length means nothing under this one, and
            // ledger time does not go back: start over, as a fresh agent.
            *self = Velocity {
                window_ms,
                window_start_ms: start,
                ..Velocity::default()
            };
            return;
        }
        if start == self.window_start_ms {
            return;
        }
        let windows = (start - self.window_start_ms) / window_ms;
        self.average = ewma(self.average, self.total);
        if windows > VELOCITY_DECAY_WINDOWS_MAX {
            self.average = 0;
        } else {
            for _ in 1..windows {
                self.average = ewma(self.average, 0);
            }
        }
        self.window_start_ms = start;
        self.total = 0;
    }

    /// Whether this decides as a fresh count would at `now_ms`, under any policy: it holds
    /// nothing, or its average has decayed to zero by the time its window rolls (a window of
    /// another length starts over anyway).
    fn forgotten(&self, now_ms: u64) -> bool {
        let decayed_ms = self
            .window_ms
            .saturating_mul(VELOCITY_DECAY_WINDOWS_MAX + 2)
            .saturating_add(self.window_start_ms);
        (self.average == 0 && self.total == 0) || now_ms >= decayed_ms
    }

    /// Whether `total` is above `factor` times the average and above `floor`.
    fn above(&self, factor: u32, floor: u64) -> bool {
        let over_average = u128::from(self.total) > u128::from(factor) * u128::from(self.average);
        over_average && self.total > floor
    }
}

/// One argument shape's calls per velocity window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ShapeCalls {
    /// xxh3 of the shape: 8 bytes instead of up to `ID_BYTES_MAX`.
    hash: u64,
    /// The latest call, to forget the shape seen least recently.
    seen_ms: u64,
    calls: Velocity,
}

/// Per-agent runaway state, boxed behind an Option so quiet agents pay 8 bytes for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runaway {
    /// Boxed: most agents never trip, and every agent with spend carries this state.
    pub trip: Option<Box<Trip>>,
    /// The bucket length the fingerprints were counted in; another policy starts over.
    repeat_bucket_ms: u64,
    fingerprints: Vec<FingerprintWindow>,
    velocity: Velocity,
    /// At most `SHAPES_PER_AGENT_MAX`.
    shapes: Vec<ShapeCalls>,
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
        self.velocity.total = 0;
        // Each shape keeps its average, as the spend does: the agent's history still says
        // what is normal for it.
        for shape in &mut self.shapes {
            shape.calls.total = 0;
        }
    }

    /// Whether the velocity and shape velocity state decides as a fresh agent's would at
    /// `now_ms`, under any policy (see `Velocity::forgotten`).
    pub fn velocity_forgotten(&self, now_ms: u64) -> bool {
        self.velocity.forgotten(now_ms) && self.shapes.iter().all(|s| s.calls.forgotten(now_ms))
    }

    /// The trip in force at `now_ms`, if any.
    pub fn trip_at(&self, now_ms: u64) -> Option<&Trip> {
        self.trip
            .as_deref()
            .filter(|t| t.until_ms.is_none_or(|until| now_ms < until))
    }

    /// Counts the spend of a granted reserve or a record toward velocity.
    pub fn note_spend(&mut self, policy: &TenantPolicy, amounts: &Amounts, now_ms: u64) {
        if policy.velocity_factor == 0 {
            return;
        }
        self.add_spend(policy, amounts.get(policy.velocity_dimension), now_ms);
    }

    fn add_spend(&mut self, policy: &TenantPolicy, spend: u64, now_ms: u64) {
        self.velocity.roll(policy.velocity_window_ms, now_ms);
        self.velocity.total = self.velocity.total.saturating_add(spend);
    }

    /// Counts what a commit charged above its estimate (the estimate itself was counted
    /// when it was granted) toward velocity.
    pub fn note_overrun(
        &mut self,
        policy: &TenantPolicy,
        (estimate, actual): (&Amounts, &Amounts),
        now_ms: u64,
    ) {
        let dimension = policy.velocity_dimension;
        let overrun = actual
            .get(dimension)
            .saturating_sub(estimate.get(dimension));
        if policy.velocity_factor > 0 && overrun > 0 {
            self.add_spend(policy, overrun, now_ms);
        }
    }

    /// Decides a reserve: still tripped, trips now, or clear. Counts the fingerprint and the
    /// shape.
    pub fn check(&mut self, policy: &TenantPolicy, call: &Call<'_>, now_ms: u64) -> Verdict {
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
            .check_repetition(policy, call.fingerprint, now_ms)
            .or_else(|| self.check_velocity(policy, call.estimate, now_ms))
            .or_else(|| self.check_shape(policy, call.shape, now_ms));
        match cause {
            None => Verdict::Clear,
            Some(cause) => {
                let until_ms = (policy.trip_cooldown_ms > 0)
                    .then(|| now_ms.saturating_add(policy.trip_cooldown_ms));
                self.trip = Some(Box::new(Trip {
                    cause: cause.clone(),
                    until_ms,
                }));
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
        let bucket_ms = repeat_bucket_ms(policy.repeat_window_ms);
        if bucket_ms != self.repeat_bucket_ms {
            // Counts in buckets of another length cannot be compared: start over.
            self.fingerprints.clear();
            self.repeat_bucket_ms = bucket_ms;
        }
        let bucket = now_ms / bucket_ms;
        let index = slot_for(
            &mut self.fingerprints,
            FINGERPRINTS_PER_AGENT_MAX,
            (|f| f.hash == hash, |f| f.newest_bucket),
            FingerprintWindow::new(hash, bucket),
        );
        debug_assert!(self.fingerprints.len() <= FINGERPRINTS_PER_AGENT_MAX);
        let count = self.fingerprints[index].sight(bucket);
        (count >= policy.repeat_max).then(|| TripCause::Repetition {
            fingerprint: fingerprint.to_string(),
            count,
        })
    }

    /// Whether no fingerprint sighting counts any more at `now_ms`, under any policy: one
    /// with another window starts over anyway.
    pub fn repetition_forgotten(&self, now_ms: u64) -> bool {
        let bucket = now_ms / self.repeat_bucket_ms.max(1);
        self.fingerprints.iter().all(|f| f.expired_by(bucket))
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
        self.velocity.roll(policy.velocity_window_ms, now_ms);
        // Judged with the estimate, which is counted only once granted (`note_spend`).
        let with_estimate = Velocity {
            total: self
                .velocity
                .total
                .saturating_add(estimate.get(policy.velocity_dimension)),
            ..self.velocity
        };
        with_estimate
            .above(policy.velocity_factor, policy.velocity_floor)
            .then_some(TripCause::Velocity {
                spent: with_estimate.total,
                baseline: with_estimate.average,
            })
    }

    /// Counts one call of `shape` and judges its calls in the window against its average.
    fn check_shape(
        &mut self,
        policy: &TenantPolicy,
        shape: Option<&str>,
        now_ms: u64,
    ) -> Option<TripCause> {
        let shape = shape.filter(|_| shape_on(policy))?;
        let index = self.shape_slot(xxh3_64(shape.as_bytes()), now_ms);
        let entry = &mut self.shapes[index];
        entry.seen_ms = entry.seen_ms.max(now_ms);
        entry.calls.roll(policy.velocity_window_ms, now_ms);
        entry.calls.total = entry.calls.total.saturating_add(1);
        let calls = entry.calls;
        calls
            .above(policy.velocity_factor, policy.shape_floor)
            .then(|| TripCause::ShapeVelocity {
                shape: shape.to_string(),
                calls: calls.total,
                baseline: calls.average,
            })
    }

    /// The index of the shape hashed `hash`, tracked from now on if it was not: in place of
    /// the one seen least recently once `SHAPES_PER_AGENT_MAX` are.
    fn shape_slot(&mut self, hash: u64, now_ms: u64) -> usize {
        let fresh = ShapeCalls {
            hash,
            seen_ms: now_ms,
            calls: Velocity::default(),
        };
        let index = slot_for(
            &mut self.shapes,
            SHAPES_PER_AGENT_MAX,
            (|s| s.hash == hash, |s| s.seen_ms),
            fresh,
        );
        debug_assert!(self.shapes.len() <= SHAPES_PER_AGENT_MAX);
        debug_assert_eq!(self.shapes[index].hash, hash);
        index
    }
}

/// avg' = avg + (sample - avg) / 2^shift, in integers: (avg * (2^shift - 1) + sample) >> shift.
fn ewma(average: u64, sample: u64) -> u64 {
    let weight = (1u128 << VELOCITY_EWMA_SHIFT) - 1;
    let next = (u128::from(average) * weight + u128::from(sample)) >> VELOCITY_EWMA_SHIFT;
    u64::try_from(next).unwrap_or(u64::MAX)
}

/// What runaway detection looks at in a reserve.
pub struct Call<'a> {
    pub fingerprint: Option<&'a str>,
    pub shape: Option<&'a str>,
    pub estimate: &'a Amounts,
}

/// Whether shape velocity is on: a velocity factor and a shape floor.
fn shape_on(policy: &TenantPolicy) -> bool {
    policy.velocity_factor > 0 && policy.shape_floor > 0
}

/// Whether runaway state is worth creating for this reserve.
pub fn tracks(policy: &TenantPolicy, call: &Call<'_>) -> bool {
    policy.velocity_factor > 0
        || (policy.repeat_max > 0 && call.fingerprint.is_some())
        || (shape_on(policy) && call.shape.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The sliding window against its promise, for any sighting times: the same fingerprint
    /// `repeat_max` times within the window always trips it, and fewer within the window and
    /// about a sixteenth more (17 buckets) never do.
    fn check_window(window_ms: u64, repeat_max: u32, gaps_ms: &[u64]) {
        let policy = TenantPolicy {
            repeat_max,
            repeat_window_ms: window_ms,
            ..TenantPolicy::default()
        };
        let bucket_ms = repeat_bucket_ms(window_ms);
        let mut runaway = Runaway::default();
        let mut sightings: Vec<u64> = Vec::new();
        let mut now_ms = 1_710_072_000_000u64;
        for gap_ms in gaps_ms {
            now_ms += gap_ms;
            sightings.push(now_ms);
            let within = |span_ms: u64| {
                let count = sightings.iter().filter(|&&s| now_ms - s < span_ms).count();
                u32::try_from(count).unwrap()
            };
            let tripped = runaway
                .check_repetition(&policy, Some("same"), now_ms)
                .is_some();
            if within(window_ms) >= repeat_max {
                assert!(tripped, "{repeat_max} sightings within {window_ms} ms");
            }
            // A sighting counts until its bucket is 17 buckets old.
            if within(bucket_ms * (REPEAT_BUCKETS + 1)) < repeat_max {
                assert!(!tripped, "tripped on fewer than {repeat_max} sightings");
            }
            if tripped {
                // As after an operator's reset: start counting again.
                runaway.reset();
                sightings.clear();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::tests::proptest_cases()))]
        #[test]
        fn the_sliding_window_trips_on_every_loop_and_nothing_slower(
            window_ms in prop_oneof![1u64..100, 1u64..2_000_000],
            repeat_max in 2u32..12,
            gaps_ms in proptest::collection::vec(prop_oneof![0u64..20, 0u64..300_000], 1..80),
        ) {
            check_window(window_ms, repeat_max, &gaps_ms);
        }
    }

    #[test]
    fn tracked_fingerprints_stay_bounded_and_the_repeated_one_stays_tracked() {
        let policy = TenantPolicy::default();
        let mut runaway = Runaway::default();
        let mut tripped = false;
        for n in 0..200u64 {
            let now_ms = n * 1_000;
            let other = format!("other-{n}");
            assert!(runaway
                .check_repetition(&policy, Some(&other), now_ms)
                .is_none());
            tripped |= runaway
                .check_repetition(&policy, Some("loop"), now_ms)
                .is_some();
            assert!(runaway.fingerprints.len() <= FINGERPRINTS_PER_AGENT_MAX);
        }
        assert!(tripped);
    }

    #[test]
    fn tracked_shapes_stay_bounded_and_the_looping_shape_stays_tracked() {
        let policy = TenantPolicy::default();
        let floor = policy.shape_floor;
        let mut runaway = Runaway::default();
        let mut tripped = None;
        for n in 1..=floor + 1 {
            // A new shape every call crowds the tracked ones; the loop's is seen last each
            // time, so it is never the one forgotten.
            let other = format!("one-off-{n}");
            assert!(runaway.check_shape(&policy, Some(&other), n).is_none());
            if let Some(cause) = runaway.check_shape(&policy, Some("loop"), n) {
                tripped = Some((n, cause));
                break;
            }
            assert!(runaway.shapes.len() <= SHAPES_PER_AGENT_MAX);
        }
        assert_eq!(runaway.shapes.len(), SHAPES_PER_AGENT_MAX);
        let cause = TripCause::ShapeVelocity {
            shape: "loop".into(),
            calls: floor + 1,
            baseline: 0,
        };
        assert_eq!(tripped, Some((floor + 1, cause)));
    }

    #[test]
    fn shape_state_is_forgotten_only_once_its_average_has_decayed() {
        let policy = TenantPolicy::default();
        let window_ms = policy.velocity_window_ms;
        let mut runaway = Runaway::default();
        assert!(runaway.velocity_forgotten(0));
        assert!(runaway.check_shape(&policy, Some("s"), 0).is_none());
        assert!(!runaway.velocity_forgotten(window_ms));
        let decayed_ms = window_ms * (VELOCITY_DECAY_WINDOWS_MAX + 2);
        assert!(!runaway.velocity_forgotten(decayed_ms - 1));
        assert!(runaway.velocity_forgotten(decayed_ms));
    }
}
