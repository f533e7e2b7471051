"""`dvc repro` on the real dvc.yaml, in a temporary git + DVC repository."""

import json
import shutil
import subprocess

import pytest
import yaml

from pipeline.diff import CHANGES
from tests.conftest import (
    BIN,
    dvc_env,
    image_bytes,
    make_dataset,
    new_project,
    ran_stages,
    write_params,
)

pytestmark = pytest.mark.slow


def run(repo, *command) -> str:
    done = subprocess.run(command, cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def repo(tmp_path):
    """A new project: this repository's pipeline and dvc.yaml, tiny data, one commit."""
    repo = new_project(tmp_path / "project")
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
    # dvc.yaml's stages; a plain `dvc status` lists the opt-in audit too (tests/test_audit.py).
    assert "up to date" in run(repo, BIN / "dvc", "status", "dvc.yaml")

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert ran_stages(run(repo, BIN / "dvc", "repro")) == ["train", "evaluate"]
    steps = (repo / "results" / "train" / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    assert len(steps.splitlines()) == 1 + 2  # header and one row per epoch


def test_a_bad_param_fails_repro_before_any_stage_output_exists(repo):
    write_params(repo / "params.yaml", ingest={"image_size": [64, 0]})
    done = subprocess.run([BIN / "dvc", "repro"], cwd=repo, env=dvc_env(), capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode != 0
    assert "ingest.image_size = [64, 0] is invalid" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (repo / "data" / "interim" / "images").exists()


@pytest.mark.parametrize("cache_type", ["copy", "hardlink"])
def test_repro_after_a_new_image_rewrites_only_the_prepared_files_it_reaches(repo, cache_type):
    """dvc.yaml keeps data/processed while prepare runs, and prepare leaves each file that
    holds what it would write: those of the classes without new images keep their inodes,
    whether DVC copied over prepare's links to the ingested images (its default) or
    links them all to its cache."""
    run(repo, BIN / "dvc", "config", "cache.type", cache_type)
    run(repo, BIN / "dvc", "repro", "prepare")
    processed = repo / "data" / "processed"
    inodes = {path: path.stat().st_ino for path in processed.rglob("*") if path.is_file()}
    (repo / "data" / "raw" / "dark" / "new.png").write_bytes(image_bytes(30, "new dark"))
    assert ran_stages(run(repo, BIN / "dvc", "repro", "prepare")) == ["ingest", "prepare"]
    rewritten = {
        path.relative_to(processed).as_posix()
        for path in processed.rglob("*")
        if path.is_file() and inodes.get(path) != path.stat().st_ino
    }
    shard = {path.split("/")[1].removesuffix(".csv") for path in rewritten if "splits/" in path}
    assert len(shard) == 1  # the one dark's last images are in, of one shard a class at least
    (name,) = shard
    # labels.json is written anew each run; DVC links it back to its unchanged cache object.
    assert rewritten - {"labels.json"} == {
        "shards.csv", f"splits/{name}.csv", f"labels/{name}.npy", f"view0/{name}.npy"
    }  # fmt: skip
    grown = {path: path.read_bytes() for path in processed.rglob("*") if path.is_file()}
    shutil.rmtree(processed)
    run(repo, BIN / "dvc", "repro", "--force", "prepare")  # the same bytes built cold
    assert {path: path.read_bytes() for path in processed.rglob("*") if path.is_file()} == grown


def test_diff_shows_what_changed_between_two_commits(repo):
    run(repo, BIN / "dvc", "repro", "prepare")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "data v1")
    raw = repo / "data" / "raw"
    for index in range(5):  # 10% more images
        (raw / "dark" / f"new{index}.png").write_bytes(image_bytes(30, f"new dark {index}"))
    (raw / "bright" / "000.png").rename(raw / "mid" / "was-bright.png")  # same image, new class
    (raw / "mid" / "001.png").unlink()
    run(repo, BIN / "dvc", "repro", "prepare")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "data v2")

    table = json.loads(run(repo, BIN / "imgpipe", "diff", "HEAD~1", "HEAD", "--json"))
    assert table["dark"]["added"] == 5
    assert table["mid"]["relabelled"] == 1 and table["mid"]["removed"] == 1
    assert table["total"] == {
        "added": 5, "removed": 1, "relabelled": 1, "moved_with_group": 0, "moved": 0
    }  # fmt: skip
    printed = run(repo, BIN / "imgpipe", "diff", "HEAD~1", "HEAD")
    assert printed.splitlines()[0].split() == ["class", *CHANGES]
    unchanged = json.loads(run(repo, BIN / "imgpipe", "diff", "--json"))  # HEAD vs work tree
    assert set(unchanged["total"].values()) == {0}

    # A folder of another kind ended in a `KeyError: 'width'` traceback.
    (repo / "elsewhere").mkdir()
    shutil.copytree(repo / "data" / "interim" / "manifest", repo / "elsewhere" / "splits")
    shutil.copy(repo / "data" / "interim" / "shards.csv", repo / "elsewhere")
    run(repo, "git", "add", "elsewhere")
    run(repo, "git", "commit", "-qm", "a manifest where splits go")
    wrong = ["diff", "HEAD", "--processed", "elsewhere"]
    done = subprocess.run([BIN / "imgpipe", *wrong], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: elsewhere/splits/")
    assert " at HEAD is damaged" in done.stderr
    assert "is damaged or not the file expected (ValueError: its columns are path, label, " in (
        done.stderr
    )


def test_diff_against_a_revision_without_prepared_data_says_so_in_one_line(repo):
    # The fixture's one commit has no dvc.lock: DVC said "... does not exist in the target
    # repository ... neither as a DVC output nor as a Git-tracked file".
    command = [BIN / "imgpipe", "diff", "HEAD"]
    done = subprocess.run(command, cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr == (
        "Error: data/processed is not in HEAD: prepare had not run there, or its "
        "dvc.lock was not committed. imgpipe diff compares prepared splits: run `dvc repro "
        "prepare` and commit dvc.lock first\n"
    )


def test_diff_of_an_unknown_revision_says_what_to_check(repo):
    command = [BIN / "imgpipe", "diff", "no-such-rev", "HEAD"]
    done = subprocess.run(command, cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert done.returncode == 1
    assert "cannot read data/processed at no-such-rev" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_experiment_on_training_params_decodes_no_image_and_is_listed(repo):
    run(repo, BIN / "dvc", "repro")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")

    output = run(repo, BIN / "dvc", "exp", "run", "-S", "train.model=shared_input", "-n", "shared")

    assert ran_stages(output) == ["train", "evaluate"]  # ingest and prepare come from the cache
    shown = json.loads(run(repo, BIN / "dvc", "exp", "show", "--json"))
    experiments = {
        (exp.get("name") or exp["rev"]): exp["data"]
        for baseline in shown
        for exp in [
            baseline,
            *(e for run_ in baseline.get("experiments") or [] for e in run_["revs"]),
        ]
    }
    shared = experiments["shared"]
    assert shared["params"]["params.yaml"]["data"]["train"]["model"] == "shared_input"
    accuracy = shared["metrics"]["results/evaluate/metrics.json"]["data"]["accuracy"]
    assert 0 <= accuracy <= 1
    assert shared["params"]["results/train/params.yaml"]["data"]["backend"] == "tensorflow"
    # The commit the experiment started from; "workspace" holds the experiment's changes.
    baseline = next(
        data for name, data in experiments.items() if name not in ("shared", "workspace")
    )
    assert baseline["params"]["params.yaml"]["data"]["train"]["model"] == "sequential"
    assert "results/evaluate/metrics.json" in baseline["metrics"]


def test_metrics_show_fits_160_columns_with_ten_classes_and_retraining_changes_none(repo):
    raw = repo / "data" / "raw"
    shutil.rmtree(raw)
    make_dataset(raw, per_class=8, classes={f"class_{i}": 25 * i for i in range(10)})
    run(repo, BIN / "dvc", "repro")
    shown = run(repo, BIN / "dvc", "metrics", "show").splitlines()
    assert max(map(len, shown)) <= 160, "\n".join(shown)
    assert {"accuracy", "loss", "macro_f1", "roc_auc", "images", "learned"} <= set(shown[0].split())
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "ten classes")
    for stage in ("train", "evaluate"):  # the same weights again: no timing is tracked
        run(repo, BIN / "dvc", "repro", "--force", "--single-item", stage)
    assert run(repo, BIN / "dvc", "metrics", "diff").strip() == ""
