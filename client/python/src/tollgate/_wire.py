"""The one place that converts between the wire (tollgate.v1 protobuf messages) and this
package's arguments, results and exceptions. Everything is checked before an RPC is sent."""

from __future__ import annotations

from dataclasses import dataclass

from ._core import TTL_DEFAULT_S, check_id
from ._errors import Denied, Frozen, InternalError, InvalidRequest, Tripped
from ._pb import tollgate_pb2 as pb
from ._types import (
    Amounts,
    Committed,
    LimitUsage,
    Money,
    Remaining,
    Usage,
    cost_micros_of,
    count,
    finite_seconds,
    seconds_from_ms,
)

_DIMENSIONS: dict[int, str] = {
    pb.DIMENSION_TOKENS: "tokens",
    pb.DIMENSION_COST: "cost",
    pb.DIMENSION_CALLS: "calls",
    pb.DIMENSION_CONCURRENCY: "concurrency",
}


def dimension_name(wire: int) -> str:
    return _DIMENSIONS.get(wire, f"dimension#{wire}")


def scope_name(scope: pb.Scope) -> str:
    kind = scope.WhichOneof("scope")
    if kind == "tenant":
        return "tenant"
    if kind == "each_agent":
        return "each-agent"
    if kind == "agent":
        return f"agent:{scope.agent}"
    if kind == "tool_per_agent":
        return f"tool-per-agent:{scope.tool_per_agent}"
    if kind == "tool_tenant":
        return f"tool-tenant:{scope.tool_tenant}"
    if kind == "each_session":
        return "each-session"
    return "unknown-scope"


def usage_to_wire(usage: Usage) -> pb.Usage:
    if not isinstance(usage, Usage):
        raise InvalidRequest("usage must be a tollgate.Usage")
    return pb.Usage(
        model=usage.model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
    )


@dataclass(frozen=True)
class Reserve:
    """A checked reserve: the wire request (sent unchanged on every retry) and the estimate
    a local grant holds when failing open."""

    request: pb.ReserveRequest
    estimate: Amounts
    ttl_s: float


def reserve(
    *,
    request_id: str,
    tenant: str,
    agent: str,
    tool: str,
    tokens: int,
    cost_usd: Money | None,
    cost_micros: int | None,
    calls: int,
    ttl: float,
    fingerprint: str | None,
    shape: str | None,
    model: str | None,
    input_tokens: int | None,
    max_output_tokens: int | None,
    session: str | None = None,
) -> Reserve:
    cost = cost_micros_of(cost_usd, cost_micros)
    estimate = Amounts(count("tokens", tokens), cost, count("calls", calls))
    ttl_s = finite_seconds("ttl", ttl if ttl is not None else TTL_DEFAULT_S)
    request = pb.ReserveRequest(
        request_id=check_id("request_id", request_id),
        tenant=check_id("tenant", tenant),
        agent=check_id("agent", agent),
        tool=check_id("tool", tool),
        estimate=pb.Amounts(tokens=estimate.tokens, cost_micros=cost, calls=estimate.calls),
        ttl_ms=max(1, round(ttl_s * 1000)),
    )
    if fingerprint is not None:
        request.fingerprint = check_id("fingerprint", fingerprint)
    if session is not None:
        request.session = check_id("session", session)
    if shape is not None:
        request.shape = check_id("shape", shape)
    if model is not None:
        if cost:
            raise InvalidRequest("give a cost or a model to price the estimate, not both")
        usage = Usage(model, input_tokens or 0, max_output_tokens or 0)
        request.usage.CopyFrom(usage_to_wire(usage))
        if estimate.tokens == 0:
            estimate = Amounts(usage.total_tokens, 0, estimate.calls)
    elif input_tokens is not None or max_output_tokens is not None:
        raise InvalidRequest("input_tokens and max_output_tokens need a model")
    return Reserve(request, estimate, ttl_s)


@dataclass(frozen=True)
class Granted:
    reservation_id: int
    expires_at: float
    tightest: Remaining | None


def decide(response: pb.ReserveResponse) -> Granted:
    """The grant, or the decision as an exception."""
    decision = response.WhichOneof("decision")
    if decision == "granted":
        g = response.granted
        tightest = None
        if g.HasField("tightest"):
            t = g.tightest
            tightest = Remaining(t.limit_id, dimension_name(t.dimension), t.remaining)
        return Granted(g.reservation_id, seconds_from_ms(g.expires_at_ms), tightest)
    if decision == "denied":
        d = response.denied
        retry = seconds_from_ms(d.retry_after_ms) if d.HasField("retry_after_ms") else None
        raise Denied(
            d.limit_id, scope_name(d.scope), dimension_name(d.dimension), d.remaining, retry
        )
    if decision == "frozen":
        raise Frozen(response.frozen.agent or None)
    if decision == "tripped":
        tripped = response.tripped
        cause = tripped.cause.WhichOneof("cause") or "unknown"
        if cause == "repetition":
            r = tripped.cause.repetition
            detail = f"repetition: fingerprint {r.fingerprint!r} seen {r.count} times"
        elif cause == "velocity":
            v = tripped.cause.velocity
            detail = f"velocity: spent {v.spent} against a recent baseline of {v.baseline}"
        elif cause == "shape_velocity":
            s = tripped.cause.shape_velocity
            detail = (
                f"shape velocity: argument shape {s.shape!r} called {s.calls} times"
                f" against a recent baseline of {s.baseline}"
            )
        else:
            detail = "unknown cause"
        until = seconds_from_ms(tripped.until_ms) if tripped.HasField("until_ms") else None
        raise Tripped(cause, until, detail)
    raise InternalError("reserve answered without a decision")


def actual(
    *,
    tokens: int,
    cost_usd: Money | None,
    cost_micros: int | None,
    calls: int,
    usage: Usage | None,
) -> tuple[pb.Amounts, pb.Usage | None, Amounts]:
    """The actual spend of a commit or record: the wire amounts (calls always explicit), the
    wire usage, and the amounts as known locally (cost 0 when the cluster prices usage)."""
    cost = cost_micros_of(cost_usd, cost_micros)
    amounts = Amounts(count("tokens", tokens), cost, count("calls", calls))
    wire_usage = None
    if usage is not None:
        if cost:
            raise InvalidRequest("give a cost or usage to price, not both")
        wire_usage = usage_to_wire(usage)
        if amounts.tokens == 0:
            amounts = Amounts(usage.total_tokens, 0, amounts.calls)
    wire = pb.Amounts(tokens=count("tokens", tokens), cost_micros=cost, calls=amounts.calls)
    return wire, wire_usage, amounts


def commit_request(
    request_id: str,
    tenant: str,
    reservation_id: int,
    wire_amounts: pb.Amounts | None,
    wire_usage: pb.Usage | None,
) -> pb.CommitRequest:
    request = pb.CommitRequest(request_id=request_id, tenant=tenant, reservation_id=reservation_id)
    if wire_amounts is None:
        request.abandoned = True
    else:
        request.actual.CopyFrom(wire_amounts)
    if wire_usage is not None:
        request.usage.CopyFrom(wire_usage)
    return request


def committed(response: pb.CommitResponse, cost_sent: int, priced: bool) -> Committed:
    # A node that does not derive costs answers 0; the cost charged is then the one sent.
    cost = response.cost_micros if (response.cost_micros or priced) else cost_sent
    return Committed(overrun=response.overrun, late=response.late, cost_micros=cost)


def record_request(
    request_id: str,
    tenant: str,
    agent: str,
    tool: str,
    wire_amounts: pb.Amounts,
    wire_usage: pb.Usage | None,
    session: str | None = None,
) -> pb.RecordRequest:
    request = pb.RecordRequest(
        request_id=check_id("request_id", request_id),
        tenant=check_id("tenant", tenant),
        agent=check_id("agent", agent),
        tool=check_id("tool", tool),
        actual=wire_amounts,
    )
    if session is not None:
        request.session = check_id("session", session)
    if wire_usage is not None:
        request.usage.CopyFrom(wire_usage)
    return request


def usage_request(
    tenant: str, agent: str | None, tool: str | None, session: str | None = None
) -> pb.UsageRequest:
    return pb.UsageRequest(
        tenant=check_id("tenant", tenant),
        agent="" if agent is None else check_id("agent", agent),
        tool="" if tool is None else check_id("tool", tool),
        session="" if session is None else check_id("session", session),
    )


def limit_usages(response: pb.UsageResponse) -> list[LimitUsage]:
    rows = []
    for u in response.usage:
        window = seconds_from_ms(u.window_start_ms) if u.HasField("window_start_ms") else None
        rows.append(
            LimitUsage(
                limit_id=u.limit.id,
                scope=scope_name(u.limit.scope),
                dimension=dimension_name(u.limit.dimension),
                agent=u.agent or None,
                used=u.used,
                held=u.held,
                remaining=u.remaining,
                window_start=window,
                thresholds=limit_thresholds(u.limit),
                alerted_percent=u.alerted_percent,
            )
        )
    return rows


# A limit without thresholds on the wire has the cluster's defaults.
THRESHOLDS_DEFAULT_PERCENT = (50, 80, 95)


def limit_thresholds(limit: pb.Limit) -> tuple[int, ...]:
    if not limit.HasField("thresholds"):
        return THRESHOLDS_DEFAULT_PERCENT
    return tuple(limit.thresholds.percent)
