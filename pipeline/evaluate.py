"""Evaluate: the trained model's loss and accuracy on the test split."""

from pathlib import Path

import keras

from pipeline import store
from pipeline.errors import PipelineError
from pipeline.train import model_inputs


def evaluate(model: keras.Model, test: store.Split) -> dict:
    results = model.evaluate(
        model_inputs(test, len(model.inputs)),
        test.labels,
        batch_size=256,
        return_dict=True,
        verbose=0,
    )
    return {
        "accuracy": float(results["accuracy"]),
        "loss": float(results["loss"]),
        "images": len(test.labels),
    }


def load_matching_model(model_path: Path, processed: Path, split: store.Split) -> keras.Model:
    """Load a model, refusing one trained with another label map or input shape."""
    trained_with = store.read_json(store.labels_beside(model_path))
    current = store.read_class_indices(processed)
    if trained_with != current:
        raise PipelineError(
            f"{model_path} was trained with the label map {trained_with}, but "
            f"{processed / 'labels.json'} is {current}; train again (dvc repro) first"
        )
    model = keras.saving.load_model(model_path, safe_mode=True)
    wanted = [tuple(shape[1:]) for shape in (i.shape for i in model.inputs)]
    given = [tuple(view.shape[1:]) for view in split.views[: len(wanted)]]
    if given != wanted:
        raise PipelineError(
            f"{model_path} takes inputs of shape {wanted}, but the prepared images are {given}; "
            "train again (dvc repro) first"
        )
    return model


def run(model_path: Path, processed: Path, out: Path) -> dict:
    test = store.read_split(processed, "test")
    metrics = evaluate(load_matching_model(model_path, processed, test), test)
    store.write_json(out / "metrics.json", metrics)
    return metrics
