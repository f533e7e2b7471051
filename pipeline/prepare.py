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

from pipeline import figures, files, store
from pipeline.errors import PipelineError
from pipeline.near_duplicates import THUMBNAIL_BYTES, group_of, pil_image
from pipeline.params import CHANNELS, PIL_MODES, Prepare, View
from pipeline.prepare_cache import CacheFile, near_duplicates_of

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}  # a group goes to its members' highest
SPLIT_TOLERANCE = 0.10  # how far a realised split's share may be from the asked before a warning
LISTED_LEAKS = 20  # the leaking pairs report.json names; the split rows' group column has all

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
            raise PipelineError(_empty_split(name, splits, natural, settings, given))
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
    report = _report(rows, classes, pairs, sizes, leaks(pairs, splits), conflicts)
    report["split"] = {"mode": mode, "given": sorted(set(given or []), key=store.SPLITS.index)}
    report["warnings"] = split_warnings(report, classes, settings)
    return store.Processed(class_indices, rows, labels, report)


def _empty_split(name: str, splits, natural, settings: Prepare, given) -> str:
    """Why the train or test split is empty, and what to change."""
    moved = sum(split != first for split, first in zip(splits, natural, strict=True))
    grouped = (
        f"; {moved} images moved with their near-duplicate groups, so check "
        "prepare.near_duplicate_distance"
        if moved
        else ""
    )
    if given is None:
        return (
            f"the {name} split is empty ({len(splits)} images with "
            f"val_fraction={settings.val_fraction}, test_fraction={settings.test_fraction}); "
            f"add images or change prepare.val_fraction / prepare.test_fraction{grouped}"
        )
    in_train = given.count("train")
    if name == "train":
        return (
            f"the train split is empty ({in_train} images in a train split folder); add class "
            f"folders of images under <raw>/train/, or set prepare.split: hash{grouped}"
        )
    return (
        f"the test split is empty: no split folder gives it, and none of the {in_train} images "
        f"in the train folder was drawn into it at prepare.test_fraction = "
        f"{settings.test_fraction}; add a test/ folder, more images, or raise the fraction"
    )


def _report(rows, classes, pairs, sizes: Counter, leaked: np.ndarray, conflicts) -> dict:
    counts = Counter((row.split, row.label) for row in rows)
    return {
        "splits": {
            split: {"total": sum(counts[split, c] for c in classes)}
            | {c: counts[split, c] for c in classes}
            for split in store.SPLITS
        },
        "near_duplicates": {
            "pairs": len(pairs),
            "groups": sum(size > 1 for size in sizes.values()),
            "images_in_groups": sum(size for size in sizes.values() if size > 1),
            "moved": sum(bool(row.moved_from) for row in rows),
            "leakage": len(leaked),
            "leaking_pairs": [
                [rows[i].path, rows[j].path] for i, j in leaked[:LISTED_LEAKS].tolist()
            ],
            "conflicts": len(conflicts),
            "conflicting_pairs": [
                [rows[i].path, rows[j].path] for i, j in conflicts[:LISTED_LEAKS].tolist()
            ],
        },
    }


def split_warnings(report: dict, classes: list[str], settings: Prepare) -> list[str]:
    """What a user should know about the realised split: classes with no training image;
    near-duplicates that given split folders put in two splits; near-duplicates in two
    classes; with the hash split, splits more than SPLIT_TOLERANCE away from their asked
    fraction because near-duplicate groups moved together."""
    sizes = report["splits"]
    warnings = [
        f"class '{name}' has no image in train ({sizes['val'][name]} in val, "
        f"{sizes['test'][name]} in test): the model cannot learn it; add images of it"
        for name in classes
        if sizes["train"][name] == 0
    ]
    near = report["near_duplicates"]
    if near["leakage"]:  # only given splits can leak
        first, second = near["leaking_pairs"][0]
        warnings.append(
            f"{near['leakage']} near-duplicate pairs are in two given split folders (first: "
            f"{first} and {second}), so the model is tested on near-copies of images it "
            "trained on; move or remove one image of each pair (report.json lists them under "
            "near_duplicates.leaking_pairs, data/processed/splits/ by group), or set "
            "prepare.split: hash"
        )
    if near["conflicts"]:
        first, second = near["conflicting_pairs"][0]
        warnings.append(
            f"{near['conflicts']} near-duplicate pairs are filed under two classes (first: "
            f"{first} and {second}): the same photo with two labels, so one is wrong; keep "
            "each photo in its right class folder and delete the other copy (report.json "
            "lists them under near_duplicates.conflicting_pairs)"
        )
    if report["split"]["mode"] == "hash":  # given splits are as large as their folders
        warnings += _fraction_warnings(report, settings)
    return warnings


def _fraction_warnings(report: dict, settings: Prepare) -> list[str]:
    sizes = report["splits"]
    total = sum(sizes[split]["total"] for split in store.SPLITS)
    asked = {
        "train": 1 - settings.val_fraction - settings.test_fraction,
        "val": settings.val_fraction,
        "test": settings.test_fraction,
    }
    moved = report["near_duplicates"]["moved"]
    warnings = []
    for split in store.SPLITS:
        realised = sizes[split]["total"] / total
        if moved and abs(realised - asked[split]) > SPLIT_TOLERANCE:
            warnings.append(
                f"{split} holds {realised:.0%} of the images where {asked[split]:.0%} was asked: "
                f"{moved} images moved with their near-duplicate groups; lower "
                f"prepare.near_duplicate_distance (now {settings.near_duplicate_distance}) if "
                "the groups join images that are not copies"
            )
    return warnings


def class_balance_png(report: dict, classes: list[str]) -> bytes:
    return figures.png(class_balance_figure(report, classes))


def class_balance_figure(report: dict, classes: list[str]):
    """Images per class in each split, as horizontal bars with their counts at their ends."""
    figure = figures.new_figure(7, 1.6 + 0.35 * len(classes) * 1.5)
    axes = figure.subplots()
    positions = np.arange(len(classes))
    for offset, split in enumerate(store.SPLITS):
        counts = [report["splits"][split][name] for name in classes]
        bars = axes.barh(positions + (offset - 1) * 0.27, counts, height=0.27, label=split)
        axes.bar_label(bars, padding=2, fontsize=8)
    axes.margins(x=0.08)  # room for the longest bar's count
    axes.set_yticks(positions, classes)
    axes.invert_yaxis()
    axes.set_xlabel("images")
    figure.suptitle("Class balance per split")
    # Below the axes: above them, the legend covered the title.
    figure.legend(loc="outside lower center", ncols=len(store.SPLITS))
    return figure


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


def summary(report: dict, classes: int, out: Path) -> str:
    """Prepare's account of a run: the splits, how they were made, near-duplicates and
    leakage, then the warnings."""
    sizes = ", ".join(f"{name} {counts['total']}" for name, counts in report["splits"].items())
    near = report["near_duplicates"]
    lines = [
        f"prepare: {classes} classes; {sizes} -> {out}",
        f"  {_split_line(report['split'])}",
        f"  near-duplicates: {near['pairs']} pairs in {near['groups']} groups, "
        f"{near['moved']} images moved with their group, leakage {near['leakage']}, "
        f"{near['conflicts']} across classes",
        *(f"warning: {warning}" for warning in report["warnings"]),
    ]
    return "\n".join(lines)


def _split_line(split: dict) -> str:
    """'split by hash', or 'split by folders (given: train, val; test drawn from train)'."""
    if not split["given"]:
        return f"split by {split['mode']}"
    drawn = [name for name in store.SPLITS if name not in split["given"]]
    also = f"; {', '.join(drawn)} drawn from train" if drawn else ""
    return f"split by folders (given: {', '.join(split['given'])}{also})"


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
    plots = {
        "class_balance.png": class_balance_png(processed.report, list(processed.class_indices)),
        "samples.png": samples_png(processed, interim.images, settings.views[0]),
    }
    shape = interim.images.shape[1:]
    views = [  # a view that is the ingested image is its files; the others are made
        interim.images
        if shape == view_shape
        else (lambda start, stop, view=view: derive_view(interim.images[start:stop], view))
        for view, view_shape in zip(settings.views, view_shapes(settings), strict=True)
    ]
    store.write_processed(out, processed, store.interim_shards(interim.manifest), views)
    files.clear_outputs(report_dir, [*plots, "report.json"])
    for name, data in plots.items():
        files.write_bytes(report_dir / name, data)
    files.write_json(report_dir / "report.json", processed.report)
    return processed
