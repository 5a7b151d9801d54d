"""Failing open: spend this process grants itself while the cluster is unreachable, capped,
and the reports of that spend (Records) waiting for the cluster to come back, so spend that
happened offline is charged once the cluster answers again and never dropped."""

from __future__ import annotations

import logging
import threading
from collections import deque

from ._core import OFFLINE_REPORTS_MAX, OFFLINE_REQUEST_ID_PREFIX, new_request_id
from ._pb import tollgate_pb2 as pb
from ._types import U64_MAX, Amounts

log = logging.getLogger("tollgate")


class Offline:
    """The local cap and the queue of offline spend to report. The cap counts what is held
    by local reservations plus what was spent offline and is not yet reported."""

    def __init__(self, cap: Amounts) -> None:
        self._lock = threading.Lock()
        self._cap = cap
        self._used = Amounts()
        self._reports: deque[tuple[pb.RecordRequest, Amounts]] = deque()

    def try_hold(self, estimate: Amounts) -> str | None:
        """Holds `estimate` under the cap; else says why not."""
        with self._lock:
            if len(self._reports) >= OFFLINE_REPORTS_MAX:
                return f"{OFFLINE_REPORTS_MAX} offline reports are waiting for the cluster"
            after = self._used.plus(estimate)
            if not after.fits_within(self._cap):
                return (
                    f"fail-open local cap exhausted: asked {describe(estimate)}, "
                    f"used {describe(self._used)} of {describe(self._cap)}"
                )
            self._used = after
            return None

    def give_back(self, estimate: Amounts) -> None:
        """A local reservation was released: the call did not happen."""
        with self._lock:
            self._used = self._used.minus(estimate)

    def spent(
        self,
        estimate: Amounts,
        spent: Amounts,
        tenant: str,
        agent: str,
        tool: str,
        wire_amounts: pb.Amounts,
        wire_usage: pb.Usage | None,
    ) -> None:
        """A local reservation was settled (committed, or abandoned at its estimate): count
        what was spent and queue its report. Spend past the cap is counted, never dropped."""
        request = pb.RecordRequest(
            request_id=OFFLINE_REQUEST_ID_PREFIX + new_request_id(),
            tenant=tenant,
            agent=agent,
            tool=tool,
            actual=wire_amounts,
            offline=True,
        )
        if wire_usage is not None:
            request.usage.CopyFrom(wire_usage)
        with self._lock:
            self._used = self._used.minus(estimate).plus(spent)
            self._reports.append((request, spent))
        log.warning(
            "tollgate unreachable: spend of %s/%s/%s granted offline, to be reported",
            tenant,
            agent,
            tool,
        )

    def next_report(self) -> tuple[pb.RecordRequest, Amounts] | None:
        with self._lock:
            return self._reports[0] if self._reports else None

    def reported(self, request: pb.RecordRequest, spent: Amounts) -> None:
        """The cluster charged the report: it no longer counts against the local cap."""
        with self._lock:
            if self._reports and self._reports[0][0] is request:
                self._reports.popleft()
                self._used = self._used.minus(spent)

    def pending(self) -> int:
        with self._lock:
            return len(self._reports)

    def used(self) -> Amounts:
        with self._lock:
            return self._used


def describe(amounts: Amounts) -> str:
    def one(value: int, unit: str) -> str:
        return f"unlimited {unit}" if value == U64_MAX else f"{value} {unit}"

    return ", ".join(
        (
            one(amounts.tokens, "tokens"),
            one(amounts.cost_micros, "cost micros"),
            one(amounts.calls, "calls"),
        )
    )
