"""The on-disk format of every stage's outputs, in one place.

Arrays are plain `.npy` files (uint8 pixels, float32 labels): no pickles, and
memory-mappable. Tables are CSV with a fixed header; small records are JSON.
Every file is written whole or not at all (pipeline/files.py), so a killed stage
never leaves a file that looks complete but is not.
"""

import csv
import dataclasses
import hashlib
import io
import json
import operator
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline import files
from pipeline.errors import PipelineError, one_line
from pipeline.params import Ingest

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
    np.asarray), never on the files behind it, which read_split and write_split know."""

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


# File names; dvc.yaml lists the same paths (tests/test_dvc_yaml.py checks). Prepare's
# folder is one DVC output as a whole: its number of views follows params.
INTERIM_FILES = ("images.npy", "manifest.csv", "quarantine.csv", "duplicates.csv", "report.json")


def write_interim(folder: Path, interim: Interim, images_file: Path | None = None) -> None:
    """Write ingest's outputs; `images_file`, a .npy file that already holds exactly
    `interim.images`, is linked (or copied) instead of writing the pixels again."""
    files.clear_outputs(folder, INTERIM_FILES)
    if images_file is None:
        files.save_array(folder / "images.npy", interim.images)
    else:
        files.link_or_copy(images_file, folder / "images.npy")
    _write_rows(folder / "manifest.csv", ManifestRow, interim.manifest)
    _write_rows(folder / "quarantine.csv", QuarantineRow, interim.quarantine)
    _write_rows(folder / "duplicates.csv", DuplicateRow, interim.duplicates)
    files.write_json(folder / "report.json", interim.report)  # last: its presence means complete


def read_interim(folder: Path) -> Interim:
    return Interim(
        images=load_array(folder / "images.npy"),
        manifest=_read_rows(folder / "manifest.csv", ManifestRow),
        quarantine=_read_rows(folder / "quarantine.csv", QuarantineRow),
        duplicates=_read_rows(folder / "duplicates.csv", DuplicateRow),
        report=read_json(folder / "report.json"),
    )


def write_processed(
    folder: Path,
    processed: Processed,
    view_shapes: list[tuple[int, ...]],
    view_blocks: Iterable[list[np.ndarray]],
) -> None:
    """Prepare's outputs. `view_blocks` yields, for consecutive blocks of images in manifest
    order, each view's rows of them (views of `view_shapes`); every row goes to its split's
    file as its block comes, so no view is ever whole in memory."""
    arrays = [path.name for path in folder.glob("*.npy")]  # views may be fewer than last time
    files.clear_outputs(folder, [*arrays, "labels.json", "splits.csv"])
    splits = np.array([row.split for row in processed.rows])
    # The labels first: a run killed in the long write of the views after them has files in
    # place, but never splits.csv (tests/test_interrupt.py kills it there).
    for name in SPLITS:
        files.save_array(folder / f"{name}_labels.npy", processed.labels[splits == name])
    counts = {name: np.count_nonzero(splits == name) for name in SPLITS}
    with ExitStack() as opened:
        writers = {
            name: [
                opened.enter_context(
                    files.array_writer(
                        folder / f"{name}_view{index}.npy", (count, *shape), np.uint8
                    )
                )
                for index, shape in enumerate(view_shapes)
            ]
            for name, count in counts.items()
        }
        start = 0
        for block in view_blocks:
            _write_block(writers, splits[start : start + len(block[0])], block)
            start += len(block[0])
            del block  # now, not once the next block is made
    files.write_json(folder / "labels.json", processed.class_indices)
    _write_rows(folder / "splits.csv", SplitRow, processed.rows)  # last: complete when present


def _write_block(
    writers: dict[str, list[Callable]], splits: np.ndarray, block: list[np.ndarray]
) -> None:
    """Each view's rows of one block of images to their splits' files."""
    for name, writes in writers.items():
        for write, rows in zip(writes, block, strict=True):
            write(rows[splits == name])


def write_split(folder: Path, name: str, split: Split) -> None:
    """One split's arrays from memory, as read_split reads them (write_processed streams
    prepare's)."""
    for index, view in enumerate(split.views):
        files.save_array(folder / f"{name}_view{index}.npy", view)
    files.save_array(folder / f"{name}_labels.npy", split.labels)


def read_split(folder: Path, name: str) -> Split:
    views = []
    while (path := folder / f"{name}_view{len(views)}.npy").exists():
        views.append(load_array(path))
    return Split(
        views=views,
        labels=load_array(folder / f"{name}_labels.npy"),
    )


def read_class_indices(folder: Path) -> dict[str, int]:
    return read_json(folder / "labels.json")


def write_predictions(path: Path, rows: list[PredictionRow]) -> None:
    _write_rows(path, PredictionRow, rows)


def write_class_scores(path: Path, rows: list[ClassScoreRow]) -> None:
    _write_rows(path, ClassScoreRow, rows)


def write_epoch_speeds(path: Path, rows: list[EpochSpeedRow]) -> None:
    _write_rows(path, EpochSpeedRow, rows)


def read_epoch_speeds(path: Path) -> list[EpochSpeedRow]:
    return _read_rows(path, EpochSpeedRow)


def write_curve(path: Path, point_type: type, points: list) -> None:
    """A curve for `dvc plots show`: RocPoint or PrecisionRecallPoint rows."""
    _write_rows(path, point_type, points)


def beside_model(model_path: Path) -> dict[str, Path]:
    """What train writes beside models/model.keras: its label map and the settings its
    images were decoded with (which evaluate and predict read), its layer table and its
    architecture drawing."""
    return {
        "labels": model_path.with_name(f"{model_path.stem}.labels.json"),
        "summary": model_path.with_name("summary.txt"),
        "architecture": model_path.with_name("architecture.png"),
    }


class ModelRecord(BaseModel):
    """What a saved model was trained with, beyond the model file itself: with it, the
    model folder alone is enough to classify image files. The views are the model's own
    input shapes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    classes: dict[str, int]  # class name -> index, as prepare's labels.json had it
    ingest: Ingest  # how ingest decoded, oriented and resized the training images


def write_model_record(model_path: Path, record: ModelRecord) -> None:
    """`record` beside the model, with the digest of that model file."""
    data = {**record.model_dump(mode="json"), "model_sha256": _digest(model_path)}
    files.write_json(beside_model(model_path)["labels"], data)


def read_model_record(model_path: Path) -> ModelRecord:
    """What `model_path` was trained with; refused unless it is that model's."""
    labels = beside_model(model_path)["labels"]
    if not labels.exists():
        raise PipelineError(
            f"{model_path} has no {labels.name} beside it, so its label map and settings are "
            "unknown (train was interrupted, or the model was copied alone); train again "
            "(dvc repro)"
        )
    data = read_json(labels)
    if not isinstance(data, dict) or data.pop("model_sha256", None) != _digest(model_path):
        raise PipelineError(
            f"{labels} belongs to another {model_path.name} than the one beside it (files of "
            "two training runs mixed, or an older imgpipe's); train again (dvc repro)"
        )
    try:
        return ModelRecord.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise PipelineError(
            f"{labels} is an older imgpipe's, which lacks the settings predict needs, or not "
            f"imgpipe's ({where}: {first['msg']}); train again (dvc repro)"
        ) from None


def _digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def read_split_rows(path: Path) -> list[SplitRow]:
    return _read_rows(path, SplitRow)


@contextmanager
def _parsing(path: Path | str) -> Iterator[None]:
    """A stage's output that is there but cannot be parsed: say which, and how to mend it."""
    try:
        yield
    except (ValueError, TypeError, csv.Error) as error:
        raise PipelineError(
            f"{path} is damaged or not the file expected ({one_line(error)}); restore it "
            "(dvc checkout), run the stage that writes it again (dvc repro), or name the right file"
        ) from None


def load_array(path: Path) -> np.ndarray:
    """Memory-map an array written by `save_array` (read-only, never unpickled)."""
    with _parsing(path):
        return np.load(path, mmap_mode="r", allow_pickle=False)


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


def split_rows_from_text(text: str, source: str) -> list[SplitRow]:
    """The rows of a splits.csv read from elsewhere (a git revision), `source` naming it."""
    with _parsing(source):
        return _parse_rows(io.StringIO(text, newline=""), SplitRow)


# The file each kind of row is written to, for messages about a file of the wrong kind.
TABLES = {
    ManifestRow: "manifest.csv",
    QuarantineRow: "quarantine.csv",
    DuplicateRow: "duplicates.csv",
    SplitRow: "splits.csv",
    PredictionRow: "predictions.csv",
    ClassScoreRow: "classes.csv",
    EpochSpeedRow: "speed.csv",
    RocPoint: "roc.csv",
    PrecisionRecallPoint: "precision_recall.csv",
}


def _parse_rows(lines, row_type: type) -> list:
    types = {field.name: field.type for field in dataclasses.fields(row_type)}
    reader = csv.DictReader(lines)
    if reader.fieldnames != list(types):  # e.g. a manifest.csv given where a splits.csv goes
        raise ValueError(
            f"its columns are {', '.join(reader.fieldnames or ['none'])}, where a "
            f"{TABLES[row_type]} has {', '.join(types)}"
        )
    return [row_type(**{name: types[name](value) for name, value in row.items()}) for row in reader]
