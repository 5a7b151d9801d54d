//! Leases (`leases.rs`): one test per rule of the design, named after the guarantee.

use super::tests::{agent, limit_id, request, tenant, tool};
use super::window::tests::utc_ms;
use super::*;

fn tok(n: u64) -> Amounts {
    Amounts {
        tokens: n,
        cost_micros: 0,
        calls: 0,
    }
}

fn calls(n: u64) -> Amounts {
    Amounts {
        tokens: 0,
        cost_micros: 0,
        calls: n,
    }
}

fn budget(amount: u64) -> LimitKind {
    LimitKind::Budget {
        window: Window::Lifetime,
        amount,
    }
}

fn leases_on() -> TenantPolicy {
    TenantPolicy {
        leases: true,
        ..TenantPolicy::default()
    }
}

/// A ledger with tenant `acme` (leases on unless the policy says otherwise), a clock and
/// fresh request ids.
struct H {
    ledger: Ledger,
    now_ms: u64,
    requests: u64,
    tenant: TenantId,
}

impl H {
    fn new() -> Self {
        Self::with_policy(leases_on())
    }

    fn with_policy(policy: TenantPolicy) -> Self {
        let mut h = H {
            ledger: Ledger::new(),
            now_ms: utc_ms(2024, 3, 10, 12, 0, 0, 0),
            requests: 0,
            tenant: tenant("acme"),
        };
        h.put_tenant(policy);
        h
    }

    fn req(&mut self) -> RequestId {
        self.requests += 1;
        request(&format!("req-{}", self.requests))
    }

    fn apply(&mut self, cmd: &Command) -> Outcome {
        self.ledger.apply(self.now_ms, cmd)
    }

    fn put_tenant(&mut self, policy: TenantPolicy) {
        let cmd = Command::PutTenant {
            request_id: self.req(),
            tenant: self.tenant.clone(),
            policy,
        };
        assert_eq!(self.apply(&cmd), Outcome::Done);
    }

    fn limit(&mut self, id: &str, scope: Scope, dimension: Dimension, kind: LimitKind) {
        let cmd = Command::PutLimit {
            request_id: self.req(),
            tenant: self.tenant.clone(),
            limit: LimitSpec {
                id: limit_id(id),
                scope,
                dimension,
                kind,
                thresholds: Thresholds::off(),
            },
        };
        assert_eq!(self.apply(&cmd), Outcome::Done);
    }

    fn lease_cmd(&mut self, who: &str, want: Amounts, units: u32, floor: Amounts) -> Command {
        Command::Lease {
            request_id: self.req(),
            tenant: self.tenant.clone(),
            agent: agent(who),
            tool: tool("llm"),
            want,
            units,
            floor,
            ttl_ms: 0,
        }
    }

    fn lease(&mut self, who: &str, want: Amounts, units: u32, floor: Amounts) -> Outcome {
        let cmd = self.lease_cmd(who, want, units, floor);
        self.apply(&cmd)
    }

    fn lease_ok(&mut self, who: &str, want: Amounts, units: u32) -> LeaseTerms {
        match self.lease(who, want, units, Amounts::default()) {
            Outcome::Leased(terms) => terms,
            other => panic!("expected a lease, got {other:?}"),
        }
    }

    fn call(&mut self, estimate: Amounts, actual: Amounts) -> LeaseCall {
        LeaseCall {
            request_id: self.req(),
            estimate,
            actual,
            fingerprint: None,
            shape: None,
        }
    }

    fn settle_cmd(
        &mut self,
        lease: ReservationId,
        calls: Vec<LeaseCall>,
        want: Amounts,
        units: u32,
    ) -> Command {
        Command::Settle {
            request_id: self.req(),
            tenant: self.tenant.clone(),
            lease_id: lease,
            calls,
            want,
            units,
            ttl_ms: 0,
        }
    }

    fn settle(
        &mut self,
        lease: ReservationId,
        calls: Vec<LeaseCall>,
        want: Amounts,
        units: u32,
    ) -> Outcome {
        let cmd = self.settle_cmd(lease, calls, want, units);
        self.apply(&cmd)
    }

    fn admin(&mut self, make: impl FnOnce(RequestId, TenantId) -> Command) -> Outcome {
        let cmd = make(self.req(), self.tenant.clone());
        self.apply(&cmd)
    }

    fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        assert_eq!(
            self.ledger.apply(self.now_ms, &Command::Tick),
            Outcome::Done
        );
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

    fn records(&self, event: &str) -> Vec<AuditRecord> {
        self.ledger.audit(&AuditFilter {
            event: Some(event.to_string()),
            ..AuditFilter::default()
        })
    }

    fn reserve(&mut self, who: &str, estimate: Amounts) -> Outcome {
        let cmd = Command::Reserve {
            request_id: self.req(),
            tenant: self.tenant.clone(),
            agent: agent(who),
            tool: tool("llm"),
            estimate,
            ttl_ms: 60_000,
            fingerprint: None,
            shape: None,
            usage: None,
            session: None,
        };
        self.apply(&cmd)
    }
}

fn ended(outcome: &Outcome) -> (bool, bool) {
    match outcome {
        Outcome::Settled {
            lease: None,
            recalled,
            expired,
            ..
        } => (*recalled, *expired),
        other => panic!("expected an ended lease, got {other:?}"),
    }
}

fn renewed(outcome: &Outcome) -> LeaseTerms {
    match outcome {
        Outcome::Settled {
            lease: Some(terms),
            recalled: false,
            expired: false,
            ..
        } => terms.clone(),
        other => panic!("expected a renewed lease, got {other:?}"),
    }
}

#[test]
fn a_lease_holds_its_slice_like_a_reservation_and_is_audited() {
    let mut h = H::new();
    h.limit("tokens", Scope::EachAgent, Dimension::Tokens, budget(1_000));
    let terms = h.lease_ok("bot", tok(100), 2);
    assert_eq!(terms.slice, tok(100));
    assert_eq!(terms.units, 2);
    assert_eq!(
        terms.expires_at_ms,
        h.now_ms + LEASE_TTL_MS_DEFAULT + LEASE_GRACE_MS
    );
    assert_eq!(terms.repeat_max, REPEAT_MAX_DEFAULT);
    assert_eq!(terms.repeat_window_ms, REPEAT_WINDOW_MS_DEFAULT);
    let u = h.usage("bot", "tokens");
    assert_eq!((u.used, u.held, u.remaining), (0, 100, 900));
    let grants = h.records("lease_grant");
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].reservation_id, Some(terms.lease_id));
    assert_eq!(grants[0].amounts, tok(100));
    assert_eq!(h.ledger.leases_on(&h.tenant, None), 1);
    assert_eq!(h.ledger.leases_on(&h.tenant, Some(&agent("bot"))), 1);
    assert_eq!(h.ledger.leases_on(&h.tenant, Some(&agent("other"))), 0);
    // Lease and reservation ids come from one counter: they never collide.
    let Outcome::Granted { reservation_id, .. } = h.reserve("bot", tok(1)) else {
        panic!("expected a grant");
    };
    assert_eq!(reservation_id.0, terms.lease_id.0 + 1);
}

#[test]
fn each_lease_gets_at_most_a_fair_share_of_what_is_left() {
    let mut h = H::new();
    h.limit("tokens", Scope::Tenant, Dimension::Tokens, budget(1_000));
    assert_eq!(h.lease_ok("a", tok(600), 1).slice, tok(600));
    // 400 left, one lease holds the counter: half of it.
    assert_eq!(h.lease_ok("b", tok(600), 1).slice, tok(200));
    // 200 left, two leases: a third.
    assert_eq!(h.lease_ok("c", tok(600), 1).slice, tok(66));
    let u = h.usage("a", "tokens");
    assert_eq!(u.held, 866);
    // A dimension no limit holds is granted as asked.
    let terms = h.lease_ok(
        "d",
        Amounts {
            tokens: 10,
            cost_micros: 5_000,
            calls: 3,
        },
        1,
    );
    assert_eq!(terms.slice.cost_micros, 5_000);
    assert_eq!(terms.slice.calls, 3);
}

#[test]
fn below_the_floor_the_ask_is_refused_and_the_leases_holding_the_limit_are_recalled() {
    let mut h = H::new();
    h.limit("tokens", Scope::Tenant, Dimension::Tokens, budget(100));
    let a = h.lease_ok("a", tok(100), 1);
    assert_eq!(
        h.lease("b", tok(50), 1, tok(10)),
        Outcome::LeaseRefused(LeaseRefusal::Room)
    );
    let before = h.usage("a", "tokens");
    assert_eq!(before.held, 100, "a recall changes no amount");
    let call = h.call(tok(10), tok(10));
    let outcome = h.settle(a.lease_id, vec![call], tok(100), 1);
    assert_eq!(ended(&outcome), (true, false));
    let u = h.usage("a", "tokens");
    assert_eq!((u.used, u.held), (10, 0));
    // The slice came back: the next ask fits.
    assert_eq!(h.lease_ok("b", tok(50), 1).slice, tok(50));
    assert_eq!(h.records("lease_return").len(), 1);
    assert!(matches!(
        h.records("lease_return")[0].event,
        AuditEvent::LeaseReturn { recalled: true }
    ));
}

#[test]
fn a_settle_charges_and_audits_each_call_and_flags_an_overrun() {
    let mut h = H::new();
    h.limit("tokens", Scope::EachAgent, Dimension::Tokens, budget(1_000));
    let lease = h.lease_ok("bot", tok(100), 1);
    let first = h.call(tok(40), tok(30));
    let second = h.call(tok(40), tok(90));
    let ids = [first.request_id.clone(), second.request_id.clone()];
    let outcome = h.settle(lease.lease_id, vec![first, second], tok(100), 1);
    let Outcome::Settled { charged_calls, .. } = outcome else {
        panic!("expected a settle, got {outcome:?}");
    };
    assert_eq!(charged_calls, 2);
    let terms = renewed(&outcome);
    // 30 within the slice, then 90 of which 70 were held and 20 overran.
    let u = h.usage("bot", "tokens");
    assert_eq!(u.used, 120);
    assert_eq!(u.held, terms.slice.tokens);
    let calls = h.records("lease_call");
    assert_eq!(calls.len(), 2);
    for (record, id) in calls.iter().zip(&ids) {
        assert_eq!(record.request_id.as_ref(), Some(id));
        assert_eq!(record.reservation_id, Some(lease.lease_id));
        assert_eq!(record.agent, Some(agent("bot")));
        assert_eq!(record.tool, Some(tool("llm")));
    }
    assert_eq!(calls[0].amounts, tok(30));
    assert!(matches!(
        calls[0].event,
        AuditEvent::LeaseCall {
            overrun: false,
            charged: true
        }
    ));
    assert!(matches!(
        calls[1].event,
        AuditEvent::LeaseCall {
            overrun: true,
            charged: true
        }
    ));
}

#[test]
fn a_settle_resizes_up_within_the_limits_and_down_giving_back_the_rest() {
    let mut h = H::new();
    h.limit("tokens", Scope::Tenant, Dimension::Tokens, budget(1_000));
    let lease = h.lease_ok("bot", tok(100), 1);
    let up = renewed(&h.settle(lease.lease_id, vec![], tok(700), 1));
    assert_eq!(up.slice, tok(700));
    assert_eq!(h.usage("bot", "tokens").held, 700);
    // Another lease takes half of what is left; a top-up then gets half of the rest
    // counting its own hold as room.
    assert_eq!(h.lease_ok("other", tok(1_000), 1).slice, tok(150));
    let capped = renewed(&h.settle(lease.lease_id, vec![], tok(1_000), 1));
    assert_eq!(capped.slice, tok(425));
    h.tick(1_000);
    let down = renewed(&h.settle(lease.lease_id, vec![], tok(50), 1));
    assert_eq!(down.slice, tok(50));
    assert_eq!(h.usage("bot", "tokens").held, 200);
    // Renewed from the settle's time.
    assert_eq!(
        down.expires_at_ms,
        h.now_ms + LEASE_TTL_MS_DEFAULT + LEASE_GRACE_MS
    );
    assert_eq!(down.expires_at_ms, lease.expires_at_ms + 1_000);
}

#[test]
fn returning_a_lease_gives_back_its_rest_and_ends_it() {
    let mut h = H::new();
    h.limit("tokens", Scope::EachAgent, Dimension::Tokens, budget(1_000));
    let lease = h.lease_ok("bot", tok(100), 1);
    let call = h.call(tok(10), tok(25));
    let outcome = h.settle(lease.lease_id, vec![call], Amounts::default(), 0);
    assert_eq!(ended(&outcome), (false, false));
    let u = h.usage("bot", "tokens");
    assert_eq!((u.used, u.held), (25, 0));
    assert_eq!(h.ledger.leases_on(&h.tenant, None), 0);
    let returns = h.records("lease_return");
    assert_eq!(returns.len(), 1);
    assert_eq!(returns[0].amounts, tok(75));
    // Ended: a further settle is told so, and changes nothing.
    let again = h.settle(lease.lease_id, vec![], tok(10), 1);
    assert_eq!(
        again,
        Outcome::Rejected(Rejection::ReservationEnded {
            reservation: lease.lease_id
        })
    );
    let unknown = h.settle(ReservationId(99), vec![], tok(10), 1);
    assert_eq!(
        unknown,
        Outcome::Rejected(Rejection::UnknownReservation {
            reservation: ReservationId(99)
        })
    );
}

#[test]
fn an_unsettled_lease_expires_charging_its_whole_slice_and_a_late_settle_charges_nothing() {
    let policy = TenantPolicy {
        expiry: ExpiryPolicy::Release,
        ..leases_on()
    };
    let mut h = H::with_policy(policy);
    h.limit("tokens", Scope::EachAgent, Dimension::Tokens, budget(1_000));
    h.limit(
        "slots",
        Scope::EachAgent,
        Dimension::Concurrency,
        LimitKind::Concurrency { max: 4 },
    );
    let lease = h.lease_ok("bot", tok(100), 2);
    assert_eq!(h.usage("bot", "slots").used, 2);
    h.tick(LEASE_TTL_MS_DEFAULT + LEASE_GRACE_MS - 1);
    assert_eq!(
        h.ledger.leases_on(&h.tenant, None),
        1,
        "not before its time"
    );
    h.tick(1);
    assert_eq!(h.ledger.leases_on(&h.tenant, None), 0);
    // Charged whatever the expiry policy: the client may have spent it all.
    let u = h.usage("bot", "tokens");
    assert_eq!((u.used, u.held), (100, 0));
    assert_eq!(h.usage("bot", "slots").used, 0);
    let expiries = h.records("lease_expire");
    assert_eq!(expiries.len(), 1);
    assert_eq!(expiries[0].amounts, tok(100));
    assert_eq!(expiries[0].reservation_id, Some(lease.lease_id));
    let call = h.call(tok(10), tok(60));
    let outcome = h.settle(lease.lease_id, vec![call], tok(100), 1);
    assert_eq!(
        outcome,
        Outcome::Settled {
            lease: None,
            recalled: false,
            expired: true,
            charged_calls: 0
        }
    );
    assert_eq!(h.usage("bot", "tokens").used, 100, "not charged twice");
    let calls = h.records("lease_call");
    assert_eq!(calls.len(), 1);
    assert!(matches!(
        calls[0].event,
        AuditEvent::LeaseCall { charged: false, .. }
    ));
    // Once forgotten, the id answers as ended.
    h.tick(EXPIRED_RETENTION_MS);
    assert_eq!(
        h.settle(lease.lease_id, vec![], tok(1), 1),
        Outcome::Rejected(Rejection::ReservationEnded {
            reservation: lease.lease_id
        })
    );
}

#[test]
fn a_freeze_of_the_tenant_or_the_agent_recalls_its_leases_and_refuses_new_ones() {
    let mut h = H::new();
    h.limit("tokens", Scope::EachAgent, Dimension::Tokens, budget(1_000));
    let a = h.lease_ok("a", tok(100), 1);
    let b = h.lease_ok("b", tok(100), 1);
    let outcome = h.admin(|request_id, tenant| Command::Freeze {
        request_id,
        tenant,
        agent: Some(agent("a")),
    });
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(
        h.lease("a", tok(10), 1, tok(1)),
        Outcome::LeaseRefused(LeaseRefusal::Frozen)
    );
    assert_eq!(
        ended(&h.settle(a.lease_id, vec![], tok(100), 1)),
        (true, false)
    );
    assert_eq!(h.ledger.leases_on(&h.tenant, Some(&agent("a"))), 0);
    renewed(&h.settle(b.lease_id, vec![], tok(100), 1));
    h.admin(|request_id, tenant| Command::Freeze {
        request_id,
        tenant,
        agent: None,
    });
    assert_eq!(
        ended(&h.settle(b.lease_id, vec![], tok(100), 1)),
        (true, false)
    );
    assert_eq!(h.ledger.leases_on(&h.tenant, None), 0);
    assert_eq!(
        h.lease("b", tok(10), 1, tok(1)),
        Outcome::LeaseRefused(LeaseRefusal::Frozen)
    );
}

#[test]
fn a_trip_on_a_reported_call_is_audited_once_and_recalls_the_agents_leases() {
    let policy = TenantPolicy {
        repeat_max: 3,
        ..leases_on()
    };
    let mut h = H::with_policy(policy);
    h.limit("tokens", Scope::EachAgent, Dimension::Tokens, budget(1_000));
    let lease = h.lease_ok("bot", tok(100), 1);
    let other = h.lease_ok("bot", tok(100), 1);
    let looped: Vec<LeaseCall> = (0..4)
        .map(|_| {
            let mut call = h.call(tok(5), tok(5));
            call.fingerprint = Some("same".into());
            call
        })
        .collect();
    let outcome = h.settle(lease.lease_id, looped, tok(100), 1);
    assert_eq!(ended(&outcome), (true, false));
    assert_eq!(
        h.usage("bot", "tokens").used,
        20,
        "every reported call is charged"
    );
    assert_eq!(h.records("trip").len(), 1);
    assert_eq!(
        ended(&h.settle(other.lease_id, vec![], tok(100), 1)),
        (true, false)
    );
    assert_eq!(
        h.lease("bot", tok(10), 1, tok(1)),
        Outcome::LeaseRefused(LeaseRefusal::Tripped)
    );
}

#[test]
fn a_limit_change_or_a_policy_change_recalls_every_lease_of_the_tenant() {
    let mut h = H::new();
    h.limit("tokens", Scope::EachAgent, Dimension::Tokens, budget(1_000));
    let a = h.lease_ok("a", tok(100), 1);
    h.limit("tokens", Scope::EachAgent, Dimension::Tokens, budget(2_000));
    assert_eq!(
        ended(&h.settle(a.lease_id, vec![], tok(100), 1)),
        (true, false)
    );
    let b = h.lease_ok("b", tok(100), 1);
    let outcome = h.admin(|request_id, tenant| Command::DeleteLimit {
        request_id,
        tenant,
        limit_id: limit_id("tokens"),
    });
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(
        ended(&h.settle(b.lease_id, vec![], tok(100), 1)),
        (true, false)
    );
    // Leases turned off: the live ones end at their next settle, new asks are refused.
    let c = h.lease_ok("c", tok(100), 1);
    h.put_tenant(TenantPolicy::default());
    assert_eq!(
        ended(&h.settle(c.lease_id, vec![], tok(100), 1)),
        (true, false)
    );
    assert_eq!(
        h.lease("c", tok(10), 1, tok(1)),
        Outcome::LeaseRefused(LeaseRefusal::Off)
    );
}

#[test]
fn a_tenant_without_leases_is_refused_off_and_nothing_changes() {
    let mut h = H::with_policy(TenantPolicy::default());
    let before = h.ledger.clone();
    let outcome = h.lease("bot", tok(10), 1, tok(1));
    assert_eq!(outcome, Outcome::LeaseRefused(LeaseRefusal::Off));
    assert_eq!(h.ledger.leases_on(&h.tenant, None), 0);
    assert_eq!(h.ledger.chain_head(), before.chain_head());
}

#[test]
fn a_retried_settle_returns_its_first_answer_and_charges_nothing() {
    let mut h = H::new();
    h.limit("tokens", Scope::EachAgent, Dimension::Tokens, budget(1_000));
    let lease = h.lease_ok("bot", tok(100), 1);
    let call = h.call(tok(10), tok(30));
    let cmd = h.settle_cmd(lease.lease_id, vec![call.clone()], tok(100), 1);
    let first = h.apply(&cmd);
    renewed(&first);
    let before = h.ledger.clone();
    assert_eq!(h.apply(&cmd), first);
    assert!(h.ledger == before, "a retry changed the ledger");
    assert_eq!(h.usage("bot", "tokens").used, 30);
    // The same request id with other calls is another payload.
    let Command::Settle { request_id, .. } = &cmd else {
        unreachable!()
    };
    let mut other = cmd.clone();
    if let Command::Settle { calls, .. } = &mut other {
        calls.push(call);
    }
    assert!(matches!(
        h.apply(&other),
        Outcome::Rejected(Rejection::RequestIdReused { request_id: r, .. }) if &r == request_id
    ));
}

#[test]
fn a_lease_holds_units_of_concurrency_and_a_per_call_denial_recalls_it() {
    let mut h = H::new();
    h.limit(
        "slots",
        Scope::EachAgent,
        Dimension::Concurrency,
        LimitKind::Concurrency { max: 4 },
    );
    let lease = h.lease_ok("bot", tok(10), 3);
    assert_eq!(lease.units, 3);
    assert_eq!(h.usage("bot", "slots").used, 3);
    // One slot left: a second lease would get a fair share of 0 units.
    assert_eq!(
        h.lease("bot", tok(10), 2, Amounts::default()),
        Outcome::LeaseRefused(LeaseRefusal::Room)
    );
    assert!(matches!(h.reserve("bot", tok(1)), Outcome::Granted { .. }));
    assert!(matches!(h.reserve("bot", tok(1)), Outcome::Denied(_)));
    // Recalled by the denial: its units come back at its next settle.
    assert_eq!(
        ended(&h.settle(lease.lease_id, vec![], tok(10), 3)),
        (true, false)
    );
    assert_eq!(h.usage("bot", "slots").used, 1);
}

#[test]
fn a_lease_takes_its_slice_of_a_rate_at_grant_and_gives_back_the_unused_rest() {
    let mut h = H::new();
    let rate = LimitKind::Rate {
        amount: 1,
        period_ms: 60_000,
        burst: 10,
    };
    h.limit("calls", Scope::EachAgent, Dimension::Calls, rate);
    let lease = h.lease_ok("bot", calls(6), 1);
    assert_eq!(lease.slice, calls(6));
    assert_eq!(h.usage("bot", "calls").remaining, 4);
    let (one, two) = (h.call(calls(1), calls(1)), h.call(calls(1), calls(1)));
    let outcome = h.settle(lease.lease_id, vec![one, two], Amounts::default(), 0);
    assert_eq!(ended(&outcome), (false, false));
    // Two calls spent, four given back.
    assert_eq!(h.usage("bot", "calls").remaining, 8);
}

#[test]
fn another_tenants_lease_is_unknown_to_a_tenant() {
    let mut h = H::new();
    let lease = h.lease_ok("bot", tok(10), 1);
    let other = tenant("other");
    let cmd = Command::PutTenant {
        request_id: h.req(),
        tenant: other.clone(),
        policy: leases_on(),
    };
    h.apply(&cmd);
    let cmd = Command::Settle {
        request_id: h.req(),
        tenant: other,
        lease_id: lease.lease_id,
        calls: vec![],
        want: Amounts::default(),
        units: 0,
        ttl_ms: 0,
    };
    assert_eq!(
        h.apply(&cmd),
        Outcome::Rejected(Rejection::UnknownReservation {
            reservation: lease.lease_id
        })
    );
    assert_eq!(h.ledger.leases_on(&h.tenant, None), 1);
}

#[test]
fn leases_and_their_tombstones_survive_a_snapshot() {
    let mut h = H::new();
    h.limit("tokens", Scope::EachAgent, Dimension::Tokens, budget(1_000));
    h.lease_ok("a", tok(100), 1);
    h.tick(10_000);
    let live = h.lease_ok("b", tok(100), 1);
    let restored = Ledger::restore(&h.ledger.snapshot()).unwrap();
    assert!(restored == h.ledger);
    assert_eq!(restored.leases_on(&h.tenant, None), 1);
    h.ledger = restored;
    let call = h.call(tok(1), tok(1));
    renewed(&h.settle(live.lease_id, vec![call], tok(100), 1));
}
