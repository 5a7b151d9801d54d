"""Tollgate's Python client: reserve spend before an LLM or tool call, commit what it cost.

client = tollgate.Client(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"])
with client.reserve(tenant="acme", agent="bot", tool="llm:gpt-4o", cost_usd=0.06) as r:
    r.commit(tokens=3120, cost_usd=0.031)
"""

from ._async import AsyncClient, AsyncReservation
from ._errors import (
    Denied,
    Exhausted,
    FailedPrecondition,
    Frozen,
    InternalError,
    InvalidRequest,
    NotCalled,
    NotFound,
    PermissionDenied,
    RequestIdReused,
    TollgateError,
    Tripped,
    Unavailable,
)
from ._fingerprint import fingerprint, fingerprint_shape
from ._sync import Client, Reservation
from ._types import Committed, FailOpen, LimitUsage, Remaining, Tls, Usage

__all__ = [
    "AsyncClient",
    "AsyncReservation",
    "Client",
    "Committed",
    "Denied",
    "Exhausted",
    "FailOpen",
    "FailedPrecondition",
    "Frozen",
    "InternalError",
    "InvalidRequest",
    "LimitUsage",
    "NotCalled",
    "NotFound",
    "PermissionDenied",
    "Remaining",
    "RequestIdReused",
    "Reservation",
    "Tls",
    "TollgateError",
    "Tripped",
    "Unavailable",
    "Usage",
    "fingerprint",
    "fingerprint_shape",
]
