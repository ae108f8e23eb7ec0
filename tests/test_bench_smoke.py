"""The bench machinery works, without running any benchmark (no timed assertions; each test takes well under 5 s).

Checks the parts every bench relies on: the Standard Webhooks verification of the bench's receiver (against the
reference library), percentiles, the runner's result parsing, aggregation and doc rewriting, the configs the
benches generate for ``firegrid run`` (validated by the real config models and telemetry contract), the Node-RED
flow's wiring, and the paced publisher against a real broker.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import standardwebhooks

from bench import backlog, latency, peer_nodered, run, scale
from bench.common import (
    Community,
    Figure,
    Publisher,
    firegrid_config,
    first_arrival_by_key,
    goal_met,
    percentile,
)
from common.webhooks import sign
from gateway.config import parse_config
from gateway.ingest.contract import Decoder, policy_from_config, registry_from_config
from testkit.webhooks import Arrival, ThreadedReceiver, new_whsec, verify_signature


def test_every_bench_of_this_suite_declares_quick_and_json() -> None:
    for module in (latency, backlog, scale, peer_nodered):
        source = Path(module.__file__).read_text()
        assert "bench_parser(" in source and "emit(" in source, module.__name__


def test_signature_matches_the_standard_webhooks_library() -> None:
    secret = new_whsec("smoke")
    body = b'{"type":"alert.raised","data":{"device":"alarm00001"}}'
    now = int(time.time())
    ours = sign(secret, "msg_1", now, body)
    theirs = standardwebhooks.Webhook(secret).sign("msg_1", dt.datetime.fromtimestamp(now, dt.UTC), body.decode())
    assert ours == theirs
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": f"v1,bogus {ours}"}
    assert verify_signature(secret, headers, body) is None
    assert verify_signature(secret, headers, body + b" ") == "no matching v1 signature"
    stale = {
        **headers,
        "webhook-timestamp": str(now - 3600),
        "webhook-signature": sign(secret, "msg_1", now - 3600, body),
    }
    assert verify_signature(secret, stale, body) == "webhook-timestamp outside tolerance"
    assert verify_signature(secret, {}, body) is not None


def test_receiver_accepts_signed_and_rejects_forged_requests() -> None:
    with ThreadedReceiver() as receiver:
        body = b'{"data":{"device":"alarm00007"}}'
        now = int(time.time())
        good = {
            "webhook-id": "m1",
            "webhook-timestamp": str(now),
            "webhook-signature": sign(receiver.secret, "m1", now, body),
        }
        request = urllib.request.Request(receiver.url, data=body, headers=good, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 204
        forged = {**good, "webhook-signature": sign(new_whsec("other"), "m1", now, body)}
        request = urllib.request.Request(receiver.url, data=body, headers=forged, method="POST")
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            urllib.request.urlopen(request, timeout=5)
        assert excinfo.value.code == 401
    assert [a.msg_id for a in receiver.arrivals] == ["m1"]
    assert receiver.rejected == ["no matching v1 signature"]


def test_first_arrival_matches_whole_quoted_ids_only() -> None:
    arrivals = [
        Arrival(at_ns=30, msg_id="c", body=b'{"device":"alarm00001"}'),
        Arrival(at_ns=10, msg_id="a", body=b'{"device":"alarm000010"}'),
        Arrival(at_ns=20, msg_id="b", body=b'{"device": "alarm00001"}'),
    ]
    assert first_arrival_by_key(arrivals, ["alarm00001", "alarm00002"]) == {"alarm00001": 20}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_goal_met_on_value_and_ratio() -> None:
    assert goal_met(value=90, ratio=None, goal_on="value", goal_min=None, goal_max=100) is True
    assert goal_met(value=120, ratio=None, goal_on="value", goal_min=None, goal_max=100) is False
    assert goal_met(value=1, ratio=0.4, goal_on="ratio", goal_min=0.5, goal_max=None) is False
    assert goal_met(value=1, ratio=None, goal_on="ratio", goal_min=0.5, goal_max=None) is None
    assert goal_met(value=1, ratio=None, goal_on="value", goal_min=None, goal_max=None) is None


def test_runner_parses_protocol_and_flat_json() -> None:
    line = json.dumps({"bench": "x", "figures": [Figure(name="x.a", value=1.0, unit="u").to_json()]})
    assert run.parse_result(f"noise\n{line}\n")["figures"][0]["name"] == "x.a"
    flat = run.parse_result('{"readings_per_s": 900, "ok": true, "name": "z"}')
    assert flat is not None and [f["name"] for f in flat["figures"]] == ["readings_per_s"]
    assert run.parse_result("no json here\n{broken") is None


def test_runner_aggregates_median_min_max_and_ratio() -> None:
    outcome = run.BenchOutcome("ingest")
    for value, base in ((9.0, 20.0), (10.0, 20.0), (30.0, 40.0)):
        fig = Figure(
            name="ingest.rate", value=value, unit="r/s", baseline=base, goal=">= 0.5x", goal_on="ratio", goal_min=0.5
        )
        outcome.runs.append({"figures": [fig.to_json()]})
    (row,) = run.aggregate([outcome])
    assert (row.med, row.lo, row.hi) == (10.0, 9.0, 30.0)
    assert row.ratio == pytest.approx(0.5)  # median of 0.45, 0.5, 0.75
    assert row.met is True
    table = run.render_table([row], markdown=True)
    assert "| ingest | ingest.rate | 10.0 | 9.00–30.0 |" in table


def test_runner_rewrites_only_the_figures_block(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Perf\n\nprose before\n\n{run.START}\nold figures\n{run.END}\n\nprose after\n")
    run.rewrite_doc(doc, "new figures")
    text = doc.read_text()
    assert "old figures" not in text and "new figures" in text
    assert text.startswith("# Perf\n\nprose before\n") and text.endswith("prose after\n")
    run.rewrite_doc(doc, "newer $1 \\g<0> figures")  # replacement text is literal, not a regex template
    assert "newer $1 \\g<0> figures" in doc.read_text()
    fresh = tmp_path / "missing.md"
    run.rewrite_doc(fresh, "first")
    assert run.START in fresh.read_text() and "first" in fresh.read_text()


def test_render_block_names_machine_command_and_failures() -> None:
    outcome = run.BenchOutcome("latency", errors=["exit 1: boom"])
    outcome.runs.append({"figures": [Figure(name="l.p99", value=12.0, unit="ms").to_json()], "notes": ["n1"]})
    block = run.render_block(
        [outcome],
        run.aggregate([outcome]),
        command="make bench",
        quick=True,
        when=dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC),
        machine={"nproc": 2, "cpu": "Xeon", "ram_gib": 23.5, "python": "3.11"},
    )
    assert "`make bench`" in block and "QUICK MODE" in block and "2 cores (Xeon)" in block
    assert "a run failed — exit 1: boom" in block and "n1" in block


def test_discover_lists_benches_not_helpers() -> None:
    names = run.discover()
    assert {"latency", "backlog", "scale", "peer_nodered"} <= set(names)
    assert not {"run", "common", "__init__"} & set(names)


def test_bench_configs_are_valid_firegrid_configs(tmp_path: Path) -> None:
    community = Community(n_devices=20, n_buildings=4, n_alarms=3)
    with ThreadedReceiver() as receiver:
        data = firegrid_config(
            broker_port=1234,
            influx_url="http://127.0.0.1:9",
            workdir=tmp_path,
            buildings=community.buildings(),
            devices=community.devices(),
            webhook=receiver,
            tokens=[{"name": "bench", "token": scale.TOKEN, "role": "viewer"}],
        )
    config = parse_config(data)
    assert len(config.devices) == 23 and config.notify.webhooks[0].allow_private
    buildings, devices = scale.registry(buildings=5, devices=50)
    parse_config({**data, "buildings": buildings, "devices": devices})


def test_bench_payloads_pass_the_telemetry_contract(tmp_path: Path) -> None:
    community = Community(n_devices=20, n_buildings=4, n_alarms=3)
    config = parse_config({"buildings": community.buildings(), "devices": community.devices()})
    decoder = Decoder(prefix="firegrid", registry=registry_from_config(config), policy=policy_from_config(config))
    now = int(time.time() * 1000)
    messages = [*list(community.telemetry(limit=25)), community.alarm(2)]
    for topic, payload in messages:
        decoded = decoder.decode(topic, payload, received_ms=now)
        assert decoded.inputs, topic
    seqs = [json.loads(p)["seq"] for t, p in messages[:25] if t.endswith(f"/{community.device(0)}/telemetry")]
    assert seqs == [0, 1]  # a device's readings never repeat a seq (the gateway would drop them as replays)


def test_nodered_flow_is_wired_and_renders(tmp_path: Path) -> None:
    for mode, must, must_not in (("batch", "influx_batch", "influx_each"), ("each", "influx_each", "influx_batch")):
        flows = peer_nodered.render_flows(
            broker_port=1883, influx_port=8086, database="db", webhook_url="http://127.0.0.1:9/hook", write_mode=mode
        )
        ids = {n["id"] for n in flows}
        assert must in ids and must_not not in ids
        for node in flows:
            for outputs in node.get("wires", []):
                assert set(outputs) <= ids, (mode, node["id"], outputs)
        assert "__" not in json.dumps(flows)
        by_id = {n["id"]: n for n in flows}
        assert by_id["mqtt_in"]["qos"] == "1" and by_id["webhook"]["url"].endswith("/hook")
    settings = (peer_nodered.SOURCE / "settings.js").read_text()
    for key in ("httpAdminRoot: false", "httpNodeRoot: false", "credentialSecret: false"):
        assert key in settings


def test_publisher_bounds_outstanding_and_counts_acks(mosquitto) -> None:
    with Publisher(port=mosquitto.port, max_outstanding=5) as pub:
        stats = pub.run_paced(((f"bench/t/{i}", b"x") for i in range(200)), rate=None)
        pub.wait_acked(timeout=10)
    assert stats.sent == 200 and pub.stats.acked == 200


def test_latency_plan_counts_its_alarms() -> None:
    plan = latency.Plan.quick()
    assert plan.n_alarms == 1 + len(plan.rates) * plan.alarms_per_phase + plan.burst_alarms
    community = Community(n_alarms=plan.n_alarms)
    assert len({community.alarm_device(i) for i in range(plan.n_alarms)}) == plan.n_alarms


def test_goal_firegrid_ahead_compares_with_the_baseline() -> None:
    assert goal_met(
        value=900, ratio=None, goal_on="baseline", goal_min=None, goal_max=None, baseline=40, better="lower"
    )
    assert not goal_met(
        value=10, ratio=None, goal_on="baseline", goal_min=None, goal_max=None, baseline=40, better="lower"
    )
    assert goal_met(value=0, ratio=None, goal_on="baseline", goal_min=None, goal_max=None, baseline=0, better="lower")
    assert not goal_met(value=5000, ratio=None, goal_on="baseline", goal_min=None, goal_max=None, baseline=2000)
    assert goal_met(value=5000, ratio=None, goal_on="baseline", goal_min=None, goal_max=None, baseline=None) is None


def _plan_result(system: str, *, p99: float, lost: int, crash_lost: int | None) -> latency.PlanResult:
    result = latency.PlanResult(system=system, telemetry_published=100, telemetry_stored=100 - lost)
    result.phases.append(latency.PhaseResult("steady 1000/s", 1000, 1000.0, 3, [1.0, 2.0, p99]))
    result.phases.append(latency.PhaseResult("burst 10", None, 5000.0, 2, [p99]))
    result.burst_throughput, result.burst_publish_rate, result.rss_peak_mb = 4000.0, 5000.0, 60.0
    result.crash_lost = crash_lost
    return result


def test_side_by_side_puts_firegrid_as_the_baseline_of_node_red() -> None:
    plan = latency.Plan(rates=(1000,), burst=10, crash=50)
    both = peer_nodered.Comparison(
        results={
            "node-red": _plan_result("node-red", p99=900.0, lost=0, crash_lost=20),
            "firegrid": _plan_result("firegrid", p99=30.0, lost=0, crash_lost=0),
        }
    )
    rows = {f.name: f for f in peer_nodered.side_by_side(both, plan)}
    p99 = rows["peer.p99_ms@1000"]
    assert (p99.value, p99.baseline, p99.baseline_label) == (900.0, 30.0, "firegrid")
    crash = rows["peer.crash_lost"]
    assert (crash.value, crash.baseline) == (20.0, 0.0)
    assert goal_met(
        value=crash.value,
        ratio=crash.ratio,
        goal_on=crash.goal_on,
        goal_min=None,
        goal_max=None,
        baseline=crash.baseline,
        better=crash.better,
    )
    assert rows["peer.load_rate@1000"].goal is None  # what the load generator did is not a contest
    alone = peer_nodered.side_by_side(peer_nodered.Comparison(results={"node-red": both.results["node-red"]}), plan)
    assert all(f.baseline is None for f in alone)


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def test_runner_gives_every_bench_one_run_before_repeats(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clock = _FakeClock()
    cost = {"fast": 10.0, "slow": 100.0, "pending": 1.0}
    calls: list[str] = []

    def fake_run_once(name: str, *, quick: bool, timeout: float) -> tuple[dict | None, str | None]:
        calls.append(name)
        clock.now += cost[name]
        if name == "pending":
            return {"figures": [], "notes": ["not measured"]}, "exit 2: pending"
        return {"figures": [Figure(name=f"{name}.x", value=clock.now, unit="s").to_json()]}, None

    monkeypatch.setattr(run, "time", clock)
    monkeypatch.setattr(run, "discover", lambda: ["slow", "fast", "pending"])
    monkeypatch.setattr(run, "bench_settings", lambda name, quick: (None, 60.0))
    monkeypatch.setattr(run, "run_once", fake_run_once)
    doc = tmp_path / "perf.md"
    run.main(["--budget-s", "260", "--doc", str(doc)])
    # Pass 1: each once; pass 2: fast twice more (cheapest first), slow once more (fits), not a third time.
    assert calls == ["slow", "fast", "pending", "fast", "fast", "slow"]
    text = doc.read_text()
    assert "2 of 3 runs" in text and "pending" in text


def test_peer_rows_render_as_two_columns() -> None:
    outcome = run.BenchOutcome("peer_nodered")
    fig = Figure(
        name="peer.p99_ms@1000",
        label="Node-RED vs firegrid: alarm latency p99, 1,000/s steady",
        value=300.0,
        unit="ms",
        better="lower",
        baseline=20.0,
        baseline_label="firegrid",
        goal="firegrid ahead",
        goal_on="baseline",
    )
    outcome.runs.append({"figures": [fig.to_json()]})
    block = run.render_block(
        [outcome],
        run.aggregate([outcome]),
        command="make bench",
        quick=False,
        when=dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC),
        machine={"nproc": 2, "cpu": "Xeon", "ram_gib": 23.5, "python": "3.11"},
    )
    assert "| alarm latency p99, 1,000/s steady | 20.0 ms | 300 ms | 15.00x | yes |" in block


def test_raw_publisher_speaks_mqtt_a_real_subscriber_understands(mosquitto) -> None:
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from bench.common import RawPublisher, wait_until

    got: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="smoke-sub")
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.on_message = lambda _c, _u, msg: got.append((msg.topic, msg.payload))
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("bench/#", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(5)
        big = b"x" * 300  # a remaining length that needs two bytes
        messages = [(f"bench/raw/{i}", big if i == 7 else b'{"i":%d}' % i) for i in range(300)]
        with RawPublisher(port=mosquitto.port, max_outstanding=10) as pub:
            stats = pub.run_paced(iter(messages), rate=None)
            pub.publish("bench/raw/last", b"end", mark="last")
            pub.wait_acked(timeout=10)
        assert stats.sent == 300 and pub.stats.acked == 301 and "last" in pub.sent_at
        wait_until(lambda: len(got) == 301, timeout=10, what="all messages at the subscriber")
        assert got[:300] == messages and got[300] == ("bench/raw/last", b"end")
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_mixed_runs_mark_the_quick_benches() -> None:
    full = run.BenchOutcome("latency")
    quick = run.BenchOutcome("scale", quick=True)
    skipped = run.BenchOutcome("soak", skipped="not here")
    for outcome in (full, quick):
        outcome.runs.append({"figures": [Figure(name=f"{outcome.name}.x", value=1.0, unit="s").to_json()]})
    assert [r.bench for r in run.aggregate([full, quick, skipped])] == ["latency", "scale (quick)"]
    full.quick = True
    assert [r.bench for r in run.aggregate([full, quick, skipped])] == ["latency", "scale"]
