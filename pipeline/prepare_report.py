"""What prepare tells the user: report.json (split counts, near-duplicates, leakage and
conflicts), the warnings, the summary it prints, and the class-balance plot.

Time and memory O(N) in the split rows, plus the pairs.
"""

from collections import Counter
from pathlib import Path

import numpy as np

from pipeline import figures, store
from pipeline.params import Prepare

SPLIT_TOLERANCE = 0.10  # how far a realised split's share may be from the asked before a warning
LISTED_LEAKS = 20  # the leaking pairs report.json names; the split rows' group column has all


def empty_split(name: str, splits, natural, settings: Prepare, given) -> str:
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


def report(rows, classes, pairs, sizes: Counter, leaked: np.ndarray, conflicts) -> dict:
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
