//! One test per rule of SPEC.md and of the module docs, named after the guarantee.

use super::window::tests::utc_ms;
use super::*;

/// Cases per property test: `TOLLGATE_PROPTEST_CASES`, default 1000.
pub(crate) fn proptest_cases() -> u32 {
    std::env::var("TOLLGATE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

pub(crate) fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}
pub(crate) fn agent(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}
pub(crate) fn tool(s: &str) -> ToolId {
    ToolId::new(s).unwrap()
}
pub(crate) fn limit_id(s: &str) -> LimitId {
    LimitId::new(s).unwrap()
}
pub(crate) fn request(s: &str) -> RequestId {
    RequestId::new(s).unwrap()
}

/// Builds an id that skipped validation, as serde would from a hostile peer.
pub(crate) fn unchecked<T: serde::de::DeserializeOwned>(raw: &str) -> T {
    serde_json::from_value(serde_json::Value::String(raw.to_string())).unwrap()
}

pub(crate) fn cost(micros: u64) -> Amounts {
    Amounts {
        tokens: 0,
        cost_micros: micros,
        calls: 1,
    }
}

pub(crate) fn tokens(n: u64) -> Amounts {
    Amounts {
        tokens: n,
        cost_micros: 0,
        calls: 1,
    }
}

fn budget(window: Window, amount: u64) -> LimitKind {
    LimitKind::Budget { window, amount }
}

/// 2024-03-10 12:00:00 UTC, a Sunday.
fn t0() -> u64 {
    utc_ms(2024, 3, 10, 12, 0, 0, 0)
}

/// A ledger with tenant `acme`, a clock, and fresh request ids.
struct Harness {
    ledger: Ledger,
    now_ms: u64,
    requests: u64,
    tenant: TenantId,
}

impl Harness {
    fn new() -> Self {
        Self::with_policy(TenantPolicy::default())
    }

    fn with_policy(policy: TenantPolicy) -> Self {
        let mut h = Harness {
            ledger: Ledger::new(),
            now_ms: t0(),
            requests: 0,
            tenant: tenant("acme"),
        };
        let cmd = Command::PutTenant {
            request_id: h.next_request(),
            tenant: h.tenant.clone(),
            policy,
        };
        assert_eq!(h.apply(&cmd), Outcome::Done);
        h
    }

    fn next_request(&mut self) -> RequestId {
        self.requests += 1;
        request(&format!("req-{}", self.requests))
    }

    fn apply(&mut self, cmd: &Command) -> Outcome {
        self.ledger.apply(self.now_ms, cmd)
    }

    fn at(&mut self, now_ms: u64) -> &mut Self {
        self.now_ms = now_ms;
        self
    }

    fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        let _ = self.ledger.apply(self.now_ms, &Command::Tick);
    }

    fn put_limit(&mut self, id: &str, scope: Scope, dimension: Dimension, kind: LimitKind) {
        let cmd = Command::PutLimit {
            request_id: self.next_request(),
            tenant: self.tenant.clone(),
            limit: LimitSpec {
                id: limit_id(id),
                scope,
                dimension,
                kind,
                thresholds: Default::default(),
            },
        };
        assert_eq!(self.apply(&cmd), Outcome::Done);
    }

    fn reserve_cmd(&mut self, who: &str, what: &str, estimate: Amounts, ttl_ms: u64) -> Command {
        Command::Reserve {
            request_id: self.next_request(),
            tenant: self.tenant.clone(),
            agent: agent(who),
            tool: tool(what),
            estimate,
            ttl_ms,
            fingerprint: None,
            shape: None,
            usage: None,
            session: None,
        }
    }

    fn reserve(&mut self, who: &str, estimate: Amounts) -> Outcome {
        let cmd = self.reserve_cmd(who, "llm", estimate, 60_000);
        self.apply(&cmd)
    }

    fn reserve_ok(&mut self, who: &str, estimate: Amounts) -> ReservationId {
        match self.reserve(who, estimate) {
            Outcome::Granted { reservation_id, .. } => reservation_id,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn reserve_with_ttl(&mut self, who: &str, estimate: Amounts, ttl_ms: u64) -> ReservationId {
        let cmd = self.reserve_cmd(who, "llm", estimate, ttl_ms);
        match self.apply(&cmd) {
            Outcome::Granted { reservation_id, .. } => reservation_id,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn commit(&mut self, id: ReservationId, actual: Amounts) -> Outcome {
        let cmd = Command::Commit {
            request_id: self.next_request(),
            tenant: self.tenant.clone(),
            reservation_id: id,
            actual,
            abandoned: false,
            usage: None,
        };
        self.apply(&cmd)
    }

    fn release(&mut self, id: ReservationId) -> Outcome {
        let cmd = Command::Release {
            request_id: self.next_request(),
            tenant: self.tenant.clone(),
            reservation_id: id,
        };
        self.apply(&cmd)
    }

    fn record(&mut self, who: &str, actual: Amounts) -> Outcome {
        let cmd = Command::Record {
            request_id: self.next_request(),
            tenant: self.tenant.clone(),
            agent: agent(who),
            tool: tool("llm"),
            actual,
            usage: None,
            offline: false,
            session: None,
        };
        self.apply(&cmd)
    }

    fn admin(&mut self, make: impl FnOnce(RequestId, TenantId) -> Command) -> Outcome {
        let cmd = make(self.next_request(), self.tenant.clone());
        self.apply(&cmd)
    }

    /// The usage row of limit `id` for `who`.
    fn usage(&self, who: &str, id: &str) -> LimitUsage {
        self.ledger
            .usage(&self.tenant, Some(&agent(who)), None)
            .unwrap()
            .into_iter()
            .find(|u| u.limit.id.as_str() == id)
            .unwrap_or_else(|| panic!("limit {id} does not apply to {who}"))
    }

    fn events(&self) -> Vec<AuditEvent> {
        self.ledger
            .audit(&AuditFilter::default())
            .into_iter()
            .map(|r| r.event)
            .collect()
    }
}

fn denied_by(outcome: &Outcome) -> (&str, i64, Option<u64>) {
    match outcome {
        Outcome::Denied(DenyReason::Limit {
            limit_id,
            remaining,
            retry_after_ms,
            ..
        }) => (limit_id.as_str(), *remaining, *retry_after_ms),
        other => panic!("expected a limit denial, got {other:?}"),
    }
}

// ---- budgets -------------------------------------------------------------------------

#[test]
fn grant_never_overspends_budget() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Lifetime, 100),
    );
    h.reserve_ok("bot", cost(60));
    let denied = h.reserve("bot", cost(50));
    assert_eq!(denied_by(&denied), ("spend", 40, None));
    h.reserve_ok("other-bot", cost(40));
    let denied = h.reserve("bot", cost(1));
    assert_eq!(denied_by(&denied), ("spend", 0, None));
    let u = h.usage("bot", "spend");
    assert_eq!((u.used, u.held, u.remaining), (0, 100, 0));
}

#[test]
fn denial_names_the_limit_its_scope_and_dimension() {
    let mut h = Harness::new();
    h.put_limit(
        "per-agent",
        Scope::EachAgent,
        Dimension::Tokens,
        budget(Window::Day, 10),
    );
    match h.reserve("bot", tokens(11)) {
        Outcome::Denied(DenyReason::Limit {
            limit_id,
            scope,
            dimension,
            remaining,
            retry_after_ms,
        }) => {
            assert_eq!(limit_id.as_str(), "per-agent");
            assert_eq!(scope, Scope::EachAgent);
            assert_eq!(dimension, Dimension::Tokens);
            assert_eq!(remaining, 10);
            assert_eq!(retry_after_ms, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn commit_releases_the_hold_and_charges_the_actual() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Lifetime, 100),
    );
    let r = h.reserve_ok("bot", cost(60));
    let out = h.commit(r, cost(30));
    assert_eq!(
        out,
        Outcome::Committed {
            reservation_id: r,
            overrun: false,
            late: false,
            cost_micros: 30,
        }
    );
    let u = h.usage("bot", "spend");
    assert_eq!((u.used, u.held, u.remaining), (30, 0, 70));
    h.reserve_ok("bot", cost(70));
}

#[test]
fn overrun_is_charged_flagged_and_drives_remaining_below_zero() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Lifetime, 100),
    );
    let r = h.reserve_ok("bot", cost(50));
    let out = h.commit(r, cost(150));
    assert_eq!(
        out,
        Outcome::Committed {
            reservation_id: r,
            overrun: true,
            late: false,
            cost_micros: 150,
        }
    );
    assert_eq!(h.usage("bot", "spend").remaining, -50);
    assert_eq!(denied_by(&h.reserve("bot", cost(0))), ("spend", -50, None));
    assert!(h.events().contains(&AuditEvent::Commit {
        overrun: true,
        late: false,
        abandoned: false,
        price: None,
    }));
}

#[test]
fn release_charges_nothing() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Lifetime, 100),
    );
    let r = h.reserve_ok("bot", cost(100));
    assert_eq!(h.release(r), Outcome::Released { reservation_id: r });
    let u = h.usage("bot", "spend");
    assert_eq!((u.used, u.held, u.remaining), (0, 0, 100));
    assert!(h.events().contains(&AuditEvent::Release));
}

#[test]
fn record_is_always_charged_and_never_denied() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Lifetime, 100),
    );
    h.put_limit(
        "rate",
        Scope::EachAgent,
        Dimension::Calls,
        LimitKind::Rate {
            amount: 1,
            period_ms: 60_000,
            burst: 1,
        },
    );
    h.admin(|request_id, tenant| Command::Freeze {
        request_id,
        tenant,
        agent: None,
    });
    assert!(matches!(
        h.record("new-bot", cost(150)),
        Outcome::Recorded { .. }
    ));
    assert!(matches!(
        h.record("new-bot", cost(1)),
        Outcome::Recorded { .. }
    ));
    assert_eq!(h.usage("new-bot", "spend").remaining, -51);
    assert_eq!(h.usage("new-bot", "rate").remaining, -1);
    assert_eq!(h.ledger.stats().agents, 1);
}

// ---- calendar windows ----------------------------------------------------------------

#[test]
fn day_window_resets_at_midnight_utc() {
    let mut h = Harness::new();
    h.put_limit(
        "daily",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    h.at(utc_ms(2024, 3, 10, 23, 59, 59, 0));
    let r = h.reserve_ok("bot", cost(100));
    h.commit(r, cost(100));
    h.at(utc_ms(2024, 3, 10, 23, 59, 59, 999));
    assert_eq!(denied_by(&h.reserve("bot", cost(1))).0, "daily");
    h.at(utc_ms(2024, 3, 11, 0, 0, 0, 0));
    h.reserve_ok("bot", cost(100));
    let u = h.usage("bot", "daily");
    assert_eq!(u.window_start_ms, Some(utc_ms(2024, 3, 11, 0, 0, 0, 0)));
}

#[test]
fn holds_carry_over_a_window_boundary() {
    let mut h = Harness::new();
    h.put_limit(
        "daily",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    h.at(utc_ms(2024, 3, 10, 23, 59, 0, 0));
    let r = h.reserve_ok("bot", cost(60));
    h.at(utc_ms(2024, 3, 11, 0, 0, 30, 0));
    assert_eq!(denied_by(&h.reserve("bot", cost(50))), ("daily", 40, None));
    // The commit lands in the new day's window.
    h.commit(r, cost(60));
    let u = h.usage("bot", "daily");
    assert_eq!((u.used, u.held), (60, 0));
}

#[test]
fn week_window_resets_sunday_to_monday() {
    let mut h = Harness::new();
    h.put_limit(
        "weekly",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Week, 100),
    );
    h.at(utc_ms(2024, 3, 4, 0, 0, 0, 0)); // Monday
    h.record("bot", cost(100));
    h.at(utc_ms(2024, 3, 10, 23, 59, 59, 999)); // Sunday
    assert_eq!(denied_by(&h.reserve("bot", cost(1))).0, "weekly");
    h.at(utc_ms(2024, 3, 11, 0, 0, 0, 0)); // Monday
    h.reserve_ok("bot", cost(100));
}

#[test]
fn month_window_resets_dec_to_jan_and_after_leap_february() {
    let mut h = Harness::new();
    h.put_limit(
        "monthly",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Month, 100),
    );
    h.at(utc_ms(2024, 12, 31, 23, 59, 59, 999));
    h.record("bot", cost(100));
    assert_eq!(denied_by(&h.reserve("bot", cost(1))).0, "monthly");
    h.at(utc_ms(2025, 1, 1, 0, 0, 0, 0));
    let r = h.reserve_ok("bot", cost(1));
    h.release(r);
    h.at(utc_ms(2028, 2, 29, 23, 59, 59, 999));
    h.record("bot", cost(100));
    assert_eq!(denied_by(&h.reserve("bot", cost(1))).0, "monthly");
    h.at(utc_ms(2028, 3, 1, 0, 0, 0, 0));
    h.reserve_ok("bot", cost(1));
}

#[test]
fn hour_window_resets_on_the_hour() {
    let mut h = Harness::new();
    h.put_limit(
        "hourly",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Hour, 10),
    );
    h.at(utc_ms(2024, 3, 10, 13, 59, 59, 999));
    h.record("bot", cost(10));
    assert_eq!(denied_by(&h.reserve("bot", cost(1))).0, "hourly");
    h.at(utc_ms(2024, 3, 10, 14, 0, 0, 0));
    h.reserve_ok("bot", cost(10));
}

#[test]
fn lifetime_budget_never_resets() {
    let mut h = Harness::new();
    h.put_limit(
        "ever",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Lifetime, 10),
    );
    h.record("bot", cost(10));
    h.at(utc_ms(2030, 1, 1, 0, 0, 0, 0));
    assert_eq!(denied_by(&h.reserve("bot", cost(1))).0, "ever");
    assert_eq!(h.usage("bot", "ever").window_start_ms, None);
}

// ---- rates ---------------------------------------------------------------------------

#[test]
fn rate_limit_admits_the_burst_then_the_rate_with_retry_after() {
    let mut h = Harness::new();
    h.put_limit(
        "rpm",
        Scope::EachAgent,
        Dimension::Calls,
        LimitKind::Rate {
            amount: 60,
            period_ms: 60_000,
            burst: 10,
        },
    );
    for _ in 0..10 {
        let r = h.reserve_ok("bot", cost(0));
        h.commit(r, cost(0));
    }
    assert_eq!(
        denied_by(&h.reserve("bot", cost(0))),
        ("rpm", 0, Some(1_000))
    );
    // Another agent has its own bucket.
    h.reserve_ok("other", cost(0));
    h.at(t0() + 999);
    assert_eq!(denied_by(&h.reserve("bot", cost(0))).2, Some(1));
    h.at(t0() + 1_000);
    h.reserve_ok("bot", cost(0));
}

#[test]
fn rate_request_larger_than_burst_is_never_retryable() {
    let mut h = Harness::new();
    h.put_limit(
        "tpm",
        Scope::Tenant,
        Dimension::Tokens,
        LimitKind::Rate {
            amount: 1_000,
            period_ms: 60_000,
            burst: 1_000,
        },
    );
    assert_eq!(
        denied_by(&h.reserve("bot", tokens(1_001))),
        ("tpm", 1_000, None)
    );
}

#[test]
fn rate_is_charged_the_estimate_and_corrected_by_actual_minus_estimate() {
    let mut h = Harness::new();
    h.put_limit(
        "tpm",
        Scope::Tenant,
        Dimension::Tokens,
        LimitKind::Rate {
            amount: 1_000,
            period_ms: 60_000,
            burst: 1_000,
        },
    );
    let r = h.reserve_ok("bot", tokens(500));
    assert_eq!(h.usage("bot", "tpm").remaining, 500);
    h.commit(r, tokens(100));
    assert_eq!(h.usage("bot", "tpm").remaining, 900);
    let r = h.reserve_ok("bot", tokens(300));
    h.commit(r, tokens(1_000));
    assert_eq!(h.usage("bot", "tpm").remaining, -100);
    h.advance(60_000);
    let r = h.reserve_ok("bot", tokens(700));
    assert_eq!(h.usage("bot", "tpm").remaining, 200);
    h.release(r);
    assert_eq!(h.usage("bot", "tpm").remaining, 900);
}

// ---- concurrency ---------------------------------------------------------------------

#[test]
fn concurrency_counts_from_grant_until_commit_release_or_expiry() {
    let mut h = Harness::new();
    h.put_limit(
        "parallel",
        Scope::EachAgent,
        Dimension::Concurrency,
        LimitKind::Concurrency { max: 2 },
    );
    let a = h.reserve_ok("bot", cost(1));
    let b = h.reserve_with_ttl("bot", cost(1), 1_000);
    assert_eq!(denied_by(&h.reserve("bot", cost(1))), ("parallel", 0, None));
    h.commit(a, cost(1));
    let c = h.reserve_ok("bot", cost(1));
    assert_eq!(denied_by(&h.reserve("bot", cost(1))).0, "parallel");
    h.release(c);
    let _d = h.reserve_ok("bot", cost(1));
    assert_eq!(denied_by(&h.reserve("bot", cost(1))).0, "parallel");
    h.advance(1_000); // b expires
    let _ = b;
    h.reserve_ok("bot", cost(1));
    assert_eq!(h.usage("bot", "parallel").used, 2);
}

// ---- scopes --------------------------------------------------------------------------

#[test]
fn reserve_is_all_or_nothing_across_every_applicable_limit() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Lifetime, 1_000),
    );
    h.put_limit(
        "agent-spend",
        Scope::EachAgent,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    h.put_limit(
        "search-spend",
        Scope::ToolTenant(tool("llm")),
        Dimension::Cost,
        budget(Window::Day, 500),
    );
    assert_eq!(denied_by(&h.reserve("bot", cost(101))).0, "agent-spend");
    for id in ["spend", "agent-spend", "search-spend"] {
        assert_eq!(
            h.usage("bot", id).held,
            0,
            "{id} was held by a denied reserve"
        );
    }
    h.reserve_ok("bot", cost(100));
    for id in ["spend", "agent-spend", "search-spend"] {
        assert_eq!(h.usage("bot", id).held, 100, "{id} was not held by a grant");
    }
}

#[test]
fn agent_override_replaces_each_agent_limits_of_the_same_class() {
    let mut h = Harness::new();
    h.put_limit(
        "default",
        Scope::EachAgent,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    h.put_limit(
        "default-rate",
        Scope::EachAgent,
        Dimension::Calls,
        LimitKind::Rate {
            amount: 1,
            period_ms: 1_000,
            burst: 5,
        },
    );
    h.put_limit(
        "vip",
        Scope::Agent(agent("vip")),
        Dimension::Cost,
        budget(Window::Month, 1_000),
    );
    h.reserve_ok("vip", cost(500));
    assert_eq!(denied_by(&h.reserve("bot", cost(500))).0, "default");
    let vip_limits: Vec<String> = h
        .ledger
        .usage(&h.tenant, Some(&agent("vip")), None)
        .unwrap()
        .into_iter()
        .map(|u| u.limit.id.to_string())
        .collect();
    assert_eq!(vip_limits, ["default-rate", "vip"]);
}

#[test]
fn tool_limits_count_per_agent_or_summed_over_the_tenant() {
    let mut h = Harness::new();
    h.put_limit(
        "search-each",
        Scope::ToolPerAgent(tool("search")),
        Dimension::Calls,
        budget(Window::Day, 2),
    );
    h.put_limit(
        "search-all",
        Scope::ToolTenant(tool("search")),
        Dimension::Calls,
        budget(Window::Day, 3),
    );
    let search = |h: &mut Harness, who: &str| {
        let cmd = h.reserve_cmd(who, "search", cost(0), 60_000);
        h.apply(&cmd)
    };
    assert!(matches!(search(&mut h, "a"), Outcome::Granted { .. }));
    assert!(matches!(search(&mut h, "a"), Outcome::Granted { .. }));
    assert_eq!(denied_by(&search(&mut h, "a")).0, "search-each");
    assert!(matches!(search(&mut h, "b"), Outcome::Granted { .. }));
    assert_eq!(denied_by(&search(&mut h, "b")).0, "search-all");
    // Other tools are not counted by tool limits.
    h.reserve_ok("a", cost(0));
}

#[test]
fn grant_reports_the_tightest_limit_relative_to_its_amount() {
    let mut h = Harness::new();
    h.put_limit(
        "big",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 1_000),
    );
    h.put_limit(
        "small",
        Scope::EachAgent,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    match h.reserve("bot", cost(50)) {
        Outcome::Granted { tightest, .. } => assert_eq!(
            tightest,
            Some(Remaining {
                limit_id: limit_id("small"),
                dimension: Dimension::Cost,
                remaining: 50
            })
        ),
        other => panic!("{other:?}"),
    }
    // No limits: no tightest.
    let mut h = Harness::new();
    assert!(matches!(
        h.reserve("bot", cost(5)),
        Outcome::Granted { tightest: None, .. }
    ));
}

#[test]
fn rate_denial_names_the_longest_wait_and_budgets_come_first() {
    let mut h = Harness::new();
    let rate = |burst| LimitKind::Rate {
        amount: 1,
        period_ms: 1_000,
        burst,
    };
    h.put_limit("a-fast", Scope::Tenant, Dimension::Calls, rate(1));
    h.put_limit("b-slow", Scope::Tenant, Dimension::Tokens, rate(1));
    h.reserve_ok("bot", tokens(1));
    let out = h.reserve("bot", tokens(1));
    assert_eq!(denied_by(&out).2, Some(1_000));
    let out = h.reserve("bot", tokens(2));
    assert_eq!(denied_by(&out), ("b-slow", 0, None));
    h.put_limit(
        "c-budget",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 1),
    );
    let out = h.reserve("bot", cost(2));
    assert_eq!(denied_by(&out).0, "c-budget");
}

// ---- expiry --------------------------------------------------------------------------

#[test]
fn expiry_charges_the_estimate_by_default() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    h.reserve_with_ttl("bot", cost(60), 1_000);
    h.advance(999);
    assert_eq!(h.usage("bot", "spend").held, 60);
    h.advance(1);
    let u = h.usage("bot", "spend");
    assert_eq!((u.used, u.held), (60, 0));
    assert!(h.events().contains(&AuditEvent::Expire { charged: true }));
    assert_eq!(h.ledger.stats().reservations_in_flight, 0);
}

#[test]
fn expiry_is_decided_at_exactly_the_ttl() {
    let mut h = Harness::new();
    let a = h.reserve_with_ttl("bot", cost(1), 1_000);
    let b = h.reserve_with_ttl("bot", cost(1), 1_000);
    h.at(t0() + 999);
    assert!(matches!(
        h.commit(a, cost(1)),
        Outcome::Committed { late: false, .. }
    ));
    h.at(t0() + 1_000);
    assert!(matches!(
        h.commit(b, cost(1)),
        Outcome::Committed { late: true, .. }
    ));
}

#[test]
fn expiry_releases_when_the_tenant_policy_says_so() {
    let mut h = Harness::with_policy(TenantPolicy {
        expiry: ExpiryPolicy::Release,
        ..TenantPolicy::default()
    });
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    let r = h.reserve_with_ttl("bot", cost(60), 1_000);
    h.advance(1_000);
    let u = h.usage("bot", "spend");
    assert_eq!((u.used, u.held), (0, 0));
    assert!(h.events().contains(&AuditEvent::Expire { charged: false }));
    // The call did happen after all: a late commit charges the actual.
    assert!(matches!(
        h.commit(r, cost(30)),
        Outcome::Committed { late: true, .. }
    ));
    assert_eq!(h.usage("bot", "spend").used, 30);
}

#[test]
fn commit_after_expiry_trues_up_not_double_charges() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 1_000),
    );
    h.put_limit(
        "tpm",
        Scope::Tenant,
        Dimension::Tokens,
        LimitKind::Rate {
            amount: 1_000,
            period_ms: 3_600_000,
            burst: 1_000,
        },
    );
    let down = h.reserve_with_ttl(
        "bot",
        Amounts {
            tokens: 500,
            cost_micros: 60,
            calls: 1,
        },
        1_000,
    );
    let up = h.reserve_with_ttl("bot", cost(40), 1_000);
    h.advance(1_000);
    assert_eq!(h.usage("bot", "spend").used, 100);
    let out = h.commit(
        down,
        Amounts {
            tokens: 100,
            cost_micros: 20,
            calls: 1,
        },
    );
    assert_eq!(
        out,
        Outcome::Committed {
            reservation_id: down,
            overrun: false,
            late: true,
            cost_micros: 20,
        }
    );
    assert_eq!(h.usage("bot", "spend").used, 60);
    assert_eq!(h.usage("bot", "tpm").used, 100);
    let out = h.commit(up, cost(90));
    assert_eq!(
        out,
        Outcome::Committed {
            reservation_id: up,
            overrun: true,
            late: true,
            cost_micros: 90,
        }
    );
    assert_eq!(h.usage("bot", "spend").used, 110);
    assert!(h.events().contains(&AuditEvent::Commit {
        overrun: true,
        late: true,
        abandoned: false,
        price: None,
    }));
    // A second late commit of the same reservation is not a third charge.
    assert!(matches!(
        h.commit(up, cost(90)),
        Outcome::Rejected(Rejection::ReservationEnded { .. })
    ));
    assert_eq!(h.usage("bot", "spend").used, 110);
}

#[test]
fn late_downward_true_up_does_not_refund_a_rolled_window() {
    let mut h = Harness::new();
    h.put_limit(
        "daily",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 1_000),
    );
    h.at(utc_ms(2024, 3, 10, 23, 59, 0, 0));
    let r = h.reserve_with_ttl("bot", cost(100), 1_000);
    h.at(utc_ms(2024, 3, 11, 0, 0, 10, 0));
    h.record("bot", cost(5));
    assert!(matches!(
        h.commit(r, cost(10)),
        Outcome::Committed { late: true, .. }
    ));
    assert_eq!(h.usage("bot", "daily").used, 5);
}

#[test]
fn release_after_expiry_is_rejected_and_the_expiry_charge_stands() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    let r = h.reserve_with_ttl("bot", cost(60), 1_000);
    h.advance(1_000);
    let before = h.ledger.clone();
    match h.release(r) {
        Outcome::Rejected(rejection @ Rejection::ReleaseAfterExpiry { charged: true, .. }) => {
            let message = rejection.to_string();
            assert!(message.contains("expired"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.ledger, before);
    assert_eq!(h.usage("bot", "spend").used, 60);
}

#[test]
fn commit_after_the_tombstone_is_gone_is_not_found() {
    let mut h = Harness::new();
    let r = h.reserve_with_ttl("bot", cost(60), 1_000);
    h.advance(1_000 + EXPIRED_RETENTION_MS);
    match h.commit(r, cost(1)) {
        Outcome::Rejected(rejection @ Rejection::ReservationEnded { .. }) => {
            let message = rejection.to_string();
            assert!(message.contains("EXPIRED_RETENTION_MS"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match h.commit(ReservationId(999), cost(1)) {
        Outcome::Rejected(rejection @ Rejection::UnknownReservation { .. }) => {
            let message = rejection.to_string();
            assert!(message.contains("never issued"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// A rejection's text with its reservation id masked, to compare answers about two ids.
fn masked(outcome: &Outcome, id: ReservationId) -> String {
    match outcome {
        Outcome::Rejected(rejection) => rejection.to_string().replace(&id.to_string(), "<id>"),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Puts tenant `name` and makes the harness act for it.
fn act_for(h: &mut Harness, name: &str) {
    h.tenant = tenant(name);
    let done = h.admin(|request_id, tenant| Command::PutTenant {
        request_id,
        tenant,
        policy: TenantPolicy::default(),
    });
    assert_eq!(done, Outcome::Done);
}

/// Guarantee 7: naming another tenant's reservation, in flight or expired, answers exactly
/// as naming one never issued, and changes nothing.
#[test]
fn another_tenants_reservation_answers_as_an_unknown_one() {
    let mut h = Harness::new();
    let expired = h.reserve_with_ttl("bot", cost(10), 1_000);
    let in_flight = h.reserve_ok("bot", cost(10));
    h.advance(1_000);
    act_for(&mut h, "mallory");
    let never = ReservationId(in_flight.0 + 1_000);
    let before = h.ledger.clone();
    let unknown_commit = h.commit(never, cost(0));
    let unknown_release = h.release(never);
    assert!(matches!(
        unknown_commit,
        Outcome::Rejected(Rejection::UnknownReservation { .. })
    ));
    for theirs in [expired, in_flight] {
        let commit = h.commit(theirs, cost(0));
        assert_eq!(masked(&commit, theirs), masked(&unknown_commit, never));
        let release = h.release(theirs);
        assert_eq!(masked(&release, theirs), masked(&unknown_release, never));
    }
    assert_eq!(h.ledger, before);
    h.tenant = tenant("acme");
    assert!(matches!(
        h.commit(in_flight, cost(3)),
        Outcome::Committed { .. }
    ));
}

/// Guarantee 7: once the naming tenant has ended a reservation of the same number, the
/// answer is its own "ended", whoever else holds that number.
#[test]
fn another_tenants_reservation_of_an_ended_number_answers_as_ended() {
    let mut h = Harness::new();
    let _first = h.reserve_ok("bot", cost(10));
    let theirs = h.reserve_ok("bot", cost(10));
    act_for(&mut h, "mallory");
    let mine = h.reserve_ok("bot", cost(1));
    let _second = h.reserve_ok("bot", cost(1));
    assert_eq!(mine, ReservationId(1));
    assert!(matches!(
        h.release(ReservationId(2)),
        Outcome::Released { .. }
    ));
    assert_eq!(theirs, ReservationId(2));
    assert!(matches!(
        h.commit(theirs, cost(0)),
        Outcome::Rejected(Rejection::ReservationEnded { .. })
    ));
    h.tenant = tenant("acme");
    assert!(matches!(
        h.commit(theirs, cost(3)),
        Outcome::Committed { .. }
    ));
}

/// Guarantee 7: the ids a tenant is given are the same whatever other tenants reserved.
#[test]
fn reservation_ids_reveal_no_other_tenants_traffic() {
    let ids_of_globex = |acme_reservations: usize| {
        let mut h = Harness::new();
        for _ in 0..acme_reservations {
            h.reserve_ok("bot", cost(1));
        }
        act_for(&mut h, "globex");
        let ids: Vec<ReservationId> = (0..5).map(|_| h.reserve_ok("bot", cost(1))).collect();
        h.tenant = tenant("acme");
        h.reserve_ok("bot", cost(1));
        h.tenant = tenant("globex");
        let after: Vec<ReservationId> = (0..3).map(|_| h.reserve_ok("bot", cost(1))).collect();
        (ids, after)
    };
    let quiet = ids_of_globex(0);
    assert_eq!(quiet, ids_of_globex(7));
    assert_eq!(quiet, ids_of_globex(40));
    assert_eq!(quiet.0, (1..=5).map(ReservationId).collect::<Vec<_>>());
}

/// Guarantee 7: a tenant's queries and admin commands naming another tenant's agent or
/// limit answer as for an agent or limit that exists nowhere.
#[test]
fn another_tenants_agents_and_limits_answer_as_unknown_ones() {
    let mut h = Harness::new();
    h.put_limit(
        "daily",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    h.put_limit(
        "per-bot",
        Scope::EachAgent,
        Dimension::Cost,
        budget(Window::Day, 50),
    );
    h.reserve_ok("bot", cost(10));
    act_for(&mut h, "mallory");
    h.put_limit(
        "own",
        Scope::EachAgent,
        Dimension::Cost,
        budget(Window::Day, 70),
    );
    let mallory = tenant("mallory");
    let (theirs, nobodys) = (agent("bot"), agent("ghost"));
    let mask = |text: String, name: &str| text.replace(name, "<name>");
    let status = |a: &AgentId| match h.ledger.agent_status(&mallory, a) {
        Err(rejection) => mask(rejection.to_string(), a.as_str()),
        Ok(status) => panic!("{status:?}"),
    };
    assert_eq!(status(&theirs), status(&nobodys));
    let usage = |a: &AgentId| {
        let rows = h.ledger.usage(&mallory, Some(a), None).unwrap();
        rows.into_iter()
            .map(|u| (u.limit, u.used, u.held, u.remaining, u.window_start_ms))
            .collect::<Vec<_>>()
    };
    assert_eq!(usage(&theirs), usage(&nobodys));
    assert_eq!(usage(&theirs).len(), 1);
    for a in [&theirs, &nobodys] {
        assert_eq!(h.ledger.reservations(&mallory, Some(a), 0), Ok(Vec::new()));
    }
    assert_eq!(h.ledger.reservations(&mallory, None, 0), Ok(Vec::new()));
    let reset = |h: &mut Harness, a: &AgentId| {
        let a = a.clone();
        let outcome = h.admin(|request_id, tenant| Command::ResetTrip {
            request_id,
            tenant,
            agent: a,
        });
        (outcome, h.ledger.stats())
    };
    let (reset_theirs, stats_theirs) = reset(&mut h, &theirs);
    let (reset_nobodys, stats_nobodys) = reset(&mut h, &nobodys);
    assert_eq!(stats_theirs, stats_nobodys);
    assert_eq!(
        mask(format!("{reset_theirs:?}"), "bot"),
        mask(format!("{reset_nobodys:?}"), "ghost")
    );
    let delete = |h: &mut Harness, id: &str| {
        let limit = limit_id(id);
        let outcome = h.admin(|request_id, tenant| Command::DeleteLimit {
            request_id,
            tenant,
            limit_id: limit,
        });
        mask(format!("{outcome:?}"), id)
    };
    assert_eq!(delete(&mut h, "daily"), delete(&mut h, "weekly"));
    assert!(delete(&mut h, "daily").contains("UnknownLimit"));
    h.tenant = tenant("acme");
    assert_eq!(h.usage("bot", "daily").held, 10);
}

// ---- freeze, trip --------------------------------------------------------------------

#[test]
fn frozen_tenant_or_agent_is_denied_at_once_and_in_flight_may_still_commit() {
    let mut h = Harness::new();
    let r1 = h.reserve_ok("bot", cost(10));
    let r2 = h.reserve_ok("bot", cost(10));
    h.admin(|request_id, tenant| Command::Freeze {
        request_id,
        tenant,
        agent: None,
    });
    assert_eq!(
        h.reserve("bot", cost(1)),
        Outcome::Denied(DenyReason::Frozen { agent: None })
    );
    assert!(matches!(h.commit(r1, cost(10)), Outcome::Committed { .. }));
    h.admin(|request_id, tenant| Command::Unfreeze {
        request_id,
        tenant,
        agent: None,
    });
    h.admin(|request_id, tenant| Command::Freeze {
        request_id,
        tenant,
        agent: Some(agent("bot")),
    });
    assert_eq!(
        h.reserve("bot", cost(1)),
        Outcome::Denied(DenyReason::Frozen {
            agent: Some(agent("bot"))
        })
    );
    h.reserve_ok("other", cost(1));
    assert!(matches!(h.release(r2), Outcome::Released { .. }));
    assert!(
        h.ledger
            .agent_status(&h.tenant, &agent("bot"))
            .unwrap()
            .frozen
    );
    h.admin(|request_id, tenant| Command::Unfreeze {
        request_id,
        tenant,
        agent: Some(agent("bot")),
    });
    h.reserve_ok("bot", cost(1));
    let events = h.events();
    assert!(events.contains(&AuditEvent::Freeze) && events.contains(&AuditEvent::Unfreeze));
}

#[test]
fn an_agent_can_be_frozen_before_its_first_call() {
    let mut h = Harness::new();
    h.admin(|request_id, tenant| Command::Freeze {
        request_id,
        tenant,
        agent: Some(agent("new")),
    });
    assert!(matches!(
        h.reserve("new", cost(1)),
        Outcome::Denied(DenyReason::Frozen { .. })
    ));
    let out = h.admin(|request_id, tenant| Command::Unfreeze {
        request_id,
        tenant,
        agent: Some(agent("unknown")),
    });
    assert!(matches!(
        out,
        Outcome::Rejected(Rejection::UnknownAgent { .. })
    ));
}

fn reserve_fingerprint(h: &mut Harness, who: &str, fingerprint: &str) -> Outcome {
    let mut cmd = h.reserve_cmd(who, "search", cost(1), 60_000);
    if let Command::Reserve { fingerprint: f, .. } = &mut cmd {
        *f = Some(fingerprint.to_string());
    }
    h.apply(&cmd)
}

#[test]
fn repetition_trips_the_agent_until_an_operator_resets_it() {
    let mut h = Harness::with_policy(TenantPolicy {
        repeat_max: 3,
        repeat_window_ms: 10_000,
        ..TenantPolicy::default()
    });
    assert!(matches!(
        reserve_fingerprint(&mut h, "bot", "same"),
        Outcome::Granted { .. }
    ));
    assert!(matches!(
        reserve_fingerprint(&mut h, "bot", "other"),
        Outcome::Granted { .. }
    ));
    assert!(matches!(
        reserve_fingerprint(&mut h, "bot", "same"),
        Outcome::Granted { .. }
    ));
    let cause = TripCause::Repetition {
        fingerprint: "same".into(),
        count: 3,
    };
    let tripped = Outcome::Denied(DenyReason::Tripped {
        cause: cause.clone(),
        until_ms: None,
    });
    assert_eq!(reserve_fingerprint(&mut h, "bot", "same"), tripped);
    assert_eq!(h.reserve("bot", cost(1)), tripped);
    assert!(matches!(
        reserve_fingerprint(&mut h, "peer", "same"),
        Outcome::Granted { .. }
    ));
    assert_eq!(
        h.ledger
            .agent_status(&h.tenant, &agent("bot"))
            .unwrap()
            .tripped,
        Some((cause.clone(), None))
    );
    assert!(h.events().contains(&AuditEvent::Trip(cause)));
    h.admin(|request_id, tenant| Command::ResetTrip {
        request_id,
        tenant,
        agent: agent("bot"),
    });
    assert!(matches!(
        reserve_fingerprint(&mut h, "bot", "same"),
        Outcome::Granted { .. }
    ));
    assert!(h.events().contains(&AuditEvent::TripReset));
}

#[test]
fn repetition_outside_the_window_does_not_trip() {
    // Buckets of 1 s: a sighting counts for the 16 s window and at most 1 s longer.
    let mut h = Harness::with_policy(TenantPolicy {
        repeat_max: 2,
        repeat_window_ms: 16_000,
        ..TenantPolicy::default()
    });
    for _ in 0..5 {
        assert!(matches!(
            reserve_fingerprint(&mut h, "bot", "same"),
            Outcome::Granted { .. }
        ));
        h.advance(17_000);
    }
}

/// What the default repetition policy answers to the same fingerprint every `every_ms`:
/// the repeat (1-based) that trips the agent, or None within `repeats`.
fn default_repetition_trips_at(every_ms: u64, repeats: u32) -> Option<u32> {
    let mut h = Harness::new();
    for n in 1..=repeats {
        if let Outcome::Denied(DenyReason::Tripped { .. }) =
            reserve_fingerprint(&mut h, "bot", "search:q=same")
        {
            return Some(n);
        }
        h.advance(every_ms);
    }
    None
}

#[test]
fn by_default_a_loop_trips_at_its_fifth_repeat_and_a_slow_poll_never() {
    let cases = [
        // A loop every 4 s, or every 2 minutes: 5 within 10 minutes.
        (4_000, 50, Some(REPEAT_MAX_DEFAULT)),
        (120_000, 50, Some(REPEAT_MAX_DEFAULT)),
        // Every 3 minutes: at most 4 within any 10 minutes, for hours.
        (180_000, 200, None),
    ];
    for (every_ms, repeats, expected) in cases {
        assert_eq!(
            default_repetition_trips_at(every_ms, repeats),
            expected,
            "a repeat every {every_ms} ms"
        );
    }
}

#[test]
fn the_repetition_window_slides_so_old_sightings_expire_and_recent_ones_count() {
    let mut h = Harness::new();
    // Four sightings a minute apart: under the default of 5 in 10 minutes.
    for _ in 0..4 {
        assert!(matches!(
            reserve_fingerprint(&mut h, "bot", "same"),
            Outcome::Granted { .. }
        ));
        h.advance(60_000);
    }
    // Eleven minutes after the first, it has left the window; the three others have not.
    h.advance(420_000);
    assert!(matches!(
        reserve_fingerprint(&mut h, "bot", "same"),
        Outcome::Granted { .. }
    ));
    // A window anchored at the first sighting would have started over and counted 2 here.
    h.advance(1_000);
    assert!(matches!(
        reserve_fingerprint(&mut h, "bot", "same"),
        Outcome::Denied(DenyReason::Tripped {
            cause: TripCause::Repetition { count: 5, .. },
            ..
        })
    ));
}

#[test]
fn by_default_velocity_counts_overruns_and_records_and_spares_a_steady_agent() {
    let dollars = |n: u64| cost(n * 1_000_000);
    let mut h = Harness::new();
    h.at(utc_ms(2024, 3, 10, 12, 0, 0, 0));
    // A new agent may spend up to the floor in its first minute.
    let r = h.reserve_ok("steady", dollars(4));
    h.commit(r, dollars(5));
    h.record("steady", dollars(4));
    // A $1 estimate committed at $12 and a record: the overrun counts, not the estimate.
    let r = h.reserve_ok("overrun", dollars(1));
    h.commit(r, dollars(12));
    assert!(matches!(
        h.reserve("overrun", cost(1)),
        Outcome::Denied(DenyReason::Tripped {
            cause: TripCause::Velocity { spent, .. },
            ..
        }) if spent == 12_000_001
    ));
    h.record("recorder", dollars(11));
    assert!(matches!(
        h.reserve("recorder", cost(1)),
        Outcome::Denied(DenyReason::Tripped {
            cause: TripCause::Velocity { .. },
            ..
        })
    ));
    // $9 a minute for half an hour: an average of ~$9, never 10 times it.
    for _ in 0..30 {
        h.advance(60_000);
        let r = h.reserve_ok("steady", dollars(4));
        h.commit(r, dollars(5));
        h.record("steady", dollars(4));
    }
    // Then $40 in a minute is still within its own pace; $100 is not.
    h.advance(60_000);
    h.reserve_ok("steady", dollars(40));
    assert!(matches!(
        h.reserve("steady", dollars(60)),
        Outcome::Denied(DenyReason::Tripped {
            cause: TripCause::Velocity { .. },
            ..
        })
    ));
}

#[test]
fn velocity_far_above_the_agents_recent_average_trips_it_until_the_cooldown() {
    let mut h = Harness::with_policy(TenantPolicy {
        velocity_factor: 5,
        velocity_window_ms: 60_000,
        velocity_dimension: Dimension::Cost,
        velocity_floor: 1_000,
        trip_cooldown_ms: 300_000,
        ..TenantPolicy::default()
    });
    h.at(utc_ms(2024, 3, 10, 12, 0, 0, 0));
    // A steady 800 per minute for a while: under the floor, and it builds the average.
    for _ in 0..30 {
        h.record("bot", cost(400));
        h.reserve_ok("bot", cost(400));
        h.advance(60_000);
    }
    // 4000 in one minute: above the floor but under 5x an average of ~800.
    let r = h.reserve_ok("bot", cost(3_900));
    h.commit(r, cost(3_900));
    h.advance(60_000);
    // 10_000 in one minute is far above 5x: the reserve that crosses it is denied.
    let out = h.reserve("bot", cost(10_000));
    let until_ms = h.now_ms + 300_000;
    match &out {
        Outcome::Denied(DenyReason::Tripped {
            cause: TripCause::Velocity { spent, baseline },
            until_ms: until,
        }) => {
            assert_eq!(*spent, 10_000);
            assert!(*baseline > 800 && *baseline < 2_000, "{baseline}");
            assert_eq!(*until, Some(until_ms));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        h.reserve("bot", cost(1)),
        Outcome::Denied(DenyReason::Tripped { .. })
    ));
    h.at(until_ms);
    h.reserve_ok("bot", cost(1));
    // A brand-new agent has no average: the floor alone protects its first window.
    assert!(matches!(
        h.reserve("fresh", cost(1_001)),
        Outcome::Denied(DenyReason::Tripped { .. })
    ));
    h.reserve_ok("fresh-2", cost(1_000));
}

fn reserve_shape(h: &mut Harness, who: &str, shape: &str) -> Outcome {
    let mut cmd = h.reserve_cmd(who, "search", cost(1), 60_000);
    if let Command::Reserve { shape: s, .. } = &mut cmd {
        *s = Some(shape.to_string());
    }
    h.apply(&cmd)
}

/// Calls `shape` `calls` times at the same instant; the 1-based call that tripped, if any.
fn shape_calls_trip_at(h: &mut Harness, who: &str, shape: &str, calls: u64) -> Option<u64> {
    (1..=calls).find(|_| {
        matches!(
            reserve_shape(h, who, shape),
            Outcome::Denied(DenyReason::Tripped { .. })
        )
    })
}

/// The default policy but for the shape floor.
fn shape_policy(shape_floor: u64) -> TenantPolicy {
    TenantPolicy {
        shape_floor,
        // Spend velocity would trip these loops too; the shape must, on its own.
        velocity_floor: AMOUNT_MAX,
        repeat_max: 0,
        ..TenantPolicy::default()
    }
}

#[test]
fn shape_velocity_trips_on_the_first_call_above_the_floor_and_names_the_shape() {
    let mut h = Harness::with_policy(shape_policy(SHAPE_FLOOR_DEFAULT));
    h.at(utc_ms(2024, 3, 10, 12, 0, 0, 0));
    for _ in 0..SHAPE_FLOOR_DEFAULT {
        assert!(matches!(
            reserve_shape(&mut h, "bot", "page-loop"),
            Outcome::Granted { .. }
        ));
    }
    let cause = TripCause::ShapeVelocity {
        shape: "page-loop".into(),
        calls: SHAPE_FLOOR_DEFAULT + 1,
        baseline: 0,
    };
    let tripped = Outcome::Denied(DenyReason::Tripped {
        cause: cause.clone(),
        until_ms: None,
    });
    assert_eq!(reserve_shape(&mut h, "bot", "page-loop"), tripped);
    // The whole agent is stopped, not the shape; its neighbour is not.
    assert_eq!(h.reserve("bot", cost(1)), tripped);
    h.reserve_ok("peer", cost(1));
    assert!(h.events().contains(&AuditEvent::Trip(cause)));
}

#[test]
fn shape_velocity_judges_each_shape_by_its_own_count() {
    let mut h = Harness::with_policy(shape_policy(SHAPE_FLOOR_DEFAULT));
    h.at(utc_ms(2024, 3, 10, 12, 0, 0, 0));
    // 60 calls of each of two shapes in one minute: neither is above the floor.
    for _ in 0..SHAPE_FLOOR_DEFAULT {
        for shape in ["search", "fetch"] {
            assert!(matches!(
                reserve_shape(&mut h, "bot", shape),
                Outcome::Granted { .. }
            ));
        }
    }
    assert_eq!(shape_calls_trip_at(&mut h, "bot", "fetch", 1), Some(1));
}

#[test]
fn a_steady_agent_at_a_high_constant_rate_is_not_tripped_once_it_has_a_baseline() {
    let mut h = Harness::with_policy(TenantPolicy {
        shape_floor: 50,
        ..shape_policy(0)
    });
    h.at(utc_ms(2024, 3, 10, 12, 0, 0, 0));
    // 50 a minute (the floor) for an hour builds an average near 50.
    for _ in 0..60 {
        assert_eq!(shape_calls_trip_at(&mut h, "crawler", "page", 50), None);
        h.advance(60_000);
    }
    // Then 400 a minute, 8 times its pace, is still under 10 times it.
    assert_eq!(shape_calls_trip_at(&mut h, "crawler", "page", 400), None);
    h.advance(60_000);
    // And the same minute's pace that would trip a new agent at once spares it.
    assert_eq!(
        shape_calls_trip_at(&mut h, "newcomer", "page", 400),
        Some(51)
    );
    // Far above 10 times its average (now above 50): it trips.
    let tripped_at = shape_calls_trip_at(&mut h, "crawler", "page", 5_000).unwrap();
    assert!((500..2_000).contains(&tripped_at), "{tripped_at}");
}

#[test]
fn the_shape_floor_protects_a_new_agent_in_its_first_window() {
    let mut h = Harness::with_policy(shape_policy(200));
    h.at(utc_ms(2024, 3, 10, 12, 0, 0, 0));
    assert_eq!(shape_calls_trip_at(&mut h, "new", "page", 200), None);
    assert_eq!(shape_calls_trip_at(&mut h, "new", "page", 1), Some(1));
    // In the next window the average is an eighth of 200: 10 times it is 250, above the
    // floor, so the floor no longer decides alone.
    h.advance(60_000);
    assert_eq!(shape_calls_trip_at(&mut h, "other", "page", 200), None);
}

#[test]
fn shape_velocity_is_off_with_a_zero_floor_or_a_zero_factor() {
    for policy in [
        shape_policy(0),
        TenantPolicy {
            velocity_factor: 0,
            ..shape_policy(SHAPE_FLOOR_DEFAULT)
        },
    ] {
        let mut h = Harness::with_policy(policy);
        assert_eq!(shape_calls_trip_at(&mut h, "bot", "page", 1_000), None);
    }
    // Without a shape on the reserve, nothing is counted either.
    let mut h = Harness::with_policy(shape_policy(1));
    for _ in 0..10 {
        h.reserve_ok("bot", cost(1));
    }
}

// ---- exactly once --------------------------------------------------------------------

#[test]
fn retry_returns_first_answer_and_changes_nothing() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Lifetime, 100),
    );
    let reserve = h.reserve_cmd("bot", "llm", cost(60), 60_000);
    let first = h.apply(&reserve);
    let Outcome::Granted { reservation_id, .. } = first.clone() else {
        panic!("{first:?}");
    };
    let before = h.ledger.clone();
    assert_eq!(h.apply(&reserve), first);
    assert_eq!(h.ledger, before);
    // A retry later (e.g. after a leader change) is still the first answer.
    h.advance(5_000);
    let before = h.ledger.clone();
    assert_eq!(h.apply(&reserve), first);
    assert_eq!(h.ledger.snapshot(), before.snapshot());

    let commit = Command::Commit {
        request_id: h.next_request(),
        tenant: h.tenant.clone(),
        reservation_id,
        actual: cost(50),
        abandoned: false,
        usage: None,
    };
    let first = h.apply(&commit);
    let before = h.ledger.clone();
    assert_eq!(h.apply(&commit), first);
    assert_eq!(h.ledger, before);
    assert_eq!(h.usage("bot", "spend").used, 50);
}

#[test]
fn retry_names_the_log_position_of_the_first_answer() {
    let mut h = Harness::new();
    let reserve = h.reserve_cmd("bot", "llm", cost(1), 60_000);
    let (first, first_position) = h.ledger.apply_at(h.now_ms, 40, &reserve);
    assert!(matches!(first, Outcome::Granted { .. }), "{first:?}");
    assert_eq!(first_position, 40);
    h.advance(1_000);
    // The retry travels in a later entry, but its answer is the one given at entry 40.
    assert_eq!(h.ledger.apply_at(h.now_ms, 57, &reserve), (first, 40));
    let fresh = h.reserve_cmd("bot", "llm", cost(1), 60_000);
    assert_eq!(h.ledger.apply_at(h.now_ms, 58, &fresh).1, 58);
}

#[test]
fn retry_of_a_denied_request_returns_the_same_denial() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Lifetime, 100),
    );
    let reserve = h.reserve_cmd("bot", "llm", cost(160), 60_000);
    let first = h.apply(&reserve);
    assert!(matches!(first, Outcome::Denied(_)));
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Lifetime, 1_000),
    );
    assert_eq!(h.apply(&reserve), first);
}

#[test]
fn same_request_id_with_another_payload_is_rejected() {
    let mut h = Harness::new();
    let reserve = h.reserve_cmd("bot", "llm", cost(60), 60_000);
    h.apply(&reserve);
    let mut other = reserve.clone();
    if let Command::Reserve { estimate, .. } = &mut other {
        *estimate = cost(61);
    }
    let before = h.ledger.clone();
    assert!(matches!(
        h.apply(&other),
        Outcome::Rejected(Rejection::RequestIdReused { .. })
    ));
    assert_eq!(h.ledger, before);
}

#[test]
fn rejections_are_not_remembered_so_a_retry_re_evaluates() {
    let mut h = Harness::new();
    let request_id = h.next_request();
    let commit = Command::Commit {
        request_id: request_id.clone(),
        tenant: h.tenant.clone(),
        reservation_id: ReservationId(1),
        actual: cost(1),
        abandoned: false,
        usage: None,
    };
    assert!(matches!(
        h.apply(&commit),
        Outcome::Rejected(Rejection::UnknownReservation { .. })
    ));
    assert_eq!(h.ledger.stats().dedup_entries, 1); // only the PutTenant
    let r = h.reserve_ok("bot", cost(1));
    assert_eq!(r, ReservationId(1));
    assert!(matches!(h.apply(&commit), Outcome::Committed { .. }));
}

#[test]
fn answers_are_forgotten_after_the_dedup_window() {
    let mut h = Harness::new();
    let reserve = h.reserve_cmd("bot", "llm", cost(1), 60_000);
    let first = h.apply(&reserve);
    h.advance(DEDUP_WINDOW_MS - 1);
    assert_eq!(h.apply(&reserve), first);
    h.advance(1);
    let again = h.apply(&reserve);
    assert!(matches!(again, Outcome::Granted { .. }));
    assert_ne!(again, first);
}

#[test]
fn request_ids_are_scoped_by_tenant() {
    let mut h = Harness::new();
    let reserve = h.reserve_cmd("bot", "llm", cost(1), 60_000);
    h.apply(&reserve);
    let mut other = reserve.clone();
    if let Command::Reserve { tenant: t, .. } = &mut other {
        *t = tenant("globex");
    }
    h.ledger.apply(
        h.now_ms,
        &Command::PutTenant {
            request_id: request("setup"),
            tenant: tenant("globex"),
            policy: TenantPolicy::default(),
        },
    );
    assert!(matches!(h.apply(&other), Outcome::Granted { .. }));
}

// ---- bad input -----------------------------------------------------------------------

#[test]
fn invalid_input_is_rejected_and_changes_nothing_not_even_time() {
    let mut h = Harness::new();
    let good = h.reserve_cmd("bot", "llm", cost(1), 60_000);
    let with = |f: &dyn Fn(&mut Command)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let long = "x".repeat(ID_BYTES_MAX + 1);
    let bad = vec![
        with(&|c| {
            if let Command::Reserve { agent, .. } = c {
                *agent = unchecked("");
            }
        }),
        with(&|c| {
            if let Command::Reserve { tenant, .. } = c {
                *tenant = unchecked(&long);
            }
        }),
        with(&|c| {
            if let Command::Reserve { tool, .. } = c {
                *tool = unchecked("has space");
            }
        }),
        with(&|c| {
            if let Command::Reserve { request_id, .. } = c {
                *request_id = unchecked("");
            }
        }),
        with(&|c| {
            if let Command::Reserve { ttl_ms, .. } = c {
                *ttl_ms = 0;
            }
        }),
        with(&|c| {
            if let Command::Reserve { ttl_ms, .. } = c {
                *ttl_ms = 2 * 86_400_000;
            }
        }),
        with(&|c| {
            if let Command::Reserve { estimate, .. } = c {
                estimate.cost_micros = u64::MAX;
            }
        }),
        with(&|c| {
            if let Command::Reserve { fingerprint, .. } = c {
                *fingerprint = Some(String::new());
            }
        }),
        with(&|c| {
            if let Command::Reserve { shape, .. } = c {
                *shape = Some("s".repeat(ID_BYTES_MAX + 1));
            }
        }),
    ];
    let bad_limits = [
        (Dimension::Tokens, LimitKind::Concurrency { max: 1 }),
        (Dimension::Concurrency, budget(Window::Day, 1)),
        (Dimension::Cost, budget(Window::Day, 0)),
        (Dimension::Cost, budget(Window::Day, AMOUNT_MAX + 1)),
        (
            Dimension::Calls,
            LimitKind::Rate {
                amount: 1,
                period_ms: 0,
                burst: 1,
            },
        ),
        (
            Dimension::Calls,
            LimitKind::Rate {
                amount: 1,
                period_ms: RATE_PERIOD_MS_MAX + 1,
                burst: 1,
            },
        ),
        (
            Dimension::Calls,
            LimitKind::Rate {
                amount: 1,
                period_ms: 1,
                burst: 0,
            },
        ),
    ];
    let mut bad = bad;
    for (dimension, kind) in bad_limits {
        bad.push(Command::PutLimit {
            request_id: request("l"),
            tenant: h.tenant.clone(),
            limit: LimitSpec {
                id: limit_id("l"),
                scope: Scope::Tenant,
                dimension,
                kind,
                thresholds: Default::default(),
            },
        });
    }
    for policy in [
        TenantPolicy {
            repeat_max: 1,
            ..TenantPolicy::default()
        },
        TenantPolicy {
            velocity_dimension: Dimension::Concurrency,
            ..TenantPolicy::default()
        },
        TenantPolicy {
            velocity_window_ms: 0,
            ..TenantPolicy::default()
        },
        TenantPolicy {
            trip_cooldown_ms: u64::MAX,
            ..TenantPolicy::default()
        },
        TenantPolicy {
            shape_floor: SHAPE_FLOOR_MAX + 1,
            ..TenantPolicy::default()
        },
    ] {
        bad.push(Command::PutTenant {
            request_id: request("p"),
            tenant: h.tenant.clone(),
            policy,
        });
    }
    let before = h.ledger.clone();
    h.at(t0() + 10_000);
    for cmd in &bad {
        assert!(cmd.validate().is_err(), "{cmd:?}");
        match h.apply(cmd) {
            Outcome::Rejected(Rejection::Invalid(invalid)) => assert!(!invalid.0.is_empty()),
            other => panic!("{cmd:?} gave {other:?}"),
        }
        assert_eq!(h.ledger, before, "{cmd:?} changed the ledger");
    }
    assert!(good.validate().is_ok());
}

#[test]
fn unknown_tenant_is_not_found() {
    let mut h = Harness::new();
    h.tenant = tenant("nobody");
    assert!(matches!(
        h.reserve("bot", cost(1)),
        Outcome::Rejected(Rejection::UnknownTenant { .. })
    ));
    assert!(matches!(
        h.record("bot", cost(1)),
        Outcome::Rejected(Rejection::UnknownTenant { .. })
    ));
    assert!(h.ledger.usage(&tenant("nobody"), None, None).is_err());
    assert!(h.ledger.limits(&tenant("nobody")).is_err());
    assert!(h.ledger.reservations(&tenant("nobody"), None, 10).is_err());
}

#[test]
fn limits_per_tenant_are_bounded() {
    let mut h = Harness::new();
    for i in 0..LIMITS_PER_TENANT_MAX {
        h.put_limit(
            &format!("l{i:02}"),
            Scope::Tenant,
            Dimension::Calls,
            budget(Window::Day, 1_000),
        );
    }
    let before = h.ledger.clone();
    let out = h.admin(|request_id, tenant| Command::PutLimit {
        request_id,
        tenant,
        limit: LimitSpec {
            id: limit_id("one-too-many"),
            scope: Scope::Tenant,
            dimension: Dimension::Calls,
            kind: budget(Window::Day, 1),
            thresholds: Default::default(),
        },
    });
    match out {
        Outcome::Rejected(
            rejection @ Rejection::BoundReached {
                bound: Bound::LimitsPerTenant,
                ..
            },
        ) => {
            assert!(rejection.to_string().contains("LIMITS_PER_TENANT_MAX"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.ledger, before);
    // Replacing an existing one is still allowed at the bound.
    h.put_limit(
        "l00",
        Scope::Tenant,
        Dimension::Calls,
        budget(Window::Day, 5),
    );
    h.reserve_ok("bot", cost(0));
}

#[test]
fn extreme_amounts_saturate_without_panicking() {
    // Velocity on, with a floor the first reserve of everything stays within.
    let mut h = Harness::with_policy(TenantPolicy {
        velocity_floor: AMOUNT_MAX,
        ..TenantPolicy::default()
    });
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, AMOUNT_MAX),
    );
    h.put_limit(
        "rate",
        Scope::EachAgent,
        Dimension::Tokens,
        LimitKind::Rate {
            amount: AMOUNT_MAX,
            period_ms: RATE_PERIOD_MS_MAX,
            burst: AMOUNT_MAX,
        },
    );
    let max = Amounts {
        tokens: AMOUNT_MAX,
        cost_micros: AMOUNT_MAX,
        calls: AMOUNT_MAX,
    };
    let r = h.reserve_ok("bot", max);
    for _ in 0..20 {
        h.record("bot", max);
    }
    h.commit(r, max);
    assert!(h.usage("bot", "spend").remaining < 0);
    h.at(u64::MAX - 1);
    let _ = h.reserve("bot", max);
    let _ = h.reserve("bot", cost(0));
    h.at(u64::MAX);
    let _ = h.ledger.apply(u64::MAX, &Command::Tick);
    assert!(h.ledger.verify_audit().is_ok());
}

// ---- limits changing -----------------------------------------------------------------

#[test]
fn raising_a_budget_keeps_the_spend_so_far() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    h.record("bot", cost(80));
    let r = h.reserve_ok("bot", cost(20));
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 200),
    );
    let u = h.usage("bot", "spend");
    assert_eq!((u.used, u.held, u.remaining), (80, 20, 100));
    h.commit(r, cost(20));
    assert_eq!(h.usage("bot", "spend").used, 100);
}

#[test]
fn changing_a_budgets_window_starts_it_afresh_and_holds_lapse() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::EachAgent,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    h.record("bot", cost(80));
    let r = h.reserve_ok("bot", cost(20));
    h.put_limit(
        "spend",
        Scope::EachAgent,
        Dimension::Cost,
        budget(Window::Month, 100),
    );
    let u = h.usage("bot", "spend");
    assert_eq!((u.used, u.held), (0, 0));
    h.commit(r, cost(20));
    assert_eq!(h.usage("bot", "spend").used, 0);
}

#[test]
fn deleting_a_limit_lifts_it_and_its_holds_lapse() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    let r = h.reserve_ok("bot", cost(100));
    assert!(matches!(h.reserve("bot", cost(1)), Outcome::Denied(_)));
    h.admin(|request_id, tenant| Command::DeleteLimit {
        request_id,
        tenant,
        limit_id: limit_id("spend"),
    });
    h.reserve_ok("bot", cost(1_000));
    h.commit(r, cost(100));
    let out = h.admin(|request_id, tenant| Command::DeleteLimit {
        request_id,
        tenant,
        limit_id: limit_id("spend"),
    });
    assert!(matches!(
        out,
        Outcome::Rejected(Rejection::UnknownLimit { .. })
    ));
    assert!(h.ledger.limits(&h.tenant).unwrap().is_empty());
}

// ---- time ----------------------------------------------------------------------------

#[test]
fn time_never_runs_backwards() {
    let mut h = Harness::new();
    h.at(t0() + 5_000);
    h.reserve_ok("bot", cost(1));
    h.at(t0());
    let r = h.reserve_with_ttl("bot", cost(1), 1_000);
    assert_eq!(h.ledger.now_ms(), t0() + 5_000);
    let views = h.ledger.reservations(&h.tenant, None, 0).unwrap();
    let view = views.iter().find(|v| v.reservation_id == r).unwrap();
    assert_eq!(view.granted_at_ms, t0() + 5_000);
    assert_eq!(view.expires_at_ms, t0() + 6_000);
}

// ---- audit ---------------------------------------------------------------------------

fn busy_harness() -> Harness {
    let mut h = Harness::with_policy(TenantPolicy {
        repeat_max: 2,
        ..TenantPolicy::default()
    });
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    let r = h.reserve_ok("bot", cost(60));
    h.reserve("bot", cost(60));
    h.commit(r, cost(70));
    let r = h.reserve_ok("bot", cost(10));
    h.release(r);
    h.reserve_with_ttl("other", cost(5), 1_000);
    h.advance(1_000);
    h.record("bot", cost(1));
    reserve_fingerprint(&mut h, "bot", "f");
    reserve_fingerprint(&mut h, "bot", "f");
    h.admin(|request_id, tenant| Command::ResetTrip {
        request_id,
        tenant,
        agent: agent("bot"),
    });
    h.admin(|request_id, tenant| Command::Freeze {
        request_id,
        tenant,
        agent: None,
    });
    h.reserve("bot", cost(1));
    h.admin(|request_id, tenant| Command::Unfreeze {
        request_id,
        tenant,
        agent: None,
    });
    h.admin(|request_id, tenant| Command::DeleteLimit {
        request_id,
        tenant,
        limit_id: limit_id("spend"),
    });
    h
}

#[test]
fn every_decision_is_an_audit_record() {
    let h = busy_harness();
    let kinds: Vec<&str> = h
        .events()
        .iter()
        .map(|e| match e {
            AuditEvent::Grant => "grant",
            AuditEvent::Deny(DenyReason::Limit { .. }) => "deny-limit",
            AuditEvent::Deny(DenyReason::Frozen { .. }) => "deny-frozen",
            AuditEvent::Deny(DenyReason::Tripped { .. }) => "deny-tripped",
            AuditEvent::Commit { overrun: true, .. } => "commit-overrun",
            AuditEvent::Commit { .. } => "commit",
            AuditEvent::Release => "release",
            AuditEvent::Expire { .. } => "expire",
            AuditEvent::Record { .. } => "record",
            AuditEvent::TenantPut => "tenant-put",
            AuditEvent::LimitPut(_) => "limit-put",
            AuditEvent::LimitDelete(_) => "limit-delete",
            AuditEvent::Freeze => "freeze",
            AuditEvent::Unfreeze => "unfreeze",
            AuditEvent::Trip(_) => "trip",
            AuditEvent::TripReset => "trip-reset",
            AuditEvent::PricePut(_) => "price-put",
            AuditEvent::PriceDelete(_) => "price-delete",
            AuditEvent::KeyCreate(_) => "key-create",
            AuditEvent::KeyRotate(_) => "key-rotate",
            AuditEvent::KeyRevoke(_) => "key-revoke",
            AuditEvent::ThresholdCrossed(_) => "threshold-crossed",
            AuditEvent::LeaseGrant => "lease-grant",
            AuditEvent::LeaseCall { .. } => "lease-call",
            AuditEvent::LeaseReturn { .. } => "lease-return",
            AuditEvent::LeaseExpire => "lease-expire",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "tenant-put",
            "limit-put",
            "grant",
            "deny-limit",
            "commit-overrun",
            "threshold-crossed",
            "grant",
            "release",
            "grant",
            "expire",
            "record",
            "grant",
            "trip",
            "deny-tripped",
            "trip-reset",
            "freeze",
            "deny-frozen",
            "unfreeze",
            "limit-delete",
        ]
    );
    let records = h.ledger.audit(&AuditFilter::default());
    let grant = &records[2];
    assert_eq!(grant.tenant, Some(tenant("acme")));
    assert_eq!(grant.agent, Some(agent("bot")));
    assert_eq!(grant.tool, Some(tool("llm")));
    assert_eq!(grant.request_id, Some(request("req-3")));
    assert_eq!(grant.reservation_id, Some(ReservationId(1)));
    assert_eq!(grant.amounts, cost(60));
    assert_eq!(grant.at_ms, t0());
}

#[test]
fn audit_chain_verifies_and_exported_json_lines_reveal_tampering() {
    let h = busy_harness();
    let head = h.ledger.verify_audit().unwrap();
    assert_eq!(head, h.ledger.chain_head());
    let records = h.ledger.audit(&AuditFilter::default());
    assert_eq!(records[0].prev_hash, GENESIS_PREV_HASH);
    assert_eq!(head.seq, records.len() as u64);

    let lines: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    assert!(lines[0].contains(&format!("\"hash\":\"{}\"", hex::encode(records[0].hash))));
    let parsed: Vec<AuditRecord> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verify_chain(&parsed), Ok(head));
    // A suffix verifies on its own (older records dropped from memory).
    assert_eq!(verify_chain(&parsed[5..]), Ok(head));

    let mut altered = parsed.clone();
    altered[4].amounts.cost_micros += 1;
    assert_eq!(
        verify_chain(&altered),
        Err(AuditError::HashMismatch { seq: 5 })
    );
    let mut relinked = parsed.clone();
    relinked[4].prev_hash = [7; 32];
    assert_eq!(
        verify_chain(&relinked),
        Err(AuditError::BrokenLink {
            seq: 5,
            prev_seq: 4
        })
    );
    let mut missing = parsed.clone();
    missing.remove(3);
    assert_eq!(
        verify_chain(&missing),
        Err(AuditError::SeqGap {
            seq: 5,
            prev_seq: 3,
            expected: 4
        })
    );
    let mut forged = parsed.clone();
    forged[0].prev_hash = [1; 32];
    forged[0].hash = forged[0].compute_hash();
    assert_eq!(verify_chain(&forged), Err(AuditError::BadGenesis));
    assert_eq!(verify_chain(&[]), Ok(ChainHead::default()));
}

#[test]
fn audit_query_filters_by_tenant_agent_time_and_pages() {
    let h = busy_harness();
    let all = h.ledger.audit(&AuditFilter::default());
    let bot = h.ledger.audit(&AuditFilter {
        agent: Some(agent("bot")),
        ..AuditFilter::default()
    });
    assert!(bot.iter().all(|r| r.agent == Some(agent("bot"))));
    assert!(!bot.is_empty() && bot.len() < all.len());
    let page = h.ledger.audit(&AuditFilter {
        after_seq: Some(3),
        limit: 2,
        ..AuditFilter::default()
    });
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5]);
    let later = h.ledger.audit(&AuditFilter {
        from_ms: Some(t0() + 1),
        ..AuditFilter::default()
    });
    assert!(later.iter().all(|r| r.at_ms > t0()));
    assert_eq!(later[0].event, AuditEvent::Expire { charged: true });
    let early = h.ledger.audit(&AuditFilter {
        to_ms: Some(t0()),
        ..AuditFilter::default()
    });
    assert_eq!(early.len() + later.len(), all.len());
    let none = h.ledger.audit(&AuditFilter {
        tenant: Some(tenant("nobody")),
        ..AuditFilter::default()
    });
    assert!(none.is_empty());
}

#[test]
fn retries_write_no_audit_record() {
    let mut h = Harness::new();
    let reserve = h.reserve_cmd("bot", "llm", cost(1), 60_000);
    h.apply(&reserve);
    let head = h.ledger.chain_head();
    h.apply(&reserve);
    assert_eq!(h.ledger.chain_head(), head);
}

// ---- snapshots -----------------------------------------------------------------------

#[test]
fn snapshot_restores_an_equal_ledger_with_the_same_bytes() {
    let h = busy_harness();
    let bytes = h.ledger.snapshot();
    assert_eq!(&bytes[..8], &SNAPSHOT_MAGIC);
    let restored = Ledger::restore(&bytes).unwrap();
    assert_eq!(restored, h.ledger);
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(restored.chain_head(), h.ledger.chain_head());
    assert_eq!(restored.verify_audit(), h.ledger.verify_audit());
    assert_eq!(
        Ledger::restore(&Ledger::new().snapshot()).unwrap(),
        Ledger::new()
    );
}

#[test]
fn restore_rejects_bad_magic_version_and_corruption() {
    let bytes = busy_harness().ledger.snapshot();
    assert_eq!(
        Ledger::restore(&bytes[..10]),
        Err(SnapshotError::Truncated { len: 10 })
    );
    let mut bad = bytes.clone();
    bad[0] ^= 1;
    assert_eq!(Ledger::restore(&bad), Err(SnapshotError::BadMagic));
    let mut bad = bytes.clone();
    bad[8] = 99;
    assert_eq!(
        Ledger::restore(&bad),
        Err(SnapshotError::UnsupportedVersion {
            found: 99,
            supported: SNAPSHOT_FORMAT_VERSION
        })
    );
    // Format 3 hashed the audit chain another way: its retained hashes would not verify.
    let mut bad = bytes.clone();
    bad[8..12].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(
        Ledger::restore(&bad),
        Err(SnapshotError::UnsupportedVersion {
            found: 3,
            supported: SNAPSHOT_FORMAT_VERSION
        })
    );
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert_eq!(Ledger::restore(&bad), Err(SnapshotError::ChecksumMismatch));
    let bad = &bytes[..bytes.len() - 1];
    assert!(matches!(
        Ledger::restore(bad),
        Err(SnapshotError::LengthMismatch { .. })
    ));
    // A body that passes the checksum but does not decode.
    let mut bad = bytes[..28].to_vec();
    let body = [0xffu8; 16];
    bad[12..20].copy_from_slice(&(body.len() as u64).to_le_bytes());
    bad[20..28].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
    bad.extend_from_slice(&body);
    assert!(matches!(
        Ledger::restore(&bad),
        Err(SnapshotError::Decode(_))
    ));
    let message = SnapshotError::UnsupportedVersion {
        found: 2,
        supported: 1,
    }
    .to_string();
    assert!(message.contains("version 2"), "{message}");
}

// ---- queries -------------------------------------------------------------------------

#[test]
fn queries_report_usage_reservations_limits_and_status() {
    let mut h = Harness::new();
    h.put_limit(
        "spend",
        Scope::Tenant,
        Dimension::Cost,
        budget(Window::Day, 100),
    );
    h.put_limit(
        "each",
        Scope::EachAgent,
        Dimension::Cost,
        budget(Window::Day, 50),
    );
    h.put_limit(
        "vip",
        Scope::Agent(agent("vip")),
        Dimension::Cost,
        budget(Window::Day, 80),
    );
    h.put_limit(
        "search",
        Scope::ToolTenant(tool("search")),
        Dimension::Calls,
        budget(Window::Day, 10),
    );
    h.reserve_ok("bot", cost(10));
    h.reserve_ok("vip", cost(20));
    let tenant_wide: Vec<(String, Option<AgentId>, u64)> = h
        .ledger
        .usage(&h.tenant, None, None)
        .unwrap()
        .into_iter()
        .map(|u| (u.limit.id.to_string(), u.agent, u.held))
        .collect();
    assert_eq!(
        tenant_wide,
        [
            ("search".to_string(), None, 0),
            ("spend".to_string(), None, 30),
            ("vip".to_string(), Some(agent("vip")), 20),
        ]
    );
    // A never-seen agent gets fresh counters, and is not created by the query.
    let fresh = h
        .ledger
        .usage(&h.tenant, Some(&agent("nobody")), Some(&tool("llm")))
        .unwrap();
    let fresh: Vec<(String, i64)> = fresh
        .into_iter()
        .map(|u| (u.limit.id.to_string(), u.remaining))
        .collect();
    assert_eq!(fresh, [("each".to_string(), 50), ("spend".to_string(), 70)]);
    assert_eq!(h.ledger.stats().agents, 2);

    let views = h
        .ledger
        .reservations(&h.tenant, Some(&agent("vip")), 10)
        .unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].estimate, cost(20));
    assert_eq!(h.ledger.reservations(&h.tenant, None, 1).unwrap().len(), 1);
    let ids: Vec<String> = h
        .ledger
        .limits(&h.tenant)
        .unwrap()
        .into_iter()
        .map(|l| l.id.to_string())
        .collect();
    assert_eq!(ids, ["each", "search", "spend", "vip"]);
    assert_eq!(h.ledger.policy(&h.tenant).unwrap(), TenantPolicy::default());
    assert_eq!(
        h.ledger.agent_status(&h.tenant, &agent("bot")).unwrap(),
        AgentStatus {
            frozen: false,
            tripped: None
        }
    );
    assert!(h.ledger.agent_status(&h.tenant, &agent("nobody")).is_err());
    h.ledger.apply(
        h.now_ms,
        &Command::PutTenant {
            request_id: request("x"),
            tenant: tenant("aardvark"),
            policy: TenantPolicy::default(),
        },
    );
    assert_eq!(h.ledger.tenants(), [tenant("aardvark"), tenant("acme")]);
    let stats = h.ledger.stats();
    assert_eq!(
        (stats.tenants, stats.agents, stats.reservations_in_flight),
        (2, 2, 2)
    );
    assert_eq!(stats.audit_records_retained, h.ledger.chain_head().seq);
}

/// The gRPC status class of a rejection, numbered as the variants of the untyped
/// `Rejection` were: INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, FAILED_PRECONDITION,
/// RESOURCE_EXHAUSTED, ALREADY_EXISTS.
fn status_class(rejection: &Rejection) -> u8 {
    match rejection {
        Rejection::Invalid(_) => 0,
        Rejection::UnknownTenant { .. }
        | Rejection::UnknownAgent { .. }
        | Rejection::UnknownLimit { .. }
        | Rejection::UnknownReservation { .. }
        | Rejection::ReservationEnded { .. }
        | Rejection::UnknownKey { .. }
        | Rejection::UnknownPrice { .. } => 1,
        Rejection::ReleaseAfterExpiry { .. }
        | Rejection::Unpriced { .. }
        | Rejection::AnswerUnreadable { .. }
        | Rejection::KeyRevoked { .. } => 3,
        Rejection::BoundReached { .. } => 4,
        Rejection::RequestIdReused { .. } | Rejection::KeyIdTaken { .. } => 5,
    }
}

/// Guarantee 5 across versions: a fixed mix of every command (grants, denials, overruns,
/// releases, records, expiries, late commits, retries, reused ids, freezes, trips, limit
/// changes) gives the answers, chain head and snapshot bytes that the code before the
/// hand-written encodings and the compact indexes gave, bit for bit. The constants were
/// printed by that code; a change here means replicas of two builds would disagree. The
/// chain head and snapshot changed once on purpose, with audit chain format 2 (snapshot
/// format 4: `prev_hash` no longer hashed twice); the answers did not. The encoding of rejections
/// changed once, when they became typed; which command is rejected, and with which status,
/// did not (`decided`). Everything changed once on purpose, when reservation ids began to
/// count per tenant (snapshot format 5): the history's commits of arbitrary ids now name
/// the committing tenant's own reservations, and no answer is "another tenant's". The
/// snapshot changed once more on purpose when tenant policies gained quotas and agents
/// their last use and vacant slots (format 6), and again with API keys (format 7); answers
/// and chain head did not. Everything changed once more on purpose when commits and records
/// began to answer the cost charged and to audit the price, `abandoned` and `offline`
/// (format 8), and when repetition began to count in a sliding window, velocity to count
/// overruns, and the history to set every runaway setting itself, velocity on (format 9).
/// They changed on purpose once more when budgets gained soft thresholds (format 10): the
/// history's budgets carry the default ones, so their crossings are new audit records;
/// answers did not change.
#[test]
fn a_fixed_history_gives_the_same_answers_chain_head_and_snapshot_as_before() {
    let mut ledger = Ledger::new();
    let mut now_ms = t0();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let tenants = ["acme", "globex", "initech"];
    let agents = [
        "a",
        "bot-7",
        "support-bot",
        "an-agent-with-a-name-longer-than-most",
    ];
    let tools = ["llm:gpt-x", "search"];
    let mut outcomes = Vec::new();
    let mut requests = 0u64;
    let request_id = |n: &mut u64| {
        *n += 1;
        request(&format!("r-{n}"))
    };
    for (i, t) in tenants.iter().enumerate() {
        let policy = TenantPolicy {
            expiry: if i == 1 {
                ExpiryPolicy::Release
            } else {
                ExpiryPolicy::Charge
            },
            repeat_max: 3,
            repeat_window_ms: 60_000,
            velocity_factor: 4,
            velocity_window_ms: 60_000,
            velocity_dimension: Dimension::Cost,
            velocity_floor: 8_000,
            ..TenantPolicy::default()
        };
        let specs = [
            (
                "budget",
                Scope::Tenant,
                Dimension::Cost,
                budget(Window::Day, 200_000),
            ),
            (
                "rate",
                Scope::EachAgent,
                Dimension::Calls,
                LimitKind::Rate {
                    amount: 30,
                    period_ms: 60_000,
                    burst: 5,
                },
            ),
            (
                "conc",
                Scope::EachAgent,
                Dimension::Concurrency,
                LimitKind::Concurrency { max: 3 },
            ),
            (
                "bot-rate",
                Scope::Agent(agent("bot-7")),
                Dimension::Calls,
                LimitKind::Rate {
                    amount: 120,
                    period_ms: 60_000,
                    burst: 20,
                },
            ),
            (
                "llm-tokens",
                Scope::ToolPerAgent(tool("llm:gpt-x")),
                Dimension::Tokens,
                budget(Window::Hour, 50_000),
            ),
            (
                "search-tenant",
                Scope::ToolTenant(tool("search")),
                Dimension::Calls,
                budget(Window::Lifetime, 400),
            ),
        ];
        outcomes.push(ledger.apply(
            now_ms,
            &Command::PutTenant {
                request_id: request_id(&mut requests),
                tenant: tenant(t),
                policy,
            },
        ));
        for (id, scope, dimension, kind) in specs {
            outcomes.push(ledger.apply(
                now_ms,
                &Command::PutLimit {
                    request_id: request_id(&mut requests),
                    tenant: tenant(t),
                    limit: LimitSpec {
                        id: limit_id(id),
                        scope,
                        dimension,
                        kind,
                        thresholds: Default::default(),
                    },
                },
            ));
        }
    }
    let mut granted: Vec<(usize, u64)> = Vec::new();
    let mut sent: Vec<(u64, Command)> = Vec::new();
    for step in 0..3_000u64 {
        now_ms += next(5_000);
        let t = next(tenants.len() as u64) as usize;
        let amounts = Amounts {
            tokens: next(3_000),
            cost_micros: next(4_000),
            calls: 1,
        };
        let cmd = match next(20) {
            0..=7 => Command::Reserve {
                request_id: request_id(&mut requests),
                tenant: tenant(tenants[t]),
                agent: agent(agents[next(agents.len() as u64) as usize]),
                tool: tool(tools[next(2) as usize]),
                estimate: amounts,
                ttl_ms: 100 + next(20_000),
                fingerprint: (next(4) == 0).then(|| format!("fp-{}", next(3))),
                shape: None,
                usage: None,
                session: None,
            },
            8..=11 if !granted.is_empty() => {
                let (t, id) = granted.swap_remove(next(granted.len() as u64) as usize);
                Command::Commit {
                    request_id: request_id(&mut requests),
                    tenant: tenant(tenants[t]),
                    reservation_id: ReservationId(id),
                    actual: amounts,
                    abandoned: false,
                    usage: None,
                }
            }
            12 if !granted.is_empty() => {
                let (t, id) = granted.swap_remove(next(granted.len() as u64) as usize);
                Command::Release {
                    request_id: request_id(&mut requests),
                    tenant: tenant(tenants[t]),
                    reservation_id: ReservationId(id),
                }
            }
            13 | 14 => Command::Record {
                request_id: request_id(&mut requests),
                tenant: tenant(tenants[t]),
                agent: agent(agents[next(agents.len() as u64) as usize]),
                tool: tool(tools[next(2) as usize]),
                actual: amounts,
                usage: None,
                offline: false,
                session: None,
            },
            15 if !sent.is_empty() => {
                // A retry, sometimes with another payload.
                let (_, cmd) = sent[next(sent.len() as u64) as usize].clone();
                match (cmd, next(3)) {
                    (
                        Command::Commit {
                            request_id,
                            tenant,
                            reservation_id,
                            ..
                        },
                        0,
                    ) => Command::Commit {
                        request_id,
                        tenant,
                        reservation_id,
                        actual: amounts,
                        abandoned: false,
                        usage: None,
                    },
                    (cmd, _) => cmd,
                }
            }
            16 => Command::Freeze {
                request_id: request_id(&mut requests),
                tenant: tenant(tenants[t]),
                agent: (next(2) == 0).then(|| agent(agents[next(agents.len() as u64) as usize])),
            },
            17 => Command::Unfreeze {
                request_id: request_id(&mut requests),
                tenant: tenant(tenants[t]),
                agent: (next(2) == 0).then(|| agent(agents[next(agents.len() as u64) as usize])),
            },
            18 => Command::ResetTrip {
                request_id: request_id(&mut requests),
                tenant: tenant(tenants[t]),
                agent: agent(agents[next(agents.len() as u64) as usize]),
            },
            _ => Command::Commit {
                // A late or unknown commit.
                request_id: request_id(&mut requests),
                tenant: tenant(tenants[t]),
                reservation_id: ReservationId(next(step + 2)),
                actual: amounts,
                abandoned: false,
                usage: None,
            },
        };
        let outcome = ledger.apply(now_ms, &cmd);
        if let Outcome::Granted { reservation_id, .. } = &outcome {
            granted.push((t, reservation_id.0));
        }
        sent.push((now_ms, cmd));
        outcomes.push(outcome);
    }
    ledger.verify_audit().unwrap();
    // Every decision, and the status class of every rejection, as before the rejections
    // became typed (they are neither remembered nor audited, so only their class counts).
    let decided: Vec<Result<&Outcome, u8>> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Rejected(rejection) => Err(status_class(rejection)),
            o => Ok(o),
        })
        .collect();
    let decided = xxhash_rust::xxh3::xxh3_64(&postcard::to_allocvec(&decided).unwrap());
    let outcomes = xxhash_rust::xxh3::xxh3_64(&postcard::to_allocvec(&outcomes).unwrap());
    let head = ledger.chain_head();
    let snapshot = xxhash_rust::xxh3::xxh3_64(&ledger.snapshot());
    println!(
        "decided {decided:#018x} outcomes {outcomes:#018x} head {} {} snapshot {snapshot:#018x}",
        head.seq,
        hex::encode(head.hash)
    );
    assert_eq!(decided, 0x4f52_8ba5_8f8e_6a21);
    assert_eq!(outcomes, 0x7f4c_2752_6577_b0b2);
    assert_eq!(
        (head.seq, hex::encode(head.hash).as_str()),
        (
            2264,
            "4d794bc4105d81fc89a3c8762eb81e8f3e2edbc0a9c3dfe0436d3e5afdd5deb3"
        )
    );
    assert_eq!(snapshot, 0xc0dc_85bf_cda0_4611);
}
