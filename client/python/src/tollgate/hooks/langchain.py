"""Tollgate for LangChain and LangGraph: callback handlers that reserve before every LLM and
tool call and commit what the call used after it, keyed by the call's `run_id`.

    handler = TollgateCallbackHandler(client, tenant="acme", agent="support-bot")
    graph.invoke(inputs, config={"callbacks": [handler]})

The handlers set `raise_error`, so a refusal (`tollgate.Denied`, `Frozen`, `Tripped`,
`Unavailable` while failing closed) propagates out of `invoke` as the Tollgate exception
itself, and the refused call never runs. Two things can keep it in: a LangGraph `ToolNode`
built with `handle_tool_errors=True` turns it into a tool message for the model (the next LLM
call is then refused), and LangChain swallows the errors of an async handler reached through
a sync call (`invoke`, or a sync node or tool inside `ainvoke`). `TollgateCallbackHandler`
stops sync and async runs alike; `AsyncTollgateCallbackHandler` saves a thread per event
where every model and tool call of the run is async.

A failed call (`on_llm_error`, `on_tool_error`) is settled at its estimate, flagged abandoned:
it may have spent. `settle_open()` (or leaving the handler's `with` block) does the same for
calls that never reported an end.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

import tollgate
from tollgate.hooks import (
    LLM_TOKENS_DEFAULT,
    OPEN_MAX_DEFAULT,
    TOOL_COST_DEFAULT,
    TTL_DEFAULT,
    Actual,
    AsyncSettlesOnExit,
    Estimate,
    OpenTable,
    SettlesOnExit,
    TokenCounts,
    grant_text,
    llm_actual,
    llm_tool,
    tool_actual,
)

__all__ = ["AsyncTollgateCallbackHandler", "TollgateCallbackHandler"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Call:
    """What a starting call is reserved for."""

    tool: str
    model: str | None
    estimate: Estimate
    fingerprint: str | None = None
    shape: str | None = None


@dataclass
class _Open:
    """A reservation held from a call's start to its end (sync client)."""

    call: _Call
    stack: ExitStack
    reservation: tollgate.Reservation


@dataclass
class _AsyncOpen:
    """A reservation held from a call's start to its end (async client)."""

    call: _Call
    stack: AsyncExitStack
    reservation: tollgate.AsyncReservation


class _Policy:
    """What the sync and async handlers share: how a call is named, estimated and committed."""

    def __init__(
        self,
        *,
        tenant: str,
        agent: str,
        llm_tokens: int,
        llm_cost_usd: float | None,
        model: str | None,
        priced_models: Collection[str],
        tool_costs: Mapping[str, Estimate] | None,
        default_tool_cost: Estimate,
        ttl: float,
    ) -> None:
        self.tenant = tenant
        self.agent = agent
        self.llm_estimate = Estimate(tokens=llm_tokens, cost_usd=llm_cost_usd)
        self.model = model
        self.priced_models = frozenset(priced_models)
        self.tool_costs = dict(tool_costs or {})
        self.default_tool_cost = default_tool_cost
        self.ttl = ttl

    def llm_call(self, metadata: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> _Call:
        model = self.model or _model_name(metadata, kwargs)
        return _Call(tool=llm_tool(model), model=model, estimate=self.llm_estimate)

    def tool_call(
        self,
        serialized: Mapping[str, Any] | None,
        inputs: Any,
        kwargs: Mapping[str, Any],
    ) -> _Call:
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        name = str(name)
        estimate = self.tool_costs.get(name, self.default_tool_cost)
        fingerprint, shape = _fingerprints(name, inputs)
        return _Call(
            tool=name,
            model=None,
            estimate=estimate,
            fingerprint=fingerprint,
            shape=shape,
        )

    def reserve_args(self, call: _Call) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "agent": self.agent,
            "tool": call.tool,
            "tokens": call.estimate.tokens,
            "cost_usd": call.estimate.cost_usd,
            "calls": call.estimate.calls,
            "ttl": self.ttl,
            "fingerprint": call.fingerprint,
            "shape": call.shape,
        }

    def llm_actual(self, call: _Call, response: LLMResult) -> Actual:
        model = call.model or _reported_model(response)
        return llm_actual(_token_counts(response), model, self.priced_models, call.estimate)


class TollgateCallbackHandler(SettlesOnExit[UUID, _Open], BaseCallbackHandler):
    """Guards the LLM and tool calls of a LangChain or LangGraph run (sync client).

    - `llm_tokens`, `llm_cost_usd`: what an LLM call is reserved at. It is committed at the
      tokens the model reported (`usage_metadata`, else `llm_output["token_usage"]`), and at
      the usage (`tollgate.Usage`) when its model is in `priced_models` (`"*"`: the tenant's
      table has a fallback price); otherwise at `llm_cost_usd`.
    - `model`: the model's name when the chat model does not report `ls_model_name`.
    - `tool_costs`: a tool's `Estimate` by name; `default_tool_cost` for the others.
    - Tool calls carry `tollgate.fingerprint(tool, inputs)`, for repetition detection, and
      `tollgate.fingerprint_shape(tool, inputs)`, for shape velocity.
    """

    raise_error = True

    def __init__(
        self,
        client: tollgate.Client,
        *,
        tenant: str,
        agent: str,
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
        self._policy = _Policy(
            tenant=tenant,
            agent=agent,
            llm_tokens=llm_tokens,
            llm_cost_usd=llm_cost_usd,
            model=model,
            priced_models=priced_models,
            tool_costs=tool_costs,
            default_tool_cost=default_tool_cost,
            ttl=ttl,
        )
        self._open: OpenTable[UUID, _Open] = OpenTable(open_max)

    def _tool_of(self, open_: _Open) -> str:
        return open_.call.tool

    def _abandon(self, open_: _Open) -> None:
        _close(open_)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._reserve(run_id, self._policy.llm_call(metadata, kwargs))

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._reserve(run_id, self._policy.llm_call(metadata, kwargs))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        open_ = self._open.pop(run_id)
        if open_ is not None:
            _commit(open_, self._policy.llm_actual(open_.call, response))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        open_ = self._open.pop(run_id)
        if open_ is not None:
            _close(open_)

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._reserve(run_id, self._policy.tool_call(serialized, inputs, kwargs))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        open_ = self._open.pop(run_id)
        if open_ is not None:
            _commit(open_, tool_actual(open_.call.estimate))

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        open_ = self._open.pop(run_id)
        if open_ is not None:
            _close(open_)

    def _reserve(self, run_id: UUID, call: _Call) -> None:
        """Reserves for a call about to start; a Tollgate error propagates and stops it."""
        self._open.check_room()
        stack = ExitStack()
        reservation = stack.enter_context(self._client.reserve(**self._policy.reserve_args(call)))
        logger.debug(
            "%s",
            grant_text(call.tool, reservation.reservation_id, reservation.tightest),
        )
        open_ = _Open(call, stack, reservation)
        try:
            self._open.put(run_id, open_)
        except BaseException:
            _close(open_)
            raise


class AsyncTollgateCallbackHandler(AsyncSettlesOnExit[UUID, _AsyncOpen], AsyncCallbackHandler):
    """`TollgateCallbackHandler` for async runs (`ainvoke`, `astream`), on an AsyncClient."""

    raise_error = True

    def __init__(
        self,
        client: tollgate.AsyncClient,
        *,
        tenant: str,
        agent: str,
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
        self._policy = _Policy(
            tenant=tenant,
            agent=agent,
            llm_tokens=llm_tokens,
            llm_cost_usd=llm_cost_usd,
            model=model,
            priced_models=priced_models,
            tool_costs=tool_costs,
            default_tool_cost=default_tool_cost,
            ttl=ttl,
        )
        self._open: OpenTable[UUID, _AsyncOpen] = OpenTable(open_max)

    def _tool_of(self, open_: _AsyncOpen) -> str:
        return open_.call.tool

    async def _abandon(self, open_: _AsyncOpen) -> None:
        await _aclose(open_)

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        await self._reserve(run_id, self._policy.llm_call(metadata, kwargs))

    async def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        await self._reserve(run_id, self._policy.llm_call(metadata, kwargs))

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        open_ = self._open.pop(run_id)
        if open_ is not None:
            await _acommit(open_, self._policy.llm_actual(open_.call, response))

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        open_ = self._open.pop(run_id)
        if open_ is not None:
            await _aclose(open_)

    async def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        await self._reserve(run_id, self._policy.tool_call(serialized, inputs, kwargs))

    async def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        open_ = self._open.pop(run_id)
        if open_ is not None:
            await _acommit(open_, tool_actual(open_.call.estimate))

    async def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        open_ = self._open.pop(run_id)
        if open_ is not None:
            await _aclose(open_)

    async def _reserve(self, run_id: UUID, call: _Call) -> None:
        self._open.check_room()
        stack = AsyncExitStack()
        reservation = await stack.enter_async_context(
            self._client.reserve(**self._policy.reserve_args(call))
        )
        logger.debug(
            "%s",
            grant_text(call.tool, reservation.reservation_id, reservation.tightest),
        )
        open_ = _AsyncOpen(call, stack, reservation)
        try:
            self._open.put(run_id, open_)
        except BaseException:
            await _aclose(open_)
            raise


def _model_name(metadata: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> str | None:
    """The model a call names: LangChain's tracing metadata, else its invocation params."""
    name = (metadata or {}).get("ls_model_name")
    if not name:
        params = kwargs.get("invocation_params") or {}
        name = params.get("model") or params.get("model_name")
    return name if isinstance(name, str) and name else None


def _reported_model(response: LLMResult) -> str | None:
    name = (response.llm_output or {}).get("model_name")
    return name if isinstance(name, str) and name else None


def _token_counts(response: LLMResult) -> TokenCounts | None:
    """What the model reported it used: the messages' `usage_metadata` (LangChain's standard
    form), else the provider's `token_usage` in `llm_output`; None when it reported nothing.
    """
    found = False
    input_total = output = cached = 0
    for generations in response.generations:
        for generation in generations:
            usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
            if not usage:
                continue
            found = True
            input_total += int(usage.get("input_tokens") or 0)
            output += int(usage.get("output_tokens") or 0)
            cached += int((usage.get("input_token_details") or {}).get("cache_read") or 0)
    if found:
        return TokenCounts.of(input_total, output, cached)
    token_usage = (response.llm_output or {}).get("token_usage")
    if not isinstance(token_usage, Mapping):
        return None
    details = token_usage.get("prompt_tokens_details") or {}
    return TokenCounts.of(
        int(token_usage.get("prompt_tokens") or 0),
        int(token_usage.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0) if isinstance(details, Mapping) else 0,
    )


def _fingerprints(tool: str, inputs: Any) -> tuple[str | None, str | None]:
    """The call's fingerprint and shape from its arguments, when LangChain passes them as a
    mapping the fingerprint can take."""
    if not isinstance(inputs, Mapping):
        return None, None
    try:
        return tollgate.fingerprint(tool, inputs), tollgate.fingerprint_shape(tool, inputs)
    except (TypeError, ValueError):
        return None, None


def _commit(open_: _Open, actual: Actual) -> None:
    """Commits what the call used. A commit the cluster does not take is logged, not raised:
    the call already happened, and the cluster charges the hold at its estimate on expiry.
    """
    try:
        open_.reservation.commit(tokens=actual.tokens, cost_usd=actual.cost_usd, usage=actual.usage)
        logger.debug("committed %s: %s", open_.call.tool, actual)
    except tollgate.TollgateError as error:
        logger.warning(
            "committing %r failed; it expires at its estimate: %s",
            open_.call.tool,
            error,
        )
    finally:
        _close(open_)


def _close(open_: _Open) -> None:
    """Leaves the reservation's guard: after a commit, nothing more; without one, the guard
    settles at the estimate (abandoned)."""
    try:
        open_.stack.close()
    except tollgate.TollgateError as error:
        logger.warning("settling %r failed; it expires at its estimate: %s", open_.call.tool, error)


async def _acommit(open_: _AsyncOpen, actual: Actual) -> None:
    try:
        await open_.reservation.commit(
            tokens=actual.tokens, cost_usd=actual.cost_usd, usage=actual.usage
        )
        logger.debug("committed %s: %s", open_.call.tool, actual)
    except tollgate.TollgateError as error:
        logger.warning(
            "committing %r failed; it expires at its estimate: %s",
            open_.call.tool,
            error,
        )
    finally:
        await _aclose(open_)


async def _aclose(open_: _AsyncOpen) -> None:
    try:
        await open_.stack.aclose()
    except tollgate.TollgateError as error:
        logger.warning("settling %r failed; it expires at its estimate: %s", open_.call.tool, error)
