"""Where decoded pixels wait between decoding and the interim's shards: in a spill file
beside the outputs, or in the decode cache's kept shards, not in memory, so ingest's
memory does not grow with the number of images.

Each accepted image's pixels are read back when the shard it goes to is written, so
ingest holds one shard's pixels at a time: O(N) time and disk, O(shard) memory. The spill
file is unlinked as soon as it is made: it never outlives the run, even a killed one.
"""

import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.shards import RowsLike


class Located(NamedTuple):
    """Row `row` of `source` (a Spill, or the kept shards' shards.Rows)."""

    source: object
    row: int


class Spill:
    """Rows of `row_shape` uint8 appended to a temporary file, read back by row number."""

    def __init__(self, folder: Path, row_shape: tuple[int, ...]):
        handle, name = tempfile.mkstemp(dir=folder, prefix=".spill.", suffix=".partial")
        os.unlink(name)  # the open handle keeps it until the run ends, however it ends
        self.handle, self.row_shape, self.rows = handle, row_shape, 0
        self.row_bytes = math.prod(row_shape)

    def append(self, pixels: bytes) -> Located:
        os.write(self.handle, pixels)  # regular files take every byte of a write
        self.rows += 1
        return Located(self, self.rows - 1)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.row_bytes), np.uint8)
        for at, row in enumerate(rows.tolist()):
            out[at] = np.frombuffer(
                os.pread(self.handle, self.row_bytes, row * self.row_bytes), np.uint8
            )
        return out.reshape(-1, *self.row_shape)

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.handle)


class Gathered(RowsLike):
    """The accepted images' pixels, in order, as an array-like (len, shape, dtype, slices,
    np.asarray) that reads each block of rows from where its pixels are when asked: bytes
    in memory, a spill file or the kept shards."""

    def __init__(self, pixels: list, row_shape: tuple[int, ...]):
        self.rows, self.row_shape, self.dtype = pixels, row_shape, np.dtype(np.uint8)

    def __getitem__(self, rows):
        if isinstance(rows, (int, np.integer)):
            return self[rows : rows + 1][0]
        chosen = self.rows[rows]
        out = np.empty((len(chosen), math.prod(self.row_shape)), np.uint8)
        located = defaultdict(list)  # source -> [(where in out, its row there)]
        for at, pixels in enumerate(chosen):
            if isinstance(pixels, Located):
                located[pixels.source].append((at, pixels.row))
            else:  # bytes
                out[at] = np.frombuffer(pixels, np.uint8)
        for source, places in located.items():  # one read of each source per block
            at, where = (np.array(column) for column in zip(*places, strict=True))
            out[at] = source[where].reshape(len(where), -1)
        return out.reshape(-1, *self.row_shape)
