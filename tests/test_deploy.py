"""The docker-compose deployment, checked without a Docker engine.

* docker-compose.yml is valid against the Compose Specification schema (vendored in deploy/compose-spec.schema.json),
  every service has a healthcheck and waits for healthy
  dependencies, every file it mounts exists, every secret comes from deploy/.env (documented in .env.example).
* Each container that mounts deploy/firegrid.yaml can load it with exactly the environment compose gives it.
* The Grafana dashboard parses, and every panel's InfluxQL returns data from a real InfluxDB fed with points
  encoded by the gateway's own line-protocol writer (gateway/storage/influx.py).
* The Mosquitto config compose mounts is accepted by a real mosquitto (paths and ports rewritten to a temporary
  directory, every directive kept), with the password file and ACL `firegrid acl` generates for it, its TLS
  listener enabled, and the compose healthcheck command run against it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
import yaml

from gateway.config import load_config
from gateway.tools.acl import derive_password
from testkit.services import InfluxServer, free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
SCHEMA = DEPLOY / "compose-spec.schema.json"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "firegrid.json"
CONFIG_IN_CONTAINER = "/etc/firegrid/firegrid.yaml"
GATEWAY_MEASUREMENTS = {"smoke", "heat", "extinguisher", "call_point", "alert"}
VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:?msg}, ${VAR:-default} against ``env`` (a missing required one fails the test)."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in env:
            return env[name]
        default = re.match(r"\$\{[^:}]+:-([^}]*)\}", match.group(0))
        assert default, f"{name} is required by docker-compose.yml but missing from deploy/.env.example"
        return default.group(1)

    return VAR_RE.sub(one, value)


def service_env(service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value), env) for key, value in raw.items()}


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of every bind mount, short or long syntax."""
    mounts: list[tuple[str, str]] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                mounts.append((source, target))
        elif volume.get("type") == "bind":
            mounts.append((volume["source"], volume["target"]))
    return mounts


def mounts_config(service: dict[str, Any]) -> bool:
    return any(target == CONFIG_IN_CONTAINER for _, target in bind_mounts(service))


# --- the compose file -----------------------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    # The validator really judges: the same file with a misspelt service key and a bad healthcheck is refused.
    broken = copy.deepcopy(compose)
    broken["services"]["gateway"]["healthchek"] = broken["services"]["gateway"].pop("healthcheck")
    broken["services"]["mosquitto"]["depends_on"]["mosquitto-auth"]["condition"] = "service_ready"
    assert len(list(validator.iter_errors(broken))) >= 2


def test_expected_services_with_healthchecks_and_healthy_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"mosquitto", "influxdb", "grafana", "gateway", "simulator"} <= set(services)
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert services["influxdb"]["image"].startswith("influxdb:2")
    assert services["gateway"]["build"]["dockerfile"] == "Dockerfile"
    assert services["simulator"]["profiles"] == ["simulator"]
    assert "readyz" in " ".join(services["gateway"]["healthcheck"]["test"])
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, spec in (service.get("depends_on") or {}).items():
            condition = spec["condition"]
            if condition == "service_completed_successfully":
                # only a one-shot job (it exits) may be waited for by completion rather than health
                assert services[dep].get("restart") == "no", f"{name} -> {dep}"
            else:
                assert condition == "service_healthy", f"{name} -> {dep}: {condition}"
    # The broker waits for its generated credentials; the gateway for a healthy broker and InfluxDB.
    assert services["mosquitto"]["depends_on"]["mosquitto-auth"]["condition"] == "service_completed_successfully"
    assert set(services["gateway"]["depends_on"]) == {"mosquitto", "influxdb"}
    init = services["influxdb"]["environment"]
    assert init["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    for key in ("ORG", "BUCKET", "ADMIN_TOKEN", "PASSWORD", "USERNAME"):
        assert init[f"DOCKER_INFLUXDB_INIT_{key}"], key


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for source, target in bind_mounts(service):
            assert (ROOT / source).exists(), f"{name}: mounts {source} -> {target}, which does not exist"
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/")):
                assert volume.split(":")[0] in declared_volumes, f"{name}: undeclared volume {volume}"
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    # Grafana's home dashboard path must be a file inside one of its mounts.
    grafana = compose["services"]["grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    hosts = [ROOT / src / Path(home).relative_to(tgt) for src, tgt in bind_mounts(grafana) if home.startswith(tgt)]
    assert hosts and hosts[0].is_file(), home


def test_secrets_only_from_the_env_file(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    used = {name for text in strings(compose) for name in VAR_RE.findall(text)}
    assert used, "docker-compose.yml reads no secret from deploy/.env?"
    assert used <= set(env_example), f"not in deploy/.env.example: {sorted(used - set(env_example))}"
    assert set(env_example) <= used, f"unused in docker-compose.yml: {sorted(set(env_example) - used)}"
    secretish = re.compile(r"PASSWORD|TOKEN|SECRET", re.I)
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secretish.search(key) and value not in ("unused", "[]"):
                assert VAR_RE.fullmatch(str(value)), f"{name}.{key}: a literal secret in docker-compose.yml"
    # The real env file is never committed.
    check = subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], cwd=ROOT, capture_output=True, timeout=30)
    assert check.returncode == 0, "deploy/.env is not git-ignored"


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def load_with_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]):
    for key in list(os.environ):
        if key.startswith("FIREGRID_") or key in ("INFLUX_TOKEN",) or key.startswith("MQTT_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_config(DEPLOY / "firegrid.yaml")


def test_each_container_can_load_the_config_with_its_own_environment(
    compose: dict[str, Any], env_example: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = {}
    for name, service in compose["services"].items():
        if mounts_config(service):
            with monkeypatch.context() as patch:
                loaded[name] = load_with_env(patch, service_env(service, env_example))
    assert set(loaded) == {"mosquitto-auth", "gateway", "simulator"}
    gateway, acl, sim = loaded["gateway"], loaded["mosquitto-auth"], loaded["simulator"]
    assert gateway.mqtt.password.get_secret_value() == env_example["MQTT_GATEWAY_PASSWORD"]
    assert gateway.influx.token.get_secret_value() == env_example["INFLUX_TOKEN"]
    assert gateway.acl.device_secret is None  # the gateway never holds the device secret
    assert acl.acl.device_secret.get_secret_value() == env_example["MQTT_DEVICE_SECRET"]
    assert acl.http.tokens == [] and sim.http.tokens == []
    # The simulator logs in as the ACL's simulator user with its password.
    assert sim.mqtt.username == acl.acl.simulator_username
    assert sim.mqtt.password.get_secret_value() == acl.acl.simulator_password.get_secret_value()

    # InfluxDB, Grafana and the gateway agree on org, bucket (= InfluxQL database) and host.
    init = compose["services"]["influxdb"]["environment"]
    assert (gateway.influx.org, gateway.influx.bucket) == (
        init["DOCKER_INFLUXDB_INIT_ORG"],
        init["DOCKER_INFLUXDB_INIT_BUCKET"],
    )
    assert gateway.influx.url == "http://influxdb:8086" and gateway.mqtt.host == "mosquitto"
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/firegrid.yaml").read_text())
    (source,) = datasource["datasources"]
    assert source["url"] == gateway.influx.url and source["jsonData"]["dbName"] == gateway.influx.bucket
    assert source["secureJsonData"]["httpHeaderValue1"] == "Token $INFLUX_TOKEN"
    assert "INFLUX_TOKEN" in compose["services"]["grafana"]["environment"]
    # The gateway listens where the healthcheck asks.
    assert f":{gateway.http.port}/readyz" in " ".join(compose["services"]["gateway"]["healthcheck"]["test"])

    # Broker settings persistent sessions and late acknowledgement need (docs/deploy.md).
    directives = dict(
        line.split(None, 1) for line in MOSQUITTO_CONF.read_text().splitlines() if line and not line.startswith("#")
    )
    assert directives["persistence"] == "true"
    assert int(directives["max_queued_messages"]) >= 100_000
    assert int(directives["max_inflight_messages"]) >= gateway.mqtt.max_inflight
    assert directives["persistent_client_expiration"] == "7d" and gateway.mqtt.session_expiry_s <= 7 * 86_400
    assert directives["allow_anonymous"] == "false"


def test_dockerfile_non_root_with_readyz_healthcheck(compose: dict[str, Any]) -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert stages and all(re.match(r"FROM python:3\.1[1-9]-slim\b", line) for line in stages)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    healthcheck = next(line for line in lines if line.startswith("HEALTHCHECK "))
    assert "/readyz" in healthcheck
    snippet = re.search(r'"-c", "(.*)"\]', healthcheck)
    assert snippet
    compile(snippet.group(1), "HEALTHCHECK", "exec")  # the python one-liner at least parses
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert '"firegrid"' in next(line for line in lines if line.startswith("ENTRYPOINT"))
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "deploy/.env" in ignored and ".venv" in ignored


# --- Grafana --------------------------------------------------------------------------------------------------------


def dashboard_targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["query"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_provisioning_points_at_the_mounted_json(compose: dict[str, Any]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("alerts", "temperature", "smoke", "extinguisher", "offline"):
        assert topic in titles, topic
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/firegrid.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = dict((tgt, src) for src, tgt in bind_mounts(compose["services"]["grafana"]))
    assert (ROOT / mounts[path] / DASHBOARD.name).resolve() == DASHBOARD.resolve()
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == (DEPLOY / "grafana/provisioning").resolve()
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/firegrid.yaml").read_text())
    assert uids == {datasource["datasources"][0]["uid"]}


def grafana_to_influxql(query: str) -> str:
    """What Grafana sends for the dashboard's macros and variables (All buildings, the default absence regex)."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    return (
        query.replace("$timeFilter", "time > now() - 1h")
        .replace("$__interval", "1m")
        .replace("/^$building$/", f"/^{variables['building']['allValue']}$/")
        .replace("$offline_rules", variables["offline_rules"]["query"])
    )


@pytest.fixture
def influx_with_gateway_points(tmp_path: Path) -> Iterator[InfluxServer]:
    """InfluxDB 1.x (its InfluxQL is what InfluxDB 2's v1 API speaks) holding points the gateway's encoder wrote."""
    from gateway.storage.influx import alert_line, reading_line
    from rules.types import AlertTransition, DeviceRef, Reading, Severity

    server = InfluxServer(workdir=tmp_path / "influx").start()
    now = int(time.time() * 1000)
    lines: list[bytes] = []
    refs = {
        "smoke": DeviceRef(building="b01", device="b01-sd-01", kind="smoke", floor=1, grid="g01"),
        "heat": DeviceRef(building="b01", device="b01-ht-01", kind="heat", floor=1, grid="g01"),
        "extinguisher": DeviceRef(building="b02", device="b02-ex-01", kind="extinguisher", floor=1, grid="g01"),
        "call_point": DeviceRef(building="b02", device="b02-cp-01", kind="call_point", floor=1, grid="g01"),
    }
    values = {
        "smoke": {"obscuration": 0.4, "alarm": False, "battery": 90.0},
        "heat": {"celsius": 23.5, "battery": 88.0},
        "extinguisher": {"pressure_mpa": 1.2, "present": True},
        "call_point": {"battery": 70.0},
    }
    for i in range(5):
        for kind, ref in refs.items():
            line = reading_line(Reading(ref=ref, ts_ms=now - i * 60_000, values=values[kind], seq=i))
            assert line is not None
            lines.append(line)
    for rule, transition, device in (("smoke_fire", "raised", "b01-sd-01"), ("device_silent", "raised", "b02-cp-01")):
        lines.append(
            alert_line(
                AlertTransition(
                    transition=transition,
                    key=f"{rule}:{device}",
                    rule=rule,
                    severity=Severity.FIRE if rule == "smoke_fire" else Severity.TROUBLE,
                    building=device[:3],
                    floor=1,
                    device=device,
                    ts_ms=now - 30_000,
                    reason="test point",
                    value=None,
                    confirmed=None,
                    flapping=False,
                    test=False,
                    grid="g01",
                )
            )
        )
    import urllib.request

    request = urllib.request.Request(
        f"{server.url}/write?db={server.database}&precision=ms", data=b"\n".join(lines), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204
    try:
        yield server
    finally:
        server.stop(timeout=10)


def test_every_dashboard_query_returns_gateway_data(influx_with_gateway_points: InfluxServer) -> None:
    targets = dashboard_targets()
    referenced: set[str] = set()
    for _, query in targets:
        referenced |= set(re.findall(r'FROM\s+"(\w+)"', query))
        referenced |= set(re.findall(r',\s*"(\w+)"', query.split("FROM", 1)[1].split("WHERE")[0]))
    assert referenced <= GATEWAY_MEASUREMENTS, f"not written by the gateway: {referenced - GATEWAY_MEASUREMENTS}"
    assert {"alert", "heat", "smoke", "extinguisher"} <= referenced
    for title, query in targets:
        result = influx_with_gateway_points.query(grafana_to_influxql(query))["results"][0]
        assert "error" not in result, f"{title}: {result['error']}"
        assert result.get("series"), f"{title}: no data for\n{grafana_to_influxql(query)}"
    # The offline table shows the device whose absence alert is raised, and not the fire alarm's detector.
    (offline_query,) = [q for t, q in targets if t == "Devices offline"]
    rows = influx_with_gateway_points.query(grafana_to_influxql(offline_query))["results"][0]["series"]
    assert [(s["tags"]["device"], s["values"][0][1]) for s in rows] == [("b02-cp-01", "raised")]


# --- Mosquitto ------------------------------------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(directory: Path) -> None:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (EC keys: fast)."""
    directory.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca", cwd=directory
    )
    for name, extra in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        (directory / f"{name}.ext").write_text(extra + "\n")
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=directory,
        )  # fmt: skip


def port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """A real mosquitto started with the shipped config, rewritten to temporary paths and free loopback ports."""

    def __init__(self, tmp: Path, auth: Path, *, tls: bool, extra: str = "") -> None:
        self.port, self.tls_port = free_port(), free_port()
        self.tmp = tmp
        conf_d = tmp / "conf.d"
        conf_d.mkdir(parents=True, exist_ok=True)
        certs = tmp / "certs"
        if tls:
            make_certs(certs)
            tls_conf = (DEPLOY / "mosquitto/conf.d/tls.conf.example").read_text()
            tls_conf = tls_conf.replace("listener 8883", f"listener {self.tls_port} 127.0.0.1")
            (conf_d / "tls.conf").write_text(tls_conf.replace("/mosquitto/certs/", f"{certs}/"))
        text = MOSQUITTO_CONF.read_text()
        for old, new in (
            ("/mosquitto/auth/", f"{auth}/"),
            ("/mosquitto/data/", f"{tmp}/data/"),
            ("/mosquitto/config/conf.d", str(conf_d)),
            ("\nlistener 1883\n", f"\nlistener {self.port} 127.0.0.1\n"),
        ):
            assert old in text, f"mosquitto.conf no longer contains {old!r}"
            text = text.replace(old, new)
        (tmp / "data").mkdir(exist_ok=True)
        # As root, mosquitto would drop to user "mosquitto", who cannot read this private temporary directory.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(user + text + extra)
        self.log = tmp / "mosquitto.log"
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT)

    def wait_listening(self, *ports: int) -> None:
        deadline = time.monotonic() + 10
        for port in ports:
            while not port_open(port):
                assert self.proc.poll() is None, f"mosquitto exited {self.proc.returncode}:\n{self.log.read_text()}"
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


@pytest.fixture
def acl_dir(tmp_path: Path, compose: dict[str, Any], env_example: dict[str, str]) -> Path:
    """Exactly what the compose `mosquitto-auth` service does: `firegrid acl` with that container's environment."""
    service = compose["services"]["mosquitto-auth"]
    out = tmp_path / "auth"
    command = [interpolate(part, env_example) for part in service["command"]]
    command[command.index("--config") + 1] = str(DEPLOY / "firegrid.yaml")
    command[command.index("--out") + 1] = str(out)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIREGRID_", "MQTT_"))}
    env |= service_env(service, env_example)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (out / "credentials.yaml").exists()  # --no-credentials: derived passwords need no list on disk
    return out


def connect(port: int, user: str, password: str, *, tls_dir: Path | None = None, cert: bool = True) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{time.monotonic_ns()}",
                         protocol=mqtt.MQTTv5)  # fmt: skip
    client.username_pw_set(user, password)
    if tls_dir is not None:
        context = ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))
        if cert:
            context.load_cert_chain(str(tls_dir / "client.crt"), str(tls_dir / "client.key"))
        client.tls_set_context(context)
    client.connect("127.0.0.1", port)
    return client


NOT_AUTHORIZED = 0x87


def connack(client: mqtt.Client, *, timeout: float = 10.0) -> int:
    """Drive the client until its CONNACK arrives; the reason code (0 = accepted), or OSError if the link drops."""
    codes: list[int] = []
    client.on_connect = lambda c, u, f, rc, p: codes.append(int(rc.value))
    deadline = time.monotonic() + timeout
    while not codes:
        if client.loop(timeout=0.1) not in (mqtt.MQTT_ERR_SUCCESS,):
            if codes:
                break
            raise OSError("connection closed before CONNACK")
        assert time.monotonic() < deadline, "no CONNACK"
    return codes[0]


def test_mosquitto_accepts_the_shipped_config(
    tmp_path: Path, acl_dir: Path, compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    broker = Broker(tmp_path / "broker", acl_dir, tls=True)
    try:
        broker.wait_listening(broker.port, broker.tls_port)

        # The compose healthcheck, pointed at this broker, passes while it runs.
        (health,) = [c for c in compose["services"]["mosquitto"]["healthcheck"]["test"][1:]]
        health = health.replace("-p 1883", f"-p {broker.port}")
        assert subprocess.run(["sh", "-c", health], timeout=30).returncode == 0

        # The gateway's and a device's credentials from deploy/.env work; the device's telemetry reaches the gateway.
        received: list[str] = []
        gateway = connect(broker.port, "firegrid-gateway", env_example["MQTT_GATEWAY_PASSWORD"])
        gateway.on_message = lambda c, u, msg: received.append(msg.topic)
        gateway.subscribe("firegrid/#", qos=1)
        gateway.loop_start()
        device = connect(broker.port, "b01-sd-01", derive_password(env_example["MQTT_DEVICE_SECRET"], "b01-sd-01"))
        device.loop_start()
        device.publish("firegrid/b02/b02-sd-01/telemetry", b'{"obscuration": 9.0}', qos=1).wait_for_publish(10)
        device.publish("firegrid/b01/b01-sd-01/telemetry", b'{"obscuration": 0.1}', qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert received[:1] == ["firegrid/b01/b01-sd-01/telemetry"]  # the spoofed one, published first, never came

        # TLS listener with client certificates: a client with a certificate from the CA gets in, one without not.
        certs = broker.tmp / "certs"
        ok = connect(broker.tls_port, "firegrid-gateway", env_example["MQTT_GATEWAY_PASSWORD"], tls_dir=certs)
        assert connack(ok) == 0
        wrong = connect(broker.tls_port, "firegrid-gateway", "wrong password", tls_dir=certs)
        assert connack(wrong) == NOT_AUTHORIZED  # passwords still apply on the TLS listener
        with pytest.raises((ssl.SSLError, OSError)):
            refused = connect(
                broker.tls_port, "firegrid-gateway", env_example["MQTT_GATEWAY_PASSWORD"], tls_dir=certs, cert=False
            )
            connack(refused)  # TLS 1.3 reports the missing client certificate on the first read
        # A client certificate from another CA (a valid-looking but wrong certificate) is refused too.
        make_certs(broker.tmp / "other-ca")
        (broker.tmp / "other-ca" / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())  # trust the real server
        with pytest.raises((ssl.SSLError, OSError)):
            stranger = connect(
                broker.tls_port,
                "firegrid-gateway",
                env_example["MQTT_GATEWAY_PASSWORD"],
                tls_dir=broker.tmp / "other-ca",
            )
            connack(stranger)
        for client in (gateway, device, ok, wrong):
            client.disconnect()
        gateway.loop_stop()
        device.loop_stop()
    finally:
        broker.stop()
    log = broker.log.read_text()  # mosquitto buffers its stdout: read it once it has exited
    startup = log.split(" running")[0]
    assert "Error" not in startup and "Warning: Unknown" not in startup, log
    assert f"listen socket on port {broker.tls_port}" in startup and f"port {broker.port}." in startup, log
    # ... and fails once the broker is gone.
    assert subprocess.run(["sh", "-c", health], timeout=30).returncode != 0


def test_a_misspelt_directive_is_refused_by_mosquitto(tmp_path: Path, acl_dir: Path) -> None:
    """Proves 'accepted by mosquitto' means something: the same file plus one typo does not start."""
    broker = Broker(tmp_path / "broker", acl_dir, tls=False, extra="max_inflight_mesages 5\n")
    assert broker.proc.wait(timeout=10) != 0
    assert "max_inflight_mesages" in broker.log.read_text()


def test_gateway_connects_through_the_tls_listener(tmp_path: Path, acl_dir: Path, env_example: dict[str, str]) -> None:
    """docs/deploy.md#tls as written: `firegrid run` with mqtts:// and mqtt.tls (CA, client certificate and key)
    against the shipped TLS listener, authenticated by the generated password file, allowed by the generated ACL."""
    import urllib.request

    broker = Broker(tmp_path / "broker", acl_dir, tls=True)
    proc = None
    try:
        broker.wait_listening(broker.port, broker.tls_port)
        certs = broker.tmp / "certs"
        http_port = free_port()
        config = {
            "mqtt": {
                "url": f"mqtts://127.0.0.1:{broker.tls_port}",
                "username": "firegrid-gateway",
                "password": env_example["MQTT_GATEWAY_PASSWORD"],
                "client_id": "firegrid-gw1",
                "tls": {
                    "ca_file": str(certs / "ca.crt"),
                    "cert_file": str(certs / "client.crt"),
                    "key_file": str(certs / "client.key"),
                },
            },
            "store": {"path": str(tmp_path / "gw.sqlite")},
            "http": {"listen": f"127.0.0.1:{http_port}"},
            "log": {"format": "text"},
        }
        (tmp_path / "gw.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FIREGRID_")}
        with (tmp_path / "gw.log").open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.tools.cli", "run", "--config", str(tmp_path / "gw.yaml")],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            assert proc is not None and proc.poll() is None, (tmp_path / "gw.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        deadline = time.monotonic() + 30
        while not ready():
            assert time.monotonic() < deadline, (tmp_path / "gw.log").read_text()
            time.sleep(0.05)
        # Its retained "online" status went through the ACL (the gateway may write only its own status topic).
        seen: list[bytes] = []
        watcher = connect(broker.port, "firegrid-gateway", env_example["MQTT_GATEWAY_PASSWORD"])
        watcher.on_message = lambda c, u, msg: seen.append(msg.payload)
        assert connack(watcher) == 0
        watcher.subscribe("firegrid/_gateway/firegrid-gw1/status", qos=1)
        deadline = time.monotonic() + 10
        while not seen:
            assert time.monotonic() < deadline, "no retained gateway status"
            watcher.loop(timeout=0.1)
        assert seen == [b"online"]
        watcher.disconnect()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(timeout=30) == 0, (tmp_path / "gw.log").read_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
        broker.stop()
