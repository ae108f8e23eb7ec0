"""Shared fixtures: real Mosquitto and InfluxDB servers on free loopback ports (see testkit/services.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.services import InfluxServer, MosquittoServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A private broker with firegrid's recommended settings; ``mosquitto.restart()`` / ``.kill()`` mid-test."""
    server = MosquittoServer(workdir=tmp_path / "mosquitto").start()
    try:
        yield server
    finally:
        server.stop(timeout=5)


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxServer]:
    """A private InfluxDB 1.x with database ``firegrid``; ``influx.stop()`` / ``.start()`` to simulate an outage."""
    server = InfluxServer(workdir=tmp_path / "influx").start()
    try:
        yield server
    finally:
        server.stop(timeout=10)


@pytest.fixture
def community_config_path() -> Path:
    return EXAMPLES / "community.yaml"
