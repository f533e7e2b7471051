"""Shared fixtures: tiny real images written with Pillow, and params files."""

import contextlib
import hashlib
import io
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: imgpipe, dvc
# Real photos (hymenoptera, trashnet) beside the checkout, never copied in; tests skip
# when they are absent.
DATASETS = REPO.parent / "shared" / "datasets"

# Three classes a small CNN separates in one epoch: dark, mid and bright images.
CLASS_LEVELS = {"bright": 220, "dark": 30, "mid": 128}


@pytest.fixture(autouse=True, scope="session")
def _environment(tmp_path_factory):
    # dvc runs each stage's `imgpipe` through the shell; it must find this venv's copy.
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Never write ingest's or prepare's cache into the working copy.
    caches = tmp_path_factory.mktemp("cache")
    os.environ["IMGPIPE_DECODE_CACHE"] = str(caches / "decoded.sqlite")
    os.environ["IMGPIPE_PREPARE_CACHE"] = str(caches / "prepared.sqlite")


def image_bytes(level: int, seed: str, size=(40, 30), fmt="PNG", mode="RGB") -> bytes:
    """A real, encoded, noisy image around a grey level; `seed` makes each one unique."""
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))
    pixels = np.clip(rng.normal(level, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels, "RGB").convert(mode), fmt)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    """An image's bytes as Pillow saves them in `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (none when it is missing), by path relative to it."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def ran_stages(output: str) -> list[str]:
    """The stages `dvc repro` or `dvc exp run` ran, from its output."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def make_dataset(root: Path, per_class: int = 12, classes=CLASS_LEVELS, seed: str = "") -> Path:
    """Write `per_class` PNGs for each class under root/<class>/; another `seed` makes
    other images (for root/train/ beside root/val/)."""
    for name, level in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            (folder / f"{index:03d}.png").write_bytes(image_bytes(level, f"{seed}{name}{index}"))
    return root


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write_params(path: Path, **sections) -> Path:
    """Write params.yaml: the repository's defaults with `sections` merged in."""
    params = default_params()
    for section, values in sections.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params))
    return path


# Small and fast settings for tests that train.
FAST = {
    "ingest": {"image_size": [32, 32]},
    "prepare": {
        "val_fraction": 0.2,
        "test_fraction": 0.25,
        "views": [{"image_size": [32, 32], "color_mode": "grayscale"}],
    },
    "train": {"epochs": 1, "batch_size": 8},
}


def photo_like(seed: int, size=(96, 72)) -> Image.Image:
    """A small RGB image with structure (smooth colour, hard-edged blocks), unlike noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)).copy()
    for _ in range(4):
        x, y = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
        pixels[y : y + 20, x : x + 20] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels)


# Runs a command in a fresh interpreter and prints its peak RSS: a process started from a
# large one (subprocess forks or vforks) counts that one's peak RSS as its own.
_PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)  # KiB on Linux
"""


def peak_rss(command: list, env: dict | None = None) -> int:
    """Bytes: the peak resident memory of `command`'s process (ru_maxrss); it must succeed."""
    import subprocess

    measured = subprocess.run([sys.executable, "-c", _PEAK_RSS, *map(str, command)], env=env,
                              stdout=subprocess.PIPE, text=True, check=True)  # fmt: skip
    return int(measured.stdout)


@contextlib.contextmanager
def deadline(seconds: int, what: str):
    """Turn a hang into a failure: TimeoutError(`what`) after `seconds` (SIGALRM)."""

    def hung(*_):
        raise TimeoutError(what)

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A tmpfs mounted on `folder` with `options` ("ro", "size=64k"): a read-only or full
    file system, where even root cannot write. Skips the test where mounting is refused."""
    import subprocess

    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", folder],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", folder], check=True)


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "raw")


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def dvc_env(**extra) -> dict:
    """The environment for git and dvc in a test repository: an identity, no analytics."""
    return {**os.environ, **GIT_IDENTITY, "DVC_NO_ANALYTICS": "1", **extra}


def ingest_and_prepare(root: Path, params: Path, raw: Path) -> Path:
    """Run ingest and prepare by hand into `root`; returns the prepared folder."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    for args in (["ingest", "--raw", raw, "--out", root / "interim"],
                 ["prepare", "--interim", root / "interim", "--out", root / "processed",
                  "--report-dir", root / "report"]):  # fmt: skip
        result = CliRunner().invoke(cli, ["--params", str(params), *map(str, args)])
        assert result.exit_code == 0, result.output
    return root / "processed"


def new_project(root: Path) -> Path:
    """A project as a user starts one: this pipeline, dvc.yaml, fast params, tiny images."""
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__py*"))
    for name in ["dvc.yaml", "audit/dvc.yaml", ".gitignore", ".dvcignore"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    write_params(root / "params.yaml", **FAST)
    make_dataset(root / "data" / "raw", per_class=16)
    return root


@pytest.fixture(params=["s3", "ssh"])
def server(request, tmp_path_factory):
    """Each kind of DVC remote in turn, a real server on 127.0.0.1, stopped after the test."""
    from tests.servers import SERVERS

    instance = SERVERS[request.param](tmp_path_factory.mktemp(request.param))
    instance.start()
    yield instance
    instance.stop()


def foreign_file(folder: Path, kind: str) -> Path:
    """A file imgpipe did not make in `folder`: "notes", or "another program's SQLite
    database"."""
    import contextlib
    import sqlite3

    if kind == "notes":
        (folder / "notes.txt").write_text("my notes")
        return folder / "notes.txt"
    with contextlib.closing(sqlite3.connect(folder / "app.sqlite")) as database, database:
        database.execute("CREATE TABLE things (name TEXT)")
    return folder / "app.sqlite"
