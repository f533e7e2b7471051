"""Hostile image files: mutated bytes never crash, hang or exhaust memory."""

import subprocess
import sys

from tests.conftest import REPO


def test_mutated_images_end_accepted_or_quarantined_in_bounded_time_and_memory():
    done = subprocess.run(
        [sys.executable, REPO / "tests" / "fuzz_images.py", "400"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    peak = float(done.stdout.split("peak memory ")[1].split()[0])
    assert peak < 1024, done.stdout
