"""Evaluate: loss, accuracy and per-class scores on the test split, and a confusion matrix."""

from pathlib import Path

import keras
import numpy as np

from pipeline import store
from pipeline.errors import PipelineError
from pipeline.train import model_inputs


def class_indices_of(labels: np.ndarray) -> np.ndarray:
    """(N, 1) 0/1 or (N, K) one-hot or probabilities -> (N,) class indices."""
    return (labels[:, 0] > 0.5).astype(int) if labels.shape[1] == 1 else labels.argmax(axis=1)


def per_class_scores(actual: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict:
    """Precision, recall, F1 and support of each class (0 where undefined)."""
    scores = {}
    for index, name in enumerate(names):
        hits = np.sum((predicted == index) & (actual == index))
        said, truly = np.sum(predicted == index), np.sum(actual == index)
        precision = hits / said if said else 0.0
        recall = hits / truly if truly else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(truly),
        }
    return scores


def evaluate(model: keras.Model, test: store.Split, names: list[str]) -> tuple[dict, list]:
    """The metrics, and the actual and predicted class of each test image."""
    inputs = model_inputs(test.views, len(model.inputs))
    results = model.evaluate(inputs, test.labels, batch_size=256, return_dict=True, verbose=0)
    predicted = class_indices_of(model.predict(inputs, batch_size=256, verbose=0))
    actual = class_indices_of(np.asarray(test.labels))
    metrics = {
        "accuracy": float(results["accuracy"]),
        "loss": float(results["loss"]),
        "images": len(test.labels),
        "classes": per_class_scores(actual, predicted, names),
    }
    rows = [store.PredictionRow(names[a], names[p]) for a, p in zip(actual, predicted, strict=True)]
    return metrics, rows


def load_matching_model(model_path: Path, processed: Path, shapes: list[tuple]) -> keras.Model:
    """Load a model, refusing one trained with another label map or for other input shapes."""
    labels = store.labels_beside(model_path)
    if not labels.exists():
        raise PipelineError(
            f"{model_path} has no {labels.name} beside it, so its label map is unknown "
            "(train was interrupted, or the model was copied alone); train again (dvc repro)"
        )
    trained_with = store.read_json(labels)
    current = store.read_class_indices(processed)
    if trained_with != current:
        raise PipelineError(
            f"{model_path} was trained with the label map {trained_with}, but "
            f"{processed / 'labels.json'} is {current}; train again (dvc repro) first"
        )
    model = keras.saving.load_model(model_path, safe_mode=True)
    wanted = [tuple(shape[1:]) for shape in (i.shape for i in model.inputs)]
    given = [tuple(shape) for shape in shapes[: len(wanted)]]
    if given != wanted:
        raise PipelineError(
            f"{model_path} takes inputs of shape {wanted}, but the prepared images are {given}; "
            "train again (dvc repro) first"
        )
    return model


def run(model_path: Path, processed: Path, out: Path) -> dict:
    test = store.read_split(processed, "test")
    model = load_matching_model(model_path, processed, [view.shape[1:] for view in test.views])
    metrics, rows = evaluate(model, test, list(store.read_class_indices(processed)))
    store.clear_outputs(out, ["predictions.csv", "metrics.json"])
    store.write_predictions(out / "predictions.csv", rows)
    store.write_json(out / "metrics.json", metrics)
    return metrics
