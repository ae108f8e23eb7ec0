"""The durable alert store: lifecycle, re-trigger, incidents, outbox rows written with the transition."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerts.store import AlertNotFound, AlertStore, InvalidTransition
from rules.types import Severity
from testkit.emulators.scenario import alarm, notify_config, sms_section

T0 = 1_700_000_000_000


def make_store(target: str | Path, **kwargs: object) -> AlertStore:
    config = notify_config(
        webhook_url="http://127.0.0.1:9/hook",
        sms=sms_section("aliyun", "http://127.0.0.1:9"),
        governance_url="http://127.0.0.1:9/gov",
        **kwargs,  # type: ignore[arg-type]
    )
    return AlertStore(target, notify=config, building_names={"yg01": "阳光花园 1号楼"})


def test_lifecycle_with_audit_trail(store_target: str | Path) -> None:
    store = make_store(store_target)
    changes = store.apply([alarm("yg01-sd-03a")], now_ms=T0)
    assert [c.type for c in changes] == ["alert.raised", "incident.opened"]
    alert_id = changes[0].alert_id
    assert alert_id is not None
    store.acknowledge(alert_id, by="王网格", note="on my way", now_ms=T0 + 1000)
    store.dispatch(alert_id, by="王网格", to="微型消防站一队", now_ms=T0 + 2000)
    change = store.resolve(alert_id, by="张站长", cause="false_alarm", note="steam from a kitchen", now_ms=T0 + 9000)
    assert change.type == "alert.resolved"
    alert = store.get_alert(alert_id)
    assert alert is not None
    assert alert.state == "resolved" and alert.cause == "false_alarm"
    assert [a.action for a in alert.audit] == ["raised", "acknowledged", "dispatched", "resolved"]
    assert alert.audit[2].detail is not None and alert.audit[2].detail["to"] == "微型消防站一队"
    assert alert.evidence[0].device == "yg01-sd-03a"
    assert store.active_alerts() == []
    assert store.list_incidents(state="resolved")[0].alert_ids == (alert_id,)
    with pytest.raises(InvalidTransition):
        store.acknowledge(alert_id, by="x", now_ms=T0 + 10_000)
    with pytest.raises(AlertNotFound):
        store.acknowledge(999, by="x", now_ms=T0)
    with pytest.raises(ValueError):
        store.resolve(alert_id, by="x", cause="aliens", now_ms=T0)


def test_clearing_is_recorded_but_does_not_close(store_target: str | Path) -> None:
    store = make_store(store_target)
    alert_id = store.apply([alarm("yg01-sd-03a")], now_ms=T0)[0].alert_id
    assert alert_id is not None
    changes = store.apply([alarm("yg01-sd-03a", transition="cleared")], now_ms=T0 + 5000)
    assert [c.type for c in changes] == ["alert.cleared"]
    alert = store.get_alert(alert_id)
    assert alert is not None and alert.state == "raised" and alert.condition == "cleared"
    assert [a.id for a in store.active_alerts()] == [alert_id]


def test_retrigger_updates_never_duplicates(store_target: str | Path) -> None:
    store = make_store(store_target)
    first = store.apply([alarm("yg01-sd-03a", severity=Severity.WARNING)], now_ms=T0)[0]
    store.apply([alarm("yg01-sd-03a", transition="cleared")], now_ms=T0 + 1000)
    again = store.apply([alarm("yg01-sd-03a", severity=Severity.FIRE)], now_ms=T0 + 2000)
    assert again[0].type == "alert.updated" and again[0].alert_id == first.alert_id
    alerts = store.list_alerts()
    assert len(alerts) == 1
    assert alerts[0].count == 2 and alerts[0].severity.label == "fire" and alerts[0].condition == "active"
    # After a person resolves it, the same condition is a NEW alert.
    assert first.alert_id is not None
    store.resolve(first.alert_id, by="x", cause="test", now_ms=T0 + 3000)
    new = store.apply([alarm("yg01-sd-03a")], now_ms=T0 + 4000)[0]
    assert new.type == "alert.raised" and new.alert_id != first.alert_id


def test_outbox_rows_are_written_with_the_transition(store_target: str | Path) -> None:
    store = make_store(store_target)
    store.apply([alarm("yg01-sd-03a")], now_ms=T0)
    rows = store.outbox()
    channels = sorted({(r.channel, r.event) for r in rows})
    assert ("webhook", "alert.raised") in channels and ("governance", "incident.opened") in channels
    sms = [r for r in rows if r.channel == "sms"]
    # Tier 0 of the fire route: the grid worker and the volunteer of g01, not the station leader yet.
    assert sorted(r.recipient for r in sms) == ["李志愿", "王网格"]
    assert all(r.state == "pending" for r in rows)
    store.close()
    # Durable: a new store on the same file sees the same pending outbox.
    reopened = make_store(store_target)
    assert len(reopened.outbox(state="pending")) == len(rows)


def test_fire_first_in_outbox_order(store_target: str | Path) -> None:
    store = make_store(store_target)
    store.apply([alarm("yg01-ex-01", severity=Severity.SUPERVISORY, building="yg01")], now_ms=T0)
    store.apply([alarm("yg02-sd-01", building="yg02")], now_ms=T0)
    due = store.due(now_ms=T0, limit=1000)
    fire_positions = [i for i, item in enumerate(due) if item.priority >= int(Severity.FIRE) * 10]
    assert fire_positions == list(range(len(fire_positions))) and fire_positions


def test_two_hundred_detectors_one_incident_one_sms_per_recipient(store_target: str | Path) -> None:
    store = make_store(store_target)
    batch = [alarm(f"yg01-sd-{i:03d}", floor=i % 18 + 1) for i in range(200)]
    changes = store.apply(batch, now_ms=T0)
    assert sum(c.type == "alert.raised" for c in changes) == 200
    assert len(store.list_incidents()) == 1
    sms = store.outbox(channel="sms")
    assert sorted(r.recipient for r in sms) == ["李志愿", "王网格"]
    # More alarms a bit later in the same building join the incident and coalesce into the waiting SMS.
    store.apply([alarm(f"yg01-hd-{i:03d}") for i in range(50)], now_ms=T0 + 10_000)
    assert len(store.list_incidents()) == 1
    assert len(store.outbox(channel="sms")) == 2
    # Another building is another incident.
    store.apply([alarm("yg02-sd-001", building="yg02")], now_ms=T0 + 10_000)
    assert len(store.list_incidents()) == 2


def test_grouping_window_and_drills_apart(store_target: str | Path) -> None:
    store = make_store(store_target, group_window_s=60)
    store.apply([alarm("yg01-sd-001")], now_ms=T0)
    store.apply([alarm("yg01-sd-002")], now_ms=T0 + 59_000)  # inside the (sliding) window
    store.apply([alarm("yg01-sd-003")], now_ms=T0 + 200_000)  # long after: a new incident
    store.apply([alarm("yg01-sd-004", drill=True, key="drill:yg01-sd-004")], now_ms=T0 + 200_000)
    incidents = store.list_incidents()
    assert [len(i.alert_ids) for i in incidents] == [1, 1, 2]
    assert incidents[0].drill is True


def test_drill_never_pages_the_roster(store_target: str | Path) -> None:
    store = make_store(store_target, drill_receivers={"members": [{"name": "演练", "phone": "+8613900000009"}]})
    store.apply([alarm("yg01-sd-001", drill=True, key="drill:x")], now_ms=T0)
    sms = store.outbox(channel="sms")
    assert [r.phone for r in sms] == ["+8613900000009"]
    assert store.outbox(channel="webhook") == []  # the real webhooks hear nothing of a drill
    assert store.next_escalation_ms() is None


def test_test_alerts_are_recorded_not_paged(store_target: str | Path) -> None:
    store = make_store(store_target)
    store.apply([alarm("yg01-sd-001", test=True)], now_ms=T0)
    assert len(store.list_alerts()) == 1
    assert {r.channel for r in store.outbox()} == {"governance"}


def test_filters_and_paging(store_target: str | Path) -> None:
    store = make_store(store_target)
    store.apply([alarm(f"yg01-sd-{i}") for i in range(5)], now_ms=T0)
    store.apply([alarm("hp02-ex-1", building="hp02", grid="g02", severity=Severity.SUPERVISORY)], now_ms=T0)
    assert len(store.list_alerts(grid="g01")) == 5
    assert len(store.list_alerts(grid=["g02"])) == 1
    assert len(store.list_alerts(severity="fire")) == 5
    assert len(store.list_alerts(limit=2, offset=4)) == 2
    assert store.list_alerts(building=[]) == []  # an empty scope sees nothing


def test_escalation_queue_only_for_unacknowledged_fire(store_target: str | Path) -> None:
    store = make_store(store_target, ack_timeout_s=60)
    fire = store.apply([alarm("yg01-sd-001")], now_ms=T0)[0].alert_id
    store.apply([alarm("yg01-ex-1", severity=Severity.SUPERVISORY)], now_ms=T0)
    assert store.next_escalation_ms() == T0 + 60_000
    assert store.escalate_due(now_ms=T0 + 59_999) == []
    changes = store.escalate_due(now_ms=T0 + 60_000)
    assert [c.type for c in changes] == ["alert.escalated"]
    assert changes[0].data["escalated_to"] == ["张站长"]
    assert store.next_escalation_ms() == T0 + 120_000
    assert fire is not None
    store.acknowledge(fire, by="张站长", now_ms=T0 + 61_000)
    assert store.next_escalation_ms() is None


def test_listeners_see_committed_changes(store_target: str | Path) -> None:
    store = make_store(store_target)
    seen: list[str] = []
    store.add_listener(lambda change: seen.append(change.type))
    store.add_listener(lambda change: 1 / 0)  # a broken listener does not break the store
    alert_id = store.apply([alarm("yg01-sd-001")], now_ms=T0)[0].alert_id
    assert alert_id is not None
    store.acknowledge(alert_id, by="x", now_ms=T0)
    assert seen == ["alert.raised", "incident.opened", "alert.acknowledged"]


def test_batch_keeps_engine_order_per_key(store_target: str | Path) -> None:
    store = make_store(store_target)
    store.apply([alarm("d1", severity=Severity.WARNING)], now_ms=T0)
    # In one group commit: the condition cleared, then came back as fire.  The alert must end active.
    store.apply(
        [alarm("d1", transition="cleared", severity=Severity.WARNING), alarm("d1", severity=Severity.FIRE)],
        now_ms=T0 + 1000,
    )
    (alert,) = store.list_alerts()
    assert alert.condition == "active" and alert.severity.label == "fire"


def test_prune_keeps_pending_and_recent_sms(store_target: str | Path) -> None:
    store = make_store(store_target)
    store.apply([alarm("d1")], now_ms=T0)
    rows = store.outbox()
    for row in rows:
        store.mark_done(row.id, state="sent", now_ms=T0 + 1)
    store.apply([alarm("d2", building="yg02")], now_ms=T0 + 2)  # still pending: never pruned
    pruned = store.prune_outbox(before_ms=T0 + 86_400_000)  # one day later: webhooks go, SMS stay (budget)
    assert pruned == len([r for r in rows if r.channel != "sms"])
    assert {r.channel for r in store.outbox(state="sent")} == {"sms"}
    assert store.prune_outbox(before_ms=T0 + 3 * 86_400_000) == len([r for r in rows if r.channel == "sms"])
    assert store.outbox(state="pending")


def test_new_fire_overtakes_followers_of_a_known_incident(store_target: str | Path) -> None:
    store = make_store(store_target)
    store.apply([alarm(f"yg01-sd-{i}") for i in range(200)], now_ms=T0)  # one smoky stairwell
    store.apply([alarm("yg02-sd-1", building="yg02")], now_ms=T0 + 10)  # a second building starts burning
    first = store.due(now_ms=T0 + 10, limit=4, channel="webhook")
    # The news of both incidents (first raise, incident.opened) lead the queue, ahead of 199 followers.
    assert [(item.incident_id, item.event) for item in first] == [
        (1, "alert.raised"),
        (1, "incident.opened"),
        (2, "alert.raised"),
        (2, "incident.opened"),
    ]
