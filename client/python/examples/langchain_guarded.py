"""A LangGraph agent guarded by Tollgate: every LLM and tool call is reserved before it runs
and committed after, by `TollgateCallbackHandler`; no reserve or commit in the agent's code.

The agent's chat model is a fake (no API key, no network) that asks for another search
every turn, as a runaway would. Against `tollgate dev` (tenant `acme`: each agent may make
60 calls a minute with bursts of 10) Tollgate lets the burst through and then stops the run.

    pip install "./client/python[langchain]" langgraph
    cargo run --release -- dev          # in another terminal
    python client/python/examples/langchain_guarded.py
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool, tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

import tollgate
from tollgate.hooks import Estimate
from tollgate.hooks.langchain import TollgateCallbackHandler

CLUSTER_DEFAULT = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
# Graph steps LangGraph allows: far more than the tenant's limits.
RECURSION_LIMIT = 1_000


class RunawayChatModel(BaseChatModel):
    """Asks for a search for the next page every turn and never answers. Reports what a
    real model would: 1,200 input tokens (400 of them from the prompt cache), 150 output.
    """

    model: str = "gpt-x"
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "runaway-fake"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return cast("Runnable[LanguageModelInput, AIMessage]", self)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls += 1
        print(f"  model call {self.calls}: asks for search page {self.calls}")
        call = {
            "name": "search",
            "args": {"query": "order status", "page": self.calls},
            "id": f"call_{self.calls}",
        }
        message = AIMessage(
            content="",
            tool_calls=[call],
            usage_metadata={
                "input_tokens": 1_200,
                "output_tokens": 150,
                "total_tokens": 1_350,
                "input_token_details": {"cache_read": 400},
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


@tool
def search(query: str, page: int) -> str:
    """Searches the order database."""
    print(f"  search ran: {query!r}, page {page}")
    return f"page {page}: no order found"


def build_agent(model: BaseChatModel, tools: list[BaseTool]) -> Any:
    """The ReAct loop: the model, then the tools it asked for, then the model again."""

    def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.bind_tools(tools).invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    return graph.compile()


def main(cluster: list[str], tenant: str, agent: str) -> None:
    with tollgate.Client(cluster) as client:
        handler = TollgateCallbackHandler(
            client,
            tenant=tenant,
            agent=agent,
            llm_tokens=2_000,
            llm_cost_usd=0.02,
            tool_costs={"search": Estimate(cost_usd=0.001)},
        )
        config: RunnableConfig = {
            "callbacks": [handler],
            "recursion_limit": RECURSION_LIMIT,
        }
        graph = build_agent(RunawayChatModel(), [search])
        try:
            with handler:
                graph.invoke({"messages": [("user", "Where is my order?")]}, config=config)
        except tollgate.Denied as denied:
            print(f"\nstopped: {denied}")
            if denied.retry_after is not None:
                print(f"  the same call fits again in {denied.retry_after:.1f} s")
        except tollgate.TollgateError as refused:
            print(f"\nstopped: {refused}")
        print(f"\nusage of {tenant}/{agent}:")
        for row in client.usage(tenant, agent=agent):
            print(f"  {row.limit_id}: used {row.used}, held {row.held}, remaining {row.remaining}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cluster",
        default=os.environ.get("TOLLGATE_CLUSTER", CLUSTER_DEFAULT),
        help="comma-separated host:port of the nodes (default: tollgate dev's)",
    )
    parser.add_argument("--tenant", default="acme")
    parser.add_argument("--agent", default="langgraph-bot")
    args = parser.parse_args()
    # The handler logs each grant and commit at DEBUG.
    logging.basicConfig(stream=sys.stdout, format="  tollgate: %(message)s")
    logging.getLogger("tollgate.hooks").setLevel(logging.DEBUG)
    # LangChain logs every error a callback raises; the refusal is printed below instead.
    logging.getLogger("langchain_core.callbacks.manager").setLevel(logging.ERROR)
    main(args.cluster.split(","), args.tenant, args.agent)
