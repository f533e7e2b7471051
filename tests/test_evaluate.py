"""Evaluate's metrics, per-class scores, label decoding and pictures."""

import io

import keras
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.transforms import Bbox
from PIL import Image

from pipeline.batches import INFERENCE_INPUT_BYTES, inference_batch_size
from pipeline.evaluate import (
    class_indices_of,
    confusion_counts,
    confusion_figure,
    confusion_png,
    curves,
    evaluate,
    per_class_scores,
    worst_mistakes,
)
from pipeline.models import build_model, compile_model
from pipeline.store import Split
from pipeline.tables import ClassScoreRow, PrecisionRecallPoint, PredictionRow


def test_per_class_precision_recall_f1_and_support():
    actual = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    a, b, c = per_class_scores(actual, predicted, ["a", "b", "c"])
    assert a == ClassScoreRow("a", precision=1.0, recall=pytest.approx(2 / 3), f1=0.8, support=3)
    assert b.precision == 0.5 and b.recall == 0.5
    assert c == ClassScoreRow("c", precision=0.5, recall=1.0, f1=pytest.approx(2 / 3), support=1)


def test_a_class_never_predicted_or_absent_scores_zero_not_nan():
    scores = per_class_scores(np.array([0, 0]), np.array([0, 0]), ["a", "b"])
    assert scores[1] == ClassScoreRow("b", precision=0.0, recall=0.0, f1=0.0, support=0)


def test_labels_and_probabilities_decode_to_class_indices():
    assert class_indices_of(np.array([[0.2], [0.7]])).tolist() == [0, 1]
    assert class_indices_of(np.array([[0.1, 0.9, 0], [1, 0, 0]])).tolist() == [1, 0]


def test_two_class_curves_are_the_second_classs():
    labels = np.array([[0.0], [0.0], [1.0], [1.0]])
    roc, pr, area = curves(labels, np.array([[0.1], [0.6], [0.4], [0.9]]))
    assert area == 0.75
    assert (roc[0].false_positive_rate, roc[-1].true_positive_rate) == (0.0, 1.0)
    assert pr[-1] == PrecisionRecallPoint(recall=0.0, precision=1.0, threshold=float("inf"))
    one_hot = np.array([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    scores = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.1, 0.9]])
    assert curves(one_hot, scores)[2] == area


def test_more_classes_pool_each_class_against_the_rest():
    labels = np.eye(3)[[0, 1, 2, 0]]
    perfect = labels * 0.8 + 0.1
    roc, _, area = curves(labels, perfect)
    assert area == 1.0 and len(roc) > 2  # 12 pooled scores, not the 4 of one class


def test_a_test_split_of_one_class_has_no_curve():
    roc, pr, area = curves(np.ones((3, 1)), np.array([[0.2], [0.5], [0.9]]))
    assert roc == pr == [] and area is None


def test_the_gallery_shows_the_most_confident_mistakes_first():
    rows = [
        PredictionRow("right.png", "a", "a", 0.99),
        PredictionRow("mild.png", "a", "b", 0.55),
        PredictionRow("worst.png", "b", "a", 0.97),
        PredictionRow("bad.png", "a", "b", 0.80),
    ]
    assert worst_mistakes(rows) == [2, 3, 1]
    assert worst_mistakes(rows, count=1) == [2]
    assert worst_mistakes(rows[:1]) == []


def test_the_confusion_matrix_counts_actual_rows_against_predicted_columns():
    pairs = [("a", "a"), ("a", "b"), ("b", "b"), ("c", "a"), ("a", "a")]
    rows = [PredictionRow(f"{i}.png", actual, predicted, 0.9)
            for i, (actual, predicted) in enumerate(pairs)]  # fmt: skip
    assert confusion_counts(rows, ["a", "b", "c"]).tolist() == [[2, 1, 0], [0, 1, 0], [1, 0, 0]]
    with Image.open(io.BytesIO(confusion_png(rows, ["a", "b", "c"]))) as image:
        assert image.format == "PNG" and 300 < image.width < 600 and 300 < image.height < 600


def lightness(colour) -> float:
    red, green, blue = to_rgb(colour)
    return 0.299 * red + 0.587 * green + 0.114 * blue


@pytest.mark.parametrize("classes", [2, 20])
def test_the_confusion_picture_writes_each_count_inside_its_cell_in_a_contrasting_colour(classes):
    counts = np.random.default_rng(classes).integers(0, 10_000, (classes, classes))
    names = [f"class {i}" for i in range(classes)]
    figure = confusion_figure(counts, names)
    figure.draw_without_rendering()  # lays the figure out, as saving it does
    (axes,), (image,) = figure.axes, figure.axes[0].images
    assert [label.get_text() for label in axes.get_xticklabels()] == names
    assert [label.get_text() for label in axes.get_yticklabels()] == names
    assert len(axes.texts) == classes**2
    for text in axes.texts:
        column, row = text.get_position()  # actual classes are rows, predicted columns
        count = counts[row, column]
        assert text.get_text() == str(count)
        corners = axes.transData.transform([(column - 0.5, row - 0.5), (column + 0.5, row + 0.5)])
        cell, written = Bbox(np.sort(corners, axis=0)), text.get_window_extent()
        assert cell.contains(written.x0, written.y0) and cell.contains(written.x1, written.y1)
        shade = image.cmap(image.norm(count))
        assert abs(lightness(text.get_color()) - lightness(shade)) > 0.45


@pytest.mark.parametrize("classes", [2, 3])
def test_loss_and_accuracy_are_what_model_evaluate_reports(classes):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 16, 16, 1), dtype=np.uint8)  # more than one batch
    indices = rng.integers(0, classes, 300)
    labels = (indices[:, None] if classes == 2 else np.eye(classes)[indices]).astype(np.float32)
    units = labels.shape[1]
    model = build_model("sequential", [(16, 16, 1)], units)
    compile_model(model, units, learning_rate=0.001)
    names = [f"class{i}" for i in range(classes)]
    metrics, _, rows, _ = evaluate(model, Split([pixels], labels), names, [""] * 300)
    expected = model.evaluate(pixels, labels, batch_size=256, return_dict=True, verbose=0)
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
    assert len(rows) == 300


def test_large_images_are_predicted_in_batches_of_bounded_bytes():
    def batch(*shape: int) -> int:
        split = Split([np.zeros((1, *shape), np.uint8)], np.zeros((1, 2), np.float32))
        return inference_batch_size(split, 1)

    assert batch(64, 64, 1) == 256  # small images: the usual batch
    large = batch(224, 224, 3)  # 256 of these were 154 MB of float inputs, 3.2 GB of RSS
    assert 1 <= large < 256 and large * 224 * 224 * 3 * 4 <= INFERENCE_INPUT_BYTES
    assert batch(1024, 1024, 3) == 1
