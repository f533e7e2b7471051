"""The click commands, run as a user runs them."""

import contextlib
import csv
import errno
import fcntl
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from pipeline import caches, files, model_record, prepare, store, tables
from pipeline.cli import cli
from pipeline.ingest import decode as decoding
from pipeline.predict import predict as classify
from pipeline.train import device_kind
from tests.conftest import (
    BIN,
    CLASS_LEVELS,
    FAST,
    REPO,
    deadline,
    encode,
    foreign_file,
    ingest_and_prepare,
    make_dataset,
    peak_rss,
    tmpfs,
    write_params,
)

STAGES = ["ingest", "prepare", "train", "evaluate"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A raw data set taken through every stage by hand, with small settings."""
    root = tmp_path_factory.mktemp("project")
    paths = {
        "params": write_params(root / "params.yaml", **FAST),
        "raw": make_dataset(root / "raw", per_class=16),
        "interim": root / "interim",
        "processed": root / "processed",
        "model": root / "model.keras",
        "live": root / "live",
        "results": root / "results",
        "prepare_report": root / "prepare_report",
    }
    commands = {
        "ingest": ["--raw", paths["raw"], "--out", paths["interim"], "--cache", root / "cache"],
        "prepare": ["--interim", paths["interim"], "--out", paths["processed"],
                    "--report-dir", paths["prepare_report"]],
        "train": ["--processed", paths["processed"], "--model-out", paths["model"],
                  "--live-dir", paths["live"]],
        "evaluate": ["--model", paths["model"], "--processed", paths["processed"],
                     "--out", paths["results"]],
    }  # fmt: skip
    outputs = {}
    for stage in STAGES:
        result = invoke("--params", paths["params"], stage, *commands[stage])
        assert result.exit_code == 0, result.output
        outputs[stage] = result.output
    return paths, commands, outputs


def test_help_lists_every_command_with_a_summary():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ["demo-data", *STAGES]:
        assert f"  {command} " in result.output


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_help_explains_its_paths_and_defaults(stage):
    result = invoke(stage, "--help")
    assert result.exit_code == 0
    assert "[default: " in result.output
    assert "params" in result.output or stage == "evaluate"


def _heavy_modules_after(args, cwd) -> list[str]:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from pipeline.cli import cli\n"
        "result = CliRunner().invoke(cli, sys.argv[1:])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=cwd, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return eval(done.stdout)


def test_help_ingest_and_prepare_never_import_a_deep_learning_backend(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=4)
    params = write_params(tmp_path / "params.yaml", **FAST)
    assert _heavy_modules_after(["--help"], REPO) == []
    ingest = ["--params", params, "ingest", "--raw", raw, "--out", tmp_path / "interim"]
    assert _heavy_modules_after(ingest, tmp_path) == []
    prepare = ["--params", params, "prepare", "--interim", tmp_path / "interim",
               "--out", tmp_path / "processed", "--report-dir", tmp_path / "report"]  # fmt: skip
    assert _heavy_modules_after(prepare, tmp_path) == []


def test_the_stages_by_hand_write_every_output(project):
    paths, _, outputs = project
    assert sorted(p.name for p in paths["interim"].iterdir()) == sorted(store.INTERIM_FILES)
    assert sorted(p.name for p in paths["processed"].iterdir()) == sorted(
        ["shards.csv", "splits", "labels", "view0", "labels.json"]
    )
    assert sorted(p.name for p in paths["prepare_report"].iterdir()) == [
        "class_balance.png", "report.json", "samples.png"
    ]  # fmt: skip
    assert "leakage 0" in outputs["prepare"]
    assert "48 images in 3 classes" in outputs["ingest"]
    assert "48 accepted, 0 quarantined, 0 duplicate, 0 conflict, 0 ignored" in outputs["ingest"]
    assert paths["model"].is_file()
    assert not list(paths["model"].parent.glob(".*.partial*"))
    beside = model_record.beside_model(paths["model"])
    summary = beside["summary"].read_text()
    assert 'Model: "sequential"' in summary and "Flatten" in summary
    assert beside["architecture"].read_bytes().startswith(PNG)
    assert "is a placeholder" not in outputs["train"]  # graphviz is installed here
    images = len(store.read_split(paths["processed"], "train").labels)
    said = f"train: {images} images an epoch on {device_kind()}, {keras.backend.backend()} backend"
    assert outputs["train"].startswith(said)

    live = json.loads((paths["live"] / "metrics.json").read_text())
    # Only what people compare: no timing, which would differ on every retraining.
    assert set(live) == {"train", "val", "learned"}
    assert set(live["train"]) == set(live["val"]) == {"loss", "accuracy"}
    speeds = tables.read_epoch_speeds(paths["live"] / "speed.csv")
    assert [row.step for row in speeds] == [0] and speeds[0].images_per_second > 0
    assert (paths["live"] / "plots" / "metrics" / "val" / "loss.tsv").is_file()
    ran_on = yaml.safe_load((paths["live"] / "params.yaml").read_text())
    assert ran_on["backend"] == "tensorflow" and ran_on["device"] == "cpu"
    assert ran_on["dtype_policy"] == "float32"  # mixed_precision: auto, and no GPU
    assert set(ran_on["versions"]) == {"keras", "tensorflow", "numpy", "dvc"}

    metrics = json.loads((paths["results"] / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "loss", "macro_f1", "roc_auc", "images"}
    test_split = store.read_split(paths["processed"], "test")
    assert metrics["images"] == len(test_split.labels) > 0
    assert 0 <= metrics["accuracy"] <= 1 and np.isfinite(metrics["loss"])
    assert f"test accuracy {metrics['accuracy']:.4f}" in outputs["evaluate"]
    rows = predictions(paths["results"])
    assert len(rows) == metrics["images"]
    test_rows = store.read_split_rows(paths["processed"])
    assert [r["path"] for r in rows] == [r.path for r in test_rows if r.split == "test"]
    with (paths["results"] / "classes.csv").open() as file:
        scores = list(csv.DictReader(file))
    assert [row["label"] for row in scores] == sorted(CLASS_LEVELS)
    for row in scores:
        support = sum(r["actual"] == row["label"] for r in rows)
        hits = sum(r["actual"] == r["predicted"] == row["label"] for r in rows)
        assert int(row["support"]) == support
        assert float(row["recall"]) == pytest.approx(hits / support if support else 0.0)
    f1 = np.mean([float(row["f1"]) for row in scores])
    assert metrics["macro_f1"] == pytest.approx(f1)
    assert 0 <= metrics["roc_auc"] <= 1
    roc = (paths["results"] / "roc.csv").read_text().splitlines()
    assert roc[0] == "false_positive_rate,true_positive_rate,threshold" and len(roc) > 2
    for picture in ["confusion.png", "errors.png"]:
        assert (paths["results"] / picture).read_bytes().startswith(PNG)


PNG = b"\x89PNG\r\n\x1a\n"


def predictions(results) -> list[dict]:
    with (results / "predictions.csv").open(newline="") as file:
        return list(csv.DictReader(file))


BAD_PARAMS = {"train": {"epochs": 0}, "ingest": {"color_mode": "sepia"}}


@pytest.mark.parametrize("stage", STAGES)
def test_bad_params_stop_every_stage_with_exit_2_one_line_and_no_output_touched(
    project, tmp_path, stage
):
    paths, commands, _ = project
    bad = write_params(tmp_path / "params.yaml", **BAD_PARAMS)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths["interim"].parent.rglob("*")
              if p.is_file()}  # fmt: skip

    result = invoke("--params", bad, stage, *commands[stage])

    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert result.output.startswith("Error: ") and "ingest.color_mode = 'sepia'" in result.output
    assert "Traceback" not in result.output
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths["interim"].parent.rglob("*")
             if p.is_file()}  # fmt: skip
    assert after == before


def test_a_data_problem_exits_1_with_a_message_not_a_traceback(tmp_path):
    (tmp_path / "raw" / "cats").mkdir(parents=True)
    params = write_params(tmp_path / "params.yaml")
    out = tmp_path / "o"
    result = invoke("--params", params, "ingest", "--raw", tmp_path / "raw", "--out", out)
    assert result.exit_code == 1
    assert result.output.startswith("Error: no usable images")
    assert not out.exists()


def test_a_path_the_file_system_refuses_exits_1_with_one_line_naming_it(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=2)
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "interim"
    result = invoke("--params", write_params(tmp_path / "params.yaml"), "ingest",
                    "--raw", raw, "--out", out, "--no-cache")  # fmt: skip
    assert result.exit_code == 1
    assert result.output == (
        f"Error: Not a directory: {out}; part of the path is a file, not a folder: "
        "choose another path, then run the command again\n"
    )


def test_a_full_disk_exits_1_saying_to_free_space(tmp_path, monkeypatch):
    def full(path, array):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() raises, no path

    monkeypatch.setattr(files, "save_array", full)
    raw = make_dataset(tmp_path / "raw", per_class=2)
    result = invoke("--params", write_params(tmp_path / "params.yaml"), "ingest",
                    "--raw", raw, "--out", tmp_path / "interim", "--no-cache")  # fmt: skip
    assert result.exit_code == 1
    assert result.output == (
        "Error: No space left on device; free some space, then run the command again\n"
    )
    assert not (tmp_path / "interim" / "report.json").exists()


def test_evaluate_refuses_a_model_trained_with_another_label_map(project, tmp_path):
    paths, _, _ = project
    processed = tmp_path / "processed"
    shutil.copytree(paths["processed"], processed)
    (processed / "labels.json").write_text('{"bright": 0, "dark": 1, "mid": 2, "new": 3}')
    result = invoke("--params", paths["params"], "evaluate", "--model", paths["model"],
                    "--processed", processed, "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 1
    assert "was trained with the label map" in result.output and "train again" in result.output
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_model_without_its_label_map(project, tmp_path):
    paths, _, _ = project
    alone = tmp_path / "model.keras"
    shutil.copy(paths["model"], alone)
    result = invoke("--params", paths["params"], "evaluate", "--model", alone,
                    "--processed", paths["processed"], "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 1
    assert "has no model.labels.json beside it" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("damage", ["cut short", "weights torn"])
def test_a_damaged_model_file_is_one_line_saying_how_to_get_it_back(
    project, tmp_path, damage, command
):
    paths, _, _ = project
    damaged = tmp_path / "model.keras"
    if damage == "cut short":
        damaged.write_bytes(paths["model"].read_bytes()[:5000])
    else:  # a whole zip whose weights file lost its second half
        with zipfile.ZipFile(paths["model"]) as source, zipfile.ZipFile(damaged, "w") as target:
            for name in source.namelist():
                data = source.read(name)
                target.writestr(name, data[: len(data) // 2] if name.endswith(".h5") else data)
    labels = model_record.beside_model(paths["model"])["labels"]
    shutil.copy(labels, model_record.beside_model(damaged)["labels"])
    arguments = {
        "evaluate": [
            "--model",
            damaged,
            "--processed",
            paths["processed"],
            "--out",
            tmp_path / "out",
        ],
        "predict": [damaged, paths["raw"]],
    }[command]
    result = invoke("--params", paths["params"], command, *arguments)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {damaged} cannot be loaded as a Keras model (")
    assert result.output.endswith("train again (dvc repro) or fetch it again (dvc pull)\n")
    assert not (tmp_path / "out").exists()


def test_a_mixed_precision_model_evaluates_and_predicts_without_optimizer_warnings(
    project, tmp_path, recwarn
):
    # What train.mixed_precision: auto gives on every GPU. Keras cannot load its
    # loss-scaling optimizer back into a float32 process and warned on every evaluate.
    paths, _, _ = project
    params = write_params(tmp_path / "params.yaml", **{**FAST, "train": {
        **FAST["train"], "mixed_precision": "on"}})  # fmt: skip
    model = tmp_path / "model.keras"
    try:
        trained = invoke("--params", params, "train", "--processed", paths["processed"],
                         "--model-out", model, "--live-dir", tmp_path / "live")  # fmt: skip
    finally:
        keras.config.set_dtype_policy("float32")  # the policy is global to the process
    assert trained.exit_code == 0 and "mixed_float16" in trained.output, trained.output
    results = tmp_path / "results"
    evaluated = invoke("--params", params, "evaluate", "--model", model,
                       "--processed", paths["processed"], "--out", results)  # fmt: skip
    predicted = invoke("predict", model, paths["raw"], "--workers", 1)
    assert evaluated.exit_code == 0 and predicted.exit_code == 0, evaluated.output
    assert [str(w.message) for w in recwarn if "optimizer" in str(w.message)] == []
    metrics = json.loads((results / "metrics.json").read_text())
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1


def test_evaluate_refuses_a_model_whose_input_shape_differs(project, tmp_path):
    paths, _, _ = project
    processed = tmp_path / "processed"
    shutil.copytree(paths["processed"], processed)
    other_size = store.Split([np.zeros((3, 40, 40, 1), np.uint8)], np.eye(3, dtype=np.float32))
    classes = store.read_class_indices(processed)
    store.write_splits(processed, dict.fromkeys(store.SPLITS, other_size), classes)
    result = invoke("--params", paths["params"], "evaluate", "--model", paths["model"],
                    "--processed", processed, "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 1
    assert "takes inputs of shape [(32, 32, 1)]" in result.output


def test_a_missing_input_folder_names_the_option(tmp_path):
    result = invoke("prepare", "--interim", tmp_path / "nowhere")
    assert result.exit_code == 2
    assert "--interim" in result.output and "does not exist" in result.output


def test_python_dash_m_runs_the_same_cli():
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo-data" in done.stdout


def test_multi_input_trains_and_evaluates_on_two_views_of_colour_images(tmp_path):
    params = write_params(
        tmp_path / "params.yaml",
        ingest={"image_size": [32, 32], "color_mode": "rgb"},
        prepare={
            "val_fraction": 0.2,
            "test_fraction": 0.25,
            "views": [
                {"image_size": [32, 32], "color_mode": "grayscale"},
                {"image_size": [16, 16], "color_mode": "rgb"},
            ],
        },
        train={"model": "multi_input", "epochs": 1, "batch_size": 8},
    )
    ingest_and_prepare(tmp_path, params, make_dataset(tmp_path / "raw", per_class=12))
    steps = [
        ["train", "--processed", tmp_path / "processed", "--model-out", tmp_path / "m.keras",
         "--live-dir", tmp_path / "live"],
        ["evaluate", "--model", tmp_path / "m.keras", "--processed", tmp_path / "processed",
         "--out", tmp_path / "results"],
    ]  # fmt: skip
    for step in steps:
        result = invoke("--params", params, *step)
        assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "results" / "metrics.json").read_text())["images"] > 0
    train = store.read_split(tmp_path / "processed", "train")
    assert [view.shape[1:] for view in train.views] == [(32, 32, 1), (16, 16, 3)]


def test_multi_input_with_one_view_is_a_params_error(tmp_path):
    params = write_params(tmp_path / "params.yaml", train={"model": "multi_input"})
    result = invoke("--params", params, "train", "--processed", tmp_path)
    assert result.exit_code == 2
    assert "train.model = 'multi_input' needs 2 prepare.views, found 1" in result.output


def test_predict_agrees_with_evaluate_on_the_same_images(project):
    paths, _, _ = project
    rows = store.read_split_rows(paths["processed"])
    test_files = [paths["raw"] / row.path for row in rows if row.split == "test"]
    result = invoke("predict", paths["model"], *test_files, "--json")
    assert result.exit_code == 0, result.output
    predicted = json.loads(result.output)
    evaluated = predictions(paths["results"])
    assert [row["label"] for row in predicted] == [row["predicted"] for row in evaluated]
    assert [row["probability"] for row in predicted] == pytest.approx(
        [float(row["confidence"]) for row in evaluated], abs=1e-5
    )


def test_predict_lists_unusable_files_and_reads_folders(project, tmp_path):
    paths, _, _ = project
    folder = tmp_path / "incoming"
    shutil.copytree(paths["raw"] / "dark", folder)
    (folder / "broken.png").write_bytes(b"not a picture")
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / "new" / ".ipynb_checkpoints").mkdir(parents=True)
    (folder / "new" / ".ipynb_checkpoints" / "a-checkpoint.png").write_bytes(b"\0")
    (folder / "new" / "notes.txt").write_text("to label")
    result = invoke("predict", paths["model"], folder)
    assert result.exit_code == 1  # one file could not be classified; the others still are
    assert result.stderr == "predict: 1 of 17 files could not be classified\n"
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["file", "label", "probability"]
    assert len(lines) == 1 + 16 + 1  # 16 images and the broken file, not what ingest ignores
    assert any("broken.png" in line and "quarantined: UnidentifiedImageError" in line
               for line in lines)  # fmt: skip
    probabilities = [float(line.split()[-1]) for line in lines[1:] if "quarantined" not in line]
    assert len(probabilities) == 16
    assert all(0.33 <= p <= 1 for p in probabilities)  # the winning class of three
    as_json = invoke("predict", paths["model"], folder, "--json")
    assert as_json.exit_code == 1
    rows = json.loads(as_json.stdout)
    assert len(rows) == 17
    assert [row["file"] for row in rows if row["label"] is None] == [str(folder / "broken.png")]


def test_predict_gives_the_same_rows_on_one_worker_and_several(project):
    paths, _, _ = project
    rows = [
        json.loads(invoke("predict", paths["model"], paths["raw"], "--workers", workers,
                          "--json").output)
        for workers in (1, 3)
    ]  # fmt: skip
    assert len(rows[0]) == 48 and rows[0] == rows[1]


def test_predict_gives_the_same_rows_in_batches_of_any_size(project, tmp_path):
    paths, _, _ = project
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name in CLASS_LEVELS:
        for index in range(3):
            shutil.copy(paths["raw"] / name / f"{index:03d}.png", folder / f"{name}{index}.png")
    (folder / "c-broken.png").write_bytes(b"not a picture")  # between bright and dark
    # FAST's images and view are 32x32 grayscale, 1024 bytes: batches of 1, 3 and all 10.
    rows = [classify(paths["model"], [folder], chunk_bytes=chunk_bytes)
            for chunk_bytes in (1, 3 * 1024, prepare.CHUNK_BYTES)]  # fmt: skip
    assert [row["file"] for row in rows[0]] == [str(path) for path in sorted(folder.iterdir())]
    assert rows[0][3]["quarantined"].startswith("UnidentifiedImageError")
    # Probabilities to float32 rounding: the kernels may sum in another order by batch size.
    for batched in rows[:2]:
        for row, whole in zip(batched, rows[2], strict=True):
            assert row == {**whole, "probability": pytest.approx(whole["probability"], abs=1e-6)}


def peak_rss_of_predict(model: Path, folder: Path, count: int) -> int:
    """Bytes: the peak RSS of an `imgpipe predict` process of `count` copies of a flat
    1024x1024 PNG. Decoding it takes longer than predicting it, so few decoded results
    wait for predict: decode_in_workers queues every file, and does not bound them."""
    folder.mkdir()
    image = encode(Image.new("L", (1024, 1024), 30))
    for index in range(count):
        (folder / f"{index:05d}.png").write_bytes(image)
    return peak_rss([BIN / "imgpipe", "predict", model, folder, "--workers", 1])


@pytest.mark.slow
def test_predicts_peak_memory_grows_with_its_batch_size_not_with_the_files(tmp_path):
    # Decoded at 256x256 grayscale, 6000 files are 375 MiB of pixels, more than the 256 MiB
    # allowed beyond the run on 60 files. predict before batches held them twice, the
    # decoded bytes and their stack: 771 MiB more. In batches it holds one batch twice and
    # what is on its way from the worker: 156 to 174 MiB more.
    view = {"image_size": [16, 16], "color_mode": "grayscale"}  # small: a fast model
    params = write_params(
        tmp_path / "params.yaml",
        ingest={"image_size": [256, 256]},
        prepare={**FAST["prepare"], "views": [view]},
        train=FAST["train"],
    )
    processed = ingest_and_prepare(tmp_path, params, make_dataset(tmp_path / "raw", per_class=8))
    model = tmp_path / "model.keras"
    result = invoke("--params", params, "train", "--processed", processed, "--model-out", model,
                    "--live-dir", tmp_path / "live")  # fmt: skip
    assert result.exit_code == 0, result.output
    few = peak_rss_of_predict(model, tmp_path / "few", 60)
    many = peak_rss_of_predict(model, tmp_path / "many", 6000)
    assert many < few + 4 * prepare.CHUNK_BYTES, (few, many)


def test_predict_needs_only_the_model_folder(project, tmp_path):
    # Run outside the project, it asked for params.yaml and data/processed.
    paths, _, _ = project
    model = tmp_path / "models" / "model.keras"
    model.parent.mkdir()
    shutil.copy(paths["model"], model)
    copy_beside_files(paths["model"], model)
    image = tmp_path / "photos" / "photo.png"
    image.parent.mkdir()
    shutil.copy(paths["raw"] / "dark" / "000.png", image)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([BIN / "imgpipe", "predict", model, image], cwd=elsewhere,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split() == ["file", "label", "probability"]
    file, label, probability = row.split()
    assert file == str(image) and label in CLASS_LEVELS and 1 / 3 <= float(probability) <= 1
    assert list(elsewhere.iterdir()) == []


def test_predict_decodes_files_with_the_settings_the_model_was_trained_with(tmp_path):
    # Colour, padded to a square: not the grayscale, stretched settings of the params
    # file given, which predict does not read.
    trained = write_params(
        tmp_path / "params.yaml",
        ingest={"image_size": [32, 32], "color_mode": "rgb", "resize": "pad"},
        prepare={**FAST["prepare"], "views": [{"image_size": [24, 24], "color_mode": "rgb"}]},
        train=FAST["train"],
    )
    raw = make_dataset(tmp_path / "raw", per_class=8)  # 40x30 images: padding shows
    processed = ingest_and_prepare(tmp_path, trained, raw)
    model = tmp_path / "model.keras"
    result = invoke("--params", trained, "train", "--processed", processed, "--model-out", model,
                    "--live-dir", tmp_path / "live")  # fmt: skip
    assert result.exit_code == 0, result.output
    test = store.read_split(processed, "test")
    files = [raw / row.path for row in store.read_split_rows(processed)
             if row.split == "test"]  # fmt: skip
    other = write_params(tmp_path / "other.yaml", **FAST)
    result = invoke("--params", other, "predict", model, *files, "--json")
    assert result.exit_code == 0, result.output
    expected = keras.saving.load_model(model).predict(np.asarray(test.views[0]), verbose=0)
    names = list(store.read_class_indices(processed))
    predicted = json.loads(result.stdout)
    assert [row["label"] for row in predicted] == [names[i] for i in expected.argmax(axis=1)]
    assert [row["probability"] for row in predicted] == pytest.approx(
        expected.max(axis=1).tolist(), abs=1e-6
    )


def test_predict_refuses_a_label_file_an_older_imgpipe_wrote(project, tmp_path):
    # The label map and the model's digest, without the settings predict now reads.
    paths, _, _ = project
    model = tmp_path / "model.keras"
    shutil.copy(paths["model"], model)
    labels = model_record.beside_model(model)["labels"]
    record = json.loads(model_record.beside_model(paths["model"])["labels"].read_text())
    labels.write_text(json.dumps({key: record[key] for key in ("classes", "model_sha256")}))
    result = invoke("predict", model, paths["raw"] / "dark" / "000.png")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output == (
        f"Error: {labels} is an older imgpipe's, which lacks the settings predict needs, or not "
        "imgpipe's (ingest: Field required); train again (dvc repro)\n"
    )


@pytest.mark.parametrize("backend", ["nonesuch", "openvino"])  # unknown; known, not installed
@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_a_backend_keras_cannot_load_is_one_line_saying_what_to_set(
    project, tmp_path, command, backend
):
    paths, _, _ = project
    arguments = {
        "train": ["--processed", paths["processed"], "--model-out", tmp_path / "m.keras",
                  "--live-dir", tmp_path / "live"],
        "evaluate": ["--model", paths["model"], "--processed", paths["processed"],
                     "--out", tmp_path / "results"],
        "predict": [paths["model"], paths["raw"]],
    }[command]  # fmt: skip
    done = subprocess.run([BIN / "imgpipe", "--params", paths["params"], command, *arguments],
                          env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 1
    assert f"Keras cannot load the '{backend}' backend" in done.stderr
    assert "to tensorflow, jax, torch or numpy" in done.stderr and "KERAS_BACKEND" in done.stderr
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []


def test_tensorflows_start_up_chatter_is_held_back_by_default(project):
    paths, _, _ = project
    command = [BIN / "imgpipe", "predict", paths["model"], paths["raw"] / "dark"]
    plain = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(command, env=plain, capture_output=True, text=True, check=True)
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == 1 + 16


def test_a_run_that_learned_nothing_says_so_and_records_it(project, tmp_path):
    paths, _, _ = project
    params = write_params(tmp_path / "params.yaml", **{**FAST, "train": {
        **FAST["train"], "learning_rate": 1e-9}})  # fmt: skip
    live = tmp_path / "live"
    command = [BIN / "imgpipe", "--params", params, "train", "--processed", paths["processed"],
               "--model-out", tmp_path / "model.keras", "--live-dir", live]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "learned nothing" in line]
    assert len(warnings) == 1 and "chance level" in warnings[0]
    assert "train.learning_rate" in warnings[0]
    assert json.loads((live / "metrics.json").read_text())["learned"] is False


def _train_and_evaluate(project, folder, env=None) -> dict:
    """Train and evaluate again on the project's prepared data, into `folder`."""
    paths, _, _ = project
    model, live, results = folder / "model.keras", folder / "live", folder / "results"
    for args in (
        ["train", "--processed", paths["processed"], "--model-out", model, "--live-dir", live],
        ["evaluate", "--model", model, "--processed", paths["processed"], "--out", results],
    ):
        command = [BIN / "imgpipe", "--params", paths["params"], *args]
        done = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    return {"model": model, "live": live, "results": results}


def test_the_same_data_params_and_seed_give_the_same_metrics_on_cpu(project, tmp_path):
    paths, _, _ = project
    again = _train_and_evaluate(project, tmp_path)
    for name in ["metrics.json", "predictions.csv", "roc.csv", "precision_recall.csv"]:
        assert (again["results"] / name).read_bytes() == (paths["results"] / name).read_bytes()
    first, second = (json.loads((live / "metrics.json").read_text())
                     for live in (paths["live"], again["live"]))  # fmt: skip
    for split in ("train", "val"):
        assert (first[split]["loss"], first[split]["accuracy"]) == (
            second[split]["loss"], second[split]["accuracy"]
        )  # fmt: skip


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_run_the_same_training_code(project, tmp_path, backend):
    paths, _, _ = project
    outputs = _train_and_evaluate(project, tmp_path, env={"KERAS_BACKEND": backend})
    ran_on = yaml.safe_load((outputs["live"] / "params.yaml").read_text())
    assert ran_on["backend"] == backend and backend in ran_on["versions"]
    metrics = json.loads((outputs["results"] / "metrics.json").read_text())
    assert metrics["images"] == len(store.read_split(paths["processed"], "test").labels)
    assert 0 <= metrics["accuracy"] <= 1 and np.isfinite(metrics["loss"])
    # A .keras file is backend-neutral: tensorflow evaluates the model the other one trained.
    result = invoke("--params", paths["params"], "evaluate", "--model", outputs["model"],
                    "--processed", paths["processed"], "--out", tmp_path / "tf")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "tf" / "metrics.json").read_text())["accuracy"] == pytest.approx(
        metrics["accuracy"]
    )


@pytest.mark.parametrize("kind", ["a photo", "notes", "another program's SQLite database"])
def test_a_cache_path_holding_a_file_imgpipe_did_not_make_is_refused_untouched(tmp_path, kind):
    raw = make_dataset(tmp_path / "raw", per_class=2)
    # --cache data/raw/ants/0013035.jpg renamed the photo before
    foreign = raw / "dark" / "000.png" if kind == "a photo" else foreign_file(tmp_path, kind)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    result = invoke("ingest", "--raw", raw, "--out", tmp_path / "out", "--cache", foreign)
    assert result.exit_code == 2
    assert result.output == (
        f"Error: --cache {foreign} is not an imgpipe decode cache, and ingest never moves or "
        "overwrites a file it did not create: name a new file (or --no-cache)\n"
    )
    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before  # nothing renamed, written beside it or created


def test_a_cache_made_before_caches_were_marked_is_still_used(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=2)
    cache = tmp_path / "decoded.sqlite"
    first = invoke("ingest", "--raw", raw, "--out", tmp_path / "first", "--cache", cache)
    assert first.exit_code == 0, first.output
    with contextlib.closing(sqlite3.connect(cache)) as database, database:
        database.execute("PRAGMA application_id = 0")  # as every cache was before the mark,
        database.execute("ALTER TABLE kept_sets RENAME TO kept_array")  # with its tables
    result = invoke("ingest", "--raw", raw, "--out", tmp_path / "again", "--cache", cache)
    assert result.exit_code == 0, result.output
    with contextlib.closing(sqlite3.connect(cache)) as database:
        (mark,) = database.execute("PRAGMA application_id").fetchone()
    assert mark == caches.APPLICATION_ID


def copy_beside_files(model: Path, target: Path) -> None:
    """What train wrote beside `model`, beside `target`."""
    for source, copy in zip(model_record.beside_model(model).values(),
                            model_record.beside_model(target).values(), strict=True):  # fmt: skip
        shutil.copy(source, copy)


def test_predict_on_a_named_pipe_says_so_and_never_opens_it(project, tmp_path):
    paths, _, _ = project
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)  # opening it to read would wait for a writer, for ever
    image = paths["raw"] / "dark" / "000.png"
    with deadline(60, "predict waited on the named pipe"):
        result = invoke("predict", paths["model"], pipe, image)
    assert result.exit_code == 1  # the pipe could not be classified
    lines = result.stdout.splitlines()
    assert f"{pipe}  quarantined: {decoding.NOT_REGULAR}" in lines[1]
    assert "dark" in lines[2]


def test_an_interrupted_train_leaves_no_model_beside_its_metrics(project, tmp_path):
    paths, _, _ = project
    model = tmp_path / "model.keras"
    shutil.copy(paths["model"], model)  # the previous run's outputs
    copy_beside_files(paths["model"], model)
    params = write_params(tmp_path / "params.yaml", **{**FAST, "train": {"epochs": 10_000}})
    live = tmp_path / "live"
    train = subprocess.Popen([BIN / "imgpipe", "--params", params, "train", "--processed",
                              paths["processed"], "--model-out", model, "--live-dir", live],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (live / "metrics.json").exists():  # one epoch done: training, not starting
            assert train.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        train.send_signal(signal.SIGINT)  # Ctrl-C
        assert train.wait(timeout=60) != 0
    finally:
        train.kill()
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".yaml" and p != live] == []
    result = invoke("--params", paths["params"], "evaluate", "--model", model,
                    "--processed", paths["processed"], "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_label_map_written_for_another_model_file_is_refused(project, tmp_path, command):
    paths, _, _ = project
    model = tmp_path / "model.keras"
    copy_beside_files(paths["model"], model)
    other = keras.saving.load_model(paths["model"])  # the same layers, other weights
    other.layers[-1].kernel.assign(np.zeros(other.layers[-1].kernel.shape))
    other.save(model)
    arguments = {
        "evaluate": ["--model", model, "--processed", paths["processed"],
                     "--out", tmp_path / "out"],
        "predict": [model, paths["raw"]],
    }[command]  # fmt: skip
    result = invoke("--params", paths["params"], command, *arguments)
    assert result.exit_code == 1
    assert f"{model.with_name('model.labels.json')} belongs to another model.keras" in result.output
    assert not (tmp_path / "out").exists()


def test_a_second_ingest_into_the_same_folder_waits_for_the_first(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=4)
    out = tmp_path / "out"
    out.mkdir()
    holder = os.open(out, os.O_RDONLY)  # as a running ingest holds it
    fcntl.flock(holder, fcntl.LOCK_EX)
    command = [BIN / "imgpipe", "ingest", "--raw", raw, "--out", out, "--no-cache"]
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert second.stderr.readline() == f"ingest: waiting for another ingest writing to {out}\n"
        time.sleep(1)
        assert second.poll() is None and list(out.iterdir()) == []  # it waits, writing nothing
    finally:
        os.close(holder)  # the first one ends
    assert second.wait(timeout=120) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(store.INTERIM_FILES)
    # Two at once: 1 pair in 20 failed with "No such file or directory: .../images.npy".
    pair = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(2)]  # fmt: skip
    assert [process.wait(timeout=120) for process in pair] == [0, 0]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_follow_the_umask(tmp_path, umask):
    # Written through mkstemp, they were 0600 whatever the umask.
    raw = make_dataset(tmp_path / "raw", per_class=2)
    out = tmp_path / "out"
    command = [BIN / "imgpipe", "ingest", "--raw", raw, "--out", out, "--no-cache"]
    subprocess.run(command, check=True, capture_output=True, preexec_fn=lambda: os.umask(umask))
    modes = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    folders = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_dir()}
    assert modes == {0o666 & ~umask} and folders == {0o777 & ~umask}


def test_an_output_path_on_a_read_only_file_system_is_one_line_saying_what_to_do(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=2)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    with tmpfs(read_only, "ro"):
        result = invoke("ingest", "--raw", raw, "--out", read_only / "interim", "--no-cache")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output == (
        f"Error: Read-only file system: {read_only / 'interim'}; choose a path on a writable "
        "file system (see --help), then run the command again\n"
    )


def test_a_broken_params_file_is_named_before_a_missing_input_folder(tmp_path):
    # Before, `imgpipe train` with train.model: resnet50 and no data/processed said only
    # that the folder does not exist.
    params = write_params(tmp_path / "params.yaml", train={"model": "resnet50"})
    result = invoke("--params", params, "train", "--processed", tmp_path / "nowhere")
    assert result.exit_code == 2
    assert "train.model = 'resnet50' is invalid" in result.output
    assert "does not exist" not in result.output
    shown = invoke("--params", params, "train", "--help")  # help needs no valid params
    assert shown.exit_code == 0 and shown.output.startswith("Usage:")
