"""The sync guard: commit charges the actual, release charges nothing, leaving the block
otherwise charges the estimate (abandoned), NotCalled releases; denials carry their fields."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import tollgate
from cluster import Cluster, new_id, scope_agent, scope_tenant
from helpers import audit_events, used, with_budgets
from tollgate._pb import tollgate_pb2 as pb


@pytest.fixture
def client(cluster: Cluster) -> Iterator[tollgate.Client]:
    with tollgate.Client(cluster.addrs) as c:
        yield c


def test_commit_charges_the_actual_and_reports_the_result(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    with_budgets(cluster, tenant)
    with client.reserve(
        tenant=tenant, agent="bot", tool="llm:gpt-4o", tokens=4000, cost_usd=0.06
    ) as r:
        assert r.reservation_id is not None and not r.is_local
        assert r.tightest is not None
        assert used(client, tenant, "cost") == (0, 60_000)
        committed = r.commit(tokens=3120, cost_usd=0.031)
    assert committed == tollgate.Committed(overrun=False, late=False, cost_micros=31_000)
    assert r.result == committed
    assert used(client, tenant, "cost") == (31_000, 0)
    assert used(client, tenant, "tokens") == (3120, 0)
    assert used(client, tenant, "calls") == (1, 0)


def test_commit_above_the_estimate_is_charged_and_flagged_overrun(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    with_budgets(cluster, tenant)
    with client.reserve(tenant=tenant, agent="bot", tool="t", tokens=10, cost_micros=100) as r:
        result = r.commit(tokens=50, cost_micros=700)
    assert result.overrun
    assert used(client, tenant, "cost") == (700, 0)


def test_release_charges_nothing(cluster: Cluster, tenant: str, client: tollgate.Client) -> None:
    with_budgets(cluster, tenant)
    with client.reserve(tenant=tenant, agent="bot", tool="t", tokens=10, cost_usd="0.5") as r:
        r.release()
    assert used(client, tenant, "cost") == (0, 0)
    assert used(client, tenant, "calls") == (0, 0)


def test_not_called_releases_and_is_swallowed(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    with_budgets(cluster, tenant)
    with client.reserve(tenant=tenant, agent="bot", tool="t", tokens=10, cost_usd=1) as r:
        raise tollgate.NotCalled()
    assert r.result is None
    assert used(client, tenant, "cost") == (0, 0)


def test_leaving_the_block_charges_the_estimate_as_abandoned(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    with_budgets(cluster, tenant)
    with client.reserve(tenant=tenant, agent="bot", tool="t", tokens=40, cost_usd=0.25):
        pass
    assert used(client, tenant, "cost") == (250_000, 0)
    assert used(client, tenant, "tokens") == (40, 0)
    assert any("abandoned" in event for event in audit_events(cluster, tenant))


def test_an_exception_in_the_block_charges_the_estimate_and_propagates(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    with_budgets(cluster, tenant)
    with pytest.raises(KeyError):
        with client.reserve(tenant=tenant, agent="bot", tool="t", tokens=7, cost_micros=900):
            raise KeyError("the tool crashed")
    assert used(client, tenant, "cost") == (900, 0)


def test_a_reservation_settles_once(cluster: Cluster, tenant: str, client: tollgate.Client) -> None:
    r = client.reserve(tenant=tenant, agent="bot", tool="t", tokens=1)
    r.commit(tokens=1)
    with pytest.raises(tollgate.InvalidRequest, match="already settled"):
        r.release()


def test_a_follower_points_the_client_at_the_leader(cluster: Cluster, tenant: str) -> None:
    leader = cluster.leader()
    assert leader is not None
    followers = [addr for node, addr in enumerate(cluster.addrs, 1) if node != leader]
    with tollgate.Client([*followers, cluster.addrs[leader - 1]]) as client:
        client.reserve(tenant=tenant, agent="bot", tool="t").release()
        assert client.leader == cluster.addrs[leader - 1]


def test_budget_denial_names_the_limit(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    cluster.put_limit(tenant, "tok-cap", scope_tenant(), pb.DIMENSION_TOKENS, budget=1000)
    with pytest.raises(tollgate.Denied) as denied:
        client.reserve(tenant=tenant, agent="bot", tool="t", tokens=1500)
    assert denied.value.limit_id == "tok-cap"
    assert denied.value.scope == "tenant"
    assert denied.value.dimension == "tokens"
    assert denied.value.remaining == 1000
    assert denied.value.retry_after is None


def test_rate_denial_says_when_to_retry(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    cluster.put_limit(
        tenant, "per-minute", scope_agent("bot"), pb.DIMENSION_CALLS, rate=(1, 60_000, 1)
    )
    client.reserve(tenant=tenant, agent="bot", tool="t").commit()
    with pytest.raises(tollgate.Denied) as denied:
        client.reserve(tenant=tenant, agent="bot", tool="t")
    assert denied.value.limit_id == "per-minute"
    assert denied.value.scope == "agent:bot"
    assert denied.value.dimension == "calls"
    assert denied.value.retry_after is not None
    assert 0 < denied.value.retry_after <= 60.0
    # Another agent is not limited by it.
    client.reserve(tenant=tenant, agent="other", tool="t").release()


def test_frozen_agent_is_refused(cluster: Cluster, tenant: str, client: tollgate.Client) -> None:
    cluster.freeze(tenant, "bot")
    with pytest.raises(tollgate.Frozen) as frozen:
        client.reserve(tenant=tenant, agent="bot", tool="t")
    assert frozen.value.agent == "bot"
    cluster.freeze(tenant)
    with pytest.raises(tollgate.Frozen) as frozen:
        client.reserve(tenant=tenant, agent="other", tool="t")
    assert frozen.value.agent is None


def test_the_same_call_repeated_trips_the_agent(cluster: Cluster, client: tollgate.Client) -> None:
    repeat_max = 3
    tenant = cluster.put_tenant(
        repeat_max=repeat_max, repeat_window_ms=60_000, trip_cooldown_ms=30_000
    )
    same = tollgate.fingerprint("search", {"q": "the same query"})
    granted = 0
    with pytest.raises(tollgate.Tripped) as tripped:
        for _ in range(repeat_max + 1):
            client.reserve(tenant=tenant, agent="looper", tool="search", fingerprint=same).release()
            granted += 1
    assert granted < repeat_max
    assert tripped.value.cause == "repetition"
    assert tripped.value.until is not None
    assert 0 < tripped.value.until - time.time() <= 30.0
    assert same in str(tripped.value)
    other = tollgate.fingerprint("search", {"q": "another query"})
    client.reserve(tenant=tenant, agent="worker", tool="search", fingerprint=other).release()


def test_the_same_call_with_a_new_value_each_time_trips_the_agent_by_its_shape(
    cluster: Cluster, client: tollgate.Client
) -> None:
    # A day's window, so it does not roll mid-test; spend velocity and repetition stay out.
    tenant = cluster.put_tenant(
        repeat_max=0,
        velocity_window_ms=86_400_000,
        velocity_floor=1_000_000_000_000,
        shape_floor=3,
    )

    def reserve(agent: str, page: int) -> tollgate.Reservation:
        args = {"q": "news", "page": page}
        return client.reserve(
            tenant=tenant,
            agent=agent,
            tool="search",
            fingerprint=tollgate.fingerprint("search", args),
            shape=tollgate.fingerprint_shape("search", args),
        )

    for page in range(3):
        reserve("pager", page).release()
    with pytest.raises(tollgate.Tripped) as tripped:
        reserve("pager", 3)
    assert tripped.value.cause == "shape_velocity"
    assert tollgate.fingerprint_shape("search", {"q": "", "page": 0}) in str(tripped.value)
    reserve("worker", 0).release()
    with pytest.raises(tollgate.InvalidRequest):
        client.reserve(tenant=tenant, agent="worker", tool="search", shape="")
    with pytest.raises(tollgate.InvalidRequest):
        client.reserve(tenant=tenant, agent="worker", tool="search", shape="s" * 1_000)


def test_a_retry_with_the_same_request_id_is_one_charge(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    with_budgets(cluster, tenant)
    request_id = new_id()
    first = client.reserve(tenant=tenant, agent="bot", tool="t", tokens=5, request_id=request_id)
    again = client.reserve(tenant=tenant, agent="bot", tool="t", tokens=5, request_id=request_id)
    assert first.reservation_id == again.reservation_id
    assert used(client, tenant, "tokens") == (0, 5)
    commit_id = new_id()
    first.commit(tokens=5, request_id=commit_id)
    again.commit(tokens=5, request_id=commit_id)
    record_id = new_id()
    client.record(tenant=tenant, agent="bot", tool="t", tokens=11, request_id=record_id)
    client.record(tenant=tenant, agent="bot", tool="t", tokens=11, request_id=record_id)
    assert used(client, tenant, "tokens") == (16, 0)
    assert used(client, tenant, "calls") == (2, 0)


def test_the_same_request_id_with_another_payload_is_refused(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    request_id = new_id()
    client.record(tenant=tenant, agent="bot", tool="t", tokens=1, request_id=request_id)
    with pytest.raises(tollgate.RequestIdReused):
        client.record(tenant=tenant, agent="bot", tool="t", tokens=2, request_id=request_id)


def test_record_charges_without_a_reservation(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    with_budgets(cluster, tenant)
    assert client.record(tenant=tenant, agent="bot", tool="t", tokens=3, cost_usd=0.000_001) == 1
    assert used(client, tenant, "cost") == (1, 0)


def test_unknown_tenant_is_not_found(client: tollgate.Client) -> None:
    with pytest.raises(tollgate.NotFound):
        client.reserve(tenant=f"nobody-{new_id()}", agent="bot", tool="t")


def test_decorator_commits_the_estimate_after_the_call(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    with_budgets(cluster, tenant)

    @client.guard(tenant=tenant, agent="bot", tool="search", tokens=0, cost_usd=0.002)
    def search(query: str) -> list[str]:
        assert used(client, tenant, "cost") == (0, 2000), "held during the call"
        return [query.upper()]

    assert search("tollgate") == ["TOLLGATE"]
    assert used(client, tenant, "cost") == (2000, 0)


def test_decorator_releases_on_not_called_and_abandons_on_an_error(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    with_budgets(cluster, tenant)

    @client.guard(tenant=tenant, agent="bot", tool="search", cost_micros=500)
    def search(mode: str) -> None:
        if mode == "skip":
            raise tollgate.NotCalled()
        raise RuntimeError("tool failed")

    with pytest.raises(tollgate.NotCalled):
        search("skip")
    assert used(client, tenant, "cost") == (0, 0)
    with pytest.raises(RuntimeError):
        search("fail")
    assert used(client, tenant, "cost") == (500, 0)


def test_decorator_denial_stops_the_call(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    cluster.put_limit(tenant, "tiny", scope_tenant(), pb.DIMENSION_COST, budget=100)
    calls: list[int] = []

    @client.guard(tenant=tenant, agent="bot", tool="search", cost_micros=500)
    def search() -> None:
        calls.append(1)

    with pytest.raises(tollgate.Denied):
        search()
    assert calls == []
