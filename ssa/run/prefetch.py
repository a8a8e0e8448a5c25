"""Reading and writing overlapped with compute: a prefetch thread reads the next images while
the current one is labelled, and one background writer writes the finished ones.

Results come back in input order, each once its files are written, so "done" still means "its
JSON exists". A generator can only hand a result over between two images, so `on_result` is also
called the moment each result is final (from the writer thread for written images): progress
counts an image when its JSON is written, not when the next image is labelled. Every step goes
through `ssa.run.labeller.guarded`, as in `labeller.process_image`:
a read, label or write failure is that image's failure.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ssa.errors import FatalError
from ssa.run.labeller import ImageLabeller, guarded
from ssa.run.outputs import ImageResult, output_paths, write_inside

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


def process_overlapped(
    labeller: ImageLabeller, root: Path, rels: list[Path], out_dir: Path,
    on_result: Callable[[ImageResult], None] | None = None,
) -> Iterator[ImageResult]:
    """`labeller.process_image` over `rels` with reads and writes in background threads.

    Yields one `ImageResult` per image, in order, once it is written (or has failed); the same
    result goes to `on_result` as soon as it is final (the writer thread calls it for written
    images, so it must be thread-safe).
    """
    from ssa import io

    pending: deque[tuple[Path, float, Future | None, ImageResult | None]] = deque()
    filters: dict[Path, Any] = {}  # the mask generator's counters of each image in flight

    def settle(rel: Path, start: float, future: Future, filters: Any = None) -> ImageResult:
        num_masks, result = guarded(rel, start, "write", future.result)
        if result is None:
            result = ImageResult(rel, "done", num_masks=num_masks,
                                 seconds=time.perf_counter() - start, filters=filters)
        return result

    def notify(rel: Path, start: float, filters: Any) -> Callable[[Future], None]:
        def done(future: Future) -> None:
            if on_result is None:
                return
            try:
                result = settle(rel, start, future, filters)
            except FatalError:  # raised again in the loop's thread, which stops the run
                return
            on_result(result)
        return done

    def finish(block: bool) -> Iterator[ImageResult]:
        while pending and (block or pending[0][2] is None or pending[0][2].done()
                           or len(pending) > MAX_PENDING_WRITES):
            rel, start, future, result = pending.popleft()
            yield settle(rel, start, future, filters.pop(rel, None)) if result is None else result

    with ThreadPoolExecutor(1, thread_name_prefix="ssa-write") as writer:
        for rel, read in prefetch(rels, lambda r: io.read_image(Path(root) / r)):
            start = time.perf_counter()
            image, failed = guarded(rel, start, "read", read.result)
            if failed is None:
                out, failed = guarded(rel, start, "label", labeller.label, image, rel)
            if failed is not None:
                pending.append((rel, start, None, failed))
                if on_result is not None:
                    on_result(failed)
            else:
                paths = output_paths(Path(out_dir), rel)
                future = writer.submit(write_inside, labeller.write, Path(out_dir), rel, out,
                                       paths, image)
                filters[rel] = out.get("filters") if isinstance(out, dict) else None
                future.add_done_callback(notify(rel, start, filters[rel]))
                pending.append((rel, start, future, None))
                del out, image, future
            yield from finish(block=False)
        yield from finish(block=True)
