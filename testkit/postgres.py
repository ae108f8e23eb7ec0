"""A private PostgreSQL server for tests and benchmarks: Debian's binaries, ``initdb`` into a temporary directory,
TCP on a free loopback port, no Unix socket, trust authentication.

Nothing here relies on a server the machine may already run on 5432: each :class:`PostgresServer` is its own
cluster, started and stopped by the test that needs it, as :mod:`testkit.services` does for Mosquitto and InfluxDB.

PostgreSQL refuses to run as root.  When the tests run as root (CI containers do), the data directory is created
outside the test's own temporary tree (whose parents only root may enter) and handed to the ``postgres`` user, and
the server is started through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from testkit.services import ManagedProcess, ServiceError, _port_open, _tail, _wait_until, free_port

_counter = itertools.count(1)


def _pg_bin(name: str) -> str:
    """The server's own tools (``initdb``, ``postgres``) live under ``/usr/lib/postgresql/<major>/bin`` on Debian,
    not on the PATH; take the newest major installed."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise ServiceError(f"{name} is not installed (make test installs Debian's postgresql with apt-get)")


def _run_as() -> str | None:
    """The user to run the server as: ``postgres`` when we are root (signals then reach the server itself, not a
    ``runuser`` in between), ourselves otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ServiceError("running as root needs a 'postgres' user (Debian's postgresql package creates it)") from exc
    return "postgres"


@dataclass
class PostgresServer(ManagedProcess):
    """``start()`` runs ``initdb`` once, then the server; ``stop()`` / ``kill()`` / ``start()`` as for the other
    servers.  ``create_database()`` gives each test a fresh, empty database on the same server (much cheaper than a
    server each)."""

    port: int = field(default_factory=free_port)
    user: str = "firegrid"
    _datadir: Path | None = field(default=None, init=False)

    @property
    def datadir(self) -> Path:
        if self._datadir is None:
            if os.geteuid() == 0:
                # The test's tmp_path sits under a root-only directory; the postgres user needs its own.
                self._datadir = Path(tempfile.mkdtemp(prefix="firegrid-pg-")) / "data"
            else:
                self._datadir = self.workdir / "data"
        return self._datadir

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _initdb(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if (self.datadir / "PG_VERSION").exists():
            return
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.datadir.parent, user="postgres", group="postgres")
        argv = [
            _pg_bin("initdb"),
            "-D",
            str(self.datadir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # a test cluster: its durability is not what is under test
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, user=_run_as(), cwd="/")
        if done.returncode != 0:
            raise ServiceError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self, *, timeout: float = 30.0) -> PostgresServer:
        if self.running:
            return self
        self._initdb()
        argv = [
            _pg_bin("postgres"),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=64MB",
            # fsync stays on: the store's guarantees are tested against a server that keeps them.
        ]
        self.log_path.touch()
        if os.geteuid() == 0:
            shutil.chown(self.log_path, user="postgres", group="postgres")
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd="/", stdout=out, stderr=subprocess.STDOUT, start_new_session=True, user=_run_as()
            )
        assert self.proc is not None
        _wait_until(self._ready, timeout=timeout, what="postgres", log=self.log_path, proc=self.proc)
        return self

    def _ready(self) -> bool:
        if not _port_open(self.port):
            return False
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False  # "the database system is starting up"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = name or f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        return _tail(self.log_path, 10_000)

    def remove(self) -> None:
        """Stop the server and delete its data directory (kept by ``stop()``, as a rebooted host keeps its disk)."""
        self.stop()
        if self._datadir is not None and os.geteuid() == 0:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._datadir.parent)
