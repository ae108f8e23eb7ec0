"""``firegrid acl --config CFG --out DIR``: Mosquitto's password file and ACL file from the device registry.

What it writes into ``DIR`` (see docs/deploy.md):

* ``passwd`` (mode 0600): one ``user:$7$101$salt$hash`` line per user, hashed exactly as ``mosquitto_passwd`` of
  Mosquitto 2.0 does: PBKDF2-HMAC-SHA512, 101 iterations, a random 12-byte salt, both base64.
* ``acl`` (mode 0644): each device may publish only under ``{prefix}/{building}/{device}/#`` and read nothing; the
  gateway user may read ``{prefix}/#`` and publish its own ``{prefix}/_gateway/{client_id}/status``; the optional
  simulator user may publish as any device but never as a gateway.  Anonymous clients get no topic at all.
* ``credentials.yaml`` (mode 0600): the clear-text password of every user, for provisioning devices.

Passwords: the gateway's is ``mqtt.password`` when set.  Otherwise, and for devices, with ``acl.device_secret`` set a
password is derived, hex HMAC-SHA256(secret, user name) cut to 32 characters, so a rerun (or a provisioning tool) gets
the same one; without it a random password is generated once and re-used from ``credentials.yaml`` on later runs, so
regenerating after adding a device does not lock the others out.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.config import FiregridConfig, load_or_exit
from gateway.secrets import reveal

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 uses; the broker reads the count from each line
SALT_BYTES = 12
DEFAULT_GATEWAY_USER = "firegrid-gateway"
PASSWD_FILE = "passwd"
ACL_FILE = "acl"
CREDENTIALS_FILE = "credentials.yaml"


class AclError(Exception):
    """The registry cannot be turned into broker credentials (a name clash, an unreadable credentials file)."""


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """The ``$7$`` hash ``mosquitto_passwd`` writes: ``$7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """Check a password against a ``$7$`` line (as the broker does); used by tests and for sanity."""
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
    except ValueError:
        return False
    if kind != "7":
        return False
    expected = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(base64.b64encode(expected).decode(), digest)


def derive_password(secret: str, username: str) -> str:
    """Deterministic per-user password: hex HMAC-SHA256(secret, username), first 32 characters (128 bits)."""
    return hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password: str
    role: str  # "gateway" | "simulator" | "device"
    building: str | None = None


@dataclass(frozen=True, slots=True)
class AclBundle:
    users: tuple[User, ...]
    acl: str

    def passwd(self) -> str:
        return "".join(f"{user.name}:{hash_password(user.password)}\n" for user in self.users)

    def credentials(self) -> str:
        data = {
            user.name: {"password": user.password, "role": user.role}
            | ({"building": user.building} if user.building else {})
            for user in self.users
        }
        header = "# firegrid acl: MQTT credentials in clear text. Keep this file secret (mode 0600).\n"
        return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def gateway_username(config: FiregridConfig) -> str:
    return config.mqtt.username or DEFAULT_GATEWAY_USER


def _read_existing(path: Path) -> dict[str, str]:
    """Passwords already handed out (random mode keeps them, so devices already provisioned still connect)."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise AclError(f"{path}: cannot read existing credentials: {exc}") from None
    if not isinstance(data, dict):
        raise AclError(f"{path}: not a mapping of user -> {{password}}")
    out: dict[str, str] = {}
    for name, entry in data.items():
        if isinstance(entry, dict) and isinstance(entry.get("password"), str):
            out[str(name)] = entry["password"]
    return out


def build(config: FiregridConfig, *, existing: Mapping[str, str] | None = None) -> AclBundle:
    """Users and the ACL text for ``config`` (pure apart from random passwords)."""
    existing = existing or {}
    secret = reveal(config.acl.device_secret)
    prefix = config.mqtt.topic_prefix

    def password_for(name: str) -> str:
        if secret:
            return derive_password(secret, name)
        return existing.get(name) or secrets.token_urlsafe(24)

    users: list[User] = []
    gateway = gateway_username(config)
    users.append(User(gateway, reveal(config.mqtt.password) or password_for(gateway), "gateway"))
    simulator = config.acl.simulator_username
    if simulator:
        users.append(User(simulator, reveal(config.acl.simulator_password) or password_for(simulator), "simulator"))
    taken = {user.name for user in users}
    for device in config.devices:
        if device.id in taken:
            # A device named like the gateway would receive the gateway's rights: refuse rather than guess.
            raise AclError(f"device id {device.id!r} clashes with the {device.id!r} MQTT user; rename one")
        users.append(User(device.id, password_for(device.id), "device", device.building))

    lines = [
        "# Generated by `firegrid acl` from the device registry. Do not edit: rerun the command instead.",
        "# No topic lines before the first `user`: anonymous clients (if ever allowed) may do nothing.",
        "",
        f"user {gateway}",
        f"topic read {prefix}/#",
        f"topic write {prefix}/_gateway/{config.mqtt.client_id}/status",
        "",
    ]
    if simulator:
        lines += [
            f"user {simulator}",
            "# may publish as any device, never as a gateway (deny is checked before grants)",
            f"topic deny {prefix}/_gateway/#",
            f"topic write {prefix}/+/+/telemetry",
            f"topic write {prefix}/+/+/event",
            f"topic write {prefix}/+/+/status",
            "",
        ]
    for user in users:
        if user.role != "device":
            continue
        # Write only, under its own building and id: no read line, so a device cannot subscribe to anything.
        lines += [f"user {user.name}", f"topic write {prefix}/{user.building}/{user.name}/#", ""]
    return AclBundle(users=tuple(users), acl="\n".join(lines))


def _write(path: Path, text: str, mode: int) -> None:
    """Write atomically with ``mode`` from the start: a clear-text secret is never briefly world-readable."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, mode)  # the umask may have narrowed it
    os.replace(tmp, path)


def write_bundle(config: FiregridConfig, out_dir: Path, *, credentials: bool = True) -> AclBundle:
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = build(config, existing=_read_existing(out_dir / CREDENTIALS_FILE))
    _write(out_dir / PASSWD_FILE, bundle.passwd(), 0o600)
    _write(out_dir / ACL_FILE, bundle.acl, 0o644)
    if credentials:
        _write(out_dir / CREDENTIALS_FILE, bundle.credentials(), 0o600)
    return bundle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the firegrid YAML config (its device registry)")
    parser.add_argument("--out", required=True, type=Path, help="directory for passwd, acl and credentials.yaml")
    parser.add_argument(
        "--no-credentials",
        action="store_true",
        help="do not write credentials.yaml (only sensible with acl.device_secret, which makes passwords derivable)",
    )


def run(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    if args.no_credentials and config.acl.device_secret is None:
        print("--no-credentials needs acl.device_secret: random passwords would be lost", file=sys.stderr)
        return 2
    try:
        bundle = write_bundle(config, args.out, credentials=not args.no_credentials)
    except (AclError, OSError) as exc:
        print(f"firegrid acl: {exc}", file=sys.stderr)
        return 1
    devices = sum(1 for user in bundle.users if user.role == "device")
    how = "derived from acl.device_secret" if config.acl.device_secret else "random (kept in credentials.yaml)"
    files = f"{args.out / PASSWD_FILE} and {args.out / ACL_FILE}"
    print(f"wrote {files}: {len(bundle.users)} users ({devices} devices); passwords {how}")
    return 0
