//! Soft thresholds: which charges cross them, once per window, and the delivery cursor.

use proptest::prelude::*;

use super::tests::{agent, cost, limit_id, proptest_cases, request, tenant, tool};
use super::window::DAY_MS;
use super::*;

/// 2024-03-10T12:00:00Z: mid-day, so a day window rolls 12 h later.
const T0_MS: u64 = 1_710_072_000_000;

struct Alerts {
    ledger: Ledger,
    now_ms: u64,
    requests: u64,
}

impl Alerts {
    /// A tenant `acme` with one cost budget `spend` of `amount` over `window`.
    fn new(window: Window, amount: u64, thresholds: Thresholds) -> Self {
        let mut a = Alerts {
            ledger: Ledger::new(),
            now_ms: T0_MS,
            requests: 0,
        };
        let put = Command::PutTenant {
            request_id: a.request(),
            tenant: tenant("acme"),
            policy: TenantPolicy::default(),
        };
        assert_eq!(a.apply(&put), Outcome::Done);
        a.put_limit(Scope::Tenant, window, amount, thresholds);
        a
    }

    fn put_limit(&mut self, scope: Scope, window: Window, amount: u64, thresholds: Thresholds) {
        let cmd = Command::PutLimit {
            request_id: self.request(),
            tenant: tenant("acme"),
            limit: LimitSpec {
                id: limit_id("spend"),
                scope,
                dimension: Dimension::Cost,
                kind: LimitKind::Budget { window, amount },
                thresholds,
            },
        };
        assert_eq!(self.apply(&cmd), Outcome::Done);
    }

    fn request(&mut self) -> RequestId {
        self.requests += 1;
        request(&format!("r{}", self.requests))
    }

    fn apply(&mut self, cmd: &Command) -> Outcome {
        self.ledger.apply(self.now_ms, cmd)
    }

    fn record(&mut self, who: &str, micros: u64) {
        let cmd = Command::Record {
            request_id: self.request(),
            tenant: tenant("acme"),
            agent: agent(who),
            tool: tool("llm"),
            actual: cost(micros),
            usage: None,
            offline: false,
            session: None,
        };
        assert!(matches!(self.apply(&cmd), Outcome::Recorded { .. }));
    }

    fn reserve(&mut self, micros: u64, ttl_ms: u64) -> ReservationId {
        self.try_reserve(micros, ttl_ms).expect("granted")
    }

    fn try_reserve(&mut self, micros: u64, ttl_ms: u64) -> Option<ReservationId> {
        let cmd = Command::Reserve {
            request_id: self.request(),
            tenant: tenant("acme"),
            agent: agent("bot"),
            tool: tool("llm"),
            estimate: cost(micros),
            ttl_ms,
            fingerprint: None,
            shape: None,
            usage: None,
            session: None,
        };
        match self.apply(&cmd) {
            Outcome::Granted { reservation_id, .. } => Some(reservation_id),
            _ => None,
        }
    }

    fn commit(&mut self, reservation_id: ReservationId, micros: u64) {
        let cmd = Command::Commit {
            request_id: self.request(),
            tenant: tenant("acme"),
            reservation_id,
            actual: cost(micros),
            usage: None,
            abandoned: false,
        };
        assert!(matches!(self.apply(&cmd), Outcome::Committed { .. }));
    }

    /// Every crossing so far, as (threshold, used, window start, agent).
    fn crossings(&self) -> Vec<(u8, u64, Option<u64>, Option<String>)> {
        let filter = AuditFilter {
            event: Some("threshold_crossed".into()),
            ..AuditFilter::default()
        };
        self.ledger
            .audit(&filter)
            .into_iter()
            .map(|r| match r.event {
                AuditEvent::ThresholdCrossed(c) => (
                    c.threshold_percent,
                    c.used,
                    c.window_start_ms,
                    r.agent.map(|a| a.to_string()),
                ),
                other => panic!("the filter let {other:?} through"),
            })
            .collect()
    }

    /// What a usage query says the budget has crossed in its current window.
    fn alerted_percent(&self) -> u8 {
        let mut ledger = self.ledger.clone();
        // Usage reads the ledger's time: move it to the harness's clock first.
        let _ = ledger.apply(self.now_ms, &Command::Tick);
        let rows = ledger.usage(&tenant("acme"), None, None).unwrap();
        rows.iter()
            .find(|row| row.limit.id.as_str() == "spend")
            .map(|row| row.alerted_percent)
            .unwrap()
    }

    fn percents(&self) -> Vec<u8> {
        self.crossings().into_iter().map(|c| c.0).collect()
    }
}

fn thresholds(percents: &[u32]) -> Thresholds {
    Thresholds::new(percents.iter().copied()).unwrap()
}

#[test]
fn each_threshold_is_crossed_once_when_committed_spend_reaches_it() {
    let mut a = Alerts::new(Window::Lifetime, 1_000, Thresholds::default());
    a.record("bot", 499);
    assert_eq!(a.percents(), [] as [u8; 0], "49.9 % crosses nothing");
    a.record("bot", 1);
    assert_eq!(a.crossings(), [(50, 500, None, Some("bot".into()))]);
    a.record("bot", 100);
    let r = a.reserve(200, 60_000);
    a.commit(r, 200);
    assert_eq!(a.percents(), [50, 80]);
    a.record("bot", 5_000);
    a.record("bot", 5_000);
    assert_eq!(
        a.percents(),
        [50, 80, 95],
        "past the cap: 95 once, nothing more"
    );
    // What a node counts in its metrics, taken once.
    let taken: Vec<(u8, u32)> = a.ledger.take_threshold_crossings().collect();
    assert_eq!(taken, [(50, 1), (80, 1), (95, 1)]);
    assert_eq!(a.ledger.take_threshold_crossings().count(), 0);
}

#[test]
fn one_charge_crosses_every_threshold_it_passes_in_order() {
    let mut a = Alerts::new(Window::Lifetime, 1_000, Thresholds::default());
    a.record("bot", 960);
    assert_eq!(
        a.crossings(),
        [
            (50, 960, None, Some("bot".into())),
            (80, 960, None, Some("bot".into())),
            (95, 960, None, Some("bot".into())),
        ]
    );
}

#[test]
fn what_is_held_crosses_nothing_until_it_is_charged() {
    let mut a = Alerts::new(Window::Lifetime, 1_000, Thresholds::default());
    let r = a.reserve(900, 60_000);
    assert_eq!(a.percents(), [] as [u8; 0]);
    let release = Command::Release {
        request_id: a.request(),
        tenant: tenant("acme"),
        reservation_id: r,
    };
    assert!(matches!(a.apply(&release), Outcome::Released { .. }));
    assert_eq!(a.percents(), [] as [u8; 0]);
    // An expiry that charges the estimate is spend: it crosses, with no request id.
    a.reserve(600, 1_000);
    a.now_ms += 1_000;
    assert_eq!(a.apply(&Command::Tick), Outcome::Done);
    assert_eq!(a.percents(), [50]);
    let filter = AuditFilter {
        event: Some("threshold_crossed".into()),
        ..AuditFilter::default()
    };
    assert_eq!(a.ledger.audit(&filter)[0].request_id, None);
}

#[test]
fn a_window_that_rolls_re_arms_every_threshold() {
    let mut a = Alerts::new(Window::Day, 1_000, Thresholds::default());
    let day = T0_MS - T0_MS % DAY_MS;
    a.record("bot", 850);
    a.record("bot", 10);
    assert_eq!(a.alerted_percent(), 80, "usage reports the highest crossed");
    a.now_ms += DAY_MS;
    assert_eq!(
        a.alerted_percent(),
        0,
        "a new window has crossed nothing yet"
    );
    a.record("bot", 400);
    a.record("bot", 100);
    assert_eq!(a.alerted_percent(), 50);
    let windows: Vec<(u8, Option<u64>)> = a.crossings().iter().map(|c| (c.0, c.2)).collect();
    assert_eq!(
        windows,
        [(50, Some(day)), (80, Some(day)), (50, Some(day + DAY_MS))]
    );
}

#[test]
fn thresholds_are_the_limits_own_and_empty_turns_them_off() {
    let mut a = Alerts::new(Window::Lifetime, 1_000, thresholds(&[10, 99]));
    a.record("bot", 980);
    assert_eq!(a.percents(), [10]);
    a.put_limit(Scope::Tenant, Window::Lifetime, 1_000, Thresholds::off());
    a.record("bot", 15);
    assert_eq!(a.percents(), [10], "no thresholds, no crossing");
    // Turned back on, the same window remembers what it crossed: only 99 is left.
    a.put_limit(
        Scope::Tenant,
        Window::Lifetime,
        1_000,
        thresholds(&[10, 99]),
    );
    a.record("bot", 1);
    assert_eq!(a.percents(), [10, 99]);
}

#[test]
fn per_agent_budgets_cross_for_each_agent() {
    let mut a = Alerts::new(Window::Lifetime, 1_000, Thresholds::default());
    a.put_limit(Scope::EachAgent, Window::Lifetime, 100, thresholds(&[50]));
    a.record("bot", 60);
    a.record("other", 60);
    a.record("bot", 60);
    let who: Vec<Option<String>> = a.crossings().into_iter().map(|c| c.3).collect();
    assert_eq!(who, [Some("bot".into()), Some("other".into())]);
}

#[test]
fn bad_thresholds_are_refused_and_change_nothing() {
    let mut a = Alerts::new(Window::Lifetime, 1_000, Thresholds::default());
    let before = a.ledger.clone();
    for bad in [
        vec![0u8],
        vec![100],
        vec![80, 50],
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
    ] {
        let spec: LimitSpec = serde_json::from_value(serde_json::json!({
            "id": "spend", "scope": "tenant", "dimension": "cost",
            "kind": {"budget": {"window": "day", "amount": 5}}, "thresholds": bad,
        }))
        .unwrap();
        let cmd = Command::PutLimit {
            request_id: a.request(),
            tenant: tenant("acme"),
            limit: spec,
        };
        assert!(
            matches!(a.apply(&cmd), Outcome::Rejected(Rejection::Invalid(_))),
            "{bad:?}"
        );
    }
    assert_eq!(a.ledger, before);
}

#[test]
fn the_delivery_cursor_moves_forward_only_and_never_past_the_head() {
    let mut a = Alerts::new(Window::Lifetime, 1_000, Thresholds::default());
    a.record("bot", 600);
    let head = a.ledger.chain_head().seq;
    let delivered = |a: &mut Alerts, up_to_seq| {
        assert_eq!(
            a.apply(&Command::AlertsDelivered { up_to_seq }),
            Outcome::Done
        );
        a.ledger.alerts_delivered_seq()
    };
    assert_eq!(delivered(&mut a, 2), 2);
    assert_eq!(delivered(&mut a, 1), 2, "never back");
    assert_eq!(delivered(&mut a, u64::MAX), head, "never past the head");
    let restored = Ledger::restore(&a.ledger.snapshot()).unwrap();
    assert_eq!(restored.alerts_delivered_seq(), head);
}

#[derive(Clone, Debug)]
enum Step {
    Record(u64),
    /// Reserve and commit at another amount.
    Commit(u64, u64),
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..400).prop_map(Step::Record),
        3 => (1u64..400, 0u64..400).prop_map(|(e, a)| Step::Commit(e, a)),
        1 => (0u64..2 * DAY_MS).prop_map(Step::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases()))]

    /// Against a model that sums committed spend per day: in every window, exactly the
    /// thresholds the window's spend reached are crossed, once each, in ascending order, each
    /// when the spend first reached it; none while the spend stays below.
    #[test]
    fn every_threshold_is_crossed_exactly_once_per_window_it_is_reached(
        steps in proptest::collection::vec(step(), 1..60),
        amount in 1u64..2_000,
    ) {
        let mut a = Alerts::new(Window::Day, amount, Thresholds::default());
        let mut spent: std::collections::BTreeMap<u64, u64> = Default::default();
        let mut expected = Vec::new();
        for step in steps {
            let charged = match step {
                Step::Record(micros) => { a.record("bot", micros); micros }
                Step::Commit(estimate, actual) => match a.try_reserve(estimate, 60_000) {
                    Some(r) => { a.commit(r, actual); actual }
                    None => 0,
                },
                Step::Advance(ms) => { a.now_ms += ms; 0 }
            };
            let day = a.now_ms - a.now_ms % DAY_MS;
            let before = spent.get(&day).copied().unwrap_or(0);
            let after = before + charged;
            spent.insert(day, after);
            for t in THRESHOLDS_DEFAULT_PERCENT {
                if !alerts::reached(before, amount, t) && alerts::reached(after, amount, t) {
                    expected.push((t, after, Some(day), Some("bot".to_string())));
                }
            }
        }
        prop_assert_eq!(a.crossings(), expected);
    }
}
