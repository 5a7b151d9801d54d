"""What the sync and async clients share, without any I/O: the validated settings, where
the next attempt goes (the leader, else the next endpoint), whether and how long to wait
before it, and the circuit breaker that makes a down cluster fail fast. The clients only
send RPCs and sleep; they never decide what to try next."""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from . import _errors
from ._errors import InvalidRequest, Unavailable
from ._types import FailOpen, Tls, finite_seconds, token_from_env

log = logging.getLogger("tollgate")

# Response metadata in which a follower names the leader.
LEADER_METADATA_KEY = "tollgate-leader"
# Most attempts one operation makes, whatever the deadline (as the Rust client).
ATTEMPTS_MAX = 32
# Time one attempt (connect + RPC) may take before it is abandoned and retried.
ATTEMPT_TIMEOUT_DEFAULT_S = 1.0
# Pauses between retries: exponential from 20 ms to 500 ms, half of each pause jitter.
BACKOFF_INITIAL_S = 0.020
BACKOFF_MAX_S = 0.500
# While every node refuses connections, one call per interval probes; others fail at once.
BREAKER_PROBE_INTERVAL_S = 0.5
# A cluster has three or five nodes; more endpoints is a configuration mistake.
ENDPOINTS_MAX = 16
# Channels one client keeps (configured endpoints plus addresses learnt from hints).
CHANNELS_MAX = 32
# Longest id (tenant, agent, tool, request id) the cluster accepts, in bytes.
ID_BYTES_MAX = 128
# Offline spend waiting to be reported; at the bound, failing open refuses new grants
# rather than drop a report.
OFFLINE_REPORTS_MAX = 10_000
# Reports sent after one successful call, so catching up never stalls a caller for long.
OFFLINE_REPORTS_PER_FLUSH = 64
# Request ids of offline reports start with this, so the audit trail shows them as such.
OFFLINE_REQUEST_ID_PREFIX = "offline-"
TTL_DEFAULT_S = 60.0


def new_request_id() -> str:
    return secrets.token_hex(16)


def check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{name} must be a non-empty string")
    if len(value.encode("utf-8")) > ID_BYTES_MAX:
        raise InvalidRequest(f"{name} is over {ID_BYTES_MAX} bytes")
    return value


def normalise_endpoint(endpoint: str, tls: bool) -> str:
    """`host:port` (the gRPC target) from `host:port`, `http://host:port` (clear text) or
    `https://host:port` (TLS); a scheme that contradicts the TLS setting is refused."""
    if not isinstance(endpoint, str):
        raise InvalidRequest(f"endpoint {endpoint!r} is not a string")
    text = endpoint.strip().rstrip("/")
    wrong, right = ("http://", "https://") if tls else ("https://", "http://")
    if text.startswith(wrong):
        why = "the client uses TLS" if tls else "TLS needs a CA (tollgate.Tls or TOLLGATE_TLS_CA)"
        raise InvalidRequest(f"endpoint {endpoint!r}: {why}")
    if text.startswith(right):
        text = text[len(right) :]
    if "://" in text or "/" in text or " " in text:
        raise InvalidRequest(f"endpoint {endpoint!r} is not host:port")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest(f"endpoint {endpoint!r} needs a host and a port, e.g. 10.0.0.1:7001")
    return text


@dataclass(frozen=True)
class Settings:
    """A client's validated configuration."""

    endpoints: tuple[str, ...]
    token: str | None
    tls: Tls | None
    deadline_s: float
    attempt_timeout_s: float
    fail_open: FailOpen | None

    @staticmethod
    def build(
        endpoints: Sequence[str],
        token: str | None,
        tls: Tls | None,
        deadline: float,
        fail_open: FailOpen | None,
        attempt_timeout: float,
    ) -> Settings:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        if not endpoints:
            raise InvalidRequest("no endpoints configured")
        if len(endpoints) > ENDPOINTS_MAX:
            raise InvalidRequest(f"{len(endpoints)} endpoints, at most {ENDPOINTS_MAX} allowed")
        tls = tls if tls is not None else Tls.from_env()
        normalised: list[str] = []
        for endpoint in endpoints:
            addr = normalise_endpoint(endpoint, tls is not None)
            if addr not in normalised:
                normalised.append(addr)
        token = token if token is not None else token_from_env()
        if token is not None and (not token.isprintable() or not token.isascii()):
            raise InvalidRequest("token contains characters not allowed in a header")
        if fail_open is not None and not isinstance(fail_open, FailOpen):
            raise InvalidRequest("fail_open must be a tollgate.FailOpen or None")
        return Settings(
            endpoints=tuple(normalised),
            token=token,
            tls=tls,
            deadline_s=finite_seconds("deadline", deadline),
            attempt_timeout_s=finite_seconds("attempt_timeout", attempt_timeout),
            fail_open=fail_open,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self.token is None else (("authorization", f"Bearer {self.token}"),)

    def channel_options(self) -> list[tuple[str, int]]:
        # Reconnect quickly once a node is back (the default waits up to two minutes),
        # and never route loopback or cluster traffic through an HTTP proxy from the env.
        return [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.enable_http_proxy", 0),
        ]

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls.ca_pem,
            private_key=self.tls.key_pem,
            certificate_chain=self.tls.cert_pem,
        )


class Breaker:
    """Opens after a call in which every endpoint refused the connection; while open, calls
    fail at once, except one probe per interval that tries the cluster again."""

    def __init__(self, interval_s: float = BREAKER_PROBE_INTERVAL_S) -> None:
        self._lock = threading.Lock()
        self._interval_s = interval_s
        self._open_until: float | None = None
        self._probing = False
        self._reason = ""

    def admit(self) -> bool:
        """True when this call is the probe; raises Unavailable while the breaker is open."""
        with self._lock:
            if self._open_until is None:
                return False
            now = time.monotonic()
            if now < self._open_until or self._probing:
                raise Unavailable(
                    f"{self._reason}; circuit breaker open, next probe in "
                    f"{max(0.0, self._open_until - now) * 1000:.0f} ms"
                )
            self._probing = True
            return True

    def trip(self, reason: str) -> None:
        with self._lock:
            self._open_until = time.monotonic() + self._interval_s
            self._probing = False
            self._reason = reason

    def close(self) -> None:
        with self._lock:
            self._open_until = None
            self._probing = False

    def probe_ended(self) -> None:
        """A probe ended without a verdict (e.g. its deadline passed): the next may go."""
        with self._lock:
            self._probing = False

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_until is not None


class Leader:
    """The address believed to be the leader, and the round robin over endpoints while
    none is known."""

    def __init__(self, endpoints: tuple[str, ...]) -> None:
        self._lock = threading.Lock()
        self._endpoints = endpoints
        self._leader: str | None = None
        self._next = 0

    def pick(self, avoid: set[str]) -> str:
        with self._lock:
            if self._leader is not None and self._leader not in avoid:
                return self._leader
            for _ in range(len(self._endpoints)):
                addr = self._endpoints[self._next % len(self._endpoints)]
                self._next = (self._next + 1) % len(self._endpoints)
                if addr not in avoid:
                    return addr
            return self._endpoints[self._next % len(self._endpoints)]

    def set(self, addr: str) -> None:
        with self._lock:
            self._leader = addr

    def forget(self, addr: str) -> None:
        with self._lock:
            if self._leader == addr:
                self._leader = None

    def get(self) -> str | None:
        with self._lock:
            return self._leader


def is_connect_failure(code: grpc.StatusCode, details: str) -> bool:
    """The node could not be reached at all (no server answered), as gRPC words it."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return False
    lowered = details.lower()
    return any(
        marker in lowered
        for marker in (
            "failed to connect",
            "connection refused",
            "connect failed",
            "dns resolution failed",
            "name resolution",
            "no route to host",
        )
    )


def backoff_s(step: int) -> float:
    ceiling = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * (2 ** min(step, 16)))
    return random.uniform(ceiling / 2, ceiling)


class CallRun:
    """The retry loop of one operation, without the sending or the sleeping: the client asks
    `next_attempt` where to send (and with which timeout), reports each failure to `failed`,
    which returns how long to pause or raises the final error, and a success to `succeeded`."""

    def __init__(self, settings: Settings, leader: Leader, breaker: Breaker) -> None:
        self._settings = settings
        self._leader = leader
        self._breaker = breaker
        self._deadline = time.monotonic() + settings.deadline_s
        self._attempts = 0
        self._backoff_step = 0
        self._tried: list[str] = []
        self._refused: set[str] = set()
        self._error_last = "no attempt was made"
        self._hint_just_followed = False
        self._probe = breaker.admit()

    def _time_left(self) -> float:
        return self._deadline - time.monotonic()

    def next_attempt(self) -> tuple[str, float]:
        left = self._time_left()
        if self._attempts >= ATTEMPTS_MAX or left <= 0:
            raise self._give_up()
        self._attempts += 1
        addr = self._leader.pick(self._refused)
        if addr not in self._tried:
            self._tried.append(addr)
        return addr, min(left, self._settings.attempt_timeout_s)

    def succeeded(self, addr: str) -> None:
        # Followers refuse every leader-only call, so an answer means leader.
        self._leader.set(addr)
        self._breaker.close()

    def failed(self, addr: str, code: grpc.StatusCode, details: str, hint: str | None) -> float:
        """Seconds to pause before the next attempt (0: at once); raises when giving up."""
        self._error_last = f"{addr}: {code.name}: {details}"
        if not _errors.is_retryable(code, details):
            self._breaker.close()
            raise _errors.from_status(code, details)
        refused = is_connect_failure(code, details)
        if refused:
            self._refused.add(addr)
            if all(e in self._refused for e in self._settings.endpoints):
                reason = (
                    f"every node refused the connection ({', '.join(self._settings.endpoints)})"
                )
                self._breaker.trip(reason)
                raise Unavailable(f"{reason}; last error: {self._error_last}")
        else:
            self._breaker.close()
        log.debug("tollgate call failed, retrying: %s", self._error_last)
        if self._follow_hint(addr, hint):
            return 0.0
        if refused:
            # Another endpoint may well answer: try it without pausing.
            return 0.0
        left = self._time_left()
        if left <= 0:
            raise self._give_up()
        pause = min(backoff_s(self._backoff_step), left)
        self._backoff_step += 1
        # A new round: endpoints that refused may have come back since.
        self._refused.clear()
        return pause

    def _follow_hint(self, addr: str, hint: str | None) -> bool:
        target: str | None = None
        if hint:
            try:
                target = normalise_endpoint(hint, self._settings.tls is not None)
            except InvalidRequest:
                log.warning("ignoring unusable leader hint %r", hint)
        if target is not None and target != addr and target not in self._refused:
            self._leader.set(target)
            if not self._hint_just_followed:
                # Follow a hint without pausing once; a second in a row means an election.
                self._hint_just_followed = True
                return True
            return False
        self._hint_just_followed = False
        self._leader.forget(addr)
        return False

    def end(self) -> None:
        """Always called when the operation ends, however it ended."""
        if self._probe:
            self._breaker.probe_ended()

    def _give_up(self) -> Unavailable:
        return Unavailable(
            f"no answer within the {self._settings.deadline_s:g} s deadline after "
            f"{self._attempts} attempt(s) (at most {ATTEMPTS_MAX}); tried "
            f"{', '.join(self._tried) or 'nothing'}; last error: {self._error_last}"
        )


def leader_hint(*metadata: object) -> str | None:
    """The `tollgate-leader` value from a failed call's trailing or initial metadata."""
    for entries in metadata:
        if not entries:
            continue
        for key, value in entries:  # type: ignore[attr-defined]
            if key == LEADER_METADATA_KEY:
                return value.decode() if isinstance(value, bytes) else str(value)
    return None
