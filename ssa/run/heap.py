"""Keep freed memory in the process heap for the next tensors (glibc only).

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh `mmap` and
unmaps it on free, so every large CPU tensor is faulted in again page by page, each page zeroed
by the kernel: a mask-decoder batch's per-prompt image side (256 MB per tensor, a dozen per
batch), an image's mask stack (2.5 GB for 768 masks on 2200x1467), the encoder's activations.
What that costs the mask decoder and the encoder is measured in BENCHMARKS.md. `keep_freed_memory()` sets `M_MMAP_MAX=0` (large blocks come
from the heap) and `M_TRIM_THRESHOLD` to 2 GB (freed memory stays mapped and is reused), as
`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647` would at start-up. The process's RSS
then stays near the peak of the run instead of falling between images.

A process-wide choice, so the library never makes it: the `ssa run` and `ssa engine` commands
opt in (each process, before loading models; `SSA_KEEP_HEAP=0` turns it off); a Python caller of
`ssa.run.runner.run_rank` may call it too. A no-op on other C libraries.
"""

from __future__ import annotations

import os
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the glibc settings above once per process; returns whether they are in force."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("SSA_KEEP_HEAP", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # mallopt returns 1 on success.
    _applied = bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(mallopt(_M_MMAP_MAX, 0))
    return _applied
