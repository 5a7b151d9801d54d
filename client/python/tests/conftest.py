"""Fixtures: one real three-node cluster per test session (started from TOLLGATE_BIN or
target/debug/tollgate), and a fresh tenant per test so tests never share a budget."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def tenant(cluster: Cluster) -> str:
    return cluster.put_tenant()


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A cluster of the test's own, for tests that kill nodes."""
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()
