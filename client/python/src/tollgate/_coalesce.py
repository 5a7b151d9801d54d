"""Coalescing for the asyncio client: concurrent reserve, commit, release and record calls
to one node leave as one `Tollgate.Batch` RPC, so they share one HTTP/2 request and, on the
server, one Raft entry. Each operation gets the answer its unary call would have given (an
`OpFailed` carries the status and the leader hint), so the retry loop treats both alike.
This module never retries and never waits for company: a lone operation leaves at once."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio

from ._core import leader_hint
from ._pb import tollgate_pb2 as pb
from ._pb import tollgate_pb2_grpc as pb_grpc

# The server's bounds on one Batch (tollgate-proto BATCH_OPS_MAX, BATCH_REQUEST_BYTES_MAX);
# the byte budget keeps room for the framing of each operation.
BATCH_OPS_MAX = 1024
BATCH_REQUEST_BYTES_MAX = 1024 * 1024
BATCH_BYTES_BUDGET = BATCH_REQUEST_BYTES_MAX - 64 * 1024
# Batches sent and not yet answered, per node: while they are out, operations pile up into
# the next, larger batch.
BATCHES_IN_FLIGHT_MAX = 4
# Operations waiting, per node; a full queue answers UNAVAILABLE at once (retried) rather
# than letting callers wait without bound.
QUEUE_OPS_MAX = BATCH_OPS_MAX * BATCHES_IN_FLIGHT_MAX

# The unary method each batchable operation replaces, and its field in BatchOp/BatchResult.
COALESCED = {"Reserve": "reserve", "Commit": "commit", "Release": "release", "Record": "record"}

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class OpFailed(Exception):
    """One operation's failure, as its unary call would have failed."""

    def __init__(self, code: grpc.StatusCode, details: str, hint: str | None) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.hint = hint


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A caller that gave up no longer awaits its future; reading it keeps asyncio quiet.
    if not future.cancelled():
        future.exception()


class Coalescer:
    """The batching queue of one node (one channel, one token)."""

    def __init__(
        self, stub: pb_grpc.TollgateStub, metadata: tuple[tuple[str, str], ...], timeout_s: float
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._timeout_s = timeout_s
        self._queue: list[tuple[pb.BatchOp, str, asyncio.Future[Any]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, method: str, request: Any) -> asyncio.Future[Any]:
        """Queues one operation; the future gets its response, or OpFailed."""
        field = COALESCED[method]
        if len(self._queue) >= QUEUE_OPS_MAX:
            raise OpFailed(grpc.StatusCode.UNAVAILABLE, "the client's batch queue is full", None)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._queue.append((pb.BatchOp(**{field: request}), field, future))
        self._pump()
        assert len(self._queue) <= QUEUE_OPS_MAX
        return future

    def _pump(self) -> None:
        # The batch takes its operations when its task starts, so operations submitted in
        # the same turn of the event loop leave together.
        while self._queue and self._in_flight < BATCHES_IN_FLIGHT_MAX:
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if self._in_flight >= len(self._queue):
                break

    def _take(self) -> list[tuple[pb.BatchOp, str, asyncio.Future[Any]]]:
        taken: list[tuple[pb.BatchOp, str, asyncio.Future[Any]]] = []
        size = 0
        while self._queue and len(taken) < BATCH_OPS_MAX:
            op_size = self._queue[0][0].ByteSize()
            if taken and size + op_size > BATCH_BYTES_BUDGET:
                break
            size += op_size
            taken.append(self._queue.pop(0))
        return taken

    async def _send(self) -> None:
        taken = self._take()
        try:
            if taken:
                await self._answer(taken)
        finally:
            self._in_flight -= 1
            if self._queue:
                self._pump()

    async def _answer(self, taken: list[tuple[pb.BatchOp, str, asyncio.Future[Any]]]) -> None:
        request = pb.BatchRequest(ops=[op for op, _, _ in taken])
        try:
            response = await self._stub.Batch(
                request, timeout=self._timeout_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            hint = leader_hint(error.trailing_metadata(), error.initial_metadata())
            failed = OpFailed(error.code(), error.details() or "", hint)
            for _, _, future in taken:
                _settle(future, failed)
            return
        if len(response.results) != len(taken):
            wrong = OpFailed(
                grpc.StatusCode.INTERNAL,
                f"batch of {len(taken)} answered with {len(response.results)} results",
                None,
            )
            for _, _, future in taken:
                _settle(future, wrong)
            return
        for (_, field, future), result in zip(taken, response.results, strict=True):
            _settle(future, _outcome(field, result))


def _outcome(field: str, result: pb.BatchResult) -> Any:
    kind = result.WhichOneof("result")
    if kind == field:
        return getattr(result, field)
    if kind == "error":
        code = _STATUS_BY_NUMBER.get(result.error.code, grpc.StatusCode.UNKNOWN)
        return OpFailed(code, result.error.message, result.error.leader or None)
    return OpFailed(grpc.StatusCode.INTERNAL, f"a {field} answered with {kind}", None)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, OpFailed):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
