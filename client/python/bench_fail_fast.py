"""How long a reserve takes to fail while every node of the cluster refuses connections.

Starts nothing: it points a client at free loopback ports (a cluster that is down) and
prints the median and the slowest of 20 reserves after a first one that opens the circuit
breaker, then of 20 reserves spaced out so that some are the breaker's probes.
Run: python client/python/bench_fail_fast.py
"""

from __future__ import annotations

import socket
import statistics
import time

import tollgate

RESERVES = 20
# Spacing of the second series: with the breaker's 500 ms probe interval, about every
# fifth call is a probe that tries every node again.
SPACED_S = 0.1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_reserve(client: tollgate.Client) -> float:
    start = time.perf_counter()
    try:
        client.reserve(tenant="acme", agent="bot", tool="llm", tokens=1).release()
    except tollgate.Unavailable:
        return time.perf_counter() - start
    raise SystemExit("a reserve succeeded: something is listening on the chosen ports")


def main() -> None:
    client = tollgate.Client([f"127.0.0.1:{closed_port()}" for _ in range(3)])
    first_s = one_reserve(client)
    durations_s = [one_reserve(client) for _ in range(RESERVES)]
    spaced_s = []
    for _ in range(RESERVES):
        time.sleep(SPACED_S)
        spaced_s.append(one_reserve(client))
    print(f"first reserve against a down cluster: {first_s * 1000:.2f} ms")
    print(
        f"median of {RESERVES} reserves after it: {statistics.median(durations_s) * 1000:.3f} ms "
        f"(slowest {max(durations_s) * 1000:.3f} ms; deadline 5000 ms)"
    )
    print(
        f"median of {RESERVES} reserves {SPACED_S * 1000:.0f} ms apart, probes included: "
        f"{statistics.median(spaced_s) * 1000:.3f} ms (slowest {max(spaced_s) * 1000:.3f} ms)"
    )


if __name__ == "__main__":
    main()
