"""The gateway fixes glibc's mmap threshold at start-up (see gateway.service.service._pin_mmap_threshold)."""

from __future__ import annotations

import platform
import sys

import pytest

from gateway.service.service import _pin_mmap_threshold


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_mmap_threshold_is_pinned_on_glibc() -> None:
    assert _pin_mmap_threshold() is True
