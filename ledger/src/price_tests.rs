//! Price tables and the settlements they feed: usage priced with integer arithmetic and
//! rounded up, the entry named in the audit trail, abandoned guards charged their estimate.

use super::tests::{agent, cost, request, tenant, tool};
use super::*;

const T0: u64 = 1_710_072_000_000;

/// Tenant `acme` with a lifetime cost budget and a token budget, both large.
struct Priced {
    ledger: Ledger,
    now_ms: u64,
    requests: u64,
}

fn model(name: &str) -> ModelId {
    ModelId::new(name).unwrap()
}

/// $2.50 input, $1.25 cached input, $10.00 output per 1M tokens.
fn gpt4o_price() -> Price {
    Price {
        input_micros: 2_500_000,
        output_micros: 10_000_000,
        cached_input_micros: 1_250_000,
        per_tokens: 1_000_000,
    }
}

fn usage(name: &str, input: u64, output: u64, cached: u64) -> Usage {
    Usage {
        model: model(name),
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: cached,
    }
}

impl Priced {
    fn new() -> Self {
        let mut h = Priced {
            ledger: Ledger::new(),
            now_ms: T0,
            requests: 0,
        };
        let put = Command::PutTenant {
            request_id: h.next_request(),
            tenant: tenant("acme"),
            policy: TenantPolicy::default(),
        };
        assert_eq!(h.apply(&put), Outcome::Done);
        for (id, dimension) in [("usd", Dimension::Cost), ("tokens", Dimension::Tokens)] {
            let limit = Command::PutLimit {
                request_id: h.next_request(),
                tenant: tenant("acme"),
                limit: LimitSpec {
                    id: LimitId::new(id).unwrap(),
                    scope: Scope::Tenant,
                    dimension,
                    kind: LimitKind::Budget {
                        window: Window::Lifetime,
                        amount: 1_000_000_000,
                    },
                    thresholds: Default::default(),
                },
            };
            assert_eq!(h.apply(&limit), Outcome::Done);
        }
        h
    }

    fn next_request(&mut self) -> RequestId {
        self.requests += 1;
        request(&format!("p-{}", self.requests))
    }

    fn apply(&mut self, cmd: &Command) -> Outcome {
        self.ledger.apply(self.now_ms, cmd)
    }

    fn put_price(&mut self, name: &str, price: Price) -> Outcome {
        let cmd = Command::PutPrice {
            request_id: self.next_request(),
            tenant: tenant("acme"),
            model: model(name),
            price,
        };
        self.apply(&cmd)
    }

    fn reserve(&mut self, estimate: Amounts, usage: Option<Usage>) -> ReservationId {
        let cmd = Command::Reserve {
            request_id: self.next_request(),
            tenant: tenant("acme"),
            agent: agent("bot"),
            tool: tool("llm"),
            estimate,
            ttl_ms: 60_000,
            fingerprint: None,
            shape: None,
            usage,
            session: None,
        };
        match self.apply(&cmd) {
            Outcome::Granted { reservation_id, .. } => reservation_id,
            other => panic!("not granted: {other:?}"),
        }
    }

    fn commit_cmd(&mut self, id: ReservationId, usage: Option<Usage>, abandoned: bool) -> Command {
        Command::Commit {
            request_id: self.next_request(),
            tenant: tenant("acme"),
            reservation_id: id,
            actual: Amounts {
                calls: u64::from(!abandoned),
                ..Amounts::default()
            },
            usage,
            abandoned,
        }
    }

    /// (used, held) of the cost and token budgets.
    fn spent(&self) -> [(u64, u64); 2] {
        let usage = self.ledger.usage(&tenant("acme"), None, None).unwrap();
        let of = |id: &str| {
            let u = usage.iter().find(|u| u.limit.id.as_str() == id).unwrap();
            (u.used, u.held)
        };
        [of("usd"), of("tokens")]
    }

    fn last_event(&self) -> AuditEvent {
        let filter = AuditFilter {
            limit: usize::MAX,
            ..AuditFilter::default()
        };
        self.ledger.audit(&filter).last().unwrap().event.clone()
    }
}

#[test]
fn cost_is_summed_exactly_then_rounded_up_once() {
    let price = gpt4o_price();
    // 1 input token: 2.5 micro-units, charged 3; never less than spent.
    assert_eq!(price.cost_of(&usage("m", 1, 0, 0)), Some(3));
    // 1 input + 1 output: 12.5 → 13 (rounding each part would give 3 + 10 = 13 too, but
    // 1 input + 1 cached: 2.5 + 1.25 = 3.75 → 4, where parts rounded up would be 5).
    assert_eq!(price.cost_of(&usage("m", 1, 1, 0)), Some(13));
    assert_eq!(price.cost_of(&usage("m", 1, 0, 1)), Some(4));
    // 1,000 input, 500 output, 2,000 cached: 2,500 + 5,000 + 2,500 micro-units.
    assert_eq!(price.cost_of(&usage("m", 1_000, 500, 2_000)), Some(10_000));
    assert_eq!(price.cost_of(&usage("m", 0, 0, 0)), Some(0));
    // Beyond AMOUNT_MAX: no cost, never a wrapped one.
    let max = usage("m", AMOUNT_MAX, AMOUNT_MAX, AMOUNT_MAX);
    assert_eq!(price.cost_of(&max), None);
}

#[test]
fn a_commit_with_usage_charges_the_derived_cost_and_names_the_price() {
    let mut h = Priced::new();
    assert_eq!(h.put_price("gpt-4o", gpt4o_price()), Outcome::Done);
    let estimate = Amounts {
        tokens: 4_000,
        cost_micros: 50_000,
        calls: 1,
    };
    let r = h.reserve(estimate, None);
    let cmd = h.commit_cmd(r, Some(usage("gpt-4o", 1_000, 500, 2_000)), false);
    assert_eq!(
        h.apply(&cmd),
        Outcome::Committed {
            reservation_id: r,
            overrun: false,
            late: false,
            cost_micros: 10_000,
        }
    );
    // The tokens of the usage, counted since the commit gave none.
    assert_eq!(h.spent(), [(10_000, 0), (3_500, 0)]);
    assert_eq!(
        h.last_event(),
        AuditEvent::Commit {
            overrun: false,
            late: false,
            abandoned: false,
            price: Some(PriceRef {
                model: model("gpt-4o"),
                version: 1,
            }),
        }
    );
    // A retry is answered from memory even after the price changed: one charge, one cost.
    assert_eq!(
        h.put_price(
            "gpt-4o",
            Price {
                input_micros: 1,
                ..gpt4o_price()
            }
        ),
        Outcome::Done
    );
    assert!(matches!(
        h.apply(&cmd),
        Outcome::Committed {
            cost_micros: 10_000,
            ..
        }
    ));
    assert_eq!(h.spent(), [(10_000, 0), (3_500, 0)]);
}

#[test]
fn an_unpriced_model_is_refused_and_changes_nothing_unless_a_fallback_prices_it() {
    let mut h = Priced::new();
    h.put_price("gpt-4o", gpt4o_price());
    let r = h.reserve(cost(50_000), None);
    let records = h.ledger.chain_head().seq;
    let cmd = h.commit_cmd(r, Some(usage("mystery-1", 10, 10, 0)), false);
    assert!(matches!(
        h.apply(&cmd),
        Outcome::Rejected(Rejection::Unpriced { .. })
    ));
    assert_eq!(
        h.spent(),
        [(0, 50_000), (0, 0)],
        "still held, nothing charged"
    );
    assert_eq!(h.ledger.chain_head().seq, records, "no audit record");
    let fallback = Price {
        input_micros: 10_000_000,
        output_micros: 30_000_000,
        cached_input_micros: 10_000_000,
        per_tokens: 1_000_000,
    };
    h.put_price(FALLBACK_MODEL, fallback);
    let cmd = h.commit_cmd(r, Some(usage("mystery-1", 10, 10, 0)), false);
    assert!(matches!(
        h.apply(&cmd),
        Outcome::Committed {
            cost_micros: 400,
            ..
        }
    ));
    let AuditEvent::Commit { price, .. } = h.last_event() else {
        panic!("not a commit");
    };
    assert_eq!(price.unwrap().model, model(FALLBACK_MODEL));
}

#[test]
fn a_dated_snapshot_is_priced_by_the_longest_family_entry() {
    let mut h = Priced::new();
    h.put_price("gpt-4o", gpt4o_price());
    let mini = Price {
        input_micros: 150_000,
        output_micros: 600_000,
        cached_input_micros: 75_000,
        per_tokens: 1_000_000,
    };
    h.put_price("gpt-4o-mini", mini);
    let tenant = h.ledger.tenants.get(0).unwrap();
    let priced_by = |name: &str| tenant.price_for(&model(name)).map(|e| e.model.to_string());
    assert_eq!(priced_by("gpt-4o-2024-08-06").as_deref(), Some("gpt-4o"));
    assert_eq!(
        priced_by("gpt-4o-mini-2024-07-18").as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(priced_by("gpt-4o-mini").as_deref(), Some("gpt-4o-mini"));
    // Only at a `-`: `gpt-4omni` is another model.
    assert_eq!(priced_by("gpt-4omni"), None);
    assert_eq!(priced_by("gpt-4"), None);
}

#[test]
fn a_reserve_may_estimate_its_cost_from_usage() {
    let mut h = Priced::new();
    h.put_price("gpt-4o", gpt4o_price());
    // 2,000 prompt tokens and at most 1,000 output tokens: $0.005 + $0.01.
    let estimate = Amounts {
        calls: 1,
        ..Amounts::default()
    };
    h.reserve(estimate, Some(usage("gpt-4o", 2_000, 1_000, 0)));
    assert_eq!(h.spent(), [(0, 15_000), (0, 3_000)]);
}

#[test]
fn a_record_with_usage_is_priced_and_audited_with_its_price() {
    let mut h = Priced::new();
    h.put_price("gpt-4o", gpt4o_price());
    let cmd = Command::Record {
        request_id: h.next_request(),
        tenant: tenant("acme"),
        agent: agent("bot"),
        tool: tool("llm"),
        actual: Amounts {
            tokens: 0,
            cost_micros: 0,
            calls: 1,
        },
        usage: Some(usage("gpt-4o", 400, 0, 0)),
        offline: false,
        session: None,
    };
    assert_eq!(h.apply(&cmd), Outcome::Recorded { cost_micros: 1_000 });
    assert_eq!(h.spent(), [(1_000, 0), (400, 0)]);
    assert!(matches!(
        h.last_event(),
        AuditEvent::Record {
            price: Some(PriceRef { version: 1, .. }),
            offline: false,
        }
    ));
}

#[test]
fn an_abandoned_guard_is_charged_its_estimate_and_flagged() {
    let mut h = Priced::new();
    let estimate = Amounts {
        tokens: 4_000,
        cost_micros: 60_000,
        calls: 1,
    };
    let r = h.reserve(estimate, None);
    let cmd = h.commit_cmd(r, None, true);
    assert_eq!(
        h.apply(&cmd),
        Outcome::Committed {
            reservation_id: r,
            overrun: false,
            late: false,
            cost_micros: 60_000,
        }
    );
    assert_eq!(h.spent(), [(60_000, 0), (4_000, 0)]);
    assert!(matches!(
        h.last_event(),
        AuditEvent::Commit {
            abandoned: true,
            price: None,
            ..
        }
    ));
    // After expiry, an abandoned commit trues the expiry charge to the estimate: no change.
    let r = h.reserve(estimate, None);
    h.now_ms += 61_000;
    h.apply(&Command::Tick);
    assert_eq!(h.spent(), [(120_000, 0), (8_000, 0)]);
    let cmd = h.commit_cmd(r, None, true);
    assert!(matches!(
        h.apply(&cmd),
        Outcome::Committed {
            late: true,
            cost_micros: 60_000,
            ..
        }
    ));
    assert_eq!(h.spent(), [(120_000, 0), (8_000, 0)]);
}

#[test]
fn bad_usage_and_abandoned_commits_with_an_actual_are_invalid() {
    let mut h = Priced::new();
    let r = h.reserve(cost(10), None);
    let mut both = h.commit_cmd(r, Some(usage("gpt-4o", 1, 1, 0)), false);
    if let Command::Commit { actual, .. } = &mut both {
        actual.cost_micros = 5;
    }
    assert!(both
        .validate()
        .unwrap_err()
        .0
        .contains("both a cost and usage"));
    let mut abandoned = h.commit_cmd(r, None, true);
    if let Command::Commit { actual, .. } = &mut abandoned {
        actual.tokens = 5;
    }
    assert!(abandoned.validate().is_err());
    let bad_price = Price {
        per_tokens: 0,
        ..gpt4o_price()
    };
    let put = Command::PutPrice {
        request_id: h.next_request(),
        tenant: tenant("acme"),
        model: model("x"),
        price: bad_price,
    };
    assert!(put.validate().is_err());
}

#[test]
fn price_tables_are_versioned_bounded_and_deletable() {
    let mut h = Priced::new();
    for i in 0..PRICES_PER_TENANT_MAX {
        assert_eq!(h.put_price(&format!("m-{i}"), gpt4o_price()), Outcome::Done);
    }
    let refused = h.put_price("one-too-many", gpt4o_price());
    assert!(
        matches!(
            refused,
            Outcome::Rejected(Rejection::BoundReached {
                bound: Bound::PricesPerTenant,
                ..
            })
        ),
        "{refused:?}"
    );
    // Replacing an entry is not a new one, and gets a new version.
    assert_eq!(h.put_price("m-0", gpt4o_price()), Outcome::Done);
    let prices = h.ledger.prices(&tenant("acme")).unwrap();
    assert_eq!(prices.len(), PRICES_PER_TENANT_MAX);
    let m0 = prices.iter().find(|e| e.model == model("m-0")).unwrap();
    assert_eq!(m0.version, PRICES_PER_TENANT_MAX as u64 + 1);
    let delete = |h: &mut Priced, name: &str| {
        let cmd = Command::DeletePrice {
            request_id: h.next_request(),
            tenant: tenant("acme"),
            model: model(name),
        };
        h.apply(&cmd)
    };
    assert_eq!(delete(&mut h, "m-0"), Outcome::Done);
    assert!(matches!(
        delete(&mut h, "m-0"),
        Outcome::Rejected(Rejection::UnknownPrice { .. })
    ));
    assert_eq!(h.last_event(), AuditEvent::PriceDelete(model("m-0")));
}
