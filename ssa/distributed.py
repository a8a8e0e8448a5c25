"""Ranks, exact sharding, the process group and its few collectives, and `--world-size N`.

A run is one process (no process group), N workers that `ssa run --world-size N` starts itself
(`launch`), or workers that `torchrun` started (single node or rendezvous across machines). The
workers of the last two read their place from the environment torchrun defines (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and run the same code.

Collectives run only before and after the image loop, never inside it: ranks finish their
shares at different times, and a collective per image would make every rank wait for the
slowest. Long waits (a checkpoint download, the end of the slowest share) poll a counter on the
process group's key-value store instead of blocking in a collective, so no collective timeout
applies to them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from typing_extensions import Self

from ssa.errors import SSAError

T = TypeVar("T")
G = TypeVar("G", bound="Group")

ENV_WORKER_CONFIG = "SSA_WORKER_CONFIG"  # the run's config (JSON) that `launch` hands its workers
_POLL_S = 0.2
_GRACE_S = 10.0  # how long the launcher lets the other workers end on their own


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the run: rank 0..world_size-1, and its rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env: dict[str, str], key: str) -> int:
    raw = env[key]
    try:
        return int(raw)
    except ValueError:
        raise SSAError(f"environment variable {key}={raw!r} is not an integer; unset it") from None


def rank_info_from_env(env: dict[str, str] | None = None) -> RankInfo | None:
    """The RankInfo that torchrun (or `launch`) put in the environment; None when neither did."""
    env = dict(os.environ if env is None else env)
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    rank, world_size = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    local_rank = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise SSAError(
            f"RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank} do not describe a "
            f"worker (need 0 <= RANK < WORLD_SIZE); start workers with torchrun or --world-size"
        )
    return RankInfo(rank, world_size, local_rank)


def shard_indices(num_items: int, rank: int, world_size: int) -> range:
    """The indices rank `rank` takes of `num_items`: rank, rank + N, rank + 2N, ...

    Strided, so large and small items (neighbours in a sorted list often look alike) spread
    evenly; exact: the ranks' shares are disjoint, cover every index once, differ in length by
    at most one, and nothing is padded or repeated.
    """
    if world_size < 1:
        raise SSAError(f"world size {world_size} must be at least 1")
    if not 0 <= rank < world_size:
        raise SSAError(f"rank {rank} must be in 0..{world_size - 1}")
    return range(rank, num_items, world_size)


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The items of rank `rank`'s share (see `shard_indices`)."""
    return [items[i] for i in shard_indices(len(items), rank, world_size)]


def rank_device(device: str, info: RankInfo) -> str:
    """The device of this rank: plain `cuda` becomes `cuda:LOCAL_RANK` (one GPU per worker)."""
    if device != "cuda" or not info.distributed:
        return device
    import torch

    count = torch.cuda.device_count()
    if info.local_rank >= count:
        raise SSAError(
            f"worker LOCAL_RANK={info.local_rank} has no GPU (this machine shows {count}); "
            f"start at most {count} workers per machine"
        )
    return f"cuda:{info.local_rank}"


def check_gpus(device: str, workers: int) -> None:
    """Refuse more CUDA workers than this machine has GPUs (one GPU per worker)."""
    if device != "cuda":
        return
    import torch

    count = torch.cuda.device_count()
    if workers > count:
        raise SSAError(
            f"--world-size {workers} needs {workers} GPUs but this machine shows {count}; "
            f"pass --world-size {count} (or --device cpu)"
        )


class Group:
    """The run's process group (gloo on CPU, nccl on CUDA), or nothing for a single process.

    Every method is a cheap no-op (or the identity) when the run has one process.
    Use as a context manager: the group is created on entry and destroyed on exit.
    """

    def __init__(self, info: RankInfo | None = None, device: str = "cpu") -> None:
        self.info = info or RankInfo()
        self.device = device
        self._store: Any = None
        self._counters: dict[str, int] = {}

    def __enter__(self) -> Self:
        if not self.info.distributed:
            return self
        import torch
        import torch.distributed as dist

        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(torch.device(self.device))
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise SSAError(
                    f"{key} is not set for worker rank {self.info.rank}; start workers with "
                    f"torchrun or ssa run --world-size N"
                )
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            init_method="env://",
            rank=self.info.rank,
            world_size=self.info.world_size,
            # The collectives wait for the slowest rank's start-up (listing, clean-up, checks).
            timeout=timedelta(minutes=60),
        )
        try:
            from torch.distributed.distributed_c10d import _get_default_store

            self._store = _get_default_store()
        except (ImportError, RuntimeError):  # counters then fall back to collectives
            self._store = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.info.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    # Collectives: before and after the image loop only.

    def barrier(self) -> None:
        if self.info.distributed:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_sum(self, tensor: Any) -> Any:
        """Sum a tensor (any shape, a summable dtype) over the ranks; returned on its own device.

        State that ranks combine this way (counts, confusion matrices) must be a plain sum.
        """
        if not self.info.distributed:
            return tensor
        import torch.distributed as dist

        work = tensor.to(self.device).clone()
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work.to(tensor.device)

    def all_reduce_sum_many(self, tensors: Sequence[Any]) -> list[Any]:
        """Sum several tensors (same dtype, any shapes) over the ranks with one all-reduce:
        flattened into one buffer, summed, split back into their shapes."""
        import torch

        if not self.info.distributed or not tensors:
            return list(tensors)
        flat = torch.cat([t.reshape(-1) for t in tensors])
        summed = self.all_reduce_sum(flat)
        out, start = [], 0
        for t in tensors:
            out.append(summed[start : start + t.numel()].reshape(t.shape))
            start += t.numel()
        return out

    def all_gather_object(self, obj: T) -> list[T]:
        """Every rank's (picklable, small) object, in rank order, on every rank."""
        if not self.info.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(out, obj)
        return out

    # Store counters: not collectives; a rank adds without waiting for the others.

    def add(self, key: str, amount: int = 1) -> int:
        """Add to a run-wide counter and return its new value (local when there is no store)."""
        if self._store is None:
            self._counters[key] = self._counters.get(key, 0) + amount
            return self._counters[key]
        return int(self._store.add(f"ssa/{key}", amount))

    def count(self, key: str) -> int:
        return self.add(key, 0)

    def wait_all(self, key: str) -> None:
        """Wait, without a timeout, until every rank has called `wait_all(key)`.

        For waits of unknown length (a download, the slowest share): a dead rank never arrives,
        and then torchrun (or `launch`) ends the others.
        """
        if not self.info.distributed:
            return
        if self._store is None:
            self.barrier()
            return
        self.add(f"wait/{key}")
        while self.count(f"wait/{key}") < self.info.world_size:
            time.sleep(_POLL_S)


def free_port() -> int:
    """A TCP port that is free on this machine now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_to_json(cfg: Any) -> str:
    """A RunConfig as JSON (paths as strings), for `config_from_json` in a worker."""
    values = dataclasses.asdict(cfg)
    return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in values.items()})


def config_from_json(text: str) -> Any:
    from ssa.config import build_config

    return build_config({}, json.loads(text))


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def launch(world_size: int, cfg: Any, log: Any = None, command: str = "_worker") -> int:
    """Start `world_size` workers on this machine (`python -m ssa <command>`, `_worker` for
    `ssa run`, `_engine_worker` for `ssa engine`) and supervise them.

    The workers see the environment torchrun would give them (RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT on a free port) and the config in SSA_WORKER_CONFIG. Like torchrun,
    when one worker dies the others are stopped (each loses only its in-flight image; a rerun
    completes the set). Returns the exit code for the command: rank 0's (non-zero when any
    image failed), or 1 when a worker died. `log(message)` reports a dead worker.
    """
    if world_size < 1:
        raise SSAError(f"--world-size {world_size} must be at least 1")
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        GROUP_RANK="0",
        **{ENV_WORKER_CONFIG: config_to_json(cfg)},
    )
    # N workers share the CPU cores (torchrun sets 1 thread; the post-processing here uses more).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world_size)))
    procs: list[subprocess.Popen] = []
    for rank in range(world_size):
        worker_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen([sys.executable, "-m", "ssa", command], env=worker_env))

    def stop(signum: int, frame: Any) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return _supervise(procs, log)
    except KeyboardInterrupt:  # the terminal sent SIGINT to the workers too
        _stop_all(procs)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_all(procs)


def _supervise(procs: list[subprocess.Popen], log: Any) -> int:
    while True:
        codes = [proc.poll() for proc in procs]
        if all(code is not None for code in codes):
            return _exit_code(codes, log)
        if any(code not in (None, 0) for code in codes):
            if codes[0] == 1 and all(code in (None, 0) for code in codes[1:]):
                # Rank 0 exits 1 at the very end when images failed, after the others have
                # passed the last collective: give them time to end on their own.
                deadline = time.monotonic() + _GRACE_S
                while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                    time.sleep(_POLL_S)
            stopped = [rank for rank, p in enumerate(procs) if p.poll() is None]
            _stop_all(procs)
            codes = [proc.poll() for proc in procs]
            return _exit_code(codes, log, stopped)
        time.sleep(_POLL_S)


def _exit_code(codes: list[int | None], log: Any, stopped: Sequence[int] = ()) -> int:
    dead = [
        (rank, code) for rank, code in enumerate(codes)
        if rank not in stopped and code not in (0, None) and not (rank == 0 and code == 1)
    ]
    if not dead and not stopped:
        return int(codes[0] or 0)
    if log is not None:
        what = ", ".join(f"rank {rank} {_describe_exit(int(code))}" for rank, code in dead)
        if stopped:
            what += ("; " if what else "") + "stopped " + ", ".join(f"rank {r}" for r in stopped)
        log(
            f"worker died ({what}); the outputs written so far stand: rerun the same command "
            f"to label the rest"
        )
    return 1


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 5.0
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
