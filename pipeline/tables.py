"""Tables: CSV files with a fixed header, one row type each (a frozen dataclass, its
fields the columns in order, its `table` the file it is written to, for messages about
a file of the wrong kind), and small JSON records; the row types of the tables train,
evaluate and audit write for people and for DVC's plots. The stages' data folders, and
their row types, are pipeline/store.py's.

A file that is there but cannot be parsed is named, with how to mend it (parsing).
"""

import csv
import dataclasses
import io
import json
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from pipeline import files
from pipeline.errors import PipelineError, one_line


@contextmanager
def parsing(path: Path | str) -> Iterator[None]:
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
    with parsing(path):
        return json.loads(path.read_text(encoding="utf-8"))


def write_rows(path: Path, row_type: type, rows: list) -> None:
    names = [field.name for field in dataclasses.fields(row_type)]
    values = operator.attrgetter(*names)  # dataclasses.astuple deep-copies: 10x slower
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(names)
    writer.writerows(map(values, rows))
    files.write_bytes(path, text.getvalue().encode())


def read_rows(path: Path, row_type: type) -> list:
    with parsing(path), path.open(newline="", encoding="utf-8") as file:
        return parse_rows(file, row_type)


def parse_rows(lines, row_type: type) -> list:
    names = [field.name for field in dataclasses.fields(row_type)]
    # The columns that are not text, converted in place: calling str on each of a million
    # values, or building a list a row, costs 0.1 s each.
    typed = [(i, f.type) for i, f in enumerate(dataclasses.fields(row_type)) if f.type is not str]
    reader = csv.reader(lines)
    header = next(reader, None)
    if header != names:  # e.g. a manifest shard given for a splits shard
        raise ValueError(
            f"its columns are {', '.join(header or ['none'])}, where a "
            f"{row_type.table} has {', '.join(names)}"
        )
    rows = []
    for values in reader:
        if len(values) != len(names):
            raise ValueError(f"a row has {len(values)} columns, not {len(names)}")
        for i, kind in typed:
            values[i] = kind(values[i])
        rows.append(row_type(*values))
    return rows


@dataclasses.dataclass(frozen=True)
class PredictionRow:
    """A test image's actual and predicted class, for DVC's confusion-matrix plot."""

    table: ClassVar[str] = "predictions.csv"

    path: str
    actual: str
    predicted: str
    confidence: float  # the probability the model gave the class it predicted


@dataclasses.dataclass(frozen=True)
class SuspectRow:
    """An image whose label looks wrong to models that never trained on it (audit)."""

    table: ClassVar[str] = "suspects.csv"

    path: str
    given: str
    suggested: str  # the class the models gave the highest out-of-sample probability
    score: float  # the given label's quality (audit.rank_by): 0 most suspect, 1 least


@dataclasses.dataclass(frozen=True)
class ClassScoreRow:
    """One class's scores on the test split."""

    table: ClassVar[str] = "classes.csv"

    label: str
    precision: float
    recall: float
    f1: float
    support: int  # test images of the class


@dataclasses.dataclass(frozen=True)
class EpochSpeedRow:
    """How fast one epoch trained; not a DVC metric, since it changes with the machine."""

    table: ClassVar[str] = "speed.csv"

    step: int
    epoch_seconds: float
    images_per_second: float


@dataclasses.dataclass(frozen=True)
class RocPoint:
    table: ClassVar[str] = "roc.csv"

    false_positive_rate: float
    true_positive_rate: float
    threshold: float


@dataclasses.dataclass(frozen=True)
class PrecisionRecallPoint:
    table: ClassVar[str] = "precision_recall.csv"

    recall: float
    precision: float
    threshold: float


def write_predictions(path: Path, rows: list[PredictionRow]) -> None:
    write_rows(path, PredictionRow, rows)


def write_suspects(path: Path, rows: list[SuspectRow]) -> None:
    write_rows(path, SuspectRow, rows)


def read_suspects(path: Path) -> list[SuspectRow]:
    return read_rows(path, SuspectRow)


def write_class_scores(path: Path, rows: list[ClassScoreRow]) -> None:
    write_rows(path, ClassScoreRow, rows)


def write_epoch_speeds(path: Path, rows: list[EpochSpeedRow]) -> None:
    write_rows(path, EpochSpeedRow, rows)


def read_epoch_speeds(path: Path) -> list[EpochSpeedRow]:
    return read_rows(path, EpochSpeedRow)


def write_curve(path: Path, point_type: type, points: list) -> None:
    """A curve for `dvc plots show`: RocPoint or PrecisionRecallPoint rows."""
    write_rows(path, point_type, points)
