"""Trace context going out: a call made inside an OpenTelemetry span sends that span's
`traceparent`, from the sync and the async client, and a call outside any span sends none.
A node of our own records the metadata it receives; the node's side (the span it exports
with this parent) is covered by the Rust test tests/tests/traces.rs."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

import tollgate
from tollgate._pb import tollgate_pb2 as pb

TRACER = TracerProvider().get_tracer("tollgate-tests")


class FakeNode:
    """Answers every Reserve with a denial and keeps each call's metadata. Any other method
    (Batch included) is unimplemented: a call that reaches it fails."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(
            self._reserve,
            request_deserializer=pb.ReserveRequest.FromString,
            response_serializer=pb.ReserveResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("tollgate.v1.Tollgate", {"Reserve": handler}),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _reserve(self, request: pb.ReserveRequest, context: Any) -> pb.ReserveResponse:
        self.metadata.append({key: value for key, value in context.invocation_metadata()})
        return pb.ReserveResponse(denied=pb.DeniedByLimit(limit_id="calls", remaining=0))

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def node() -> Iterator[FakeNode]:
    fake = FakeNode()
    try:
        yield fake
    finally:
        fake.server.stop(None)


def traceparent_of(span: Any) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def test_the_sync_client_sends_the_current_span_as_traceparent(node: FakeNode) -> None:
    with tollgate.Client([node.addr], deadline=2.0) as client:
        with TRACER.start_as_current_span("agent step") as span:
            with pytest.raises(tollgate.Denied):
                client.reserve(tenant="acme", agent="bot", tool="search")
        with pytest.raises(tollgate.Denied):
            client.reserve(tenant="acme", agent="bot", tool="search")
    inside, outside = node.metadata
    assert inside["traceparent"] == traceparent_of(span)
    assert "traceparent" not in outside


async def test_the_async_client_sends_it_in_its_own_rpc_not_a_batch(node: FakeNode) -> None:
    # Coalescing is on, yet the traced call must arrive as a unary Reserve (the fake node
    # has no Batch) carrying its own span.
    async with tollgate.AsyncClient([node.addr], deadline=2.0, coalesce=True) as client:
        with TRACER.start_as_current_span("agent step") as span:
            with pytest.raises(tollgate.Denied):
                await client.reserve(tenant="acme", agent="bot", tool="search")
    assert [m["traceparent"] for m in node.metadata] == [traceparent_of(span)]
