"""Prepare: a split that never reshuffles and never leaks, one label map, the model's views.

Each image's split is decided by a hash of its content and `prepare.split_salt`,
so adding or removing other images never moves it. Near-duplicates (the same
photo re-encoded, resized, blurred, brightened, flipped or cropped: see
pipeline/near_duplicates.py) form a group that always lands in one split: the most
test-ward split of its members, so an image that gains a near-duplicate can only
move toward test, never back into train. Near-duplicates in two classes are
conflicts, as ingest calls the same bytes in two classes: reported with both paths
and warned about.

With split folders (data/raw/train/, val/, test/, which ingest records as each
image's given split) and `prepare.split: folders` (what auto picks for them), every
image keeps its folder's split; a split no folder gives is drawn by the same hash
from the train folder's images, which alone move with their groups. Near-duplicates
in two given splits cannot be joined, so they are counted as leakage and warned about.
"""

import hashlib
import math
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import figures, files, prepare_report, store
from pipeline.errors import PipelineError
from pipeline.near_duplicates import THUMBNAIL_BYTES, group_of, pil_image
from pipeline.params import CHANNELS, PIL_MODES, Prepare, View
from pipeline.prepare_cache import CacheFile, near_duplicates_of, with_verified_copies

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}  # a group goes to its members' highest

# Pixels are hashed in blocks of images, each of a block's arrays (the ingested pixels,
# their thumbnails) at most this size, so that memory does not grow with the images.
CHUNK_BYTES = 64 << 20


def split_mode(manifest: list[store.ManifestRow], settings: Prepare) -> str:
    """hash or folders: prepare.split, with auto meaning folders for images ingest found in
    split folders."""
    in_folders = any(row.given_split for row in manifest)
    if settings.split == "folders" and not in_folders:
        raise PipelineError(
            "prepare.split = 'folders' needs the raw images in split folders "
            "(<raw>/train/<class>/..., beside val/ and test/), but ingest found plain class "
            "folders; set prepare.split: auto or hash, or move the class folders under train/, "
            "val/ and test/"
        )
    if settings.split == "auto":
        return "folders" if in_folders else "hash"
    return settings.split


def natural_split(sha256: str, settings: Prepare) -> str:
    """Map an image's content hash to a split, uniformly and reproducibly."""
    digest = hashlib.sha256(f"{settings.split_salt}:{sha256}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if position < settings.test_fraction:
        return "test"
    if position < settings.test_fraction + settings.val_fraction:
        return "val"
    return "train"


def block_rows(images: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Images hashed per block: as many as keep each of a block's arrays (its ingested
    pixels, their thumbnails) within `chunk_bytes`; at least one. The views are made a
    shard at a time."""
    per_image = max(images.dtype.itemsize * math.prod(images.shape[1:]), THUMBNAIL_BYTES)
    return max(1, chunk_bytes // per_image)


def assign_splits(
    shas: list[str], groups: np.ndarray, settings: Prepare, given: list[str] | None = None
) -> tuple[list, list]:
    """(split, natural split) of each image; a group takes its most test-ward member's.

    `given`, each image's split folder, fixes the split of every image outside the train
    folder; the train folder's images are drawn by hash into the splits no folder gives
    (or stay in train), and only they move with their groups.
    """
    natural = [natural_split(sha, settings) for sha in shas]
    free = np.ones(len(shas), bool)
    if given is not None:
        drawable = set(SPLIT_ORDER) - set(given) | {"train"}
        natural = [
            own if folder == "train" and own in drawable else folder
            for folder, own in zip(given, natural, strict=True)
        ]
        free = np.array([folder == "train" for folder in given])
    rank = np.array([SPLIT_ORDER[name] for name in natural])
    group_rank = np.zeros(len(shas), np.int64)
    np.maximum.at(group_rank, groups[free], rank[free])
    names = list(SPLIT_ORDER)
    splits = [
        names[group_rank[group]] if moves else own
        for group, moves, own in zip(groups, free, natural, strict=True)
    ]
    return splits, natural


def leaks(pairs: np.ndarray, splits: list[str]) -> np.ndarray:
    """(L, 2): the near-duplicate pairs whose two images are in different splits; none
    with the hash split, and with given splits those the folders hold."""
    return pairs[np.array([splits[i] != splits[j] for i, j in pairs], bool)]


def across_classes(pairs: np.ndarray, labels: list[str]) -> np.ndarray:
    """(C, 2): the near-duplicate pairs whose two images are filed under different
    classes, so that one label at least is wrong."""
    return pairs[np.array([labels[i] != labels[j] for i, j in pairs], bool)]


def encode_labels(indices: np.ndarray, num_classes: int, label_mode: str) -> np.ndarray:
    """(N,) class indices -> (N, 1) 0/1 for binary, else (N, K) one-hot float32."""
    if label_mode == "auto":
        label_mode = "binary" if num_classes == 2 else "categorical"
    if label_mode == "binary":
        if num_classes != 2:
            raise PipelineError(
                f"prepare.label_mode = 'binary' needs exactly two classes, found {num_classes}; "
                "use auto or categorical"
            )
        return indices.astype(np.float32).reshape(-1, 1)
    # Row i of the identity is class i's one-hot code: keras.utils.to_categorical without
    # importing Keras, whose backend would cost prepare 4 s of start-up.
    return np.eye(num_classes, dtype=np.float32)[indices]


def view_shapes(settings: Prepare) -> list[tuple[int, int, int]]:
    """(height, width, channels) of each view."""
    return [(*view.image_size, CHANNELS[view.color_mode]) for view in settings.views]


def derive_view(images: np.ndarray, view: View) -> np.ndarray:
    """Resize and convert ingested (N, H, W, C) images into one model input."""
    height, width = view.image_size
    channels = CHANNELS[view.color_mode]
    if images.shape[1:] == (height, width, channels):
        return np.asarray(images)
    converted = [
        np.asarray(
            pil_image(image)
            .convert(PIL_MODES[view.color_mode])
            .resize((width, height), Image.Resampling.BILINEAR)
        )
        for image in images
    ]
    return np.stack(converted).reshape(len(images), height, width, channels)


def prepare(
    interim: store.Interim,
    settings: Prepare,
    chunk_bytes: int = CHUNK_BYTES,
    cache: CacheFile | None = None,
) -> store.Processed:
    """Each image's split and labels, the label map and the report: all but the views,
    which `run` writes."""
    manifest = interim.manifest
    classes = sorted({row.label for row in manifest})  # Keras' convention: sorted names
    if len(classes) < 2:
        raise PipelineError(
            f"found {len(classes)} class ({', '.join(classes)}); a classifier needs at least "
            "two class folders under the raw data folder"
        )
    class_indices = {name: index for index, name in enumerate(classes)}
    mode = split_mode(manifest, settings)
    given = [row.given_split for row in manifest] if mode == "folders" else None
    rows = block_rows(interim.images, chunk_bytes)
    pairs = near_duplicates_of(interim, rows, settings.near_duplicate_distance, cache)
    groups = group_of(len(manifest), pairs)
    splits, natural = assign_splits([row.sha256 for row in manifest], groups, settings, given)
    labels = encode_labels(
        np.array([class_indices[row.label] for row in manifest]), len(classes), settings.label_mode
    )
    for name in ("train", "test"):  # an empty val split is allowed (training runs without)
        if name not in splits:
            raise PipelineError(prepare_report.empty_split(name, splits, natural, settings, given))
    sizes = Counter(groups.tolist())
    rows = [
        store.SplitRow(
            row.path,
            row.sha256,
            row.label,
            split,
            # A group is named after its first member (in path order); singles have none.
            group=manifest[group].sha256 if sizes[group] > 1 else "",
            moved_from="" if split == first else first,
        )
        for row, split, first, group in zip(manifest, splits, natural, groups, strict=True)
    ]
    conflicts = across_classes(pairs, [row.label for row in manifest])
    leaked = leaks(pairs, splits)
    report = prepare_report.report(rows, classes, pairs, sizes, leaked, conflicts)
    report["split"] = {"mode": mode, "given": sorted(set(given or []), key=store.SPLITS.index)}
    report["warnings"] = prepare_report.split_warnings(report, classes, settings)
    return store.Processed(class_indices, rows, labels, report)


def samples_png(
    processed: store.Processed,
    images: np.ndarray,
    view: View,
    per_class: int = 8,
    max_classes: int = 20,
) -> bytes:
    """A grid of the first training images of each class as `view` makes them from the
    ingested `images`, one row per class."""
    train = [(i, row.label) for i, row in enumerate(processed.rows) if row.split == "train"]
    classes = list(processed.class_indices)[:max_classes]
    rows = [
        [
            derive_view(images[i : i + 1], view)[0]
            for i in [i for i, label in train if label == name][:per_class]
        ]
        for name in classes
    ]
    return figures.image_grid(rows, "Training samples per class", row_titles=classes)


def run(
    interim_dir: Path,
    out: Path,
    report_dir: Path,
    settings: Prepare,
    chunk_bytes: int = CHUNK_BYTES,
    cache: CacheFile | None = None,
) -> store.Processed:
    """Prepare's outputs; the ingested images pass through memory a block at a time for
    their hashes, then a shard at a time for each view that is not the ingested image."""
    interim = store.read_interim(interim_dir)
    processed = prepare(interim, settings, chunk_bytes, cache)
    # All but the views is made before the first output is cleared: a run that fails or is
    # killed in that long part leaves the last run's outputs as they were.
    classes = list(processed.class_indices)
    plots = {
        "class_balance.png": prepare_report.class_balance_png(processed.report, classes),
        "samples.png": samples_png(processed, interim.images, settings.views[0]),
    }
    shape = interim.images.shape[1:]
    views = [  # a view that is the ingested image is its files; the others are made
        interim.images
        if shape == view_shape
        else (lambda start, stop, view=view: derive_view(interim.images[start:stop], view))
        for view, view_shape in zip(settings.views, view_shapes(settings), strict=True)
    ]
    cut = store.interim_shards(interim.manifest)
    with_verified_copies(
        out, cache, lambda known: store.write_processed(out, processed, cut, views, known)
    )
    files.clear_outputs(report_dir, [*plots, "report.json"])
    for name, data in plots.items():
        files.write_bytes(report_dir / name, data)
    files.write_json(report_dir / "report.json", processed.report)
    return processed
