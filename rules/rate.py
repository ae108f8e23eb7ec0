"""Rate of rise: the samples a ``rate`` rule keeps and the rise per minute it judges, robust to one bad sample."""

from __future__ import annotations

from array import array

from rules.compiled import CRule
from rules.state import RState
from rules.types import MetricValue

RATE_BUF_MAX = 32  # samples kept per rate-of-rise window


def rise_per_minute(cr: CRule, st: RState, value: MetricValue, ts: int) -> float | None:
    """Rise per minute over the window, robust to one bad sample: median of the first three samples against the
    median of the last three.  None while the window holds too few samples or spans too little time."""
    buf = st.buf
    if buf is None:
        buf = st.buf = array("d")
    assert not isinstance(value, str)
    buf.append(float(ts))
    buf.append(float(value))
    cutoff = ts - cr.window_ms
    drop = 0
    n = len(buf)
    while drop < n and buf[drop] < cutoff:
        drop += 2
    if len(buf) - drop > 2 * RATE_BUF_MAX:
        drop = len(buf) - 2 * RATE_BUF_MAX
    if drop:
        del buf[:drop]
    count = len(buf) // 2
    if count < cr.min_samples:
        return None
    t0 = _median3(buf[0], buf[2], buf[4])
    v0 = _median3(buf[1], buf[3], buf[5])
    t1 = _median3(buf[-6], buf[-4], buf[-2])
    v1 = _median3(buf[-5], buf[-3], buf[-1])
    span = t1 - t0
    if span < cr.window_ms / 4:
        return None  # too little time between the ends to call it a rate (a gap or a burst)
    return (v1 - v0) * 60_000.0 / span


def _median3(a: float, b: float, c: float) -> float:
    if a > b:
        a, b = b, a
    if b > c:
        b = c
    return a if a > b else b
