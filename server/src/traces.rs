//! OpenTelemetry traces, opt-in: with an OTLP endpoint configured, a span per client RPC with
//! its tenant, agent, tool, request id, outcome and node, whose parent is the caller's span
//! when the request carries W3C trace context (`traceparent`, `tracestate`).
//!
//! Without an endpoint nothing here is built and an RPC pays one atomic load. With one, spans
//! go through a bounded queue to a batch exporter on its own thread: a full queue or a
//! collector that is down drops spans, it never slows or fails a decision.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::{BoxFuture, Either};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::metadata::{KeyRef, MetadataMap};
use tonic::server::NamedService;
use tonic::Status;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::Filter;
use tracing_subscriber::{Layer, Registry};

/// The `tracing` target of RPC spans: the OTLP layer takes only these, the log layer never.
pub const RPC_TARGET: &str = "tollgate::rpc";
/// Spans waiting for export; beyond it new spans are dropped (the SDK counts and logs
/// them), so a slow collector costs spans, never memory or latency.
pub const EXPORT_QUEUE_SPANS_MAX: usize = 4096;
/// Spans in one export request.
pub const EXPORT_BATCH_SPANS_MAX: usize = 512;
/// Longest wait for the collector to take one export: beyond it the batch is dropped, so a
/// collector that is down holds a stopping node this long at most.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest string attribute: names come from requests and are validated after the span
/// starts, so a span never carries more than this of one.
pub const ATTRIBUTE_BYTES_MAX: usize = 256;

/// Set once a layer exists: RPCs make spans only then.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether RPCs make spans (an OTLP layer was built in this process).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporting half of traces: owns the tracer provider, flushed by [`Traces::shutdown`].
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Exports to `endpoint` (OTLP over gRPC, `http://collector:4317`) every `interval`
    /// (`None`: the SDK's 5 s, or `OTEL_BSP_SCHEDULE_DELAY` in ms). Must run inside
    /// a Tokio runtime, which carries the exporter's connection. Connects lazily: a
    /// collector that is down is retried at each export, it does not stop the node.
    pub fn start(endpoint: &str, interval: Option<Duration>) -> anyhow::Result<Traces> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .with_context(|| format!("building the OTLP exporter for {endpoint}"))?;
        // The SDK's defaults, retuned by the OTEL_BSP_* variables, under our bounds.
        let mut batch = BatchConfigBuilder::default()
            .with_max_queue_size(EXPORT_QUEUE_SPANS_MAX)
            .with_max_export_batch_size(EXPORT_BATCH_SPANS_MAX);
        if let Some(interval) = interval {
            batch = batch.with_scheduled_delay(interval);
        }
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch.build())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(Resource::builder().with_service_name("tollgate").build())
            .build();
        Ok(Traces { provider })
    }

    /// The `tracing` layer that turns RPC spans into OpenTelemetry spans; from now on RPCs
    /// make them.
    pub fn layer(&self) -> Box<dyn Layer<Registry> + Send + Sync> {
        ENABLED.store(true, Ordering::Relaxed);
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("tollgate"))
            .with_filter(rpc_spans_only())
            .boxed()
    }

    /// Exports what is queued and stops. Blocks until the collector answered or the export
    /// timed out: call it off the async runtime's workers (`spawn_blocking`).
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "flushing the last spans to the OTLP collector");
        }
    }
}

fn rpc_spans_only() -> impl Filter<Registry> + Send + Sync {
    filter_fn(|metadata| metadata.target() == RPC_TARGET)
}

/// Reads W3C trace context from gRPC metadata; binary and non-ASCII entries are skipped.
struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The span of one RPC named `method` (`tollgate.v1.Tollgate/Reserve`) on node `node_id`,
/// child of the caller's span when `metadata` carries valid trace context; a malformed
/// `traceparent` is ignored and the span is a root. A disabled span when traces are off.
pub fn rpc_span(method: &str, metadata: &MetadataMap, node_id: u64) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: RPC_TARGET,
        "rpc",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        tollgate.node_id = node_id,
    );
    let parent = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    if parent.span().span_context().is_valid() {
        // Fails only for a span already started, which this one is not.
        let _ = span.set_parent(parent);
    }
    span
}

/// The span of one operation of a `Batch`, child of the current (batch) span.
pub fn batch_op_span(op: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(target: RPC_TARGET, "batch op", otel.name = op, rpc.system = "grpc")
}

/// Gives every RPC of the wrapped service a span named by its path, described by nothing
/// but its node and, for a refusal, its status: for the Admin and Cluster services, whose
/// requests name no single tenant, agent and tool.
#[derive(Clone)]
pub struct Traced<S> {
    inner: S,
    node_id: u64,
}

impl<S> Traced<S> {
    pub fn new(inner: S, node_id: u64) -> Self {
        Traced { inner, node_id }
    }
}

impl<S: NamedService> NamedService for Traced<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for Traced<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !enabled() {
            return Either::Left(self.inner.call(request));
        }
        let path = request.uri().path().trim_start_matches('/');
        let metadata = MetadataMap::from_headers(request.headers().clone());
        let span = rpc_span(path, &metadata, self.node_id);
        let answer = self.inner.call(request).instrument(span.clone());
        Either::Right(Box::pin(async move {
            let answer = answer.await;
            // A handler's refusal is a trailers-only response: its status is in the headers.
            if let Ok(response) = &answer {
                if let Some(status) = Status::from_header_map(response.headers()) {
                    if status.code() != tonic::Code::Ok {
                        record_status(&span, &status);
                    }
                }
            }
            answer
        }))
    }
}

/// Sets the request's names on `span`: `tollgate.<name>` for each non-empty value, cut to
/// [`ATTRIBUTE_BYTES_MAX`].
pub fn describe(span: &Span, names: &[(&'static str, &str)]) {
    if span.is_disabled() {
        return;
    }
    for &(name, value) in names.iter().filter(|(_, value)| !value.is_empty()) {
        span.set_attribute(name, bounded(value).to_owned());
    }
}

/// Records the ledger's decision on the current span: `tollgate.outcome` (granted, denied,
/// committed...) and `tollgate.reason` (limit, frozen, overrun...).
pub fn record_decision(outcome: &'static str, reason: &'static str) {
    if !enabled() {
        return;
    }
    let span = Span::current();
    span.set_attribute("tollgate.outcome", outcome);
    span.set_attribute("tollgate.reason", reason);
}

/// Records a refusal on `span`: outcome `error`, the status code as reason, span status ERROR.
pub fn record_status(span: &Span, status: &Status) {
    if span.is_disabled() {
        return;
    }
    span.set_attribute("tollgate.outcome", "error");
    span.set_attribute("tollgate.reason", format!("{:?}", status.code()));
    span.set_attribute("rpc.grpc.status_code", i64::from(i32::from(status.code())));
    span.set_status(opentelemetry::trace::Status::error(
        bounded(status.message()).to_owned(),
    ));
}

/// `value` cut to at most [`ATTRIBUTE_BYTES_MAX`] bytes, on a character boundary.
fn bounded(value: &str) -> &str {
    if value.len() <= ATTRIBUTE_BYTES_MAX {
        return value;
    }
    let mut end = ATTRIBUTE_BYTES_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_cut_on_a_character_boundary() {
        let long = "é".repeat(ATTRIBUTE_BYTES_MAX);
        let cut = bounded(&long);
        assert!(cut.len() <= ATTRIBUTE_BYTES_MAX && cut.len() >= ATTRIBUTE_BYTES_MAX - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(bounded("acme"), "acme");
    }

    /// Malformed trace context is no context: the span becomes a root, nothing panics.
    #[test]
    fn malformed_traceparent_is_ignored() {
        for value in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            let mut metadata = MetadataMap::new();
            metadata.insert("traceparent", value.parse().unwrap());
            let cx = TraceContextPropagator::new().extract(&MetadataExtractor(&metadata));
            assert!(!cx.span().span_context().is_valid(), "{value:?}");
        }
        let mut metadata = MetadataMap::new();
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        metadata.insert("traceparent", valid.parse().unwrap());
        let cx = TraceContextPropagator::new().extract(&MetadataExtractor(&metadata));
        assert!(cx.span().span_context().is_valid());
    }
}
