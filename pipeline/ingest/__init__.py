"""Ingest: a folder of class sub-folders of images (or of train/, val/ and test/ folders of
class sub-folders) -> uint8 arrays and a manifest.

Every file under the raw folder gets exactly one verdict:

- accepted: decoded, oriented, converted and resized; a row of the images' shards;
- quarantined: not a usable image (corrupt, truncated, empty, not an image,
  a decompression bomb, a link out of the raw folder), with a reason;
- duplicate: the same bytes as an accepted file of the same class;
- conflict: the same bytes under two or more classes, so no label can be trusted;
- ignored: hidden files and folders, and files that are known not to be images.

`run` is the stage; its parts, one job each: scan (the walk of the raw folder),
decode (one file's bytes -> pixels), workers (decoding on worker processes),
cache (the decode cache), verdicts and summary.
"""

import dataclasses
import time
from pathlib import Path

from pipeline import caches, files, store
from pipeline.errors import PipelineError
from pipeline.ingest import scan as scanning
from pipeline.ingest.cache import DECODE, DecodeCache, Kept, in_kept_shard
from pipeline.ingest.decode import Decoded, settings_key
from pipeline.ingest.pixels import Spill
from pipeline.ingest.verdicts import decide
from pipeline.ingest.workers import decode_in_workers
from pipeline.params import CHANNELS, Ingest

COMMIT_SECONDS = 0.5  # the most decoding work a killed run loses from the cache
COMMIT_BYTES = 32 << 20  # the most pixels waiting in memory for the cache


def run(
    raw: Path, out: Path, settings: Ingest, workers: int = 1, cache_path: Path | None = None
) -> store.Interim:
    """Give every file under `raw` its verdict and write the outputs to `out`; they do not
    depend on `workers` or the cache. A second ingest into the same `out` waits."""
    with files.exclusive(out, "ingest"):
        return caches.use(
            cache_path, DECODE, lambda path: _write(raw, out, settings, workers, path)
        )


def _write(
    raw: Path, out: Path, settings: Ingest, workers: int, cache_path: Path | None
) -> store.Interim:
    with Spill(out, (*settings.image_size, CHANNELS[settings.color_mode])) as spill:
        interim, kept = _verdicts(raw, settings, workers, cache_path, spill)
        if not interim.manifest:
            counts = ", ".join(f"{n} {v}" for v, n in interim.report["files"].items() if n)
            raise PipelineError(
                f"no usable images under {raw} ({counts or 'no files'}); "
                f"expected {raw}/<class>/<image files>, or {raw}/train/<class>/<image files> "
                "beside val/ and test/"
            )
        hashes = [row.sha256 for row in interim.manifest]
        cut = store.interim_shards(interim.manifest)
        store.write_interim(out, interim, kept.reusable(cut, hashes) if kept else {})
    written = store.interim_images(out, interim.manifest)  # the spill ended with the write
    if cache_path is not None:  # keep what was written for the next run: links, not copies
        cache = DecodeCache(cache_path, settings_key(settings))
        try:
            cache.keep(written, interim.manifest)
        finally:
            cache.close()
    return dataclasses.replace(interim, images=written)


def _verdicts(
    raw: Path, settings: Ingest, workers: int, cache_path: Path | None, spill: Spill
) -> tuple[store.Interim, Kept | None]:
    """Every file's verdict, and the cache's kept shards, whose files are linked where they
    hold a shard's images (when nothing changed, every shard: nothing is written). Pixels
    not in the kept shards wait in `spill`."""
    found = scanning.scan(raw)
    key = settings_key(settings)
    # The cache knows files by absolute path, however the raw folder is reached.
    root = str(raw.resolve())
    absolute = [f"{root}/{candidate.path}" for candidate in found.candidates]
    cache = DecodeCache(cache_path, key)
    try:
        kept = cache.kept()
        signatures = {path: c.signature for path, c in zip(absolute, found.candidates, strict=True)}
        known = cache.known_hashes(signatures)
        hits = cache.lookup(known.values(), kept, spill)
        results = {path: hits[known[path]] for path in absolute if known.get(path) in hits}
        todo = [path for path in absolute if path not in results]
        if todo:
            results |= _decode_new(todo, settings, cache, workers, spill, kept)
        cache.remember_hashes(
            (path, signatures[path], results[path].sha256)
            for path in absolute
            if path not in known and results[path].sha256
        )
    finally:
        cache.close()
    return decide(found, [results[path] for path in absolute], settings, kept), kept


def _decode_new(
    todo: list[str],
    settings: Ingest,
    cache: DecodeCache,
    workers: int,
    spill: Spill,
    kept: Kept | None,
) -> dict[str, Decoded]:
    """Decode the files the stat signatures did not vouch for, with a progress bar; their
    pixels go to `spill` (and, a commit at a time, to the cache). A file whose content the
    cache holds in a kept shard (touched, renamed) is taken from `kept`, or decoded again
    when that shard is no longer trusted."""
    from tqdm import tqdm  # only runs that decode pay for importing it

    in_kept = {result.sha256: result for result in kept.results} if kept else {}
    results, fresh, waiting, again = {}, [], 0, []
    decoded = decode_in_workers([Path(p) for p in todo], settings, cache, workers)
    committed = time.monotonic()
    with tqdm(total=len(todo), desc="ingest", unit="img", disable=None) as progress:
        for path, result in zip(todo, decoded, strict=True):
            if in_kept_shard(result):
                if result.sha256 in in_kept:
                    results[path] = in_kept[result.sha256]
                else:
                    again.append(path)
                progress.update()
                continue
            if result.sha256 and cache.path is not None:  # quarantined ones too, with reasons
                fresh.append(result)
                waiting += len(result.pixels or b"")
            if result.reason is None:
                result = result._replace(pixels=spill.append(result.pixels))
            results[path] = result
            # Commit as we go, so a killed run keeps its progress; by time, not by count:
            # each commit waits for the disk (every 128 images cost 8-12% of 5,000 photos);
            # and by bytes, so that fast decoding of large images keeps little in memory.
            if time.monotonic() - committed >= COMMIT_SECONDS or waiting >= COMMIT_BYTES:
                cache.store(fresh)
                fresh.clear()
                committed, waiting = time.monotonic(), 0
            progress.update()
    cache.store(fresh)
    if again:  # decoded this time without asking the cache; kept again when the run ends
        uncached = DecodeCache(None, cache.settings_key)
        results |= _decode_new(again, settings, uncached, workers, spill, None)
    return results
