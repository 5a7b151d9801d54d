//! Sessions: limits of scope `EachSession` count one run of a task over every agent and
//! worker that names it, and a session is forgotten once idle.

use super::tests::{agent, cost, request, tenant, tool};
use super::*;

const T0: u64 = 1_710_072_000_000;

struct Sessions {
    ledger: Ledger,
    now_ms: u64,
    requests: u64,
}

impl Sessions {
    fn new(quotas: TenantQuotas, limits: &[(&str, Dimension, LimitKind)]) -> Self {
        let mut h = Sessions {
            ledger: Ledger::new(),
            now_ms: T0,
            requests: 0,
        };
        let policy = TenantPolicy {
            quotas,
            ..TenantPolicy::default()
        };
        let put = Command::PutTenant {
            request_id: h.next_request(),
            tenant: tenant("acme"),
            policy,
        };
        assert_eq!(h.apply(&put), Outcome::Done);
        for (id, dimension, kind) in limits {
            assert_eq!(
                h.put_limit(id, Scope::EachSession, *dimension, *kind),
                Outcome::Done
            );
        }
        h
    }

    fn next_request(&mut self) -> RequestId {
        self.requests += 1;
        request(&format!("s-{}", self.requests))
    }

    fn apply(&mut self, cmd: &Command) -> Outcome {
        self.ledger.apply(self.now_ms, cmd)
    }

    fn put_limit(
        &mut self,
        id: &str,
        scope: Scope,
        dimension: Dimension,
        kind: LimitKind,
    ) -> Outcome {
        let cmd = Command::PutLimit {
            request_id: self.next_request(),
            tenant: tenant("acme"),
            limit: LimitSpec {
                id: LimitId::new(id).unwrap(),
                scope,
                dimension,
                kind,
                thresholds: Default::default(),
            },
        };
        self.apply(&cmd)
    }

    fn reserve(&mut self, by: &str, session: Option<&str>, micros: u64) -> Outcome {
        let cmd = Command::Reserve {
            request_id: self.next_request(),
            tenant: tenant("acme"),
            agent: agent(by),
            tool: tool("llm"),
            estimate: cost(micros),
            ttl_ms: 60_000,
            fingerprint: None,
            shape: None,
            usage: None,
            session: session.map(|s| SessionId::new(s).unwrap()),
        };
        self.apply(&cmd)
    }

    fn commit(&mut self, granted: &Outcome, micros: u64) -> Outcome {
        let Outcome::Granted { reservation_id, .. } = granted else {
            panic!("not granted: {granted:?}");
        };
        let cmd = Command::Commit {
            request_id: self.next_request(),
            tenant: tenant("acme"),
            reservation_id: *reservation_id,
            actual: cost(micros),
            usage: None,
            abandoned: false,
        };
        self.apply(&cmd)
    }

    fn record(&mut self, by: &str, session: Option<&str>, micros: u64) -> Outcome {
        let cmd = Command::Record {
            request_id: self.next_request(),
            tenant: tenant("acme"),
            agent: agent(by),
            tool: tool("llm"),
            actual: cost(micros),
            usage: None,
            offline: false,
            session: session.map(|s| SessionId::new(s).unwrap()),
        };
        self.apply(&cmd)
    }

    fn used(&self, session: &str, limit: &str) -> u64 {
        let rows = self
            .ledger
            .session_usage(&tenant("acme"), &SessionId::new(session).unwrap())
            .unwrap();
        rows.iter()
            .find(|row| row.limit.id.as_str() == limit)
            .map(|row| row.used)
            .unwrap()
    }
}

fn session_budget(amount: u64) -> (&'static str, Dimension, LimitKind) {
    let kind = LimitKind::Budget {
        window: Window::Lifetime,
        amount,
    };
    ("task-cost", Dimension::Cost, kind)
}

fn denied_by(outcome: &Outcome) -> Option<(&str, &Scope)> {
    match outcome {
        Outcome::Denied(DenyReason::Limit {
            limit_id, scope, ..
        }) => Some((limit_id.as_str(), scope)),
        _ => None,
    }
}

/// A task fanned out over three agents spends one session budget: once their commits and
/// holds reach it, every worker of that session is denied, while another session and a
/// call in no session are served.
#[test]
fn a_fan_out_over_agents_stays_inside_one_session_budget() {
    let mut h = Sessions::new(TenantQuotas::default(), &[session_budget(100)]);
    for by in ["planner", "worker-1", "worker-2"] {
        let granted = h.reserve(by, Some("task-1"), 30);
        assert_eq!(
            h.commit(&granted, 30),
            Outcome::Committed {
                reservation_id: match granted {
                    Outcome::Granted { reservation_id, .. } => reservation_id,
                    _ => unreachable!(),
                },
                overrun: false,
                late: false,
                cost_micros: 30,
            }
        );
    }
    assert_eq!(h.used("task-1", "task-cost"), 90);
    let held = h.reserve("worker-3", Some("task-1"), 10);
    assert!(matches!(held, Outcome::Granted { .. }), "{held:?}");
    let over = h.reserve("worker-4", Some("task-1"), 1);
    assert_eq!(denied_by(&over), Some(("task-cost", &Scope::EachSession)));
    assert!(matches!(
        h.record("worker-1", Some("task-1"), 5),
        Outcome::Recorded { .. }
    ));
    assert_eq!(
        h.used("task-1", "task-cost"),
        95,
        "records count in the session"
    );
    assert!(matches!(
        h.reserve("worker-1", Some("task-2"), 100),
        Outcome::Granted { .. }
    ));
    assert!(matches!(
        h.reserve("worker-1", None, 500),
        Outcome::Granted { .. }
    ));
    assert_eq!(h.used("task-1", "task-cost"), 95);
}

/// A session's calls and its duration: the sixth call is denied, and so is any call once
/// the duration since the session's first call has passed.
#[test]
fn calls_and_duration_end_a_session() {
    let calls = (
        "task-calls",
        Dimension::Calls,
        LimitKind::Budget {
            window: Window::Lifetime,
            amount: 5,
        },
    );
    let duration = (
        "task-time",
        Dimension::Calls,
        LimitKind::Duration { ms: 60_000 },
    );
    let mut h = Sessions::new(TenantQuotas::default(), &[calls, duration]);
    for _ in 0..5 {
        let granted = h.reserve("bot", Some("run-a"), 1);
        assert!(matches!(h.commit(&granted, 1), Outcome::Committed { .. }));
    }
    assert_eq!(
        denied_by(&h.reserve("bot", Some("run-a"), 1)),
        Some(("task-calls", &Scope::EachSession))
    );

    let first = h.reserve("bot", Some("run-b"), 1);
    assert!(matches!(first, Outcome::Granted { .. }));
    h.now_ms += 59_999;
    assert!(matches!(
        h.reserve("bot", Some("run-b"), 1),
        Outcome::Granted { .. }
    ));
    h.now_ms += 1;
    let late = h.reserve("bot", Some("run-b"), 1);
    assert_eq!(denied_by(&late), Some(("task-time", &Scope::EachSession)));
    assert!(matches!(
        h.reserve("bot", Some("run-c"), 1),
        Outcome::Granted { .. }
    ));
}

/// A session idle for `SESSION_IDLE_MS` is forgotten by the ticks (its name may start
/// afresh); one called a millisecond later is not.
#[test]
fn an_idle_session_is_forgotten_and_a_busy_one_is_kept() {
    let mut h = Sessions::new(TenantQuotas::default(), &[session_budget(100)]);
    let spent = h.reserve("bot", Some("old"), 100);
    assert!(matches!(h.commit(&spent, 100), Outcome::Committed { .. }));
    h.now_ms += 1;
    assert!(matches!(
        h.record("bot", Some("busy"), 100),
        Outcome::Recorded { .. }
    ));
    // `old` was last called at T0, `busy` at T0 + 1.
    h.now_ms = T0 + SESSION_IDLE_MS - 1;
    assert_eq!(h.apply(&Command::Tick), Outcome::Done);
    assert_eq!(
        h.used("old", "task-cost"),
        100,
        "forgotten a millisecond early"
    );
    h.now_ms += 1;
    assert_eq!(h.apply(&Command::Tick), Outcome::Done);
    assert_eq!(h.used("old", "task-cost"), 0);
    assert_eq!(h.used("busy", "task-cost"), 100);
    assert!(matches!(
        h.reserve("bot", Some("old"), 100),
        Outcome::Granted { .. }
    ));
}

/// A tenant at its quota of sessions has a call that would open one more refused,
/// naming the quota, and the refusal creates nothing: no agent, no audit record.
#[test]
fn the_session_quota_refuses_a_new_session_and_changes_nothing() {
    let quotas = TenantQuotas {
        sessions: 2,
        ..TenantQuotas::default()
    };
    let mut h = Sessions::new(quotas, &[session_budget(1_000)]);
    assert!(matches!(
        h.reserve("a", Some("s1"), 1),
        Outcome::Granted { .. }
    ));
    assert!(matches!(
        h.record("a", Some("s2"), 1),
        Outcome::Recorded { .. }
    ));
    let head = h.ledger.chain_head();
    let refused = h.reserve("newcomer", Some("s3"), 1);
    assert_eq!(
        refused,
        Outcome::Rejected(Rejection::quota_reached(
            Bound::SessionsPerTenant,
            2,
            &tenant("acme")
        ))
    );
    assert_eq!(h.record("newcomer", Some("s3"), 1), refused);
    assert_eq!(h.ledger.chain_head(), head);
    assert_eq!(
        h.ledger.stats().agents,
        1,
        "the refused call created its agent"
    );
    assert!(
        matches!(h.reserve("a", Some("s1"), 1), Outcome::Granted { .. }),
        "known sessions go on"
    );
}

/// Without an `EachSession` limit, session names are not remembered: no quota applies.
#[test]
fn sessions_are_kept_only_where_a_limit_counts_them() {
    let quotas = TenantQuotas {
        sessions: 1,
        ..TenantQuotas::default()
    };
    let mut h = Sessions::new(quotas, &[]);
    for i in 0..5 {
        let name = format!("s{i}");
        assert!(matches!(
            h.reserve("a", Some(&name), 1),
            Outcome::Granted { .. }
        ));
    }
}

/// Expiry and release settle the session's holds: a concurrency limit of one per session
/// frees its slot when the reservation ends either way.
#[test]
fn a_session_concurrency_slot_frees_on_release_and_on_expiry() {
    let one = (
        "task-parallel",
        Dimension::Concurrency,
        LimitKind::Concurrency { max: 1 },
    );
    let mut h = Sessions::new(TenantQuotas::default(), &[one]);
    let first = h.reserve("w1", Some("t"), 1);
    let Outcome::Granted { reservation_id, .. } = first else {
        panic!("{first:?}");
    };
    assert_eq!(
        denied_by(&h.reserve("w2", Some("t"), 1)),
        Some(("task-parallel", &Scope::EachSession))
    );
    let release = Command::Release {
        request_id: h.next_request(),
        tenant: tenant("acme"),
        reservation_id,
    };
    assert!(matches!(h.apply(&release), Outcome::Released { .. }));
    assert!(matches!(
        h.reserve("w2", Some("t"), 1),
        Outcome::Granted { .. }
    ));
    h.now_ms += 60_000;
    assert!(
        matches!(h.reserve("w3", Some("t"), 1), Outcome::Granted { .. }),
        "expired at its TTL"
    );
}

/// A snapshot carries sessions: the restored ledger is equal and goes on denying.
#[test]
fn sessions_survive_a_snapshot() {
    let mut h = Sessions::new(TenantQuotas::default(), &[session_budget(10)]);
    let granted = h.reserve("a", Some("t"), 10);
    assert!(matches!(granted, Outcome::Granted { .. }));
    let restored = Ledger::restore(&h.ledger.snapshot()).unwrap();
    assert!(restored == h.ledger);
    h.ledger = restored;
    assert!(denied_by(&h.reserve("b", Some("t"), 1)).is_some());
    assert!(matches!(h.commit(&granted, 4), Outcome::Committed { .. }));
    assert_eq!(h.used("t", "task-cost"), 4);
}

/// Bad session limits and names are INVALID_ARGUMENT and change nothing.
#[test]
fn bad_session_limits_and_names_are_refused() {
    let mut h = Sessions::new(TenantQuotas::default(), &[]);
    let duration = LimitKind::Duration { ms: 1_000 };
    let day = LimitKind::Budget {
        window: Window::Day,
        amount: 5,
    };
    let too_long = LimitKind::Duration {
        ms: SESSION_DURATION_MS_MAX + 1,
    };
    for (scope, dimension, kind) in [
        (Scope::EachAgent, Dimension::Calls, duration),
        (Scope::EachSession, Dimension::Cost, duration),
        (Scope::EachSession, Dimension::Calls, too_long),
        (Scope::EachSession, Dimension::Cost, day),
    ] {
        let outcome = h.put_limit("bad", scope.clone(), dimension, kind);
        assert!(
            matches!(outcome, Outcome::Rejected(Rejection::Invalid(_))),
            "{scope:?} {dimension:?} {kind:?}: {outcome:?}"
        );
    }
    assert!(h
        .ledger
        .usage(&tenant("acme"), None, None)
        .unwrap()
        .is_empty());
    assert!(SessionId::new("has space").is_err());
    assert!(SessionId::new("x".repeat(ID_BYTES_MAX + 1)).is_err());
}
