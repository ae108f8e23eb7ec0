"""Replay protection: a copy of a sample is a duplicate; a rebooted device reusing its seq is not."""

from __future__ import annotations

from gateway.ingest.dedup import Dedup


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


def test_values_that_python_hashes_alike_are_not_duplicates() -> None:
    # hash(-1.0) == hash(-2.0) and hash(1) == hash(1.0) == hash(True) in CPython: the key must tell them apart.
    dedup = Dedup(window_ms=600_000)
    assert not dedup.seen("hd-1", 3, {"celsius": -1.0}, now_ms=1_000)
    assert not dedup.seen("hd-1", 3, {"celsius": -2.0}, now_ms=2_000)
    assert not dedup.seen("sd-1", 3, {"alarm": True}, now_ms=1_000)
    assert not dedup.seen("sd-1", 3, {"alarm": 1}, now_ms=2_000)
    assert not dedup.seen("sd-1", 3, {"obscuration": 0.5, "battery": 80.0}, now_ms=3_000)
    assert not dedup.seen("sd-1", 3, {"battery": 0.5, "obscuration": 80.0}, now_ms=4_000)
    assert dedup.seen("hd-1", 3, {"celsius": -2.0}, now_ms=5_000)


def test_a_full_window_costs_under_a_hundred_and_twenty_bytes_per_sample() -> None:
    """The window holds rate x replay_window_s samples (300,000 at 500/s): its entry size is the gateway's memory."""
    import tracemalloc

    dedup = Dedup(window_ms=600_000)
    values = [{"obscuration": i / 1000, "battery": 87.0, "rssi": -71.0, "alarm": False} for i in range(20_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, sample in enumerate(values):
            dedup.seen(f"sd-{i % 200}", i // 200, sample, now_ms=i)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / len(values)
    finally:
        tracemalloc.stop()
    assert len(dedup) == len(values)
    assert per_entry < 120, f"{per_entry:.0f} bytes per remembered sample"  # a dict per generation: 60-80
