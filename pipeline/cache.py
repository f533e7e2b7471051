"""Ingest's decode cache: lets a re-run skip every file it has already decoded.

DVC deletes a stage's outputs before running it again, so the cache lives
outside them, in one SQLite file. Entries are keyed by the file's content
hash and the ingest settings, so a hit is exactly what decoding would give.
A second table maps a file's stat signature (size, mtime, inode) to its hash,
like git's index, so unchanged files are not even read. SQLite commits whole
transactions, so a killed run never leaves a half-written entry, and the file
can be deleted at any time: the next run decodes everything again.

Beside it, the last images.npy ingest wrote is kept (a hard link, or a copy
across file systems), with its rows' hashes and its stat signature: a re-run
takes known pixels from it instead of from SQLite, and when the accepted images
are the same, links it back in place of writing 49 MB again. A kept array whose
signature changed (edited in place) is ignored, and it can be deleted any time.
"""

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline import store

# `decoded` held the results with pixels before the other columns; caches made then
# are dropped rather than read.
SCHEMA = """
DROP TABLE IF EXISTS decoded;
CREATE TABLE IF NOT EXISTS results (
    settings TEXT, sha256 TEXT, width INT, height INT, format TEXT, mode TEXT, reason TEXT,
    pixels BLOB, PRIMARY KEY (settings, sha256)
);
CREATE TABLE IF NOT EXISTS hashes (
    path TEXT PRIMARY KEY, size INT, mtime_ns INT, inode INT, sha256 TEXT
);
CREATE TABLE IF NOT EXISTS kept (
    settings TEXT, hashes TEXT, size INT, mtime_ns INT, inode INT
);
"""


class Decoded(NamedTuple):
    """What decoding one file gave: pixels and source facts, or the reason it failed."""

    sha256: str
    # (H, W, C) uint8 in C order: bytes, or a row of the kept array; None when rejected
    pixels: bytes | np.ndarray | None
    width: int = 0  # as stored in the file, before orientation and resizing
    height: int = 0
    format: str = ""
    mode: str = ""
    reason: str | None = None  # why the file was quarantined


def signature(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


class Kept(NamedTuple):
    """The last images.npy ingest wrote with these settings, memory-mapped."""

    path: Path
    hashes: list[str]  # the sha256 of each row, in order
    array: np.ndarray

    def row_of(self) -> dict[str, int]:
        return {sha256: row for row, sha256 in enumerate(self.hashes)}


class DecodeCache:
    """Decode results for one set of ingest settings; `path=None` caches nothing."""

    def __init__(self, path: Path | None, settings_key: str, read_only: bool = False):
        self.path = path
        self.settings_key = settings_key
        self.connection = None
        if path is None:
            return
        if read_only:  # decoding workers only look up; the main process writes
            uri = path.resolve().as_uri() + "?mode=ro"
            self.connection = sqlite3.connect(uri, uri=True, timeout=60)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(path, timeout=60)
            self.connection.executescript(SCHEMA)

    def known_hashes(self, signatures: dict[str, tuple[int, int, int]]) -> dict[str, str]:
        """The content hash of each path whose stat signature is unchanged."""
        if self.connection is None:
            return {}
        known = {}
        rows = self.connection.execute("SELECT path, size, mtime_ns, inode, sha256 FROM hashes")
        for path, size, mtime_ns, inode, sha256 in rows:
            if signatures.get(path) == (size, mtime_ns, inode):
                known[path] = sha256
        return known

    def remember_hashes(self, entries: Iterable[tuple[str, tuple[int, int, int], str]]) -> None:
        if self.connection is None:
            return
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)",
                [(path, *stat, sha256) for path, stat, sha256 in entries],
            )

    def lookup(self, hashes: Iterable[str], kept: Kept | None = None) -> dict[str, Decoded]:
        """Cached results; the pixels of hashes in `kept` are its rows, not read from SQLite."""
        if self.connection is None:
            return {}
        row_of = kept.row_of() if kept else {}
        wanted = set(hashes)
        in_kept = wanted & row_of.keys()
        found = {}
        if in_kept:
            # One pass over these settings' rows costs less than thousands of index probes,
            # and pixels, the last column, are never read.
            rows = self.connection.execute(
                "SELECT sha256, width, height, format, mode, reason FROM results "
                "WHERE settings = ?",
                (self.settings_key,),
            )
            for sha256, *facts in rows:
                if sha256 in in_kept:
                    found[sha256] = Decoded(sha256, kept.array[row_of[sha256]], *facts)
        rest = sorted(wanted - in_kept)
        for start in range(0, len(rest), 500):  # one query per batch, not per file
            batch = rest[start : start + 500]
            query = (
                "SELECT sha256, pixels, width, height, format, mode, reason FROM results "
                f"WHERE settings = ? AND sha256 IN ({', '.join('?' * len(batch))})"
            )
            for row in self.connection.execute(query, (self.settings_key, *batch)):
                found[row[0]] = Decoded(*row)
        return found

    def kept(self) -> Kept | None:
        """The kept images.npy for these settings, unless it is missing or was changed."""
        if self.connection is None:
            return None
        row = self.connection.execute(
            "SELECT hashes, size, mtime_ns, inode FROM kept WHERE settings = ?",
            (self.settings_key,),
        ).fetchone()
        path = self.kept_path
        try:
            if row is None or signature(path.stat()) != tuple(row[1:]):
                return None
        except FileNotFoundError:
            return None
        # A plain ndarray view of the map: indexing np.memmap rows costs 10x more.
        array = store.load_array(path).view(np.ndarray)
        return Kept(path, row[0].split(",") if row[0] else [], array)

    def keep(self, images: Path, hashes: list[str]) -> None:
        """Keep the images.npy just written, whose rows have these hashes."""
        if self.connection is None:
            return
        store.link_or_copy(images, self.kept_path)
        with self.connection:
            self.connection.execute("DELETE FROM kept")
            self.connection.execute(
                "INSERT INTO kept VALUES (?, ?, ?, ?, ?)",
                (self.settings_key, ",".join(hashes), *signature(self.kept_path.stat())),
            )

    @property
    def kept_path(self) -> Path:
        return self.path.with_suffix(".images.npy")

    def store(self, results: Iterable[Decoded]) -> None:
        if self.connection is None:
            return
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO results (settings, sha256, pixels, width, height, "
                "format, mode, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.settings_key, *result) for result in results],
            )

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
