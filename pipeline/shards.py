"""Rows of images kept in shard files cut where their content says, so that a new version
of the data set rewrites, stores and pushes only the shards its changes land in.

Every sharded output keeps its rows in the manifest's order (path order). A row ends
its shard when its content hash is 0 mod SHARD_ROWS, or when the next row is in
another class or split folder; so where the shards are cut depends only on the images
next to each cut, never on how many images there are. Files added with names after a
class's last image change that class's last shard only, a new sub-folder the shard it
lands in, and a removed image its own shard: DVC, which stores and pushes whole files,
then moves about as many bytes as changed (iterative/dvc#829). A shard is named after
its first row's content hash, so the shards after an insertion keep their names, and
each sharded folder lists its shards in order in shards.csv.

Shards are read with pread (np.fromfile), not memory-mapped: pages read through a map
count in the process's RSS, so one pass over a mapped data set would grow to its size.
Time to cut is O(N); reading rows costs one read per run of consecutive rows.
"""

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline import files

# 32 rows: with C classes, adding 1% at the end of every class rewrites about
# 1% + 32·C/N of the rows (under 3% for 10 classes from 25,000 images), in files of
# 128 KiB at 64×64 grayscale and 4.6 MiB at 224×224 RGB (31,000 shards a folder at 1M).
SHARD_ROWS = 32


class Shard(NamedTuple):
    name: str
    start: int  # its rows are start:stop of the whole, in order
    stop: int


def cut(hashes: Sequence[str], folders: Sequence[str]) -> list[Shard]:
    """Where the rows of content `hashes` (hex sha256), in order, are cut into shards;
    `folders` is each row's class and split folder, across whose changes a shard never
    runs."""
    shards, start = [], 0
    for row, sha256 in enumerate(hashes):
        last = row + 1 == len(hashes)
        if last or int(sha256[:16], 16) % SHARD_ROWS == 0 or folders[row] != folders[row + 1]:
            shards.append(Shard(hashes[start][:16], start, row + 1))
            start = row + 1
    return shards


def path(folder: Path, name: str) -> Path:
    """The file of shard `name` of a sharded array in `folder`."""
    return folder / f"{name}.npy"


def write_arrays(folder: Path, shards: list[Shard], rows: Callable) -> None:
    """One .npy file per shard in `folder`, its rows from `rows(start, stop)` (a file
    there that holds them already is kept)."""
    for shard in shards:
        files.save_array(path(folder, shard.name), np.asarray(rows(shard.start, shard.stop)))


def link_arrays(
    source: Path, folder: Path, shards: list[Shard], known: dict[str, str] | None = None
) -> None:
    """The shard files of `source` in `folder` too, as hard links (copies across file
    systems): a view that is the ingested pixels costs no second copy. A file there that
    holds the bytes already (a link made before, or a copy of it) is kept; `known` as
    files.link_or_copy's."""
    for shard in shards:
        files.link_or_copy(path(source, shard.name), path(folder, shard.name), known)


def write_index(index_file: Path, shards: list[Shard]) -> None:
    """The shards' names and sizes, in order: `name,rows` lines under a header."""
    lines = ["name,rows", *(f"{shard.name},{shard.stop - shard.start}" for shard in shards)]
    files.write_bytes(index_file, ("\n".join(lines) + "\n").encode())


def parse_index(text: str) -> list[Shard]:
    """The shards write_index listed; ValueError when the text is not such a list."""
    header, *lines = text.splitlines() or [""]
    if header != "name,rows":
        raise ValueError(f"it is not a list of shards: its header is {header!r}, not 'name,rows'")
    shards, start = [], 0
    for line in lines:
        name, rows = line.split(",")
        shards.append(Shard(name, start, start + int(rows)))
        start += int(rows)
    return shards


class Damaged(ValueError):
    """A shard file whose size is not that of its rows (cut short, or another file)."""

    def __init__(self, path: Path, message: str):
        super().__init__(message)
        self.path = path


class RowsLike:
    """What an array-like of rows read when asked for gives beyond its __getitem__: len,
    shape and np.asarray, from its rows (`len(self.rows)`), `row_shape` and `dtype`."""

    rows: "np.ndarray | list"
    row_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.row_shape)

    def __len__(self) -> int:
        return len(self.rows)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


class Rows(RowsLike):
    """Rows of a sharded array as an array-like: len, shape, dtype, np.asarray, and
    indexing by an int, a slice or a sorted array of row numbers, each read from the
    shard files when asked for. `index` picks and orders the rows it shows (a split's)."""

    def __init__(self, folder: Path, shards: list[Shard], index: np.ndarray | None = None):
        self.folder, self.shards = folder, shards
        self._starts = np.array([shard.start for shard in shards])
        total = shards[-1].stop if shards else 0
        self.index = np.arange(total) if index is None else np.asarray(index, np.int64)
        self.dtype, self.row_shape = (
            _row_type(path(folder, shards[0].name)) if shards else (np.dtype(np.uint8), ())
        )
        for shard in shards:  # one stat each: a damaged file is named now, not mid-epoch
            self._check(shard)

    @property
    def rows(self) -> np.ndarray:
        return self.index

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):  # rows first, then within them
            rows, *within = key
            one = isinstance(rows, (int, np.integer))
            return self[rows][tuple(within) if one else (slice(None), *within)]
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        rows = self.index[key]  # a slice or sorted row numbers: rows in order
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        for shard_at, start, stop, where in _runs(self._starts, rows):
            out[where] = self._read(shard_at, start, stop)
        return out

    def _check(self, shard: Shard) -> None:
        rows = shard.stop - shard.start
        size = len(files.npy_header((rows, *self.row_shape), self.dtype)) + rows * self._row_bytes
        file = path(self.folder, shard.name)
        if (actual := file.stat().st_size) != size:
            raise Damaged(file, f"{actual} bytes where {rows} rows take {size}")

    @property
    def _row_bytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.row_shape)

    def _read(self, shard_at: int, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of shard number `shard_at` (numbered within it)."""
        shard = self.shards[shard_at]
        row_bytes = self._row_bytes
        count = (stop - start) * math.prod(self.row_shape)
        header = len(files.npy_header((shard.stop - shard.start, *self.row_shape), self.dtype))
        data = np.fromfile(
            path(self.folder, shard.name), self.dtype, count, offset=header + start * row_bytes
        )
        return data.reshape(stop - start, *self.row_shape)


def _row_type(file: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and row shape in the header of the .npy `file`."""
    with file.open("rb") as opened:
        try:
            np.lib.format.read_magic(opened)
            shape, _, dtype = np.lib.format.read_array_header_1_0(opened)
        except ValueError as error:
            raise Damaged(file, str(error)) from None
    if dtype.hasobject:  # pickled objects: never read, let alone unpickled
        raise Damaged(file, f"it holds Python objects ({dtype}), not pixels or labels")
    return dtype, shape[1:]


def _runs(starts: np.ndarray, rows: np.ndarray) -> Iterator[tuple[int, int, int, slice]]:
    """Sorted global `rows` as runs of consecutive rows in one shard: (shard number, first
    and end row within it, where the run goes in the result)."""
    if len(rows) == 0:
        return
    shard_of = np.searchsorted(starts, rows, side="right") - 1
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(shard_of) != 0)) + 1
    edges = [0, *breaks.tolist(), len(rows)]
    for begin, end in zip(edges[:-1], edges[1:], strict=False):
        at = int(shard_of[begin])
        first = int(rows[begin] - starts[at])
        yield at, first, first + end - begin, slice(begin, end)
