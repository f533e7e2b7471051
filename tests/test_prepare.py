"""Prepare: a content-hash split that never reshuffles, and the label encodings."""

import hashlib

import numpy as np
import pytest

from pipeline import prepare, store
from pipeline.errors import PipelineError
from pipeline.params import Prepare

SETTINGS = Prepare(val_fraction=0.2, test_fraction=0.1, split_salt="s")


def _hash(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _interim(count: int, classes=("b", "a", "c")) -> store.Interim:
    rows = [
        store.ManifestRow(
            f"{classes[i % len(classes)]}/{i}.png",
            classes[i % len(classes)],
            _hash(i),
            8,
            8,
            "PNG",
            "L",
        )
        for i in range(count)
    ]
    images = np.arange(count, dtype=np.uint8).reshape(-1, 1, 1, 1) * np.ones((1, 4, 4, 1), np.uint8)
    return store.Interim(images, rows, [], [], {})


def test_split_fractions_match_the_settings():
    counts = {"train": 0, "val": 0, "test": 0}
    for i in range(20_000):
        counts[prepare.assign_split(_hash(i), SETTINGS)] += 1
    assert abs(counts["test"] / 20_000 - 0.1) < 0.01
    assert abs(counts["val"] / 20_000 - 0.2) < 0.01


def test_the_salt_decides_the_split():
    other = Prepare(val_fraction=0.2, test_fraction=0.1, split_salt="other")
    splits = [prepare.assign_split(_hash(i), s) for s in (SETTINGS, other) for i in range(200)]
    assert splits[:200] != splits[200:]


def test_growing_the_data_never_moves_an_image_between_splits():
    before = prepare.prepare(_interim(300), SETTINGS)
    after = prepare.prepare(_interim(330), SETTINGS)  # 10% more images
    old = {row.path: row.split for row in before.rows}
    new = {row.path: row.split for row in after.rows}
    assert {path: new[path] for path in old} == old


def test_prepare_keeps_pixels_with_their_labels_and_sorts_the_label_map():
    interim = _interim(90)
    processed = prepare.prepare(interim, SETTINGS)
    assert processed.class_indices == {"a": 0, "b": 1, "c": 2}
    by_path = {row.path: i for i, row in enumerate(interim.manifest)}
    for name, split in processed.splits.items():
        rows = [row for row in processed.rows if row.split == name]
        assert len(split.images) == len(split.labels) == len(rows)
        for row, pixels, label in zip(rows, split.images, split.labels, strict=True):
            np.testing.assert_array_equal(pixels, interim.images[by_path[row.path]])
            assert label.argmax() == processed.class_indices[row.label]


def test_labels_are_one_column_for_two_classes_and_one_hot_for_more():
    binary = prepare.encode_labels(np.array([0, 1, 1]), 2)
    assert binary.dtype == np.float32
    np.testing.assert_array_equal(binary, [[0], [1], [1]])
    one_hot = prepare.encode_labels(np.array([2, 0, 1]), 3)
    np.testing.assert_array_equal(one_hot, [[0, 0, 1], [1, 0, 0], [0, 1, 0]])


def test_one_class_or_an_empty_test_split_is_an_error_that_says_what_to_do():
    with pytest.raises(PipelineError, match="at least two class folders"):
        prepare.prepare(_interim(20, classes=("only",)), SETTINGS)
    with pytest.raises(PipelineError, match="test split is empty .* raise|change prepare"):
        prepare.prepare(_interim(2), SETTINGS)
