"""What a reservation knows, for the sync and the async guard alike: its ids, its estimate,
whether it was granted by the cluster or locally, and whether it is settled yet."""

from __future__ import annotations

import time

from . import _wire
from ._errors import InvalidRequest
from ._pb import tollgate_pb2 as pb
from ._types import Amounts, Committed, Money, Remaining, Usage


class Held:
    """Base of Reservation and AsyncReservation."""

    def __init__(self, checked: _wire.Reserve, granted: _wire.Granted | None) -> None:
        request = checked.request
        self.tenant: str = request.tenant
        self.agent: str = request.agent
        self.tool: str = request.tool
        self.request_id: str = request.request_id
        self.estimate: Amounts = checked.estimate
        self._estimate_usage: pb.Usage | None = request.usage if request.HasField("usage") else None
        # The cluster's id of this reservation; None for a local (fail-open) grant.
        self.reservation_id: int | None = None if granted is None else granted.reservation_id
        # When the hold expires and is charged at its estimate, unix seconds.
        self.expires_at: float = (
            time.time() + checked.ttl_s if granted is None else granted.expires_at
        )
        # What remains of the tightest limit after this grant; None when none applies.
        self.tightest: Remaining | None = None if granted is None else granted.tightest
        # Granted by this process because the cluster was unreachable and the client fails open.
        self.is_local: bool = granted is None
        # Set by a commit.
        self.result: Committed | None = None
        self._settled = False

    def _settle(self, what: str) -> None:
        if self._settled:
            raise InvalidRequest(f"reservation {self.request_id} is already settled; cannot {what}")
        self._settled = True

    def _actual(
        self,
        tokens: int,
        cost_usd: Money | None,
        cost_micros: int | None,
        calls: int | None,
        usage: Usage | None,
    ) -> tuple[pb.Amounts, pb.Usage | None, Amounts]:
        # An unsaid number of calls is the estimate's, sent explicitly.
        return _wire.actual(
            tokens=tokens,
            cost_usd=cost_usd,
            cost_micros=cost_micros,
            calls=self.estimate.calls if calls is None else calls,
            usage=usage,
        )

    def _estimate_as_actual(self) -> tuple[pb.Amounts, pb.Usage | None]:
        """What an abandoned local reservation reports: its estimate, priced as reserved."""
        e = self.estimate
        cost = 0 if self._estimate_usage is not None else e.cost_micros
        return pb.Amounts(tokens=e.tokens, cost_micros=cost, calls=e.calls), self._estimate_usage

    def __repr__(self) -> str:
        where = "local" if self.is_local else f"id={self.reservation_id}"
        return (
            f"<{type(self).__name__} {where} {self.tenant}/{self.agent}/{self.tool} "
            f"estimate={self.estimate} settled={self._settled}>"
        )
