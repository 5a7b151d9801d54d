//! The slot's decisions and bookkeeping, without a cluster: every instant is given, so
//! nothing sleeps.

use super::*;
use crate::channel::Auth;

const SECOND: Duration = Duration::from_secs(1);

fn terms(lease_id: u64, slice: Amounts, units: u32) -> Terms {
    Terms {
        lease_id,
        slice,
        units,
        expires_at_ms: 10_000,
        ttl: Duration::from_millis(2_000),
        repeat_max: 0,
        repeat_window: Duration::ZERO,
    }
}

/// A slot holding lease 1 of `slice`, granted at `t0`.
fn leased(slice: Amounts, units: u32, t0: Instant) -> SlotState {
    let mut state = SlotState::new(t0);
    state.leased(terms(1, slice, units), t0, t0);
    state
}

fn call(id: &str, estimate: Amounts, actual: Amounts) -> v1::LeaseCall {
    v1::LeaseCall {
        request_id: id.into(),
        estimate: Some(estimate.into()),
        actual: Some(actual.into()),
        fingerprint: String::new(),
        shape: String::new(),
    }
}

fn granted(grant: Grant) -> u64 {
    match grant {
        Grant::Granted { lease_id, .. } => lease_id,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn answer(lease: Option<Terms>, recalled: bool, expired: bool) -> v1::SettleResponse {
    v1::SettleResponse {
        lease: lease.map(|t| v1::LeaseTerms {
            lease_id: t.lease_id,
            slice: Some(t.slice.into()),
            units: t.units,
            expires_at_ms: t.expires_at_ms,
            ttl_ms: duration_ms(t.ttl),
            repeat_max: t.repeat_max,
            repeat_window_ms: duration_ms(t.repeat_window),
        }),
        recalled,
        expired,
        charged_calls: 0,
        applied: None,
    }
}

#[test]
fn without_a_lease_the_slot_asks_and_after_a_refusal_goes_per_call_until_it_may_ask_again() {
    let t0 = Instant::now();
    let mut state = SlotState::new(t0);
    assert_eq!(state.grant(Amounts::new(10, 0, 1), None, t0), Grant::Ask);
    state.refused(t0 + LEASE_ASK_INTERVAL);
    assert_eq!(
        state.grant(Amounts::new(10, 0, 1), None, t0),
        Grant::PerCall
    );
    let later = t0 + LEASE_ASK_INTERVAL;
    assert_eq!(state.grant(Amounts::new(10, 0, 1), None, later), Grant::Ask);
}

#[test]
fn grants_while_the_estimate_fits_every_dimension_then_asks_for_a_settle() {
    let t0 = Instant::now();
    let mut state = leased(Amounts::new(100, 1_000, 10), 64, t0);
    let estimate = Amounts::new(40, 100, 1);
    assert_eq!(granted(state.grant(estimate, None, t0)), 1);
    assert_eq!(granted(state.grant(estimate, None, t0)), 1);
    assert_eq!(state.remaining(), Some(Amounts::new(20, 800, 8)));
    // 40 tokens no longer fit, though cost and calls would: the slice is refilled first.
    assert_eq!(state.grant(estimate, None, t0), Grant::Settle);
    // An estimate larger than the whole slice goes per call.
    assert_eq!(
        state.grant(Amounts::new(101, 0, 1), None, t0),
        Grant::PerCall
    );
    assert!(state.wants_settle(), "below half of the slice");
}

#[test]
fn commit_charges_the_actual_and_release_gives_the_estimate_back() {
    let t0 = Instant::now();
    let mut state = leased(Amounts::new(100, 0, 10), 64, t0);
    let estimate = Amounts::new(30, 0, 1);
    let a = granted(state.grant(estimate, None, t0));
    let b = granted(state.grant(estimate, None, t0));
    assert_eq!(state.remaining(), Some(Amounts::new(40, 0, 8)));
    let done = state.complete(a, estimate, call("a", estimate, Amounts::new(10, 0, 1)));
    assert_eq!(done, Completed::Kept);
    assert_eq!(state.remaining(), Some(Amounts::new(60, 0, 8)));
    state.release(b, estimate);
    assert_eq!(state.remaining(), Some(Amounts::new(90, 0, 9)));
    let report = state.take_report(false, t0).unwrap();
    assert_eq!(report.calls.len(), 1, "a release reports nothing");
    assert_eq!(report.calls[0].request_id, "a");
}

#[test]
fn an_overrun_leaves_remaining_at_zero_never_below() {
    let t0 = Instant::now();
    let mut state = leased(Amounts::new(100, 0, 10), 64, t0);
    let estimate = Amounts::new(50, 0, 1);
    let id = granted(state.grant(estimate, None, t0));
    state.complete(id, estimate, call("a", estimate, Amounts::new(500, 0, 1)));
    assert_eq!(state.remaining(), Some(Amounts::new(0, 0, 9)));
    assert_eq!(
        state.grant(Amounts::new(1, 0, 1), None, t0),
        Grant::Settle,
        "nothing left to grant from"
    );
}

#[test]
fn no_grant_at_or_after_the_local_deadline() {
    let t0 = Instant::now();
    let mut state = leased(Amounts::new(100, 0, 10), 64, t0);
    let deadline = t0 + Duration::from_millis(2_000 - LEASE_MARGIN_MS);
    let estimate = Amounts::new(1, 0, 1);
    let just_before = deadline - Duration::from_millis(1);
    assert_eq!(granted(state.grant(estimate, None, just_before)), 1);
    assert_eq!(state.grant(estimate, None, deadline), Grant::PerCall);
    assert_eq!(
        state.grant(estimate, None, deadline + SECOND),
        Grant::PerCall
    );
}

#[test]
fn at_most_units_calls_in_flight() {
    let t0 = Instant::now();
    let mut state = leased(Amounts::new(100, 0, 100), 2, t0);
    let estimate = Amounts::new(1, 0, 1);
    let a = granted(state.grant(estimate, None, t0));
    granted(state.grant(estimate, None, t0));
    assert_eq!(state.grant(estimate, None, t0), Grant::PerCall);
    state.complete(a, estimate, call("a", estimate, estimate));
    granted(state.grant(estimate, None, t0));
}

#[test]
fn a_fingerprint_about_to_reach_the_repetition_policy_goes_per_call_after_a_settle() {
    let t0 = Instant::now();
    let mut state = SlotState::new(t0);
    let repeating = Terms {
        repeat_max: 3,
        repeat_window: Duration::from_secs(10),
        ttl: Duration::from_secs(60),
        ..terms(1, Amounts::new(100, 0, 100), 64)
    };
    state.leased(repeating, t0, t0);
    let estimate = Amounts::new(1, 0, 1);
    let (same, other) = (fingerprint_key("f"), fingerprint_key("g"));
    granted(state.grant(estimate, Some(same), t0));
    granted(state.grant(estimate, Some(same), t0));
    // The third within the window would reach repeat_max: the cluster must decide it.
    assert_eq!(
        state.grant(estimate, Some(same), t0 + SECOND),
        Grant::SettleThenPerCall
    );
    granted(state.grant(estimate, Some(other), t0 + SECOND));
    granted(state.grant(estimate, None, t0 + SECOND));
    // Out of the window the count starts again.
    granted(state.grant(estimate, Some(same), t0 + Duration::from_secs(10)));
}

#[test]
fn a_recall_stops_grants_at_once() {
    let t0 = Instant::now();
    let mut state = leased(Amounts::new(100, 0, 100), 64, t0);
    let estimate = Amounts::new(1, 0, 1);
    granted(state.grant(estimate, None, t0));
    let report = state.take_report(false, t0).unwrap();
    assert!(report.calls.is_empty());
    let recalled = terms(1, Amounts::new(100, 0, 100), 64);
    state.settled(&answer(Some(recalled), true, false), t0, t0);
    assert_eq!(state.grant(estimate, None, t0), Grant::PerCall);
    assert_eq!(state.due(t0), Due::Settle, "the recall is settled at once");
}

#[test]
fn a_settle_answer_counts_the_calls_granted_while_it_was_in_flight() {
    let t0 = Instant::now();
    let mut state = leased(Amounts::new(100, 0, 100), 64, t0);
    let estimate = Amounts::new(10, 0, 1);
    let a = granted(state.grant(estimate, None, t0));
    let b = granted(state.grant(estimate, None, t0));
    state.complete(a, estimate, call("a", estimate, Amounts::new(4, 0, 1)));
    let report = state.take_report(false, t0).unwrap();
    assert_eq!(report.calls.len(), 1);
    // The cluster must keep holding b's estimate, plus a free part of at least 8 estimates.
    assert!(
        Amounts::new(90, 0, 9).fits_within(report.want),
        "{}",
        report.want
    );
    // While the settle is in flight: b completes over its estimate, c is granted.
    state.complete(b, estimate, call("b", estimate, Amounts::new(15, 0, 1)));
    let c = granted(state.grant(estimate, None, t0));
    // The cluster charged a (4) and now holds 200 for the lease.
    let renewed = terms(1, Amounts::new(200, 0, 100), 64);
    let orphans = state.settled(&answer(Some(renewed), false, false), t0, t0);
    assert!(orphans.is_empty());
    // 200 - b's actual (15) - c's estimate (10): both are for the next report to settle.
    assert_eq!(state.remaining(), Some(Amounts::new(175, 0, 98)));
    state.complete(c, estimate, call("c", estimate, estimate));
    let next = state.take_report(false, t0).unwrap();
    let ids: Vec<&str> = next.calls.iter().map(|c| c.request_id.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
}

#[test]
fn a_lease_that_ends_hands_its_unreported_calls_to_records_unless_it_expired() {
    let t0 = Instant::now();
    let estimate = Amounts::new(10, 0, 1);
    for expired in [false, true] {
        let mut state = leased(Amounts::new(100, 0, 100), 64, t0);
        let a = granted(state.grant(estimate, None, t0));
        let b = granted(state.grant(estimate, None, t0));
        let _report = state.take_report(false, t0).unwrap();
        state.complete(a, estimate, call("a", estimate, estimate));
        let orphans = state.settled(&answer(None, false, expired), t0, t0);
        assert_eq!(orphans.len(), usize::from(!expired), "expired: {expired}");
        let late = state.complete(b, estimate, call("b", estimate, estimate));
        if expired {
            assert_eq!(late, Completed::Covered);
        } else {
            assert!(matches!(late, Completed::Orphan(c) if c.request_id == "b"));
        }
        assert_eq!(state.grant(estimate, None, t0), Grant::Ask, "asks anew");
    }
}

#[test]
fn a_full_report_is_settled_before_more_grants() {
    let t0 = Instant::now();
    let slice = Amounts::new(0, 0, u64::MAX / 2);
    let mut state = leased(slice, LEASE_UNITS_MAX, t0);
    let estimate = Amounts::new(0, 0, 1);
    for i in 0..LEASE_SETTLE_CALLS_MAX {
        let id = granted(state.grant(estimate, None, t0));
        state.complete(id, estimate, call(&i.to_string(), estimate, estimate));
    }
    assert_eq!(state.grant(estimate, None, t0), Grant::Settle);
    assert!(state.wants_settle());
    let report = state.take_report(false, t0).unwrap();
    assert_eq!(report.calls.len(), LEASE_SETTLE_CALLS_MAX);
    granted(state.grant(estimate, None, t0));
}

#[test]
fn settles_every_quarter_ttl_and_returns_an_idle_lease() {
    let t0 = Instant::now();
    let mut state = leased(Amounts::new(100, 0, 100), 64, t0);
    assert_eq!(state.due(t0), Due::No);
    assert_eq!(state.due(t0 + Duration::from_millis(500)), Due::Settle);
    assert_eq!(state.wake_at(), Some(t0 + Duration::from_millis(500)));
    assert_eq!(state.due(t0 + Duration::from_secs(4)), Due::Return);
    let id = granted(state.grant(Amounts::new(1, 0, 1), None, t0));
    assert_eq!(
        state.due(t0 + Duration::from_secs(4)),
        Due::Settle,
        "a call in flight keeps the lease"
    );
    state.release(id, Amounts::new(1, 0, 1));
    let report = state.take_report(true, t0).unwrap();
    assert_eq!(report.want, Amounts::ZERO, "returning asks for nothing");
}

#[test]
fn want_follows_demand_within_its_bounds() {
    let t0 = Instant::now();
    let mut state = leased(Amounts::new(1_000_000, 0, 1_000_000), LEASE_UNITS_MAX, t0);
    let estimate = Amounts::new(10, 0, 1);
    // 100 calls in 100 ms: 2,000 per TTL, so twice that is wanted.
    for i in 0..100 {
        let id = granted(state.grant(estimate, None, t0));
        state.complete(id, estimate, call(&i.to_string(), estimate, estimate));
    }
    let report = state
        .take_report(false, t0 + Duration::from_millis(100))
        .unwrap();
    assert_eq!(report.want, Amounts::new(40_000, 0, 4_000));
    // No demand since: eight estimates.
    let idle = state.take_report(false, t0 + SECOND).unwrap();
    assert_eq!(idle.want, Amounts::new(80, 0, 8));
}

#[test]
fn the_book_is_bounded_and_forgets_tenants_without_leases() {
    let book = LeaseBook::new();
    let auth = Auth::default();
    let now = Instant::now();
    let first = book.slot(("t", "a", "x"), &auth, now).unwrap();
    let again = book.slot(("t", "a", "x"), &auth, now).unwrap();
    assert!(Arc::ptr_eq(&first, &again), "one slot per key");
    for i in 1..LEASES_PER_CLIENT_MAX {
        assert!(book.slot(("t", "a", &i.to_string()), &auth, now).is_some());
    }
    assert_eq!(book.len(), LEASES_PER_CLIENT_MAX);
    assert!(book.slot(("t", "b", "x"), &auth, now).is_none(), "full");
    book.tenant_off("t", now + LEASE_OFF_MEMORY, now);
    assert_eq!(book.len(), 0);
    assert!(book.slot(("t", "a", "x"), &auth, now).is_none(), "off");
    assert!(book.slot(("u", "a", "x"), &auth, now).is_some());
    let later = now + LEASE_OFF_MEMORY;
    assert!(book.slot(("t", "a", "x"), &auth, later).is_some());
}

#[test]
fn only_requests_the_cluster_would_accept_in_a_report_are_leasable() {
    use crate::types::{ReserveRequest, Usage};
    let plain = ReserveRequest::new("t", "a", "x")
        .tokens(5)
        .fingerprint("ab12");
    assert!(leasable(&plain));
    assert!(!leasable(&plain.clone().session("s")));
    assert!(!leasable(&plain.clone().usage(Usage::new("m", 1, 1))));
    assert!(!leasable(&plain.clone().fingerprint("has space")));
    assert!(!leasable(&plain.clone().shape("x".repeat(129))));
    assert!(!leasable(&plain.tokens(AMOUNT_MAX + 1)));
}
