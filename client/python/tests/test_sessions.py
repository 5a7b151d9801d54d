"""Sessions and alerts from Python: workers of one task name the same session and share its
budget, a call past it is denied naming the session limit, another session is served; and
usage names the highest soft threshold a budget has crossed."""

from __future__ import annotations

import pytest

import tollgate
from cluster import Cluster
from tollgate._pb import tollgate_pb2 as pb


def session_used(client: tollgate.Client, tenant: str, session: str) -> int:
    rows = [r for r in client.usage(tenant=tenant, session=session) if r.limit_id == "task-cost"]
    assert len(rows) == 1 and rows[0].scope == "each-session"
    return rows[0].used


def test_workers_of_one_task_share_the_session_budget(cluster: Cluster, tenant: str) -> None:
    scope = pb.Scope(each_session=pb.Empty())
    cluster.put_limit(tenant, "task-cost", scope, pb.DIMENSION_COST, budget=100_000)
    with tollgate.Client(cluster.addrs) as a, tollgate.Client(cluster.addrs) as b:
        for client, agent in ((a, "planner"), (b, "worker")):
            with client.reserve(tenant, agent, "llm", cost_micros=40_000, session="job-1") as r:
                r.commit(cost_micros=40_000)
        b.record(tenant, "worker", "search", cost_micros=10_000, session="job-1")
        assert session_used(a, tenant, "job-1") == 90_000
        with pytest.raises(tollgate.Denied) as denied:
            a.reserve(tenant, "planner", "llm", cost_micros=20_000, session="job-1")
        assert (denied.value.limit_id, denied.value.scope) == ("task-cost", "each-session")
        with a.reserve(tenant, "planner", "llm", cost_micros=100_000, session="job-2") as r:
            r.release()
        assert session_used(a, tenant, "job-2") == 0


def test_a_bad_session_name_is_refused(cluster: Cluster, tenant: str) -> None:
    with tollgate.Client(cluster.addrs) as client:
        with pytest.raises(tollgate.InvalidRequest):
            client.reserve(tenant, "bot", "llm", cost_micros=1, session="has space")


def test_usage_names_the_highest_threshold_crossed(cluster: Cluster, tenant: str) -> None:
    scope = pb.Scope(tenant=pb.Empty())
    cluster.put_limit(tenant, "spend", scope, pb.DIMENSION_COST, budget=1_000)
    with tollgate.Client(cluster.addrs) as client:
        client.record(tenant, "bot", "llm", cost_micros=499)
        assert [r.alerted_percent for r in client.usage(tenant)] == [0]
        client.record(tenant, "bot", "llm", cost_micros=351)
        assert [r.alerted_percent for r in client.usage(tenant)] == [80]
