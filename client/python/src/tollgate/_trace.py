"""W3C trace context going out: when opentelemetry-api is installed (the `otel` extra) and
the caller is inside a span, each call carries its `traceparent` (and `tracestate`), so the
node's span of the RPC is that span's child. Without opentelemetry-api this does nothing."""

from __future__ import annotations

try:
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:
    _propagate = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]


def with_trace_context(metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the current context's propagation headers (the global propagator's:
    W3C trace context unless OTEL_PROPAGATORS says otherwise)."""
    if _propagate is None:
        return metadata
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    if not carrier:
        return metadata
    return metadata + tuple((key.lower(), value) for key, value in carrier.items())


def in_sampled_trace() -> bool:
    """Whether the caller is inside a sampled span: its operations then leave as their own
    RPCs, not in a Batch sent on behalf of several callers, so each carries its own context."""
    if _trace is None:
        return False
    return bool(_trace.get_current_span().get_span_context().trace_flags.sampled)
