"""Fixtures of the console's browser test: a real three-node cluster secured as in production
(TLS from `tollgate certs init`, the bootstrap admin key) whose node 1 serves the HTTP listener
(`--metrics-listen`), the example tenant `acme` with some traffic, and headless Chromium driven
by Selenium through Debian's chromedriver (no driver or browser is downloaded)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# The Python client's test cluster: `tollgate serve` processes on free loopback ports.
sys.path.insert(0, str(REPO_ROOT / "client" / "python" / "tests"))

import tollgate
from cluster import Cluster, free_port
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from tollgate._pb import tollgate_pb2 as pb

# Where the screenshot artifact goes.
ARTIFACTS = REPO_ROOT / "target" / "console"
# Selenium must use the system's browser and driver, never fetch its own.
os.environ.setdefault("SE_OFFLINE", "true")


class ConsoleCluster(Cluster):
    """The test cluster, node 1 also serving `/metrics` and `/ui` on `http_port`."""

    def __init__(self) -> None:
        super().__init__(secure=True)
        self.http_port = free_port()

    def _command(self, node: int) -> list[str]:
        command = super()._command(node)
        if node == 1:
            command += ["--metrics-listen", f"127.0.0.1:{self.http_port}"]
        return command

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    def client(self, token: str | None = None) -> tollgate.Client:
        tls = tollgate.Tls(ca=str(self.ca_path))
        return tollgate.Client(self.addrs, token=token or self.admin_key, tls=tls)

    def key(self, tenant: str, role: int) -> str:
        request = pb.CreateKeyRequest(request_id=new_request_id(), tenant=tenant, role=role)
        return str(self.admin("CreateKey", request).api_key)

    def daily_budget(
        self, tenant: str, limit_id: str, scope: pb.Scope, dim: int, amount: int
    ) -> None:
        limit = pb.Limit(id=limit_id, scope=scope, dimension=dim)
        limit.budget.CopyFrom(pb.Budget(window=pb.WINDOW_DAY, amount=amount))
        request = pb.PutLimitRequest(request_id=new_request_id(), tenant=tenant, limit=limit)
        self.admin("PutLimit", request)


def new_request_id() -> str:
    return os.urandom(16).hex()


def load_example(cluster: ConsoleCluster) -> None:
    """`acme` as `tollgate dev` loads it (a $50 day, each agent's tokens, batch-bot's $1),
    a second tenant `globex`, and a little traffic: calls, a loop tripped, a budget reached."""
    cluster.put_tenant("acme", repeat_max=5, repeat_window_ms=60_000)
    cluster.put_tenant("globex")
    tenant, each_agent = pb.Scope(tenant=pb.Empty()), pb.Scope(each_agent=pb.Empty())
    cluster.daily_budget("acme", "tenant-daily-cost", tenant, pb.DIMENSION_COST, 50_000_000)
    cluster.daily_budget("acme", "agent-daily-tokens", each_agent, pb.DIMENSION_TOKENS, 200_000)
    batch_bot = pb.Scope(agent="batch-bot")
    cluster.daily_budget("acme", "batch-bot-daily-cost", batch_bot, pb.DIMENSION_COST, 1_000_000)
    cluster.daily_budget("globex", "globex-daily-cost", tenant, pb.DIMENSION_COST, 9_000_000)
    with cluster.client() as client:
        for _ in range(3):
            with client.reserve(
                "acme", "support-bot", "llm:gpt-4o", tokens=2_000, cost_usd="0.03"
            ) as r:
                r.commit(tokens=1_500, cost_usd="0.0225")
        for _ in range(6):
            try:
                with client.reserve("acme", "research-bot", "search", fingerprint="q=news") as r:
                    r.commit(cost_usd="0.001")
            except tollgate.Tripped:
                break
        for _ in range(5):
            try:
                with client.reserve("acme", "batch-bot", "llm:gpt-x", cost_usd="0.30") as r:
                    r.commit(tokens=1_000, cost_usd="0.30")
            except tollgate.Denied:
                break


@pytest.fixture(scope="session")
def cluster() -> Iterator[ConsoleCluster]:
    c = ConsoleCluster()
    try:
        c.start()
        load_example(c)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1250",
        # The node's certificate is from the test cluster's own CA, which Chromium's store
        # does not hold; the test checks the certificate against that CA with Python instead.
        "--ignore-certificate-errors",
    ):
        options.add_argument(argument)
    # The page's console messages, so a test can see script errors and blocked content.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
