"""Replay protection: a copy of a sample is a duplicate; a rebooted device reusing its seq is not."""

from __future__ import annotations

from gateway.dedup import Dedup


def test_the_same_sample_twice_is_a_duplicate() -> None:
    dedup = Dedup(window_ms=600_000)
    assert not dedup.seen("sd-1", 7, {"obscuration": 0.2}, now_ms=1_000)
    assert dedup.seen("sd-1", 7, {"obscuration": 0.2}, now_ms=2_000)
    assert not dedup.seen("sd-2", 7, {"obscuration": 0.2}, now_ms=2_000)  # another device


def test_a_rebooted_device_reusing_its_seq_is_not_a_duplicate() -> None:
    dedup = Dedup(window_ms=600_000)
    assert not dedup.seen("sd-1", 0, {"obscuration": 0.1}, now_ms=1_000)
    # power cut, reboot, counter restarts: the alarm must get through
    assert not dedup.seen("sd-1", 0, {"obscuration": 4.0, "alarm": True}, now_ms=60_000)


def test_the_window_expires() -> None:
    dedup = Dedup(window_ms=10_000)
    assert not dedup.seen("sd-1", 1, {"celsius": 20.0}, now_ms=0)
    assert dedup.seen("sd-1", 1, {"celsius": 20.0}, now_ms=10_000)
    assert not dedup.seen("sd-1", 1, {"celsius": 20.0}, now_ms=20_001)


def test_memory_is_bounded() -> None:
    dedup = Dedup(window_ms=600_000, max_entries=100)
    for seq in range(1_000):
        dedup.seen("sd-1", seq, {"obscuration": 0.1}, now_ms=seq)
    assert len(dedup) <= 100


def test_a_zero_window_turns_it_off() -> None:
    dedup = Dedup(window_ms=0)
    assert not dedup.seen("sd-1", 1, {}, now_ms=0)
    assert not dedup.seen("sd-1", 1, {}, now_ms=0)
