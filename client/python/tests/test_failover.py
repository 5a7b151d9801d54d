"""What a worker relies on when nodes die: a leader killed mid-run loses no acknowledged
commit and charges none twice; a cluster that is down fails fast (and stays fast) instead of
stalling every call for the deadline; failing open is capped and its spend reported later."""

from __future__ import annotations

import functools
import statistics
import threading
import time

import pytest

import tollgate
from cluster import Cluster
from helpers import timed, used, with_budgets

# A down cluster must answer well inside this (the deadline is 5 s).
FAIL_FAST_MAX_S = 1.0
# Reserve+commit pairs before and after the kill.
PAIRS_EACH_SIDE = 25
LOOP_WAIT_S = 30.0


def wait_until(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_leader_killed_mid_run_counts_every_acknowledged_commit_once(own_cluster: Cluster) -> None:
    tenant = own_cluster.put_tenant()
    with_budgets(own_cluster, tenant)
    client = tollgate.Client(own_cluster.addrs)
    acked: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                r = client.reserve(tenant=tenant, agent="bot", tool="t", tokens=1)
                r.commit(tokens=1)
                acked.append(1)
            except tollgate.TollgateError as error:
                errors.append(error)

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        wait_until(lambda: len(acked) >= PAIRS_EACH_SIDE, LOOP_WAIT_S, "pairs before the kill")
        old_leader = own_cluster.leader()
        assert old_leader is not None
        own_cluster.kill(old_leader)
        at_kill = len(acked)
        wait_until(
            lambda: len(acked) >= at_kill + PAIRS_EACH_SIDE, LOOP_WAIT_S, "pairs after the kill"
        )
    finally:
        stop.set()
        worker.join()
    assert errors == [], "a 5 s deadline rides out an election"
    assert own_cluster.wait_for_leader() != old_leader
    assert used(client, tenant, "tokens") == (len(acked), 0)
    assert used(client, tenant, "calls") == (len(acked), 0)
    client.close()


def reserve_once(client: tollgate.Client) -> object:
    return client.reserve(tenant="acme", agent="bot", tool="t", tokens=1)


def test_a_down_cluster_fails_fast_and_stays_fast(own_cluster: Cluster) -> None:
    tenant = own_cluster.put_tenant()
    warm = tollgate.Client(own_cluster.addrs)
    warm.reserve(tenant=tenant, agent="bot", tool="t").release()
    assert warm.leader is not None
    for node in list(own_cluster.procs):
        own_cluster.kill(node)
    cold = tollgate.Client(own_cluster.addrs)
    for client in (warm, cold):
        elapsed, outcome = timed(functools.partial(reserve_once, client))
        assert isinstance(outcome, tollgate.Unavailable), outcome
        assert elapsed < FAIL_FAST_MAX_S
        assert "refused" in str(outcome)
        durations = []
        for _ in range(20):
            elapsed, outcome = timed(functools.partial(reserve_once, client))
            assert isinstance(outcome, tollgate.Unavailable), outcome
            durations.append(elapsed)
        assert max(durations) < FAIL_FAST_MAX_S
        assert statistics.median(durations) < 0.1


def test_the_breaker_lets_the_returning_cluster_through(own_cluster: Cluster) -> None:
    tenant = own_cluster.put_tenant()
    with_budgets(own_cluster, tenant)
    client = tollgate.Client(own_cluster.addrs)
    for node in list(own_cluster.procs):
        own_cluster.kill(node)
    with pytest.raises(tollgate.Unavailable):
        client.reserve(tenant=tenant, agent="bot", tool="t")
    own_cluster.restart()
    granted: list[tollgate.Reservation] = []

    def try_reserve() -> bool:
        try:
            granted.append(client.reserve(tenant=tenant, agent="bot", tool="t", tokens=3))
        except tollgate.Unavailable:
            return False
        return True

    # The breaker's probe interval is 500 ms and a channel reconnects within a second.
    wait_until(try_reserve, 10.0, "a grant after the cluster came back")
    granted[0].commit(tokens=3)
    assert used(client, tenant, "tokens") == (3, 0)


def test_fail_open_grants_locally_up_to_the_cap_and_reports_the_spend_later(
    own_cluster: Cluster,
) -> None:
    tenant = own_cluster.put_tenant()
    with_budgets(own_cluster, tenant)
    client = tollgate.Client(own_cluster.addrs, fail_open=tollgate.FailOpen(cost_usd=0.3))
    for node in list(own_cluster.procs):
        own_cluster.kill(node)

    elapsed, first = timed(
        lambda: client.reserve(tenant=tenant, agent="bot", tool="t", tokens=10, cost_usd=0.1)
    )
    assert isinstance(first, tollgate.Reservation) and first.is_local
    assert elapsed < FAIL_FAST_MAX_S
    assert first.reservation_id is None
    assert first.commit(tokens=12, cost_usd=0.2) == tollgate.Committed(True, False, 200_000)
    with client.reserve(tenant=tenant, agent="bot", tool="t", tokens=5, cost_usd=0.05) as second:
        assert second.is_local  # left without commit: spent at its estimate
    with client.reserve(tenant=tenant, agent="bot", tool="t", tokens=1, cost_usd=0.05) as third:
        third.release()  # gives its hold back: 0.25 of the 0.30 cap is spent
    with pytest.raises(tollgate.Unavailable, match="local cap"):
        client.reserve(tenant=tenant, agent="bot", tool="t", tokens=1, cost_usd=0.06)
    assert client.offline_reports_pending == 2

    own_cluster.restart()

    def reported() -> bool:
        try:
            client.usage(tenant=tenant)  # a successful call reports what is pending
        except tollgate.Unavailable:
            return False
        return client.offline_reports_pending == 0

    wait_until(reported, 15.0, "offline spend reported")
    assert used(client, tenant, "tokens") == (17, 0)
    assert used(client, tenant, "cost") == (250_000, 0)
    assert used(client, tenant, "calls") == (2, 0)
    offline = [r for r in own_cluster.audit(tenant) if '"offline":true' in r.event_json]
    assert len(offline) == 2
