"""Ingest's decode cache: lets a re-run skip every file it has already decoded.

One SQLite file, made and guarded as pipeline/caches.py says. Entries are keyed
by the file's content hash and the ingest settings, so a hit is exactly what
decoding would give. A second table maps a file's stat signature (size, mtime,
inode) to its hash, like git's index, so unchanged files are not even read.
Deleted, the next run decodes everything again.

Beside it, the last images.npy ingest wrote is kept (a hard link, or a copy
across file systems), with each row's hash and source facts and the file's stat
signature: a re-run takes known images from it instead of from SQLite, and when
the accepted images are the same, links it back in place of writing 49 MB
again. A kept array whose signature changed (edited in place) is ignored, and it
can be deleted any time.
"""

import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline import caches, files, store
from pipeline.ingest.decode import Decoded

# `decoded` held the results with pixels before the other columns, `kept` the kept
# rows' hashes without their facts; caches made then are dropped rather than read.
SCHEMA = """
DROP TABLE IF EXISTS decoded;
DROP TABLE IF EXISTS kept;
CREATE TABLE IF NOT EXISTS results (
    settings TEXT, sha256 TEXT, width INT, height INT, format TEXT, mode TEXT, reason TEXT,
    pixels BLOB, PRIMARY KEY (settings, sha256)
);
CREATE TABLE IF NOT EXISTS hashes (
    path TEXT PRIMARY KEY, size INT, mtime_ns INT, inode INT, sha256 TEXT
);
CREATE TABLE IF NOT EXISTS kept_array (
    settings TEXT, rows TEXT, size INT, mtime_ns INT, inode INT
);
"""


DECODE = caches.Kind("ingest", "decode cache", "IMGPIPE_DECODE_CACHE", "decoding every file")


def signature(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


class Kept(NamedTuple):
    """The last images.npy ingest wrote with these settings, memory-mapped."""

    path: Path
    array: np.ndarray
    results: list[Decoded]  # row i's: its pixels (a view of `array`) and its source facts

    @property
    def hashes(self) -> list[str]:
        return [result.sha256 for result in self.results]


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
            self.connection = caches.connect(path, DECODE, SCHEMA)

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
        """Cached results; those of the rows of `kept` come from it, not from SQLite."""
        if self.connection is None:
            return {}
        wanted = set(hashes)
        found = {r.sha256: r for r in kept.results if r.sha256 in wanted} if kept else {}
        query = (
            "SELECT sha256, pixels, width, height, format, mode, reason FROM results "
            "WHERE settings = ? AND sha256 IN ({})"
        )
        rest = sorted(wanted - found.keys())
        for row in caches.select_in(self.connection, query, self.settings_key, rest):
            found[row[0]] = Decoded(*row)
        return found

    def kept(self) -> Kept | None:
        """The kept images.npy for these settings, unless it is missing or was changed."""
        if self.connection is None:
            return None
        row = self.connection.execute(
            "SELECT rows, size, mtime_ns, inode FROM kept_array WHERE settings = ?",
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
        rows = enumerate(json.loads(row[0]))
        return Kept(
            path, array, [Decoded(sha256, array[i], *facts) for i, (sha256, *facts) in rows]
        )

    def keep(self, images: Path, manifest: list[store.ManifestRow]) -> None:
        """Keep the images.npy just written, whose rows `manifest` describes."""
        if self.connection is None or not self._may_replace_kept():
            return
        files.link_or_copy(images, self.kept_path)
        # The facts travel with the rows: a re-run then reads no row of `results` for them.
        rows = [[r.sha256, r.width, r.height, r.format, r.mode] for r in manifest]
        with self.connection:
            self.connection.execute("DELETE FROM kept_array")
            self.connection.execute(
                "INSERT INTO kept_array VALUES (?, ?, ?, ?, ?)",
                (self.settings_key, json.dumps(rows), *signature(self.kept_path.stat())),
            )

    def _may_replace_kept(self) -> bool:
        """Whether the kept array's path is free, or this cache has kept an array there
        (which may have been edited since: it is still the cache's own file)."""
        kept_before = self.connection.execute("SELECT 1 FROM kept_array").fetchone()
        return kept_before is not None or not self.kept_path.exists()

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
