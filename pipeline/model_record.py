"""What train saves beside a model file, in one place: the files beside it, and the
record of what the model was trained with, which evaluate and predict read."""

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline import files
from pipeline.errors import PipelineError
from pipeline.params import Ingest
from pipeline.tables import read_json


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
