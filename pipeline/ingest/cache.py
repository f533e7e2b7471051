"""Ingest's decode cache: lets a re-run skip every file it has already decoded.

One SQLite file, made and guarded as pipeline/caches.py says. Entries are keyed
by the file's content hash and the ingest settings, so a hit is exactly what
decoding would give. A second table maps a file's stat signature (size, mtime,
inode) to its hash, like git's index, so unchanged files are not even read.
Deleted, the next run decodes everything again.

Beside it, for each ingest settings, the shards of images ingest wrote last with them
are kept (hard links to the interim's, or copies across file systems), with each
row's hash and source facts and each file's stat signature: a re-run takes known
images from them, and links back every shard whose images are the same, in place of
writing it again; after 1% new images, about 1% is written. Once kept, an image's
pixels leave SQLite, which then holds only those decoded since (a killed run's, or
images no kept shard holds): the kept shards are the cache's one copy. A kept shard
that changed (edited in place) or went is not trusted, and its images are decoded
again; they can be deleted any time.
"""

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from pipeline import caches, files, shards, store
from pipeline.ingest.decode import Decoded
from pipeline.ingest.pixels import Located, Spill

# `decoded` held the results with pixels before the other columns, `kept` the kept
# rows' hashes without their facts, `kept_array` one kept images.npy, `kept_shards` one
# settings' shards; caches made then are dropped rather than read.
SCHEMA = """
DROP TABLE IF EXISTS decoded;
DROP TABLE IF EXISTS kept;
DROP TABLE IF EXISTS kept_array;
DROP TABLE IF EXISTS kept_shards;
CREATE TABLE IF NOT EXISTS results (
    settings TEXT, sha256 TEXT, width INT, height INT, format TEXT, mode TEXT, reason TEXT,
    pixels BLOB, PRIMARY KEY (settings, sha256)
);
CREATE TABLE IF NOT EXISTS hashes (
    path TEXT PRIMARY KEY, size INT, mtime_ns INT, inode INT, sha256 TEXT
);
CREATE TABLE IF NOT EXISTS kept_sets (
    settings TEXT PRIMARY KEY, rows TEXT, shards TEXT
);
"""


def kept_folder(cache: Path, settings_key: str) -> Path:
    """Where the cache file `cache` keeps the shards of one settings: a folder named by a
    digest of them, in the folder beside the file (decoded.images/ beside decoded.sqlite)."""
    return cache.with_suffix(".images") / hashlib.sha256(settings_key.encode()).hexdigest()[:16]


def in_kept_shard(result: Decoded) -> bool:
    """Whether a cached result's pixels left SQLite for a kept shard (accepted images
    have pixels, quarantined ones a reason)."""
    return result.pixels is None and result.reason is None


DECODE = caches.Kind("ingest", "decode cache", "IMGPIPE_DECODE_CACHE", "decoding every file")


def signature(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


class Kept(NamedTuple):
    """The shards of images ingest wrote last with these settings."""

    array: shards.Rows  # their rows, in order
    results: list[Decoded]  # row i's source facts, its pixels row i of `array`

    @property
    def hashes(self) -> list[str]:
        return [result.sha256 for result in self.results]

    def reusable(self, cut: list[shards.Shard], hashes: list[str]) -> dict[str, Path]:
        """The kept file of each shard of `cut` (rows of `hashes`) whose images it holds."""
        kept = {shard.name: shard for shard in self.array.shards}
        mine = self.hashes
        return {
            shard.name: shards.path(self.array.folder, shard.name)
            for shard in cut
            if (old := kept.get(shard.name)) is not None
            and mine[old.start : old.stop] == hashes[shard.start : shard.stop]
        }


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

    def lookup(
        self, hashes: Iterable[str], kept: Kept | None = None, spill: Spill | None = None
    ) -> dict[str, Decoded]:
        """Cached results; those of the rows of `kept` come from it, not from SQLite, and
        the pixels of the others go to `spill` as they are read, when one is given. An
        image whose pixels went to a kept shard that is no longer trusted is not found."""
        if self.connection is None:
            return {}
        wanted = set(hashes)
        found = {r.sha256: r for r in kept.results if r.sha256 in wanted} if kept else {}
        for result in self._results(sorted(wanted - found.keys())):
            if in_kept_shard(result):
                continue
            if spill is not None and result.reason is None:
                result = result._replace(pixels=spill.append(result.pixels))
            found[result.sha256] = result
        return found

    def cached(self, sha256: str) -> Decoded | None:
        """The cached result of one file's content, as SQLite holds it: a worker's lookup,
        whose pixels may be in a kept shard (in_kept_shard), which the main process reads."""
        return next(self._results([sha256]), None) if self.connection else None

    def _results(self, hashes: list[str]) -> Iterator[Decoded]:
        query = (
            "SELECT sha256, pixels, width, height, format, mode, reason FROM results "
            "WHERE settings = ? AND sha256 IN ({})"
        )
        for row in caches.execute_in(self.connection, query, self.settings_key, hashes):
            yield Decoded(*row)

    def kept(self) -> Kept | None:
        """The kept shards for these settings that are as they were kept; those missing
        or changed are left out."""
        if self.connection is None:
            return None
        row = self.connection.execute(
            "SELECT rows, shards FROM kept_sets WHERE settings = ?", (self.settings_key,)
        ).fetchone()
        if row is None:
            return None
        rows, kept = json.loads(row[0]), json.loads(row[1])
        cut, trusted, start = [], [], 0
        for name, count, *stat in kept:
            start += count
            try:
                if signature(shards.path(self.kept_path, name).stat()) != tuple(stat):
                    continue
            except FileNotFoundError:
                continue
            cut.append(shards.Shard(name, len(trusted), len(trusted) + count))
            trusted += rows[start - count : start]
        array = shards.Rows(self.kept_path, cut)
        return Kept(
            array,
            [Decoded(sha, Located(array, i), *facts) for i, (sha, *facts) in enumerate(trusted)],
        )

    def keep(self, images: shards.Rows, manifest: list[store.ManifestRow]) -> None:
        """Keep the shards of images just written, whose rows `manifest` describes, in
        place of those these settings kept before; their pixels then leave SQLite."""
        if self.connection is None or not self._may_replace_kept():
            return
        before = self.connection.execute(
            "SELECT shards FROM kept_sets WHERE settings = ?", (self.settings_key,)
        ).fetchone()
        for name, *_ in json.loads(before[0]) if before else []:
            shards.path(self.kept_path, name).unlink(missing_ok=True)  # ours: recorded
        kept = []
        for shard in images.shards:
            target = shards.path(self.kept_path, shard.name)
            files.link_or_copy(shards.path(images.folder, shard.name), target)
            kept.append([shard.name, shard.stop - shard.start, *signature(target.stat())])
        # The facts travel with the rows: a re-run then reads no row of `results` for them.
        rows = [[r.sha256, r.width, r.height, r.format, r.mode] for r in manifest]
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO kept_sets VALUES (?, ?, ?)",
                (self.settings_key, json.dumps(rows), json.dumps(kept)),
            )
            drop = "UPDATE results SET pixels = NULL WHERE settings = ? AND sha256 IN ({})"
            hashes = [row.sha256 for row in manifest]
            caches.execute_in(self.connection, drop, self.settings_key, hashes)
        # The freed pages off the disk; only a script steps the pragma to its end.
        self.connection.executescript("PRAGMA incremental_vacuum;")

    def _may_replace_kept(self) -> bool:
        """Whether this settings' kept shards' folder is free, or holds this cache's kept
        shards (which may have been edited since: they are still the cache's own files),
        and no file is in the place of the folder of them all."""
        if self.kept_path.parent.exists() and not self.kept_path.parent.is_dir():
            return False
        kept_before = self.connection.execute(
            "SELECT 1 FROM kept_sets WHERE settings = ?", (self.settings_key,)
        ).fetchone()
        return kept_before is not None or not self.kept_path.exists()

    @property
    def kept_path(self) -> Path:
        return kept_folder(self.path, self.settings_key)

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
