"""Evaluate: loss, accuracy, per-class scores, curves and the worst mistakes on the test split."""

from pathlib import Path

import keras
import numpy as np

from pipeline import figures, files, model_record, store, tables
from pipeline.batches import Batches, inference_batch_size
from pipeline.errors import PipelineError, one_line
from pipeline.models import loss_for

GALLERY_SIZE = 16  # the most confidently wrong test images drawn in errors.png
OUTPUTS = (
    "classes.csv",
    "predictions.csv",
    "confusion.png",
    "roc.csv",
    "precision_recall.csv",
    "errors.png",
    "metrics.json",
)


def class_indices_of(labels: np.ndarray) -> np.ndarray:
    """(N, 1) 0/1 or (N, K) one-hot or probabilities -> (N,) class indices."""
    return (labels[:, 0] > 0.5).astype(int) if labels.shape[1] == 1 else labels.argmax(axis=1)


def confidence_of(probabilities: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The probability the model gave each chosen class (one sigmoid unit is P(class 1))."""
    if probabilities.shape[1] == 1:
        return np.where(indices == 1, probabilities[:, 0], 1 - probabilities[:, 0])
    return probabilities[np.arange(len(indices)), indices]


def per_class_scores(
    actual: np.ndarray, predicted: np.ndarray, names: list[str]
) -> list[tables.ClassScoreRow]:
    """Precision, recall, F1 and support of each class (0 where undefined)."""
    scores = []
    for index, name in enumerate(names):
        hits = np.sum((predicted == index) & (actual == index))
        said, truly = np.sum(predicted == index), np.sum(actual == index)
        precision = hits / said if said else 0.0
        recall = hits / truly if truly else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(
            tables.ClassScoreRow(name, float(precision), float(recall), float(f1), int(truly))
        )
    return scores


def curves(labels: np.ndarray, probabilities: np.ndarray) -> tuple:
    """ROC and precision-recall points, and the area under the ROC curve (None with one
    class in the test split).

    With two classes the curves are the second class's (the positive one of a 0/1
    label); with more, every class against the rest pooled (micro-average).
    """
    from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

    if labels.shape[1] <= 2:
        truth, scores = labels[:, -1], probabilities[:, -1]
    else:
        truth, scores = labels.ravel(), probabilities.ravel()
    if len(np.unique(truth)) < 2:  # one class only in the test split: no curve exists
        return [], [], None
    false_positive, true_positive, thresholds = roc_curve(truth, scores)
    roc = list(
        map(tables.RocPoint, false_positive.tolist(), true_positive.tolist(), thresholds.tolist())
    )
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    # The last point (recall 0, precision 1) has no threshold: above every score.
    thresholds = [*thresholds.tolist(), float("inf")]
    pr = list(map(tables.PrecisionRecallPoint, recall.tolist(), precision.tolist(), thresholds))
    return roc, pr, float(roc_auc_score(truth, scores))


def worst_mistakes(rows: list[tables.PredictionRow], count: int = GALLERY_SIZE) -> list[int]:
    """Indices of the wrong predictions made with the highest confidence, worst first."""
    wrong = [i for i, row in enumerate(rows) if row.actual != row.predicted]
    return sorted(wrong, key=lambda i: -rows[i].confidence)[:count]


def errors_png(images: np.ndarray, rows: list[tables.PredictionRow]) -> bytes:
    """The most confidently wrong test images, four to a row."""
    worst = worst_mistakes(rows)
    if not worst:
        return figures.message("No test image was misclassified.")
    titles = [
        f"{rows[i].actual} → {rows[i].predicted} {rows[i].confidence:.2f}\n"
        f"{Path(rows[i].path).name[:24]}"
        for i in worst
    ]
    cells = [images[i] for i in worst]
    return figures.gallery(cells, titles, "Most confidently wrong test images")


def confusion_counts(rows: list[tables.PredictionRow], names: list[str]) -> np.ndarray:
    """(K, K) int: how many test images of each actual class (row) were predicted as each
    class (column)."""
    index = {name: i for i, name in enumerate(names)}
    counts = np.zeros((len(names), len(names)), np.int64)
    np.add.at(counts, ([index[r.actual] for r in rows], [index[r.predicted] for r in rows]), 1)
    return counts


def confusion_png(rows: list[tables.PredictionRow], names: list[str]) -> bytes:
    return figures.png(confusion_figure(confusion_counts(rows, names), names))


def confusion_figure(counts: np.ndarray, names: list[str]):
    """The confusion matrix as shaded cells, each with its count written in it: a picture
    beside DVC's interactive one (of predictions.csv) that reads without hovering."""
    cell = max(0.45, 3 / len(names))  # inches: 2 classes fill 3 in, 20 take 9 in
    figure = figures.new_figure(cell * len(names) + 2.2, cell * len(names) + 1.8)
    axes = figure.subplots()
    image = axes.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, counts.max()))
    for (row, column), count in np.ndenumerate(counts):
        red, green, blue, _ = image.cmap(image.norm(count))
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # perceived lightness
        axes.text(column, row, str(count), ha="center", va="center",
                  fontsize=min(14, 20 * cell), color="white" if dark else "black")  # fmt: skip
    positions = range(len(names))
    axes.set_xticks(positions, names, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(positions, names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title(f"Confusion matrix of the {counts.sum()} test images")
    return figure


def evaluate(
    model: keras.Model, test: store.Split, names: list[str], paths: list[str]
) -> tuple[dict, list[tables.ClassScoreRow], list[tables.PredictionRow], tuple]:
    """The metrics DVC tracks, one score row per class, one prediction row per test image
    (in split order), and the curves.

    The tracked metrics are the few that people compare across experiments (a line of
    `dvc metrics show` stays short whatever the number of classes); per-class scores
    go to a table of their own."""
    inputs = len(model.inputs)
    batches = Batches(test, inputs, batch_size=inference_batch_size(test, inputs))
    predictions = model.predict(batches, verbose=0)
    labels = np.asarray(test.labels)
    # The training loss on these predictions is what model.evaluate would report, without
    # running the model over the test split a second time.
    loss = keras.ops.mean(keras.losses.get(loss_for(labels.shape[1]))(labels, predictions))
    probabilities = predictions.astype(np.float64)
    predicted, actual = class_indices_of(probabilities), class_indices_of(labels)
    confidence = confidence_of(probabilities, predicted)
    roc, pr, roc_auc = curves(labels, probabilities)
    scores = per_class_scores(actual, predicted, names)
    metrics = {
        "accuracy": float(np.mean(predicted == actual)),  # Keras' accuracy: argmax, or > 0.5
        "loss": float(keras.ops.convert_to_numpy(loss)),
        "macro_f1": float(np.mean([row.f1 for row in scores])),
        "roc_auc": roc_auc,
        "images": len(labels),
    }
    rows = [
        tables.PredictionRow(path, names[a], names[p], round(float(c), 6))
        for path, a, p, c in zip(paths, actual, predicted, confidence, strict=True)
    ]
    return metrics, scores, rows, (roc, pr)


def load_trained(model_path: Path) -> tuple[keras.Model, model_record.ModelRecord]:
    """A model and what it was trained with (model_record.read_model_record), refusing a model
    file Keras cannot load, or a record written for another model file."""
    try:
        # Uncompiled: evaluating and predicting need no optimizer, and a mixed-precision
        # model's loss-scaling optimizer does not load back into a float32 process (Keras
        # warns that it skips its variables).
        model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    except Exception as error:  # not a zip, a torn zip, a broken config or weights file...
        raise PipelineError(
            f"{model_path} cannot be loaded as a Keras model ({one_line(error)}); it is damaged "
            "or not a .keras file: train again (dvc repro) or fetch it again (dvc pull)"
        ) from None
    return model, model_record.read_model_record(model_path)


def input_shapes(model: keras.Model) -> list[tuple[int, int, int]]:
    """(H, W, C) of each of the model's inputs."""
    return [tuple(tensor.shape[1:]) for tensor in model.inputs]


def load_matching_model(model_path: Path, processed: Path, shapes: list[tuple]) -> keras.Model:
    """Load a model, refusing one trained with another label map or for other input shapes,
    or whose label map was written for another model file."""
    model, trained_with = load_trained(model_path)
    current = store.read_class_indices(processed)
    if trained_with.classes != current:
        raise PipelineError(
            f"{model_path} was trained with the label map {trained_with.classes}, but "
            f"{processed / 'labels.json'} is {current}; train again (dvc repro) first"
        )
    wanted = input_shapes(model)
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
    paths = [row.path for row in store.read_split_rows(processed) if row.split == "test"]
    names = list(store.read_class_indices(processed))
    metrics, scores, rows, (roc, pr) = evaluate(model, test, names, paths)
    files.clear_outputs(out, OUTPUTS)
    tables.write_class_scores(out / "classes.csv", scores)
    tables.write_predictions(out / "predictions.csv", rows)
    files.write_bytes(out / "confusion.png", confusion_png(rows, names))
    tables.write_curve(out / "roc.csv", tables.RocPoint, roc)
    tables.write_curve(out / "precision_recall.csv", tables.PrecisionRecallPoint, pr)
    files.write_bytes(out / "errors.png", errors_png(test.views[0], rows))
    files.write_json(out / "metrics.json", metrics)  # last: complete when present
    return metrics
