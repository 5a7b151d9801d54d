//! The checker on hand-made histories: one consistent history, then one broken promise per
//! test, each built so that the check fails if the violation goes unreported.

use super::*;
use tollgate_ledger::{
    AgentId, DenyReason, LimitId, LimitSpec, RequestId, ReservationId, Scope, TenantId, ToolId,
    Window,
};

const TENANT: &str = "acme";
const LIMIT: &str = "cost-cap";
const AMOUNT: u64 = 1_000;

/// An audit trail under construction: seq and time advance with each record.
#[derive(Default)]
struct Trail {
    records: Vec<AuditRecord>,
}

impl Trail {
    fn push(
        &mut self,
        event: AuditEvent,
        request_id: Option<&str>,
        reservation_id: Option<u64>,
        cost_micros: u64,
    ) -> &mut AuditRecord {
        let seq = self.records.len() as u64 + 1;
        self.records.push(AuditRecord {
            seq,
            at_ms: seq * 10,
            tenant: Some(TenantId::new(TENANT).unwrap()),
            agent: Some(AgentId::new("bot").unwrap()),
            tool: Some(ToolId::new("llm").unwrap()),
            request_id: request_id.map(|r| RequestId::new(r).unwrap()),
            reservation_id: reservation_id.map(ReservationId),
            event,
            amounts: Amounts {
                tokens: 0,
                cost_micros,
                calls: 1,
            },
            prev_hash: [0; 32],
            hash: [0; 32],
        });
        self.records.last_mut().unwrap()
    }

    fn limit_put(&mut self) {
        let spec = LimitSpec {
            id: LimitId::new(LIMIT).unwrap(),
            scope: Scope::Tenant,
            dimension: Dimension::Cost,
            kind: LimitKind::Budget {
                window: Window::Lifetime,
                amount: AMOUNT,
            },
            thresholds: Default::default(),
        };
        self.push(AuditEvent::LimitPut(spec), Some("setup-limit"), None, 0)
            .amounts = Amounts::default();
    }

    fn grant(&mut self, request: &str, reservation: u64, cost: u64) {
        self.push(AuditEvent::Grant, Some(request), Some(reservation), cost);
    }

    fn deny(&mut self, request: &str, cost: u64) {
        let reason = DenyReason::Frozen { agent: None };
        self.push(AuditEvent::Deny(reason), Some(request), None, cost);
    }

    fn commit(&mut self, request: &str, reservation: u64, cost: u64, late: bool) {
        let event = AuditEvent::Commit {
            overrun: false,
            late,
            abandoned: false,
            price: None,
        };
        self.push(event, Some(request), Some(reservation), cost);
    }

    fn expire(&mut self, reservation: u64, cost: u64) {
        self.push(
            AuditEvent::Expire { charged: true },
            None,
            Some(reservation),
            cost,
        );
    }

    fn record(&mut self, request: &str, cost: u64) {
        self.push(
            AuditEvent::Record {
                price: None,
                offline: false,
            },
            Some(request),
            None,
            cost,
        );
    }

    fn release(&mut self, request: &str, reservation: u64, cost: u64) {
        self.push(AuditEvent::Release, Some(request), Some(reservation), cost);
    }
}

fn reserve(client: u64, request: &str, cost: u64, at: (u64, u64), result: OpResult) -> Event {
    Event {
        client,
        request_id: request.into(),
        op: Op::Reserve {
            tenant: TENANT.into(),
            agent: "bot".into(),
            tool: "llm".into(),
            tokens: 0,
            cost_micros: cost,
            calls: 1,
            ttl_ms: 1_000,
        },
        invoked_ms: at.0,
        completed_ms: at.1,
        result,
    }
}

fn commit(
    client: u64,
    request: &str,
    reservation: u64,
    cost: u64,
    at: (u64, u64),
    log_index: u64,
) -> Event {
    Event {
        client,
        request_id: request.into(),
        op: Op::Commit {
            tenant: TENANT.into(),
            reservation_id: reservation,
            tokens: 0,
            cost_micros: cost,
            calls: 1,
        },
        invoked_ms: at.0,
        completed_ms: at.1,
        result: OpResult::Done { log_index },
    }
}

fn record(client: u64, request: &str, cost: u64, at: (u64, u64), log_index: u64) -> Event {
    Event {
        client,
        request_id: request.into(),
        op: Op::Record {
            tenant: TENANT.into(),
            agent: "bot".into(),
            tool: "llm".into(),
            tokens: 0,
            cost_micros: cost,
            calls: 1,
        },
        invoked_ms: at.0,
        completed_ms: at.1,
        result: OpResult::Done { log_index },
    }
}

fn granted(reservation_id: u64, log_index: u64) -> OpResult {
    OpResult::Granted {
        reservation_id,
        log_index,
    }
}

fn denied(log_index: u64) -> OpResult {
    OpResult::Denied {
        reason: "budget".into(),
        log_index,
    }
}

fn budget() -> Vec<BudgetSpec> {
    vec![BudgetSpec {
        tenant: TENANT.into(),
        limit_id: LIMIT.into(),
        dimension: Dimension::Cost,
        amount: AMOUNT,
    }]
}

fn usage(used: u64, held: u64) -> Vec<FinalUsage> {
    vec![FinalUsage {
        tenant: TENANT.into(),
        limit_id: LIMIT.into(),
        used,
        held,
    }]
}

/// A run with grants, a denial, an overrun commit, a record, an expiry and its late commit,
/// a release and one grant still in flight: every promise kept.
fn consistent() -> (Vec<Event>, Trail) {
    let mut trail = Trail::default();
    trail.limit_put();
    trail.grant("r-1", 1, 400); // held 400
    trail.grant("r-2", 2, 500); // held 900
    trail.deny("r-3", 200); // 1100 would not fit
    trail.commit("c-1", 1, 450, false); // overrun: committed 450, held 500
    trail.expire(2, 500); // committed 950
    trail.commit("c-2", 2, 100, true); // late: trued down to 550
    trail.record("rec-1", 50); // committed 600
    trail.grant("r-4", 3, 100); // held 100
    trail.release("rel-4", 3, 100); // held 0
    trail.grant("r-5", 4, 300); // held 300, total 900
    let events = vec![
        reserve(1, "r-1", 400, (0, 5), granted(1, 10)),
        reserve(2, "r-2", 500, (1, 6), granted(2, 10)),
        reserve(3, "r-3", 200, (7, 9), denied(11)),
        commit(1, "c-1", 1, 450, (10, 12), 12),
        commit(2, "c-2", 2, 100, (20, 22), 14),
        record(3, "rec-1", 50, (23, 25), 15),
        reserve(1, "r-5", 300, (30, 32), granted(4, 18)),
        Event {
            client: 4,
            request_id: "lost".into(),
            op: Op::Release {
                tenant: TENANT.into(),
                reservation_id: 9,
            },
            invoked_ms: 30,
            completed_ms: 40,
            result: OpResult::Ambiguous {
                error: "deadline".into(),
            },
        },
    ];
    (events, trail)
}

fn run(events: &[Event], trail: &Trail, final_usage: &[FinalUsage]) -> CheckReport {
    check(events, &trail.records, &budget(), final_usage)
}

/// Asserts exactly one violation, mentioning `words`.
fn assert_one_violation(report: &CheckReport, words: &str) {
    assert_eq!(report.violations.len(), 1, "{:#?}", report.violations);
    assert!(
        report.violations[0].contains(words),
        "expected {words:?} in {:?}",
        report.violations[0]
    );
}

#[test]
fn a_consistent_history_has_no_violations() {
    let (events, trail) = consistent();
    let report = run(&events, &trail, &usage(600, 300));
    assert!(report.is_ok(), "{:#?}", report.violations);
    assert_eq!(report.ops, 8);
    assert_eq!(report.acknowledged, 7);
    assert_eq!(report.ambiguous, 1);
    assert_eq!(report.rejected, 0);
}

#[test]
fn a_grant_that_takes_held_plus_committed_over_the_budget_is_overspend() {
    let (mut events, mut trail) = consistent();
    // 600 committed + 300 held + 200 = 1100 > 1000.
    trail.grant("r-6", 5, 200);
    events.push(reserve(2, "r-6", 200, (40, 42), granted(5, 20)));
    let report = run(&events, &trail, &usage(600, 500));
    assert_one_violation(&report, "OVERSPEND BY GRANT");
    assert!(report.violations[0].contains("exceeds the amount by 100"));
}

#[test]
fn overrun_commits_and_records_may_pass_the_budget() {
    let (mut events, mut trail) = consistent();
    trail.record("rec-2", 5_000);
    events.push(record(2, "rec-2", 5_000, (40, 42), 20));
    let report = run(&events, &trail, &usage(5_600, 300));
    assert!(report.is_ok(), "{:#?}", report.violations);
}

#[test]
fn a_grant_made_before_the_limit_existed_is_not_held_against_it() {
    let mut trail = Trail::default();
    trail.grant("early", 1, 900);
    trail.limit_put();
    trail.grant("late", 2, 900);
    let report = check(&[], &trail.records, &budget(), &usage(0, 900));
    assert!(report.is_ok(), "{:#?}", report.violations);
}

#[test]
fn final_usage_that_differs_from_the_replay_is_reported() {
    let (events, trail) = consistent();
    let report = run(&events, &trail, &usage(650, 300));
    assert_one_violation(
        &report,
        "reports 650 used but its audit trail replays to 600",
    );
    let report = run(&events, &trail, &usage(600, 0));
    assert_one_violation(&report, "reports 0 held but its audit trail replays to 300");
}

#[test]
fn an_acknowledged_commit_missing_from_the_audit_is_reported() {
    let (mut events, trail) = consistent();
    events.push(commit(3, "c-9", 4, 300, (40, 42), 20));
    let report = run(&events, &trail, &usage(600, 300));
    assert_one_violation(&report, "has no audit record");
}

#[test]
fn a_commit_audited_with_other_amounts_is_reported() {
    let (mut events, trail) = consistent();
    if let Op::Commit { cost_micros, .. } = &mut events[3].op {
        *cost_micros = 451;
    }
    let report = run(&events, &trail, &usage(600, 300));
    assert_one_violation(&report, "the client sent 0 tokens, 451 cost micros");
}

#[test]
fn a_request_applied_twice_is_reported() {
    let (events, mut trail) = consistent();
    trail.record("rec-1", 50);
    let report = run(&events, &trail, &usage(650, 300));
    assert_one_violation(&report, "was applied twice");
}

#[test]
fn a_trip_next_to_its_denial_is_not_a_double_application() {
    let (events, mut trail) = consistent();
    let cause = tollgate_ledger::TripCause::Repetition {
        fingerprint: "f".into(),
        count: 3,
    };
    trail.push(AuditEvent::Trip(cause), Some("r-7"), None, 10);
    trail.deny("r-7", 10);
    let report = run(&events, &trail, &usage(600, 300));
    assert!(report.is_ok(), "{:#?}", report.violations);
}

#[test]
fn a_grant_the_audit_calls_a_denial_is_reported() {
    let (mut events, trail) = consistent();
    events[2].result = granted(7, 11);
    let report = run(&events, &trail, &usage(600, 300));
    assert_one_violation(&report, "the client was granted, the audit says denied");
}

#[test]
fn a_grant_with_another_reservation_id_is_reported() {
    let (mut events, trail) = consistent();
    events[0].result = granted(2, 10);
    let report = run(&events, &trail, &usage(600, 300));
    assert_one_violation(
        &report,
        "the client was granted reservation 2, the audit says Some(1)",
    );
}

#[test]
fn a_rejection_that_took_effect_is_reported() {
    let (mut events, trail) = consistent();
    events[5].result = OpResult::Rejected {
        code: "NOT_FOUND".into(),
        message: "no such tenant".into(),
    };
    let report = run(&events, &trail, &usage(600, 300));
    assert_one_violation(&report, "yet took effect");
}

#[test]
fn an_operation_ordered_before_one_that_completed_earlier_is_reported() {
    let (mut events, trail) = consistent();
    // The record was invoked after the late commit completed, yet sits at an earlier index.
    events[5].result = OpResult::Done { log_index: 13 };
    let report = run(&events, &trail, &usage(600, 300));
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("real-time order broken")),
        "{:#?}",
        report.violations
    );
}

#[test]
fn overlapping_operations_may_be_ordered_either_way() {
    let (mut events, trail) = consistent();
    // r-1 (invoked at 0) and r-2 (invoked at 1) overlap in time: r-2 may come first.
    events[0].invoked_ms = 1;
    events[1].invoked_ms = 0;
    let report = run(&events, &trail, &usage(600, 300));
    assert!(report.is_ok(), "{:#?}", report.violations);
}

#[test]
fn a_retry_answered_with_another_log_index_is_reported() {
    let (mut events, trail) = consistent();
    let mut retry = events[3].clone();
    retry.invoked_ms = 40;
    retry.completed_ms = 41;
    retry.result = OpResult::Done { log_index: 30 };
    events.push(retry);
    let report = run(&events, &trail, &usage(600, 300));
    assert_one_violation(&report, "when sent again, with log index 30");
}

#[test]
fn a_retry_answered_with_the_first_log_index_is_fine() {
    let (mut events, trail) = consistent();
    let mut retry = events[3].clone();
    retry.invoked_ms = 40;
    retry.completed_ms = 41;
    events.push(retry);
    let report = run(&events, &trail, &usage(600, 300));
    assert!(report.is_ok(), "{:#?}", report.violations);
}

#[test]
fn audit_order_that_disagrees_with_log_order_is_reported() {
    let (mut events, trail) = consistent();
    // The commit c-1 (audit seq 5) and the late commit c-2 (seq 7) overlap in real time,
    // but their log indexes say c-2 came first.
    events[3].invoked_ms = 10;
    events[3].completed_ms = 30;
    events[3].result = OpResult::Done { log_index: 14 };
    events[4].result = OpResult::Done { log_index: 13 };
    let report = run(&events, &trail, &usage(600, 300));
    assert_one_violation(&report, "audit order disagrees with log order");
}

#[test]
fn audit_time_running_backwards_is_reported() {
    let (events, mut trail) = consistent();
    trail.records[4].at_ms = 1;
    let report = run(&events, &trail, &usage(600, 300));
    assert_one_violation(&report, "audit time runs backwards");
}

#[test]
fn a_late_commit_that_is_not_flagged_late_is_reported() {
    let (events, mut trail) = consistent();
    trail.records[6].event = AuditEvent::Commit {
        overrun: false,
        late: false,
        abandoned: false,
        price: None,
    };
    let report = run(&events, &trail, &usage(600, 300));
    assert_one_violation(&report, "not flagged late");
}

#[test]
fn histories_round_trip_through_json_lines() {
    let (events, _) = consistent();
    let recorder = Recorder::new();
    for event in &events {
        recorder.record(event.clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    recorder.write_jsonl(&path).unwrap();
    assert_eq!(load_jsonl(&path).unwrap(), events);
    assert_eq!(recorder.into_events(), events);
}

impl Trail {
    fn lease_grant(&mut self, request: &str, lease: u64, slice: u64) {
        self.push(AuditEvent::LeaseGrant, Some(request), Some(lease), slice);
    }

    fn lease_call(&mut self, request: &str, lease: u64, actual: u64, charged: bool) {
        let event = AuditEvent::LeaseCall {
            overrun: false,
            charged,
        };
        self.push(event, Some(request), Some(lease), actual);
    }
}

/// After the consistent run (600 committed, 300 held): a lease of 50, renewed to 80 after
/// two calls of 10 (the budget is then exactly full), then one more call decided locally
/// whose client dies: the expiry charges what the lease still held.
fn leased() -> (Vec<Event>, Trail) {
    let (mut events, mut trail) = consistent();
    trail.lease_grant("lease-1", 10, 50); // held 350
    trail.lease_call("call-1", 10, 10, true); // committed 610, held 340
    trail.lease_call("call-2", 10, 10, true); // committed 620, held 330
    trail.lease_grant("settle-1", 10, 80); // renewed: held 380, total 1000
    trail.push(AuditEvent::LeaseExpire, None, Some(10), 80); // committed 700, held 300
    for request in ["call-1", "call-2", "call-3"] {
        events.push(reserve(
            5,
            request,
            10,
            (50, 50),
            OpResult::Local { lease_id: 10 },
        ));
    }
    (events, trail)
}

#[test]
fn leases_hold_their_slice_and_calls_and_expiry_charge_it() {
    let (events, trail) = leased();
    let report = run(&events, &trail, &usage(700, 300));
    assert!(report.is_ok(), "{:#?}", report.violations);
    assert_eq!(report.acknowledged, 10, "local grants are acknowledged");
}

#[test]
fn a_lease_grant_over_the_budget_is_overspend() {
    let (events, mut trail) = leased();
    // 700 committed + 300 held + 100 = 1100 > 1000.
    trail.lease_grant("lease-2", 11, 100);
    let report = run(&events, &trail, &usage(700, 400));
    assert_one_violation(&report, "OVERSPEND BY LEASE");
    assert!(report.violations[0].contains("exceeds the amount by 100"));
}

#[test]
fn a_returned_lease_holds_nothing_and_a_late_call_charges_nothing() {
    let (events, mut trail) = consistent();
    trail.lease_grant("lease-1", 10, 100);
    trail.lease_call("call-1", 10, 30, true);
    trail.push(
        AuditEvent::LeaseReturn { recalled: true },
        Some("settle-1"),
        Some(10),
        70,
    );
    trail.lease_call("call-2", 10, 30, false);
    let report = run(&events, &trail, &usage(630, 300));
    assert!(report.is_ok(), "{:#?}", report.violations);
    let report = run(&events, &trail, &usage(630, 370));
    assert_one_violation(&report, "a hold leaked or vanished");
}
