"""The client's value types and the conversions at its edge: money given as float, str or
Decimal becomes integer micro-units exactly (never via binary floating point), and every
amount is checked before any RPC is sent."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import TypeAlias

from ._errors import InvalidRequest

Money: TypeAlias = float | int | str | Decimal

# Micro-units per currency unit: 1 USD = 1_000_000 micros.
MICROS_PER_UNIT = 1_000_000
# Amounts travel as protobuf uint64.
U64_MAX = 2**64 - 1
# The longest model name the price table accepts.
MODEL_BYTES_MAX = 128
# Largest PEM or key file read: far above any real certificate bundle.
FILE_BYTES_MAX = 1024 * 1024


def count(name: str, value: object) -> int:
    """A count (tokens, calls, micros): a non-negative int that fits a uint64."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or value > U64_MAX:
        raise InvalidRequest(f"{name} must be between 0 and {U64_MAX}, got {value}")
    return value


def to_micros(name: str, money: Money) -> int:
    """Money in currency units as integer micro-units, rounded up (a cost is never
    under-counted). A float is taken as the decimal it prints as (0.07 is 70_000 micros,
    not 70_001 from its binary expansion)."""
    if isinstance(money, bool):
        raise InvalidRequest(f"{name} must be a number, got bool")
    try:
        if isinstance(money, float):
            exact = Decimal(repr(money))
        elif isinstance(money, (int, str, Decimal)):
            exact = Decimal(money.strip() if isinstance(money, str) else money)
        else:
            raise InvalidRequest(f"{name} must be a float, int, str or Decimal")
    except InvalidOperation:
        raise InvalidRequest(f"{name} is not a number: {money!r}") from None
    if not exact.is_finite() or exact < 0:
        raise InvalidRequest(f"{name} must be a finite amount of at least 0, got {money!r}")
    micros = int((exact * MICROS_PER_UNIT).to_integral_value(rounding=ROUND_CEILING))
    return count(name, micros)


def cost_micros_of(cost_usd: Money | None, cost_micros: int | None) -> int:
    """The cost of a call from either of its two spellings (not both); 0 when neither."""
    if cost_usd is not None and cost_micros is not None:
        raise InvalidRequest("give cost_usd or cost_micros, not both")
    if cost_usd is not None:
        return to_micros("cost_usd", cost_usd)
    if cost_micros is not None:
        return count("cost_micros", cost_micros)
    return 0


def seconds_from_ms(ms: int) -> float:
    return ms / 1000.0


@dataclass(frozen=True)
class Usage:
    """What an LLM call used, as its provider reports it; the cluster prices it with the
    tenant's price table."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise InvalidRequest("Usage.model must be a non-empty string")
        if len(self.model.encode("utf-8")) > MODEL_BYTES_MAX:
            raise InvalidRequest(f"Usage.model is over {MODEL_BYTES_MAX} bytes")
        count("Usage.input_tokens", self.input_tokens)
        count("Usage.output_tokens", self.output_tokens)
        count("Usage.cached_input_tokens", self.cached_input_tokens)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.output_tokens


@dataclass(frozen=True)
class Amounts:
    """Spend in every dimension; cost in integer micro-units."""

    tokens: int = 0
    cost_micros: int = 0
    calls: int = 0

    def plus(self, other: Amounts) -> Amounts:
        return Amounts(
            self.tokens + other.tokens,
            self.cost_micros + other.cost_micros,
            self.calls + other.calls,
        )

    def minus(self, other: Amounts) -> Amounts:
        """Subtraction stopping at zero in each dimension."""
        return Amounts(
            max(0, self.tokens - other.tokens),
            max(0, self.cost_micros - other.cost_micros),
            max(0, self.calls - other.calls),
        )

    def fits_within(self, other: Amounts) -> bool:
        return (
            self.tokens <= other.tokens
            and self.cost_micros <= other.cost_micros
            and self.calls <= other.calls
        )


class FailOpen:
    """Grant reservations locally, up to this cap, when the cluster cannot be reached.

    The cap bounds the spend made while failing open and not yet reported to the cluster
    (reported as Records once the cluster answers again). A dimension left as None is not
    capped; at least one must be given. No limit of the cluster is checked for a local grant.
    """

    def __init__(
        self,
        *,
        tokens: int | None = None,
        cost_usd: Money | None = None,
        cost_micros: int | None = None,
        calls: int | None = None,
    ) -> None:
        if tokens is None and cost_usd is None and cost_micros is None and calls is None:
            raise InvalidRequest("FailOpen needs a cap: tokens, cost_usd/cost_micros or calls")
        unlimited = U64_MAX
        cost = (
            unlimited
            if cost_usd is None and cost_micros is None
            else cost_micros_of(cost_usd, cost_micros)
        )
        self.cap = Amounts(
            tokens=unlimited if tokens is None else count("FailOpen.tokens", tokens),
            cost_micros=cost,
            calls=unlimited if calls is None else count("FailOpen.calls", calls),
        )

    def __repr__(self) -> str:
        return f"FailOpen(cap={self.cap})"


def _read_bounded(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(FILE_BYTES_MAX + 1)
    except OSError as e:
        raise InvalidRequest(f"reading {what} {os.fspath(path)!r}: {e}") from None
    if len(data) > FILE_BYTES_MAX:
        raise InvalidRequest(f"{what} {os.fspath(path)!r} is over {FILE_BYTES_MAX} bytes")
    return data


class Tls:
    """TLS to the nodes: the cluster CA (PEM file) and optionally a client certificate."""

    def __init__(
        self,
        ca: str | os.PathLike[str],
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
    ) -> None:
        if (cert is None) != (key is None):
            raise InvalidRequest("a client certificate needs its key, and a key its certificate")
        self.ca_pem = _read_bounded(ca, "CA file")
        if not self.ca_pem.startswith(b"-----BEGIN"):
            raise InvalidRequest(f"CA file {os.fspath(ca)!r} is not PEM")
        self.cert_pem = None if cert is None else _read_bounded(cert, "certificate file")
        self.key_pem = None if key is None else _read_bounded(key, "key file")

    @classmethod
    def from_env(cls) -> Tls | None:
        """From TOLLGATE_TLS_CA (and TOLLGATE_TLS_CERT/KEY); None when it is unset."""
        ca = os.environ.get("TOLLGATE_TLS_CA")
        if not ca:
            return None
        cert = os.environ.get("TOLLGATE_TLS_CERT") or None
        key = os.environ.get("TOLLGATE_TLS_KEY") or None
        return cls(ca, cert, key)


def token_from_env() -> str | None:
    """TOLLGATE_API_KEY, else the content of the file TOLLGATE_API_KEY_FILE names."""
    key = os.environ.get("TOLLGATE_API_KEY")
    if key:
        return key
    path = os.environ.get("TOLLGATE_API_KEY_FILE")
    if not path:
        return None
    text = _read_bounded(path, "API key file")
    try:
        return text.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidRequest(f"API key file {path!r} is not UTF-8 text") from None


@dataclass(frozen=True)
class Committed:
    """What a commit did."""

    # The actual spend exceeded the estimate in some dimension (charged anyway, audited).
    overrun: bool
    # The reservation had already expired; its expiry charge was trued up to the actual.
    late: bool
    # The cost charged, in micro-units (derived from the usage when usage was given).
    cost_micros: int


@dataclass(frozen=True)
class Remaining:
    """What remains of one limit after a grant."""

    limit_id: str
    dimension: str
    remaining: int


@dataclass(frozen=True)
class LimitUsage:
    """Usage and remaining of one limit that applies."""

    limit_id: str
    scope: str
    dimension: str
    # The agent this row counts, for per-agent limits; None for tenant-wide ones.
    agent: str | None
    used: int
    held: int
    remaining: int
    # Start of the current budget window, unix seconds; None for lifetime budgets and rates.
    window_start: float | None
    # The limit's soft thresholds in percent of a budget: crossing one by committed spend is
    # audited ("threshold_crossed") and alerted, never denied. Empty: none.
    thresholds: tuple[int, ...] = (50, 80, 95)
    # The highest of them committed spend has crossed in the current window (0: none): a
    # worker may switch to a cheaper model before the budget denies.
    alerted_percent: int = 0


def finite_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name} must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"{name} must be a finite number of seconds above 0, got {value}")
    return float(value)
