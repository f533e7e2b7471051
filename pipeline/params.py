"""params.yaml, parsed once into typed, frozen objects.

Every key has a description that says what is allowed; an invalid file raises
`ParamsError` whose one-line message names the key, the value and that
description, so that `dvc exp run -S key=value` typos are caught before any
stage touches its outputs.
"""

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.models import MODELS

MODEL_NAMES = tuple(MODELS)
RESIZE_MODES = ("stretch", "pad", "crop")
SPLIT_MODES = ("auto", "hash", "folders")
RESAMPLE_FILTERS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
# The label qualities that pipeline/label_issues.py ranks suspects by (audit.rank_by).
RANKINGS = ("self_confidence", "normalized_margin")


# Each color_mode (of ingest and of a view): its Pillow mode, and the channels it has.
PIL_MODES = {"grayscale": "L", "rgb": "RGB"}
CHANNELS = {"grayscale": 1, "rgb": 3}


class ParamsError(ValueError):
    """A params file that cannot be used; the message is one line meant for the user."""


class _Section(BaseModel):
    # Strict: YAML's "10" or true must not silently become 10 or 1.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


ImageSide = Annotated[int, Field(ge=16, le=1024)]


class Base(_Section):
    seed: int = Field(ge=0, le=2**32 - 1, description="an integer from 0 to 4294967295")


class Ingest(_Section):
    # A list in YAML, so the tuple itself is parsed laxly; its items stay strict.
    image_size: tuple[ImageSide, ImageSide] = Field(
        strict=False, description="[height, width], two integers from 16 to 1024"
    )
    color_mode: Literal["grayscale", "rgb"] = Field(description="grayscale or rgb")
    resize: Literal[RESIZE_MODES] = Field(
        description="stretch (ignore aspect ratio), pad (black bars) or crop (centre)"
    )
    resample: Literal[RESAMPLE_FILTERS] = Field(description="one of " + ", ".join(RESAMPLE_FILTERS))
    max_pixels: int = Field(
        ge=1, le=2**40, description="an integer from 1 to 2**40 (Pillow's default is 89478485)"
    )
    decode_seconds: float = Field(
        gt=0, le=86_400, description="a number of seconds above 0 and at most 86400"
    )


class View(_Section):
    """One model input derived from each ingested image."""

    image_size: tuple[ImageSide, ImageSide] = Field(
        strict=False, description="[height, width], two integers from 16 to 1024"
    )
    color_mode: Literal["grayscale", "rgb"] = Field(description="grayscale or rgb")


class Prepare(_Section):
    split: Literal[SPLIT_MODES] = Field(
        description="auto (folders when the raw images are in train/, val/ or test/ folders, "
        "else hash), hash (by content) or folders (each image keeps its folder's split)"
    )
    val_fraction: float = Field(ge=0, lt=1, description="a number from 0 up to (not including) 1")
    test_fraction: float = Field(gt=0, lt=1, description="a number between 0 and 1, exclusive")
    split_salt: str = Field(description="any string; changing it reshuffles every split")
    near_duplicate_distance: int = Field(
        ge=-1, le=256, description="-1 (off), or 0 to 256: the most bits two 256-bit pHashes differ"
    )
    label_mode: Literal["auto", "binary", "categorical"] = Field(
        description="auto, binary (one 0/1 column, two classes) or categorical (one-hot)"
    )
    views: tuple[View, ...] = Field(
        strict=False,
        min_length=1,
        max_length=max(model.inputs for model in MODELS.values()),
        description="a list of one view, or two for multi_input, each {image_size, color_mode}",
    )

    @model_validator(mode="after")
    def _train_keeps_images(self):
        total = self.val_fraction + self.test_fraction
        if total >= 1:
            raise ValueError(
                f"prepare.val_fraction + prepare.test_fraction = {total:g} leaves nothing to "
                "train on; allowed: a sum below 1"
            )
        return self


class Augment(_Section):
    """Random changes to training images; Keras preprocessing layers, off at inference."""

    horizontal_flip: bool = Field(description="true or false")
    zoom: float = Field(ge=0, le=0.9, description="0 (off) to 0.9: the most the size changes")
    shift: float = Field(
        ge=0, le=0.5, description="0 (off) to 0.5: the most, as a fraction of the size"
    )


class EarlyStopping(_Section):
    patience: int = Field(
        ge=0, le=10_000, description="0 (off), or epochs without a better val loss before stopping"
    )
    restore_best_weights: bool = Field(description="true or false")


class Train(_Section):
    model: Literal[MODEL_NAMES] = Field(description="one of " + ", ".join(MODEL_NAMES))
    epochs: int = Field(ge=1, le=10_000, description="an integer from 1 to 10000")
    batch_size: int = Field(
        ge=1, le=65_536, description="an integer from 1 to 65536 (images per step, all devices)"
    )
    learning_rate: float = Field(gt=0, le=10, description="a number above 0 and at most 10")
    steps_per_execution: int = Field(ge=1, le=10_000, description="an integer from 1 to 10000")
    mixed_precision: Literal["auto", "on", "off"] = Field(
        description="auto (mixed_float16 on a GPU only), on or off"
    )
    augment: Augment
    early_stopping: EarlyStopping
    distribution: Literal["none", "mirrored", "multi_worker"] = Field(
        description="none (one device), mirrored (all local GPUs) or multi_worker (TF_CONFIG)"
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        # YAML 1.1 reads an unquoted on or off as true or false.
        if isinstance(value, bool):
            return "on" if value else "off"
        return value


class Audit(_Section):
    folds: int = Field(
        ge=2, le=100, description="an integer from 2 to 100: models trained, each predicting a fold"
    )
    rank_by: Literal[RANKINGS] = Field(
        description="self_confidence (the given label's probability) or normalized_margin "
        "(it against the likeliest other class)"
    )


class Params(_Section):
    base: Base
    ingest: Ingest
    prepare: Prepare
    train: Train
    audit: Audit

    @model_validator(mode="after")
    def _sections_agree(self):
        for index, view in enumerate(self.prepare.views):
            if view.color_mode == "rgb" and self.ingest.color_mode == "grayscale":
                raise ValueError(
                    f"prepare.views[{index}].color_mode = 'rgb' cannot be derived from "
                    "grayscale images; allowed: grayscale, or set ingest.color_mode: rgb"
                )
        wanted = MODELS[self.train.model].inputs
        if len(self.prepare.views) < wanted:
            raise ValueError(
                f"train.model = '{self.train.model}' needs {wanted} prepare.views, "
                f"found {len(self.prepare.views)}; add a view such as "
                "{image_size: [32, 32], color_mode: rgb} (a colour view also needs "
                "ingest.color_mode: rgb)"
            )
        return self


def load_params(path: Path) -> Params:
    """Read and validate a params file, raising `ParamsError` on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path} not found; run from the project root or pass --params") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ParamsError(f"{path} cannot be read: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ParamsError(f"{path} is not valid YAML{line}; fix its syntax") from None
    except RecursionError:
        raise ParamsError(f"{path} nests too deeply to be a params file") from None
    if not isinstance(data, dict):
        raise ParamsError(
            f"{path} must be a mapping of sections ({', '.join(Params.model_fields)}), "
            f"got {_show(data)}"
        )
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ParamsError(f"{path}: {_describe(error.errors()[0], data)}") from None


def _describe(error: dict, data: dict) -> str:
    """Turn pydantic's first error into 'key = value is invalid; allowed: ...'."""
    location = list(error["loc"])
    while location and isinstance(location[-1], int):
        location.pop()  # report the whole [height, width] list, not one of its items
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)
    key = key.lstrip(".")
    owner, field = _field_at(location)

    if error["type"] == "extra_forbidden":
        allowed = list(owner.model_fields)
        close = difflib.get_close_matches(location[-1], allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{key} is not a known key{hint}; allowed keys here: {', '.join(allowed)}"
    # A missing list item ([64] for [height, width]) is a bad value, not a missing key.
    if error["type"] == "missing" and len(location) == len(error["loc"]):
        return f"{key} is missing; add it, allowed: {_allowed(field)}"
    if error["type"] == "value_error":  # our own validators name their keys in full
        return error["msg"].removeprefix("Value error, ")
    return f"{key} = {_show(_value_at(data, location))} is invalid; allowed: {_allowed(field)}"


def _field_at(location: list) -> tuple[type[BaseModel], Any]:
    """The model that owns the last key in `location`, and that key's field (None at the top)."""
    owner, field = Params, None
    for part in location:
        if isinstance(part, int):
            continue  # an item of a list of sections: the same section type
        if field is not None:
            owner = _section_type(field)
        field = owner.model_fields.get(part)
        if field is None:
            break
    return owner, field


def _section_type(field) -> type[BaseModel]:
    """The section model a field holds, directly or as the items of a list."""
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return typing.get_args(annotation)[0]


def _allowed(field) -> str:
    if field is None:
        return "nothing"
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
        return "a mapping with the keys " + ", ".join(field.annotation.model_fields)
    return field.description


def _value_at(data: Any, location: list) -> Any:
    for part in location:
        if isinstance(part, int):
            data = data[part] if isinstance(data, list | tuple) and part < len(data) else None
        else:
            data = data.get(part) if isinstance(data, dict) else None
    return data


def _show(value: Any) -> str:
    """A short, one-line rendering of a user's value."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."
