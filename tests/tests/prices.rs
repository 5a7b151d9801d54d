//! What a worker in any language relies on over the wire: usage priced by the tenant's
//! price table, an abandoned guard charged its estimate, an absent `calls` counted as one,
//! and reflection in both versions for generic tools.

mod common;

use common::{client_for, create_key, TestCluster};
use tollgate_client::{v1, Error};

/// $2.50 input, $1.25 cached input, $10.00 output per 1M tokens.
fn gpt4o() -> v1::Price {
    v1::Price {
        model: "gpt-4o".into(),
        input_micros: 2_500_000,
        output_micros: 10_000_000,
        cached_input_micros: Some(1_250_000),
        per_tokens: 1_000_000,
        version: 0,
    }
}

fn usage(model: &str, input: u64, output: u64, cached: u64) -> Option<v1::Usage> {
    Some(v1::Usage {
        model: model.into(),
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: cached,
    })
}

/// A reserve as a client in another language sends it: `calls` left out.
fn reserve_request(id: &str, tokens: u64, cost_micros: u64) -> v1::ReserveRequest {
    v1::ReserveRequest {
        request_id: id.into(),
        tenant: "acme".into(),
        agent: "bot".into(),
        tool: "llm:gpt-4o".into(),
        estimate: Some(v1::Amounts {
            tokens,
            cost_micros,
            calls: None,
        }),
        ttl_ms: 60_000,
        ..Default::default()
    }
}

async fn reserve(client: &tollgate_client::Client, request: v1::ReserveRequest) -> u64 {
    let response = client
        .call(|rpc| {
            let request = request.clone();
            async move { rpc.tollgate().reserve(request).await }
        })
        .await
        .expect("reserve");
    match response.decision {
        Some(v1::reserve_response::Decision::Granted(granted)) => granted.reservation_id,
        other => panic!("not granted: {other:?}"),
    }
}

async fn commit(
    client: &tollgate_client::Client,
    request: v1::CommitRequest,
) -> Result<v1::CommitResponse, Error> {
    client
        .call(|rpc| {
            let request = request.clone();
            async move { rpc.tollgate().commit(request).await }
        })
        .await
}

/// (used, held) of each of the tenant's limits, by id.
async fn spent(client: &tollgate_client::Client) -> Vec<(String, u64, u64)> {
    let usage = client.usage("acme", None, None).await.expect("usage");
    let mut rows: Vec<_> = usage
        .usage
        .iter()
        .map(|u| (u.limit.clone().unwrap().id, u.used, u.held))
        .collect();
    rows.sort();
    rows
}

async fn acme(client: &tollgate_client::Client) {
    client.put_tenant("acme", None).await.unwrap();
    for (id, dimension) in [
        ("calls", v1::Dimension::Calls),
        ("tokens", v1::Dimension::Tokens),
        ("usd", v1::Dimension::Cost),
    ] {
        client
            .put_limit("acme", common::budget(id, dimension, 1_000_000_000))
            .await
            .unwrap();
    }
}

async fn last_audit_event(client: &tollgate_client::Client) -> String {
    let records = client
        .query_audit(v1::AuditQueryRequest {
            tenant: "acme".into(),
            limit: 10_000,
            ..Default::default()
        })
        .await
        .expect("audit");
    records.last().expect("a record").event_json.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_priced_by_the_tenant_table_and_audited_with_the_entry() {
    let test = TestCluster::with_auth(1).await;
    acme(&test.client).await;
    let (_, tenant_admin) =
        create_key(&test.client, Some("acme"), v1::KeyRole::TenantAdmin, &[]).await;
    let (_, worker) = create_key(&test.client, Some("acme"), v1::KeyRole::Worker, &[]).await;
    let tenant_admin = client_for(&test.cluster, Some(&tenant_admin));
    let worker = client_for(&test.cluster, Some(&worker));

    // A tenant admin sets its prices; a worker reads them but cannot set them.
    tenant_admin.put_price("acme", gpt4o()).await.unwrap();
    let listed = worker.list_prices("acme").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].model.as_str(), listed[0].version), ("gpt-4o", 1));
    assert!(matches!(
        worker.put_price("acme", gpt4o()).await,
        Err(Error::PermissionDenied(_))
    ));

    // A dated snapshot of the model, as providers report it, priced by its family entry:
    // 1,000 input, 500 output and 2,000 cached tokens cost $0.01.
    let id = reserve(&worker, reserve_request("r-1", 4_000, 50_000)).await;
    let request = v1::CommitRequest {
        request_id: "c-1".into(),
        tenant: "acme".into(),
        reservation_id: id,
        usage: usage("gpt-4o-2024-08-06", 1_000, 500, 2_000),
        ..Default::default()
    };
    let committed = commit(&worker, request.clone()).await.unwrap();
    assert_eq!((committed.cost_micros, committed.overrun), (10_000, false));
    let expected = vec![
        ("calls".to_string(), 1, 0),
        ("tokens".to_string(), 3_500, 0),
        ("usd".to_string(), 10_000, 0),
    ];
    assert_eq!(spent(&worker).await, expected);
    let event = last_audit_event(&tenant_admin).await;
    assert!(
        event.contains(r#""price":{"model":"gpt-4o","version":1}"#),
        "{event}"
    );
    // The retry is the first answer, not a second charge.
    let again = commit(&worker, request).await.unwrap();
    let first_entry = |r: &v1::CommitResponse| r.applied.as_ref().map(|a| a.log_index);
    assert_eq!(first_entry(&again), first_entry(&committed));
    assert_eq!(again.cost_micros, committed.cost_micros);
    assert_eq!(spent(&worker).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpriced_model_is_refused_until_a_fallback_prices_it() {
    let test = TestCluster::start(1).await;
    acme(&test.client).await;
    let id = reserve(&test.client, reserve_request("r-1", 100, 1_000)).await;
    let request = v1::CommitRequest {
        request_id: "c-1".into(),
        tenant: "acme".into(),
        reservation_id: id,
        usage: usage("mystery-1", 10, 10, 0),
        ..Default::default()
    };
    match commit(&test.client, request.clone()).await {
        Err(Error::FailedPrecondition(message)) => {
            assert!(message.contains("mystery-1"), "{message}");
            assert!(message.contains("tollgate price put"), "{message}");
        }
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    let held = spent(&test.client).await;
    assert!(held.iter().all(|(_, used, _)| *used == 0), "{held:?}");
    let fallback = v1::Price {
        model: "*".into(),
        input_micros: 10_000_000,
        output_micros: 30_000_000,
        cached_input_micros: None,
        per_tokens: 0,
        version: 0,
    };
    test.client.put_price("acme", fallback).await.unwrap();
    let committed = commit(&test.client, request).await.unwrap();
    assert_eq!(committed.cost_micros, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_guard_is_charged_its_estimate_and_flagged() {
    let test = TestCluster::start(1).await;
    acme(&test.client).await;
    let id = reserve(&test.client, reserve_request("r-1", 4_000, 60_000)).await;
    let request = v1::CommitRequest {
        request_id: "c-1".into(),
        tenant: "acme".into(),
        reservation_id: id,
        abandoned: true,
        ..Default::default()
    };
    let committed = commit(&test.client, request).await.unwrap();
    assert_eq!(committed.cost_micros, 60_000);
    assert_eq!(
        spent(&test.client).await,
        vec![
            ("calls".to_string(), 1, 0),
            ("tokens".to_string(), 4_000, 0),
            ("usd".to_string(), 60_000, 0),
        ]
    );
    let event = last_audit_event(&test.client).await;
    assert!(event.contains(r#""abandoned":true"#), "{event}");

    // An abandoned commit carries no actual: one that does is refused and changes nothing.
    let id = reserve(&test.client, reserve_request("r-2", 10, 10)).await;
    let contradictory = v1::CommitRequest {
        request_id: "c-2".into(),
        tenant: "acme".into(),
        reservation_id: id,
        abandoned: true,
        usage: usage("gpt-4o", 1, 1, 0),
        ..Default::default()
    };
    assert!(matches!(
        commit(&test.client, contradictory).await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_without_calls_counts_one_call() {
    let test = TestCluster::start(1).await;
    acme(&test.client).await;
    reserve(&test.client, reserve_request("r-1", 1, 1)).await;
    reserve(&test.client, reserve_request("r-2", 1, 1)).await;
    let calls = spent(&test.client).await;
    assert_eq!(calls[0], ("calls".to_string(), 0, 2), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_prices_and_usage_are_invalid_and_change_nothing() {
    let test = TestCluster::start(1).await;
    acme(&test.client).await;
    let too_fine = v1::Price {
        per_tokens: tollgate_ledger::PER_TOKENS_MAX + 1,
        ..gpt4o()
    };
    assert!(matches!(
        test.client.put_price("acme", too_fine).await,
        Err(Error::Invalid(_))
    ));
    assert!(test.client.list_prices("acme").await.unwrap().is_empty());
    let id = reserve(&test.client, reserve_request("r-1", 1, 1)).await;
    let both = v1::CommitRequest {
        request_id: "c-1".into(),
        tenant: "acme".into(),
        reservation_id: id,
        actual: Some(v1::Amounts {
            tokens: 1,
            cost_micros: 5,
            calls: Some(1),
        }),
        usage: usage("gpt-4o", 1, 1, 0),
        ..Default::default()
    };
    match commit(&test.client, both).await {
        Err(Error::Invalid(message)) => assert!(message.contains("both"), "{message}"),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    assert!(matches!(
        test.client.delete_price("acme", "gpt-4o").await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_in_both_versions() {
    use tonic_reflection::pb::{v1 as r1, v1alpha as r1alpha};
    let test = TestCluster::start(1).await;
    let addr = format!("http://{}", test.cluster.endpoints()[0]);
    let channel = tonic::transport::Endpoint::from_shared(addr)
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut alpha = r1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let ask = r1alpha::ServerReflectionRequest {
        message_request: Some(
            r1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
        ..Default::default()
    };
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(r1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"tollgate.v1.Tollgate"), "{names:?}");

    let mut current = r1::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = r1::ServerReflectionRequest {
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
        ..Default::default()
    };
    let mut answers = current
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_granted_offline_is_charged_and_flagged_when_reported() {
    let test = TestCluster::start(1).await;
    acme(&test.client).await;
    let request = v1::RecordRequest {
        request_id: "offline-1".into(),
        tenant: "acme".into(),
        agent: "bot".into(),
        tool: "llm:gpt-4o".into(),
        actual: Some(v1::Amounts {
            tokens: 700,
            cost_micros: 9_000,
            calls: Some(1),
        }),
        offline: true,
        ..Default::default()
    };
    test.client
        .call(|rpc| {
            let request = request.clone();
            async move { rpc.tollgate().record(request).await }
        })
        .await
        .unwrap();
    let usd = spent(&test.client).await.pop().unwrap();
    assert_eq!(usd, ("usd".to_string(), 9_000, 0));
    let event = last_audit_event(&test.client).await;
    assert!(event.contains(r#""offline":true"#), "{event}");
}
