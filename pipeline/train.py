"""Train: fit the model named in params on the prepared arrays, logging with dvclive.

Only Keras 3 APIs: the same code runs on any Keras backend (KERAS_BACKEND; the
tests train on tensorflow, jax and torch). Batches are read from the prepared shards
as training goes, so a data set larger than memory trains too.
"""

import contextlib
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from pipeline import distribute, figures, files, model_record, store, tables
from pipeline.batches import Batches
from pipeline.models import Moments, build_model, compile_model
from pipeline.params import Params

if TYPE_CHECKING:  # imported where it is used
    from dvclive import Live


class LiveLogger(keras.callbacks.Callback):
    """Log what trains (backend, device, versions) and every epoch's metrics to dvclive,
    and keep every epoch's metrics, training time and images per second; say on stdout
    what trains.

    The times stay out of dvclive's metrics: DVC would track them, and retraining to the
    same weights would then show as a change in `dvc metrics diff`.

    dvclive ships a Keras callback, but it subclasses tf.keras and imports
    TensorFlow, which would tie training to one backend.
    """

    def __init__(self, live: "Live", images_per_epoch: int, replicas: int):
        super().__init__()
        self.live, self.images, self.replicas = live, images_per_epoch, replicas
        self.started = self.trained = None
        self.epochs: list[dict] = []
        self.speeds: list[tables.EpochSpeedRow] = []

    def on_train_begin(self, logs=None):
        ran_on = environment(self.replicas)
        self.live.log_params(ran_on)
        replicas = f", {self.replicas} replicas" if self.replicas > 1 else ""
        print(
            f"train: {self.images} images an epoch on {ran_on['device']}{replicas}, "
            f"{ran_on['backend']} backend, {ran_on['dtype_policy']}",
            flush=True,
        )

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.trained = self._now(), None

    def on_test_begin(self, logs=None):  # validation: the training part of the epoch is over
        if self.started is not None and self.trained is None:
            self.trained = self._now() - self.started

    def on_epoch_end(self, epoch, logs=None):
        seconds = self.trained or self._now() - self.started
        self.speeds.append(tables.EpochSpeedRow(epoch, seconds, self.images / seconds))
        self.epochs.append(dict(logs or {}))
        for name, value in (logs or {}).items():
            # "val_loss" -> "val/loss", "loss" -> "train/loss": one plot file per split.
            if name.startswith("val_"):
                name = "val/" + name.removeprefix("val_")
            else:
                name = "train/" + name
            self.live.log_metric(name, float(value))
        self.live.next_step()

    def _now(self) -> float:
        # jax and torch return before the device has finished: wait for the weights first.
        keras.ops.convert_to_numpy(self.model.trainable_weights[-1])
        return time.perf_counter()


# How close to the chance level a run's best training loss may stay, and its best
# validation accuracy to the largest class's share, for the run to count as learning.
CHANCE_MARGIN = 0.03
MAJORITY_MARGIN = 0.01


def class_counts(labels: np.ndarray) -> np.ndarray:
    """Images per class of (N, 1) 0/1 or (N, K) one-hot labels."""
    if labels.shape[1] == 1:
        ones = float(np.sum(labels))
        return np.array([len(labels) - ones, ones])
    return np.asarray(labels).sum(axis=0)


def chance_loss(counts: np.ndarray) -> float:
    """The cross-entropy of a model that learned only how often each class occurs: the
    entropy of the class frequencies (ln K for K balanced classes)."""
    shares = counts[counts > 0] / counts.sum()
    return float(-np.sum(shares * np.log(shares)))


def nothing_learned(epochs: list[dict], train_counts, val_counts) -> str | None:
    """Why a run learned nothing, or None when it learned: its best training loss stayed
    at the chance level, or its best validation accuracy at the largest class's share."""
    chance = chance_loss(train_counts)
    best_loss = min(epoch["loss"] for epoch in epochs)
    if best_loss >= chance * (1 - CHANCE_MARGIN):
        return f"training loss {best_loss:.3f} stayed at the chance level {chance:.3f}"
    if "val_accuracy" in epochs[0] and val_counts.sum():
        majority = float(val_counts.max() / val_counts.sum())
        best = max(epoch["val_accuracy"] for epoch in epochs)
        if best <= majority + MAJORITY_MARGIN:
            return (
                f"validation accuracy {best:.3f} stayed at the share of its largest class "
                f"({majority:.3f})"
            )
    return None


def device_kind() -> str:
    """'gpu', 'tpu' or 'cpu': what the backend computes on."""
    if keras.backend.backend() == "torch":  # Keras lists devices for jax and tensorflow only
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return keras.distribution.list_devices()[0].split(":")[0].lower()


def dtype_policy(setting: str, device: str) -> str:
    """train.mixed_precision -> Keras dtype policy; 'auto' halves precision on a GPU only."""
    mixed = setting == "on" or (setting == "auto" and device == "gpu")
    return "mixed_float16" if mixed else "float32"


def environment(replicas: int) -> dict:
    """What ran the training, for dvclive's params: backend, device, precision, versions."""
    backend = keras.backend.backend()
    return {
        "backend": backend,
        "device": device_kind(),
        "dtype_policy": keras.config.dtype_policy().name,  # as train() set it
        "replicas": replicas,
        "versions": {name: metadata.version(name) for name in ("keras", backend, "numpy", "dvc")},
    }


def train(
    train_split: store.Split,
    val_split: store.Split,
    params: Params,
    callbacks: list[keras.callbacks.Callback],
    distribution: distribute.Distribution | None = None,
) -> keras.Model:
    """Build, compile and fit the model; pure apart from the callbacks."""
    distribution = distribution or distribute.start("none")
    keras.utils.set_random_seed(params.base.seed)
    settings = params.train
    keras.config.set_dtype_policy(dtype_policy(settings.mixed_precision, device_kind()))
    units = train_split.labels.shape[1]
    shapes = [view.shape[1:] for view in train_split.views]
    size, shard = settings.batch_size, distribution.shard
    steps = distribution.steps(size, len(train_split.labels))  # refuses an unsplittable batch
    execution = steps_per_execution(settings.steps_per_execution, steps)
    if execution != settings.steps_per_execution:
        print(
            f"train: {execution} steps per execution: the most, up to train.steps_per_execution "
            f"= {settings.steps_per_execution}, that divides the {steps} batches of an epoch",
            flush=True,
        )
    moments = [channel_moments(view) for view in train_split.views]
    with distribution.scope():
        model = build_model(settings.model, shapes, units, settings.augment, moments)
        compile_model(model, units, settings.learning_rate, execution)
    inputs = len(model.inputs)
    if shard[1] > 1:  # validation too in whole global batches, split evenly
        replicas = distribution.replicas
        validation_size = min(size, len(val_split.labels) // replicas * replicas)
    else:
        validation_size = size if len(val_split.labels) else 0
    validation = None
    if validation_size:
        validation = Batches(val_split, inputs, validation_size, shard=shard)
    stopping = settings.early_stopping
    if stopping.patience:
        callbacks = [
            *callbacks,
            keras.callbacks.EarlyStopping(
                monitor="val_loss" if validation else "loss",
                patience=stopping.patience,
                restore_best_weights=stopping.restore_best_weights,
            ),
        ]
    batches = Batches(train_split, inputs, size, seed=params.base.seed, shard=shard)
    if distribution.strategy is not None and distribution.setting == "multi_worker":
        distribute.fit_multi_worker(
            model, distribution, batches, validation, settings.epochs, callbacks
        )
        return model
    model.fit(
        batches,
        steps_per_epoch=len(batches),  # the batches are endless and shuffled (see Batches)
        shuffle=False,
        epochs=settings.epochs,
        validation_data=validation,
        callbacks=callbacks,
        # A progress bar on a terminal, one line per epoch in logs.
        verbose=1 if sys.stdout.isatty() else 2,
    )
    return model


def channel_moments(pixels: np.ndarray, chunk_bytes: int = 64 << 20) -> Moments:
    """Each channel's mean and variance over (N, H, W, C) uint8 pixels, read a block of
    images at a time from the split's file: O(N) time, O(chunk_bytes) memory."""
    channels = pixels.shape[-1]
    total, squares = np.zeros(channels), np.zeros(channels)
    rows = max(1, chunk_bytes // (8 * pixels[0].nbytes))  # each block is made float64
    for block in files.read_blocks(pixels, rows):
        chunk = block.astype(np.float64).reshape(-1, channels)
        total += chunk.sum(axis=0)
        squares += np.square(chunk).sum(axis=0)
    count = len(pixels) * pixels.shape[1] * pixels.shape[2]  # prepare never leaves train empty
    mean = total / count
    # Floored: a constant channel (a blank view) must not divide by zero.
    variance = np.maximum(squares / count - np.square(mean), 1.0)
    return Moments(tuple(mean.tolist()), tuple(variance.tolist()))


def steps_per_execution(setting: int, steps: int) -> int:
    """The most batches per call into the backend, at most `setting`, that divide an epoch
    of `steps` batches. Keras runs whole calls of that many batches, so with any other
    number an epoch trains on more batches than it has (4 of 9: 12 an epoch)."""
    return max(d for d in range(1, min(setting, steps) + 1) if steps % d == 0)


def architecture_png(model: keras.Model, path: Path) -> str | None:
    """Draw the model with keras.utils.plot_model; without graphviz, say so in the image."""
    try:
        with files.atomic_path(path, suffix=".png") as temporary:
            keras.utils.plot_model(model, to_file=str(temporary), show_shapes=True, dpi=72)
        return None
    except ImportError:
        problem = "plot_model needs graphviz: install it (apt install graphviz) and train again"
        files.write_bytes(path, figures.message(problem))
        return problem


SPEEDS = "speed.csv"  # every epoch's time and images per second, beside dvclive's files


def run(
    processed: Path, model_path: Path, live_dir: Path, params: Params
) -> tuple[keras.Model, bool]:
    """Train and, on the chief, write everything; (the model, whether this process wrote)."""
    # First: a multi-worker strategy must exist before the backend makes any tensor.
    distribution = distribute.start(params.train.distribution)
    with contextlib.ExitStack() as stack:
        if not distribution.chief:
            # Every process runs the same steps (saving can wait for all of them), but only
            # the chief writes into the workspace: the others write into a folder deleted after.
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgpipe-")))
            model_path, live_dir = scratch / model_path.name, scratch / "live"
        return _train_and_save(processed, model_path, live_dir, params, distribution)


def _train_and_save(
    processed: Path,
    model_path: Path,
    live_dir: Path,
    params: Params,
    distribution: distribute.Distribution,
) -> tuple[keras.Model, bool]:
    from dvclive import Live

    train_split = store.read_split(processed, "train")
    val_split = store.read_split(processed, "val")
    # Before training, not after: an interrupted run then leaves no model beside its metrics.
    beside = model_record.beside_model(model_path)
    files.clear_outputs(model_path.parent, [model_path.name, *(p.name for p in beside.values())])
    files.clear_outputs(live_dir, [SPEEDS])
    # dvc.yaml declares the metrics and plots itself, so dvclive must not edit it.
    with Live(str(live_dir), dvcyaml=None, save_dvc_exp=False) as live:
        logger = LiveLogger(live, len(train_split.labels), distribution.replicas)
        model = train(train_split, val_split, params, [logger], distribution)
    why = nothing_learned(
        logger.epochs, class_counts(train_split.labels), class_counts(val_split.labels)
    )
    # The tracked metrics: the last epoch's, and whether the run learned (a column of
    # `dvc exp show`); dvclive's last step goes, to keep `dvc metrics show` in 160 columns.
    tracked = {name: value for name, value in live.summary.items() if name != "step"}
    files.write_json(Path(live.metrics_file), {**tracked, "learned": why is None})
    tables.write_epoch_speeds(live_dir / SPEEDS, logger.speeds)
    if why:
        print(
            f"train: warning: this run learned nothing ({why}): try a lower "
            "train.learning_rate, more train.epochs or train.model: sequential, and check "
            "that each class folder holds its class",
            file=sys.stderr,
        )
    with files.atomic_path(model_path, suffix=".keras") as temporary:
        model.save(temporary)
    lines = []
    model.summary(print_fn=lambda text, line_break=False: lines.append(text))
    files.write_bytes(beside["summary"], ("\n".join(lines) + "\n").encode())
    if problem := architecture_png(model, beside["architecture"]):
        print(
            f"train: warning: {beside['architecture']} is a placeholder: {problem}", file=sys.stderr
        )
    # Last: the label map and ingest's settings it was trained with, and the model's digest,
    # which evaluate and predict check, so that a model never passes with another run's.
    trained_with = model_record.ModelRecord(
        classes=store.read_class_indices(processed), ingest=params.ingest
    )
    model_record.write_model_record(model_path, trained_with)
    return model, distribution.chief
