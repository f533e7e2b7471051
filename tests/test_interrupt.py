"""SIGKILL at any moment never leaves an output that looks complete but is not.

Each stage clears its previous outputs (prepare, which keeps the files that stay the
same, removes the one that marks them complete), renames every file into place whole
and writes its summary file last; the decode cache commits whole transactions. So
after a kill, either the summary file is missing (visibly incomplete) or every
output is there and correct, and a re-run writes the same bytes as a run that
was never interrupted.
"""

import contextlib
import io
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipeline import files, shards, store
from pipeline.errors import PipelineError
from tests.conftest import BIN, photo_like, snapshot, write_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """300 distinct large PNGs (one picture, different trailing bytes) and fast params."""
    root = tmp_path_factory.mktemp("interrupt")
    buffer = io.BytesIO()
    photo_like(0, size=(900, 700)).save(buffer, "PNG")
    for index in range(300):
        folder = root / "raw" / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        # Bytes after IEND are ignored by decoders but give each file its own hash.
        (folder / f"{index:03d}.png").write_bytes(buffer.getvalue() + b"%06d" % index)
    params = write_params(
        root / "params.yaml",
        # Large enough that writing the outputs lasts long enough to be interrupted.
        ingest={"image_size": [128, 128]},
        # One picture in every file: without this, all would be one near-duplicate group.
        prepare={
            "views": [{"image_size": [128, 128], "color_mode": "grayscale"}],
            "near_duplicate_distance": -1,
        },
    )
    return root, params


def imgpipe(root, params, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [BIN / "imgpipe", "--params", params, *args],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so the kill reaches the decoding workers too
    )


def kill_in_phase(process: subprocess.Popen, reached, still_in_phase) -> None:
    """SIGKILL the process group once `reached()` holds, and check that the run was still
    in the phase the test interrupts (`still_in_phase()` at the kill): a run faster than
    the test fails it, instead of comparing two complete runs."""
    deadline = time.monotonic() + 120
    while not reached():  # no sleep: writing lasts milliseconds
        assert process.poll() is None, "the run ended before the phase to interrupt"
        assert time.monotonic() < deadline, "the phase to interrupt never came"
    os.killpg(process.pid, signal.SIGSTOP)  # frozen, so the phase seen is the phase killed
    while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        time.sleep(0.0001)
    in_phase = still_in_phase()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert in_phase, "the run had left the phase to interrupt"


def cached_results(cache) -> int:
    """Decode results the cache has committed (0 before it has its table)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{cache}?mode=ro", uri=True)) as database:
            return database.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0


def files_in(folder) -> set[str]:
    """The outputs in place in `folder`, by path relative to it, shard folders' files too
    (not the hidden .partial files being written)."""
    found = folder.rglob("*") if folder.exists() else []
    return {
        path.relative_to(folder).as_posix()
        for path in found
        if path.is_file() and not path.name.startswith(".")
    }


@pytest.mark.parametrize("phase", ["start-up", "decoding", "writing"])
def test_killed_ingest_never_looks_complete_and_reruns_identically(project, phase):
    root, params = project
    ingest = ["ingest", "--raw", "raw", "--workers", "2"]
    reference_out = root / "reference"
    if not reference_out.exists():
        assert imgpipe(root, params, *ingest, "--out", reference_out, "--no-cache").wait() == 0
    reference = snapshot(reference_out)
    out, cache = root / f"out-{phase}", root / f"cache-{phase}.sqlite"
    run = imgpipe(root, params, *ingest, "--out", out, "--cache", cache)
    if phase == "start-up":  # before anything is decoded
        kill_in_phase(run, lambda: True, lambda: cached_results(cache) == 0)
    elif phase == "decoding":  # some decoding committed, no output written yet
        kill_in_phase(run, lambda: cached_results(cache) > 0, lambda: files_in(out) == set())
    else:  # the first output is in place, the last (report.json) not yet
        kill_in_phase(run, lambda: files_in(out), lambda: "report.json" not in files_in(out))
    assert files_in(out) < set(reference)  # visibly incomplete
    rerun = imgpipe(root, params, *ingest, "--out", out, "--cache", cache)
    assert rerun.wait() == 0
    assert snapshot(out) == reference


@pytest.mark.parametrize("phase", ["computing", "writing", "writing over the last run's"])
def test_killed_prepare_never_looks_complete_and_reruns_identically(project, phase):
    root, params = project
    if not (root / "reference").exists():
        imgpipe(root, params, "ingest", "--raw", "raw", "--out", "reference", "--no-cache").wait()
    prepare = ["prepare", "--interim", "reference"]
    if not (root / "processed").exists():
        done = imgpipe(root, params, *prepare, "--out", "processed", "--report-dir", "report")
        assert done.wait() == 0
    reference = snapshot(root / "processed"), snapshot(root / "report")
    out, report = root / f"processed-{phase.split()[0]}", root / f"report-{phase.split()[0]}"
    args = [*prepare, "--out", out, "--report-dir", report]
    if phase.endswith("last run's"):  # another split of every image in the folder kept
        other = yaml.safe_load(params.read_text())
        other["prepare"]["split_salt"] = "another"
        (root / "other.yaml").write_text(yaml.safe_dump(other))
        assert imgpipe(root, root / "other.yaml", *args).wait() == 0
    run = imgpipe(root, params, *args)
    if phase == "computing":  # running, nothing written yet
        started = time.monotonic()
        kill_in_phase(run, lambda: time.monotonic() - started > 0.3,
                      lambda: files_in(out) == files_in(report) == set())  # fmt: skip
    elif phase == "writing":  # the first shard is in place, labels.json (written last) not yet
        kill_in_phase(run, lambda: files_in(out), lambda: "labels.json" not in files_in(out))
    else:  # the last run's labels.json gone (the first thing writing does), the new not yet
        unmarked = lambda: "labels.json" not in files_in(out)  # noqa: E731
        kill_in_phase(run, unmarked, unmarked)
    assert "labels.json" not in files_in(out)  # visibly incomplete
    with pytest.raises(PipelineError, match="not a complete prepared folder"):
        store.read_split(out, "train")
    assert imgpipe(root, params, *args).wait() == 0
    assert (snapshot(out), snapshot(report)) == reference
    split = store.read_split(out, "test")
    assert isinstance(split.views[0], shards.Rows)


def test_a_partial_file_left_by_a_kill_is_removed_by_the_next_write(tmp_path):
    leftover = tmp_path / ".images.npy.abc123.partial"
    leftover.write_bytes(b"half an array")
    files.clear_outputs(tmp_path, store.INTERIM_FILES)
    assert not leftover.exists()
