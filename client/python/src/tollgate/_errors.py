"""The client's exceptions, and the one place that maps a gRPC status to them.

Every exception says what happened in words an operator can act on, and carries the fields
a caller needs to decide what to do next (which limit, when to retry).
"""

from __future__ import annotations

import grpc


class TollgateError(Exception):
    """Base of every error this package raises."""


class Denied(TollgateError):
    """A limit would be exceeded; nothing was held."""

    def __init__(
        self,
        limit_id: str,
        scope: str,
        dimension: str,
        remaining: int,
        retry_after: float | None,
    ) -> None:
        self.limit_id = limit_id
        # Where the limit attaches: "tenant", "each-agent", "agent:NAME",
        # "tool-per-agent:TOOL", "tool-tenant:TOOL".
        self.scope = scope
        # "tokens", "cost", "calls" or "concurrency".
        self.dimension = dimension
        # What remains of the limit (negative after overruns).
        self.remaining = remaining
        # Seconds until the same request would fit (rate limits only).
        self.retry_after = retry_after
        retry = "" if retry_after is None else f"; retry after {retry_after:.3f} s"
        super().__init__(
            f"denied by limit {limit_id!r} ({scope}, {dimension}): {remaining} remaining{retry}"
        )


class Frozen(TollgateError):
    """An operator froze the tenant (agent None) or this agent: the kill switch."""

    def __init__(self, agent: str | None) -> None:
        self.agent = agent
        what = "the whole tenant" if agent is None else f"agent {agent!r}"
        super().__init__(f"frozen by an operator: {what}")


class Tripped(TollgateError):
    """Runaway detection tripped the agent."""

    def __init__(self, cause: str, until: float | None, detail: str) -> None:
        # "repetition", "velocity" or "shape_velocity".
        self.cause = cause
        # When the cool-down ends, unix seconds; None: only an operator's reset helps.
        self.until = until
        self.detail = detail
        when = "an operator must reset it" if until is None else f"cool-down ends at {until:.3f}"
        super().__init__(f"agent tripped by runaway detection ({detail}); {when}")


class Unavailable(TollgateError):
    """The cluster could not be reached, or had no leader, within the deadline."""


class InvalidRequest(TollgateError):
    """The request (or the client's configuration) is malformed; the server's message says how."""


class PermissionDenied(TollgateError):
    """Missing or wrong credentials, or another tenant's data."""


class NotFound(TollgateError):
    """Unknown tenant or reservation (or model with no price)."""


class FailedPrecondition(TollgateError):
    """Valid but not now, e.g. a release after the reservation expired."""


class Exhausted(TollgateError):
    """A cluster bound or a tenant's quota was reached (RESOURCE_EXHAUSTED)."""


class RequestIdReused(TollgateError):
    """The request id was already used with a different payload."""


class InternalError(TollgateError):
    """The server failed, or answered something this client cannot read."""


class NotCalled(TollgateError):
    """Raise inside a guard when the guarded call did not happen: the guard releases the
    reservation (nothing is charged) and swallows this exception."""


_BY_CODE: dict[grpc.StatusCode, type[TollgateError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Exhausted,
    grpc.StatusCode.ALREADY_EXISTS: RequestIdReused,
}

_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNKNOWN,
    }
)


def is_retryable(code: grpc.StatusCode, details: str) -> bool:
    """Statuses worth retrying with the same request id: the request may not have arrived,
    was cut off, or hit a node that is not the leader. A connection torn down mid-call can
    surface as INTERNAL with an HTTP/2 message; an INTERNAL the server sent is not retried.
    A retry is always safe: the request id makes it idempotent."""
    if code in _RETRYABLE:
        return True
    return code == grpc.StatusCode.INTERNAL and _is_transport_failure(details)


def _is_transport_failure(details: str) -> bool:
    lowered = details.lower()
    return any(
        marker in lowered for marker in ("rst_stream", "stream removed", "h2 protocol error")
    )


def from_status(code: grpc.StatusCode, details: str) -> TollgateError:
    """The exception for a status that is not retried (or was given up on)."""
    kind = _BY_CODE.get(code)
    if kind is not None:
        return kind(details)
    if is_retryable(code, details):
        return Unavailable(f"{code.name}: {details}")
    return InternalError(f"{code.name}: {details}")
