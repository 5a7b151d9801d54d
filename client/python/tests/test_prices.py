"""Costs derived from usage by the tenant's price table: an estimate by model and tokens, a
commit and a record with usage charged exactly what the table says, an unknown model refused.
(These need a server with price tables; older builds answer PutPrice UNIMPLEMENTED.)"""

from __future__ import annotations

import pytest

import tollgate
from cluster import Cluster
from helpers import used, with_budgets

# $2.50 per million input tokens, $10 per million output tokens: whole micros per token
# count used below, so no rounding is involved.
INPUT_MICROS_PER_M = 2_500_000
OUTPUT_MICROS_PER_M = 10_000_000


@pytest.fixture
def priced(cluster: Cluster, tenant: str) -> str:
    with_budgets(cluster, tenant)
    cluster.put_price(tenant, "gpt-4o", INPUT_MICROS_PER_M, OUTPUT_MICROS_PER_M)
    return tenant


def test_commit_with_usage_is_charged_from_the_price_table(cluster: Cluster, priced: str) -> None:
    with tollgate.Client(cluster.addrs) as client:
        with client.reserve(
            tenant=priced,
            agent="bot",
            tool="llm:gpt-4o",
            model="gpt-4o",
            input_tokens=1000,
            max_output_tokens=500,
        ) as r:
            # 1000 * 2.5 + 500 * 10 micros held as the estimate.
            assert used(client, priced, "cost") == (0, 7_500)
            result = r.commit(
                usage=tollgate.Usage(model="gpt-4o", input_tokens=1000, output_tokens=200)
            )
        assert result.cost_micros == 2_500 + 2_000
        assert used(client, priced, "cost") == (4_500, 0)
        assert used(client, priced, "tokens") == (1_200, 0)


def test_record_with_usage_returns_the_cost_charged(cluster: Cluster, priced: str) -> None:
    with tollgate.Client(cluster.addrs) as client:
        cost = client.record(
            tenant=priced, agent="bot", tool="llm:gpt-4o", usage=tollgate.Usage("gpt-4o", 400, 100)
        )
        assert cost == 1_000 + 1_000
        assert used(client, priced, "cost") == (2_000, 0)


def test_usage_of_a_model_without_a_price_is_refused(cluster: Cluster, priced: str) -> None:
    with tollgate.Client(cluster.addrs) as client:
        with pytest.raises(
            (tollgate.InvalidRequest, tollgate.NotFound, tollgate.FailedPrecondition)
        ):
            client.record(
                tenant=priced,
                agent="bot",
                tool="llm",
                usage=tollgate.Usage("no-such-model", 10, 10),
            )
        assert used(client, priced, "cost") == (0, 0)
