"""Arguments are checked before any RPC: money is converted to micro-units exactly and
rounded up; negative, NaN and infinite amounts, bad endpoints and bad configs are refused
with InvalidRequest. No cluster is needed: the endpoints below are never dialled."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest

import tollgate
from tollgate._types import to_micros

NOWHERE = ["127.0.0.1:1"]


@pytest.mark.parametrize(
    ("money", "micros"),
    [
        (0.06, 60_000),
        (0.07, 70_000),
        (0.1 + 0.2, 300_001),  # 0.30000000000000004 is what the caller passed
        ("0.031", 31_000),
        (" 5.25 ", 5_250_000),
        (Decimal("0.0000001"), 1),
        ("0.0000011", 2),
        (3, 3_000_000),
        (0, 0),
        (1e-7, 1),
    ],
)
def test_money_becomes_micros_exactly_rounding_up(money: Any, micros: int) -> None:
    assert to_micros("cost_usd", money) == micros


@pytest.mark.parametrize(
    "money",
    [-0.01, "-1", math.nan, math.inf, "inf", "NaN", Decimal("-0.5"), "abc", True, None, 2e20],
)
def test_bad_money_is_refused_before_any_rpc(money: Any) -> None:
    client = tollgate.Client(NOWHERE)
    not_money: Any = object()
    with pytest.raises(tollgate.InvalidRequest):
        client.reserve(
            tenant="acme", agent="bot", tool="t", cost_usd=not_money if money is None else money
        )
    assert client.leader is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tokens": -1},
        {"tokens": 1.5},
        {"calls": -1},
        {"tokens": 2**64},
        {"cost_usd": 1, "cost_micros": 1},
        {"ttl": 0},
        {"ttl": math.nan},
        {"model": "gpt-4o", "cost_usd": 1},
        {"input_tokens": 5},
        {"tenant": ""},
        {"agent": "x" * 129},
    ],
)
def test_bad_reserve_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"tenant": "acme", "agent": "bot", "tool": "t"}
    args.update(kwargs)
    with pytest.raises(tollgate.InvalidRequest):
        tollgate.Client(NOWHERE).reserve(**args)


@pytest.mark.parametrize(
    "endpoints",
    [
        [],
        ["no-port"],
        ["https://a:1"],
        ["grpc://a:1"],
        ["a:99999"],
        ["a:1"] * 17 + ["b:2"] * 0 + [f"h{i}:1" for i in range(17)],
    ],
)
def test_bad_endpoints_are_refused(endpoints: list[str]) -> None:
    with pytest.raises(tollgate.InvalidRequest):
        tollgate.Client(endpoints)


def test_usage_and_fail_open_check_their_fields() -> None:
    with pytest.raises(tollgate.InvalidRequest):
        tollgate.Usage(model="")
    with pytest.raises(tollgate.InvalidRequest):
        tollgate.Usage(model="m", input_tokens=-1)
    with pytest.raises(tollgate.InvalidRequest):
        tollgate.FailOpen()
    with pytest.raises(tollgate.InvalidRequest):
        tollgate.FailOpen(cost_usd=-1)
    assert tollgate.FailOpen(cost_usd="0.5").cap.cost_micros == 500_000


def test_token_from_the_environment(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("tg_abc_secret\n")
    monkeypatch.delenv("TOLLGATE_API_KEY", raising=False)
    monkeypatch.setenv("TOLLGATE_API_KEY_FILE", str(key_file))
    client = tollgate.Client(NOWHERE)
    assert client._metadata == (("authorization", "Bearer tg_abc_secret"),)
    monkeypatch.setenv("TOLLGATE_API_KEY", "from-env")
    assert tollgate.Client(NOWHERE)._metadata == (("authorization", "Bearer from-env"),)
    with pytest.raises(tollgate.InvalidRequest):
        tollgate.Client(NOWHERE, token="a\nb")


def test_nodes_refusing_connections_fail_in_milliseconds() -> None:
    client = tollgate.Client(["127.0.0.1:1", "127.0.0.1:2"])
    with pytest.raises(tollgate.Unavailable, match="refused"):
        client.reserve(tenant="acme", agent="bot", tool="t")


def test_a_cost_and_usage_together_are_refused() -> None:
    client = tollgate.Client(NOWHERE)
    with pytest.raises(tollgate.InvalidRequest, match="not both"):
        client.record(
            tenant="acme", agent="bot", tool="llm", cost_usd=1, usage=tollgate.Usage("gpt-4o", 1)
        )
