"""One cluster member's :class:`~gateway.cluster.LeaseManager` in its own process, for fault tests (SIGKILL,
SIGSTOP, graceful stop) that a manager inside the test's own process cannot suffer.

Run as ``python -m testkit.lease_member URL MEMBER PARTITIONS TTL RENEW PROBE``.  It prints one JSON line per event
on stdout (``{"event": "acquire", "partition": 3, "epoch": 2, "t": <wall clock>}``; also ``ready``, ``lose``,
``release``, ``snapshot``, ``write``, ``stopped``) and obeys lines on stdin:

* ``snapshot``: keep the manager's current fence (what a commit that started now would check);
* ``write TAG``: in a plain psycopg transaction, insert ``TAG`` into ``fence_probe`` and run the kept fence's check
  before the commit; prints whether it committed, or the partitions the fence found lost;
* ``stop``: ``LeaseManager.stop()`` (the graceful release), then exit.

:class:`LeaseMember` starts one and reads its events for a test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def _write(url: str, fence: Any, tag: str) -> None:
    import psycopg

    from gateway.cluster import LeaseLost

    try:
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO fence_probe (tag) VALUES (%s)", (tag,))
            fence.check(cur)  # raises inside the transaction: the with block rolls it back
        _emit("write", tag=tag, committed=True)
    except LeaseLost as exc:
        _emit("write", tag=tag, committed=False, lost=list(exc.partitions))


async def _main(argv: list[str]) -> None:
    from gateway.cluster import LeaseManager

    url, member, partitions, ttl, renew, probe = argv
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "stop")

    async def on_acquire(partition: int, epoch: int) -> None:
        _emit("acquire", partition=partition, epoch=epoch)

    async def on_lose(partition: int) -> None:
        _emit("lose", partition=partition)

    async def on_release(partition: int) -> None:
        _emit("release", partition=partition)

    manager = LeaseManager(
        url=url,
        member=member,
        partitions=int(partitions),
        lease_ttl_s=float(ttl),
        renew_interval_s=float(renew),
        probe_interval_s=float(probe),
        on_acquire=on_acquire,
        on_lose=on_lose,
        on_release=on_release,
    )
    await manager.start()
    _emit("ready", pid=os.getpid())
    threading.Thread(target=read_stdin, daemon=True).start()
    kept = manager.fence
    while True:
        command, _, arg = (await commands.get()).partition(" ")
        if command == "snapshot":
            kept = manager.fence
            _emit("snapshot", epochs={str(p): e for p, e in kept.epochs.items()})
        elif command == "write":
            await asyncio.to_thread(_write, url, kept, arg)
        elif command == "stop":
            await manager.stop()
            _emit("stopped")
            return


@dataclass
class LeaseMember:
    """A member process: ``start()``, ``events()``, ``wait_for(...)``, ``send(...)``, ``kill()``/``pause()``/
    ``resume()``, ``close()``."""

    url: str
    member: str
    partitions: int
    ttl_s: float = 10.0
    renew_s: float = 2.0
    probe_s: float = 1.0
    proc: subprocess.Popen[str] | None = None
    _events: list[dict[str, Any]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self, *, timeout: float = 30.0) -> LeaseMember:
        argv = [sys.executable, "-m", "testkit.lease_member", self.url, self.member, str(self.partitions)]
        argv += [str(self.ttl_s), str(self.renew_s), str(self.probe_s)]
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(lambda e: e["event"] == "ready", timeout=timeout)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self._events.append(json.loads(line))
                self._cond.notify_all()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self._events if kind is None or e["event"] == kind]

    def wait_for(self, match: Callable[[dict[str, Any]], bool], *, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events:
                    if match(event):
                        return event
                left = deadline - time.monotonic()
                dead = self.proc is not None and self.proc.poll() is not None
                if left <= 0 or (dead and not self._cond.wait(0.5)):
                    raise TimeoutError(f"{self.member}: no matching event in {timeout} s; got {self._events}")
                self._cond.wait(min(left, 0.5))

    def owned(self) -> dict[int, int]:
        """``{partition: epoch}`` the member holds, from its events."""
        held: dict[int, int] = {}
        for e in self.events():
            if e["event"] == "acquire":
                held[e["partition"]] = e["epoch"]
            elif e["event"] in ("lose", "release"):
                held.pop(e["partition"], None)
        return held

    def send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
