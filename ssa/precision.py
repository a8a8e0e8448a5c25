"""Numeric precision and compilation of the networks: the `--precision` / `--compile` checks.

`precision` is one of `PRECISIONS`: `"fp32"` (the default, exact: nothing is cast), `"bf16"` or
`"fp16"` (the networks' matrix work under `torch.autocast` in that dtype, or the model cast to
it). Thresholds and post-processing always run in float32: callers cast network outputs back
with `.float()` before any decision.

Support per device (`check_precision`, `check_compile`, pure functions of what the device
offers, so the rule is tested without one):
- CPU: fp32 and bf16 (CPU autocast has bf16); fp16 is refused.
- CUDA: fp32, fp16, and bf16 where the GPU has it (`torch.cuda.is_bf16_supported()`).
- `compile=True` needs the compiler inductor builds with: a C++ compiler on the CPU
  (`$CXX`, else `g++`, as `torch._inductor.config.cpp.cxx`), Triton and a C compiler on CUDA.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, Literal

from ssa.errors import SSAError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


def torch_dtype(precision: str) -> Any:
    """`torch.float32` / `torch.bfloat16` / `torch.float16` for a precision name."""
    import torch

    check_name(precision)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def check_name(precision: Any) -> None:
    if precision not in PRECISIONS:
        raise SSAError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")


def check_precision(precision: str, device_type: str, bf16_supported: bool = True) -> None:
    """Refuse (one SSAError line) a precision the device cannot run. device_type: `"cpu"`,
    `"cuda"`, ...; bf16_supported: `torch.cuda.is_bf16_supported()` on CUDA."""
    check_name(precision)
    if precision == "fp32":
        return
    if device_type == "cpu" and precision == "fp16":
        raise SSAError("--precision fp16 needs a CUDA device (CPU autocast has no fp16); "
                       "pass --precision bf16 or fp32 on the CPU")
    if device_type == "cuda" and precision == "bf16" and not bf16_supported:
        raise SSAError("--precision bf16: this GPU has no bfloat16 support; "
                       "pass --precision fp16 or fp32")
    if device_type not in ("cpu", "cuda"):
        raise SSAError(f"--precision {precision} is supported on cpu and cuda devices, not "
                       f"{device_type}; pass --precision fp32")


def cpp_compiler() -> str:
    """The C++ compiler inductor builds CPU kernels with (`$CXX`, else `g++`)."""
    return os.environ.get("CXX", "g++")


def check_compile(device_type: str, have_cxx: bool, have_triton: bool = True,
                  have_cc: bool = True) -> None:
    """Refuse `--compile` (one SSAError line) where inductor cannot build kernels: the CPU
    without a C++ compiler, CUDA without Triton or a C compiler."""
    if device_type == "cpu" and not have_cxx:
        raise SSAError(f"--compile on the CPU needs a C++ compiler ({cpp_compiler()} not found "
                       f"on PATH); install one (e.g. g++) or leave --compile off")
    if device_type == "cuda" and not (have_triton and have_cc):
        what = "Triton" if not have_triton else "a C compiler (gcc, cc or $CC)"
        raise SSAError(f"--compile on CUDA needs {what}, which is missing here; install it or "
                       f"leave --compile off")
    if device_type not in ("cpu", "cuda"):
        raise SSAError(f"--compile is supported on cpu and cuda devices, not {device_type}; "
                       f"leave --compile off")


def check_device(precision: str, compile: bool, device: Any) -> None:
    """`check_precision` and `check_compile` for a real device (`torch.device` or a string),
    reading what it offers. fp32 without compile asks nothing of the device (nor imports torch,
    so a CPU run plans without it)."""
    if precision == "fp32" and not compile:
        return
    import torch

    device_type = torch.device(device).type
    bf16 = True
    if device_type == "cuda" and precision == "bf16":
        bf16 = bool(torch.cuda.is_bf16_supported())
    check_precision(precision, device_type, bf16)
    if compile:
        import importlib.util

        triton = importlib.util.find_spec("triton") is not None
        cc = any(shutil.which(c) for c in (os.environ.get("CC", "gcc"), "cc", "clang"))
        check_compile(device_type, shutil.which(cpp_compiler()) is not None, triton, cc)


def autocast(device: Any, precision: str) -> Any:
    """A context: `torch.autocast` in the precision's dtype on the device, or disabled for
    fp32 (so fp32 is exact even inside an outer autocast region)."""
    import torch

    device_type = torch.device(device).type
    if precision == "fp32":
        if device_type in ("cpu", "cuda"):
            return torch.autocast(device_type, enabled=False)
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch_dtype(precision))
