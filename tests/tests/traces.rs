//! OTLP traces: with export on, each client RPC arrives at the collector as a span with its
//! tenant, agent, tool, request id, outcome and node, child of the client's span when the
//! client sent trace context. Its own test binary: the tracer provider and the `tracing`
//! subscriber are process-wide.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{tenant_with_budget, TestCluster};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{
    FutureExt as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::Context;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tollgate_client::{v1, Error, ReserveRequest};
use tollgate_server::traces::Traces;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// How long the test waits for a span to be exported (every 100 ms here).
const EXPORT_WAIT: Duration = Duration::from_secs(20);

/// An OTLP trace collector that keeps every span it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|resource| resource.scope_spans)
            .flat_map(|scope| scope.spans);
        self.spans.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves on a free loopback port; returns its endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        format!("http://{addr}")
    }

    /// Waits for the span named `name` in trace `trace_id`, polling until [`EXPORT_WAIT`].
    async fn span(&self, trace_id: &[u8], name: &str) -> Span {
        let what = format!("span {name} in trace {trace_id:02x?}");
        self.first_span(&what, |span| span.trace_id == trace_id && span.name == name)
            .await
    }

    /// Waits for the span named `name` whose `tollgate.request_id` is `request_id`.
    async fn span_of_request(&self, name: &str, request_id: &str) -> Span {
        let what = format!("span {name} for request {request_id}");
        self.first_span(&what, |span| {
            span.name == name
                && attributes(span)
                    .get("tollgate.request_id")
                    .map(String::as_str)
                    == Some(request_id)
        })
        .await
    }

    /// The first exported span that `wanted` accepts, polling until [`EXPORT_WAIT`].
    async fn first_span(&self, what: &str, wanted: impl Fn(&Span) -> bool) -> Span {
        let deadline = tokio::time::Instant::now() + EXPORT_WAIT;
        loop {
            let found = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| wanted(s))
                .cloned();
            if let Some(span) = found {
                return span;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what} within {EXPORT_WAIT:?}; got {:#?}",
                self.spans.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A span's attributes as text.
fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// The span of a caller elsewhere: a known trace and span id, sampled.
fn caller_context(trace_hex: &str, span_hex: &str) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex(trace_hex).unwrap(),
        SpanId::from_hex(span_hex).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_reach_the_collector_as_children_of_the_callers_span() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let traces = Traces::start(&endpoint, Some(Duration::from_millis(100))).unwrap();
    tracing_subscriber::registry()
        .with(vec![traces.layer(), agent_layer()])
        .init();
    let test = TestCluster::start(3).await;
    tenant_with_budget(&test.client, "acme", 1_000).await;

    granted_reserve_is_a_child_of_the_client_span(&test, &collector).await;
    denied_reserve_records_the_reason(&test, &collector).await;
    malformed_traceparent_starts_a_root_span(&test, &collector).await;
    admin_rpcs_have_a_span_named_by_their_path(&test, &collector).await;
    a_tracing_span_of_the_caller_is_the_parent(&test, &collector).await;

    test.cluster.shutdown().await;
    tokio::task::spawn_blocking(move || traces.shutdown())
        .await
        .unwrap();
}

async fn granted_reserve_is_a_child_of_the_client_span(test: &TestCluster, collector: &Collector) {
    let trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736";
    let span_hex = "00f067aa0ba902b7";
    let request = ReserveRequest::new("acme", "support-bot", "llm:gpt-4o").tokens(100);
    let reservation = test
        .client
        .reserve(request)
        .with_context(caller_context(trace_hex, span_hex))
        .await
        .expect("granted");
    let request_id = reservation.request_id().to_owned();
    reservation.release().await.expect("released");

    let span = collector
        .span(&hex(trace_hex), "tollgate.v1.Tollgate/Reserve")
        .await;
    assert_eq!(
        span.parent_span_id,
        hex(span_hex),
        "the client's span is the parent"
    );
    let attributes = attributes(&span);
    let leader = test.cluster.leader(common::LEADER_WAIT).await.unwrap();
    for (key, value) in [
        ("tollgate.tenant", "acme"),
        ("tollgate.agent", "support-bot"),
        ("tollgate.tool", "llm:gpt-4o"),
        ("tollgate.request_id", request_id.as_str()),
        ("tollgate.outcome", "granted"),
        ("tollgate.reason", "none"),
        ("tollgate.node_id", leader.to_string().as_str()),
    ] {
        assert_eq!(
            attributes.get(key).map(String::as_str),
            Some(value),
            "{key}: {attributes:?}"
        );
    }
}

async fn denied_reserve_records_the_reason(test: &TestCluster, collector: &Collector) {
    let trace_hex = "0af7651916cd43dd8448eb211c80319c";
    let request = ReserveRequest::new("acme", "support-bot", "llm:gpt-4o").tokens(5_000);
    let denied = test
        .client
        .reserve(request)
        .with_context(caller_context(trace_hex, "b7ad6b7169203331"))
        .await;
    assert!(matches!(denied, Err(Error::Denied { .. })), "{denied:?}");
    let span = collector
        .span(&hex(trace_hex), "tollgate.v1.Tollgate/Reserve")
        .await;
    let attributes = attributes(&span);
    assert_eq!(attributes["tollgate.outcome"], "denied");
    assert_eq!(attributes["tollgate.reason"], "limit");
}

/// A `traceparent` that is not W3C trace context is ignored: the call is answered and its
/// span is a root of a fresh trace.
async fn malformed_traceparent_starts_a_root_span(test: &TestCluster, collector: &Collector) {
    let leader = test.cluster.leader(common::LEADER_WAIT).await.unwrap();
    let addr = test.cluster.addr(leader).unwrap();
    let mut client = v1::tollgate_client::TollgateClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let request_id = tollgate_client::new_request_id();
    let mut request = tonic::Request::new(v1::ReserveRequest {
        tenant: "acme".into(),
        agent: "support-bot".into(),
        tool: "search".into(),
        request_id: request_id.clone(),
        estimate: Some(v1::Amounts {
            tokens: 1,
            cost_micros: 0,
            calls: Some(1),
        }),
        ttl_ms: 60_000,
        ..Default::default()
    });
    let malformed = "00-not-a-trace-01";
    request
        .metadata_mut()
        .insert("traceparent", malformed.parse().unwrap());
    client
        .reserve(request)
        .await
        .expect("answered despite the bad traceparent");
    let span = collector
        .span_of_request("tollgate.v1.Tollgate/Reserve", &request_id)
        .await;
    assert!(span.parent_span_id.is_empty(), "a root span: {span:?}");
    assert_eq!(span.trace_id.len(), 16);
}

async fn admin_rpcs_have_a_span_named_by_their_path(test: &TestCluster, collector: &Collector) {
    let trace_hex = "5b8aa5a2d2c872e8321cf37308d69df2";
    let span_hex = "051581bf3cb55c13";
    test.client
        .put_tenant("globex", None)
        .with_context(caller_context(trace_hex, span_hex))
        .await
        .expect("tenant put");
    let span = collector
        .span(&hex(trace_hex), "tollgate.v1.Admin/PutTenant")
        .await;
    assert_eq!(span.parent_span_id, hex(span_hex));
    assert!(attributes(&span).contains_key("tollgate.node_id"));
}

/// The `tracing` target of the calling application's spans in this test.
const AGENT_TARGET: &str = "agent";

/// The calling application's own tracing-opentelemetry layer: its spans get OpenTelemetry
/// ids (sampled, exported nowhere).
fn agent_layer() -> Box<dyn Layer<Registry> + Send + Sync> {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("agent"))
        .with_filter(filter_fn(|metadata| metadata.target() == AGENT_TARGET))
        .boxed()
}

/// The Rust client's usual case: the call runs inside a `tracing` span of the application,
/// and the node's span of the RPC is that span's child.
async fn a_tracing_span_of_the_caller_is_the_parent(test: &TestCluster, collector: &Collector) {
    let step = tracing::info_span!(target: AGENT_TARGET, "agent step");
    let caller = step.context().span().span_context().clone();
    assert!(
        caller.is_sampled(),
        "the agent's span has OpenTelemetry ids"
    );
    let request = ReserveRequest::new("acme", "research-bot", "search").tokens(1);
    let reservation = test
        .client
        .reserve(request)
        .instrument(step)
        .await
        .expect("granted");
    reservation.release().await.expect("released");
    let trace_id = caller.trace_id().to_bytes();
    let span = collector
        .span(&trace_id, "tollgate.v1.Tollgate/Reserve")
        .await;
    assert_eq!(span.parent_span_id, caller.span_id().to_bytes());
    assert_eq!(attributes(&span)["tollgate.agent"], "research-bot");
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
