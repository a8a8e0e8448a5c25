"""Image reading, COCO RLE, and atomic writers for JSON, PNG and overlays.

Every writer encodes its file in memory, writes it to a temporary name in the destination
folder (size checked, fsync'd) and renames it into place, then fsyncs the folder, so a file
either exists whole or not at all (an image is done exactly when its JSON exists), also on a
full disk, where Pillow's JPEG writer would not notice a short write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssa.errors import FatalError, SSAError

TMP_PREFIX = ".ssa-tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as `HWC uint8 RGB`, with its EXIF orientation applied.

    16-bit and float greyscale are scaled, not clipped (see `_to_rgb`); a multi-page file gives
    its first page. Raises SSAError naming the file when it is missing, empty, truncated or not an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img, path)
    except FileNotFoundError:
        raise SSAError(f"image {path} does not exist; check the path") from None
    except SSAError:
        raise
    except Image.DecompressionBombError as exc:  # one line, like any unreadable file
        raise SSAError(
            f"image {path} is too large to decode safely ({exc}); downsize it, or raise "
            f"PIL.Image.MAX_IMAGE_PIXELS in a plug-in if you trust the file"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SSAError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); replace or remove the file"
        ) from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise SSAError(f"image {path} is empty; replace or remove the file")
    return np.ascontiguousarray(rgb)


def _to_rgb(img: Any, path: Path) -> np.ndarray:
    """`HWC uint8 RGB` of an opened PIL image, scaling the modes that `convert("RGB")` clips.

    I;16* and I (16-bit greyscale, values 0..65535): divided by 257 and rounded, so 65535 is 255
    and 257 * k is k (a plain conversion clips every value above 255 to white). F (float
    greyscale): values in [0, 1] times 255, else values in [0, 255] as they are, rounded; other
    ranges, NaN or infinity are refused. Alpha (LA, PA, RGBA) is dropped; palette (P) images take
    their palette's colours; CMYK goes through Pillow's conversion. A multi-page file (TIFF, GIF)
    gives its first page.
    """
    mode = img.mode
    if mode.startswith("I"):
        grey = np.asarray(img, dtype=np.int64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise SSAError(
                f"image {path} is {mode} greyscale with values {grey.min()}..{grey.max()}, "
                f"outside 0..65535; save it as 8- or 16-bit"
            )
        grey = (grey * 2 + 257) // 514  # round(v / 257), exact in integers
    elif mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        if not np.isfinite(grey).all():
            raise SSAError(f"image {path} (float greyscale) holds NaN or infinity; fix the file")
        low, high = (float(grey.min()), float(grey.max())) if grey.size else (0.0, 0.0)
        if low < 0 or high > 255:
            raise SSAError(
                f"image {path} is float greyscale with values {low:g}..{high:g}, outside "
                f"[0, 1] and [0, 255]; save it as 8-bit or scale it to [0, 1]"
            )
        grey = np.rint(grey * 255 if high <= 1 else grey)
    else:
        return np.asarray(img.convert("RGB"))
    return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)


def encode_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLE (`counts` as str) of each mask in an `(N, H, W)` bool array."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """An `(H, W)` bool mask from a COCO RLE dict (`counts` str, bytes or an uncompressed list)."""
    from pycocotools import mask as mask_utils

    rle = dict(rle)
    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    elif isinstance(rle.get("counts"), str):
        rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


# Characters per count of a compressed RLE: 6 hold 30 bits (runs below 2^29 pixels), where
# pycocotools' `rleFrString` still computes exactly (its shifts are 32-bit ints).
_MAX_COUNT_CHARS = 6


def rle_runs(counts: str, where: str, fix: str = "fix the file") -> np.ndarray:
    """`(n,) int64`: the run lengths of a compressed COCO RLE string, as pycocotools'
    `rleFrString` decodes it, vectorised (a 30 MP mask's string in microseconds).

    Each count is 5-bit groups in characters 48..111, bit 0x20 meaning "more follows" and 0x10
    of the last group the sign; from the third count on, a count is stored as its difference
    from the count two before it. A count longer than `_MAX_COUNT_CHARS` characters is refused.
    """
    try:
        codes = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        raise SSAError(f"{where}: RLE counts are not ASCII; {fix}") from None
    if codes.size == 0:
        return codes
    bad = (codes < 0) | (codes >= 64)
    if bad.any():
        char = counts[int(np.argmax(bad))]
        raise SSAError(f"{where}: RLE counts holds {char!r}, not a COCO RLE character; {fix}")
    last = (codes & 0x20) == 0  # a count ends at this character
    if not last[-1]:
        raise SSAError(f"{where}: RLE counts string ends inside a number; {fix}")
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    group = np.cumsum(np.concatenate([[0], last[:-1]]))
    position = np.arange(codes.size) - starts[group]
    if int(position.max()) >= _MAX_COUNT_CHARS:
        raise SSAError(f"{where}: RLE counts hold a run of 2^29 pixels or more; {fix}")
    x = np.add.reduceat((codes & 0x1F) << (5 * position), starts)  # disjoint bits: a sum is OR
    ends = np.flatnonzero(last)
    negative = (codes[ends] & 0x10) != 0
    x[negative] |= np.left_shift(np.int64(-1), 5 * (position[ends[negative]] + 1))
    out = x.copy()
    out[1::2] = np.cumsum(x[1::2])  # count i >= 3 adds count i - 2: cumulative sums by parity
    out[2::2] = np.cumsum(x[2::2])
    return out


def check_rle(rle: Any, where: str, fix: str | None = None) -> None:
    """Refuse a COCO RLE that would not decode into exactly its `size`: `size` must be two
    non-negative integers `[H, W]`, `counts` (a list of ints or a compressed str/bytes) must hold
    non-negative runs summing to H x W. pycocotools decodes a short RLE into uninitialised memory
    (a different mask on every run), so every RLE read from a user's file goes through here.

    where: what names the RLE in the message, e.g. "masks file a.json: annotation 3"; fix: the
    message's advice (default: fix the file / pass masks encoded for this size).
    """
    how = fix or "fix the file"
    if not isinstance(rle, dict):
        raise SSAError(f"{where}: segmentation is {type(rle).__name__}, not a COCO RLE dict; {how}")
    size = rle.get("size")
    if (
        not isinstance(size, (list, tuple)) or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)
    ):
        raise SSAError(
            f"{where}: RLE size {size!r} is not [height, width] as two integers >= 0; {how}"
        )
    counts = rle.get("counts")
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise SSAError(f"{where}: RLE counts are not ASCII; {how}") from None
    if isinstance(counts, str):
        runs = rle_runs(counts, where, how)
    elif isinstance(counts, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in counts
    ):
        if any(abs(v) >= 1 << 62 for v in counts):
            raise SSAError(f"{where}: RLE counts hold a run beyond 2^62 pixels; {how}")
        runs = np.asarray(counts, dtype=np.int64)
    else:
        raise SSAError(f"{where}: RLE counts must be a string or a list of integers; {how}")
    if runs.size and int(runs.min()) < 0:
        raise SSAError(f"{where}: RLE counts hold a negative run; {how}")
    pixels = size[0] * size[1]
    if pixels >= 1 << 32:  # pycocotools counts in 32 bits
        raise SSAError(f"{where}: RLE size {size[0]}x{size[1]} is over 2^32 pixels; {how}")
    # Runs of at most `pixels` < 2^32 each cannot overflow an int64 sum; others add in Python.
    big = runs.size and int(runs.max()) > pixels
    total = sum(runs.tolist()) if big else int(runs.sum())
    if total != pixels:
        raise SSAError(
            f"{where}: RLE counts cover {total} pixels but its size {size[0]}x{size[1]} has "
            f"{pixels}; {fix or 'pass masks encoded for this size'}"
        )

def canonical_rle(runs: np.ndarray, size: Sequence[int]) -> dict[str, Any]:
    """The COCO RLE (`counts` str) that pycocotools' `encode` gives for the mask whose run
    lengths (zeros first) are `runs`, without decoding it: zero-length runs inside are merged
    away, so any valid RLE of a mask becomes that mask's one encoding (in O(runs))."""
    from pycocotools import mask as mask_utils

    runs = np.asarray(runs, dtype=np.int64)
    values = np.arange(runs.size) % 2  # 0, 1, 0, ...: zeros first
    keep = runs > 0
    if runs.size:
        keep[0] = True  # the leading zeros run stays, even when empty
    runs, values = runs[keep], values[keep]
    if runs.size:
        starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
        runs, values = np.add.reduceat(runs, starts), values[starts]
        if values[0] == 1:  # the mask starts with ones: an empty zeros run first
            runs = np.concatenate([[0], runs])
    height, width = int(size[0]), int(size[1])
    rle = mask_utils.frPyObjects({"counts": runs.tolist(), "size": [height, width]}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


class RleStack:
    """N masks of one `(H, W)` image kept as COCO RLE and decoded one at a time: memory grows
    with the image's pixels, not with masks x pixels (a 30 MP photo's 192 masks are 5.8 GB as a
    bool stack). Stands in for a `MaskResult.masks` tensor where a source reads masks as RLE
    (`ssa.masks.JsonMasks`): `ssa.voting.vote` votes and paints mask by mask on it, and
    iterating gives `(H, W) bool` numpy masks one at a time.

    rles: COCO RLEs of `size` `[H, W]`, checked (`check_rle`); `to`/`cpu` return the stack
    itself (it lives on the CPU); `numpy()` builds the whole `(N, H, W) bool` stack, for
    callers that need it (the engine), at N x H x W bytes.
    """

    def __init__(self, rles: Sequence[dict[str, Any]], size: Sequence[int]) -> None:
        self.rles = list(rles)
        self.size = (int(size[0]), int(size[1]))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.rles), *self.size)

    def __len__(self) -> int:
        return len(self.rles)

    def to(self, device: Any = None) -> RleStack:
        return self

    def cpu(self) -> RleStack:
        return self

    def __getitem__(self, index: int) -> np.ndarray:
        return decode_rle(self.rles[index])

    def __iter__(self) -> Any:
        return (decode_rle(rle) for rle in self.rles)

    def numpy(self) -> np.ndarray:
        out = np.zeros((len(self.rles), *self.size), dtype=bool)
        for k, rle in enumerate(self.rles):
            out[k] = decode_rle(rle)
        return out

    def runs(self, index: int) -> np.ndarray:
        """`(n,) int64` run lengths of mask `index`, zeros first, column-major."""
        counts = self.rles[index]["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        if isinstance(counts, str):
            return rle_runs(counts, f"mask {index}")
        return np.asarray(counts, dtype=np.int64)

    def indices(self, index: int) -> np.ndarray:
        """The pixels of mask `index` as indices into the column-major flattened image
        (`x * H + y`, ascending; int32 below 2^31 pixels, else int64): mask area x 4 bytes."""
        runs = self.runs(index)
        ends = np.cumsum(runs)
        starts, lengths = (ends - runs)[1::2], runs[1::2]  # the runs of ones
        dtype = np.int32 if self.size[0] * self.size[1] < 1 << 31 else np.int64
        total = int(lengths.sum())
        offsets = (starts - (np.cumsum(lengths) - lengths)).astype(dtype)
        return np.arange(total, dtype=dtype) + np.repeat(offsets, lengths)


# Errors after which every later write fails too: the run stops with one line (a rerun resumes).
_RUN_WIDE = {
    errno.ENOSPC: ("the disk is full", "free space"),
    errno.EDQUOT: ("the disk quota is used up", "free space"),
    errno.EROFS: ("the file system is read-only", "pass an {flag} you can write"),
}


def write_error(path: str | Path, exc: OSError, flag: str = "--out-dir") -> SSAError:
    """One line for a failed write of `path`: a FatalError when no later write can succeed
    (full disk, quota, read-only file system), else an SSAError (that image's failure).
    flag: the option that named the folder (`--out-dir` of a run, `--out` of an export). The
    error keeps the OSError as `os_error`, for callers that word it their own way."""
    reason = exc.strerror or str(exc)
    if exc.errno in _RUN_WIDE:
        what, fix = _RUN_WIDE[exc.errno]
        kept = " (finished images are kept)" if flag == "--out-dir" else ""
        err: SSAError = FatalError(
            f"cannot write {path}: {what} ({reason}); {fix.format(flag=flag)}, then rerun the "
            f"same command{kept}"
        )
    else:
        err = SSAError(f"cannot write {path} ({reason}); check the folder's permissions and space")
    err.os_error = exc  # type: ignore[attr-defined]
    return err


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # the file is whole or absent either way; only the rename's durability is at stake
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that the file exists whole or not at all.

    The bytes are complete in memory before anything touches the disk; they go to a temporary
    name in the destination folder (every byte written, the size checked, fsync'd), which is
    renamed into place, and the folder is fsync'd after the rename. Any OSError (full disk,
    read-only folder) removes the temporary file and becomes one line (`write_error`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
            view, done = memoryview(data), 0
            while done < len(view):
                n = os.write(fd, view[done:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device (short write)")
                done += n
            os.fsync(fd)
        finally:
            os.close(fd)
        size = os.stat(tmp).st_size
        if size != len(view):
            raise OSError(errno.EIO, f"{size} bytes on disk, {len(view)} written")
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    _fsync_dir(path.parent)


def check_writable(folder: str | Path, flag: str = "--out-dir") -> None:
    """Create `folder` if needed and write, fsync and remove a probe file in it: a read-only
    folder, or a disk without room for one block, is one line before any model loads.

    A folder that does not exist yet is not created here (nothing is written before the
    run's other checks pass): its nearest existing parent must be a writable folder on a disk
    with free space. The probe is not a `.ssa-tmp-*` file, so another rank's clean-up never
    takes it away."""
    folder = Path(folder)
    if not folder.is_dir():
        parent = folder.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        why = None
        if not parent.is_dir():
            why = f"{parent} is not a folder"
        elif not os.access(parent, os.W_OK | os.X_OK):
            why = f"{parent} is not writable"
        else:
            try:
                if os.statvfs(parent).f_bavail == 0:
                    why = f"the disk of {parent} is full"
            except (OSError, AttributeError):  # no statvfs (Windows): the writes will tell
                pass
        if folder.exists() or why is not None:
            # A path that names a file is a usage error; a folder the machine cannot write, one
            # of the environment (FatalError: exit code 1, as when the disk fills during a run).
            kind = SSAError if why is None or why.endswith("is not a folder") else FatalError
            why = why or "it is a file"
            raise kind(f"{flag} {folder} cannot be created ({why}); pass a folder you can write")
        return
    probe = folder / f".ssa-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if os.write(fd, b"\0" * 4096) != 4096:
                raise OSError(errno.ENOSPC, "No space left on device (short write)")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
        raise FatalError(f"{flag} {folder} is not writable: {write_error(probe, exc, flag)}") from None


def real_path(path: str | Path) -> Path:
    """`path` absolute, `~` expanded and every symlink resolved (also when it does not exist
    yet): how an output folder and the inputs are compared, and named in records."""
    return Path(os.path.realpath(Path(path).expanduser()))


def overlap(out: str | Path, inp: str | Path) -> str | None:
    """How an output path meets an input, by real path: "holds" when `out` is the input or a
    folder above it (writing there would replace or mix with it), "inside" when `out` lies in
    the input folder, else None."""
    out, inp = real_path(out), real_path(inp)
    if out == inp or out in inp.parents:
        return "holds"
    if inp.is_dir() and inp in out.parents:
        return "inside"
    return None


def remove_temp_files(out_dir: str | Path) -> int:
    """Remove the temporary files (`.ssa-tmp-*`) a killed run left under out_dir; return how many.

    Call it before any worker of the new run writes: a running writer's file would go too.
    """
    removed = 0
    for folder, _, files in os.walk(out_dir):
        for name in files:
            if name.startswith(TMP_PREFIX):
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed


def write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(data: Any, where: str | Path) -> str:
    """`data` as strict JSON (`allow_nan=False`): NaN and infinity, which Python writes as bare
    `NaN`/`Infinity` and strict readers (browsers, Go, Rust, jq) refuse, are one SSAError line
    naming `where` instead of a file no one else can read."""
    try:
        return json.dumps(data, allow_nan=False)
    except ValueError as exc:
        raise SSAError(
            f"cannot write {where} as JSON ({exc}): a value is NaN or infinity; the scores "
            f"that reach it must be finite numbers"
        ) from None


def write_json(path: str | Path, data: Any) -> None:
    """`data` as strict JSON (see `json_text`), written atomically."""
    atomic_write_bytes(path, json_text(data, path).encode("utf-8"))


def _pil_bytes(image: Any, **save: Any) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, **save)
    return buffer.getvalue()


def no_label_value(num_classes: int) -> int:
    """The "no label" value of a label map: 255, or 65535 when class 255 exists (C > 255)."""
    return 255 if num_classes <= 255 else 65535


def write_label_png(path: str | Path, labels: np.ndarray, num_classes: int) -> None:
    """A class-index PNG: uint8 when C <= 255, else uint16; "no label" is `no_label_value(C)`."""
    from PIL import Image

    arr = np.asarray(labels).astype(np.uint8 if num_classes <= 255 else np.uint16)
    atomic_write_bytes(path, _pil_bytes(Image.fromarray(arr), format="PNG"))


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a class-index PNG as `(H, W) int64`, values as written (see `no_label_value`)."""
    return read_label_map(path).astype(np.int64)


def write_overlay(
    path: str | Path,
    image: np.ndarray,
    label_map: np.ndarray,
    palette: np.ndarray,
    masks: Any = (),
    names: Sequence[str | None] = (),
    alpha: float = 0.5,
) -> None:
    """A JPEG of the label map blended over the image, masks outlined and named at their centres.

    masks: `(H, W) bool` masks, iterated once (a stack, or an `RleStack` decoding one at a
    time). Memory grows with the image's pixels: the blend runs in bands of rows and each
    mask's outline and centre are found with two copies of one mask, so N masks never make
    N x H x W (a 30 MP photo's float32 blend alone was 360 MB, made three times over).
    """
    from PIL import Image, ImageDraw

    colours = np.zeros((max(256, len(palette)), 3), dtype=np.uint8)
    colours[: len(palette)] = palette
    out = np.empty_like(image, dtype=np.uint8)
    height, width = label_map.shape
    band = max(1, (1 << 20) // max(1, width))  # rows per band: about 12 MB of float32
    for r0 in range(0, height, band):
        rows = slice(r0, r0 + band)
        labels = label_map[rows]
        valid = (labels != 255) & (labels < len(colours))
        blend = image[rows].astype(np.float32)
        blend[valid] = (1 - alpha) * blend[valid] + alpha * colours[labels[valid]]
        out[rows] = blend.astype(np.uint8)
    centres = []
    ys, xs = np.arange(height), np.arange(width)
    for mask, name in zip(masks, [*names, *[None] * max(0, len(masks) - len(names))]):
        mask = np.asarray(mask, dtype=bool)
        # Work in the mask's own memory order (pycocotools decodes column-major): the 4-pixel
        # neighbourhood is the same on the transpose, and a transposing copy costs more than
        # the rest together.
        flipped = not mask.flags.c_contiguous and mask.T.flags.c_contiguous
        plane = mask.T if flipped else mask
        inner = plane.copy()  # pixels whose 4 neighbours are all in the mask (outside: not)
        inner[1:] &= plane[:-1]
        inner[:-1] &= plane[1:]
        inner[:, 1:] &= plane[:, :-1]
        inner[:, :-1] &= plane[:, 1:]
        inner[0] = inner[-1] = False
        inner[:, 0] = inner[:, -1] = False
        np.logical_and(plane, ~inner, out=inner)
        first, second = np.nonzero(inner)  # the outline: few pixels
        out[(second, first) if flipped else (first, second)] = 255
        area = int(np.count_nonzero(plane))
        if name is not None and area:
            # The mean pixel position, from row and column counts (no index arrays).
            per_row = plane.sum(axis=0 if flipped else 1)
            per_col = plane.sum(axis=1 if flipped else 0)
            centres.append((float(per_col @ xs) / area, float(per_row @ ys) / area, name))
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    for x, y, name in centres:
        draw.text((x, y), name, fill=(255, 255, 255), anchor="mm")
    atomic_write_bytes(path, _pil_bytes(pil, format="JPEG", quality=90))


def read_label_map(path: str | Path) -> np.ndarray:
    """A single-channel label image (class indices) as stored: `(H, W)` uint8, uint16 or int32.

    Greyscale PNGs go through OpenCV (faster than PIL, and it releases the GIL for the whole
    decode); palette and other PNGs through PIL, which returns palette indices, not colours.
    """
    from io import BytesIO

    from PIL import Image, UnidentifiedImageError

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SSAError(f"cannot read label map {path} ({exc}); check the file") from None
    arr = None
    # PNG colour type 0 (greyscale) is byte 25 of the file, in the IHDR chunk.
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[25] == 0:
        import cv2

        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        try:
            with Image.open(BytesIO(data)) as img:
                arr = np.asarray(img)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise SSAError(f"cannot read label map {path} ({exc}); replace the file") from None
    if arr.ndim != 2:
        raise SSAError(
            f"label map {path} has shape {arr.shape}, not (H, W); pass single-channel class-index "
            f"PNGs"
        )
    return arr


def write_rgb_png(path: str | Path, rgb: np.ndarray) -> None:
    """An `HWC uint8 RGB` array as a PNG, atomically (colour maps, panoptic id PNGs)."""
    from PIL import Image

    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    atomic_write_bytes(path, _pil_bytes(Image.fromarray(arr), format="PNG"))


LOCK_ENV = "SSA_HELD_LOCK"  # the real path of a lock this process's launcher holds for it


class FolderLock:
    """One writer per output folder: an exclusive `fcntl.flock` on `lock_file`, held for the
    life of a run or an export (all its ranks: the launcher holds it and tells its workers
    through `LOCK_ENV`). The kernel drops the lock with its process, so a `kill -9` never
    leaves a lock that blocks; while held, the file's text names the holder for the next one's
    message. The file is removed on release; a process that locked a file removed meanwhile
    (its inode is no longer at the path) tries again, so two holders never coexist.
    """

    def __init__(self, lock_file: str | Path, what: str, flag: str) -> None:
        self.path = Path(os.path.realpath(lock_file))
        self.what = what
        self.flag = flag
        self._fd: int | None = None
        self._created = False

    def held_by_launcher(self) -> bool:
        return os.environ.get(LOCK_ENV) == str(self.path)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def __enter__(self) -> FolderLock:  # noqa: PYI034 - final class
        import fcntl
        import socket
        import time

        if self.held_by_launcher():
            return self
        self._created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                raise SSAError(
                    f"{self.flag} {self.path.parent} is in use by {holder or 'another ssa'}; "
                    f"wait for it to finish, or pass another {self.flag}"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder before us removed it: lock the new file
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = f"{self.what} (pid {os.getpid()} on {socket.gethostname()}, since {stamp})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()  # still ours: removed before the lock is released
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
            if self._created:  # a folder made for the lock alone goes with it (if still empty)
                with contextlib.suppress(OSError):
                    self.path.parent.rmdir()
