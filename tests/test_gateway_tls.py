"""``mqtts://`` with a CA, a client certificate and key, plus username/password, against a real Mosquitto TLS
listener that requires client certificates."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from testkit.gateway import Gateway, wait_for, write_config
from testkit.services import InfluxServer, MosquittoServer, free_port


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _pki(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if name == "server" else "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            str(d / f"{name}.crt"),
            "-extfile",
            str(ext),
        )


def test_mqtts_with_client_certificate_and_password(tmp_path: Path, influx: InfluxServer) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    _pki(pki)
    passwords = tmp_path / "passwd"
    passwords.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "gateway", "s3cret"], check=True)
    tls_port = free_port()
    broker = MosquittoServer(
        workdir=tmp_path / "mosquitto",
        allow_anonymous=True,  # the plain listener (the test publisher); the TLS one requires a password
        extra_config=(f"password_file {passwords}",),
        listeners=(
            f"listener {tls_port} 127.0.0.1",
            f"cafile {pki / 'ca.crt'}",
            f"certfile {pki / 'server.crt'}",
            f"keyfile {pki / 'server.key'}",
            "require_certificate true",
        ),
    ).start()
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    try:
        config, port = write_config(
            tmp_path,
            mqtt_url=f"mqtts://127.0.0.1:{tls_port}",
            influx_url=influx.url,
            devices=10,
            extra={
                "mqtt": {
                    "username": "gateway",
                    "password": f"file:{secret}",
                    "tls": {
                        "ca_file": str(pki / "ca.crt"),
                        "cert_file": str(pki / "client.crt"),
                        "key_file": str(pki / "client.key"),
                    },
                }
            },
        )
        gateway = Gateway(config, port, tmp_path / "gateway.log").start()
        try:
            publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-test-pub")
            publisher.username_pw_set("gateway", "s3cret")
            publisher.connect("127.0.0.1", broker.port)
            publisher.loop_start()
            now = int(time.time() * 1000)
            for i in range(20):
                publisher.publish("firegrid/b01/d001/telemetry", json.dumps({"ts": now + i, "obscuration": 1.0}), qos=1)
            wait_for(lambda: influx.count("smoke", "obscuration") == 20, timeout=20, what="20 points over mqtts")
            publisher.loop_stop()
            publisher.disconnect()
            assert "s3cret" not in gateway.log_tail(500)
        finally:
            assert gateway.stop() == 0, gateway.log_tail()
    finally:
        broker.stop()
