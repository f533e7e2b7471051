"""Evaluate's per-class scores and label decoding."""

import numpy as np
import pytest

from pipeline.evaluate import class_indices_of, per_class_scores


def test_per_class_precision_recall_f1_and_support():
    actual = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    scores = per_class_scores(actual, predicted, ["a", "b", "c"])
    assert scores["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": 0.8,
        "support": 3,
    }
    assert scores["b"]["precision"] == 0.5 and scores["b"]["recall"] == 0.5
    assert scores["c"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "support": 1,
    }


def test_a_class_never_predicted_or_absent_scores_zero_not_nan():
    scores = per_class_scores(np.array([0, 0]), np.array([0, 0]), ["a", "b"])
    assert scores["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_labels_and_probabilities_decode_to_class_indices():
    assert class_indices_of(np.array([[0.2], [0.7]])).tolist() == [0, 1]
    assert class_indices_of(np.array([[0.1, 0.9, 0], [1, 0, 0]])).tolist() == [1, 0]
