"""Tollgate for the OpenAI Agents SDK: a `RunHooks` that reserves before every LLM call and
every local tool call of a run and commits what the call used after it.

A refusal (denied, frozen, tripped, or the cluster unreachable while failing closed) stops the
run the way the SDK's own guardrails do: `Runner.run` raises `TollgateStopped`, an
`AgentsException` carrying the run's data so far, with the Tollgate error as its `error` and
its `__cause__`. A call the cluster refused never runs.

    async with TollgateRunHooks(client, tenant="acme", agent="support-bot") as hooks:
        result = await Runner.run(agent, "Where is my order?", hooks=hooks)

The SDK calls no hook when a run aborts (a model error, a failing tool, a cancellation), so
leaving the `async with` block settles every reservation still open at its estimate, flagged
abandoned: the call may have happened, so its spend is never dropped. Without the block, call
`await hooks.settle_open()` in a `finally`; the cluster's expiry is the last resort.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from agents import (
    Agent,
    AgentsException,
    ModelResponse,
    RunContextWrapper,
    RunHooks,
    Tool,
)
from agents.items import TResponseInputItem
from agents.tool_context import ToolContext

import tollgate
from tollgate.hooks import (
    LLM_TOKENS_DEFAULT,
    OPEN_MAX_DEFAULT,
    TOOL_COST_DEFAULT,
    TTL_DEFAULT,
    Actual,
    AsyncSettlesOnExit,
    Estimate,
    OpenReservationsFull,
    OpenTable,
    TokenCounts,
    grant_text,
    llm_actual,
    llm_tool,
    tool_actual,
)

__all__ = ["TollgateRunHooks", "TollgateStopped"]

logger = logging.getLogger(__name__)


class TollgateStopped(AgentsException):
    """Tollgate refused a call, so the run stopped before it. `error` is why: a
    `tollgate.Denied` (which limit, its scope and dimension, what remains), `Frozen`,
    `Tripped`, `Unavailable` (failing closed), or `OpenReservationsFull`. `call` is the
    Tollgate tool of the refused call (`llm:MODEL` or the tool's name)."""

    def __init__(self, call: str, error: Exception) -> None:
        self.call = call
        self.error = error
        super().__init__(f"Tollgate refused {call!r}, so the run stopped: {error}")


@dataclass
class _Open:
    """A reservation held across the hooks of one call."""

    stack: AsyncExitStack
    reservation: tollgate.AsyncReservation
    tool: str
    model: str | None
    estimate: Estimate
    # The SDK objects whose ids are in the key, kept alive so no other object takes their id
    # while the reservation is open.
    anchor: object


class TollgateRunHooks(AsyncSettlesOnExit[tuple[object, ...], _Open], RunHooks[Any]):
    """Reserves before every LLM and local tool call of a run, commits after it.

    - `agent`: the Tollgate agent; None: the SDK agent's `name` (each agent of a handoff then
      spends under its own name).
    - `llm_tokens`, `llm_cost_usd`: what an LLM call is reserved at. It is committed at the
      tokens the model reported, and at the usage (`tollgate.Usage`) when its model is in
      `priced_models` (the tenant's price table prices it; `"*"`: the table has a fallback
      price); otherwise at `llm_cost_usd`, the estimate, since nothing here can price it.
    - `model`: the model's name when the agent's `model` does not say it (a `Model` object
      without a `model` attribute, or the run config's default).
    - `tool_costs`: a tool's `Estimate` by its name, reserved and committed (a tool reports no
      usage); `default_tool_cost` for the others (one call, nothing else).
    - Tool calls carry `tollgate.fingerprint(tool, arguments)`, for repetition detection, and
      `tollgate.fingerprint_shape(tool, arguments)`, for shape velocity.
    """

    def __init__(
        self,
        client: tollgate.AsyncClient,
        *,
        tenant: str,
        agent: str | None = None,
        llm_tokens: int = LLM_TOKENS_DEFAULT,
        llm_cost_usd: float | None = None,
        model: str | None = None,
        priced_models: Collection[str] = (),
        tool_costs: Mapping[str, Estimate] | None = None,
        default_tool_cost: Estimate = TOOL_COST_DEFAULT,
        ttl: float = TTL_DEFAULT,
        open_max: int = OPEN_MAX_DEFAULT,
    ) -> None:
        self._client = client
        self._tenant = tenant
        self._agent = agent
        self._llm_estimate = Estimate(tokens=llm_tokens, cost_usd=llm_cost_usd)
        self._model = model
        self._priced_models = frozenset(priced_models)
        self._tool_costs = dict(tool_costs or {})
        self._default_tool_cost = default_tool_cost
        self._ttl = ttl
        self._open: OpenTable[tuple[object, ...], _Open] = OpenTable(open_max)

    def _tool_of(self, open_: _Open) -> str:
        return open_.tool

    async def _abandon(self, open_: _Open) -> None:
        await _close(open_)

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        model = self._model_of(agent)
        key = ("llm", id(context), id(agent))
        await self._reserve(
            key, (context, agent), agent, llm_tool(model), self._llm_estimate, model
        )

    async def on_llm_end(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        response: ModelResponse,
    ) -> None:
        open_ = self._open.pop(("llm", id(context), id(agent)))
        if open_ is None:
            logger.warning("an LLM call of %r ended that this hook never reserved", agent.name)
            return
        usage = response.usage
        counts = TokenCounts.of(
            usage.input_tokens,
            usage.output_tokens,
            usage.input_tokens_details.cached_tokens or 0,
        )
        await _commit(open_, llm_actual(counts, open_.model, self._priced_models, open_.estimate))

    async def on_tool_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        tool: Tool,
    ) -> None:
        name = _tool_name(tool)
        estimate = self._tool_costs.get(name, self._default_tool_cost)
        fingerprint, shape = _fingerprints(name, context)
        await self._reserve(
            _tool_key(context, tool),
            (context, tool),
            agent,
            name,
            estimate,
            None,
            fingerprint,
            shape,
        )

    async def on_tool_end(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        tool: Tool,
        result: object,
    ) -> None:
        open_ = self._open.pop(_tool_key(context, tool))
        if open_ is None:
            logger.warning("tool %r ended and this hook never reserved it", _tool_name(tool))
            return
        await _commit(open_, tool_actual(open_.estimate))

    async def _reserve(
        self,
        key: tuple[object, ...],
        anchor: object,
        agent: Agent[Any],
        tool: str,
        estimate: Estimate,
        model: str | None,
        fingerprint: str | None = None,
        shape: str | None = None,
    ) -> None:
        """Reserves `estimate` for a call about to start; raises `TollgateStopped` when the
        call may not run."""
        stack = AsyncExitStack()
        try:
            self._open.check_room()
            reservation = await stack.enter_async_context(
                self._client.reserve(
                    tenant=self._tenant,
                    agent=self._agent if self._agent is not None else agent.name,
                    tool=tool,
                    tokens=estimate.tokens,
                    cost_usd=estimate.cost_usd,
                    calls=estimate.calls,
                    ttl=self._ttl,
                    fingerprint=fingerprint,
                    shape=shape,
                )
            )
        except (tollgate.TollgateError, OpenReservationsFull) as error:
            raise TollgateStopped(tool, error) from error
        logger.debug("%s", grant_text(tool, reservation.reservation_id, reservation.tightest))
        open_ = _Open(stack, reservation, tool, model, estimate, anchor)
        try:
            self._open.put(key, open_)
        except OpenReservationsFull as error:
            await _close(open_)
            raise TollgateStopped(tool, error) from error

    def _model_of(self, agent: Agent[Any]) -> str | None:
        if self._model is not None:
            return self._model
        if isinstance(agent.model, str):
            return agent.model or None
        name = getattr(agent.model, "model", None)
        return name if isinstance(name, str) and name else None


def _tool_name(tool: Tool) -> str:
    name = getattr(tool, "name", None)
    return name if isinstance(name, str) and name else type(tool).__name__


def _tool_key(context: RunContextWrapper[Any], tool: Tool) -> tuple[object, ...]:
    """A function tool's call has a `ToolContext` of its own, passed to both of its hooks;
    other local tools (shell, computer) share the run's context and end in start order.
    """
    if isinstance(context, ToolContext):
        return ("tool", id(context))
    return ("tool", id(context), id(tool))


def _fingerprints(tool: str, context: RunContextWrapper[Any]) -> tuple[str | None, str | None]:
    """The call's fingerprint and shape from its JSON arguments, when the hook sees them
    (function tools); None when they are not a JSON object the fingerprint can take."""
    if not isinstance(context, ToolContext):
        return None, None
    try:
        args = json.loads(context.tool_arguments or "{}")
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(args, dict):
        return None, None
    try:
        return tollgate.fingerprint(tool, args), tollgate.fingerprint_shape(tool, args)
    except (TypeError, ValueError):
        return None, None


async def _commit(open_: _Open, actual: Actual) -> None:
    """Commits what the call used. A commit the cluster does not take is logged, not raised:
    the call already happened, and the cluster charges the hold at its estimate on expiry.
    """
    try:
        await open_.reservation.commit(
            tokens=actual.tokens, cost_usd=actual.cost_usd, usage=actual.usage
        )
        logger.debug("committed %s: %s", open_.tool, actual)
    except tollgate.TollgateError as error:
        logger.warning("committing %r failed; it expires at its estimate: %s", open_.tool, error)
    finally:
        await _close(open_)


async def _close(open_: _Open) -> None:
    """Leaves the reservation's guard: after a commit, nothing more; without one, the guard
    settles at the estimate (abandoned)."""
    try:
        await open_.stack.aclose()
    except tollgate.TollgateError as error:
        logger.warning(
            "settling %r failed; the cluster charges its estimate at expiry: %s",
            open_.tool,
            error,
        )
