"""Prints compare.sh's table from tollgate-sim bench JSON files, then, last, the ratio line:
Tollgate's pairs/s over each peer's, hot workload, 64 clients."""
import json
import sys

rows = []
for path in sys.argv[1:]:
    with open(path) as f:
        rows.extend(json.load(f))

header = ("system", "work", "clients", "pairs/s", "res p50", "res p99", "res p99.9",
          "com p50", "com p99", "com p99.9", "cpu cli", "cpu srv", "errors")
print("%-9s %-6s %7s %9s %8s %8s %9s %8s %8s %9s %8s %8s %6s" % header)
for r in rows:
    ms = lambda us: "%.2f" % (us / 1000.0)
    print("%-9s %-6s %7d %9.0f %8s %8s %9s %8s %8s %9s %8.1f %8s %6d" % (
        r["label"], r["workload"], r["clients"], r["throughput_pairs_s"],
        ms(r["reserve"]["p50_us"]), ms(r["reserve"]["p99_us"]), ms(r["reserve"]["p999_us"]),
        ms(r["commit"]["p50_us"]), ms(r["commit"]["p99_us"]), ms(r["commit"]["p999_us"]),
        r["cpu_client_us_per_pair"],
        "-" if r["cpu_servers_us_per_pair"] is None else "%.1f" % r["cpu_servers_us_per_pair"],
        r["errors"] + r["denied"]))
print("latencies in ms; cpu: CPU us per pair, client process and server processes")


def hot64(system):
    for r in rows:
        if r["system"] == system and r["workload"] == "hot" and r["clients"] == 64:
            return r["throughput_pairs_s"]
    return None


tollgate, etcd, redis = hot64("tollgate"), hot64("etcd"), hot64("redis")
ratio = lambda peer: "n/a" if not tollgate or not peer else "%.2f" % (tollgate / peer)
print("ratio vs etcd: %s, vs redis: %s" % (ratio(etcd), ratio(redis)))
