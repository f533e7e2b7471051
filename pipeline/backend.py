"""Load Keras for a stage that needs it: quickly, quietly, and with the backend the user chose.

The backend is chosen the ways Keras reads it: KERAS_BACKEND, else the
"backend" of keras.json in Keras' folder (KERAS_HOME, else ~/.keras, or
/tmp/.keras where the home folder is not writable), else tensorflow.
"""

import contextlib
import importlib
import json
import os
import re
import sys
import tempfile

from pipeline.errors import PipelineError

# Keras, TensorFlow and dvclive import these at start-up when they are installed, for
# features no stage uses (pandas inputs and plots, the scikit-learn wrappers, TF Lite's
# jax converter, Keras' image-gallery plots), each behind `except ImportError`: 1.7-2 s
# of loading Keras and dvclive on a 2-core machine. (Not scipy: jax needs it.)
NOT_FOR_KERAS = ("pandas", "sklearn", "jax", "matplotlib")

# Backends that compute with jax, which must then load: Keras' numpy backend runs its
# convolutions through jax.
NEEDS_JAX = frozenset({"jax", "numpy"})


def chosen_backend() -> str:
    """The backend Keras will load, found as Keras finds it, without importing Keras."""
    if "KERAS_BACKEND" in os.environ:
        return os.environ["KERAS_BACKEND"]
    if "KERAS_HOME" in os.environ:
        folder = os.environ["KERAS_HOME"]
    else:
        home = os.path.expanduser("~")
        folder = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.join(os.path.expanduser(folder), "keras.json")) as file:
            return json.load(file).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):  # Keras too ignores a keras.json it cannot read
        return "tensorflow"


def load_keras(also: tuple[str, ...] = ()) -> None:
    """Import Keras, and the modules `also` names, before a stage that needs them, without
    the modules of NOT_FOR_KERAS that the backend does not need: a backend Keras cannot
    load is one line."""
    backend = chosen_backend()
    held_off = set(NOT_FOR_KERAS) - ({"jax"} if backend in NEEDS_JAX else set())
    with _not_imported(held_off):
        try:
            with _cpp_log_level_applied():
                import keras  # noqa: F401
        except (ImportError, ValueError) as error:  # what Keras raises for a backend it lacks
            raise PipelineError(
                f"Keras cannot load the {backend!r} backend ({error}); set KERAS_BACKEND (or "
                "keras.json's backend) to tensorflow, jax, torch or numpy, installed "
                "(pip install -e '.[jax]' or -e '.[torch]')"
            ) from None
        for name in also:
            importlib.import_module(name)


@contextlib.contextmanager
def _not_imported(modules: set[str]):
    """Inside the block, importing one of `modules` not yet imported raises ImportError
    (a None in sys.modules); afterwards it imports as usual."""
    held_off = [name for name in sorted(modules) if name not in sys.modules]
    sys.modules.update(dict.fromkeys(held_off))
    try:
        yield
    finally:
        for name in held_off:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]


# A line of C++ logging, "I0000 00:00:1795656605.433950    7992 port.cc:153] ...", whose
# first letter is its severity; and absl's note that such lines are not yet filtered.
CPP_LOG_LINE = re.compile(r"([IWEF])\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] ")
ABSL_NOTE = "WARNING: All log messages before absl::InitializeLog() is called"


def below_level(line: str, level: int) -> bool:
    """Whether TF_CPP_MIN_LOG_LEVEL = `level` (0 all, 1 no INFO, 2 no WARNING, 3 no ERROR)
    hides this line."""
    if line.startswith(ABSL_NOTE):
        severity = "W"
    elif found := CPP_LOG_LINE.match(line):
        severity = found[1]
    else:
        return False
    return "IWEF".index(severity) < level


@contextlib.contextmanager
def _cpp_log_level_applied():
    """While TensorFlow loads, its C++ code logs INFO lines (oneDNN, CUDA probing) to file
    descriptor 2 before its logging reads TF_CPP_MIN_LOG_LEVEL: hold them in a file, then
    pass on the lines that level lets through, and everything else. A file, not a pipe:
    a pipe's reader thread needs the GIL, which the import holds for long stretches, and
    a full pipe would block TensorFlow. The cost: a process that dies inside the import
    loses those lines.
    """
    setting = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    level = int(setting) if setting.isdigit() else 0
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines(keepends=True):
                if not below_level(line, level):
                    sys.stderr.write(line)
            sys.stderr.flush()
