"""Every backend Keras accepts loads, chosen by environment variable, keras.json or default."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from pipeline.backend import below_level

# Keras' numpy backend computes its convolutions with jax.
NEEDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "jax"}
INSTALLED = [name for name, module in NEEDS.items() if importlib.util.find_spec(module)]

LOAD = (
    "from pipeline.backend import load_keras; load_keras(also=('dvclive',)); "
    "import keras; print(keras.backend.backend())"
)


def loaded_backend(tmp_path, environment_variable=None, keras_json=None) -> str:
    """The backend that load_keras loads in a fresh process, with its own Keras folder."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path / "keras-home")
    if environment_variable:
        env["KERAS_BACKEND"] = environment_variable
    if keras_json:
        (tmp_path / "keras-home").mkdir()
        (tmp_path / "keras-home" / "keras.json").write_text(json.dumps({"backend": keras_json}))
    done = subprocess.run(
        [sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("backend", INSTALLED)
def test_a_backend_chosen_by_environment_variable_loads(tmp_path, backend):
    assert loaded_backend(tmp_path, environment_variable=backend) == backend


@pytest.mark.slow
@pytest.mark.parametrize("backend", INSTALLED)
def test_a_backend_chosen_in_keras_json_loads(tmp_path, backend):
    assert loaded_backend(tmp_path, keras_json=backend) == backend


@pytest.mark.slow
@pytest.mark.skipif("jax" not in INSTALLED, reason="needs jax")
def test_the_environment_variable_wins_over_keras_json(tmp_path):
    # Read the other way round, imgpipe would take tensorflow and hold off jax, which the
    # jax backend Keras then loads needs: the load fails.
    assert loaded_backend(tmp_path, environment_variable="jax", keras_json="tensorflow") == "jax"


@pytest.mark.slow
def test_without_a_choice_tensorflow_loads(tmp_path):
    assert loaded_backend(tmp_path) == "tensorflow"


@pytest.mark.parametrize("backend, loaded", [("tensorflow", []), ("jax", ["jax"])])
def test_keras_and_dvclive_load_without_modules_no_stage_uses(backend, loaded):
    # 1.7-2 s of loading Keras and dvclive went on these; they still import afterwards.
    code = (
        "import sys; from pipeline.backend import load_keras; load_keras(also=('dvclive',)); "
        "held_off = ('pandas', 'sklearn', 'jax', 'matplotlib'); "
        "print(sorted(m for m in held_off if m in sys.modules)); "
        "import pandas, sklearn.metrics, matplotlib.figure; "
        "print('imported afterwards')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "KERAS_BACKEND": backend})  # fmt: skip
    assert done.stdout.splitlines() == [str(loaded), "imported afterwards"]


@pytest.mark.parametrize(
    ("line", "hidden_from"),
    [
        ("I0000 00:00:1795656605.433950    7992 port.cc:153] oneDNN custom operations", 1),
        ("W0000 00:00:1795656605.433950    7992 gpu_device.cc:2] Cannot dlopen", 2),
        ("WARNING: All log messages before absl::InitializeLog() is called are written", 2),
        ("E0000 00:00:1795656608.615942    7992 cuda_platform.cc:52] failed call to cuInit", 3),
        ("F0000 00:00:1795656608.615942    7992 check.cc:1] Check failed", 4),
        ("Traceback (most recent call last):", 4),
        ("I think, therefore", 4),
    ],
)
def test_tf_cpp_min_log_level_hides_exactly_the_lines_below_it(line, hidden_from):
    assert [below_level(line, level) for level in range(4)] == [
        level >= hidden_from for level in range(4)
    ]
