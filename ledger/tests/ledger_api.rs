//! The ledger seen from outside the crate, as the raft and gRPC layers use it: apply
//! commands, query, export the audit trail as JSON lines and verify it, snapshot and restore.

use tollgate_ledger::*;

#[test]
fn a_day_of_spend_exports_a_verifiable_trail_and_survives_a_snapshot() {
    let acme: TenantId = TenantId::new("acme").unwrap();
    let bot: AgentId = AgentId::new("support-bot").unwrap();
    let llm: ToolId = ToolId::new("llm:gpt-x").unwrap();
    let mut ledger = Ledger::new();
    let mut now_ms = 1_710_028_800_000; // 2024-03-10 00:00 UTC
    let mut request = 0u32;
    let mut next = || {
        request += 1;
        RequestId::new(format!("req-{request}")).unwrap()
    };

    let setup = [
        Command::PutTenant {
            request_id: next(),
            tenant: acme.clone(),
            policy: TenantPolicy::default(),
        },
        Command::PutLimit {
            request_id: next(),
            tenant: acme.clone(),
            limit: LimitSpec {
                id: LimitId::new("daily-usd").unwrap(),
                scope: Scope::Tenant,
                dimension: Dimension::Cost,
                kind: LimitKind::Budget {
                    window: Window::Day,
                    amount: 5_000_000,
                },
                thresholds: Default::default(),
            },
        },
    ];
    for cmd in &setup {
        assert_eq!(ledger.apply(now_ms, cmd), Outcome::Done);
    }

    let mut spent = 0;
    loop {
        now_ms += 1_000;
        let reserve = Command::Reserve {
            request_id: next(),
            tenant: acme.clone(),
            agent: bot.clone(),
            tool: llm.clone(),
            estimate: Amounts {
                tokens: 2_000,
                cost_micros: 400_000,
                calls: 1,
            },
            ttl_ms: 30_000,
            fingerprint: None,
            shape: None,
            usage: None,
            session: None,
        };
        // Commands travel through the log as bytes; they must survive the trip.
        let wire = postcard::to_allocvec(&reserve).unwrap();
        let reserve: Command = postcard::from_bytes(&wire).unwrap();
        match ledger.apply(now_ms, &reserve) {
            Outcome::Granted { reservation_id, .. } => {
                let commit = Command::Commit {
                    request_id: next(),
                    tenant: acme.clone(),
                    reservation_id,
                    actual: Amounts {
                        tokens: 1_500,
                        cost_micros: 300_000,
                        calls: 1,
                    },
                    abandoned: false,
                    usage: None,
                };
                assert!(matches!(
                    ledger.apply(now_ms, &commit),
                    Outcome::Committed { .. }
                ));
                spent += 300_000;
            }
            Outcome::Denied(DenyReason::Limit { limit_id, .. }) => {
                assert_eq!(limit_id.as_str(), "daily-usd");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // 16 calls of 0.30 USD fit 5 USD with a 0.40 USD estimate; the 17th would not.
    assert_eq!(spent, 4_800_000);
    let usage = ledger.usage(&acme, None, None).unwrap();
    assert_eq!(usage[0].used, 4_800_000);
    assert_eq!(usage[0].remaining, 200_000);

    let export: String = ledger
        .audit(&AuditFilter {
            tenant: Some(acme.clone()),
            ..AuditFilter::default()
        })
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    let records: Vec<AuditRecord> = export
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(verify_chain(&records), Ok(ledger.chain_head()));
    assert_eq!(ledger.verify_audit(), Ok(ledger.chain_head()));

    let restored = Ledger::restore(&ledger.snapshot()).unwrap();
    assert_eq!(restored, ledger);
    assert_eq!(restored.chain_head(), ledger.chain_head());
}
