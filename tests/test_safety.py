"""What the repository ships never holds a credential, and nothing loads unsafely."""

import re
import subprocess

import pytest

from tests.conftest import REPO

CREDENTIAL = re.compile(
    r"AKIA[0-9A-Z]{16}"  # an AWS access key id
    r"|(secret_access_key|access_key_id|password|passphrase)\s*[=:]\s*\S"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----",
    re.IGNORECASE,
)


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return [name for name in listed if (REPO / name).is_file()]


def test_no_tracked_file_holds_a_credential():
    found = []
    for name in tracked_files():
        text = (REPO / name).read_text(errors="ignore")
        found += [f"{name}: {match.group(0)}" for match in CREDENTIAL.finditer(text)]
    # This file's own pattern is the one expected match.
    assert [f for f in found if not f.startswith("tests/test_safety.py")] == []


@pytest.mark.parametrize(
    "path",
    [".dvc/config.local", "dvc_plots/index.html"],  # secrets; what `dvc plots show` writes
)
def test_files_that_are_not_sources_are_ignored_by_git(path):
    ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, check=False)
    assert ignored.returncode == 0


def test_arrays_and_models_are_loaded_safely():
    code = {path: path.read_text() for path in (REPO / "pipeline").rglob("*.py")}
    # Arrays are read with np.fromfile after their header (shards.Rows), never np.load.
    assert not any(re.search(r"np\.load\(", text) for text in code.values())
    assert not any(
        "allow_pickle=True" in text or "safe_mode=False" in text for text in code.values()
    )
    unpickling = re.compile(r"^\s*(import|from) (c?pickle|dill|joblib)\b", re.MULTILINE)
    assert not any(unpickling.search(text) for text in code.values())
