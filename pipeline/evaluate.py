"""Evaluate: the trained model's loss and accuracy on the test split."""

from pathlib import Path

import keras

from pipeline import store


def evaluate(model: keras.Model, test: store.Split) -> dict:
    results = model.evaluate(test.images, test.labels, batch_size=256, return_dict=True, verbose=0)
    return {
        "accuracy": float(results["accuracy"]),
        "loss": float(results["loss"]),
        "images": len(test.images),
    }


def run(model_path: Path, processed: Path, out: Path) -> dict:
    model = keras.saving.load_model(model_path, safe_mode=True)
    metrics = evaluate(model, store.read_split(processed, "test"))
    store.write_json(out / "metrics.json", metrics)
    return metrics
