"""Fixtures for fault tests: small real filesystems that fill up or refuse writes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(size="64k", read_only=False) -> Path``: a fresh tmpfs mount, unmounted afterwards.

    A real full / read-only filesystem rather than a mocked write, because these machines run as root
    and root ignores permissions. Skips when mounting is not permitted (not root, no CAP_SYS_ADMIN):
    the in-process tests in test_partial_runs.py inject the same faults by monkeypatching instead.
    """
    mounts: list[Path] = []

    def make(size: str = "64k", read_only: bool = False) -> Path:
        mnt = tmp_path / f"mnt{len(mounts)}"
        mnt.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()}); faults are injected in-process instead")
        mounts.append(mnt)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, timeout=30)
        return mnt

    yield make
    for mnt in reversed(mounts):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)
