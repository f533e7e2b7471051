"""Verdicts: per-file decoding results -> the accepted images, their manifest, the
quarantine, duplicates and conflicts, and the report (pure).

The same bytes twice in one class: the first path in sorted order is kept, the
others are duplicates; across split folders the copy in the most test-ward split
is kept (prepare's rule for near-duplicates), so no image is both trained and
tested on, and the run warns. The same bytes under two or more classes: no label
can be trusted, and every copy is a conflict.
"""

from collections import defaultdict

from pipeline import store
from pipeline.ingest.cache import Kept
from pipeline.ingest.decode import Decoded
from pipeline.ingest.pixels import Gathered
from pipeline.ingest.scan import Candidate, Scan, split_named
from pipeline.params import CHANNELS, Ingest

VERDICTS = ("accepted", "quarantined", "duplicate", "conflict", "ignored")


def decide(
    found: Scan, decoded: list[Decoded], settings: Ingest, kept: Kept | None = None
) -> store.Interim:
    """Turn per-file results into verdicts, arrays and the report (pure)."""
    quarantine = list(found.refused)
    usable = defaultdict(list)  # sha256 -> [(candidate, result)], in path order
    for candidate, result in zip(found.candidates, decoded, strict=True):
        if result.reason is None:
            usable[result.sha256].append((candidate, result))
        else:
            quarantine.append(store.QuarantineRow(candidate.path, result.reason))
    quarantine.sort(key=lambda row: row.path)

    accepted, duplicates, leaks = [], [], []
    for sha256, copies in usable.items():
        labels = sorted({candidate.label for candidate, _ in copies})
        if len(labels) > 1:
            duplicates.extend(
                store.DuplicateRow(
                    c.path, c.label, sha256, "conflict", "same image in " + ", ".join(labels)
                )
                for c, _ in copies
            )
            continue
        # The most test-ward copy is kept; sorted is stable, so of equals the first path.
        (chosen, decoding), *others = sorted(copies, key=lambda copy: -_test_ward(copy[0]))
        accepted.append((chosen, decoding))
        duplicates.extend(
            store.DuplicateRow(c.path, c.label, sha256, "duplicate", _same_as(c, chosen))
            for c, _ in others
        )
        leaks.extend(
            (c.path, chosen.path) for c, _ in others if c.given_split != chosen.given_split
        )
    accepted.sort(key=lambda copy: copy[0].path)
    duplicates.sort(key=lambda row: row.path)

    images = stack_pixels([result for _, result in accepted], settings, kept)
    manifest = [
        store.ManifestRow(
            c.path, c.label, r.sha256, r.width, r.height, r.format, r.mode, c.given_split
        )
        for c, r in accepted
    ]
    verdicts = {
        "accepted": [row.path for row in manifest],
        "quarantined": [row.path for row in quarantine],
        "duplicate": [row.path for row in duplicates if row.verdict == "duplicate"],
        "conflict": [row.path for row in duplicates if row.verdict == "conflict"],
        "ignored": found.ignored,
    }
    report = _report(verdicts, found) | {"warnings": _warnings(found, leaks)}
    return store.Interim(images, manifest, quarantine, duplicates, report)


def _test_ward(candidate: Candidate) -> int:
    """0 for train and plain class folders, 1 for val, 2 for test."""
    return store.SPLITS.index(candidate.given_split or "train")


def _same_as(copy: Candidate, kept: Candidate) -> str:
    if copy.given_split == kept.given_split:
        return f"same image as {kept.path}"
    return f"same image as {kept.path}, in another split folder: kept in {kept.given_split} only"


def _warnings(found: Scan, leaks: list[tuple[str, str]]) -> list[str]:
    """The layout's surprises: a class folder named like a split among plain class
    folders, and the same image in two split folders (a leak, removed here); `leaks` are
    (left-out copy, kept copy) paths."""
    warnings = [
        f"class folder '{name}' is named like a split folder; if it holds a split, put every "
        "class folder under train/, val/ and test/ (raw/train/<class>/...), else rename it"
        for name in found.classes
        if not found.split_folders and split_named(name)
    ]
    if leaks:
        copy, kept = leaks[0]
        warnings.append(
            f"{len(leaks)} images are byte for byte in two split folders (first: {copy} and "
            f"{kept}); each is kept in its most test-ward split only, so none is both trained "
            "and tested on; remove the other copies (listed in duplicates.csv)"
        )
    return warnings


def stack_pixels(results: list[Decoded], settings: Ingest, kept: Kept | None = None):
    """The (N, H, W, C) uint8 accepted results' pixels, in order, as an array-like read a
    block at a time from where they wait (pixels.Gathered); the kept shards' rows
    themselves when they are exactly these images."""
    if kept is not None and [result.sha256 for result in results] == kept.hashes:
        return kept.array  # the same images in the same order: nothing to copy
    shape = (*settings.image_size, CHANNELS[settings.color_mode])
    return Gathered([result.pixels for result in results], shape)


def _report(verdicts: dict[str, list[str]], found: Scan) -> dict:
    """Counts per verdict, and per verdict for each class folder."""
    per_class = {name: dict.fromkeys(VERDICTS, 0) for name in found.classes}
    for verdict, paths in verdicts.items():
        for path in paths:
            name = found.class_of(path)
            if name in per_class:
                per_class[name][verdict] += 1
    return {
        "files": {verdict: len(verdicts[verdict]) for verdict in VERDICTS},
        "classes": per_class,
        "split_folders": found.split_folders,
    }
