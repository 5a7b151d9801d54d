"""A real three-node Tollgate cluster for tests: `tollgate serve` processes on free loopback
ports (`--insecure`, or secured as in production: TLS from `tollgate certs init` and the
bootstrap admin key), with admin helpers over the Admin RPCs. Importable by every test module
(`from cluster import Cluster`)."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from tollgate._pb import tollgate_pb2 as pb
from tollgate._pb import tollgate_pb2_grpc as pb_grpc

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[3]
# How long a cluster may take to elect a leader, and an admin call to find it.
LEADER_WAIT_S = 30.0
ADMIN_DEADLINE_S = 15.0
NODES = 3


def binary() -> Path:
    """TOLLGATE_BIN, else the workspace's debug build."""
    path = Path(os.environ.get("TOLLGATE_BIN") or REPO_ROOT / "target" / "debug" / "tollgate")
    if not path.is_file():
        raise FileNotFoundError(
            f"no tollgate binary at {path}: "
            "run `cargo build -p tollgate-server` or set TOLLGATE_BIN"
        )
    return path


# Ports for nodes: below Linux's ephemeral range (32768-60999), from which the OS picks both
# bind(0) ports and the source ports of outgoing connections, so no client connection can
# take a port between the moment it is chosen here and the node's bind.
NODE_PORTS = range(10_000, 20_000)
_next_port = itertools.count(os.getpid() * 7_919)


def free_port() -> int:
    for _ in NODE_PORTS:
        port = NODE_PORTS[next(_next_port) % len(NODE_PORTS)]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {NODE_PORTS}")


def new_id() -> str:
    return uuid.uuid4().hex


class Cluster:
    """Three nodes of one cluster. `addrs` are the client addresses (host:port), node ids
    are 1..3 and `addrs[i]` belongs to node i+1."""

    def __init__(self, secure: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tollgate-py-"))
        self.addrs = [f"127.0.0.1:{free_port()}" for _ in range(NODES)]
        self.peer_addrs = [f"127.0.0.1:{free_port()}" for _ in range(NODES)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.secure = secure
        options = [("grpc.enable_http_proxy", 0)]
        if secure:
            self._make_certs()
            credentials = grpc.ssl_channel_credentials(self.ca_path.read_bytes())
            self._metadata = [("authorization", f"Bearer {self.admin_key}")]
            self._channels = {
                addr: grpc.secure_channel(addr, credentials, options=options) for addr in self.addrs
            }
        else:
            self._metadata = []
            self._channels = {
                addr: grpc.insecure_channel(addr, options=options) for addr in self.addrs
            }

    @property
    def ca_path(self) -> Path:
        return self.dir / "certs" / "ca.pem"

    @property
    def admin_key(self) -> str:
        return (self.dir / "certs" / "admin.key").read_text().strip()

    def _make_certs(self) -> None:
        nodes = [arg for i in range(NODES) for arg in ("--node", f"{i + 1}=127.0.0.1")]
        subprocess.run(
            [str(binary()), "certs", "init", "--dir", str(self.dir / "certs"), *nodes],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def _security(self, node: int) -> list[str]:
        if not self.secure:
            return ["--insecure"]
        certs = self.dir / "certs"
        return [
            "--tls-ca",
            str(certs / "ca.pem"),
            "--tls-cert",
            str(certs / f"node-{node}.pem"),
            "--tls-key",
            str(certs / f"node-{node}.key"),
            "--admin-key-file",
            str(certs / "admin.key"),
        ]

    def _command(self, node: int) -> list[str]:
        peers = ",".join(f"{i + 1}={self.addrs[i]}/{self.peer_addrs[i]}" for i in range(NODES))
        return [
            str(binary()),
            "serve",
            *self._security(node),
            "--id",
            str(node),
            "--listen",
            self.addrs[node - 1],
            "--peer-listen",
            self.peer_addrs[node - 1],
            "--peers",
            peers,
            "--data-dir",
            str(self.dir / f"node-{node}"),
        ]

    def start(self) -> Cluster:
        for node in range(1, NODES + 1):
            self.start_node(node)
        self.wait_for_leader()
        return self

    def start_node(self, node: int) -> None:
        log = open(self.dir / f"node-{node}.log", "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
        env.setdefault("RUST_LOG", "warn")
        self.procs[node] = subprocess.Popen(
            self._command(node), stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()

    def kill(self, node: int) -> None:
        """SIGKILL: the node dies without a word, as a crashed machine would."""
        proc = self.procs.pop(node, None)
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        for node in list(self.procs):
            self.kill(node)
        for channel in self._channels.values():
            channel.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self) -> None:
        """Starts every node that is not running, on its old data, and waits for a leader."""
        for node in range(1, NODES + 1):
            if node not in self.procs:
                self.start_node(node)
        self.wait_for_leader()

    def status(self, node: int) -> pb.StatusResponse | None:
        stub = pb_grpc.ClusterStub(self._channels[self.addrs[node - 1]])  # type: ignore[no-untyped-call]
        try:
            status: pb.StatusResponse = stub.Status(
                pb.StatusRequest(), timeout=1.0, metadata=self._metadata
            )
            return status
        except grpc.RpcError:
            return None

    def leader(self) -> int | None:
        """The node a running node reports as leader, if it is running and says so itself."""
        for node in self.procs:
            status = self.status(node)
            if status is not None and status.role == "leader" and status.node_id in self.procs:
                return int(status.node_id)
        return None

    def wait_for_leader(self, timeout_s: float = LEADER_WAIT_S) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                return leader
            self._check_alive()
            time.sleep(0.05)
        raise TimeoutError(f"no leader within {timeout_s} s; logs in {self.dir}")

    def _check_alive(self) -> None:
        for node, proc in self.procs.items():
            if proc.poll() is not None:
                log = (self.dir / f"node-{node}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node {node} exited with {proc.returncode}:\n{log}")

    def _leader_call(self, make: Callable[[grpc.Channel], Callable[..., T]], request: Any) -> T:
        """An admin call, sent to each running node in turn until the leader takes it."""
        deadline = time.monotonic() + ADMIN_DEADLINE_S
        error: grpc.RpcError | None = None
        while time.monotonic() < deadline:
            for node in list(self.procs):
                try:
                    channel = self._channels[self.addrs[node - 1]]
                    return make(channel)(request, timeout=2.0, metadata=self._metadata)
                except grpc.RpcError as e:
                    if e.code() not in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ):
                        raise
                    error = e
            time.sleep(0.05)
        raise TimeoutError(f"admin call found no leader: {error}")

    def admin(self, method: str, request: Any) -> Any:
        def bind(channel: grpc.Channel) -> Callable[..., Any]:
            stub = pb_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
            return getattr(stub, method)  # type: ignore[no-any-return]

        return self._leader_call(bind, request)

    def put_tenant(self, tenant: str | None = None, **policy: Any) -> str:
        """Creates a tenant (a fresh name unless given) and returns its name; `policy`
        overrides fields of the default TenantPolicy (e.g. repeat_max=3)."""
        tenant = tenant or f"t-{new_id()[:12]}"
        self.admin("PutTenant", pb.PutTenantRequest(request_id=new_id(), tenant=tenant))
        if policy:
            current = self.admin("GetTenant", pb.GetTenantRequest(tenant=tenant)).policy
            for field, value in policy.items():
                setattr(current, field, value)
            request = pb.PutTenantRequest(request_id=new_id(), tenant=tenant, policy=current)
            self.admin("PutTenant", request)
        return tenant

    def put_limit(
        self,
        tenant: str,
        limit_id: str,
        scope: pb.Scope,
        dimension: pb.Dimension,
        *,
        budget: int | None = None,
        rate: tuple[int, int, int] | None = None,
        concurrency: int | None = None,
    ) -> None:
        """A limit: a lifetime budget, a rate (amount, period_ms, burst) or a concurrency."""
        limit = pb.Limit(id=limit_id, scope=scope, dimension=dimension)
        if budget is not None:
            limit.budget.CopyFrom(pb.Budget(window=pb.WINDOW_LIFETIME, amount=budget))
        elif rate is not None:
            limit.rate.CopyFrom(pb.Rate(amount=rate[0], period_ms=rate[1], burst=rate[2]))
        elif concurrency is not None:
            limit.concurrency.CopyFrom(pb.Concurrency(max=concurrency))
        self.admin("PutLimit", pb.PutLimitRequest(request_id=new_id(), tenant=tenant, limit=limit))

    def put_price(
        self,
        tenant: str,
        model: str,
        input_micros: int,
        output_micros: int,
        per_tokens: int = 1_000_000,
    ) -> None:
        price = pb.Price(
            model=model,
            input_micros=input_micros,
            output_micros=output_micros,
            per_tokens=per_tokens,
        )
        self.admin("PutPrice", pb.PutPriceRequest(request_id=new_id(), tenant=tenant, price=price))

    def freeze(self, tenant: str, agent: str = "") -> None:
        self.admin("Freeze", pb.FreezeRequest(request_id=new_id(), tenant=tenant, agent=agent))

    def audit(self, tenant: str) -> list[pb.AuditRecord]:
        response = self.admin("QueryAudit", pb.AuditQueryRequest(tenant=tenant, limit=10_000))
        return list(response.records)


def scope_tenant() -> pb.Scope:
    return pb.Scope(tenant=pb.Empty())


def scope_agent(agent: str) -> pb.Scope:
    return pb.Scope(agent=agent)
