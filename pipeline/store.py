"""The on-disk format of every stage's data, in one place (what train saves beside a
model: pipeline/model_record.py).

Arrays are plain `.npy` files (uint8 pixels, float32 labels), no pickles, cut into
shards (pipeline/shards.py). Tables are CSV with a fixed header, small records JSON
(pipeline/tables.py).
Every file is written whole or not at all (pipeline/files.py), so a killed stage
never leaves a file that looks complete but is not.
"""

import dataclasses
import hashlib
import io
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline import files, shards, tables
from pipeline.errors import PipelineError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One accepted image; its pixels are row `i` of the images array."""

    table: ClassVar[str] = "manifest/ shard"

    path: str  # relative to the raw data folder, with '/' separators
    label: str
    sha256: str  # of the file's bytes
    width: int  # as stored in the file, before orientation and resizing
    height: int
    format: str
    mode: str
    # The split of the folder it is in (data/raw/<split folder>/<class>/...): train, val or
    # test; "" in plain class folders. Ingest reads the layout once, so prepare need not.
    given_split: str = ""


@dataclasses.dataclass(frozen=True)
class QuarantineRow:
    table: ClassVar[str] = "quarantine.csv"

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class DuplicateRow:
    """A readable image left out because its bytes appear elsewhere."""

    table: ClassVar[str] = "duplicates.csv"

    path: str
    label: str
    sha256: str
    verdict: str  # "duplicate" (same class as the kept copy) or "conflict" (other classes)
    detail: str


@dataclasses.dataclass(frozen=True)
class SplitRow:
    table: ClassVar[str] = "splits/ shard"

    path: str
    sha256: str
    label: str
    split: str
    group: str  # sha256 of the first member of its near-duplicate group; "" when alone
    moved_from: str  # the split its own hash gives, when its group moved it; else ""


@dataclasses.dataclass(frozen=True)
class Interim:
    """What ingest produces: pixels plus one manifest row per image."""

    images: np.ndarray  # (N, H, W, C) uint8
    manifest: list[ManifestRow]
    quarantine: list[QuarantineRow]
    duplicates: list[DuplicateRow]
    report: dict


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's model inputs and labels. Consumers rely only on what an array-like
    reader gives (len, .shape, .dtype, indexing by a sorted array of row numbers,
    np.asarray), never on the files behind it, which read_split and write_processed know."""

    views: list[np.ndarray]  # one (N, H, W, C) uint8 array per prepare.views entry
    labels: np.ndarray  # (N, 1) 0/1 for binary labels, else (N, K) one-hot; float32


@dataclasses.dataclass(frozen=True)
class Processed:
    """What prepare decides before it writes a pixel: each image's split (rows) and labels,
    the label map and the report. The views go from the ingested images to each split's
    files block by block (write_processed); read_split reads them back."""

    class_indices: dict[str, int]  # class name -> index, sorted by name
    rows: list[SplitRow]  # one per image, in the manifest's order
    labels: np.ndarray  # one row per image, in the same order: as Split.labels
    report: dict


# What ingest writes in its folder; dvc.yaml lists the same paths (tests/test_dvc_yaml.py
# checks). Pixels and manifest rows are sharded (pipeline/shards.py), shards.csv their
# order; images/<shard>.npy holds rows of (H, W, C) uint8, manifest/<shard>.csv their rows.
INTERIM_FILES = (
    "images",
    "manifest",
    "shards.csv",
    "quarantine.csv",
    "duplicates.csv",
    "report.json",
)
# Prepare's folder, one DVC output as a whole, cut into the interim's shards: per shard
# splits/ (SplitRows), labels/ (as Split.labels) and one view<i>/ per view, whose files
# are the ingested images' own, hard-linked, where a view is the ingested image.
PROCESSED_FILES = ("shards.csv", "splits", "labels", "view*", "labels.json")


def interim_shards(manifest: list[ManifestRow]) -> list[shards.Shard]:
    """The interim's shards, which prepare's mirror: a shard never spans two class or
    split folders."""
    hashes = [row.sha256 for row in manifest]
    return shards.cut(hashes, [f"{row.given_split}/{row.label}" for row in manifest])


def interim_images(folder: Path, manifest: list[ManifestRow]) -> shards.Rows:
    """The images ingest wrote in `folder`, whose rows `manifest` describes."""
    return shards.Rows(folder / "images", interim_shards(manifest))


def write_interim(folder: Path, interim: Interim, reuse: dict[str, Path] | None = None) -> None:
    """Write ingest's outputs; a shard named in `reuse`, whose file there holds exactly its
    pixels, is linked (or copied) from it instead of written again."""
    _clear(folder, INTERIM_FILES)
    cut = interim_shards(interim.manifest)
    reuse = reuse or {}
    written = [shard for shard in cut if shard.name not in reuse]
    shards.write_arrays(folder / "images", written, lambda a, b: interim.images[a:b])
    for name, path in reuse.items():
        files.link_or_copy(path, shards.path(folder / "images", name))
    _write_sharded(folder / "manifest", cut, ManifestRow, interim.manifest)
    tables.write_rows(folder / "quarantine.csv", QuarantineRow, interim.quarantine)
    tables.write_rows(folder / "duplicates.csv", DuplicateRow, interim.duplicates)
    shards.write_index(folder / "shards.csv", cut)
    files.write_json(folder / "report.json", interim.report)  # last: its presence means complete


def read_interim(folder: Path) -> Interim:
    cut = _shards_of(folder)
    with tables.parsing(folder / "images"):
        images = shards.Rows(folder / "images", cut)
    return Interim(
        images=images,
        manifest=_read_sharded(folder / "manifest", cut, ManifestRow),
        quarantine=tables.read_rows(folder / "quarantine.csv", QuarantineRow),
        duplicates=tables.read_rows(folder / "duplicates.csv", DuplicateRow),
        report=tables.read_json(folder / "report.json"),
    )


def write_processed(
    folder: Path,
    processed: Processed,
    cut: list[shards.Shard],
    views: list,
    known: dict[str, str] | None = None,
) -> None:
    """Prepare's outputs, in the shards `cut`. Each view is shards.Rows already cut so (the
    ingested images: their files are linked), or a function giving rows start:stop of it,
    called a shard at a time, so that no view is ever whole in memory.

    The folder is kept between runs (dvc.yaml: persist): what a shard's files would be
    written with is compared with what they hold, and only those that differ are written,
    so a re-run after a 1% change writes about 1% of the files (a view that is not the
    ingested image is still made for every shard: O(N) resizing, no more writing). `known`
    holds the views' copies last found whole (files.link_or_copy)."""
    # First: from here until it is written again the folder is refused as incomplete.
    (folder / "labels.json").unlink(missing_ok=True)
    made = {f"view{index}" for index in range(len(views))}
    for stale in [path for path in folder.glob("view*") if path.name not in made]:
        _clear(folder, [stale.name])
        with suppress(OSError):  # it holds what this project did not write: left
            stale.rmdir()
    _clear(folder, PROCESSED_FILES, keep={shard.name for shard in cut})
    _write_sharded(folder / "splits", cut, SplitRow, processed.rows)
    shards.write_arrays(folder / "labels", cut, lambda a, b: processed.labels[a:b])
    for index, view in enumerate(views):
        if isinstance(view, shards.Rows):
            shards.link_arrays(view.folder, folder / f"view{index}", cut, known)
        else:
            shards.write_arrays(folder / f"view{index}", cut, view)
    shards.write_index(folder / "shards.csv", cut)
    # Last: a run killed before it has files in place, never labels.json
    # (tests/test_interrupt.py kills it there), and read_split refuses it.
    files.write_json(folder / "labels.json", processed.class_indices)


def write_splits(folder: Path, splits: dict[str, Split], class_indices: dict[str, int]) -> None:
    """A prepared folder that holds `splits` given in memory (tests, benchmarks), as
    read_split reads them; rows in the order of `splits`, cut every SHARD_ROWS."""
    names = [name for name, split in splits.items() for _ in range(len(split.labels))]
    rows = [
        SplitRow(f"{name}/{i}", hashlib.sha256(str(i).encode()).hexdigest(), "", name, "", "")
        for i, name in enumerate(names)
    ]
    cut = shards.cut([row.sha256 for row in rows], names)
    labels = np.concatenate([split.labels for split in splits.values()])
    processed = Processed(class_indices, rows, labels, {})
    count = len(next(iter(splits.values())).views)
    whole = [np.concatenate([split.views[i] for split in splits.values()]) for i in range(count)]
    views = [lambda a, b, view=view: view[a:b] for view in whole]
    write_processed(folder, processed, cut, views)


def read_split(folder: Path, name: str | None) -> Split:
    """The split `name`, or with None every image (audit), in the manifest's order."""
    if not (folder / "labels.json").exists():
        raise PipelineError(
            f"{folder} is not a complete prepared folder (no labels.json: prepare was "
            "interrupted, or never ran); run prepare again (dvc repro)"
        )
    cut = _shards_of(folder)
    rows = _read_sharded(folder / "splits", cut, SplitRow)
    chosen = np.flatnonzero([name in (None, row.split) for row in rows])
    views = []
    while (path := folder / f"view{len(views)}").is_dir():
        with tables.parsing(path):
            views.append(shards.Rows(path, cut, chosen))
    with tables.parsing(folder / "labels"):
        labels = shards.Rows(folder / "labels", cut, chosen)[:]
    return Split(views=views, labels=labels)


def read_split_rows(
    folder: Path, read_text: Callable[[str], str] | None = None, where: str = ""
) -> list[SplitRow]:
    """Every image's split row, in the manifest's order. `read_text` reads a file of the
    folder, by its path, from elsewhere (a git revision, for diff), `where` naming it."""
    read = read_text or _read_text
    cut = _shards_of(folder, read, where)
    return _read_sharded(folder / "splits", cut, SplitRow, read, where)


SHARDED = (".npy", ".csv")  # what a shard folder holds


def _clear(folder: Path, names, keep: set[str] = frozenset()) -> None:
    """A stage's previous outputs out of `folder`: its files, and in its shard folders the
    shard files but those of the shards named in `keep`, with what killed writes left;
    nothing else."""
    files.clear_outputs(folder, [])  # makes the folder, clears its leftovers
    for pattern in names:
        for path in folder.glob(pattern):
            if path.is_dir():
                stale = [
                    p.name for p in path.glob("*") if p.suffix in SHARDED and p.stem not in keep
                ]
                files.clear_outputs(path, stale)
            else:
                path.unlink()


def _read_text(path: str) -> str:  # as a stage's tables are written
    return Path(path).read_text(encoding="utf-8")


def _shards_of(folder: Path, read: Callable[[str], str] = _read_text, where: str = ""):
    """The shards folder/shards.csv lists; `read` and `where` as read_split_rows's."""
    with tables.parsing(f"{folder / 'shards.csv'}{where}"):
        return shards.parse_index(read((folder / "shards.csv").as_posix()))


def _write_sharded(folder: Path, cut: list[shards.Shard], row_type: type, rows: list) -> None:
    for shard in cut:
        tables.write_rows(folder / f"{shard.name}.csv", row_type, rows[shard.start : shard.stop])


def _read_sharded(
    folder: Path,
    cut: list[shards.Shard],
    row_type: type,
    read: Callable[[str], str] = _read_text,
    where: str = "",
) -> list:
    """The rows of each shard's table in `folder`, in order."""
    rows = []
    for shard in cut:
        path = folder / f"{shard.name}.csv"
        with tables.parsing(f"{path}{where}"):
            rows += tables.parse_rows(io.StringIO(read(path.as_posix()), newline=""), row_type)
    return rows


def read_class_indices(folder: Path) -> dict[str, int]:
    return tables.read_json(folder / "labels.json")
