"""The audit: confident learning's ranking, the folds, the command, and its opt-in stage."""

import json
import re
import subprocess
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import store, tables
from pipeline.audit import assign_folds
from pipeline.cli import cli
from pipeline.label_issues import rank_issues
from pipeline.params import RANKINGS
from tests.conftest import (
    BIN,
    FAST,
    dvc_env,
    ingest_and_prepare,
    make_dataset,
    new_project,
    ran_stages,
    write_params,
)


def noisy_probabilities(seed: int):
    """Labels (some flipped at random) and softmax probabilities that mostly favour each
    image's true class, of a random number of classes and images."""
    rng = np.random.default_rng(seed)
    classes, count = int(rng.integers(2, 7)), int(rng.integers(20, 300))
    truth = rng.integers(0, classes, count)
    logits = rng.normal(0, 1, (count, classes))
    logits[np.arange(count), truth] += rng.uniform(0.5, 4)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = truth.copy()
    flip = rng.random(count) < 0.1
    labels[flip] = rng.integers(0, classes, flip.sum())
    return labels, probabilities


@pytest.mark.parametrize("rank_by", RANKINGS)
def test_the_ranking_is_cleanlabs_on_the_same_inputs(rank_by):
    filters = pytest.importorskip("cleanlab.filter", reason="cleanlab (test extra) missing")
    compared = 0
    for seed in range(300):
        labels, probabilities = noisy_probabilities(seed)
        if len(np.unique(labels)) < probabilities.shape[1]:
            continue  # cleanlab refuses a class no image is labelled with
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its notes on classes with few examples
            expected = filters.find_label_issues(
                labels, probabilities, return_indices_ranked_by=rank_by, n_jobs=1
            )
        found, _ = rank_issues(labels, probabilities, rank_by)
        assert found.tolist() == expected.tolist(), seed
        compared += bool(len(expected))
    assert compared > 250


def test_planted_flips_rank_first_with_the_class_they_came_from():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 30)
    probabilities = np.full((90, 3), 0.05)
    probabilities[np.arange(90), truth] = 0.9
    probabilities += rng.uniform(0, 0.02, probabilities.shape)  # no two images alike
    labels = truth.copy()
    planted = [3, 40, 77]
    labels[planted] = [1, 2, 0]
    probabilities[planted, labels[planted]] = [0.09, 0.01, 0.03]  # how wrong each looks
    probabilities /= probabilities.sum(axis=1, keepdims=True)

    found, scores = rank_issues(labels, probabilities, "self_confidence")

    assert found.tolist() == [40, 77, 3]  # lowest probability of the given label first
    assert np.all(np.diff(scores) >= 0)
    assert probabilities[found].argmax(axis=1).tolist() == truth[found].tolist()


def _row(index: int, group: str = "") -> store.SplitRow:
    return store.SplitRow(f"c/{index}.png", f"{index:064x}", "c", "train", group, "")


def test_folds_keep_groups_whole_cover_every_image_once_and_do_not_move():
    groups = {i: f"{i // 4:064x}" for i in range(0, 400)}  # 100 groups of four
    rows = [_row(i, groups[i]) for i in range(400)] + [_row(i) for i in range(400, 1400)]

    folds = assign_folds(rows, 5)

    assert folds.shape == (1400,) and set(folds.tolist()) == set(range(5))
    for start in range(0, 400, 4):
        assert len(set(folds[start : start + 4].tolist())) == 1, "a group split across folds"
    sizes = np.bincount(folds, minlength=5)
    assert sizes.min() > 200 and sizes.max() < 360, sizes  # about 280 each
    more = rows + [_row(i) for i in range(1400, 1500)]
    assert assign_folds(more, 5)[:1400].tolist() == folds.tolist()  # adding moves none


def test_the_command_finds_labels_flipped_in_real_images(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=16)
    flipped = {"dark/005.png": "bright", "bright/009.png": "mid"}
    for path, other in flipped.items():  # filed under a class they do not look like
        (raw / path).rename(raw / other / path.replace("/", "_"))
    settings = {**FAST, "train": {**FAST["train"], "epochs": 4}, "audit": {"folds": 3}}
    params = write_params(tmp_path / "params.yaml", **settings)
    processed = ingest_and_prepare(tmp_path, params, raw)
    out = tmp_path / "audit"

    result = CliRunner().invoke(
        cli, ["--params", str(params), "audit", "--processed", str(processed), "--out", str(out)]
    )

    assert result.exit_code == 0, result.output
    folds = re.findall(r"fold \d of 3: training on (\d+) images, predicting (\d+)", result.output)
    assert len(folds) == 3 and sum(int(held) for _, held in folds) == 48  # each image once
    assert all(int(rest) + int(held) == 48 for rest, held in folds)
    suspects = tables.read_suspects(out / "suspects.csv")
    top = {row.path: (row.given, row.suggested) for row in suspects[:2]}
    assert top == {
        "bright/dark_005.png": ("bright", "dark"),
        "mid/bright_009.png": ("mid", "bright"),
    }
    assert (out / "suspects.png").read_bytes().startswith(b"\x89PNG")
    assert f"{len(suspects)} labels look wrong" in result.output


def test_a_bad_audit_folds_is_named_before_anything_runs(tmp_path):
    params = write_params(tmp_path / "params.yaml", audit={"folds": 1})
    result = CliRunner().invoke(cli, ["--params", str(params), "audit", "--out",
                                      str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 2
    assert "audit.folds = 1 is invalid; allowed: an integer from 2 to 100" in result.output
    assert not (tmp_path / "out").exists()


def _run(repo, *command) -> str:
    done = subprocess.run(command, cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_plain_dvc_repro_never_runs_the_audit_and_its_own_dvc_yaml_does(tmp_path):
    repo = new_project(tmp_path / "project")  # as tests/test_dvc_pipeline.py's fixture
    _run(repo, "git", "init", "-q", "-b", "main")
    _run(repo, BIN / "dvc", "init", "-q")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "start")

    assert ran_stages(_run(repo, BIN / "dvc", "repro")) == [
        "ingest", "prepare", "train", "evaluate"
    ]  # fmt: skip
    assert not (repo / "results" / "audit").exists()
    # `dvc status` reads every dvc.yaml: it says the audit has not run, as README says.
    assert list(json.loads(_run(repo, BIN / "dvc", "status", "--json"))) == ["audit/dvc.yaml:audit"]
    # As README says: the pipeline's stages are up to date, so only the audit runs.
    assert ran_stages(_run(repo, BIN / "dvc", "repro", "audit/dvc.yaml")) == [
        "audit/dvc.yaml:audit"
    ]
    assert tables.read_suspects(repo / "results" / "audit" / "suspects.csv") is not None
    assert ran_stages(_run(repo, BIN / "dvc", "repro")) == []
    assert ran_stages(_run(repo, BIN / "dvc", "repro", "audit/dvc.yaml")) == []
    assert "up to date" in _run(repo, BIN / "dvc", "status")
    plots = _run(repo, BIN / "dvc", "plots", "show", "--json")
    assert "results/audit/suspects.png" in plots
