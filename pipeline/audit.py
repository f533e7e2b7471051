"""Audit: the images whose labels look wrong to models that never trained on them.

Every prepared image (all splits) goes to one of audit.folds folds by the hash of its
near-duplicate group (its own content hash when alone), so a copy never predicts its own
label and adding images moves none. train.model is trained with train's settings once
per fold, on the other folds' images, and predicts the fold; confident learning
(pipeline/label_issues.py) then ranks the labels those out-of-sample probabilities
contradict.

Time: audit.folds trainings on (folds - 1) / folds of the images each, and one pass of
predictions over all of them. Memory: the labels and the N x K probabilities, plus
what one training holds (batches are read from the shard files as train reads them).
"""

import hashlib
import logging
from pathlib import Path

import keras
import numpy as np

from pipeline import figures, files, shards, store, tables
from pipeline.batches import Batches, inference_batch_size
from pipeline.errors import PipelineError
from pipeline.evaluate import class_indices_of
from pipeline.label_issues import rank_issues
from pipeline.params import Params
from pipeline.train import train

GALLERY_SIZE = 16  # the likeliest label errors drawn in suspects.png
OUTPUTS = ("suspects.csv", "suspects.png")


def assign_folds(rows: list[store.SplitRow], folds: int) -> np.ndarray:
    """(N,) each image's fold: from the hash of its group's name, so that a group never
    spans two folds and an image's fold depends on nothing but its group."""
    keys = (f"audit:{row.group or row.sha256}".encode() for row in rows)
    return np.array([int(hashlib.sha256(key).hexdigest()[:16], 16) % folds for key in keys])


def _subset(split: store.Split, rows: np.ndarray) -> store.Split:
    """The sorted `rows` of a split read_split gave (its views shards.Rows)."""
    views = [shards.Rows(view.folder, view.shards, view.index[rows]) for view in split.views]
    return store.Split(views, split.labels[rows])


def per_class(predictions: np.ndarray) -> np.ndarray:
    """(N, K) class probabilities from a model's outputs: one sigmoid unit is P(class 1)."""
    if predictions.shape[1] == 1:
        return np.concatenate([1 - predictions, predictions], axis=1)
    return predictions


class _Retracing(logging.Filter):
    """TensorFlow's warning that predict was traced again, from the fifth model on: each
    fold's model is a new one, as meant."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "tf.function retracing" not in record.getMessage()


def out_of_sample(images: store.Split, folds: np.ndarray, params: Params) -> np.ndarray:
    """(N, K) float64: each image's class probabilities from the model trained on every
    fold but its own."""
    count = params.audit.folds
    if len(np.unique(folds)) < 2:
        raise PipelineError(
            f"all {len(folds)} images fell into one of the {count} folds (one near-duplicate "
            "group, or too few images): the audit needs images in two folds at least; add "
            "images, or lower prepare.near_duplicate_distance"
        )
    logging.getLogger("tensorflow").addFilter(_Retracing())
    nothing = np.array([], np.int64)
    probabilities = np.zeros((len(folds), max(2, images.labels.shape[1])))
    for fold in range(count):
        held = np.flatnonzero(folds == fold)
        if len(held) == 0:
            continue
        rest = np.flatnonzero(folds != fold)
        print(
            f"audit: fold {fold + 1} of {count}: training on {len(rest)} images, "
            f"predicting {len(held)}",
            flush=True,
        )
        model = train(_subset(images, rest), _subset(images, nothing), params, callbacks=[])
        fold, inputs = _subset(images, held), len(model.inputs)
        batches = Batches(fold, inputs, batch_size=inference_batch_size(fold, inputs))
        probabilities[held] = per_class(model.predict(batches, verbose=0).astype(np.float64))
        keras.backend.clear_session()  # each fold's model and graph, freed
    return probabilities


def suspects_png(view, order: np.ndarray, suspects: list[tables.SuspectRow]) -> bytes:
    """The likeliest label errors, worst first, with the given and the suggested label."""
    if not suspects:
        return figures.message("No label looks wrong to the models that did not train on it.")
    top = order[:GALLERY_SIZE]
    pixels = view[np.sort(top)]  # read in file order, drawn in rank order
    place = {row: at for at, row in enumerate(np.sort(top))}
    titles = [
        f"{row.given} → {row.suggested}? {row.score:.2f}\n{Path(row.path).name[:24]}"
        for row in suspects[: len(top)]
    ]
    cells = [pixels[place[row]] for row in top]
    return figures.gallery(cells, titles, "Labels that look wrong: given → suggested, quality")


def run(processed: Path, out: Path, params: Params) -> tuple[list[tables.SuspectRow], float]:
    """Write suspects.csv and suspects.png; (the suspects, out-of-sample accuracy)."""
    images = store.read_split(processed, None)
    rows = store.read_split_rows(processed)
    names = list(store.read_class_indices(processed))
    probabilities = out_of_sample(images, assign_folds(rows, params.audit.folds), params)
    given = class_indices_of(images.labels)
    suggested = probabilities.argmax(axis=1)
    order, scores = rank_issues(given, probabilities, params.audit.rank_by)
    suspects = [
        tables.SuspectRow(rows[i].path, names[given[i]], names[suggested[i]], round(float(s), 6))
        for i, s in zip(order, scores, strict=True)
    ]
    files.clear_outputs(out, OUTPUTS)
    files.write_bytes(out / "suspects.png", suspects_png(images.views[0], order, suspects))
    tables.write_suspects(out / "suspects.csv", suspects)  # last: complete when present
    return suspects, float(np.mean(suggested == given))
