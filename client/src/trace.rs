//! W3C trace context going out, with the `otel` feature: a call made inside an OpenTelemetry
//! span (a `tracing` span under tracing-opentelemetry, else the attached
//! `opentelemetry::Context`) carries `traceparent` and `tracestate`, so the node's span of
//! the RPC is that span's child. Without the feature both functions are empty.

use tonic::metadata::MetadataMap;

/// Adds the current span's `traceparent` (and `tracestate`, if any) to an outgoing request.
#[cfg(feature = "otel")]
pub(crate) fn inject(metadata: &mut MetadataMap) {
    let Some(span) = otel::current_span() else {
        return;
    };
    if let Ok(value) = otel::traceparent(&span).parse() {
        metadata.insert("traceparent", value);
    }
    let state = span.trace_state().header();
    if !state.is_empty() {
        if let Ok(value) = state.parse() {
            metadata.insert("tracestate", value);
        }
    }
}

#[cfg(not(feature = "otel"))]
#[inline]
pub(crate) fn inject(_metadata: &mut MetadataMap) {}

/// Whether the calling code is inside a sampled trace: its operations then leave as their own
/// RPCs, not in a `Batch` that another task sends, so that each carries its own context.
#[cfg(feature = "otel")]
pub(crate) fn sampled() -> bool {
    otel::current_span().is_some_and(|span| span.is_sampled())
}

#[cfg(not(feature = "otel"))]
#[inline]
pub(crate) fn sampled() -> bool {
    false
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{SpanContext, TraceContextExt};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The span the calling code is in: the current `tracing` span's, when a
    /// tracing-opentelemetry layer gave it one, else the attached OpenTelemetry context's.
    pub(super) fn current_span() -> Option<SpanContext> {
        let from_tracing = tracing::Span::current().context();
        let span = from_tracing.span().span_context().clone();
        if span.is_valid() {
            return Some(span);
        }
        let attached = opentelemetry::Context::current();
        let span = attached.span().span_context().clone();
        span.is_valid().then_some(span)
    }

    /// The W3C `traceparent` of `span`: version 00, trace id, parent id, flags.
    pub(super) fn traceparent(span: &SpanContext) -> String {
        format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        )
    }

    #[cfg(test)]
    mod tests {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        use opentelemetry::Context;
        use tonic::metadata::MetadataMap;

        use super::*;

        #[test]
        fn an_attached_context_goes_out_as_traceparent() {
            let span = SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                TraceFlags::SAMPLED,
                true,
                TraceState::from_key_value([("vendor", "x")]).unwrap(),
            );
            let mut metadata = MetadataMap::new();
            {
                let _attached = Context::new().with_remote_span_context(span).attach();
                assert!(crate::trace::sampled());
                crate::trace::inject(&mut metadata);
            }
            assert_eq!(
                metadata.get("traceparent").unwrap(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            );
            assert_eq!(metadata.get("tracestate").unwrap(), "vendor=x");
            let mut outside = MetadataMap::new();
            crate::trace::inject(&mut outside);
            assert!(outside.is_empty() && !crate::trace::sampled());
        }
    }
}
