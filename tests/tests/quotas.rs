//! Per-tenant quotas over the wire: set by `PutTenant`, shown by `GetTenant`, a quota
//! above its bound refused INVALID_ARGUMENT, and a tenant at its quota of remembered
//! answers refused RESOURCE_EXHAUSTED naming it while another tenant goes on.

mod common;

use common::TestCluster;
use tollgate_client::{v1, Amounts, Error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_quota_is_refused_while_another_goes_on() {
    let test = TestCluster::start(1).await;
    let quotas = v1::TenantQuotas {
        answers: 5,
        ..v1::TenantQuotas::default()
    };
    let policy = v1::TenantPolicy {
        quotas: Some(quotas),
        ..tollgate_server::grpc::convert::policy_to_pb(&tollgate_ledger::TenantPolicy::default())
    };
    test.client.put_tenant("noisy", Some(policy)).await.unwrap();
    test.client.put_tenant("victim", None).await.unwrap();

    let shown = test.client.get_tenant("noisy").await.unwrap();
    let shown = shown.policy.unwrap().quotas.unwrap();
    assert_eq!(shown.answers, 5);
    assert_eq!(shown.agents, tollgate_ledger::AGENTS_QUOTA_DEFAULT);

    let amounts = Amounts::new(1, 0, 1);
    // Its creation was its first remembered answer.
    for _ in 0..4 {
        test.client
            .record("noisy", "bot", "llm", amounts)
            .await
            .unwrap();
    }
    match test.client.record("noisy", "bot", "llm", amounts).await {
        Err(Error::Exhausted(message)) => {
            assert!(message.contains("ANSWERS_PER_TENANT_MAX"), "{message}");
            assert!(message.contains("noisy"), "{message}");
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    for _ in 0..10 {
        test.client
            .record("victim", "bot", "llm", amounts)
            .await
            .unwrap();
    }

    let over = v1::TenantPolicy {
        quotas: Some(v1::TenantQuotas {
            agents: tollgate_ledger::AGENTS_PER_TENANT_MAX as u64 + 1,
            ..v1::TenantQuotas::default()
        }),
        ..tollgate_server::grpc::convert::policy_to_pb(&tollgate_ledger::TenantPolicy::default())
    };
    match test.client.put_tenant("victim", Some(over)).await {
        Err(Error::Invalid(message)) => {
            assert!(message.contains("AGENTS_PER_TENANT_MAX"), "{message}")
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}
