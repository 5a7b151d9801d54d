"""Small helpers shared by the test modules."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import tollgate
from cluster import Cluster, scope_tenant
from tollgate._pb import tollgate_pb2 as pb

T = TypeVar("T")

# Budgets large enough never to deny, so usage shows what was charged.
BIG = 10**12


def with_budgets(cluster: Cluster, tenant: str) -> None:
    """Tenant-wide lifetime budgets on tokens, cost and calls: usage then reports all three."""
    cluster.put_limit(tenant, "tokens", scope_tenant(), pb.DIMENSION_TOKENS, budget=BIG)
    cluster.put_limit(tenant, "cost", scope_tenant(), pb.DIMENSION_COST, budget=BIG)
    cluster.put_limit(tenant, "calls", scope_tenant(), pb.DIMENSION_CALLS, budget=BIG)


def used(client: tollgate.Client, tenant: str, limit_id: str) -> tuple[int, int]:
    """(used, held) of one limit."""
    for row in client.usage(tenant=tenant):
        if row.limit_id == limit_id:
            return row.used, row.held
    raise AssertionError(f"no limit {limit_id!r} in the usage of {tenant}")


def timed(fn: Callable[[], T]) -> tuple[float, T | BaseException]:
    start = time.monotonic()
    try:
        result: T | BaseException = fn()
    except BaseException as error:
        result = error
    return time.monotonic() - start, result


def audit_events(cluster: Cluster, tenant: str) -> list[str]:
    return [record.event_json for record in cluster.audit(tenant)]
