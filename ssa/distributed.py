"""Ranks, exact sharding, the process group and its few collectives, and `--world-size N`.

A run is one process (no process group), N workers that `ssa run --world-size N` starts with
torch's own elastic launcher (`launch`, what `torchrun --standalone` does), or workers that
`torchrun` started (single node or rendezvous across machines). Every worker reads its place
from the environment torchrun defines (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
and runs the same code.

Collectives run only before and after the image loop, never inside it: ranks finish their
shares at different times, and a collective per image would make every rank wait for the
slowest. Long waits (a checkpoint download, the end of the slowest share) poll a counter on the
process group's key-value store instead of blocking in a collective, so no collective timeout
applies to them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from typing_extensions import Self

from ssa.errors import SSAError

T = TypeVar("T")
G = TypeVar("G", bound="Group")

_POLL_S = 0.2


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


def sum_over_ranks(tensor: Any, group: Any = None) -> Any:
    """A tensor summed over the ranks of torch.distributed's process group (`group`, default
    the default one), returned on the tensor's own device; the tensor itself when no group is
    initialised. Every rank must call it. nccl sums on this rank's current GPU, gloo on the CPU.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    work = tensor.to(device).clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM, group=group)
    return work.to(tensor.device)


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
        return sum_over_ranks(tensor) if self.info.distributed else tensor

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


def max_workers(device: str) -> int:
    """The most workers one machine runs: one per GPU on CUDA, one per usable core on the CPU."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.device_count()
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_world_size(device: str, workers: int) -> None:
    """Refuse `--world-size` below 1, or above what this machine runs (`max_workers`)."""
    if workers < 1:
        raise SSAError(f"--world-size {workers} must be at least 1")
    cap = max_workers(device)
    if workers > cap:
        what = f"{cap} GPUs" if device.startswith("cuda") else f"{cap} CPU cores"
        other = " (or --device cpu)" if device.startswith("cuda") else ""
        raise SSAError(
            f"--world-size {workers} needs one {'GPU' if other else 'core'} per worker but this "
            f"machine has {what}; pass --world-size {max(cap, 1)}{other}"
        )


# Exit code of a worker that has printed its own one-line error (the launcher adds nothing).
REPORTED_EXIT = 3
_WATCH_S = 0.05  # how often a worker checks that its launcher is alive
LOGS_PREFIX = "ssa-elastic-"  # the launcher's temporary folder: ssa-elastic-<launcher pid>-<random>


def _watch_parent(launcher_pid: int, logs_dir: str) -> None:
    """End this worker (SIGKILL) within `_WATCH_S` of its launcher's death, removing the
    launcher's temporary folder first: a worker left alone would write on unsupervised, and a
    SIGKILLed launcher can neither stop its workers nor remove its folder."""
    import shutil
    import threading

    def watch() -> None:
        while os.getppid() == launcher_pid:
            time.sleep(_WATCH_S)
        shutil.rmtree(logs_dir, ignore_errors=True)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="ssa-parent-watch", daemon=True).start()


def _worker_entry(launcher_pid: int, logs_dir: str, fn: Callable[..., int], args: tuple) -> int:
    """What torch's elastic agent runs in each worker (module level, so it pickles by name)."""
    # SIGINT (Ctrl-C reaches the whole process group; the agent forwards it) ends a worker at
    # once, as SIGTERM does, instead of unwinding a KeyboardInterrupt through torch for a second
    # or more: outputs are written atomically, so a worker loses only its in-flight image.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _watch_parent(launcher_pid, logs_dir)
    code = fn(*args)
    if code == REPORTED_EXIT:  # exit, not return: the agent then stops the other workers
        raise SystemExit(code)
    return code


# A separate small process removes the launcher's folder when the launcher dies, whatever kills
# it (SIGKILL included): the launcher cannot, and its workers die at once (torch sets their
# parent-death signal) without running Python.
_JANITOR = """
import os, shutil, sys, time
launcher, folder = int(sys.argv[1]), sys.argv[2]
while os.getppid() == launcher:
    time.sleep(0.05)
shutil.rmtree(folder, ignore_errors=True)
"""


def _start_janitor(folder: str) -> Any:
    """The process that removes `folder` once this process is gone (own session: a Ctrl-C or a
    kill of the launcher's process group does not reach it); None where it cannot start."""
    import subprocess
    import sys

    try:
        return subprocess.Popen(
            [sys.executable, "-S", "-c", _JANITOR, str(os.getpid()), folder],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:  # the next launch removes the folder (`remove_stale_logs`)
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_logs(tmp_dir: str | None = None) -> int:
    """Remove the temporary folders (`ssa-elastic-<pid>-*`) of launchers that are gone (killed
    with SIGKILL, their workers too), this user's only; returns how many."""
    import shutil
    import tempfile
    from pathlib import Path

    removed = 0
    root = Path(tmp_dir or tempfile.gettempdir())
    try:
        entries = list(root.glob(LOGS_PREFIX + "*"))
    except OSError:
        return 0
    for entry in entries:
        pid = entry.name[len(LOGS_PREFIX):].split("-", 1)[0]
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not pid.isdigit() or info.st_uid != os.getuid() or entry.is_symlink():
            continue
        if not entry.is_dir() or _pid_alive(int(pid)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def _describe(failure: Any) -> str:
    if failure.exitcode < 0:
        return f"killed by {failure.signal_name()}"
    message = failure.error_file_data.get("message")
    if isinstance(message, dict) and message.get("message"):  # an exception: a bug, not input
        return f"exit code {failure.exitcode}, {message['message'].splitlines()[0]}"
    return f"exit code {failure.exitcode}"


def _print_traceback(failure: Any) -> None:
    """A worker's unexpected exception (a bug, not bad input) keeps its traceback: torch's
    agent recorded it in the worker's error file instead of printing it."""
    import sys

    message = failure.error_file_data.get("message")
    if isinstance(message, dict):
        stack = message.get("extraInfo", {}).get("py_callstack")
        if stack:
            sys.stderr.write(stack if stack.endswith("\n") else stack + "\n")


def launch(
    world_size: int,
    fn: Callable[..., int],
    args: tuple = (),
    log: Callable[[str], None] | None = None,
) -> int:
    """Run `fn(*args)` in `world_size` workers on this machine under torch's elastic launcher
    (`torch.distributed.launcher.api.elastic_launch`, what `torchrun --standalone` runs).

    fn: a module-level function (it is pickled by name into spawned workers, which import the
    same `ssa` as this process); it returns the worker's exit code. The workers find their
    place in the environment torchrun defines (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT), and torch supervises them: when one dies the others are stopped (each loses
    only its in-flight image; a rerun completes the set), and SIGTERM/SIGINT to the launcher
    stops them all. A SIGKILLed launcher cannot, so each worker ends itself at once (torch's
    parent-death signal, else `_watch_parent`). The agent's temporary folder
    (`ssa-elastic-<pid>-*`) is removed on every exit: by this function, by a janitor process
    when this one is SIGKILLed, else by the next launch.
    Returns the command's exit code: rank 0's return value, 1 when a worker died (`log` says
    which), 128 + signal when the launcher was stopped by one.
    """
    import logging
    import tempfile
    import uuid

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent's per-run folder (workers' error files) goes when the run ends, not into /tmp
    # for good as torchrun's does: on any exit of this process (finally below), with the
    # workers when this process is SIGKILLed (`_watch_parent`), else at the next launch.
    remove_stale_logs()
    logs = tempfile.TemporaryDirectory(prefix=f"{LOGS_PREFIX}{os.getpid()}-")
    janitor = _start_janitor(logs.name)
    config = LaunchConfig(
        logs_specs=DefaultLogsSpecs(log_dir=logs.name),
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=world_size,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",  # as torchrun --standalone: a store on a free local port
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,  # an image that kills a worker would kill it again
        start_method="spawn",
        shutdown_timeout=5,
    )
    # N workers share the cores (torchrun sets 1 thread each; the post-processing uses more).
    threads = str(max(1, (os.cpu_count() or 1) // world_size))
    saved_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    # The agent's INFO/WARNING/ERROR lines ("Terminating process ... via signal SIGTERM", the
    # failure table): the launcher says what happened in one line instead.
    loggers = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
    saved_levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        returns = elastic_launch(config, _worker_entry)(os.getpid(), logs.name, fn, args)
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())
        unreported = [(rank, f) for rank, f in failures if f.exitcode != REPORTED_EXIT]
        for _, failure in unreported:
            _print_traceback(failure)
        if unreported and log is not None:
            what = ", ".join(f"rank {rank} {_describe(f)}" for rank, f in unreported)
            log(
                f"worker died ({what}); the others were stopped and the outputs written so far "
                f"stand: rerun the same command to label the rest"
            )
        return 1
    except SignalException as exc:
        if log is not None:
            log(f"stopped by {exc.sigval.name}; rerun the same command to label the rest")
        return 128 + int(exc.sigval)
    finally:
        for logger, level in zip(loggers, saved_levels):
            logger.setLevel(level)
        logs.cleanup()
        if janitor is not None:
            janitor.kill()
            janitor.wait()
        if saved_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return int(returns.get(0) or 0)
