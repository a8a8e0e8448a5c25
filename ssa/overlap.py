"""Reading and writing overlapped with compute: a prefetch thread reads the next images while
the current one is labelled, and one background writer writes the finished ones.

Results come back in input order, each once its files are written, so "done" still means "its
JSON exists". A read or write failure is that image's failure, as in `pipeline.process_image`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ssa.errors import FatalError

# Images read ahead and writes in flight: each holds an image and its masks in memory.
PREFETCH = 2
MAX_PENDING_WRITES = 2


def prefetch(items: list[Any], read: Callable[[Any], Any], depth: int = PREFETCH) -> Iterator:
    """Yield `(item, future)` in order, with up to `depth` reads running ahead in a thread."""
    with ThreadPoolExecutor(1, thread_name_prefix="ssa-read") as pool:
        ahead: deque = deque()
        it = iter(items)
        for item in it:
            ahead.append((item, pool.submit(read, item)))
            if len(ahead) > depth:
                yield ahead.popleft()
        while ahead:
            yield ahead.popleft()


def process_overlapped(labeller: Any, root: Path, rels: list[Path], out_dir: Path, cfg: Any):
    """`pipeline.process_image` over `rels` with reads and writes in background threads.

    Yields one `ImageResult` per image, in order, once it is written (or has failed).
    """
    from ssa import io
    from ssa.pipeline import ImageResult, failure_message, output_paths

    pending: deque[tuple[Path, float, Future | None, ImageResult | None]] = deque()

    def finish(block: bool) -> Iterator[ImageResult]:
        while pending and (block or pending[0][2] is None or pending[0][2].done()
                           or len(pending) > MAX_PENDING_WRITES):
            rel, start, future, result = pending.popleft()
            if result is None:
                try:
                    num_masks = future.result()
                    result = ImageResult(rel, "done", num_masks=num_masks)
                except FatalError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one image never stops the run
                    result = ImageResult(rel, "failed", stage="write", error=failure_message(exc))
                result.seconds = time.perf_counter() - start
            yield result

    def write(out: dict[str, Any], paths: dict[str, Path], image: Any) -> int:
        labeller.write(out, paths, image, cfg.save_branch, cfg.save_vis)
        return len(out["records"])

    with ThreadPoolExecutor(1, thread_name_prefix="ssa-write") as writer:
        for rel, read in prefetch(rels, lambda r: io.read_image(root / r)):
            start = time.perf_counter()
            stage = "read"
            try:
                image = read.result()
                stage = "label"
                out = labeller.label(image, rel)
            except FatalError:
                raise  # a run-wide problem (as in pipeline.process_image), not this image's
            except Exception as exc:  # noqa: BLE001 - one image never stops the run
                failed = ImageResult(rel, "failed", stage=stage, error=failure_message(exc),
                                     seconds=time.perf_counter() - start)
                pending.append((rel, start, None, failed))
            else:
                future = writer.submit(write, out, output_paths(out_dir, rel), image)
                pending.append((rel, start, future, None))
                del out, image
            yield from finish(block=False)
        yield from finish(block=True)
