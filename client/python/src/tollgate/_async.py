"""The asyncio client (grpc.aio): the same surface and policy as the sync client, with
awaitable operations, an async guard and a decorator for coroutine functions."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import grpc
import grpc.aio

from . import _wire
from ._base import ClientBase, log
from ._coalesce import COALESCED, Coalescer, OpFailed
from ._core import (
    ATTEMPT_TIMEOUT_DEFAULT_S,
    OFFLINE_REPORTS_PER_FLUSH,
    TTL_DEFAULT_S,
    CallRun,
    leader_hint,
    new_request_id,
)
from ._errors import NotCalled, TollgateError, Unavailable
from ._held import Held
from ._pb import tollgate_pb2 as pb
from ._pb import tollgate_pb2_grpc as pb_grpc
from ._trace import in_sampled_trace, with_trace_context
from ._types import Amounts, Committed, FailOpen, LimitUsage, Money, Tls, Usage

P = ParamSpec("P")
R = TypeVar("R")


class AsyncReservation(Held):
    """Spend held until `await commit()` or `await release()`; as an async context manager,
    settled like the sync guard when the block is left (abandoned, or released on
    tollgate.NotCalled)."""

    def __init__(self, client: AsyncClient, checked: _wire.Reserve, granted: _wire.Granted | None):
        super().__init__(checked, granted)
        self._client = client

    async def commit(
        self,
        *,
        tokens: int = 0,
        cost_usd: Money | None = None,
        cost_micros: int | None = None,
        calls: int | None = None,
        usage: Usage | None = None,
        request_id: str | None = None,
    ) -> Committed:
        """Charges what the call spent and ends the hold (see Reservation.commit)."""
        wire_amounts, wire_usage, spent = self._actual(tokens, cost_usd, cost_micros, calls, usage)
        self._settle("commit")
        if self.reservation_id is None:
            self._client._local_spent(self, spent, wire_amounts, wire_usage)
            self.result = Committed(not spent.fits_within(self.estimate), False, spent.cost_micros)
            return self.result
        request = _wire.commit_request(
            request_id or new_request_id(),
            self.tenant,
            self.reservation_id,
            wire_amounts,
            wire_usage,
        )
        response = await self._client._call("Commit", request)
        self.result = _wire.committed(response, wire_amounts.cost_micros, wire_usage is not None)
        return self.result

    async def release(self, *, request_id: str | None = None) -> None:
        """Ends the hold without charging anything: the call did not happen."""
        self._settle("release")
        if self.reservation_id is None:
            if self._client._offline is not None:
                self._client._offline.give_back(self.estimate)
            return
        request = pb.ReleaseRequest(
            request_id=request_id or new_request_id(),
            tenant=self.tenant,
            reservation_id=self.reservation_id,
        )
        await self._client._call("Release", request)

    async def abandon(self) -> None:
        """Settles at the estimate, flagged abandoned: what leaving the block does."""
        self._settle("abandon")
        if self.reservation_id is None:
            wire_amounts, wire_usage = self._estimate_as_actual()
            self._client._local_spent(self, self.estimate, wire_amounts, wire_usage)
            return
        request = _wire.commit_request(
            new_request_id(), self.tenant, self.reservation_id, None, None
        )
        await self._client._call("Commit", request)

    async def __aenter__(self) -> AsyncReservation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return await self._leave(exc)

    async def _leave(self, exc: BaseException | None) -> bool:
        """Settles a reservation left unsettled; True when `exc` is to be swallowed."""
        if self._settled:
            return False
        if isinstance(exc, NotCalled):
            await self.release()
            return True
        try:
            await self.abandon()
        except TollgateError as error:
            # The hold then expires and is charged at its estimate all the same.
            log.warning("abandoning reservation %s failed: %s", self.reservation_id, error)
        return False


class PendingReservation:
    """What AsyncClient.reserve returns: await it for the reservation, or use it with
    `async with` to reserve on entry and settle on exit."""

    def __init__(self, reserve: Callable[[], Coroutine[Any, Any, AsyncReservation]]) -> None:
        self._reserve = reserve
        self._reservation: AsyncReservation | None = None

    def __await__(self) -> Generator[Any, None, AsyncReservation]:
        return self._reserve().__await__()

    async def __aenter__(self) -> AsyncReservation:
        self._reservation = await self._reserve()
        return self._reservation

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._reservation is not None, "__aexit__ without __aenter__"
        return await self._reservation.__aexit__(exc_type, exc, tb)


class AsyncClient(ClientBase):
    """An asyncio client of a Tollgate cluster. Connections belong to the event loop that
    opened them; a client used from a new loop opens new ones."""

    def __init__(
        self,
        endpoints: Sequence[str],
        token: str | None = None,
        tls: Tls | None = None,
        deadline: float = 5.0,
        fail_open: FailOpen | None = None,
        *,
        attempt_timeout: float = ATTEMPT_TIMEOUT_DEFAULT_S,
        coalesce: bool = True,
    ) -> None:
        super().__init__(endpoints, token, tls, deadline, fail_open, attempt_timeout)
        # Send concurrent reserve, commit, release and record calls to a node as one Batch
        # RPC; off: one unary RPC each (e.g. against nodes that predate Batch).
        self._coalesce = coalesce
        self._channels: dict[str, tuple[grpc.aio.Channel, pb_grpc.TollgateStub, Coalescer]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flushing = False
        # Closes of evicted channels in flight (the loop keeps only weak references to tasks).
        self._closing: set[asyncio.Task[None]] = set()

    def reserve(
        self,
        tenant: str,
        agent: str,
        tool: str,
        *,
        tokens: int = 0,
        cost_usd: Money | None = None,
        cost_micros: int | None = None,
        calls: int = 1,
        ttl: float = TTL_DEFAULT_S,
        fingerprint: str | None = None,
        shape: str | None = None,
        model: str | None = None,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        request_id: str | None = None,
        session: str | None = None,
    ) -> PendingReservation:
        """Reserves the estimate (see Client.reserve); await the result or `async with` it.
        Arguments are checked here, before anything is sent."""
        checked = _wire.reserve(
            request_id=request_id or new_request_id(),
            tenant=tenant,
            agent=agent,
            tool=tool,
            tokens=tokens,
            cost_usd=cost_usd,
            cost_micros=cost_micros,
            calls=calls,
            ttl=ttl,
            fingerprint=fingerprint,
            shape=shape,
            model=model,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            session=session,
        )

        async def send() -> AsyncReservation:
            try:
                response = await self._call("Reserve", checked.request)
            except Unavailable as error:
                self._fail_open_or_raise(checked, error)
                return AsyncReservation(self, checked, None)
            return AsyncReservation(self, checked, _wire.decide(response))

        return PendingReservation(send)

    async def record(
        self,
        tenant: str,
        agent: str,
        tool: str,
        *,
        tokens: int = 0,
        cost_usd: Money | None = None,
        cost_micros: int | None = None,
        calls: int = 1,
        usage: Usage | None = None,
        request_id: str | None = None,
        session: str | None = None,
    ) -> int:
        """Charges spend that happened without a reservation (see Client.record)."""
        wire_amounts, wire_usage, _ = _wire.actual(
            tokens=tokens, cost_usd=cost_usd, cost_micros=cost_micros, calls=calls, usage=usage
        )
        request = _wire.record_request(
            request_id or new_request_id(), tenant, agent, tool, wire_amounts, wire_usage, session
        )
        response = await self._call("Record", request)
        return int(response.cost_micros or (0 if wire_usage else wire_amounts.cost_micros))

    async def usage(
        self,
        tenant: str,
        agent: str | None = None,
        tool: str | None = None,
        session: str | None = None,
    ) -> list[LimitUsage]:
        """Usage and remaining of every limit that applies."""
        response = await self._call("GetUsage", _wire.usage_request(tenant, agent, tool, session))
        return _wire.limit_usages(response)

    def guard(
        self,
        tenant: str,
        agent: str,
        tool: str,
        *,
        tokens: int = 0,
        cost_usd: Money | None = None,
        cost_micros: int | None = None,
        calls: int = 1,
        ttl: float = TTL_DEFAULT_S,
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """A decorator for coroutine functions, with the semantics of Client.guard."""

        def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError("AsyncClient.guard wraps async functions; use Client.guard")

            @functools.wraps(fn)
            async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
                r = await self.reserve(
                    tenant,
                    agent,
                    tool,
                    tokens=tokens,
                    cost_usd=cost_usd,
                    cost_micros=cost_micros,
                    calls=calls,
                    ttl=ttl,
                )
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as error:
                    await r._leave(error)
                    raise
                e = r.estimate
                await r.commit(tokens=e.tokens, cost_micros=e.cost_micros, calls=e.calls)
                return result

            return guarded

        return decorate

    async def report_offline(self) -> int:
        """Reports spend granted while failing open (as Records); see Client.report_offline."""
        if self._offline is None or self._flushing:
            return 0
        self._flushing = True
        reported = 0
        try:
            for _ in range(OFFLINE_REPORTS_PER_FLUSH):
                item = self._offline.next_report()
                if item is None:
                    break
                await self._call("Record", item[0], flush=False)
                self._offline.reported(*item)
                reported += 1
        except TollgateError as error:
            log.warning("reporting offline spend failed, will retry: %s", error)
        finally:
            self._flushing = False
        return reported

    def _local_spent(
        self, held: Held, spent: Amounts, wire_amounts: pb.Amounts, wire_usage: pb.Usage | None
    ) -> None:
        assert self._offline is not None, "a local reservation needs fail_open"
        self._offline.spent(
            held.estimate, spent, held.tenant, held.agent, held.tool, wire_amounts, wire_usage
        )

    def _node(self, addr: str) -> tuple[grpc.aio.Channel, pb_grpc.TollgateStub, Coalescer]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Channels of a loop that is gone cannot be used (or closed) from this one.
            self._channels.clear()
            self._loop = loop
        entry = self._channels.get(addr)
        if entry is None:
            victim = self._evict_victim(list(self._channels))
            if victim is not None:
                old = self._channels.pop(victim)[0]
                task = loop.create_task(old.close(None))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            creds = self._settings.credentials()
            options = self._settings.channel_options()
            channel = (
                grpc.aio.insecure_channel(addr, options=options)
                if creds is None
                else grpc.aio.secure_channel(addr, creds, options=options)
            )
            stub = pb_grpc.TollgateStub(channel)  # type: ignore[no-untyped-call]
            coalescer = Coalescer(stub, self._metadata, self._settings.attempt_timeout_s)
            entry = (channel, stub, coalescer)
            self._channels[addr] = entry
        return entry

    async def _call(self, method: str, request: Any, *, flush: bool = True) -> Any:
        """One RPC to the leader under the client's policy (see Client._call)."""
        run = CallRun(self._settings, self._leader, self._breaker)
        try:
            while True:
                addr, timeout = run.next_attempt()
                try:
                    response = await self._attempt(addr, method, request, timeout)
                except OpFailed as failed:
                    pause = run.failed(addr, failed.code, failed.details, failed.hint)
                    if pause > 0:
                        await asyncio.sleep(pause)
                    continue
                run.succeeded(addr)
                break
        finally:
            run.end()
        if flush and self._offline is not None and self._offline.pending():
            await self.report_offline()
        return response

    async def _attempt(self, addr: str, method: str, request: Any, timeout: float) -> Any:
        """One attempt at `addr`: batched with concurrent operations when coalescing."""
        _, stub, coalescer = self._node(addr)
        try:
            # A call inside a sampled trace leaves on its own, carrying its trace context.
            if self._coalesce and method in COALESCED and not in_sampled_trace():
                answer = coalescer.submit(method, request)
                # Giving up on the answer must not cancel the batch other calls share.
                return await asyncio.wait_for(asyncio.shield(answer), timeout)
            metadata = with_trace_context(self._metadata)
            return await getattr(stub, method)(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            hint = leader_hint(error.trailing_metadata(), error.initial_metadata())
            raise OpFailed(error.code(), error.details() or "", hint) from None
        except asyncio.TimeoutError:
            raise OpFailed(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout:.3f} s", None
            ) from None

    async def close(self) -> None:
        """Reports what it can of offline spend, then closes every connection."""
        if self._offline is not None and self._offline.pending() and not self._breaker.is_open:
            await self.report_offline()
        channels = [entry[0] for entry in self._channels.values()]
        self._channels.clear()
        for channel in channels:
            await channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
