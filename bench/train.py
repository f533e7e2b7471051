"""Training the Keras way against this pipeline, on the same images, side by side.

    python -m bench.train ../shared/datasets/hymenoptera --epochs 10 --rounds 2

The class folders under FOLDER (hymenoptera's train/ and val/ merged by class)
are copied into one raw folder. Then, alternating round by round:

- imgpipe: `imgpipe ingest`, `prepare`, `train` and `evaluate`, each a whole
  process as `dvc repro` runs it; then a second experiment that changes only
  the learning rate (train and evaluate: `dvc repro` decodes no image for it);
- keras:   the seed article's way, one process: `image_dataset_from_directory`
  on each split's folder (the very images prepare put in train, val and test),
  `model.fit` on the same model, epochs, batch size and learning rate, then
  `model.evaluate` on test; its images are decoded again every epoch.

And each round the bound: the same model fed one constant in-memory batch
(tf.data repeating one tensor), the epoch time no input pipeline can beat.
Epoch times are medians over the epochs after the first (which compiles).

    KERAS_BACKEND=jax python -m bench.train FOLDER --per-model

instead trains each of the four models with `imgpipe train` on the backend and
device at hand and prints training images per second, beside plain `model.fit` of
the same model on the training split held in memory (whether imgpipe's batches
keep up with the device).
"""

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.ingest import IMGPIPE, REPO, image_files
from pipeline import store, tables
from pipeline.params import MODEL_NAMES

KERAS_WAY = """
import json, sys, time
import keras
from pipeline.models import build_model, compile_model
splits, classes = sys.argv[1], sys.argv[2].split(",")
height, width, channels, epochs, batch, seed = map(int, sys.argv[3:9])
model_name, learning_rate = sys.argv[9], float(sys.argv[10])
keras.utils.set_random_seed(seed)
units = 1 if len(classes) == 2 else len(classes)
def folder(split, shuffle):
    return keras.utils.image_dataset_from_directory(
        f"{splits}/{split}", class_names=classes, image_size=(height, width), seed=seed,
        label_mode="binary" if units == 1 else "categorical", batch_size=batch,
        color_mode="grayscale" if channels == 1 else "rgb", shuffle=shuffle, verbose=False)
model = build_model(model_name, [(height, width, channels)], units)
compile_model(model, units, learning_rate)
class Clock(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None): self.began = time.perf_counter()
    def on_test_begin(self, logs=None): times.append(time.perf_counter() - self.began)
times = []
model.fit(folder("train", True), validation_data=folder("val", False), epochs=epochs,
          callbacks=[Clock()], verbose=0)
result = model.evaluate(folder("test", False), return_dict=True, verbose=0)
print(json.dumps({"accuracy": result["accuracy"], "epochs": times}))
"""


def merged_raw(folder: Path, raw: Path) -> list[str]:
    """Copy every class folder found one or two levels down into raw/<class>/ (no links:
    ingest quarantines links that leave its folder)."""
    classes = set()
    for file in image_files(folder):
        relative = file.relative_to(folder)
        label = relative.parts[-2]
        target = raw / label / "_".join(relative.parts[:-2] + (relative.name,))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
        classes.add(label)
    return sorted(classes)


def split_folders(raw: Path, processed: Path, out: Path) -> None:
    """The images prepare put in each split, as split/class folders for Keras."""
    for row in store.read_split_rows(processed):
        target = out / row.split / row.label / Path(row.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw / row.path, target)


def imgpipe(params: Path, work: Path, *stages: str) -> float:
    arguments = {
        "ingest": ["--raw", work / "raw", "--out", work / "interim", "--no-cache"],
        "prepare": ["--interim", work / "interim", "--out", work / "processed",
                    "--report-dir", work / "report"],
        "train": ["--processed", work / "processed", "--model-out", work / "model.keras",
                  "--live-dir", work / "live"],
        "evaluate": ["--model", work / "model.keras", "--processed", work / "processed",
                     "--out", work / "results"],
        "audit": ["--processed", work / "processed", "--out", work / "audit"],
    }  # fmt: skip
    start = time.perf_counter()
    for stage in stages:
        done = subprocess.run([IMGPIPE, "--params", params, stage, *arguments[stage]],
                              capture_output=True, text=True, env=quiet())  # fmt: skip
        if done.returncode:
            sys.exit(f"bench: imgpipe {stage} failed (exit {done.returncode}):\n{done.stderr}")
    return time.perf_counter() - start


def quiet() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def speeds(live: Path, name: str) -> list[float]:
    """Every epoch's 'epoch_seconds' or 'images_per_second', as train wrote them."""
    return [getattr(row, name) for row in tables.read_epoch_speeds(live / "speed.csv")]


def series(live: Path, name: str, split: str = "train") -> list[float]:
    """One per-epoch metric as dvclive logged it ('loss', 'accuracy'; split 'train' or 'val')."""
    with (live / "plots" / "metrics" / split / f"{name}.tsv").open() as file:
        return [float(row[name]) for row in csv.DictReader(file, delimiter="\t")]


def bound(processed: Path, settings: dict) -> list[float]:
    """Epoch times after the first of the same model fed one constant batch (a tf.data
    dataset repeating one in-memory tensor), as many steps as an epoch."""
    import numpy as np
    import tensorflow as tf

    from pipeline.models import build_model, compile_model

    split = store.read_split(processed, "train")
    batch = settings["batch_size"]
    steps = math.ceil(len(split.labels) / batch)
    pixels, labels = np.asarray(split.views[0][:batch]), np.asarray(split.labels[:batch])
    constant = tf.data.Dataset.from_tensors((pixels, labels)).repeat(steps)
    units = labels.shape[1]
    model = build_model(settings["model"], [pixels.shape[1:]], units)
    compile_model(model, units, settings["learning_rate"])
    return epoch_times(model, [constant], settings["epochs"], shuffle=False)


def in_memory(processed: Path, settings: dict) -> list[float]:
    """Epoch times after the first of plain `model.fit` on the training split loaded into
    memory as numpy arrays: the same model, precision and steps per execution, fed by
    Keras' own array input instead of imgpipe's batches. Any backend."""
    import keras
    import numpy as np

    from pipeline.models import MODELS, build_model, compile_model
    from pipeline.train import device_kind, dtype_policy

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(dtype_policy(settings["mixed_precision"], device_kind()))
    split = store.read_split(processed, "train")
    views = [np.asarray(view) for view in split.views[: MODELS[settings["model"]].inputs]]
    labels = np.asarray(split.labels)
    units = labels.shape[1]
    model = build_model(settings["model"], [view.shape[1:] for view in views], units)
    compile_model(model, units, settings["learning_rate"], settings["steps_per_execution"])
    pixels = views[0] if len(views) == 1 else views
    return epoch_times(model, [pixels, labels], settings["epochs"],
                       batch_size=settings["batch_size"], shuffle=True)  # fmt: skip


def epoch_times(model, data: list, epochs: int, **fit) -> list[float]:
    """`model.fit(*data, ...)`'s epoch times after the first (which compiles). The clock
    waits for the weights, as jax and torch return before the device has finished."""
    import keras

    def now() -> float:
        keras.ops.convert_to_numpy(model.trainable_weights[-1])
        return time.perf_counter()

    times = []
    clock = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: times.append(-now()),
        on_epoch_end=lambda epoch, logs: times.append(times.pop() + now()),
    )
    model.fit(*data, epochs=epochs, verbose=0, callbacks=[clock], **fit)
    return times[1:]


def bench_params(size: int, color_mode: str, epochs: int) -> dict:
    """The repository's params at this size, colour mode and number of epochs."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"].update(image_size=[size, size], color_mode=color_mode)
    params["prepare"]["views"] = [{"image_size": [size, size], "color_mode": color_mode}]
    params["train"]["epochs"] = epochs
    return params


def measure(folder: Path, epochs: int, rounds: int, size: int, color_mode: str) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        work = Path(scratch)
        live = work / "live"
        classes = merged_raw(folder, work / "raw")
        params = bench_params(size, color_mode, epochs)
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        second = dict(
            params, train={**params["train"], "learning_rate": params["train"]["learning_rate"] / 2}
        )
        (work / "second.yaml").write_text(yaml.safe_dump(second))  # fmt: skip
        settings, channels = params["train"], 1 if color_mode == "grayscale" else 3

        rows = {"imgpipe": [], "experiment": [], "keras": []}
        limits = []
        for round_ in range(rounds):
            seconds = imgpipe(work / "params.yaml", work, "ingest", "prepare", "train", "evaluate")
            accuracy = json.loads((work / "results" / "metrics.json").read_text())["accuracy"]
            rows["imgpipe"].append((seconds, speeds(live, "epoch_seconds"), accuracy))
            experiment = imgpipe(work / "second.yaml", work, "train", "evaluate")
            accuracy = json.loads((work / "results" / "metrics.json").read_text())["accuracy"]
            rows["experiment"].append((experiment, speeds(live, "epoch_seconds"), accuracy))
            limits += bound(work / "processed", settings)
            if round_ == 0:
                split_folders(work / "raw", work / "processed", work / "splits")
            command = [sys.executable, "-c", KERAS_WAY, work / "splits", ",".join(classes),
                       size, size, channels, epochs, settings["batch_size"], params["base"]["seed"],
                       settings["model"], settings["learning_rate"]]  # fmt: skip
            # The whole process, start-up and exit included, as for imgpipe's stages.
            start = time.perf_counter()
            done = subprocess.run(list(map(str, command)), check=True, capture_output=True,
                                  text=True, env=quiet(), cwd=REPO)  # fmt: skip
            seconds = time.perf_counter() - start
            keras = json.loads(done.stdout.splitlines()[-1])
            rows["keras"].append((seconds, keras["epochs"], keras["accuracy"]))
        limit = statistics.median(limits)

    images = sum(1 for _ in image_files(folder))
    print(
        f"{folder}: {images} images, {size}x{size} {color_mode}, {settings['model']}, "
        f"{epochs} epochs, batch {settings['batch_size']}, {rounds} rounds (medians)"
    )
    print(f"{'way':<34}{'whole run s':>12}{'epoch s':>10}{'test acc':>10}")
    labels = {
        "imgpipe": "imgpipe ingest+prepare+train+eval",
        "experiment": "imgpipe 2nd experiment (train+eval)",
        "keras": "keras (image_dataset_from_directory)",
    }
    medians = {}
    for name, results in rows.items():
        whole = statistics.median(r[0] for r in results)
        epoch = statistics.median(t for r in results for t in r[1][1:])
        accuracy = statistics.median(r[2] for r in results)
        medians[name] = (whole, epoch)
        print(f"{labels[name]:<34}{whole:>12.2f}{epoch:>10.3f}{accuracy:>10.4f}")
    print(f"{'bound (one constant batch)':<34}{'':>12}{limit:>10.3f}")
    print(
        f"keras whole run / imgpipe whole run: {medians['keras'][0] / medians['imgpipe'][0]:.2f}x"
    )
    print(f"imgpipe epoch / bound: {medians['imgpipe'][1] / limit:.2f} "
          f"(keras epoch / bound: {medians['keras'][1] / limit:.2f})")  # fmt: skip


def per_model(
    folder: Path, epochs: int, size: int, color_mode: str, steps_per_execution: int
) -> None:
    """Each of the four models trained by `imgpipe train` on whatever backend and device
    this process's environment gives (KERAS_BACKEND): training images per second, and
    the same model's plain `model.fit` on in-memory arrays (`in_memory`) beside it."""
    with tempfile.TemporaryDirectory(prefix="bench-models-") as scratch:
        work = Path(scratch)
        merged_raw(folder, work / "raw")
        params = bench_params(size, color_mode, epochs)
        # multi_input takes a second view in the other colour mode: ingest in colour.
        other = "grayscale" if color_mode == "rgb" else "rgb"
        params["ingest"]["color_mode"] = "rgb"
        params["prepare"]["views"].append({"image_size": [size, size], "color_mode": other})
        params["train"]["steps_per_execution"] = steps_per_execution
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        imgpipe(work / "params.yaml", work, "ingest", "prepare")
        print(f"{folder}: {size}x{size} {color_mode} (multi_input: + {other}), {epochs} epochs, "
              f"batch {params['train']['batch_size']}, {steps_per_execution} steps per execution; "
              "medians after the first epoch")  # fmt: skip
        rows = []
        for model in MODEL_NAMES:
            params["train"]["model"] = model
            (work / "params.yaml").write_text(yaml.safe_dump(params))
            imgpipe(work / "params.yaml", work, "train")
            ran_on = yaml.safe_load((work / "live" / "params.yaml").read_text())
            speed = statistics.median(speeds(work / "live", "images_per_second")[1:])
            epoch = statistics.median(speeds(work / "live", "epoch_seconds")[1:])
            accuracy = series(work / "live", "accuracy", "val")[-1]  # after the last epoch
            rows.append((model, ran_on, speed, epoch, accuracy))
        # Only now: this process's backend may take the device's memory (jax on a GPU).
        images = len(store.read_split(work / "processed", "train").labels)
        print(f"{'model':<14}{'backend':>12}{'device':>8}{'precision':>15}{'images/s':>10}"
              f"{'epoch s':>10}{'val acc':>9}{'in-memory img/s':>17}")  # fmt: skip
        for model, ran_on, speed, epoch, accuracy in rows:
            plain = images / statistics.median(in_memory(work / "processed", {**params["train"],
                                                         "model": model}))  # fmt: skip
            print(f"{model:<14}{ran_on['backend']:>12}{ran_on['device']:>8}"
                  f"{ran_on['dtype_policy']:>15}{speed:>10.0f}{epoch:>10.3f}"
                  f"{accuracy:>9.3f}{plain:>17.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="image height and width")
    parser.add_argument("--color-mode", choices=["grayscale", "rgb"], default="rgb")
    parser.add_argument(
        "--per-model", action="store_true",
        help="instead: images per second of each of the four models on this backend and device",
    )  # fmt: skip
    parser.add_argument(
        "--steps-per-execution", type=int, default=1,
        help="with --per-model: train.steps_per_execution (batches per call into the backend)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.per_model:
        per_model(args.folder, args.epochs, args.size, args.color_mode, args.steps_per_execution)
    else:
        measure(args.folder, args.epochs, args.rounds, args.size, args.color_mode)


if __name__ == "__main__":
    main()
