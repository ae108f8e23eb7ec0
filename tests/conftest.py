"""Shared fixtures: real Mosquitto, InfluxDB and PostgreSQL servers on free loopback ports (see testkit/services.py
and testkit/postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.postgres import PostgresServer
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


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the whole run (``initdb`` takes a second); tests take a fresh database
    each through ``pg_url``.  A test that kills or stops the server must start its own ``PostgresServer``."""
    server = PostgresServer(workdir=tmp_path_factory.mktemp("postgres")).start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database on the shared server.  The test's connections to it are ended after it (a
    store the test did not close, a failed one's above all, would otherwise hold the server's shutdown at the end of
    the run)."""
    url = postgres.create_database()
    yield url
    import psycopg

    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (url.rsplit("/", 1)[1],)
        )


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """The store a test runs against, once per backend: a SQLite file in ``tmp_path``, or a fresh PostgreSQL
    database on the session's server (cluster mode's store)."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return tmp_path / "alerts.sqlite"
