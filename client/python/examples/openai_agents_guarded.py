"""An OpenAI Agents SDK agent guarded by Tollgate: every LLM and tool call is reserved before
it runs and committed after, by `TollgateRunHooks`; no reserve or commit in the agent's code.

The agent's model is a fake (no API key, no network) that asks for another search every
turn, as a runaway would. Against `tollgate dev` (tenant `acme`: each agent may make 60
calls a minute with bursts of 10) Tollgate lets the burst through and then stops the run.

    pip install "./client/python[openai-agents]"
    cargo run --release -- dev          # in another terminal
    python client/python/examples/openai_agents_guarded.py
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from agents import (
    Agent,
    ModelResponse,
    ModelSettings,
    Runner,
    Tool,
    Usage,
    function_tool,
    set_tracing_disabled,
)
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseInputItem, TResponseStreamEvent
from agents.models.interface import Model, ModelTracing
from openai.types.responses import ResponseFunctionToolCall
from openai.types.responses.response_usage import (
    InputTokensDetails,
    OutputTokensDetails,
)

import tollgate
from tollgate.hooks import Estimate
from tollgate.hooks.openai_agents import TollgateRunHooks, TollgateStopped

CLUSTER_DEFAULT = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
# Turns the SDK allows: far more than the tenant's limits, so Tollgate is what stops it.
MAX_TURNS = 1_000


class RunawayModel(Model):
    """Asks for a search for the next page every turn and never answers. Reports what a
    real model would: 1,200 input tokens (400 of them from the prompt cache), 150 output.
    """

    def __init__(self) -> None:
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
        self.calls += 1
        print(f"  model call {self.calls}: asks for search page {self.calls}")
        call = ResponseFunctionToolCall(
            id=f"fc_{self.calls}",
            call_id=f"call_{self.calls}",
            type="function_call",
            name="search",
            arguments=f'{{"query": "order status", "page": {self.calls}}}',
        )
        usage = Usage(
            requests=1,
            input_tokens=1_200,
            output_tokens=150,
            total_tokens=1_350,
            input_tokens_details=InputTokensDetails(cached_tokens=400, cache_write_tokens=0),
            output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        )
        return ModelResponse(output=[call], usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("this example runs without streaming")


@function_tool
def search(query: str, page: int) -> str:
    """Searches the order database."""
    print(f"  search ran: {query!r}, page {page}")
    return f"page {page}: no order found"


async def main(cluster: list[str], tenant: str, agent_name: str) -> None:
    set_tracing_disabled(True)
    agent = Agent(
        name=agent_name,
        instructions="Find the customer's order.",
        model=RunawayModel(),
        tools=[search],
    )
    async with tollgate.AsyncClient(cluster) as client:
        hooks = TollgateRunHooks(
            client,
            tenant=tenant,
            agent=agent_name,
            model="gpt-x",
            llm_tokens=2_000,
            llm_cost_usd=0.02,
            tool_costs={"search": Estimate(cost_usd=0.001)},
        )
        try:
            async with hooks:
                await Runner.run(agent, "Where is my order?", hooks=hooks, max_turns=MAX_TURNS)
        except TollgateStopped as stopped:
            print(f"\nstopped: {stopped}")
            if isinstance(stopped.error, tollgate.Denied):
                denied = stopped.error
                print(f"  limit {denied.limit_id!r} ({denied.scope}, {denied.dimension})")
                if denied.retry_after is not None:
                    print(f"  the same call fits again in {denied.retry_after:.1f} s")
        print(f"\nusage of {tenant}/{agent_name}:")
        for row in await client.usage(tenant, agent=agent_name):
            print(f"  {row.limit_id}: used {row.used}, held {row.held}, remaining {row.remaining}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cluster",
        default=os.environ.get("TOLLGATE_CLUSTER", CLUSTER_DEFAULT),
        help="comma-separated host:port of the nodes (default: tollgate dev's)",
    )
    parser.add_argument("--tenant", default="acme")
    parser.add_argument("--agent", default="agents-sdk-bot")
    args = parser.parse_args()
    # The hooks log each grant and commit at DEBUG.
    logging.basicConfig(stream=sys.stdout, format="  tollgate: %(message)s")
    logging.getLogger("tollgate.hooks").setLevel(logging.DEBUG)
    asyncio.run(main(args.cluster.split(","), args.tenant, args.agent))
