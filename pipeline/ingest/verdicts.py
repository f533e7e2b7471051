"""Verdicts: per-file decoding results -> the accepted images, their manifest, the
quarantine, duplicates and conflicts, and the report (pure).

The same bytes twice in one class: the first path in sorted order is kept, the
others are duplicates. The same bytes under two or more classes: no label can be
trusted, and every copy is a conflict.
"""

from collections import defaultdict

import numpy as np

from pipeline import store
from pipeline.ingest.cache import Kept
from pipeline.ingest.decode import Decoded
from pipeline.ingest.scan import Scan
from pipeline.params import CHANNELS, Ingest

VERDICTS = ("accepted", "quarantined", "duplicate", "conflict", "ignored")


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
    # Row by row into one array: b"".join of the rows took twice as long.
    images = np.empty((len(results), height * width * CHANNELS[settings.color_mode]), np.uint8)
    for row, result in zip(images, results, strict=True):
        row[:] = np.frombuffer(result.pixels, np.uint8)  # bytes, or a row of the kept array
    return images.reshape(-1, height, width, CHANNELS[settings.color_mode])


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
