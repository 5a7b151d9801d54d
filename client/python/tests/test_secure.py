"""The client against a cluster secured as in production: TLS to the nodes (the cluster CA
from `tollgate certs init`) and API keys with roles."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tollgate
from cluster import Cluster, new_id, scope_tenant
from tollgate._pb import tollgate_pb2 as pb


@pytest.fixture(scope="module")
def secure_cluster() -> Iterator[Cluster]:
    c = Cluster(secure=True)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def worker_key(cluster: Cluster, tenant: str) -> str:
    request = pb.CreateKeyRequest(
        request_id=new_id(), tenant=tenant, role=pb.KEY_ROLE_WORKER, name="python-test"
    )
    return str(cluster.admin("CreateKey", request).api_key)


def test_a_worker_key_over_tls_reserves_commits_and_is_denied(secure_cluster: Cluster) -> None:
    tenant = secure_cluster.put_tenant()
    secure_cluster.put_limit(tenant, "calls", scope_tenant(), pb.DIMENSION_CALLS, budget=1)
    tls = tollgate.Tls(ca=str(secure_cluster.ca_path))
    key = worker_key(secure_cluster, tenant)
    with tollgate.Client(secure_cluster.addrs, token=key, tls=tls) as client:
        with client.reserve(tenant=tenant, agent="bot", tool="search") as r:
            r.commit(tokens=0)
        with pytest.raises(tollgate.Denied) as denied:
            client.reserve(tenant=tenant, agent="bot", tool="search")
        assert denied.value.limit_id == "calls"
        # The key is its tenant's: another tenant's budget is out of its reach.
        other = secure_cluster.put_tenant()
        with pytest.raises(tollgate.PermissionDenied):
            client.reserve(tenant=other, agent="bot", tool="search")


def test_without_a_key_or_the_ca_nothing_is_granted(secure_cluster: Cluster) -> None:
    tenant = secure_cluster.put_tenant()
    tls = tollgate.Tls(ca=str(secure_cluster.ca_path))
    with tollgate.Client(secure_cluster.addrs, token=None, tls=tls, deadline=2.0) as client:
        with pytest.raises(tollgate.PermissionDenied):
            client.reserve(tenant=tenant, agent="bot", tool="search")
    key = worker_key(secure_cluster, tenant)
    # Clear text to a TLS listener never gets an answer that grants anything.
    with tollgate.Client(secure_cluster.addrs, token=key, deadline=1.0) as client:
        with pytest.raises(tollgate.Unavailable):
            client.reserve(tenant=tenant, agent="bot", tool="search")
