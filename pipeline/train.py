"""Train: fit the model named in params on the prepared arrays, logging with dvclive."""

import sys
from pathlib import Path

import keras
import numpy as np
from dvclive import Live

from pipeline import store
from pipeline.models import build_model, compile_model
from pipeline.params import Params


class LiveLogger(keras.callbacks.Callback):
    """Log every epoch's metrics to dvclive.

    dvclive ships a Keras callback, but it subclasses tf.keras and imports
    TensorFlow, which would tie training to one backend.
    """

    def __init__(self, live: Live):
        super().__init__()
        self.live = live

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            # "val_loss" -> "val/loss", "loss" -> "train/loss": one plot file per split.
            if name.startswith("val_"):
                name = "val/" + name.removeprefix("val_")
            else:
                name = "train/" + name
            self.live.log_metric(name, float(value))
        self.live.next_step()


def model_inputs(views: list[np.ndarray], count: int):
    """The arrays a model with `count` inputs takes: one view, or a list of them."""
    arrays = [np.asarray(view) for view in views[:count]]
    return arrays[0] if count == 1 else arrays


def train(
    train_split: store.Split,
    val_split: store.Split,
    params: Params,
    callbacks: list[keras.callbacks.Callback],
) -> keras.Model:
    """Build, compile and fit the model; pure apart from the callbacks."""
    keras.utils.set_random_seed(params.base.seed)
    settings = params.train
    units = train_split.labels.shape[1]
    model = build_model(settings.model, [view.shape[1:] for view in train_split.views], units)
    compile_model(model, units, settings.learning_rate)
    count = len(model.inputs)
    validation = None
    if len(val_split.labels):
        validation = (model_inputs(val_split.views, count), np.asarray(val_split.labels))
    model.fit(
        model_inputs(train_split.views, count),
        np.asarray(train_split.labels),
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        validation_data=validation,
        shuffle=True,
        callbacks=callbacks,
        # A progress bar on a terminal, one line per epoch in logs.
        verbose=1 if sys.stdout.isatty() else 2,
    )
    return model


def run(processed: Path, model_path: Path, live_dir: Path, params: Params) -> keras.Model:
    train_split = store.read_split(processed, "train")
    val_split = store.read_split(processed, "val")
    # dvc.yaml declares the metrics and plots itself, so dvclive must not edit it.
    with Live(str(live_dir), dvcyaml=None, save_dvc_exp=False) as live:
        model = train(train_split, val_split, params, [LiveLogger(live)])
    labels, summary = store.labels_beside(model_path), store.summary_beside(model_path)
    store.clear_outputs(model_path.parent, [model_path.name, labels.name, summary.name])
    with store.atomic_path(model_path, suffix=".keras") as temporary:
        model.save(temporary)
    lines = []
    model.summary(print_fn=lambda text, line_break=False: lines.append(text))
    store.write_bytes(summary, ("\n".join(lines) + "\n").encode())
    # Last, so that a model never stands beside another run's label map: the label map
    # it was trained with, which evaluate and predict check.
    store.write_json(labels, store.read_class_indices(processed))
    return model
