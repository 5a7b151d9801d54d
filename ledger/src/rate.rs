//! Rate limits: the generic cell rate algorithm (GCRA), in integers only.
//!
//! A rate of `amount` units per `period_ms` emits one unit every `period_ms / amount` ms,
//! which is rarely an integer. Scaling every time by `amount` makes it one: "now" becomes
//! `now_ms * amount`, one unit costs `period_ms`, and the bucket holds `burst * period_ms`.
//! The theoretical arrival time (TAT) is kept in these scaled units as a u128 (now_ms up to
//! 2^64 times amount up to 10^15 fits with room to spare); all sums saturate.

use serde::{Deserialize, Serialize};

/// The parameters of one rate limit (see `LimitKind::Rate`); validated: all non-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    pub amount: u64,
    pub period_ms: u64,
    pub burst: u64,
}

/// The TAT in scaled units, split into two u64s so a counter stays 8-byte aligned (a u128
/// field would make every per-agent counter 16 bytes larger).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tat {
    hi: u64,
    lo: u64,
}

impl Tat {
    pub fn get(self) -> u128 {
        (u128::from(self.hi) << 64) | u128::from(self.lo)
    }

    pub fn set(&mut self, value: u128) {
        self.hi = (value >> 64) as u64;
        self.lo = value as u64;
    }
}

impl Gcra {
    fn now_scaled(&self, now_ms: u64) -> u128 {
        u128::from(now_ms).saturating_mul(u128::from(self.amount.max(1)))
    }

    fn cost(&self, units: u64) -> u128 {
        u128::from(units).saturating_mul(u128::from(self.period_ms))
    }

    fn capacity(&self) -> u128 {
        u128::from(self.burst).saturating_mul(u128::from(self.period_ms))
    }

    /// Whether `units` fit now; if not, how long until the same request would fit
    /// (None: never, it is larger than the burst).
    pub fn check(&self, tat: u128, now_ms: u64, units: u64) -> Result<(), Option<u64>> {
        let now = self.now_scaled(now_ms);
        let new_tat = tat.max(now).saturating_add(self.cost(units));
        let level = new_tat - now;
        if level <= self.capacity() {
            return Ok(());
        }
        if units > self.burst {
            return Err(None);
        }
        // The bucket drains `amount` scaled units per ms; wait until the excess has drained.
        let excess = level - self.capacity();
        let amount = u128::from(self.amount.max(1));
        let wait_ms = excess.div_ceil(amount);
        Err(Some(u64::try_from(wait_ms).unwrap_or(u64::MAX)))
    }

    /// Adds `units` to the bucket, whether or not they fit (grants, records, overruns).
    pub fn charge(&self, tat: u128, now_ms: u64, units: u64) -> u128 {
        tat.max(self.now_scaled(now_ms))
            .saturating_add(self.cost(units))
    }

    /// Gives `units` back; the bucket never goes below empty.
    pub fn refund(&self, tat: u128, now_ms: u64, units: u64) -> u128 {
        tat.saturating_sub(self.cost(units))
            .max(self.now_scaled(now_ms))
    }

    /// Units in the bucket now, rounded up.
    pub fn level_units(&self, tat: u128, now_ms: u64) -> u128 {
        let level = tat.saturating_sub(self.now_scaled(now_ms));
        level.div_ceil(u128::from(self.period_ms.max(1)))
    }

    /// Burst minus the units in the bucket; negative after overruns.
    pub fn remaining(&self, tat: u128, now_ms: u64) -> i64 {
        let remaining = i128::from(self.burst)
            - i128::try_from(self.level_units(tat, now_ms)).unwrap_or(i128::MAX);
        clamp_i64(remaining)
    }
}

pub fn clamp_i64(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious model: a bucket whose level (in ms × amount) drains by `amount` every
    /// millisecond, simulated one millisecond at a time.
    struct Reference {
        gcra: Gcra,
        level: u128,
        now_ms: u64,
    }

    impl Reference {
        fn advance_to(&mut self, now_ms: u64) {
            while self.now_ms < now_ms {
                self.level = self.level.saturating_sub(u128::from(self.gcra.amount));
                self.now_ms += 1;
            }
        }

        fn fits(&self, units: u64) -> bool {
            self.level + u128::from(units) * u128::from(self.gcra.period_ms)
                <= u128::from(self.gcra.burst) * u128::from(self.gcra.period_ms)
        }

        /// Milliseconds until `units` fit, by simulating forward.
        fn wait_ms(&self, units: u64) -> u64 {
            let mut probe = Reference {
                gcra: self.gcra,
                level: self.level,
                now_ms: self.now_ms,
            };
            let mut waited = 0;
            while !probe.fits(units) {
                probe.advance_to(probe.now_ms + 1);
                waited += 1;
            }
            waited
        }
    }

    #[test]
    fn sixty_per_minute_burst_ten_admits_ten_then_one_per_second() {
        let g = Gcra {
            amount: 60,
            period_ms: 60_000,
            burst: 10,
        };
        let mut tat = 0u128;
        let t0 = 1_000_000;
        for _ in 0..10 {
            assert_eq!(g.check(tat, t0, 1), Ok(()));
            tat = g.charge(tat, t0, 1);
        }
        assert_eq!(g.check(tat, t0, 1), Err(Some(1_000)));
        assert_eq!(g.check(tat, t0 + 999, 1), Err(Some(1)));
        assert_eq!(g.check(tat, t0 + 1_000, 1), Ok(()));
        assert_eq!(g.check(tat, t0, 11), Err(None));
        assert_eq!(g.remaining(tat, t0), 0);
        assert_eq!(g.remaining(g.refund(tat, t0, 3), t0), 3);
    }

    #[test]
    fn refund_never_takes_the_bucket_below_empty() {
        let g = Gcra {
            amount: 10,
            period_ms: 1_000,
            burst: 5,
        };
        let tat = g.charge(0, 50_000, 2);
        let tat = g.refund(tat, 60_000, 100);
        assert_eq!(g.remaining(tat, 60_000), 5);
        assert_eq!(g.check(tat, 60_000, 6), Err(None));
        assert_eq!(g.check(tat, 60_000, 5), Ok(()));
    }

    #[test]
    fn extreme_values_saturate_without_panicking() {
        let g = Gcra {
            amount: 1_000_000_000_000_000,
            period_ms: 7 * 86_400_000,
            burst: 1_000_000_000_000_000,
        };
        let tat = g.charge(u128::MAX, u64::MAX, u64::MAX);
        assert_eq!(tat, u128::MAX);
        let _ = g.check(tat, u64::MAX, u64::MAX);
        let _ = g.remaining(tat, 0);
        let _ = g.refund(tat, u64::MAX, u64::MAX);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::tests::proptest_cases()))]

        /// GCRA in closed form agrees with a per-millisecond simulation of the same bucket,
        /// on every admit/deny decision and on the retry-after it reports.
        #[test]
        fn gcra_matches_a_per_ms_token_bucket_simulation(
            amount in 1u64..20,
            period_ms in 1u64..200,
            burst in 1u64..8,
            steps in proptest::collection::vec((0u64..60, 0u64..10, any::<bool>()), 1..40),
        ) {
            let gcra = Gcra { amount, period_ms, burst };
            let mut tat = 0u128;
            let mut model = Reference { gcra, level: 0, now_ms: 0 };
            let mut now_ms = 0u64;
            for (dt, units, give_back) in steps {
                now_ms += dt;
                model.advance_to(now_ms);
                let got = gcra.check(tat, now_ms, units);
                prop_assert_eq!(got.is_ok(), model.fits(units));
                match got {
                    Ok(()) => {
                        tat = gcra.charge(tat, now_ms, units);
                        model.level += u128::from(units) * u128::from(period_ms);
                        if give_back {
                            tat = gcra.refund(tat, now_ms, units);
                            model.level -= u128::from(units) * u128::from(period_ms);
                        }
                    }
                    Err(None) => prop_assert!(units > burst),
                    Err(Some(wait)) => prop_assert_eq!(wait, model.wait_ms(units)),
                }
                let level_units = model.level.div_ceil(u128::from(period_ms));
                prop_assert_eq!(gcra.level_units(tat, now_ms), level_units);
            }
        }
    }
}
