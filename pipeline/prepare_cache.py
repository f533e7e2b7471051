"""Prepare's cache: each image's near-duplicate descriptors (perceptual hashes and
thumbnail) and the near-duplicate pairs, kept by the image's content hash, so that a
re-run describes only the images it has not seen and searches only those against the
rest. It also keeps which copies of the views (DVC's, over prepare's links) were last
found whole, so that a re-run does not read them again.

One SQLite file, made and guarded as pipeline/caches.py says; deleted, the next run
describes and searches everything again. Descriptors are a function of the ingested
pixels, which are one of the file's bytes (its sha256) and of the ingest settings: they
are keyed by both, with the versions of the code that makes them, so a hit is exactly
what hashing would give. The settings are params.yaml's (dvc.yaml lists them for
prepare): the cache trusts that they made the interim, as `dvc repro` ensures.

The pairs are kept, for each distance, with the images they are complete for (their
sha256, "members"): a run takes the pairs among the members still there from the
cache and searches only the other images, against all, which gives exactly the pairs
of a full search, in its order (a full search it is when half the images are new).

Work grows as: hashing O(new images), the search O(new images x N), memory O(N x
near_duplicates.DESCRIPTOR_BYTES, 128 bytes) for the descriptors, plus each image's
sha256 and the pairs.
"""

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline import caches, near_duplicates, store
from pipeline.ingest.decode import settings_key
from pipeline.params import Ingest

PREPARE = caches.Kind("prepare", "prepare cache", "IMGPIPE_PREPARE_CACHE", "hashing every image")

# An image's descriptors as its hashes' little-endian uint64, then its thumbnail's bytes
# (near_duplicates.DESCRIPTOR_BYTES); members as their sha256, one a line; pairs
# as little-endian int64 (i, j) rows of members, i < j. The last run's images' descriptors
# are also kept in one row, in its members' order, which a run reads at once (200,000
# rows of descriptors cost 1.4 s to fetch one by one). perceptual_hashes held them
# before, keyed by older PHASH_VERSIONs, so none of its rows would be read again: dropped.
# verified_copies holds, per prepared folder, the copies of its views last found whole
# (files.link_or_copy), as JSON.
SCHEMA = """
DROP TABLE IF EXISTS perceptual_hashes;
CREATE TABLE IF NOT EXISTS descriptors (
    settings TEXT, sha256 TEXT, descriptor BLOB, PRIMARY KEY (settings, sha256)
);
CREATE TABLE IF NOT EXISTS descriptor_sets (
    settings TEXT PRIMARY KEY, members TEXT, descriptors BLOB
);
CREATE TABLE IF NOT EXISTS verified_copies (folder TEXT PRIMARY KEY, copies TEXT);
CREATE TABLE IF NOT EXISTS near_duplicate_pairs (
    settings TEXT, distance INT, members TEXT, pairs BLOB, PRIMARY KEY (settings, distance)
);
"""


class CacheFile(NamedTuple):
    """Where prepare's cache is, and the ingest settings the images were made with."""

    path: Path
    ingest: Ingest


class PrepareCache:
    """The descriptors and pairs of one cache key; `path=None` keeps nothing."""

    def __init__(self, path: Path | None, key: str):
        self.key = key
        self.connection = None if path is None else caches.connect(path, PREPARE, SCHEMA)

    def descriptors(self, shas: list[str]) -> dict[str, bytes]:
        """The kept descriptors of each of `shas` there are some of."""
        if self.connection is None:
            return {}
        query = "SELECT sha256, descriptor FROM descriptors WHERE settings = ? AND sha256 IN ({})"
        return dict(caches.execute_in(self.connection, query, self.key, shas))

    def keep_descriptors(self, shas: list[str], descriptors: np.ndarray) -> None:
        """Keep each of `shas`' (N, DESCRIPTOR_BYTES) descriptors (_as_bytes)."""
        if self.connection is None:
            return
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO descriptors VALUES (?, ?, ?)",
                [
                    (self.key, sha, row.tobytes())
                    for sha, row in zip(shas, descriptors, strict=True)
                ],
            )

    def descriptor_set(self) -> tuple[list[str], np.ndarray]:
        """The members of the last run and their (M, DESCRIPTOR_BYTES) descriptors."""
        row = None
        if self.connection is not None:
            query = "SELECT members, descriptors FROM descriptor_sets WHERE settings = ?"
            row = self.connection.execute(query, (self.key,)).fetchone()
        if row is None:
            return [], np.empty((0, near_duplicates.DESCRIPTOR_BYTES), np.uint8)
        members = row[0].split("\n") if row[0] else []
        descriptors = np.frombuffer(row[1], np.uint8)
        descriptors = descriptors.reshape(len(members), near_duplicates.DESCRIPTOR_BYTES)
        return members, descriptors

    def keep_descriptor_set(self, shas: list[str], descriptors: np.ndarray) -> None:
        if self.connection is None:
            return
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO descriptor_sets VALUES (?, ?, ?)",
                (self.key, "\n".join(shas), descriptors.tobytes()),
            )

    def pairs(self, max_distance: int) -> tuple[list[str], np.ndarray] | None:
        """The members and every pair among them within `max_distance`, if kept."""
        if self.connection is None:
            return None
        row = self.connection.execute(
            "SELECT members, pairs FROM near_duplicate_pairs WHERE settings = ? AND distance = ?",
            (self.key, max_distance),
        ).fetchone()
        if row is None:
            return None
        members = row[0].split("\n") if row[0] else []
        return members, np.frombuffer(row[1], "<i8").reshape(-1, 2)

    def keep_pairs(self, max_distance: int, shas: list[str], pairs: np.ndarray) -> None:
        """Keep `pairs`, every one among `shas` within `max_distance`, in place of those kept."""
        if self.connection is None:
            return
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO near_duplicate_pairs VALUES (?, ?, ?, ?)",
                (self.key, max_distance, "\n".join(shas), pairs.astype("<i8").tobytes()),
            )

    def verified_copies(self, folder: Path) -> dict[str, str]:
        """The copies in `folder` last found to hold their sources' bytes, with the
        signature of both files then."""
        if self.connection is None:
            return {}
        query = "SELECT copies FROM verified_copies WHERE folder = ?"
        row = self.connection.execute(query, (str(folder.absolute()),)).fetchone()
        return {} if row is None else json.loads(row[0])

    def keep_verified_copies(self, folder: Path, copies: dict[str, str]) -> None:
        """`copies` in place of those kept for `folder`, but those no longer there."""
        if self.connection is None:
            return
        copies = {
            target: signature for target, signature in copies.items() if Path(target).exists()
        }
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO verified_copies VALUES (?, ?)",
                (str(folder.absolute()), json.dumps(copies, sort_keys=True)),
            )

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def cache_key(ingest: Ingest) -> str:
    """Everything but the file's bytes that decides an image's descriptors."""
    phash = f"phash={near_duplicates.PHASH_VERSION} numpy={np.__version__}"
    return f"{settings_key(ingest)} {phash}"


def near_duplicates_of(
    interim: store.Interim, rows: int, max_distance: int, cache: CacheFile | None
) -> np.ndarray:
    """near_duplicates.near_duplicate_pairs of descriptors(interim.images, rows) within
    max_distance, from the cache where it can."""
    if max_distance < 0:  # off: no hash is needed
        return np.empty((0, 2), np.int64)
    images, shas = interim.images, [row.sha256 for row in interim.manifest]
    path, key = (None, "") if cache is None else (cache.path, cache_key(cache.ingest))

    def work(path: Path | None) -> np.ndarray:
        with contextlib.closing(PrepareCache(path, key)) as kept:
            found = descriptors_of(images, shas, rows, kept)
            return pairs_of(found.hashes, shas, max_distance, kept, found.thumbnails)

    return caches.use(path, PREPARE, work)


def with_verified_copies(
    folder: Path, cache: CacheFile | None, work: Callable[[dict[str, str] | None], None]
) -> None:
    """work(known): `known` the copies in `folder` last found whole (files.link_or_copy),
    from the cache, kept there after with those work found; None without a cache. Costs a
    read and a write of one row of N / 32 entries."""

    def run(path: Path | None) -> None:
        with contextlib.closing(PrepareCache(path, "")) as kept:
            known = None if path is None else kept.verified_copies(folder)
            work(known)
            if known is not None:
                kept.keep_verified_copies(folder, known)

    caches.use(None if cache is None else cache.path, PREPARE, run)


def descriptors_of(
    images: np.ndarray, shas: list[str], rows: int, cache: PrepareCache
) -> near_duplicates.Descriptors:
    """Each image's descriptors: the last run's set's, the cache's of the others, or made
    from its pixels (which alone are read) and kept."""
    members, kept = cache.descriptor_set()
    position = {sha: i for i, sha in enumerate(members)}
    at = np.array([position.get(sha, -1) for sha in shas], np.int64)
    rest = np.flatnonzero(at < 0)
    found = cache.descriptors([shas[i] for i in rest])
    known = np.zeros((len(shas), near_duplicates.DESCRIPTOR_BYTES), np.uint8)
    known[at >= 0] = kept[at[at >= 0]]
    hit = np.array([shas[i] in found for i in rest], bool)
    if hit.any():
        joined = b"".join(found[shas[i]] for i in rest[hit])
        known[rest[hit]] = np.frombuffer(joined, np.uint8).reshape(-1, known.shape[1])
    todo = rest[~hit]
    known[todo] = _as_bytes(near_duplicates.descriptors(images, rows, todo))
    cache.keep_descriptors([shas[i] for i in todo], known[todo])
    if members != shas:
        cache.keep_descriptor_set(shas, known)
    hash_bytes = near_duplicates.VARIANTS * 32
    hashes = known[:, :hash_bytes].copy().view("<u8").astype(np.uint64)
    return near_duplicates.Descriptors(
        hashes.reshape(len(shas), near_duplicates.VARIANTS, 4), known[:, hash_bytes:].copy()
    )


def _as_bytes(found: near_duplicates.Descriptors) -> np.ndarray:
    """(N, DESCRIPTOR_BYTES) uint8: each image's descriptors as the cache keeps them."""
    words = near_duplicates.VARIANTS * 4
    hashes = found.hashes.astype("<u8").reshape(len(found.hashes), words).view(np.uint8)
    return np.concatenate([hashes, found.thumbnails], axis=1)


def pairs_of(
    hashes: np.ndarray,
    shas: list[str],
    max_distance: int,
    cache: PrepareCache,
    thumbnails: np.ndarray | None = None,
) -> np.ndarray:
    """near_duplicates.near_duplicate_pairs(hashes, max_distance, thumbnails=thumbnails):
    the cache's pairs among its members, and those of the other images searched against
    all; kept for the next run."""
    if len(set(shas)) < len(shas):  # two rows of one content hash, which ingest never makes
        return near_duplicates.near_duplicate_pairs(hashes, max_distance, thumbnails=thumbnails)
    known, new = _known(shas, cache.pairs(max_distance))
    found = near_duplicates.near_duplicate_pairs_given(
        hashes, known, new, max_distance, thumbnails=thumbnails
    )
    cache.keep_pairs(max_distance, shas, found)
    return found


def _known(
    shas: list[str], kept: tuple[list[str], np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The kept pairs whose two members are still there, as rows i < j of `shas`, and the
    rows that are not members (sorted)."""
    if kept is None:
        return np.empty((0, 2), np.int64), np.arange(len(shas))
    members, kept_pairs = kept
    position = {sha: i for i, sha in enumerate(shas)}
    rows = np.array([position.get(sha, -1) for sha in members], np.int64)  # -1: removed
    known = rows[kept_pairs]
    known = np.sort(known[(known >= 0).all(axis=1)], axis=1)  # rows keep no member order
    member = np.zeros(len(shas), bool)
    member[rows[rows >= 0]] = True
    return known, np.flatnonzero(~member)
