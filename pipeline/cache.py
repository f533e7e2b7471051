"""Ingest's decode cache: lets a re-run skip every file it has already decoded.

DVC deletes a stage's outputs before running it again, so the cache lives
outside them, in one SQLite file. Entries are keyed by the file's content
hash and the ingest settings, so a hit is exactly what decoding would give.
A second table maps a file's stat signature (size, mtime, inode) to its hash,
like git's index, so unchanged files are not even read. SQLite commits whole
transactions, so a killed run never leaves a half-written entry, and the file
can be deleted at any time: the next run decodes everything again.
"""

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS decoded (
    settings TEXT, sha256 TEXT, pixels BLOB, width INT, height INT, format TEXT, mode TEXT,
    reason TEXT, PRIMARY KEY (settings, sha256)
);
CREATE TABLE IF NOT EXISTS hashes (
    path TEXT PRIMARY KEY, size INT, mtime_ns INT, inode INT, sha256 TEXT
);
"""


class Decoded(NamedTuple):
    """What decoding one file gave: pixels and source facts, or the reason it failed."""

    sha256: str
    pixels: bytes | None  # (H, W, C) uint8 in C order; None when rejected
    width: int = 0  # as stored in the file, before orientation and resizing
    height: int = 0
    format: str = ""
    mode: str = ""
    reason: str | None = None  # why the file was quarantined


def signature(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


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

    def lookup(self, hashes: Iterable[str]) -> dict[str, Decoded]:
        if self.connection is None:
            return {}
        found, wanted = {}, sorted(set(hashes))
        for start in range(0, len(wanted), 500):  # one query per batch, not per file
            batch = wanted[start : start + 500]
            query = (
                "SELECT * FROM decoded WHERE settings = ? AND sha256 IN "
                f"({', '.join('?' * len(batch))})"
            )
            for row in self.connection.execute(query, (self.settings_key, *batch)):
                found[row[1]] = Decoded(*row[1:])
        return found

    def store(self, results: Iterable[Decoded]) -> None:
        if self.connection is None:
            return
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO decoded VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.settings_key, *result) for result in results],
            )

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
