"""Ingest: a folder of class sub-folders of images -> uint8 arrays and a manifest.

Every file under the raw folder gets exactly one verdict:

- accepted: decoded, oriented, converted and resized; a row of images.npy;
- quarantined: not a usable image (corrupt, truncated, empty, not an image,
  a decompression bomb, a link out of the raw folder), with a reason;
- duplicate: the same bytes as an accepted file of the same class;
- conflict: the same bytes under two or more classes, so no label can be trusted;
- ignored: hidden files and folders, and files that are known not to be images.

`decode_image` is the pure core (bytes in, pixels out) and the only code that
turns an image file into model input.
"""

import contextlib
import hashlib
import io
import os
import sqlite3
import stat
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline import store
from pipeline.cache import (
    DecodeCache,
    Decoded,
    Kept,
    is_damaged,
    set_aside,
    signature,
    writable,
)
from pipeline.errors import PipelineError, one_line
from pipeline.params import Ingest

VERDICTS = ("accepted", "quarantined", "duplicate", "conflict", "ignored")

# Bumped whenever examine_bytes would give other pixels or another reason for the same
# file and settings: the decode cache keeps both.
DECODER_VERSION = 6

COMMIT_SECONDS = 0.5  # the most decoding work a killed run loses from the cache

# Files people keep beside their images; anything else is tried as an image.
NOT_IMAGES = frozenset(
    {
        *(".txt", ".md", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".xml", ".yaml", ".yml"),
        *(".html", ".htm", ".pdf", ".doc", ".docx", ".zip", ".tar", ".gz", ".7z", ".db"),
        *(".ini", ".log", ".py", ".ipynb", ".dvc", ".mp4", ".mov", ".avi", ".mkv", ".mp3", ".wav"),
    }
)

# Folders that tools keep beside images: a Mac zip's resource forks, a Synology NAS's
# thumbnails (which would otherwise pass as more images of the class).
TOOL_FOLDERS = frozenset({"__MACOSX", "@eaDir"})

PIL_MODES = {"grayscale": "L", "rgb": "RGB"}

# EXIF orientation -> the transpose that shows the image as the camera saw it.
ORIENTATION_TAG = 0x0112
TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SIDEWAYS = frozenset({5, 6, 7, 8})  # orientations that swap width and height

LINK_OUT = "link resolves outside the raw data folder"
TOO_LARGE = "cannot be read: larger than the memory this process may use"
NOT_REGULAR = "not a regular file (a named pipe, socket or device), which reading would block on"
NOT_UTF8 = "name is not UTF-8 (shown with \\x escapes), which the manifest cannot hold: rename it"

# The ftyp brands of HEIC/HEIF files (ISO base media), which Pillow cannot read; it can
# read AVIF, whose brand is avif.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
HEIF = "HEIC/HEIF image (an iPhone's default), which Pillow cannot read: convert it to JPEG"

ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
WHITE = (255, 255, 255, 255)  # what transparent pixels become


class Rejected(Exception):
    """A file Pillow can open but that must not be used; the message is the reason."""


def decode_image(data: bytes, settings: Ingest) -> tuple[np.ndarray, tuple[int, int, str, str]]:
    """Decode one image file's bytes into (H, W, C) uint8 pixels at the configured size.

    Also returns (width, height, format, mode) as stored in the file (a TIFF's size as
    Pillow reports it: already oriented). Raises
    `Rejected`, or whatever Pillow raises, for a file that is not a usable image.
    """
    try:
        return _decode(data, settings)
    except ValueError as error:
        # Pillow caps the text it decompresses (PngImagePlugin.MAX_TEXT_CHUNK and
        # MAX_TEXT_MEMORY) and refuses the whole file above the cap; text is not pixels.
        if "MAX_TEXT" not in str(error) or (stripped := without_png_text(data)) == data:
            raise
        return _decode(stripped, settings)


def _decode(data: bytes, settings: Ingest) -> tuple[np.ndarray, tuple[int, int, str, str]]:
    height, width = settings.image_size
    # Pillow refuses above twice this limit when opening; the check below refuses above it.
    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    with warnings.catch_warnings():
        # Pillow warns about odd but readable files (palette transparency, bad EXIF);
        # they are not failures, and under `python -W error` they must not become ones.
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as image:
            facts = (image.width, image.height, image.format or "", image.mode)
            if image.width * image.height > settings.max_pixels:
                raise Rejected(
                    f"decompression bomb: {image.width}x{image.height} pixels is over "
                    f"ingest.max_pixels = {settings.max_pixels}"
                )
            if image.format in ("JPEG", "MPO"):  # MPO: a camera's JPEG with extra pictures
                # DCT scaling: decode at 1/2, 1/4 or 1/8 size while still at least the target.
                sideways = _orientation(image) in SIDEWAYS
                wanted = (height, width) if sideways else (width, height)
                image.draft("L" if settings.color_mode == "grayscale" else None, wanted)
            image.load()  # Pillow applies a TIFF's orientation itself here, and drops the tag
            orientation = _orientation(image)
            if orientation in TRANSPOSES:
                image = image.transpose(TRANSPOSES[orientation])
            image = _convert(image, PIL_MODES[settings.color_mode])
            image = _fit(image, (width, height), settings)
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]  # (H, W) -> (H, W, 1)
    return pixels, facts


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # A broken EXIF block must not cost an otherwise readable image.
        return 1


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if image.mode == "I" or image.mode.startswith("I;16") or image.mode == "F":
        # convert() would clip every sample above 255 to white and show 0-1 floats black.
        image = Image.fromarray(to_8_bits(np.asarray(image), image.mode))
    if image.mode == "LAB":  # Pillow converts LAB to RGB only
        image = image.convert("RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba)
    return image.convert(mode)


def to_8_bits(samples: np.ndarray, mode: str) -> np.ndarray:
    """Integer or float samples -> uint8, by a rule that depends only on the file.

    Integers (16-bit PNG, TIFF and PGM; Pillow opens a PGM as 32-bit "I") are
    shifted down from the fewest bits, 8, 10, 12, 14 or 16, that hold the brightest
    sample, so a 12-bit camera's 0-4095 in a 16-bit file fills 0-255. Floats
    (mode F) in 0-1 are scaled by 255; in 0-255 they are rounded. Anything else has
    no known scale and is rejected, never clipped.
    """
    if not samples.size:
        return samples.astype(np.uint8)
    low, high = samples.min(), samples.max()
    if mode == "F":
        if not np.isfinite(samples).all() or low < 0 or high > 255:
            raise Rejected(
                f"32-bit float samples from {low:g} to {high:g}: only 0-1 and 0-255 have a "
                "known scale to 8 bits; convert it to an 8-bit image"
            )
        scale = 255 if high <= 1 else 1
        return np.rint(samples * scale).astype(np.uint8)
    if low < 0 or high > 65535:
        raise Rejected(
            f"32-bit integer samples from {low} to {high}: only 0-65535 has a known scale "
            "to 8 bits; convert it to an 8-bit or 16-bit image"
        )
    bits = max(8, int(high).bit_length() + int(high).bit_length() % 2)  # 8, 10, ..., 16
    return (samples.astype(np.uint32) >> (bits - 8)).astype(np.uint8)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def without_png_text(data: bytes) -> bytes:
    """A PNG file's bytes without its text chunks (comments, metadata; never pixels), or
    `data` unchanged when it is not a PNG whose chunks can be walked."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    kept, position = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        end = position + 12 + length  # length, type, data, CRC
        if data[position + 4 : position + 8] not in PNG_TEXT_CHUNKS:
            kept.append(data[position:end])
        position = end
    return b"".join(kept)


def _fit(image: Image.Image, size: tuple[int, int], settings: Ingest) -> Image.Image:
    resample = Image.Resampling[settings.resample.upper()]
    if settings.resize == "crop":  # fill the target, cutting the longer side
        return ImageOps.fit(image, size, resample)
    if settings.resize == "pad":  # keep all of the image, black bars on the shorter side
        return ImageOps.pad(image, size, resample, color=0)
    return image.resize(size, resample)


class Candidate(NamedTuple):
    """A file that may be an image of a class."""

    path: str  # relative to the raw folder, with '/' separators
    label: str
    signature: tuple[int, int, int]  # see cache.signature


@dataclass(frozen=True)
class Scan:
    """What a walk of the raw folder found, before any file is decoded."""

    candidates: list[Candidate]
    ignored: list[str]
    refused: list[store.QuarantineRow]  # links out of the raw folder, files that vanished
    classes: list[str]  # every class folder, even one with no usable image


def scan(raw: Path) -> Scan:
    """List every file under `raw`, in sorted order whatever order the file system gives."""
    if not raw.is_dir():
        raise PipelineError(f"{raw} is not a folder; expected {raw}/<class>/<image files>")
    root = raw.resolve()
    candidates, ignored, refused, classes = [], [], [], []

    # Plain strings, not Path objects: this runs once per file on every re-run.
    def walk(folder: str, prefix: str, label: str | None) -> None:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=attrgetter("name"))
        for entry in entries:
            relative = prefix + entry.name
            if not _utf8(entry.name):  # e.g. Latin-1 names, as an old zip unpacks them
                bad = _files_of(entry, relative)
                refused.extend(store.QuarantineRow(_escaped(path), NOT_UTF8) for path in bad)
            # realpath and isdir, not Path.resolve and is_dir: they raise on a link loop
            elif entry.is_symlink() and not Path(os.path.realpath(entry.path)).is_relative_to(root):
                refused.append(store.QuarantineRow(relative, LINK_OUT))
            elif hidden(entry.name):
                ignored.extend(_files_of(entry, relative))
            elif entry.is_dir(follow_symlinks=False):
                if label is None:
                    classes.append(entry.name)
                walk(entry.path, relative + "/", label or entry.name)
            elif entry.is_symlink() and os.path.isdir(entry.path):
                ignored.append(relative)  # a folder link inside raw: its files are reached directly
            elif label is None or known_not_image(entry.name):
                ignored.append(relative)
            else:
                try:
                    facts = entry.stat()  # follows a link inside raw to its target
                except OSError as error:
                    refused.append(store.QuarantineRow(relative, _unreadable(error)))
                    continue
                if not stat.S_ISREG(facts.st_mode):
                    refused.append(store.QuarantineRow(relative, NOT_REGULAR))
                    continue
                candidates.append(Candidate(relative, label, signature(facts)))

    walk(str(raw), "", None)
    return Scan(candidates, ignored, refused, classes)


def _utf8(name: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (os.scandir gives them as surrogates)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _escaped(path: str) -> str:
    """`path` with each byte that is not UTF-8 written as a \\x escape."""
    return path.encode(errors="surrogateescape").decode(errors="backslashreplace")


def hidden(name: str) -> bool:
    """A file or folder that never holds data: hidden (.DS_Store, .ipynb_checkpoints), or
    one of TOOL_FOLDERS."""
    return name.startswith(".") or name in TOOL_FOLDERS


def known_not_image(name: str) -> bool:
    return _extension(name) in NOT_IMAGES


def _extension(name: str) -> str:
    """os.path.splitext(name)[1].lower() for a name not starting with a dot, at a third of
    the cost (it runs once per file on every re-run)."""
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def _files_of(entry: os.DirEntry, relative: str) -> list[str]:
    """`relative` itself, or every file under it when it is a folder (not a folder link)."""
    if not entry.is_dir(follow_symlinks=False):
        return [relative]
    files = (path for path in Path(entry.path).rglob("*") if path.is_file())
    return sorted(f"{relative}/{path.relative_to(entry.path).as_posix()}" for path in files)


def examine_bytes(data: bytes, settings: Ingest, sha256: str | None = None) -> Decoded:
    """Decode one file's bytes (hashed unless `sha256` is given); a failure is the reason."""
    sha256 = sha256 or hashlib.sha256(data).hexdigest()
    if not data:
        return Decoded(sha256, None, reason="empty file (0 bytes)")
    try:
        pixels, facts = decode_image(data, settings)
    except Rejected as error:
        return Decoded(sha256, None, reason=str(error))
    except UnidentifiedImageError as error:
        heif = data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS
        return Decoded(sha256, None, reason=HEIF if heif else one_line(error))
    except Exception as error:  # Any decoder failure is a verdict on this file, not the run.
        return Decoded(sha256, None, reason=one_line(error))
    return Decoded(sha256, pixels.tobytes(), *facts)


def examine(path: Path, settings: Ingest, cache: DecodeCache) -> Decoded:
    """Read one file and decode it, unless the cache already holds that content."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # opening a named pipe waits for a writer
            return Decoded("", None, reason=NOT_REGULAR)
        data = path.read_bytes()
    except OSError as error:
        return Decoded("", None, reason=_unreadable(error))
    except MemoryError:  # e.g. under `ulimit -v`; without a limit the OOM killer acts
        return Decoded("", None, reason=TOO_LARGE)
    sha256 = hashlib.sha256(data).hexdigest()
    hit = cache.lookup([sha256]).get(sha256)
    return hit if hit is not None else examine_bytes(data, settings, sha256)


def _unreadable(error: OSError) -> str:
    return f"cannot be read: {error.strerror or error}"


def _too_slow(settings: Ingest) -> Decoded:
    """Not cached (sha256 empty): how long decoding takes depends on the machine."""
    return Decoded(
        "",
        None,
        reason=f"decoding took longer than ingest.decode_seconds = {settings.decode_seconds:g} "
        "s (a crafted file, or a machine far too busy); raise the limit to accept it",
    )


# Per-process state of the decoding workers, set once by `_start_worker`.
_worker: dict = {}

TAKEN, DONE = 1, 2  # a file's state in the workers' shared record of what they decode


def _start_worker(settings: Ingest, cache_path: Path | None, key: str, parent: int, shared=None):
    _die_with(parent)
    _worker["settings"] = settings
    _worker["cache"] = DecodeCache(cache_path, key, read_only=True)
    _worker["shared"] = shared


def _die_with(parent: int) -> None:
    """End this worker when its parent ends, however it ends (SIGKILL included): left
    behind, a worker waits for work for ever and holds the parent's output open."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the line above took effect
        os._exit(1)


def _examine_in_worker(job: tuple[int, Path]) -> tuple[int, Decoded | None]:
    index, path = job
    states, started, pids, stop = _worker["shared"]
    if stop.value:  # interrupted (Ctrl-C): skip the files already queued
        return index, None
    started[index], pids[index] = time.monotonic(), os.getpid()  # for the watchdog
    states[index] = TAKEN  # should this process die, the file is a suspect
    result = examine(path, _worker["settings"], _worker["cache"])
    states[index] = DONE
    return index, result


def _examine_alone(path: Path, state: tuple, answer) -> None:
    _start_worker(*state)
    answer.send(examine(path, _worker["settings"], _worker["cache"]))


def _alone(path: Path, state: tuple, context) -> Decoded:
    """Examine one file in a process of its own, so that if it kills the process, or takes
    longer than the limit, the verdict is on that file alone."""
    import signal  # only a run whose decoding killed a process pays for importing it

    settings = state[0]
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_examine_alone, args=(path, state, sender))
    process.start()
    sender.close()  # else recv() would wait for ever on a process that died
    result = None
    try:
        if receiver.poll(settings.decode_seconds):
            result = receiver.recv()
        else:
            process.kill()
            process.join()
            return _too_slow(settings)
    except EOFError:
        pass
    process.join()
    if result is not None:
        return result
    code = process.exitcode
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return Decoded(
        "",
        None,
        reason=f"decoding it killed the process ({how}): a crash in an image decoder, "
        "or the system out of memory",
    )


def _watch(shared, limit: float, overdue: set[int], done) -> None:
    """Kill the worker of any file decoding for longer than `limit` seconds; the pool then
    breaks and examine_all settles the file. Runs in a thread until `done` is set."""
    import signal

    states, started, pids, _ = shared
    taken = np.frombuffer(states, np.int8)
    since = np.frombuffer(started, np.float64)
    while not done.wait(min(0.5, limit / 4)):
        for index in np.flatnonzero((taken == TAKEN) & (since < time.monotonic() - limit)):
            overdue.add(int(index))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids[index], signal.SIGKILL)


def examine_all(
    paths: list[Path],
    settings: Ingest,
    cache: DecodeCache,
    workers: int,
    start_method: str | None = None,
) -> Iterator[Decoded]:
    """Results in the order of `paths`, decoded on `workers` processes, started by
    `start_method` (multiprocessing's default, fork on Linux, unless named).

    Always in worker processes, never in this one, whatever their number: so a file
    that kills its worker (a crash in a C decoder, the out-of-memory killer) or decodes
    for longer than ingest.decode_seconds costs that worker, not the run. The files the
    workers held are then examined again one process each, and the others anew: the
    culprit is quarantined and the run goes on (multiprocessing.Pool would hang). A
    worker ends with this process, however it ends."""
    if not paths:
        return
    # Only runs that decode pay for importing these.
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context(start_method)
    workers = min(workers, len(paths))
    state = (settings, cache.path, cache.settings_key, os.getpid())
    settled: dict[int, Decoded] = {}  # files examined alone after a worker died
    done = 0  # results yielded
    while done < len(paths):
        todo = [index for index in range(done, len(paths)) if index not in settled]
        chunk = max(1, min(256, len(todo) // (workers * 4)))  # few, large chunks: less IPC
        shared = (
            context.RawArray("b", len(paths)),  # each file's state: TAKEN, DONE
            context.RawArray("d", len(paths)),  # when it was taken (time.monotonic)
            context.RawArray("i", len(paths)),  # by which process
            context.RawValue("b", 0),  # stop: skip the queued files
        )
        overdue: set[int] = set()
        finished = threading.Event()
        watchdog = threading.Thread(
            target=_watch, args=(shared, settings.decode_seconds, overdue, finished), daemon=True
        )
        pool = ProcessPoolExecutor(workers, context, _start_worker, (*state, shared))
        watchdog.start()
        try:
            jobs = ((index, paths[index]) for index in todo)
            for index, result in pool.map(_examine_in_worker, jobs, chunksize=chunk):
                yield from (settled[before] for before in range(done, index))
                yield result
                done = index + 1
            yield from (settled[after] for after in range(done, len(paths)))
            done = len(paths)
        except BrokenProcessPool:
            states = shared[0]
            suspects = [index for index, taken in enumerate(states) if taken == TAKEN]
            for index in suspects or todo[:1]:  # at least one file settled each time
                if index in overdue:
                    settled[index] = _too_slow(settings)
                else:
                    settled[index] = _alone(paths[index], state, context)
        finally:
            finished.set()
            shared[3].value = 1  # else, after a Ctrl-C, the queued chunks are decoded first
            pool.shutdown(wait=False, cancel_futures=True)


def _decode_new(
    todo: list[str], settings: Ingest, cache: DecodeCache, workers: int
) -> dict[str, Decoded]:
    """Examine files the stat signatures did not vouch for, with a progress bar."""
    from tqdm import tqdm  # only runs that decode pay for importing it

    results, fresh = {}, []
    decoded = examine_all([Path(p) for p in todo], settings, cache, workers)
    committed = time.monotonic()
    with tqdm(total=len(todo), desc="ingest", unit="img", disable=None) as progress:
        for path, result in zip(todo, decoded, strict=True):
            results[path] = result
            if result.sha256:
                fresh.append(result)
            # Commit as we go, so a killed run keeps its progress; by time, not by count:
            # each commit waits for the disk (every 128 images cost 8-12% of 5,000 photos).
            if time.monotonic() - committed >= COMMIT_SECONDS:
                cache.store(fresh)
                fresh.clear()
                committed = time.monotonic()
            progress.update()
    cache.store(fresh)
    return results


def settings_key(settings: Ingest) -> str:
    """Everything that decides decode_image's output for given bytes (not the time limit:
    a file over it is never cached)."""
    settings_json = settings.model_dump_json(exclude={"decode_seconds"})
    return f"decoder={DECODER_VERSION} pillow={PIL.__version__} {settings_json}"


def ingest(
    raw: Path, settings: Ingest, workers: int = 1, cache_path: Path | None = None
) -> store.Interim:
    """Give every file under `raw` its verdict; outputs do not depend on `workers` or the cache."""
    return _ingest(raw, settings, workers, cache_path)[0]


def _ingest(
    raw: Path, settings: Ingest, workers: int, cache_path: Path | None
) -> tuple[store.Interim, Path | None]:
    """`ingest`, and the cache's kept images.npy when it holds exactly the accepted images
    in order (then nothing needs writing), else None."""
    found = scan(raw)
    key = settings_key(settings)
    # The cache knows files by absolute path, however the raw folder is reached.
    root = str(raw.resolve())
    absolute = [f"{root}/{candidate.path}" for candidate in found.candidates]
    cache = DecodeCache(cache_path, key)
    try:
        kept = cache.kept()
        signatures = {path: c.signature for path, c in zip(absolute, found.candidates, strict=True)}
        known = cache.known_hashes(signatures)
        hits = cache.lookup(known.values(), kept)
        results = {path: hits[known[path]] for path in absolute if known.get(path) in hits}
        todo = [path for path in absolute if path not in results]
        if todo:
            results |= _decode_new(todo, settings, cache, workers)
        cache.remember_hashes(
            (path, signatures[path], results[path].sha256)
            for path in absolute
            if path not in known and results[path].sha256
        )
    finally:
        cache.close()
    interim = decide(found, [results[path] for path in absolute], settings, kept)
    same = kept is not None and [row.sha256 for row in interim.manifest] == kept.hashes
    return interim, kept.path if same else None


def decide(
    found: Scan, decoded: list[Decoded], settings: Ingest, kept: Kept | None = None
) -> store.Interim:
    """Turn per-file results into verdicts, arrays and the report (pure)."""
    quarantine = list(found.refused)
    usable = defaultdict(list)  # sha256 -> [(path, label, result)], in path order
    for candidate, result in zip(found.candidates, decoded, strict=True):
        if result.reason is None:
            usable[result.sha256].append((candidate.path, candidate.label, result))
        else:
            quarantine.append(store.QuarantineRow(candidate.path, result.reason))
    quarantine.sort(key=lambda row: row.path)

    accepted, duplicates = [], []
    for sha256, copies in usable.items():
        labels = sorted({label for _, label, _ in copies})
        if len(labels) > 1:
            duplicates.extend(
                store.DuplicateRow(
                    path, label, sha256, "conflict", "same image in " + ", ".join(labels)
                )
                for path, label, _ in copies
            )
            continue
        accepted.append(copies[0])
        duplicates.extend(
            store.DuplicateRow(path, label, sha256, "duplicate", f"same image as {copies[0][0]}")
            for path, label, _ in copies[1:]
        )
    accepted.sort(key=lambda copy: copy[0])
    duplicates.sort(key=lambda row: row.path)

    images = stack_pixels([result for _, _, result in accepted], settings, kept)
    manifest = [
        store.ManifestRow(path, label, r.sha256, r.width, r.height, r.format, r.mode)
        for path, label, r in accepted
    ]
    verdicts = {
        "accepted": [row.path for row in manifest],
        "quarantined": [row.path for row in quarantine],
        "duplicate": [row.path for row in duplicates if row.verdict == "duplicate"],
        "conflict": [row.path for row in duplicates if row.verdict == "conflict"],
        "ignored": found.ignored,
    }
    return store.Interim(images, manifest, quarantine, duplicates, _report(verdicts, found))


def stack_pixels(results: list[Decoded], settings: Ingest, kept: Kept | None = None) -> np.ndarray:
    """The (N, H, W, C) uint8 array of accepted results' pixels, in order."""
    if kept is not None and [result.sha256 for result in results] == kept.hashes:
        return kept.array  # the same images in the same order: nothing to copy
    height, width = settings.image_size
    channels = 1 if settings.color_mode == "grayscale" else 3
    # Row by row into one array: b"".join of the rows took twice as long.
    images = np.empty((len(results), height * width * channels), np.uint8)
    for row, result in zip(images, results, strict=True):
        row[:] = np.frombuffer(result.pixels, np.uint8)  # bytes, or a row of the kept array
    return images.reshape(-1, height, width, channels)


def _report(verdicts: dict[str, list[str]], found: Scan) -> dict:
    """Counts per verdict, and per verdict for each class folder."""
    per_class = {name: dict.fromkeys(VERDICTS, 0) for name in found.classes}
    for verdict, paths in verdicts.items():
        for path in paths:
            name = path.split("/")[0]
            if name in per_class:
                per_class[name][verdict] += 1
    return {
        "files": {verdict: len(verdicts[verdict]) for verdict in VERDICTS},
        "classes": per_class,
    }


def summary(interim: store.Interim, out: Path, max_rows: int = 12) -> str:
    """A one-screen account of the run: verdicts per class and the first problems."""
    files = interim.report["files"]
    lines = [
        f"ingest: {len(interim.manifest)} images in "
        f"{len({row.label for row in interim.manifest})} classes -> {out}",
        "  " + ", ".join(f"{count} {verdict}" for verdict, count in files.items()),
        f"  {'class':<20}" + "".join(f"{verdict:>12}" for verdict in VERDICTS),
    ]
    classes = interim.report["classes"]
    for name, counts in list(classes.items())[:max_rows]:
        lines.append(f"  {name[:20]:<20}" + "".join(f"{counts[v]:>12}" for v in VERDICTS))
    if len(classes) > max_rows:
        lines.append(f"  ... {len(classes) - max_rows} more classes in {out / 'report.json'}")
    for name, counts in classes.items():
        if counts["accepted"] == 0:
            lines.append(f"warning: class folder '{name}' has no usable image; it is not a class")
    problems = [(r.path, r.reason) for r in interim.quarantine] + [
        (r.path, r.detail) for r in interim.duplicates
    ]
    for path, reason in problems[:5]:
        lines.append(f"  {path}: {reason}")
    if len(problems) > 5:
        lines.append(f"  ... see {out / 'quarantine.csv'} and {out / 'duplicates.csv'}")
    return "\n".join(lines)


def run(
    raw: Path, out: Path, settings: Ingest, workers: int = 1, cache_path: Path | None = None
) -> store.Interim:
    """Ingest `raw` into `out`; a second ingest into the same `out` waits for the first."""
    with store.exclusive(out, "ingest"):
        if cache_path is not None and not writable(cache_path):
            print(
                f"ingest: warning: the decode cache's folder {cache_path.parent} is not writable; "
                "decoding every file without it (pass --no-cache, or point --cache or "
                "IMGPIPE_DECODE_CACHE at a writable path)",
                file=sys.stderr,
            )
            cache_path = None
        return _run_with_cache(raw, out, settings, workers, cache_path)


def _run_with_cache(
    raw: Path, out: Path, settings: Ingest, workers: int, cache_path: Path | None
) -> store.Interim:
    try:
        return _run(raw, out, settings, workers, cache_path)
    except sqlite3.DatabaseError as error:
        if not is_damaged(error):  # busy past the timeout, read-only, full: not ours to fix
            raise PipelineError(
                f"the decode cache {cache_path} cannot be used ({error}); run again with "
                "--no-cache or another --cache path, or after the ingest that holds it ends"
            ) from None
        # Only a cache: set it aside and do the work again with a new one.
        aside = set_aside(cache_path)
        print(
            f"ingest: warning: the decode cache {cache_path} is damaged ({error}); "
            f"moved it to {aside} and decoding every file again",
            file=sys.stderr,
        )
        return _run(raw, out, settings, workers, cache_path)


def _run(
    raw: Path, out: Path, settings: Ingest, workers: int, cache_path: Path | None
) -> store.Interim:
    interim, kept = _ingest(raw, settings, workers, cache_path)
    if not interim.manifest:
        counts = ", ".join(f"{n} {v}" for v, n in interim.report["files"].items() if n)
        raise PipelineError(
            f"no usable images under {raw} ({counts or 'no files'}); "
            f"expected {raw}/<class>/<image files>"
        )
    store.write_interim(out, interim, images_file=kept)
    if cache_path is not None and kept is None:  # keep what was written for the next run
        cache = DecodeCache(cache_path, settings_key(settings))
        try:
            cache.keep(out / "images.npy", interim.manifest)
        finally:
            cache.close()
    return interim


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
