"""keep_freed_memory: a freed large block stays in the heap (glibc), and SSA_KEEP_HEAP=0 keeps
glibc's default of unmapping it. Each case runs in its own process (mallopt is process-wide)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

SCRIPT = """
import sys
from ssa.run.heap import keep_freed_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

applied = keep_freed_memory()
block = bytearray(256 * 2**20)  # zero-filled: every page touched
before = rss_mb()
del block
print(applied, round(before - rss_mb()))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt")
@pytest.mark.parametrize("keep", ["1", "0"])
def test_freed_block_stays_mapped(keep: str) -> None:
    env = dict(os.environ, SSA_KEEP_HEAP=keep)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    applied, released_mb = out[0] == "True", int(out[1])
    if keep == "1":
        assert applied and released_mb < 16  # still mapped, ready for the next tensor
    else:
        assert not applied and released_mb >= 240  # glibc's default: unmapped on free
