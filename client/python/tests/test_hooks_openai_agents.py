"""TollgateRunHooks against a real cluster: an OpenAI Agents SDK agent whose model (a fake, no
network) asks for a tool call every turn is stopped by Tollgate at exactly its budget, and what
the cluster counts is what the hooks committed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import pytest_asyncio
from agents import (
    Agent,
    ModelResponse,
    ModelSettings,
    Runner,
    Tool,
    function_tool,
    set_tracing_disabled,
)
from agents import Usage as AgentsUsage
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from agents.models.interface import Model, ModelTracing
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from openai.types.responses.response_usage import (
    InputTokensDetails,
    OutputTokensDetails,
)

import tollgate
from cluster import Cluster, scope_agent, scope_tenant
from tollgate._pb import tollgate_pb2 as pb
from tollgate.hooks import Estimate
from tollgate.hooks.openai_agents import TollgateRunHooks, TollgateStopped

AGENT = "support-bot"
# Turns the SDK allows a run: far above every budget below, so Tollgate is what stops it.
MAX_TURNS = 100

set_tracing_disabled(True)


def reported(input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> AgentsUsage:
    """A model's usage report, OpenAI style: input includes the cached tokens."""
    return AgentsUsage(
        requests=1,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached_tokens, cache_write_tokens=0),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
    )


def tool_call(n: int, query: str) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(
        id=f"fc_{n}",
        call_id=f"call_{n}",
        type="function_call",
        name="search",
        arguments=f'{{"query": "{query}"}}',
    )


def final_answer(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id="msg_final",
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
    )


# A turn of the fake model: its output items, given the number of the call (from 1).
Turn = Callable[[int], TResponseOutputItem | list[TResponseOutputItem]]


class ScriptedModel(Model):
    """A fake model: answers turn n with `turns[n]` (the last one forever), reporting `usage`
    for every call. A turn that is an exception is raised, as a failing provider would.
    """

    def __init__(self, turns: Sequence[Turn | Exception], usage: Sequence[AgentsUsage]) -> None:
        self.turns = list(turns)
        self.usage = list(usage)
        self.calls = 0

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> ModelResponse:
        turn = self.turns[min(self.calls, len(self.turns) - 1)]
        usage = self.usage[min(self.calls, len(self.usage) - 1)]
        self.calls += 1
        if isinstance(turn, Exception):
            raise turn
        items = turn(self.calls)
        output = items if isinstance(items, list) else [items]
        return ModelResponse(output=output, usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("the tests run the agent without streaming")


def looping_model(usage: AgentsUsage, *, same_arguments: bool = False) -> ScriptedModel:
    """Asks for a search every turn, never answers: a runaway."""

    def turn(n: int) -> TResponseOutputItem:
        return tool_call(n, "latest news" if same_arguments else f"page {n}")

    return ScriptedModel([turn], [usage])


class SearchTool:
    def __init__(self) -> None:
        self.runs = 0

        @function_tool
        def search(query: str) -> str:
            """Searches the web."""
            self.runs += 1
            return f"nothing found for {query}"

        self.tool = search


@pytest_asyncio.fixture
async def client(cluster: Cluster) -> AsyncIterator[tollgate.AsyncClient]:
    async with tollgate.AsyncClient(cluster.addrs) as client:
        yield client


async def usage_of(client: tollgate.AsyncClient, tenant: str, limit_id: str) -> tollgate.LimitUsage:
    rows = [row for row in await client.usage(tenant, agent=AGENT) if row.limit_id == limit_id]
    assert len(rows) == 1, f"expected one row for {limit_id}: {rows}"
    return rows[0]


def repeating_tenant(cluster: Cluster) -> str:
    """A tenant whose agents trip on the third call with the same fingerprint in a minute."""
    return cluster.put_tenant(
        expiry=pb.EXPIRY_POLICY_CHARGE,
        repeat_max=3,
        repeat_window_ms=60_000,
        velocity_window_ms=60_000,
        velocity_dimension=pb.DIMENSION_COST,
        velocity_floor=1_000_000,
    )


def shape_tenant(cluster: Cluster) -> str:
    """A tenant whose agents trip on the third call of one argument shape in a window (a
    day, so the window does not roll mid-test), and on nothing else."""
    return cluster.put_tenant(
        repeat_max=0,
        velocity_window_ms=86_400_000,
        velocity_floor=1_000_000_000_000,
        shape_floor=2,
    )


def abandoned_tokens(cluster: Cluster, tenant: str) -> list[int]:
    """The tokens of every commit the audit trail flags abandoned."""
    tokens = []
    for record in cluster.audit(tenant):
        event = json.loads(record.event_json)  # {"commit": {...}}, or a bare name
        if isinstance(event, dict) and event.get("commit", {}).get("abandoned"):
            tokens.append(record.amounts.tokens)
    return tokens


def put_budget(
    cluster: Cluster, tenant: str, limit_id: str, dimension: pb.Dimension, amount: int
) -> None:
    cluster.put_limit(tenant, limit_id, scope_agent(AGENT), dimension, budget=amount)


async def test_a_looping_agent_is_stopped_at_its_calls_budget(
    cluster: Cluster, tenant: str, client: tollgate.AsyncClient
) -> None:
    put_budget(cluster, tenant, "bot-calls", pb.DIMENSION_CALLS, 5)
    put_budget(cluster, tenant, "bot-tokens", pb.DIMENSION_TOKENS, 1_000_000)
    model, search = looping_model(reported(100, 20, cached_tokens=30)), SearchTool()
    agent = Agent(name=AGENT, model=model, tools=[search.tool])

    with pytest.raises(TollgateStopped) as stopped:
        async with TollgateRunHooks(client, tenant=tenant, agent=AGENT) as hooks:
            await Runner.run(agent, "find the news", hooks=hooks, max_turns=MAX_TURNS)

    # Five calls: LLM, search, LLM, search, LLM; the third search is refused before it runs.
    assert (model.calls, search.runs) == (3, 2)
    denied = stopped.value.error
    assert isinstance(denied, tollgate.Denied)
    assert (denied.limit_id, denied.dimension, denied.remaining) == (
        "bot-calls",
        "calls",
        0,
    )
    assert stopped.value.call == "search"
    assert "bot-calls" in str(stopped.value)
    assert stopped.value.run_data is not None and stopped.value.run_data.last_agent is agent
    calls, tokens = await usage_of(client, tenant, "bot-calls"), await usage_of(
        client, tenant, "bot-tokens"
    )
    assert (calls.used, calls.held) == (5, 0)
    # Each LLM call committed what the model reported: 70 input + 30 cached + 20 output.
    assert (tokens.used, tokens.held) == (3 * 120, 0)
    assert hooks.open_count == 0


async def test_a_looping_agent_is_stopped_at_its_tokens_budget_before_the_llm_call(
    cluster: Cluster, tenant: str, client: tollgate.AsyncClient
) -> None:
    # Reserved at 200, committed at the 120 reported: 3 calls fit in 500, the 4th does not
    # (360 spent + 200 estimated).
    put_budget(cluster, tenant, "bot-tokens", pb.DIMENSION_TOKENS, 500)
    model, search = looping_model(reported(100, 20)), SearchTool()
    agent = Agent(name=AGENT, model=model, tools=[search.tool])

    with pytest.raises(TollgateStopped) as stopped:
        async with TollgateRunHooks(client, tenant=tenant, llm_tokens=200, model="gpt-x") as hooks:
            await Runner.run(agent, "find the news", hooks=hooks, max_turns=MAX_TURNS)

    assert (model.calls, search.runs) == (3, 3)
    denied = stopped.value.error
    assert isinstance(denied, tollgate.Denied)
    assert (denied.limit_id, denied.dimension) == ("bot-tokens", "tokens")
    assert stopped.value.call == "llm:gpt-x"
    assert "bot-tokens" in str(stopped.value)
    tokens = await usage_of(client, tenant, "bot-tokens")
    assert (tokens.used, tokens.held) == (360, 0)


async def test_a_short_run_commits_the_usage_the_model_reported(
    cluster: Cluster, tenant: str, client: tollgate.AsyncClient
) -> None:
    put_budget(cluster, tenant, "bot-calls", pb.DIMENSION_CALLS, 100)
    put_budget(cluster, tenant, "bot-tokens", pb.DIMENSION_TOKENS, 1_000_000)
    cluster.put_limit(tenant, "cost", scope_tenant(), pb.DIMENSION_COST, budget=10_000_000)
    model = ScriptedModel(
        [lambda n: tool_call(n, "weather"), lambda n: final_answer("sunny")],
        [reported(1_000, 50, cached_tokens=400), reported(1_300, 80)],
    )
    search = SearchTool()
    agent = Agent(name=AGENT, model=model, tools=[search.tool])
    search_cost = Estimate(tokens=0, cost_usd=0.002)

    async with TollgateRunHooks(
        client, tenant=tenant, agent=AGENT, tool_costs={"search": search_cost}
    ) as hooks:
        result = await Runner.run(agent, "weather?", hooks=hooks, max_turns=MAX_TURNS)

    assert result.final_output == "sunny"
    assert (model.calls, search.runs) == (2, 1)
    calls, tokens = await usage_of(client, tenant, "bot-calls"), await usage_of(
        client, tenant, "bot-tokens"
    )
    assert (calls.used, calls.held) == (3, 0)
    assert (tokens.used, tokens.held) == (1_050 + 1_380, 0)
    cost = next(row for row in await client.usage(tenant) if row.limit_id == "cost")
    assert (cost.used, cost.held) == (2_000, 0)


async def test_parallel_tool_calls_are_each_reserved_and_committed(
    cluster: Cluster, tenant: str, client: tollgate.AsyncClient
) -> None:
    put_budget(cluster, tenant, "bot-calls", pb.DIMENSION_CALLS, 100)
    cluster.put_limit(tenant, "cost", scope_tenant(), pb.DIMENSION_COST, budget=10_000_000)
    model = ScriptedModel(
        [
            lambda n: [tool_call(10 * n + i, f"city {i}") for i in range(3)],
            lambda n: final_answer("three cities searched"),
        ],
        [reported(100, 20)],
    )
    search = SearchTool()
    agent = Agent(name=AGENT, model=model, tools=[search.tool])

    async with TollgateRunHooks(
        client, tenant=tenant, tool_costs={"search": Estimate(cost_usd=0.001)}
    ) as hooks:
        await Runner.run(agent, "weather in three cities?", hooks=hooks, max_turns=MAX_TURNS)

    assert (model.calls, search.runs) == (2, 3)
    calls = await usage_of(client, tenant, "bot-calls")
    assert (calls.used, calls.held) == (2 + 3, 0)
    cost = next(row for row in await client.usage(tenant) if row.limit_id == "cost")
    assert (cost.used, cost.held) == (3 * 1_000, 0)
    assert hooks.open_count == 0


async def test_a_repeated_tool_call_trips_the_agent_by_its_fingerprint(
    cluster: Cluster, client: tollgate.AsyncClient
) -> None:
    tenant = repeating_tenant(cluster)
    model, search = looping_model(reported(10, 5), same_arguments=True), SearchTool()
    agent = Agent(name=AGENT, model=model, tools=[search.tool])

    with pytest.raises(TollgateStopped) as stopped:
        async with TollgateRunHooks(client, tenant=tenant) as hooks:
            await Runner.run(agent, "find the news", hooks=hooks, max_turns=MAX_TURNS)

    # The third search with the same arguments trips the agent; LLM calls carry no fingerprint.
    assert (model.calls, search.runs) == (3, 2)
    tripped = stopped.value.error
    assert isinstance(tripped, tollgate.Tripped)
    assert tripped.cause == "repetition"


async def test_a_tool_called_with_a_new_page_each_time_trips_the_agent_by_its_shape(
    cluster: Cluster, client: tollgate.AsyncClient
) -> None:
    tenant = shape_tenant(cluster)
    model, search = looping_model(reported(10, 5)), SearchTool()
    agent = Agent(name=AGENT, model=model, tools=[search.tool])

    with pytest.raises(TollgateStopped) as stopped:
        async with TollgateRunHooks(client, tenant=tenant) as hooks:
            await Runner.run(agent, "find the news", hooks=hooks, max_turns=MAX_TURNS)

    # Every search has other arguments (no fingerprint repeats) but the same shape; the
    # third is refused. LLM calls carry no shape.
    assert (model.calls, search.runs) == (3, 2)
    tripped = stopped.value.error
    assert isinstance(tripped, tollgate.Tripped)
    assert tripped.cause == "shape_velocity"


async def test_a_run_that_aborts_mid_call_settles_the_open_reservation_at_its_estimate(
    cluster: Cluster, tenant: str, client: tollgate.AsyncClient
) -> None:
    put_budget(cluster, tenant, "bot-tokens", pb.DIMENSION_TOKENS, 1_000_000)
    model = ScriptedModel(
        [lambda n: tool_call(n, "weather"), RuntimeError("provider unreachable")],
        [reported(100, 20)],
    )
    agent = Agent(name=AGENT, model=model, tools=[SearchTool().tool])

    with pytest.raises(RuntimeError, match="provider unreachable"):
        async with TollgateRunHooks(client, tenant=tenant, llm_tokens=700) as hooks:
            await Runner.run(agent, "weather?", hooks=hooks, max_turns=MAX_TURNS)
            pytest.fail("the run should have raised")

    assert hooks.open_count == 0
    # The failed call may have spent: its estimate is charged at once, flagged abandoned.
    tokens = await usage_of(client, tenant, "bot-tokens")
    assert (tokens.used, tokens.held) == (120 + 700, 0)
    assert abandoned_tokens(cluster, tenant) == [700]


async def test_priced_models_commit_usage_priced_by_the_tenant(
    cluster: Cluster, tenant: str, client: tollgate.AsyncClient
) -> None:
    # $2 per 1M input tokens, $8 per 1M output tokens; cached input at the input price.
    cluster.put_price(tenant, "gpt-x", input_micros=2_000_000, output_micros=8_000_000)
    cluster.put_limit(tenant, "cost", scope_tenant(), pb.DIMENSION_COST, budget=10_000_000)
    put_budget(cluster, tenant, "bot-tokens", pb.DIMENSION_TOKENS, 1_000_000)
    model = ScriptedModel([lambda n: final_answer("hi")], [reported(1_000, 500, cached_tokens=300)])
    agent = Agent(name=AGENT, model=model)

    async with TollgateRunHooks(
        client,
        tenant=tenant,
        agent=AGENT,
        model="gpt-x",
        priced_models={"gpt-x"},
        llm_cost_usd=0.05,
    ) as hooks:
        await Runner.run(agent, "hi", hooks=hooks, max_turns=MAX_TURNS)

    cost = next(row for row in await client.usage(tenant) if row.limit_id == "cost")
    assert (cost.used, cost.held) == (1_000 * 2 + 500 * 8, 0)
    tokens = await usage_of(client, tenant, "bot-tokens")
    assert (tokens.used, tokens.held) == (1_500, 0)
