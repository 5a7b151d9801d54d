"""The web console in a real browser: what the page shows is what the cluster's API answers,
it moves when spend is committed, the kill switch on it stops the next reservation, and
credentials are enforced (HTTPS, 401 on a wrong key, a tenant key sees only its tenant)."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import tollgate
from conftest import ConsoleCluster
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from tollgate._pb import tollgate_pb2 as pb

T = TypeVar("T")

# How long the page may take to show a change (it polls every second).
PAGE_WAIT_S = 15.0


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = PAGE_WAIT_S) -> T:
    """Polls `probe` until it returns a value other than None or False, or fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except WebDriverException as error:  # the DOM is redrawn under us: try again
            last = error
        if last is not None and last is not False and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s} s (last seen: {last!r})")


def fetch(
    cluster: ConsoleCluster, path: str, key: str | None = None, body: bytes | None = None
) -> tuple[int, bytes]:
    """An HTTPS request to the node, its certificate checked against the cluster CA."""
    context = ssl.create_default_context(cafile=str(cluster.ca_path))
    request = urllib.request.Request(cluster.url + path, data=body)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def sign_in(browser: webdriver.Chrome, cluster: ConsoleCluster, key: str) -> None:
    """Opens the console afresh and pastes `key`, as a user would."""
    browser.get(cluster.url + "/ui")
    browser.execute_script("sessionStorage.clear()")
    browser.get(cluster.url + "/ui")
    field = wait_for("the key form", lambda: _shown(browser, "key"))
    field.clear()
    field.send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()


def _shown(browser: webdriver.Chrome, element_id: str) -> Any:
    element = browser.find_element(By.ID, element_id)
    return element if element.is_displayed() else None


def bar_used(browser: webdriver.Chrome, limit_id: str) -> int | None:
    bars = browser.find_elements(By.CSS_SELECTOR, f'.limit[data-limit="{limit_id}"] .bar')
    return int(bars[0].get_attribute("data-used") or 0) if bars else None


def api_used(cluster: ConsoleCluster, tenant: str, limit_id: str) -> int:
    with cluster.client() as client:
        rows = [row for row in client.usage(tenant=tenant) if row.limit_id == limit_id]
    assert len(rows) == 1, rows
    return rows[0].used


def test_the_listener_serves_https_and_wants_keys(cluster: ConsoleCluster) -> None:
    status, page = fetch(cluster, "/ui")
    assert status == 200 and b"Tollgate console" in page
    assert fetch(cluster, "/metrics")[0] == 401
    status, metrics = fetch(cluster, "/metrics", cluster.admin_key)
    assert status == 200 and b"tollgate_" in metrics
    tenant_admin = cluster.key("acme", pb.KEY_ROLE_TENANT_ADMIN)
    assert fetch(cluster, "/metrics", tenant_admin)[0] == 403
    status, answer = fetch(cluster, "/ui/api/whoami")
    assert status == 401 and "authorization" in json.loads(answer)["error"]
    status, answer = fetch(cluster, "/ui/api/whoami", tenant_admin)
    assert status == 200 and json.loads(answer) == {"auth": True, "admin": False, "tenant": "acme"}


@pytest.mark.parametrize(
    ("path", "body", "why"),
    [
        ("/ui/api/tenant", None, "tenant"),
        ("/ui/api/tenant?tenant=" + "x" * 200, None, "ID_BYTES_MAX"),
        ("/ui/api/tenant?tenant=acme&colour=red", None, "colour"),
        ("/ui/api/audit?after_seq=minus-one", None, "after_seq"),
        ("/ui/api/tenant?tenant=acme&x=" + "y" * 3000, None, "URI_BYTES_MAX"),
        ("/ui/api/freeze", b"{not json", "bad body"),
        ("/ui/api/freeze", b'{"tenant": "acme"}', "frozen"),
        (
            "/ui/api/freeze",
            json.dumps({"tenant": "acme", "frozen": True, "pad": "z" * 5000}).encode(),
            "bad body",
        ),
    ],
)
def test_bad_input_is_a_400_that_says_why(
    cluster: ConsoleCluster, path: str, body: bytes | None, why: str
) -> None:
    status, answer = fetch(cluster, path, cluster.admin_key, body)
    assert status == 400, answer
    assert why in json.loads(answer)["error"]


def test_a_wrong_key_gets_a_clear_401_on_the_page(
    browser: webdriver.Chrome, cluster: ConsoleCluster
) -> None:
    sign_in(browser, cluster, "tg_0123456789abcdef_" + "0" * 64)
    banner = wait_for("the 401 banner", lambda: _shown(browser, "banner"))
    assert "401" in banner.text and "unknown, revoked or malformed API key" in banner.text


def test_the_admin_sees_the_cluster_and_the_numbers_the_api_reports(
    browser: webdriver.Chrome, cluster: ConsoleCluster
) -> None:
    sign_in(browser, cluster, cluster.admin_key)
    rows = wait_for(
        "three nodes in the cluster table",
        lambda: (
            len(rows) == 3 and rows
            if (rows := browser.find_elements(By.CSS_SELECTOR, "#nodes tbody tr"))
            else None
        ),
    )
    roles = sorted(row.find_elements(By.TAG_NAME, "td")[2].text for row in rows)
    assert roles == ["follower", "follower", "leader"]
    assert wait_for("a banner-free page", lambda: not _shown(browser, "banner") or None)
    for limit_id in ("tenant-daily-cost", "batch-bot-daily-cost"):
        expected = api_used(cluster, "acme", limit_id)
        wait_for(
            f"{limit_id} at {expected}",
            lambda limit_id=limit_id, expected=expected: bar_used(browser, limit_id) == expected,
        )
    refusals = browser.find_element(By.ID, "refusals").text
    assert "trip" in refusals and "batch-bot-daily-cost" in refusals


def test_a_bar_moves_after_a_commit(browser: webdriver.Chrome, cluster: ConsoleCluster) -> None:
    before = wait_for("the tenant bar", lambda: bar_used(browser, "tenant-daily-cost"))
    client = cluster.client()
    with client, client.reserve("acme", "support-bot", "llm:gpt-4o", cost_usd="0.40") as r:
        r.commit(tokens=900, cost_usd="0.25")
    after = before + 250_000
    wait_for(f"the tenant bar at {after}", lambda: bar_used(browser, "tenant-daily-cost") == after)
    assert api_used(cluster, "acme", "tenant-daily-cost") == after


def test_freezing_an_agent_on_the_page_denies_its_next_reservation(
    browser: webdriver.Chrome, cluster: ConsoleCluster, artifacts: Path
) -> None:
    agent = browser.find_element(By.ID, "agent")
    agent.clear()
    agent.send_keys("support-bot\n")
    wait_for(
        "the agent's state",
        lambda: "may reserve" in browser.find_element(By.ID, "agent-state").text,
    )
    browser.find_element(By.ID, "freeze-agent").click()
    dialog = wait_for("the confirmation", lambda: _shown(browser, "confirm"))
    assert "Freeze agent support-bot of acme" in dialog.text
    browser.find_element(By.ID, "confirm-yes").click()
    wait_for(
        "the freeze applied", lambda: "Frozen" in browser.find_element(By.ID, "action-result").text
    )
    with cluster.client() as client, pytest.raises(tollgate.Frozen):
        client.reserve("acme", "support-bot", "llm:gpt-4o", tokens=100)
    wait_for(
        "the frozen state", lambda: "frozen" in browser.find_element(By.ID, "agent-status").text
    )
    wait_for("the denial listed", lambda: "frozen" in browser.find_element(By.ID, "refusals").text)
    with cluster.client() as client:
        held = client.reserve("acme", "planner-bot", "llm:gpt-4o", tokens=4_000, cost_usd="0.05")
        wait_for(
            "a reservation in flight",
            lambda: "planner-bot" in browser.find_element(By.ID, "reservations").text,
        )
        browser.save_screenshot(str(artifacts / "console.png"))
        held.release()
    browser.find_element(By.ID, "unfreeze-agent").click()
    wait_for("the confirmation", lambda: _shown(browser, "confirm"))
    browser.find_element(By.ID, "confirm-yes").click()
    wait_for(
        "the agent unfrozen",
        lambda: "may reserve" in browser.find_element(By.ID, "agent-state").text,
    )


def test_cancelling_the_confirmation_freezes_nothing(
    browser: webdriver.Chrome, cluster: ConsoleCluster
) -> None:
    browser.find_element(By.ID, "freeze-tenant").click()
    wait_for("the confirmation", lambda: _shown(browser, "confirm"))
    browser.find_element(By.ID, "confirm-no").click()
    with cluster.client() as client, client.reserve("acme", "support-bot", "search") as r:
        r.release()


def test_a_tenant_key_sees_only_its_own_tenant(
    browser: webdriver.Chrome, cluster: ConsoleCluster
) -> None:
    key = cluster.key("acme", pb.KEY_ROLE_TENANT_ADMIN)
    sign_in(browser, cluster, key)
    wait_for("the tenant's bars", lambda: bar_used(browser, "tenant-daily-cost"))
    options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#tenant option")]
    assert options == ["acme"]
    assert "admin key" in browser.find_element(By.ID, "cluster-note").text
    assert "globex-daily-cost" not in browser.page_source
    status, answer = fetch(cluster, "/ui/api/tenant?tenant=globex", key)
    assert status == 403 and "own tenant" in json.loads(answer)["error"]
    assert fetch(cluster, "/ui/api/cluster", key)[0] == 403
    body = json.dumps({"tenant": "globex", "frozen": True}).encode()
    assert fetch(cluster, "/ui/api/freeze", key, body)[0] == 403


def test_a_node_that_stops_answering_is_shown_unreachable(
    browser: webdriver.Chrome, cluster: ConsoleCluster
) -> None:
    sign_in(browser, cluster, cluster.admin_key)
    cell = "#nodes tbody tr[data-node='3'] td:nth-child(3)"
    wait_for("node 3 up", lambda: browser.find_element(By.CSS_SELECTOR, cell).text != "")
    cluster.kill(3)
    try:
        wait_for(
            "node 3 unreachable",
            lambda: browser.find_element(By.CSS_SELECTOR, cell).text == "unreachable",
        )
        roles = [
            e.text
            for e in browser.find_elements(By.CSS_SELECTOR, "#nodes tbody tr td:nth-child(3)")
        ]
        assert roles.count("unreachable") == 1, roles
    finally:
        cluster.restart()
    wait_for(
        "node 3 back",
        lambda: browser.find_element(By.CSS_SELECTOR, cell).text in ("leader", "follower"),
        timeout_s=30.0,
    )


def test_the_page_raised_no_script_error_and_broke_no_policy(browser: webdriver.Chrome) -> None:
    messages = [entry["message"] for entry in browser.get_log("browser")]
    # The log is read: the wrong key's 401 is in it.
    assert any("401" in m for m in messages), messages
    broken = [
        m for m in messages if "Uncaught" in m or "Content Security Policy" in m or "Refused" in m
    ]
    assert broken == [], broken
