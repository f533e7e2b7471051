"""params.yaml validation: every bad value names its key, value and what is allowed."""

import pytest
import yaml

from pipeline.params import ParamsError, load_params
from tests.conftest import REPO, default_params


def test_repository_params_load_with_their_documented_values():
    params = load_params(REPO / "params.yaml")
    assert params.ingest.image_size == (64, 64)
    assert params.ingest.color_mode == "grayscale"
    assert params.train.model == "sequential"
    assert params.prepare.val_fraction + params.prepare.test_fraction < 1


def _with(section, key, value):
    params = default_params()
    params[section][key] = value
    return params


def _without(section, key=None):
    params = default_params()
    if key is None:
        del params[section]
    else:
        del params[section][key]
    return params


# (params content, fragments the one-line message must contain)
INVALID = {
    "negative epochs": (_with("train", "epochs", -1), ["train.epochs", "-1", "1 to 10000"]),
    "epochs as a string": (_with("train", "epochs", "10"), ["train.epochs", "'10'", "integer"]),
    "epochs as a bool": (_with("train", "epochs", True), ["train.epochs", "True"]),
    "epochs as a float": (_with("train", "epochs", 2.5), ["train.epochs", "2.5"]),
    "unknown model": (
        _with("train", "model", "resnet"),
        ["train.model", "'resnet'", "sequential, functional, shared_input, multi_input"],
    ),
    "zero learning rate": (_with("train", "learning_rate", 0), ["train.learning_rate", "0"]),
    "NaN fraction": (_with("prepare", "val_fraction", float("nan")), ["prepare.val_fraction"]),
    "one image side": (_with("ingest", "image_size", [64]), ["ingest.image_size", "[64]"]),
    "huge image side": (
        _with("ingest", "image_size", [64, 50000]),
        ["ingest.image_size", "50000", "16 to 1024"],
    ),
    "image size not a list": (_with("ingest", "image_size", 64), ["ingest.image_size", "64"]),
    "unknown colour mode": (
        _with("ingest", "color_mode", "cmyk"),
        ["ingest.color_mode", "'cmyk'", "grayscale or rgb"],
    ),
    "fractions leave no training data": (
        _with("prepare", "test_fraction", 0.9),
        ["prepare.val_fraction + prepare.test_fraction = 1.05", "below 1"],
    ),
    "unknown split mode": (
        _with("prepare", "split", "random"),
        ["prepare.split", "'random'", "auto (folders when", "hash (by content) or folders"],
    ),
    "misspelt key": (_with("train", "epoch", 3), ["train.epoch", "did you mean 'epochs'"]),
    "unknown section": ({**default_params(), "trian": {}}, ["trian", "not a known key"]),
    "null seed": (_with("base", "seed", None), ["base.seed = None", "integer from 0"]),
    "missing section": (_without("train"), ["train is missing", "model, epochs"]),
    "missing key": (_without("train", "epochs"), ["train.epochs is missing"]),
    "section not a mapping": (
        default_params() | {"ingest": [1]},
        ["ingest = [1] is invalid", "a mapping with the keys image_size, color_mode"],
    ),
    "file is a list": ([1, 2], ["must be a mapping", "[1, 2]"]),
    "file is empty": (None, ["must be a mapping", "None"]),
}


@pytest.mark.parametrize("content, fragments", INVALID.values(), ids=INVALID.keys())
def test_invalid_params_name_key_value_and_what_is_allowed(tmp_path, content, fragments):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ParamsError) as raised:
        load_params(path)
    message = str(raised.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("written, meant", [("on", "on"), ("off", "off"), ("'on'", "on")])
def test_mixed_precision_on_and_off_as_written_unquoted_in_yaml(tmp_path, written, meant):
    # YAML 1.1 reads an unquoted on/off as true/false; the allowed values say on and off.
    text = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("mixed_precision: auto", f"mixed_precision: {written}"))
    assert load_params(path).train.mixed_precision == meant


def test_a_file_that_is_not_yaml_is_reported_with_its_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("base:\n  seed: 1\ntrain: [unclosed\n")
    with pytest.raises(ParamsError, match=r"not valid YAML at line \d"):
        load_params(path)


def test_a_deeply_nested_document_is_refused_not_a_crash(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ParamsError, match="nests too deeply|not valid YAML"):
        load_params(path)


def test_a_missing_file_says_where_to_run_from(tmp_path):
    with pytest.raises(ParamsError, match="not found; run from the project root"):
        load_params(tmp_path / "params.yaml")


def test_params_are_frozen():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ValueError):
        params.train.epochs = 3
