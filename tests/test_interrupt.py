"""SIGKILL at any moment never leaves an output that looks complete but is not.

Each stage clears its previous outputs, renames every file into place whole and
writes its summary file last; the decode cache commits whole transactions. So
after a kill, either the summary file is missing (visibly incomplete) or every
output is there and correct, and a re-run writes the same bytes as a run that
was never interrupted.
"""

import io
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from pipeline import store
from tests.conftest import BIN, photo_like, snapshot, write_params

pytestmark = pytest.mark.slow

# Seconds after the start (start-up, decoding), or None: as soon as writing begins.
KILL_AT = [0.15, 0.5, 0.9, 1.3, None]


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
        ingest={"image_size": [32, 32]},
        # One picture in every file: without this, all would be one near-duplicate group.
        prepare={
            "views": [{"image_size": [32, 32], "color_mode": "grayscale"}],
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


def kill(process: subprocess.Popen, seconds: float | None, out) -> None:
    """SIGKILL the process group after `seconds`, or once a file appears in `out`."""
    if seconds is not None:
        time.sleep(seconds)
    else:
        while process.poll() is None and not (out.exists() and any(out.iterdir())):
            time.sleep(0.001)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_killed_ingest_never_looks_complete_and_reruns_identically(project):
    root, params = project
    ingest = ["ingest", "--raw", "raw", "--workers", "2"]
    assert imgpipe(root, params, *ingest, "--out", "reference", "--no-cache").wait() == 0
    reference = snapshot(root / "reference")

    for seconds in KILL_AT:
        out, cache = root / f"out-{seconds}", root / f"cache-{seconds}.sqlite"
        kill(imgpipe(root, params, *ingest, "--out", out, "--cache", cache), seconds, out)
        left = snapshot(out)
        if "report.json" in left:
            assert left == reference, seconds
        else:  # visibly incomplete: some outputs missing (hidden .partial files aside)
            assert {name for name in left if not name.startswith(".")} < set(reference), seconds
        rerun = imgpipe(root, params, *ingest, "--out", out, "--cache", cache)
        assert rerun.wait() == 0
        assert snapshot(out) == reference, seconds


def test_killed_prepare_never_looks_complete_and_reruns_identically(project):
    root, params = project
    if not (root / "reference").exists():
        imgpipe(root, params, "ingest", "--raw", "raw", "--out", "reference", "--no-cache").wait()
    prepare = ["prepare", "--interim", "reference"]
    done = imgpipe(root, params, *prepare, "--out", "processed", "--report-dir", "report")
    assert done.wait() == 0
    reference = snapshot(root / "processed"), snapshot(root / "report")

    for seconds in [1.0, 3.0, None]:
        out, report = root / f"processed-{seconds}", root / f"report-{seconds}"
        args = [*prepare, "--out", out, "--report-dir", report]
        kill(imgpipe(root, params, *args), seconds, out)
        if "splits.csv" in snapshot(out):
            assert snapshot(out) == reference[0], seconds
        if "report.json" in snapshot(report):
            assert snapshot(report) == reference[1], seconds
        assert imgpipe(root, params, *args).wait() == 0
        assert (snapshot(out), snapshot(report)) == reference, seconds
        split = store.read_split(out, "test")
        assert isinstance(split.views[0], np.memmap)


def test_a_partial_file_left_by_a_kill_is_removed_by_the_next_write(tmp_path):
    leftover = tmp_path / ".images.npy.abc123.partial"
    leftover.write_bytes(b"half an array")
    store.clear_outputs(tmp_path, store.INTERIM_FILES)
    assert not leftover.exists()
