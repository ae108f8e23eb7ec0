"""A flood of garbage must not slow down the alarm behind it.

Rejections are recorded on the event loop, inside the batch that also carries the next fire alarm.  The per-device
"log at most once a minute" bookkeeping must therefore stay O(1) per rejection and bounded in memory, whatever the
flood looks like: here 120,000 distinct bad topics within one minute (a client without an ACL, or devices with
random ids while ``allow_unregistered`` is on).  Before the fix, every rejection past the 100,000th rebuilt the
whole table (about 40 ms each on this machine), so 20,000 more took about 13 minutes and held up every alarm behind
them; this test then fails on its timeout.
"""

from __future__ import annotations

import logging

import pytest

from gateway.ingest.contract import Reason, Rejected
from gateway.ingest.rejections import Rejections
from gateway.metrics import Metrics

pytestmark = pytest.mark.timeout(60)


def test_rejection_bookkeeping_is_bounded_under_a_flood_of_unique_topics(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="firegrid.rejections")  # 120k warnings are not the point here
    rejections = Rejections(metrics=Metrics())
    now = 1_800_000_000_000
    for i in range(120_000):
        rejections.record(Rejected(Reason.BAD_TOPIC, "x"), topic=f"firegrid/b{i}/bad.id/telemetry", now_ms=now)
    assert len(rejections._last_logged) <= 100_000  # bounded memory
    assert rejections.counts["bad_topic"] == 120_000  # every one still counted
    assert len(rejections.recent(1000)) == 1000  # and the latest 1000 kept
