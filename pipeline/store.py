"""The on-disk format of every stage's data, in one place (what train saves beside a
model: pipeline/model_record.py).

Arrays are plain `.npy` files (uint8 pixels, float32 labels), no pickles, cut into
shards (pipeline/shards.py). Tables are CSV with a fixed header; small records are JSON.
Every file is written whole or not at all (pipeline/files.py), so a killed stage
never leaves a file that looks complete but is not.
"""

import csv
import dataclasses
import hashlib
import io
import json
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline import files, shards
from pipeline.errors import PipelineError, one_line

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One accepted image; its pixels are row `i` of the images array."""

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
    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class DuplicateRow:
    """A readable image left out because its bytes appear elsewhere."""

    path: str
    label: str
    sha256: str
    verdict: str  # "duplicate" (same class as the kept copy) or "conflict" (other classes)
    detail: str


@dataclasses.dataclass(frozen=True)
class SplitRow:
    path: str
    sha256: str
    label: str
    split: str
    group: str  # sha256 of the first member of its near-duplicate group; "" when alone
    moved_from: str  # the split its own hash gives, when its group moved it; else ""


@dataclasses.dataclass(frozen=True)
class PredictionRow:
    """A test image's actual and predicted class, for DVC's confusion-matrix plot."""

    path: str
    actual: str
    predicted: str
    confidence: float  # the probability the model gave the class it predicted


@dataclasses.dataclass(frozen=True)
class SuspectRow:
    """An image whose label looks wrong to models that never trained on it (audit)."""

    path: str
    given: str
    suggested: str  # the class the models gave the highest out-of-sample probability
    score: float  # the given label's quality (audit.rank_by): 0 most suspect, 1 least


@dataclasses.dataclass(frozen=True)
class ClassScoreRow:
    """One class's scores on the test split."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int  # test images of the class


@dataclasses.dataclass(frozen=True)
class EpochSpeedRow:
    """How fast one epoch trained; not a DVC metric, since it changes with the machine."""

    step: int
    epoch_seconds: float
    images_per_second: float


@dataclasses.dataclass(frozen=True)
class RocPoint:
    false_positive_rate: float
    true_positive_rate: float
    threshold: float


@dataclasses.dataclass(frozen=True)
class PrecisionRecallPoint:
    recall: float
    precision: float
    threshold: float


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
    _write_rows(folder / "quarantine.csv", QuarantineRow, interim.quarantine)
    _write_rows(folder / "duplicates.csv", DuplicateRow, interim.duplicates)
    shards.write_index(folder / "shards.csv", cut)
    files.write_json(folder / "report.json", interim.report)  # last: its presence means complete


def read_interim(folder: Path) -> Interim:
    cut = _shards_of(folder)
    with _parsing(folder / "images"):
        images = shards.Rows(folder / "images", cut)
    return Interim(
        images=images,
        manifest=_read_sharded(folder / "manifest", cut, ManifestRow),
        quarantine=_read_rows(folder / "quarantine.csv", QuarantineRow),
        duplicates=_read_rows(folder / "duplicates.csv", DuplicateRow),
        report=read_json(folder / "report.json"),
    )


def write_processed(
    folder: Path, processed: Processed, cut: list[shards.Shard], views: list
) -> None:
    """Prepare's outputs, in the shards `cut`. Each view is shards.Rows already cut so (the
    ingested images: their files are linked), or a function giving rows start:stop of it,
    called a shard at a time, so that no view is ever whole in memory."""
    _clear(folder, PROCESSED_FILES)
    _write_sharded(folder / "splits", cut, SplitRow, processed.rows)
    shards.write_arrays(folder / "labels", cut, lambda a, b: processed.labels[a:b])
    for index, view in enumerate(views):
        if isinstance(view, shards.Rows):
            shards.link_arrays(view.folder, folder / f"view{index}", cut)
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
        with _parsing(path):
            views.append(shards.Rows(path, cut, chosen))
    with _parsing(folder / "labels"):
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


def _clear(folder: Path, names) -> None:
    """A stage's previous outputs out of `folder`: its files, and in its shard folders the
    shard files, with what killed writes left; nothing else."""
    files.clear_outputs(folder, [])  # makes the folder, clears its leftovers
    for pattern in names:
        for path in folder.glob(pattern):
            if path.is_dir():
                files.clear_outputs(path, [p.name for p in path.glob("*") if p.suffix in SHARDED])
            else:
                path.unlink()


def _read_text(path: str) -> str:  # as a stage's tables are written
    return Path(path).read_text(encoding="utf-8")


def _shards_of(folder: Path, read: Callable[[str], str] = _read_text, where: str = ""):
    """The shards folder/shards.csv lists; `read` and `where` as read_split_rows's."""
    with _parsing(f"{folder / 'shards.csv'}{where}"):
        return shards.parse_index(read((folder / "shards.csv").as_posix()))


def _write_sharded(folder: Path, cut: list[shards.Shard], row_type: type, rows: list) -> None:
    for shard in cut:
        _write_rows(folder / f"{shard.name}.csv", row_type, rows[shard.start : shard.stop])


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
        with _parsing(f"{path}{where}"):
            rows += _parse_rows(io.StringIO(read(path.as_posix()), newline=""), row_type)
    return rows


def read_class_indices(folder: Path) -> dict[str, int]:
    return read_json(folder / "labels.json")


def write_predictions(path: Path, rows: list[PredictionRow]) -> None:
    _write_rows(path, PredictionRow, rows)


def write_suspects(path: Path, rows: list[SuspectRow]) -> None:
    _write_rows(path, SuspectRow, rows)


def read_suspects(path: Path) -> list[SuspectRow]:
    return _read_rows(path, SuspectRow)


def write_class_scores(path: Path, rows: list[ClassScoreRow]) -> None:
    _write_rows(path, ClassScoreRow, rows)


def write_epoch_speeds(path: Path, rows: list[EpochSpeedRow]) -> None:
    _write_rows(path, EpochSpeedRow, rows)


def read_epoch_speeds(path: Path) -> list[EpochSpeedRow]:
    return _read_rows(path, EpochSpeedRow)


def write_curve(path: Path, point_type: type, points: list) -> None:
    """A curve for `dvc plots show`: RocPoint or PrecisionRecallPoint rows."""
    _write_rows(path, point_type, points)


@contextmanager
def _parsing(path: Path | str) -> Iterator[None]:
    """A stage's output that is there but cannot be parsed: say which, and how to mend it."""
    try:
        yield
    except (ValueError, TypeError, csv.Error) as error:
        path = getattr(error, "path", path)  # a shard file names itself (shards.Damaged)
        raise PipelineError(
            f"{path} is damaged or not the file expected ({one_line(error)}); restore it "
            "(dvc checkout), run the stage that writes it again (dvc repro), or name the right file"
        ) from None


def read_json(path: Path):
    with _parsing(path):
        return json.loads(path.read_text(encoding="utf-8"))


def _write_rows(path: Path, row_type: type, rows: list) -> None:
    names = [field.name for field in dataclasses.fields(row_type)]
    values = operator.attrgetter(*names)  # dataclasses.astuple deep-copies: 10x slower
    with (
        files.atomic_path(path) as temporary,
        temporary.open("w", newline="", encoding="utf-8") as file,
    ):
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(map(values, rows))


def _read_rows(path: Path, row_type: type) -> list:
    with _parsing(path), path.open(newline="", encoding="utf-8") as file:
        return _parse_rows(file, row_type)


# The file each kind of row is written to, for messages about a file of the wrong kind.
TABLES = {
    ManifestRow: "manifest/ shard",
    QuarantineRow: "quarantine.csv",
    DuplicateRow: "duplicates.csv",
    SplitRow: "splits/ shard",
    PredictionRow: "predictions.csv",
    ClassScoreRow: "classes.csv",
    SuspectRow: "suspects.csv",
    EpochSpeedRow: "speed.csv",
    RocPoint: "roc.csv",
    PrecisionRecallPoint: "precision_recall.csv",
}


def _parse_rows(lines, row_type: type) -> list:
    types = {field.name: field.type for field in dataclasses.fields(row_type)}
    reader = csv.DictReader(lines)
    if reader.fieldnames != list(types):  # e.g. a manifest shard given for a splits shard
        raise ValueError(
            f"its columns are {', '.join(reader.fieldnames or ['none'])}, where a "
            f"{TABLES[row_type]} has {', '.join(types)}"
        )
    return [row_type(**{name: types[name](value) for name, value in row.items()}) for row in reader]
