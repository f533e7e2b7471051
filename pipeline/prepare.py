"""Prepare: split ingested images into train/val/test and one-hot encode labels.

The split of an image is a function of its content and the salt alone, so
adding or removing other images never moves it to another split.
"""

import hashlib
from pathlib import Path

import numpy as np

from pipeline import store
from pipeline.errors import PipelineError
from pipeline.params import Prepare


def assign_split(sha256: str, settings: Prepare) -> str:
    """Map an image's content hash to a split, uniformly and reproducibly."""
    digest = hashlib.sha256(f"{settings.split_salt}:{sha256}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if position < settings.test_fraction:
        return "test"
    if position < settings.test_fraction + settings.val_fraction:
        return "val"
    return "train"


def encode_labels(indices: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) class indices -> (N, 1) 0/1 for two classes, else (N, K) one-hot float32."""
    if num_classes == 2:
        return indices.astype(np.float32).reshape(-1, 1)
    # Imported here: Keras pulls in its backend, which the rest of prepare does not need.
    from keras.utils import to_categorical

    return to_categorical(indices, num_classes=num_classes).astype(np.float32)


def prepare(interim: store.Interim, settings: Prepare) -> store.Processed:
    classes = sorted({row.label for row in interim.manifest})
    if len(classes) < 2:
        raise PipelineError(
            f"found {len(classes)} class ({', '.join(classes)}); a classifier needs at least "
            "two class folders under the raw data folder"
        )
    class_indices = {name: index for index, name in enumerate(classes)}
    names = np.array([assign_split(row.sha256, settings) for row in interim.manifest])
    labels = encode_labels(
        np.array([class_indices[row.label] for row in interim.manifest]), len(classes)
    )
    splits = {}
    for name in store.SPLITS:
        chosen = np.flatnonzero(names == name)
        # An empty validation split is allowed (training then runs without one).
        if len(chosen) == 0 and name != "val":
            raise PipelineError(
                f"the {name} split is empty ({len(names)} images with "
                f"val_fraction={settings.val_fraction}, test_fraction={settings.test_fraction}); "
                "add images or change prepare.val_fraction / prepare.test_fraction"
            )
        splits[name] = store.Split(interim.images[chosen], labels[chosen])
    rows = [
        store.SplitRow(row.path, row.sha256, row.label, split)
        for row, split in zip(interim.manifest, names, strict=True)
    ]
    return store.Processed(splits, class_indices, rows)


def run(interim_dir: Path, out: Path, settings: Prepare) -> store.Processed:
    processed = prepare(store.read_interim(interim_dir), settings)
    store.write_processed(out, processed)
    return processed
