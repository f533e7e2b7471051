"""`dvc repro` on the real dvc.yaml, in a temporary git + DVC repository."""

import json
import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import BIN, FAST, REPO, make_dataset, write_params

pytestmark = pytest.mark.slow

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def run(repo, *command) -> str:
    env = {**os.environ, **GIT_IDENTITY, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


@pytest.fixture
def repo(tmp_path):
    """A new project: this repository's pipeline and dvc.yaml, tiny data, one commit."""
    repo = tmp_path / "project"
    shutil.copytree(REPO / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__py*"))
    for name in ["dvc.yaml", ".gitignore"]:
        shutil.copy(REPO / name, repo / name)
    write_params(repo / "params.yaml", **FAST)
    make_dataset(repo / "data" / "raw", per_class=16)
    run(repo, "git", "init", "-q", "-b", "main")
    run(repo, BIN / "dvc", "init", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "start")
    return repo


def test_repro_builds_everything_then_nothing_then_only_what_a_param_touches(repo):
    first = run(repo, BIN / "dvc", "repro")
    assert ran_stages(first) == ["ingest", "prepare", "train", "evaluate"]
    metrics = json.loads((repo / "results" / "evaluate" / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["images"] > 0
    shown = json.loads(run(repo, BIN / "dvc", "metrics", "show", "--json"))
    assert "results/evaluate/metrics.json" in json.dumps(shown)

    assert ran_stages(run(repo, BIN / "dvc", "repro")) == []
    assert "up to date" in run(repo, BIN / "dvc", "status")

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert ran_stages(run(repo, BIN / "dvc", "repro")) == ["train", "evaluate"]
    steps = (repo / "results" / "train" / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    assert len(steps.splitlines()) == 1 + 2  # header and one row per epoch


def test_a_bad_param_fails_repro_before_any_stage_output_exists(repo):
    write_params(repo / "params.yaml", ingest={"image_size": [64, 0]})
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([BIN / "dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "ingest.image_size = [64, 0] is invalid" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (repo / "data" / "interim" / "images.npy").exists()
