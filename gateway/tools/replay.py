"""``firegrid replay FILE --config CFG [--json] [--rules OTHER]``: recorded traffic through the live gateway's
decoding and rules, at full speed, printing the alert timeline.

The file is JSON lines, one message each: ``{"t": <receive time, epoch ms>, "topic": ..., "payload": <object, array
or string as sent>}`` (what ``firegrid simulate --record`` writes).  Each line is decoded by the same
:class:`gateway.ingest.contract.Decoder` (registry and policy from the config) and de-duplicated like the live pipeline;
the engine's clock is the lines' ``t`` (``engine.tick(t)`` before each message), so the timeline depends only on the
file.  ``--rules OTHER`` runs a different rules file on the same data and shows how its alerts differ from the
config's: backtesting a change before deploying it.

Exit codes: 0 replayed (rejected messages are reported, not fatal), 2 bad config/rules or unreadable file.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.config import ConfigError, FiregridConfig, exit_with_problems, load_or_exit
from gateway.ingest.contract import Decoder, Rejected, policy_from_config, registry_from_config
from gateway.ingest.dedup import Dedup
from rules.engine import Engine
from rules.loader import RulesError, check_rules, load_rule_set, read_rules_file, rule_set_for
from rules.ruleset import RuleSet
from rules.types import AlertTransition, Reading


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="recorded traffic: JSON lines {t, topic, payload} (firegrid simulate --record)")
    parser.add_argument("--config", required=True, help="the firegrid config (registry, contract, rules)")
    parser.add_argument("--json", action="store_true", help="one JSON object per transition instead of a table")
    parser.add_argument(
        "--rules",
        metavar="OTHER",
        help="a rules YAML file to backtest instead of the config's rules; the differences are summarised",
    )


@dataclass
class ReplayResult:
    transitions: list[AlertTransition] = field(default_factory=list)
    messages: int = 0
    inputs: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    bad_lines: list[str] = field(default_factory=list)
    first_t: int | None = None
    last_t: int | None = None


class ReplayFileError(Exception):
    """The recording itself cannot be read."""


def read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, record or None, problem) for each non-blank line."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ReplayFileError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield number, None, f"not JSON ({str(exc).split(':')[0]})"
                continue
            if not isinstance(record, dict):
                yield number, None, "not a JSON object"
                continue
            t, topic = record.get("t"), record.get("topic")
            if not isinstance(t, int) or isinstance(t, bool) or not isinstance(topic, str) or "payload" not in record:
                yield number, None, "needs t (epoch ms), topic (string) and payload"
                continue
            yield number, record, ""


def payload_bytes(payload: Any) -> bytes:
    """The payload as the device sent it: text as its UTF-8 bytes, JSON values re-encoded."""
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return orjson.dumps(payload)


def replay(path: Path, *, config: FiregridConfig, rule_set: RuleSet) -> ReplayResult:
    """Run one recording through decoding, de-duplication and one engine; the timeline in order of decision."""
    registry = registry_from_config(config)
    decoder = Decoder(prefix=config.mqtt.topic_prefix, registry=registry, policy=policy_from_config(config))
    dedup = Dedup(window_ms=config.contract.replay_window_s * 1000)
    engine = Engine(rule_set, registry=registry)
    result = ReplayResult()
    out = result.transitions
    for number, record, problem in read_lines(path):
        if record is None:
            result.bad_lines.append(f"line {number}: {problem}")
            continue
        t: int = record["t"]
        result.messages += 1
        result.first_t = t if result.first_t is None else result.first_t
        result.last_t = t if result.last_t is None else max(result.last_t, t)
        out.extend(engine.tick(t))
        try:
            decoded = decoder.decode(record["topic"], payload_bytes(record["payload"]), received_ms=t)
        except Rejected as exc:
            result.rejected[exc.reason.value] += 1
            continue
        for item in decoded.inputs:
            if (
                isinstance(item, Reading)
                and item.seq is not None
                and dedup.seen(item.ref.device, item.seq, item.values, now_ms=t)
            ):
                result.duplicates += 1
                continue
            result.inputs += 1
            out.extend(engine.process(item))
    return result


def _when(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def transition_json(t: AlertTransition) -> dict[str, Any]:
    return {
        "t": t.ts_ms,
        "time": _when(t.ts_ms),
        "transition": t.transition,
        "key": t.key,
        "rule": t.rule,
        "severity": t.severity.label,
        "building": t.building,
        "floor": t.floor,
        "device": t.device,
        "confirmed": t.confirmed,
        "value": t.value,
        "reason": t.reason,
        "flapping": t.flapping,
        "test": t.test,
        "drill": t.drill,
        "evidence": [[e.ts_ms, e.device, e.metric, e.value] for e in t.evidence],
    }


def transition_line(t: AlertTransition) -> str:
    where = t.building + (f" F{t.floor}" if t.floor is not None else "") + (f" {t.device}" if t.device else "")
    flags = [
        flag
        for flag, on in (
            ("CONFIRMED", t.confirmed is True),
            ("unconfirmed", t.confirmed is False and t.transition == "raised"),
            ("flapping", t.flapping),
            ("test", t.test),
            ("drill", t.drill),
        )
        if on
    ]
    flag_text = f" [{', '.join(flags)}]" if flags else ""
    return f"{_when(t.ts_ms)}  {t.transition:<8} {t.severity.label:<11} {t.rule:<24} {where:<28} {t.reason}{flag_text}"


def _summary(result: ReplayResult) -> str:
    raised = sum(1 for t in result.transitions if t.transition == "raised")
    rejected = ", ".join(f"{n} {reason}" for reason, n in sorted(result.rejected.items())) or "none"
    return (
        f"replayed {result.messages} messages ({result.inputs} inputs, {result.duplicates} duplicates, "
        f"rejected: {rejected}); {len(result.transitions)} transitions, {raised} raised"
    )


def _raised_by_rule(result: ReplayResult) -> Counter[str]:
    return Counter(t.rule for t in result.transitions if t.transition == "raised")


def _load_other(path: Path, config: FiregridConfig) -> RuleSet:
    rules = read_rules_file(path, label=f"{path}: ")
    problems = check_rules(rules, prefix=f"{path}: rules")
    if problems:
        raise RulesError(problems)
    return rule_set_for(rules, config, source=str(path))


def run(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    try:
        rule_set = load_rule_set(config)
        other = _load_other(Path(args.rules), config) if args.rules else None
    except (ConfigError, RulesError) as exc:
        exit_with_problems(exc.problems)
    path = Path(args.file)
    try:
        base = replay(path, config=config, rule_set=rule_set)
        shown = replay(path, config=config, rule_set=other) if other is not None else base
    except ReplayFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    write = sys.stdout.write
    if args.json:
        for t in shown.transitions:
            write(orjson.dumps(transition_json(t)).decode() + "\n")
    else:
        for t in shown.transitions:
            write(transition_line(t) + "\n")
    info = sys.stderr if args.json else sys.stdout
    for problem in shown.bad_lines[:20]:
        print(f"{path}: {problem}", file=sys.stderr)
    if len(shown.bad_lines) > 20:
        print(f"{path}: ... {len(shown.bad_lines) - 20} more unreadable lines", file=sys.stderr)
    print(_summary(shown), file=info)
    if other is not None:
        print(f"backtest: {other.source} against the config's rules ({rule_set.source}):", file=info)
        before, after = _raised_by_rule(base), _raised_by_rule(shown)
        changed = False
        for rule in sorted(set(before) | set(after)):
            if before[rule] != after[rule]:
                changed = True
                print(f"  {rule}: raised {before[rule]} -> {after[rule]}", file=info)
        if not changed:
            print("  the same alerts would have been raised", file=info)
    sys.stdout.flush()
    return 0
