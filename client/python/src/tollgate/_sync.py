"""The synchronous client: blocking gRPC calls with the shared retry policy, the guard
(a context manager around one reservation) and the guard decorator."""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

import grpc

from . import _wire
from ._base import ClientBase, log
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
from ._trace import with_trace_context
from ._types import Committed, FailOpen, LimitUsage, Money, Tls, Usage

P = ParamSpec("P")
R = TypeVar("R")


class Reservation(Held):
    """Spend held until commit() or release(). As a context manager, leaving the block
    without either commits at the estimate, flagged abandoned (the call may have happened),
    unless the block raised tollgate.NotCalled: then it releases and swallows it."""

    def __init__(self, client: Client, checked: _wire.Reserve, granted: _wire.Granted | None):
        super().__init__(checked, granted)
        self._client = client

    def commit(
        self,
        *,
        tokens: int = 0,
        cost_usd: Money | None = None,
        cost_micros: int | None = None,
        calls: int | None = None,
        usage: Usage | None = None,
        request_id: str | None = None,
    ) -> Committed:
        """Charges what the call spent and ends the hold. Spend above the estimate is charged
        anyway (overrun). If this fails the hold is not released: it expires at its estimate."""
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
        response = self._client._call("Commit", request)
        self.result = _wire.committed(response, wire_amounts.cost_micros, wire_usage is not None)
        return self.result

    def release(self, *, request_id: str | None = None) -> None:
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
        self._client._call("Release", request)

    def abandon(self) -> None:
        """Settles at the estimate, flagged abandoned: what leaving the block does."""
        self._settle("abandon")
        if self.reservation_id is None:
            wire_amounts, wire_usage = self._estimate_as_actual()
            self._client._local_spent(self, self.estimate, wire_amounts, wire_usage)
            return
        request = _wire.commit_request(
            new_request_id(), self.tenant, self.reservation_id, None, None
        )
        self._client._call("Commit", request)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._leave(exc)

    def _leave(self, exc: BaseException | None) -> bool:
        """Settles a reservation left unsettled; True when `exc` is to be swallowed."""
        if self._settled:
            return False
        if isinstance(exc, NotCalled):
            self.release()
            return True
        try:
            self.abandon()
        except TollgateError as error:
            # The hold then expires and is charged at its estimate all the same.
            log.warning("abandoning reservation %s failed: %s", self.reservation_id, error)
        return False


class Client(ClientBase):
    """A blocking client of a Tollgate cluster; safe to share between threads."""

    def __init__(
        self,
        endpoints: Sequence[str],
        token: str | None = None,
        tls: Tls | None = None,
        deadline: float = 5.0,
        fail_open: FailOpen | None = None,
        *,
        attempt_timeout: float = ATTEMPT_TIMEOUT_DEFAULT_S,
    ) -> None:
        super().__init__(endpoints, token, tls, deadline, fail_open, attempt_timeout)
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[grpc.Channel, pb_grpc.TollgateStub]] = {}
        self._flushing = threading.Lock()

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
    ) -> Reservation:
        """Reserves the estimate against every limit that applies, or raises Denied, Frozen,
        Tripped; Unavailable when the cluster cannot be reached (unless failing open)."""
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
        try:
            response = self._call("Reserve", checked.request)
        except Unavailable as error:
            self._fail_open_or_raise(checked, error)
            return Reservation(self, checked, None)
        return Reservation(self, checked, _wire.decide(response))

    def record(
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
        """Charges spend that happened without a reservation; never denied. Returns the cost
        charged in micro-units (derived from `usage` when given)."""
        wire_amounts, wire_usage, _ = _wire.actual(
            tokens=tokens, cost_usd=cost_usd, cost_micros=cost_micros, calls=calls, usage=usage
        )
        request = _wire.record_request(
            request_id or new_request_id(), tenant, agent, tool, wire_amounts, wire_usage, session
        )
        response = self._call("Record", request)
        return int(response.cost_micros or (0 if wire_usage else wire_amounts.cost_micros))

    def usage(
        self,
        tenant: str,
        agent: str | None = None,
        tool: str | None = None,
        session: str | None = None,
    ) -> list[LimitUsage]:
        """Usage and remaining of every limit that applies (linearizable: the leader answers)."""
        response = self._call("GetUsage", _wire.usage_request(tenant, agent, tool, session))
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
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """A decorator: reserve before each call, commit the estimate after it; on
        tollgate.NotCalled release and re-raise; on any other exception settle at the
        estimate (abandoned) and re-raise."""

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(fn):
                raise TypeError("Client.guard wraps plain functions; use AsyncClient.guard")

            @functools.wraps(fn)
            def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
                r = self.reserve(
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
                    result = fn(*args, **kwargs)
                except BaseException as error:
                    r._leave(error)
                    raise
                e = r.estimate
                r.commit(tokens=e.tokens, cost_micros=e.cost_micros, calls=e.calls)
                return result

            return guarded

        return decorate

    def report_offline(self) -> int:
        """Reports spend granted while failing open to the cluster (as Records); returns how
        many reports were charged. Also runs after each successful call."""
        if self._offline is None or not self._flushing.acquire(blocking=False):
            return 0
        reported = 0
        try:
            for _ in range(OFFLINE_REPORTS_PER_FLUSH):
                item = self._offline.next_report()
                if item is None:
                    break
                self._call("Record", item[0], flush=False)
                self._offline.reported(*item)
                reported += 1
        except TollgateError as error:
            log.warning("reporting offline spend failed, will retry: %s", error)
        finally:
            self._flushing.release()
        return reported

    def _local_spent(
        self, held: Held, spent: Any, wire_amounts: pb.Amounts, wire_usage: pb.Usage | None
    ) -> None:
        assert self._offline is not None, "a local reservation needs fail_open"
        self._offline.spent(
            held.estimate, spent, held.tenant, held.agent, held.tool, wire_amounts, wire_usage
        )

    def _stub(self, addr: str) -> pb_grpc.TollgateStub:
        with self._lock:
            entry = self._channels.get(addr)
            if entry is None:
                victim = self._evict_victim(list(self._channels))
                if victim is not None:
                    self._channels.pop(victim)[0].close()
                creds = self._settings.credentials()
                options = self._settings.channel_options()
                channel = (
                    grpc.insecure_channel(addr, options=options)
                    if creds is None
                    else grpc.secure_channel(addr, creds, options=options)
                )
                entry = (channel, pb_grpc.TollgateStub(channel))  # type: ignore[no-untyped-call]
                self._channels[addr] = entry
            return entry[1]

    def _call(self, method: str, request: Any, *, flush: bool = True) -> Any:
        """One RPC to the leader under the client's policy: the same request (same request id)
        on every attempt, hints followed, backoff between rounds, within the deadline."""
        run = CallRun(self._settings, self._leader, self._breaker)
        try:
            while True:
                addr, timeout = run.next_attempt()
                rpc = getattr(self._stub(addr), method)
                try:
                    metadata = with_trace_context(self._metadata)
                    response = rpc(request, timeout=timeout, metadata=metadata)
                except grpc.RpcError as error:
                    call = cast(grpc.Call, error)
                    hint = leader_hint(call.trailing_metadata(), call.initial_metadata())
                    pause = run.failed(addr, call.code(), call.details() or "", hint)
                    if pause > 0:
                        time.sleep(pause)
                    continue
                run.succeeded(addr)
                break
        finally:
            run.end()
        if flush and self._offline is not None and self._offline.pending():
            self.report_offline()
        return response

    def close(self) -> None:
        """Reports what it can of offline spend, then closes every connection."""
        if self._offline is not None and self._offline.pending() and not self._breaker.is_open:
            self.report_offline()
        with self._lock:
            for channel, _ in self._channels.values():
                channel.close()
            self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
