"""AsyncClient on the main paths: the async guard's commit, release, abandon and NotCalled,
denials, one charge per request id, the async decorator, and failing fast when down."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

import tollgate
from cluster import Cluster, new_id, scope_tenant
from helpers import audit_events, with_budgets
from tollgate._pb import tollgate_pb2 as pb

FAIL_FAST_MAX_S = 1.0


async def aused(client: tollgate.AsyncClient, tenant: str, limit_id: str) -> tuple[int, int]:
    for row in await client.usage(tenant=tenant):
        if row.limit_id == limit_id:
            return row.used, row.held
    raise AssertionError(f"no limit {limit_id!r}")


@pytest.mark.asyncio
async def test_async_guard_commit_release_and_not_called(cluster: Cluster, tenant: str) -> None:
    with_budgets(cluster, tenant)
    async with tollgate.AsyncClient(cluster.addrs) as client:
        async with client.reserve(
            tenant=tenant, agent="bot", tool="llm", tokens=100, cost_usd=0.06
        ) as r:
            assert await aused(client, tenant, "cost") == (0, 60_000)
            result = await r.commit(tokens=80, cost_usd=0.04)
        assert result == tollgate.Committed(False, False, 40_000)
        async with client.reserve(tenant=tenant, agent="bot", tool="llm", cost_usd=1) as r:
            await r.release()
        async with client.reserve(tenant=tenant, agent="bot", tool="llm", cost_usd=1):
            raise tollgate.NotCalled()
        r = await client.reserve(tenant=tenant, agent="bot", tool="llm", cost_usd=0.5)
        await r.release()
        assert await aused(client, tenant, "cost") == (40_000, 0)
        assert await aused(client, tenant, "calls") == (1, 0)


@pytest.mark.asyncio
async def test_async_guard_left_without_settling_charges_the_estimate(
    cluster: Cluster, tenant: str
) -> None:
    with_budgets(cluster, tenant)
    async with tollgate.AsyncClient(cluster.addrs) as client:
        with pytest.raises(ValueError):
            async with client.reserve(
                tenant=tenant, agent="bot", tool="llm", tokens=9, cost_micros=333
            ):
                raise ValueError("the call failed after it may have been billed")
        assert await aused(client, tenant, "cost") == (333, 0)
    assert any("abandoned" in event for event in audit_events(cluster, tenant))


@pytest.mark.asyncio
async def test_async_denial_carries_the_limit(cluster: Cluster, tenant: str) -> None:
    cluster.put_limit(tenant, "usd", scope_tenant(), pb.DIMENSION_COST, budget=100_000)
    async with tollgate.AsyncClient(cluster.addrs) as client:
        with pytest.raises(tollgate.Denied) as denied:
            await client.reserve(tenant=tenant, agent="bot", tool="llm", cost_usd="0.2")
    assert (denied.value.limit_id, denied.value.scope, denied.value.dimension) == (
        "usd",
        "tenant",
        "cost",
    )
    assert denied.value.remaining == 100_000


@pytest.mark.asyncio
async def test_async_same_request_id_is_one_charge(cluster: Cluster, tenant: str) -> None:
    with_budgets(cluster, tenant)
    async with tollgate.AsyncClient(cluster.addrs) as client:
        request_id = new_id()
        first = await client.reserve(
            tenant=tenant, agent="bot", tool="t", tokens=4, request_id=request_id
        )
        again = await client.reserve(
            tenant=tenant, agent="bot", tool="t", tokens=4, request_id=request_id
        )
        assert first.reservation_id == again.reservation_id
        await first.commit(tokens=4)
        record_id = new_id()
        for _ in range(2):
            await client.record(
                tenant=tenant, agent="bot", tool="t", tokens=6, request_id=record_id
            )
        assert await aused(client, tenant, "tokens") == (10, 0)


@pytest.mark.asyncio
async def test_async_concurrent_reserves_are_each_answered(cluster: Cluster, tenant: str) -> None:
    with_budgets(cluster, tenant)
    async with tollgate.AsyncClient(cluster.addrs) as client:

        async def pair() -> None:
            async with client.reserve(tenant=tenant, agent="bot", tool="t", tokens=2) as r:
                await r.commit(tokens=2)

        await asyncio.gather(*(pair() for _ in range(20)))
        assert await aused(client, tenant, "tokens") == (40, 0)


@pytest.mark.asyncio
async def test_async_decorator(cluster: Cluster, tenant: str) -> None:
    with_budgets(cluster, tenant)
    async with tollgate.AsyncClient(cluster.addrs) as client:

        @client.guard(tenant=tenant, agent="bot", tool="search", cost_micros=250)
        async def search(query: str) -> str:
            if query == "skip":
                raise tollgate.NotCalled()
            return query[::-1]

        assert await search("abc") == "cba"
        with pytest.raises(tollgate.NotCalled):
            await search("skip")
        assert await aused(client, tenant, "cost") == (250, 0)
        with pytest.raises(TypeError):
            client.guard(tenant=tenant, agent="bot", tool="search")(lambda: None)  # type: ignore[arg-type, return-value]


@pytest.mark.asyncio
async def test_async_down_cluster_fails_fast_and_stays_fast(own_cluster: Cluster) -> None:
    tenant = own_cluster.put_tenant()
    async with tollgate.AsyncClient(own_cluster.addrs) as client:
        await (await client.reserve(tenant=tenant, agent="bot", tool="t")).release()
        for node in list(own_cluster.procs):
            own_cluster.kill(node)
        durations = []
        for _ in range(21):
            start = time.monotonic()
            with pytest.raises(tollgate.Unavailable):
                await client.reserve(tenant=tenant, agent="bot", tool="t")
            durations.append(time.monotonic() - start)
        assert max(durations) < FAIL_FAST_MAX_S
        assert statistics.median(durations) < 0.1


@pytest.mark.asyncio
async def test_async_fail_open_grants_locally(own_cluster: Cluster) -> None:
    tenant = own_cluster.put_tenant()
    for node in list(own_cluster.procs):
        own_cluster.kill(node)
    client = tollgate.AsyncClient(own_cluster.addrs, fail_open=tollgate.FailOpen(calls=1))
    async with client.reserve(tenant=tenant, agent="bot", tool="t", tokens=5) as r:
        assert r.is_local
        await r.commit(tokens=5)
    with pytest.raises(tollgate.Unavailable, match="local cap"):
        await client.reserve(tenant=tenant, agent="bot", tool="t")
    assert client.offline_reports_pending == 1


@pytest.mark.asyncio
async def test_concurrent_operations_share_batches_and_get_their_own_answers(
    cluster: Cluster, tenant: str
) -> None:
    cluster.put_limit(tenant, "small", scope_tenant(), pb.DIMENSION_TOKENS, budget=1000)
    async with tollgate.AsyncClient(cluster.addrs) as client:
        await (await client.reserve(tenant=tenant, agent="bot", tool="t")).release()
        leader = client.leader
        assert leader is not None
        # Count the Batch RPCs the leader's coalescer sends (observing, not replacing, it).
        coalescer = client._node(leader)[2]
        batch = coalescer._stub.Batch
        sent: list[int] = []

        def counting(request: pb.BatchRequest, **kwargs: object) -> object:
            sent.append(len(request.ops))
            return batch(request, **kwargs)

        coalescer._stub.Batch = counting
        reserves = [
            client.reserve(tenant=tenant, agent="bot", tool="t", tokens=10) for _ in range(30)
        ]
        denied = client.reserve(tenant=tenant, agent="bot", tool="t", tokens=5000)
        unknown = client.reserve(tenant=f"nobody-{new_id()}", agent="bot", tool="t")
        outcomes = await asyncio.gather(*reserves, denied, unknown, return_exceptions=True)
    granted = [o for o in outcomes[:30] if isinstance(o, tollgate.AsyncReservation)]
    assert len(granted) == 30
    assert len({r.reservation_id for r in granted}) == 30
    assert isinstance(outcomes[30], tollgate.Denied)
    assert isinstance(outcomes[31], tollgate.NotFound)
    assert sum(sent) == 32
    assert len(sent) < 32, f"no two operations shared a batch: {sent}"


@pytest.mark.asyncio
async def test_async_leader_killed_under_concurrent_load_counts_every_commit_once(
    own_cluster: Cluster,
) -> None:
    tenant = own_cluster.put_tenant()
    with_budgets(own_cluster, tenant)
    acked: list[int] = []
    stop = asyncio.Event()

    async def worker(client: tollgate.AsyncClient) -> None:
        while not stop.is_set():
            async with client.reserve(tenant=tenant, agent="bot", tool="t", tokens=1) as r:
                await r.commit(tokens=1)
            acked.append(1)

    async def wait_for(count: int) -> None:
        deadline = time.monotonic() + 30.0
        while len(acked) < count:
            assert time.monotonic() < deadline, f"only {len(acked)} of {count} commits"
            await asyncio.sleep(0.01)

    async with tollgate.AsyncClient(own_cluster.addrs) as client:
        workers = [asyncio.create_task(worker(client)) for _ in range(8)]
        await wait_for(50)
        old_leader = own_cluster.leader()
        assert old_leader is not None
        own_cluster.kill(old_leader)
        await wait_for(len(acked) + 50)
        stop.set()
        await asyncio.gather(*workers)  # any worker's error fails the test here
        assert await aused(client, tenant, "tokens") == (len(acked), 0)
    assert own_cluster.wait_for_leader() != old_leader
