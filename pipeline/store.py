"""The on-disk format of every stage's outputs, in one place.

Arrays are plain `.npy` files (uint8 pixels, float32 labels): no pickles, and
memory-mappable. Tables are CSV with a fixed header; small records are JSON.
Every file is written to a temporary name beside its target and renamed into
place, so a killed stage never leaves a file that looks complete but is not.
"""

import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import mmap
import operator
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

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
    clear_outputs(folder, INTERIM_FILES)
    if images_file is None:
        save_array(folder / "images.npy", interim.images)
    else:
        link_or_copy(images_file, folder / "images.npy")
    _write_rows(folder / "manifest.csv", ManifestRow, interim.manifest)
    _write_rows(folder / "quarantine.csv", QuarantineRow, interim.quarantine)
    _write_rows(folder / "duplicates.csv", DuplicateRow, interim.duplicates)
    write_json(folder / "report.json", interim.report)  # last: its presence means complete


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
    clear_outputs(folder, [*arrays, "labels.json", "splits.csv"])
    splits = np.array([row.split for row in processed.rows])
    # The labels first: a run killed in the long write of the views after them has files in
    # place, but never splits.csv (tests/test_interrupt.py kills it there).
    for name in SPLITS:
        save_array(folder / f"{name}_labels.npy", processed.labels[splits == name])
    counts = {name: np.count_nonzero(splits == name) for name in SPLITS}
    with ExitStack() as files:
        writers = {
            name: [
                files.enter_context(
                    array_writer(folder / f"{name}_view{index}.npy", (count, *shape), np.uint8)
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
    write_json(folder / "labels.json", processed.class_indices)
    _write_rows(folder / "splits.csv", SplitRow, processed.rows)  # last: complete when present


def _write_block(
    writers: dict[str, list[Callable]], splits: np.ndarray, block: list[np.ndarray]
) -> None:
    """Each view's rows of one block of images to their splits' files."""
    for name, writes in writers.items():
        for write, rows in zip(writes, block, strict=True):
            write(rows[splits == name])


@contextmanager
def exclusive(folder: Path, stage: str) -> Iterator[None]:
    """Hold `folder` for one run of `stage` at a time: a second run waits, saying so. The
    lock is on the folder itself (flock), so it leaves no file behind; a folder made here
    and still empty at the end (the run failed early) is removed."""
    import fcntl

    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{stage}: waiting for another {stage} writing to {folder}", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)
        if made:
            with suppress(OSError):  # not empty: the run wrote into it
                folder.rmdir()


def clear_outputs(folder: Path, names) -> None:
    """Remove a stage's previous outputs, and what killed writes left, before writing anew.

    Every file is renamed into place whole, and the stage's last file marks it
    complete; clearing first means the files present after an interruption are
    never a mix of two runs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).unlink(missing_ok=True)
    for leftover in folder.glob(".*.partial*"):
        leftover.unlink()


def write_split(folder: Path, name: str, split: Split) -> None:
    """One split's arrays from memory, as read_split reads them (write_processed streams
    prepare's)."""
    for index, view in enumerate(split.views):
        save_array(folder / f"{name}_view{index}.npy", view)
    save_array(folder / f"{name}_labels.npy", split.labels)


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
    write_json(beside_model(model_path)["labels"], data)


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
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` on success only."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=f".partial{suffix}"
    )
    os.fchmod(handle, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@functools.cache
def _umask() -> int:
    """The process's umask, read once (reading it means setting it: os.umask returns the old)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def link_or_copy(source: Path, target: Path) -> None:
    """Put `source`'s bytes at `target` whole: a hard link, or a copy across file systems."""
    with atomic_path(target) as temporary:
        temporary.unlink()
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)


# Pixels go to disk in pieces this size: here one 49 MB write() took ten times as long as
# the same bytes in 1 MiB pieces (0.12 s against 0.011 s, ext4).
WRITE_PIECE = 1 << 20


def save_array(path: Path, array: np.ndarray) -> None:
    """Write what np.save(allow_pickle=False) writes, the data in WRITE_PIECE pieces."""
    with array_writer(path, array.shape, array.dtype) as write:
        write(array)


@contextmanager
def array_writer(path: Path, shape: tuple[int, ...], dtype) -> Iterator[Callable]:
    """Write the array of `shape` and `dtype` at `path` a block of rows at a time: the
    function yielded appends rows, in order. The bytes are np.save's of the whole array;
    the file is renamed into place only once every row is written. Written with write(),
    not through a memory map, whose pages would count in the process's RSS."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(map(int, shape)),  # an np.int64 would be written "np.int64(3)"
    }
    size = np.dtype(dtype).itemsize * math.prod(shape)
    with atomic_path(path) as temporary, temporary.open("wb") as file:
        np.lib.format.write_array_header_1_0(file, header)
        start = file.tell()

        def write(rows: np.ndarray) -> None:
            data = memoryview(np.ascontiguousarray(rows).reshape(-1).view(np.uint8))
            for piece in range(0, len(data), WRITE_PIECE):
                file.write(data[piece : piece + WRITE_PIECE])

        yield write
        if file.tell() - start != size:  # then never renamed into place
            raise ValueError(f"{path}: {file.tell() - start} bytes written, not {size}")


def read_rows(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of `array`, in memory. From a whole array load_array mapped, they are
    read from its file, not through the map: pages read through a map stay in the process's
    RSS until it is unmapped, so one pass over a mapped array would grow RSS to its size."""
    if not isinstance(array.base, mmap.mmap):  # in memory, or part of a mapped array
        return np.asarray(array[start:stop])
    shape = array[start:stop].shape  # a view: no page is read
    row_bytes = array.dtype.itemsize * math.prod(shape[1:])
    return np.fromfile(
        array.filename, array.dtype, math.prod(shape), offset=array.offset + start * row_bytes
    ).reshape(shape)


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


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_json(path: Path, data) -> None:
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path):
    with _parsing(path):
        return json.loads(path.read_text(encoding="utf-8"))


def _write_rows(path: Path, row_type: type, rows: list) -> None:
    names = [field.name for field in dataclasses.fields(row_type)]
    values = operator.attrgetter(*names)  # dataclasses.astuple deep-copies: 10x slower
    with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as file:
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
