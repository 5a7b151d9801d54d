"""What Client and AsyncClient share besides the I/O: configuration, the remembered leader,
the circuit breaker, and the fail-open decision."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from . import _wire
from ._core import ATTEMPT_TIMEOUT_DEFAULT_S, CHANNELS_MAX, Breaker, Leader, Settings
from ._errors import Unavailable
from ._local import Offline
from ._types import FailOpen, Tls

log = logging.getLogger("tollgate")


class ClientBase:
    def __init__(
        self,
        endpoints: Sequence[str],
        token: str | None,
        tls: Tls | None,
        deadline: float,
        fail_open: FailOpen | None,
        attempt_timeout: float = ATTEMPT_TIMEOUT_DEFAULT_S,
    ) -> None:
        self._settings = Settings.build(endpoints, token, tls, deadline, fail_open, attempt_timeout)
        self._metadata = self._settings.metadata()
        self._leader = Leader(self._settings.endpoints)
        self._breaker = Breaker()
        self._offline = None if fail_open is None else Offline(fail_open.cap)

    @property
    def leader(self) -> str | None:
        """The node believed to be the leader (host:port), if any."""
        return self._leader.get()

    @property
    def offline_reports_pending(self) -> int:
        """Spend granted while failing open that the cluster has not been told of yet."""
        return 0 if self._offline is None else self._offline.pending()

    def _fail_open_or_raise(self, checked: _wire.Reserve, error: Unavailable) -> None:
        """Returns when a local grant is allowed (and holds it); raises otherwise."""
        if self._offline is None:
            raise error
        why_not = self._offline.try_hold(checked.estimate)
        if why_not is not None:
            raise Unavailable(f"{error}; {why_not}") from error
        r = checked.request
        log.warning(
            "tollgate unreachable: failing open with a local reservation for %s/%s/%s (%s)",
            r.tenant,
            r.agent,
            r.tool,
            error,
        )

    def _evict_victim(self, channels: Sequence[str]) -> str | None:
        """The channel to close when CHANNELS_MAX is reached: a hint-learned one first."""
        if len(channels) < CHANNELS_MAX:
            return None
        for addr in channels:
            if addr not in self._settings.endpoints:
                return addr
        return channels[0]
