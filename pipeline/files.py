"""Files written whole or not at all, and arrays read and written a block at a time.

Every file is written to a temporary name beside its target and renamed into place,
so a killed stage never leaves a file that looks complete but is not; a stage clears
its previous outputs first, or (prepare) removes the file that marks them complete, so
those present are never taken for a mix of two runs. A file that already holds what
would be written is left as it is: a re-run after a small change writes, and DVC hashes
again, only the files the change reaches.
"""

import functools
import io
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np


@contextmanager
def exclusive(folder: Path, stage: str) -> Iterator[None]:
    """Hold `folder` for one run of `stage` at a time: a second run waits, saying so. The
    lock is on the folder itself (flock), so it leaves no file behind; a folder made here
    and still empty at the end (the run failed early) is removed."""
    import fcntl

    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{stage}: waiting for another {stage} writing to {folder}", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)
        if made:
            with suppress(OSError):  # not empty: the run wrote into it
                folder.rmdir()


def clear_outputs(folder: Path, names) -> None:
    """Remove a stage's previous outputs, and what killed writes left, before writing anew.

    Every file is renamed into place whole, and the stage's last file marks it
    complete; clearing first means the files present after an interruption are
    never a mix of two runs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).unlink(missing_ok=True)
    for leftover in folder.glob(".*.partial*"):
        leftover.unlink()


@contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` on success only."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=f".partial{suffix}"
    )
    os.fchmod(handle, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@functools.cache
def _umask() -> int:
    """The process's umask, read once (reading it means setting it: os.umask returns the old)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def link_or_copy(source: Path, target: Path, known: dict[str, str] | None = None) -> None:
    """Put `source`'s bytes at `target` whole: a hard link, or a copy across file systems.
    A target that holds them already is kept: a link made before, or a copy of its file
    (DVC's default cache.type copies over the hard links in a stage's outputs).

    `known` maps targets to the two files' signature when the copy was last found to hold
    the source's bytes; an unchanged signature keeps it without reading either file (as
    DVC's state trusts sizes and times), and a copy read and found whole is added."""
    with suppress(FileNotFoundError):
        if os.path.samefile(source, target):
            return
    signature = _signature(source, target)
    if known is not None and signature is not None and known.get(str(target)) == signature:
        return
    if _holds(target, source.stat().st_size, source.read_bytes):
        if known is not None and signature is not None:
            known[str(target)] = signature
        return
    with atomic_path(target) as temporary:
        temporary.unlink()
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)


def _signature(*paths: Path) -> str | None:
    """The files' device, inode, size and modification time, which DVC's state trusts
    too: any write or replacement of one changes it (not the change time: a new link to
    the file, as ingest's from its cache, changes that). None when one is missing."""
    try:
        found = [os.stat(path) for path in paths]
    except (FileNotFoundError, NotADirectoryError):
        return None
    return " ".join(f"{s.st_dev}:{s.st_ino}:{s.st_size}:{s.st_mtime_ns}" for s in found)


# Pixels go to disk in pieces this size: here one 49 MB write() took ten times as long as
# the same bytes in 1 MiB pieces (0.12 s against 0.011 s, ext4).
WRITE_PIECE = 1 << 20


def save_array(path: Path, array: np.ndarray) -> None:
    """Write what np.save(allow_pickle=False) writes, the data in WRITE_PIECE pieces,
    unless the file holds it already."""
    header = npy_header(array.shape, array.dtype)
    if _holds(path, len(header) + array.nbytes, lambda: header + array.tobytes()):
        return
    with array_writer(path, array.shape, array.dtype) as write:
        write(array)


@functools.cache
def npy_header(shape: tuple[int, ...], dtype) -> bytes:
    """The header np.save writes before the data of an array of `shape` and `dtype`, which
    ends where the rows start (its length depends on the shape's digits)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": tuple(map(int, shape)),  # an np.int64 would be written "np.int64(3)"
        },
    )
    return header.getvalue()


@contextmanager
def array_writer(path: Path, shape: tuple[int, ...], dtype) -> Iterator[Callable]:
    """Write the array of `shape` and `dtype` at `path` a block of rows at a time: the
    function yielded appends rows, in order. The bytes are np.save's of the whole array;
    the file is renamed into place only once every row is written. Written with write(),
    not through a memory map, whose pages would count in the process's RSS."""
    size = np.dtype(dtype).itemsize * math.prod(shape)
    with atomic_path(path) as temporary, temporary.open("wb") as file:
        file.write(npy_header(tuple(shape), np.dtype(dtype)))
        start = file.tell()

        def write(rows: np.ndarray) -> None:
            data = memoryview(np.ascontiguousarray(rows).reshape(-1).view(np.uint8))
            for piece in range(0, len(data), WRITE_PIECE):
                file.write(data[piece : piece + WRITE_PIECE])

        yield write
        if file.tell() - start != size:  # then never renamed into place
            raise ValueError(f"{path}: {file.tell() - start} bytes written, not {size}")


def read_blocks(array, rows: int, indices: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Rows of `array` (an ndarray, or rows of shard files: shards.Rows), all of them or
    those at the sorted `indices`, in blocks of `rows` rows, each read into memory on its
    own."""
    if indices is None:
        for start in range(0, len(array), rows):
            yield np.asarray(array[start : start + rows])
    else:
        for start in range(0, len(indices), rows):
            yield np.asarray(array[indices[start : start + rows]])


def write_bytes(path: Path, data: bytes) -> None:
    """Put `data` at `path`, unless the file holds it already."""
    if _holds(path, len(data), lambda: data):
        return
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def _holds(path: Path, size: int, data: Callable[[], bytes]) -> bool:
    """Whether the file at `path` is `size` bytes long and those are `data()`, made only
    when the size is right. Costs a stat, or a read of a file that is what it would be."""
    try:
        return path.stat().st_size == size and path.read_bytes() == data()
    except (FileNotFoundError, NotADirectoryError):
        return False


def write_json(path: Path, data) -> None:
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
