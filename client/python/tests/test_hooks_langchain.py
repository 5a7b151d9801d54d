"""TollgateCallbackHandler against a real cluster: a LangGraph agent (model node, ToolNode,
loop) whose fake chat model (no network) asks for a tool call every turn is stopped by
Tollgate at exactly its budget, and what the cluster counts is what the handler committed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, cast

import pytest
import pytest_asyncio
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import BaseTool, tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition

import tollgate
from cluster import Cluster, scope_agent, scope_tenant
from tollgate._pb import tollgate_pb2 as pb
from tollgate.hooks import Estimate, OpenReservationsFull
from tollgate.hooks.langchain import (
    AsyncTollgateCallbackHandler,
    TollgateCallbackHandler,
)

AGENT = "support-bot"
# Graph steps LangGraph allows a run: far above every budget below.
RECURSION_LIMIT = 200


class ScriptedChatModel(BaseChatModel):
    """A fake chat model: answers call n with a search for `queries[n]` (the last one
    forever; a list: several searches at once), or with `final` once the queries run out if
    it is set; reports `usage` (input, output, cache read) for every call. An exception in
    `queries` is raised."""

    model: str = "fake-gpt"
    queries: list[Any]
    final: str | None = None
    usage: tuple[int, int, int] = (100, 20, 0)
    # Report usage the way older provider integrations do: `llm_output["token_usage"]`
    # (OpenAI's field names) instead of the message's `usage_metadata`.
    usage_in_llm_output: bool = False
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted-fake"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """The script decides the tool calls; binding changes nothing."""
        return cast("Runnable[LanguageModelInput, AIMessage]", self)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls += 1
        input_tokens, output_tokens, cache_read = self.usage
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_token_details": {"cache_read": cache_read},
        }
        if self.final is not None and self.calls > len(self.queries):
            message = AIMessage(content=self.final)
        else:
            query = self.queries[min(self.calls, len(self.queries)) - 1]
            if isinstance(query, Exception):
                raise query
            calls = [
                {"name": "search", "args": {"query": q}, "id": f"call_{self.calls}_{i}"}
                for i, q in enumerate(query if isinstance(query, list) else [query])
            ]
            message = AIMessage(content="", tool_calls=calls)
        if not self.usage_in_llm_output:
            message.usage_metadata = cast(Any, usage)
            return ChatResult(generations=[ChatGeneration(message=message)])
        token_usage = {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "prompt_tokens_details": {"cached_tokens": cache_read},
        }
        return ChatResult(
            generations=[ChatGeneration(message=message)],
            llm_output={"token_usage": token_usage, "model_name": self.model},
        )


class SearchTool:
    def __init__(self) -> None:
        self.runs = 0

        @tool
        def search(query: str) -> str:
            """Searches the web."""
            self.runs += 1
            return f"nothing found for {query}"

        self.tool: BaseTool = search


def agent_graph(
    model: BaseChatModel, tools: list[BaseTool]
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The ReAct loop: the model, then its tool calls, then the model again, until it
    answers without one."""

    def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.bind_tools(tools).invoke(state["messages"])]}

    async def acall_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.bind_tools(tools).ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    # An async node for async runs: a sync node would drive an async handler through
    # LangChain's sync callback path, which swallows its errors.
    graph.add_node("model", RunnableLambda(call_model, afunc=acall_model))
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    return graph.compile()


def looping_model(
    *, same_arguments: bool = False, usage: tuple[int, int, int] = (100, 20, 30)
) -> ScriptedChatModel:
    """Asks for a search every turn, never answers: a runaway."""
    queries = ["latest news"] if same_arguments else [f"page {n}" for n in range(1, 1_000)]
    return ScriptedChatModel(queries=queries, usage=usage)


@pytest.fixture
def client(cluster: Cluster) -> Iterator[tollgate.Client]:
    with tollgate.Client(cluster.addrs) as client:
        yield client


@pytest_asyncio.fixture
async def aclient(cluster: Cluster) -> AsyncIterator[tollgate.AsyncClient]:
    async with tollgate.AsyncClient(cluster.addrs) as client:
        yield client


def usage_of(client: tollgate.Client, tenant: str, limit_id: str) -> tollgate.LimitUsage:
    rows = [row for row in client.usage(tenant, agent=AGENT) if row.limit_id == limit_id]
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


def run(graph: CompiledStateGraph[Any, Any, Any, Any], handler: Any) -> dict[str, Any]:
    config: Any = {"callbacks": [handler], "recursion_limit": RECURSION_LIMIT}
    result: dict[str, Any] = graph.invoke({"messages": [("user", "find the news")]}, config=config)
    return result


def test_a_looping_agent_is_stopped_at_its_calls_budget(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    put_budget(cluster, tenant, "bot-calls", pb.DIMENSION_CALLS, 5)
    put_budget(cluster, tenant, "bot-tokens", pb.DIMENSION_TOKENS, 1_000_000)
    model, search = looping_model(), SearchTool()
    handler = TollgateCallbackHandler(client, tenant=tenant, agent=AGENT)

    with pytest.raises(tollgate.Denied) as denied:
        run(agent_graph(model, [search.tool]), handler)

    # Five calls: LLM, search, LLM, search, LLM; the third search is refused before it runs.
    assert (model.calls, search.runs) == (3, 2)
    assert (denied.value.limit_id, denied.value.dimension, denied.value.remaining) == (
        "bot-calls",
        "calls",
        0,
    )
    assert "bot-calls" in str(denied.value)
    calls, tokens = usage_of(client, tenant, "bot-calls"), usage_of(client, tenant, "bot-tokens")
    assert (calls.used, calls.held) == (5, 0)
    # Each LLM call committed what the model reported: 70 input + 30 cache read + 20 output.
    assert (tokens.used, tokens.held) == (3 * 120, 0)
    assert handler.open_count == 0


def test_a_looping_agent_is_stopped_at_its_tokens_budget_before_the_llm_call(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    # Reserved at 200, committed at the 120 reported: 3 calls fit in 500, the 4th does not.
    put_budget(cluster, tenant, "bot-tokens", pb.DIMENSION_TOKENS, 500)
    model, search = looping_model(), SearchTool()
    handler = TollgateCallbackHandler(client, tenant=tenant, agent=AGENT, llm_tokens=200)

    with pytest.raises(tollgate.Denied) as denied:
        run(agent_graph(model, [search.tool]), handler)

    assert (model.calls, search.runs) == (3, 3)
    assert (denied.value.limit_id, denied.value.dimension) == ("bot-tokens", "tokens")
    tokens = usage_of(client, tenant, "bot-tokens")
    assert (tokens.used, tokens.held) == (360, 0)


def test_a_short_run_commits_the_usage_the_model_reported(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    put_budget(cluster, tenant, "bot-calls", pb.DIMENSION_CALLS, 100)
    put_budget(cluster, tenant, "bot-tokens", pb.DIMENSION_TOKENS, 1_000_000)
    cluster.put_limit(tenant, "cost", scope_tenant(), pb.DIMENSION_COST, budget=10_000_000)
    model = ScriptedChatModel(queries=["weather"], final="sunny", usage=(1_000, 50, 400))
    search = SearchTool()
    handler = TollgateCallbackHandler(
        client,
        tenant=tenant,
        agent=AGENT,
        tool_costs={"search": Estimate(cost_usd=0.002)},
    )

    result = run(agent_graph(model, [search.tool]), handler)

    assert result["messages"][-1].content == "sunny"
    assert (model.calls, search.runs) == (2, 1)
    calls, tokens = usage_of(client, tenant, "bot-calls"), usage_of(client, tenant, "bot-tokens")
    assert (calls.used, calls.held) == (3, 0)
    assert (tokens.used, tokens.held) == (2 * 1_050, 0)
    cost = next(row for row in client.usage(tenant) if row.limit_id == "cost")
    assert (cost.used, cost.held) == (2_000, 0)


def test_usage_reported_in_llm_output_is_committed(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    put_budget(cluster, tenant, "bot-tokens", pb.DIMENSION_TOKENS, 1_000_000)
    model = ScriptedChatModel(
        queries=["weather"],
        final="sunny",
        usage=(900, 70, 300),
        usage_in_llm_output=True,
    )
    handler = TollgateCallbackHandler(client, tenant=tenant, agent=AGENT, llm_tokens=5_000)

    run(agent_graph(model, [SearchTool().tool]), handler)

    assert model.calls == 2
    tokens = usage_of(client, tenant, "bot-tokens")
    assert (tokens.used, tokens.held) == (2 * 970, 0)


def test_priced_models_commit_usage_priced_by_the_tenant(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    # $2 per 1M input tokens, $8 per 1M output tokens; cached input at the input price.
    cluster.put_price(tenant, "fake-gpt", input_micros=2_000_000, output_micros=8_000_000)
    cluster.put_limit(tenant, "cost", scope_tenant(), pb.DIMENSION_COST, budget=10_000_000)
    model = ScriptedChatModel(queries=[], final="hi", usage=(1_000, 500, 300))
    handler = TollgateCallbackHandler(
        client, tenant=tenant, agent=AGENT, priced_models={"fake-gpt"}, llm_cost_usd=0.05
    )

    run(agent_graph(model, [SearchTool().tool]), handler)

    assert model.calls == 1
    cost = next(row for row in client.usage(tenant) if row.limit_id == "cost")
    assert (cost.used, cost.held) == (1_000 * 2 + 500 * 8, 0)


def test_a_call_past_open_max_is_refused_and_the_others_still_commit(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    put_budget(cluster, tenant, "bot-calls", pb.DIMENSION_CALLS, 100)
    handler = TollgateCallbackHandler(client, tenant=tenant, agent=AGENT, open_max=1)
    first, second = uuid.uuid4(), uuid.uuid4()
    tool = {"name": "search"}

    handler.on_tool_start(tool, "a", run_id=first, inputs={"query": "a"})
    with pytest.raises(OpenReservationsFull, match="open_max"):
        handler.on_tool_start(tool, "b", run_id=second, inputs={"query": "b"})
    handler.on_tool_end("found", run_id=first)

    calls = usage_of(client, tenant, "bot-calls")
    assert (calls.used, calls.held) == (1, 0)
    assert handler.open_count == 0


def test_parallel_tool_calls_are_each_reserved_and_committed(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    put_budget(cluster, tenant, "bot-calls", pb.DIMENSION_CALLS, 100)
    cluster.put_limit(tenant, "cost", scope_tenant(), pb.DIMENSION_COST, budget=10_000_000)
    model = ScriptedChatModel(queries=[["a", "b", "c"]], final="done")
    search = SearchTool()
    handler = TollgateCallbackHandler(
        client, tenant=tenant, agent=AGENT, tool_costs={"search": Estimate(cost_usd=0.001)}
    )

    run(agent_graph(model, [search.tool]), handler)

    assert (model.calls, search.runs) == (2, 3)
    calls = usage_of(client, tenant, "bot-calls")
    assert (calls.used, calls.held) == (2 + 3, 0)
    cost = next(row for row in client.usage(tenant) if row.limit_id == "cost")
    assert (cost.used, cost.held) == (3 * 1_000, 0)
    assert handler.open_count == 0


def test_a_repeated_tool_call_trips_the_agent_by_its_fingerprint(
    cluster: Cluster, client: tollgate.Client
) -> None:
    tenant = repeating_tenant(cluster)
    model, search = looping_model(same_arguments=True), SearchTool()
    handler = TollgateCallbackHandler(client, tenant=tenant, agent=AGENT)

    with pytest.raises(tollgate.Tripped) as tripped:
        run(agent_graph(model, [search.tool]), handler)

    # The third search with the same arguments trips the agent; LLM calls carry no fingerprint.
    assert (model.calls, search.runs) == (3, 2)
    assert tripped.value.cause == "repetition"


def test_a_tool_called_with_a_new_page_each_time_trips_the_agent_by_its_shape(
    cluster: Cluster, client: tollgate.Client
) -> None:
    tenant = shape_tenant(cluster)
    model, search = looping_model(), SearchTool()
    handler = TollgateCallbackHandler(client, tenant=tenant, agent=AGENT)

    with pytest.raises(tollgate.Tripped) as tripped:
        run(agent_graph(model, [search.tool]), handler)

    # Every search has other arguments (no fingerprint repeats) but the same shape; the
    # third is refused. LLM calls carry no shape.
    assert (model.calls, search.runs) == (3, 2)
    assert tripped.value.cause == "shape_velocity"
    shape = tollgate.fingerprint_shape("search", {"query": "any"})
    assert shape in str(tripped.value)


def test_a_failed_llm_call_is_settled_at_its_estimate(
    cluster: Cluster, tenant: str, client: tollgate.Client
) -> None:
    put_budget(cluster, tenant, "bot-tokens", pb.DIMENSION_TOKENS, 1_000_000)
    model = ScriptedChatModel(
        queries=["weather", RuntimeError("provider unreachable")], usage=(100, 20, 0)
    )
    handler = TollgateCallbackHandler(client, tenant=tenant, agent=AGENT, llm_tokens=700)

    with pytest.raises(RuntimeError, match="provider unreachable"):
        run(agent_graph(model, [SearchTool().tool]), handler)

    assert handler.open_count == 0
    # The failed call may have spent: its estimate is charged at once, flagged abandoned.
    tokens = usage_of(client, tenant, "bot-tokens")
    assert (tokens.used, tokens.held) == (120 + 700, 0)
    assert abandoned_tokens(cluster, tenant) == [700]


async def test_the_async_handler_stops_an_async_run_at_its_calls_budget(
    cluster: Cluster, tenant: str, aclient: tollgate.AsyncClient
) -> None:
    put_budget(cluster, tenant, "bot-calls", pb.DIMENSION_CALLS, 4)
    model, search = looping_model(), SearchTool()
    handler = AsyncTollgateCallbackHandler(aclient, tenant=tenant, agent=AGENT)
    config: Any = {"callbacks": [handler], "recursion_limit": RECURSION_LIMIT}

    with pytest.raises(tollgate.Denied) as denied:
        await agent_graph(model, [search.tool]).ainvoke(
            {"messages": [("user", "hi")]}, config=config
        )

    # LLM, search, LLM, search; the third LLM call is refused before it runs.
    assert (model.calls, search.runs) == (2, 2)
    assert denied.value.limit_id == "bot-calls"
    rows = [row for row in await aclient.usage(tenant, agent=AGENT) if row.limit_id == "bot-calls"]
    assert [(row.used, row.held) for row in rows] == [(4, 0)]
    assert handler.open_count == 0
