"""Random and adversarial params.yaml content, thrown at every command.

Whatever the file holds, a command that cannot use it exits with code 2 and
one line naming the key (or the file), never a traceback, and never creates or
touches an output.
"""

import string
import tempfile
from pathlib import Path

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipeline.cli import cli
from pipeline.params import ParamsError, load_params
from tests.conftest import default_params

SECTIONS = list(default_params())
KEYS = [(section, key) for section in SECTIONS for key in default_params()[section]]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-5, 5000), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)
STAGES = ["ingest", "prepare", "train", "evaluate", "audit"]  # the commands that read params
NAMES = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)


@st.composite
def hostile_params(draw) -> tuple[bytes, str]:
    """(file content, a fragment the error must contain)."""
    params = default_params()
    kind = draw(st.sampled_from(["value", "unknown", "missing key", "missing section", "shape"]))
    if kind == "value":
        section, key = draw(st.sampled_from(KEYS))
        params[section][key] = draw(VALUES)
        return yaml.safe_dump(params).encode(), f"{section}.{key}"
    if kind == "unknown":
        section = draw(st.sampled_from(SECTIONS))
        key = draw(NAMES.filter(lambda name: name not in params[section]))
        params[section][key] = draw(VALUES)
        return yaml.safe_dump(params).encode(), f"{section}.{key}"
    if kind == "missing key":
        section, key = draw(st.sampled_from(KEYS))
        del params[section][key]
        return yaml.safe_dump(params).encode(), f"{section}.{key}"
    if kind == "missing section":
        section = draw(st.sampled_from(SECTIONS))
        del params[section]
        return yaml.safe_dump(params).encode(), section
    not_a_mapping = st.one_of(st.lists(VALUES, max_size=3), st.text(max_size=20), st.integers())
    raw = st.binary(max_size=64).map(lambda data: b"\x00:\n" + data)  # not YAML at all
    content = draw(st.one_of(not_a_mapping.map(lambda v: yaml.safe_dump(v).encode()), raw))
    return content, "params.yaml"


def command_lines(root: Path) -> dict[str, list[str]]:
    """Each stage with inputs that exist (empty) and outputs that do not."""
    for folder in ("raw", "interim", "processed"):
        (root / folder).mkdir(exist_ok=True)
    (root / "model.keras").touch()
    out = str(root / "out")
    return {
        "ingest": ["ingest", "--raw", str(root / "raw"), "--out", out, "--no-cache"],
        "prepare": ["prepare", "--interim", str(root / "interim"), "--out", out,
                    "--report-dir", out],
        "train": ["train", "--processed", str(root / "processed"), "--model-out",
                  f"{out}/m.keras", "--live-dir", out],
        "evaluate": ["evaluate", "--model", str(root / "model.keras"), "--processed",
                     str(root / "processed"), "--out", out],
        "audit": ["audit", "--processed", str(root / "processed"), "--out", out],
    }  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=hostile_params(), stage=st.sampled_from(STAGES))
def test_every_command_refuses_bad_params_with_exit_2_and_the_key(case, stage):
    content, fragment = case
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        params = root / "params.yaml"
        params.write_bytes(content)
        try:
            load_params(params)
            assume(False)  # this mutation happened to be valid
        except ParamsError:
            pass
        result = CliRunner().invoke(cli, ["--params", str(params), *command_lines(root)[stage]])
        assert result.exit_code == 2, result.output
        assert isinstance(result.exception, SystemExit)  # no traceback
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
        assert fragment in result.output, result.output
        assert not (root / "out").exists()


def _ints_outside(low: int, high: int):
    return st.one_of(st.integers(max_value=low - 1), st.integers(min_value=high + 1))


def _not_one_of(*allowed: str):
    return st.text(max_size=12).filter(lambda text: text not in allowed)


IN_RANGE_SIDE = st.integers(16, 1024)
VIEW = {"image_size": [32, 32], "color_mode": "grayscale"}
# What README's params table allows, written from the table, not from params.py: each key
# with values just outside it, of the right type. Every one must be refused.
OUTSIDE_DOCUMENTED_LIMITS = {
    ("base", "seed"): _ints_outside(0, 2**32 - 1),
    ("ingest", "image_size"): st.one_of(
        st.tuples(_ints_outside(16, 1024), IN_RANGE_SIDE),
        st.tuples(IN_RANGE_SIDE, _ints_outside(16, 1024)),
    ).map(list),
    ("ingest", "color_mode"): _not_one_of("grayscale", "rgb"),
    ("ingest", "resize"): _not_one_of("stretch", "pad", "crop"),
    ("ingest", "resample"): _not_one_of(
        "nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"
    ),
    ("ingest", "max_pixels"): _ints_outside(1, 2**40),
    ("ingest", "decode_seconds"): st.one_of(st.floats(max_value=0), st.floats(min_value=86_400.5)),
    ("prepare", "split"): _not_one_of("auto", "hash", "folders"),
    ("prepare", "val_fraction"): st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1)),
    ("prepare", "test_fraction"): st.one_of(st.floats(max_value=0), st.floats(min_value=1)),
    ("prepare", "near_duplicate_distance"): _ints_outside(-1, 256),
    ("prepare", "label_mode"): _not_one_of("auto", "binary", "categorical"),
    ("prepare", "views"): st.sampled_from([[], [VIEW] * 3]),
    ("train", "model"): _not_one_of("sequential", "functional", "shared_input", "multi_input"),
    ("train", "epochs"): _ints_outside(1, 10_000),
    ("train", "batch_size"): _ints_outside(1, 65_536),
    ("train", "learning_rate"): st.one_of(st.floats(max_value=0), st.floats(min_value=10.5)),
    ("train", "steps_per_execution"): _ints_outside(1, 10_000),
    ("train", "mixed_precision"): _not_one_of("auto", "on", "off"),
    ("train", "augment", "zoom"): st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=0.91)),
    ("train", "augment", "shift"): st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=0.51)),
    ("train", "early_stopping", "patience"): _ints_outside(0, 10_000),
    ("train", "distribution"): _not_one_of("none", "mirrored", "multi_worker"),
    ("audit", "folds"): _ints_outside(2, 100),
    ("audit", "rank_by"): _not_one_of("self_confidence", "normalized_margin"),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(list(OUTSIDE_DOCUMENTED_LIMITS)),
    data=st.data(),
    stage=st.sampled_from(STAGES),
)
def test_every_value_outside_the_documented_limits_is_refused_naming_the_key(key, data, stage):
    # With `ge=1` dropped from train.batch_size, the test above still passed: it let
    # load_params decide which of its cases were invalid.
    value = data.draw(OUTSIDE_DOCUMENTED_LIMITS[key].filter(lambda v: v == v), label=".".join(key))
    params = default_params()
    *path, last = key
    target = params
    for part in path:
        target = target[part]
    target[last] = value
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        arguments = ["--params", str(root / "params.yaml"), *command_lines(root)[stage]]
        result = CliRunner().invoke(cli, arguments)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
        assert ".".join(key) in result.output, result.output
        assert not (root / "out").exists()
