"""Prints compare.sh's tables from tollgate-sim bench JSON files, then, last, the ratio line:
Tollgate per call's pairs/s over each peer's (hot workload, 64 clients, one process), the
leases run's pairs/s before exhaustion over Redis's (hot budget running out, 64 clients in 8
processes), and the leases run's overspend."""
import json
import os
import sys

rows = []
for path in sys.argv[1:]:
    if not os.path.exists(path):  # a run that failed (compare.sh said so)
        continue
    with open(path) as f:
        rows.extend(json.load(f))
plain = [r for r in rows if r.get("budget") is None]
edge = [r for r in rows if r.get("budget") is not None]


def ms(us):
    return "%.2f" % (us / 1000.0)


def opt(value, fmt):
    return "-" if value is None else fmt % value


header = ("system", "work", "clients", "pairs/s", "res p50", "res p99", "res p99.9",
          "com p50", "com p99", "com p99.9", "cpu cli", "cpu srv", "errors")
print("%-9s %-6s %7s %9s %8s %8s %9s %8s %8s %9s %8s %8s %6s" % header)
for r in plain:
    print("%-9s %-6s %7d %9.0f %8s %8s %9s %8s %8s %9s %8.1f %8s %6d" % (
        r["label"], r["workload"], r["clients"], r["throughput_pairs_s"],
        ms(r["reserve"]["p50_us"]), ms(r["reserve"]["p99_us"]), ms(r["reserve"]["p999_us"]),
        ms(r["commit"]["p50_us"]), ms(r["commit"]["p99_us"]), ms(r["commit"]["p999_us"]),
        r["cpu_client_us_per_pair"], opt(r["cpu_servers_us_per_pair"], "%.1f"),
        r["errors"] + r["denied"]))
print("latencies in ms; cpu: CPU us per pair, client process and server processes")

if edge:
    print()
    print("hot budget running out half-way, 64 clients in 8 client processes:")
    header = ("system", "pairs/s", "exh at s", "overspend", "chg-cli", "audit", "false den",
              "denials", "res p50", "res p99", "raft ent/s", "srv cores", "errors")
    print("%-16s %9s %8s %9s %9s %10s %9s %8s %8s %8s %10s %9s %6s" % header)
    for r in edge:
        b = r["budget"]
        if b["audit_matches"] is None:
            audit = "-"
        elif not b["audit_complete"]:
            audit = "incomplete"
        else:
            audit = "matches" if b["audit_matches"] else "DIFFERS"
        print("%-16s %9.0f %8s %9s %9s %10s %9d %8d %8s %8s %10s %9s %6d" % (
            r["label"], b["pairs_s_before_exhaustion"], opt(b["exhausted_at_s"], "%.2f"),
            opt(b["overspend"], "%d"), opt(b.get("charged_minus_client"), "%d"), audit, b["false_denials"], b["denials"],
            ms(r["reserve"]["p50_us"]), ms(r["reserve"]["p99_us"]),
            opt(r["raft_entries_s"], "%.0f"), opt(r["cpu_servers_cores"], "%.2f"),
            r["errors"]))
    print("pairs/s: before the budget ran out (first denial); exh at: seconds into the "
          "measured window;")
    print("overspend: committed + held - limit after the run (cost us); chg-cli: committed "
          "minus the clients' own spend;")
    print("audit: the charged audit records add up to committed;")
    print("false den: denials more than one lease TTL before the last grant; res: reserve "
          "as the caller sees it (ms)")

print()
print("what each guarantees:")
for system, guarantee in (
        ("redis", "single node, no replication, no audit trail"),
        ("etcd", "replicated (Raft), no audit trail"),
        ("tollgate per call", "replicated (Raft) and audited, every reserve and commit"),
        ("tollgate leases", "replicated (Raft); every call audited when its lease settles;"
                            " a crashed client's slice charged in full at expiry")):
    print("  %-18s %s" % (system, guarantee))


def hot64(system):
    for r in plain:
        if r["system"] == system and r["workload"] == "hot" and r["clients"] == 64:
            return r["throughput_pairs_s"]
    return None


def edge_run(pred):
    for r in edge:
        if pred(r):
            return r
    return None


tollgate, etcd, redis = hot64("tollgate"), hot64("etcd"), hot64("redis")
ratio = lambda ours, peer: "n/a" if not ours or not peer else "%.2f" % (ours / peer)
leases = edge_run(lambda r: r["system"] == "tollgate" and r.get("leases"))
redis_edge = edge_run(lambda r: r["system"] == "redis")
leases_pairs = leases and leases["budget"]["pairs_s_before_exhaustion"]
redis_pairs = redis_edge and redis_edge["budget"]["pairs_s_before_exhaustion"]
overspend = "n/a" if leases is None else opt(leases["budget"]["overspend"], "%d")
print("ratio vs etcd: %s, vs redis: %s, leases vs redis: %s, overspend: %s" % (
    ratio(tollgate, etcd), ratio(tollgate, redis), ratio(leases_pairs, redis_pairs), overspend))
