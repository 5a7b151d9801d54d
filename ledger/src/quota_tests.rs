//! Per-tenant quotas: a tenant at its quota has its new requests refused, and no other
//! tenant's state is evicted for it (the attacks a shared table invites).

use super::tests::{agent, cost, request, tenant, tool};
use super::*;

const T0: u64 = 1_710_072_000_000;

/// A ledger with tenants and one clock; request ids are fresh per call.
struct Tenants {
    ledger: Ledger,
    now_ms: u64,
    requests: u64,
}

impl Tenants {
    fn new(tenants: &[(&str, TenantQuotas)]) -> Self {
        let mut h = Tenants {
            ledger: Ledger::new(),
            now_ms: T0,
            requests: 0,
        };
        for (name, quotas) in tenants {
            let policy = TenantPolicy {
                quotas: *quotas,
                ..TenantPolicy::default()
            };
            let cmd = Command::PutTenant {
                request_id: h.next_request(),
                tenant: tenant(name),
                policy,
            };
            assert_eq!(h.apply(&cmd), Outcome::Done);
        }
        h
    }

    fn next_request(&mut self) -> RequestId {
        self.requests += 1;
        request(&format!("q-{}", self.requests))
    }

    fn apply(&mut self, cmd: &Command) -> Outcome {
        self.ledger.apply(self.now_ms, cmd)
    }

    fn reserve_cmd(&mut self, who: &str, by: &str) -> Command {
        Command::Reserve {
            request_id: self.next_request(),
            tenant: tenant(who),
            agent: agent(by),
            tool: tool("llm"),
            estimate: cost(10),
            ttl_ms: 60_000,
            fingerprint: None,
            shape: None,
            usage: None,
            session: None,
        }
    }

    fn record(&mut self, who: &str, by: &str) -> Outcome {
        let cmd = Command::Record {
            request_id: self.next_request(),
            tenant: tenant(who),
            agent: agent(by),
            tool: tool("llm"),
            actual: cost(1),
            usage: None,
            offline: false,
            session: None,
        };
        self.apply(&cmd)
    }

    fn put_budget(&mut self, who: &str, id: &str, scope: Scope) -> Outcome {
        let cmd = Command::PutLimit {
            request_id: self.next_request(),
            tenant: tenant(who),
            limit: LimitSpec {
                id: LimitId::new(id).unwrap(),
                scope,
                dimension: Dimension::Cost,
                kind: LimitKind::Budget {
                    window: Window::Day,
                    amount: 1_000_000,
                },
                thresholds: Default::default(),
            },
        };
        self.apply(&cmd)
    }

    fn committed(&self, who: &str, id: &str) -> u64 {
        let usage = self.ledger.usage(&tenant(who), None, None).unwrap();
        usage
            .iter()
            .find(|u| u.limit.id.as_str() == id)
            .map(|u| u.used)
            .unwrap()
    }
}

fn quotas(set: impl FnOnce(&mut TenantQuotas)) -> TenantQuotas {
    let mut quotas = TenantQuotas::default();
    set(&mut quotas);
    quotas
}

/// The refusal: RESOURCE_EXHAUSTED's rejection, naming the bound, the tenant's quota and
/// the tenant.
fn refused(outcome: &Outcome, bound: Bound, max: u64, who: &str) {
    match outcome {
        Outcome::Rejected(Rejection::BoundReached {
            bound: b,
            max: m,
            tenant: t,
        }) => {
            assert_eq!((*b, *m, t.as_str()), (bound, max, who), "{outcome:?}");
            let text = outcome_text(outcome);
            assert!(text.contains(bound.name()) && text.contains(who), "{text}");
        }
        other => panic!("expected {bound:?} reached, got {other:?}"),
    }
}

fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Rejected(rejection) => rejection.to_string(),
        other => format!("{other:?}"),
    }
}

/// The attack: a noisy tenant floods the exactly-once table with its own token. At its
/// quota its new writes are refused; the victim's remembered commit is still answered on
/// retry with its first answer, and charged once. Once the noisy tenant's answers age out
/// of the window it may write again.
#[test]
fn a_tenant_at_its_answers_quota_cannot_make_a_victims_retry_charge_twice() {
    let mut h = Tenants::new(&[
        ("noisy", quotas(|q| q.answers = 20)),
        ("victim", TenantQuotas::default()),
    ]);
    assert_eq!(
        h.put_budget("victim", "daily", Scope::Tenant),
        Outcome::Done
    );
    let reserve = h.reserve_cmd("victim", "bot");
    let Outcome::Granted { reservation_id, .. } = h.apply(&reserve) else {
        panic!("the victim's reserve is granted");
    };
    let commit = Command::Commit {
        request_id: h.next_request(),
        tenant: tenant("victim"),
        reservation_id,
        actual: cost(7),
        abandoned: false,
        usage: None,
    };
    let first = h.apply(&commit);
    assert!(matches!(first, Outcome::Committed { .. }), "{first:?}");

    h.now_ms += 1_000;
    // Its creation (PutTenant) was its first answer.
    for i in 1..20 {
        assert!(
            matches!(h.record("noisy", "spammer"), Outcome::Recorded { .. }),
            "record {i}"
        );
    }
    for _ in 0..100 {
        let outcome = h.record("noisy", "spammer");
        refused(&outcome, Bound::AnswersPerTenant, 20, "noisy");
    }
    let reserve = h.reserve_cmd("noisy", "spammer");
    refused(&h.apply(&reserve), Bound::AnswersPerTenant, 20, "noisy");

    // The victim's retry gets its first answer, and its commit is charged once.
    assert_eq!(h.apply(&commit), first);
    assert_eq!(h.committed("victim", "daily"), 7);
    // The victim's new writes still go through.
    let reserve = h.reserve_cmd("victim", "bot");
    assert!(matches!(h.apply(&reserve), Outcome::Granted { .. }));

    // The noisy tenant's answers age out of the window: it may write again.
    h.now_ms += DEDUP_WINDOW_MS;
    assert!(matches!(
        h.record("noisy", "spammer"),
        Outcome::Recorded { .. }
    ));
}

/// A retry of a remembered request is answered even while its tenant is at its quota.
#[test]
fn a_retry_is_answered_at_the_quota() {
    let mut h = Tenants::new(&[("acme", quotas(|q| q.answers = 3))]);
    let first = h.reserve_cmd("acme", "bot");
    let granted = h.apply(&first);
    assert!(matches!(granted, Outcome::Granted { .. }));
    assert!(matches!(h.record("acme", "bot"), Outcome::Recorded { .. }));
    refused(&h.record("acme", "bot"), Bound::AnswersPerTenant, 3, "acme");
    assert_eq!(h.apply(&first), granted);
}

/// Commits, releases and admin commands end or change what the tenant already has: they
/// are not refused by its answers quota (the kill switch must always work).
#[test]
fn commits_and_admin_commands_pass_the_answers_quota() {
    let mut h = Tenants::new(&[("acme", quotas(|q| q.answers = 3))]);
    let reserve = h.reserve_cmd("acme", "bot");
    let Outcome::Granted { reservation_id, .. } = h.apply(&reserve) else {
        panic!("granted");
    };
    assert!(matches!(h.record("acme", "bot"), Outcome::Recorded { .. }));
    refused(&h.record("acme", "bot"), Bound::AnswersPerTenant, 3, "acme");
    let freeze = Command::Freeze {
        request_id: h.next_request(),
        tenant: tenant("acme"),
        agent: None,
    };
    assert_eq!(h.apply(&freeze), Outcome::Done);
    let commit = Command::Commit {
        request_id: h.next_request(),
        tenant: tenant("acme"),
        reservation_id,
        actual: cost(1),
        abandoned: false,
        usage: None,
    };
    assert!(matches!(h.apply(&commit), Outcome::Committed { .. }));
}

/// At the ledger-wide bound of remembered answers new writes are refused: nobody's
/// unexpired answer is evicted, so every tenant's retries still get their first answers.
#[test]
fn the_global_answers_bound_refuses_rather_than_evicts() {
    let mut h = Tenants::new(&[
        ("a", TenantQuotas::default()),
        ("b", TenantQuotas::default()),
    ]);
    h.ledger.set_answers_max(100);
    let mut remembered = Vec::new();
    let mut refusals = 0;
    for i in 0..200 {
        let who = if i % 2 == 0 { "a" } else { "b" };
        let cmd = Command::Record {
            request_id: h.next_request(),
            tenant: tenant(who),
            agent: agent("bot"),
            tool: tool("llm"),
            actual: cost(1),
            usage: None,
            offline: false,
            session: None,
        };
        match h.apply(&cmd) {
            Outcome::Recorded { .. } => remembered.push(cmd),
            outcome => {
                refused(&outcome, Bound::Answers, 95, who);
                refusals += 1;
            }
        }
    }
    // Reserves and records stop short of the bound, which is kept for commits and admin.
    assert_eq!(remembered.len(), 95 - 2);
    assert_eq!(refusals, 200 - remembered.len());
    for cmd in &remembered {
        assert!(matches!(h.apply(cmd), Outcome::Recorded { .. }), "{cmd:?}");
    }
    assert_eq!(h.ledger.stats().dedup_entries, 95);
}

/// Two tenants at their agent quotas do not stop a third from creating agents; the one at
/// its quota can still use the agents it has.
#[test]
fn a_tenant_at_its_agents_quota_cannot_create_an_agent_while_another_can() {
    let mut h = Tenants::new(&[
        ("noisy", quotas(|q| q.agents = 3)),
        ("victim", TenantQuotas::default()),
    ]);
    for i in 0..3 {
        let cmd = h.reserve_cmd("noisy", &format!("a{i}"));
        assert!(matches!(h.apply(&cmd), Outcome::Granted { .. }));
    }
    let cmd = h.reserve_cmd("noisy", "a3");
    refused(&h.apply(&cmd), Bound::AgentsPerTenant, 3, "noisy");
    refused(&h.record("noisy", "a4"), Bound::AgentsPerTenant, 3, "noisy");
    let cmd = h.reserve_cmd("noisy", "a0");
    assert!(matches!(h.apply(&cmd), Outcome::Granted { .. }));
    for i in 0..10 {
        let cmd = h.reserve_cmd("victim", &format!("v{i}"));
        assert!(matches!(h.apply(&cmd), Outcome::Granted { .. }));
    }
}

#[test]
fn reservations_in_flight_limits_and_tools_have_their_quotas() {
    let mut h = Tenants::new(&[(
        "acme",
        quotas(|q| {
            q.reservations_in_flight = 2;
            q.limits = 3;
            q.tools = 1;
        }),
    )]);
    for _ in 0..2 {
        let cmd = h.reserve_cmd("acme", "bot");
        assert!(matches!(h.apply(&cmd), Outcome::Granted { .. }));
    }
    let cmd = h.reserve_cmd("acme", "bot");
    refused(
        &h.apply(&cmd),
        Bound::ReservationsInFlightPerTenant,
        2,
        "acme",
    );

    let search = |name: &str| Scope::ToolTenant(tool(name));
    assert_eq!(h.put_budget("acme", "t1", search("search")), Outcome::Done);
    assert_eq!(h.put_budget("acme", "t2", search("search")), Outcome::Done);
    refused(
        &h.put_budget("acme", "t3", search("llm")),
        Bound::ToolsPerTenant,
        1,
        "acme",
    );
    // Replacing a limit with another tool is a new tool too, unless it was the only one.
    assert_eq!(h.put_budget("acme", "t3", Scope::Tenant), Outcome::Done);
    refused(
        &h.put_budget("acme", "t4", Scope::Tenant),
        Bound::LimitsPerTenant,
        3,
        "acme",
    );
    refused(
        &h.put_budget("acme", "t3", search("llm")),
        Bound::ToolsPerTenant,
        1,
        "acme",
    );
}

/// A quota above its bound, or 0, is bad input and changes nothing.
#[test]
fn a_quota_above_its_bound_is_invalid() {
    let mut h = Tenants::new(&[("acme", TenantQuotas::default())]);
    let cmd = Command::PutTenant {
        request_id: h.next_request(),
        tenant: tenant("acme"),
        policy: TenantPolicy {
            quotas: quotas(|q| q.agents = AGENTS_PER_TENANT_MAX as u64 + 1),
            ..TenantPolicy::default()
        },
    };
    match h.apply(&cmd) {
        Outcome::Rejected(Rejection::Invalid(InvalidInput(text))) => {
            assert!(text.contains("AGENTS_PER_TENANT_MAX"), "{text}")
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    assert_eq!(
        h.ledger.policy(&tenant("acme")).unwrap().quotas,
        TenantQuotas::default()
    );
}

/// Quotas and each tenant's count of answers survive a snapshot.
#[test]
fn quotas_and_answer_counts_survive_a_snapshot() {
    let mut h = Tenants::new(&[("acme", quotas(|q| q.answers = 3))]);
    assert!(matches!(h.record("acme", "bot"), Outcome::Recorded { .. }));
    assert!(matches!(h.record("acme", "bot"), Outcome::Recorded { .. }));
    let mut restored = Ledger::restore(&h.ledger.snapshot()).unwrap();
    assert_eq!(restored, h.ledger);
    assert_eq!(restored.policy(&tenant("acme")).unwrap().quotas.answers, 3);
    std::mem::swap(&mut restored, &mut h.ledger);
    // PutTenant counted too: the third answer was the tenant's creation.
    refused(&h.record("acme", "bot"), Bound::AnswersPerTenant, 3, "acme");
}

/// Agent GC: an idle agent with nothing that matters is removed by ticks, is unknown until
/// it calls again, and then starts fresh; its slot is reused.
#[test]
fn an_idle_agent_is_collected_and_comes_back_fresh() {
    let mut h = Tenants::new(&[("acme", TenantQuotas::default())]);
    assert_eq!(
        h.put_budget("acme", "daily", Scope::EachAgent),
        Outcome::Done
    );
    for name in ["old", "recent"] {
        let cmd = h.reserve_cmd("acme", name);
        let Outcome::Granted { reservation_id, .. } = h.apply(&cmd) else {
            panic!("granted");
        };
        let commit = Command::Commit {
            request_id: h.next_request(),
            tenant: tenant("acme"),
            reservation_id,
            actual: cost(5),
            abandoned: false,
            usage: None,
        };
        assert!(matches!(h.apply(&commit), Outcome::Committed { .. }));
        h.now_ms += AGENT_IDLE_MS / 2;
    }
    assert_eq!(h.ledger.stats().agents, 2);
    // A day after its call, "old" is idle with its day's spend in a past window; "recent"
    // called half a day ago.
    assert_eq!(h.apply(&Command::Tick), Outcome::Done);
    let known = |h: &Tenants, name: &str| h.ledger.agent_status(&tenant("acme"), &agent(name));
    assert!(matches!(
        known(&h, "old"),
        Err(Rejection::UnknownAgent { .. })
    ));
    assert!(known(&h, "recent").is_ok());
    assert_eq!(h.ledger.stats().agents, 1);
    h.now_ms += AGENT_IDLE_MS / 2;
    assert_eq!(h.apply(&Command::Tick), Outcome::Done);
    assert_eq!(h.ledger.stats().agents, 0);
    // Back: fresh, granted, in a reused slot.
    let cmd = h.reserve_cmd("acme", "old");
    assert!(matches!(h.apply(&cmd), Outcome::Granted { .. }));
    assert_eq!(h.ledger.stats().agents, 1);
    let restored = Ledger::restore(&h.ledger.snapshot()).unwrap();
    assert_eq!(restored, h.ledger);
}

/// Agent GC keeps every agent whose state could still matter: frozen, holding a
/// reservation, or with spend in a window still current (a lifetime budget).
#[test]
fn agents_whose_state_matters_are_never_collected() {
    let mut h = Tenants::new(&[("acme", TenantQuotas::default())]);
    let lifetime = Command::PutLimit {
        request_id: h.next_request(),
        tenant: tenant("acme"),
        limit: LimitSpec {
            id: LimitId::new("ever").unwrap(),
            scope: Scope::Agent(agent("spender")),
            dimension: Dimension::Cost,
            kind: LimitKind::Budget {
                window: Window::Lifetime,
                amount: 1_000,
            },
            thresholds: Default::default(),
        },
    };
    assert_eq!(h.apply(&lifetime), Outcome::Done);
    assert!(matches!(
        h.record("acme", "spender"),
        Outcome::Recorded { .. }
    ));
    let freeze = Command::Freeze {
        request_id: h.next_request(),
        tenant: tenant("acme"),
        agent: Some(agent("frozen")),
    };
    assert_eq!(h.apply(&freeze), Outcome::Done);
    for _ in 0..3 {
        h.now_ms += 10 * AGENT_IDLE_MS;
        assert_eq!(h.apply(&Command::Tick), Outcome::Done);
    }
    assert_eq!(h.ledger.stats().agents, 2);
    assert_eq!(
        h.ledger
            .usage(&tenant("acme"), Some(&agent("spender")), None)
            .unwrap()[0]
            .used,
        1
    );
}
