"""Framework hooks: guard every LLM and tool call an agent framework makes with Tollgate,
without the user writing reserve and commit.

- `tollgate.hooks.openai_agents.TollgateRunHooks`: the OpenAI Agents SDK (`RunHooks`).
- `tollgate.hooks.langchain.TollgateCallbackHandler` and `AsyncTollgateCallbackHandler`:
  LangChain and LangGraph (callback handlers).

This package imports no framework: each module imports its own, so installing one framework
is enough. What the modules share lives here: the estimate of a tool call, the bounded table
of reservations in flight, and how a provider's token counts become a commit.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Collection, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

import tollgate

__all__ = ["Estimate", "OpenReservationsFull"]

# Reservations a hook holds open at once, by default: far above the calls one agent worker
# has in flight, so reaching it means calls that never ended (a leak), not load.
OPEN_MAX_DEFAULT = 1024
# What an LLM call is estimated to use when the caller does not say.
LLM_TOKENS_DEFAULT = 4_000
# Seconds a hook's reservation lives before the cluster settles it at its estimate.
TTL_DEFAULT = 120.0
logger = logging.getLogger(__name__)

# The price table's catch-all entry: a tenant with it prices every model.
PRICE_FALLBACK = "*"


@dataclass(frozen=True)
class Estimate:
    """What one call of a tool is reserved, and committed, at: a tool reports no usage of its
    own, so its estimate is what it costs."""

    tokens: int = 0
    cost_usd: float | None = None
    calls: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 0:
            raise ValueError(f"Estimate.tokens must be an int >= 0, got {self.tokens!r}")
        if isinstance(self.calls, bool) or not isinstance(self.calls, int) or self.calls < 0:
            raise ValueError(f"Estimate.calls must be an int >= 0, got {self.calls!r}")
        if self.cost_usd is not None and not self.cost_usd >= 0:
            raise ValueError(f"Estimate.cost_usd must be >= 0, got {self.cost_usd!r}")


@dataclass(frozen=True)
class TokenCounts:
    """An LLM call's tokens as Tollgate counts them: `input` excludes the tokens read from
    the provider's prompt cache, which are `cached` (the providers report input including
    them, and bill them at a lower price)."""

    input: int
    output: int
    cached: int

    @staticmethod
    def of(input_total: int, output: int, cached: int) -> TokenCounts:
        """From a provider's report, where `input_total` includes the cached tokens."""
        input_total, output, cached = (
            max(input_total, 0),
            max(output, 0),
            max(cached, 0),
        )
        cached = min(cached, input_total)
        return TokenCounts(input=input_total - cached, output=output, cached=cached)

    @property
    def total(self) -> int:
        return self.input + self.output + self.cached

    def usage(self, model: str) -> tollgate.Usage:
        return tollgate.Usage(
            model=model,
            input_tokens=self.input,
            output_tokens=self.output,
            cached_input_tokens=self.cached,
        )


@dataclass(frozen=True)
class Actual:
    """What a call is committed at: tokens and a cost, or usage the cluster prices."""

    tokens: int = 0
    cost_usd: float | None = None
    usage: tollgate.Usage | None = None

    def __str__(self) -> str:
        if self.usage is not None:
            u = self.usage
            return (
                f"{u.model}: {u.input_tokens} input, {u.cached_input_tokens} cached, "
                f"{u.output_tokens} output tokens, priced by the tenant"
            )
        cost = "" if self.cost_usd is None else f", ${self.cost_usd}"
        return f"{self.tokens} tokens{cost}"


def grant_text(tool: str, reservation_id: int | None, tightest: tollgate.Remaining | None) -> str:
    """A grant as the hooks log it (at DEBUG, on the logger of their module)."""
    where = "granted locally" if reservation_id is None else f"reservation {reservation_id}"
    left = (
        ""
        if tightest is None
        else f"; tightest: {tightest.limit_id}, {tightest.remaining} {tightest.dimension} left"
    )
    return f"granted {tool} ({where}{left})"


def llm_actual(
    counts: TokenCounts | None,
    model: str | None,
    priced_models: Collection[str],
    estimate: Estimate,
) -> Actual:
    """The commit of an LLM call: its usage when the tenant prices its model; else the tokens
    it reported (the estimate's when it reported none) at the estimate's cost, since nothing
    here can price it."""
    priced = priced_model(model, priced_models)
    if counts is not None and priced is not None:
        return Actual(usage=counts.usage(priced))
    tokens = counts.total if counts is not None else estimate.tokens
    return Actual(tokens=tokens, cost_usd=estimate.cost_usd)


def tool_actual(estimate: Estimate) -> Actual:
    """A tool reports no usage: it is committed at its estimate."""
    return Actual(tokens=estimate.tokens, cost_usd=estimate.cost_usd)


# A tool no `tool_costs` entry names: one call, nothing else.
TOOL_COST_DEFAULT = Estimate()


def priced_model(model: str | None, priced_models: Collection[str]) -> str | None:
    """The model to commit usage for, when the tenant's price table prices it; None: commit
    tokens (and the estimate's cost) instead, since usage the table cannot price is refused.
    """
    if model is None:
        return None
    if PRICE_FALLBACK in priced_models or model in priced_models:
        return model
    return None


def llm_tool(model: str | None) -> str:
    """The Tollgate tool of an LLM call: `llm:MODEL`, so limits can name one model."""
    return "llm" if model is None else f"llm:{model}"


class OpenReservationsFull(RuntimeError):
    """A hook holds `open_max` reservations already: calls started and never ended. The new
    call is refused (not let through unguarded) rather than evicting one still running.
    """


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class OpenTable(Generic[K, V]):
    """Reservations in flight, at most `open_max` of them, by the framework's key for a call.
    Several calls may share a key (a framework that names calls only by their run and tool):
    they end in the order they started. Thread safe: LangChain runs sync tools on a pool.
    """

    def __init__(self, open_max: int) -> None:
        if open_max < 1:
            raise ValueError(f"open_max must be at least 1, got {open_max}")
        self._open_max = open_max
        self._entries: dict[K, deque[V]] = {}
        self._count = 0
        self._lock = threading.Lock()

    def check_room(self) -> None:
        """Refuses a new call, before it is reserved, when the table is full."""
        with self._lock:
            self._check_room_locked()

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._check_room_locked()
            self._entries.setdefault(key, deque()).append(value)
            self._count += 1

    def pop(self, key: K) -> V | None:
        """The oldest entry under `key`, taken out; None when there is none."""
        with self._lock:
            queue = self._entries.get(key)
            if not queue:
                return None
            value = queue.popleft()
            if not queue:
                del self._entries[key]
            self._count -= 1
            return value

    def drain(self) -> list[V]:
        """Takes every open entry out."""
        with self._lock:
            values = [value for queue in self._entries.values() for value in queue]
            self._entries.clear()
            self._count = 0
            return values

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def _check_room_locked(self) -> None:
        if self._count >= self._open_max:
            raise OpenReservationsFull(
                f"{self._open_max} reservations are open in this hook (open_max): calls "
                "that started and never ended; refusing the next call"
            )


class _OpenCalls(Generic[K, V]):
    """What every hook knows of its calls in flight: the table and how to name and settle one
    of them. A call that started and never reported an end may have spent, so a hook that
    closes settles it at its estimate, flagged abandoned (never releases it)."""

    _open: OpenTable[K, V]

    @property
    def open_count(self) -> int:
        """Reservations of calls that started and have not ended."""
        return len(self._open)

    def _tool_of(self, open_: V) -> str:
        raise NotImplementedError

    def _drain_abandoned(self) -> list[V]:
        drained = self._open.drain()
        for open_ in drained:
            logger.warning("settling the open reservation of %r as abandoned", self._tool_of(open_))
        return drained


S = TypeVar("S")


class SettlesOnExit(_OpenCalls[K, V]):
    """`with hook:` settles the calls still open when the block ends (sync hooks)."""

    def __enter__(self: S) -> S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.settle_open()

    def settle_open(self) -> None:
        """Settles every reservation still open at its estimate, flagged abandoned."""
        for open_ in self._drain_abandoned():
            self._abandon(open_)

    def _abandon(self, open_: V) -> None:
        raise NotImplementedError


class AsyncSettlesOnExit(_OpenCalls[K, V]):
    """`async with hook:` settles the calls still open when the block ends (async hooks)."""

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.settle_open()

    async def settle_open(self) -> None:
        """Settles every reservation still open at its estimate, flagged abandoned."""
        for open_ in self._drain_abandoned():
            await self._abandon(open_)

    async def _abandon(self, open_: V) -> None:
        raise NotImplementedError
