"""Does the audit find flipped labels? Precision and recall of its top-ranked suspects.

    python -m bench.audit demo ../shared/datasets/trashnet

For each data set (`demo`: the 5,000 MNIST digits of `imgpipe demo-data`; else a folder
of class folders, one or two levels down), a copy in a temporary folder, as class folders
of hard links (copies across file systems), has --flip of its images (5%) filed under
another class drawn at random (seed --seed). `imgpipe ingest`, `prepare` and `audit` run
on it at the repository's params.yaml, with any `-S section.key=value` set as
`dvc exp run -S` sets it (the value read as YAML). Of the images prepared, the top-ranked
share as large as --flip is taken from suspects.csv: precision is the share of it that
was flipped, recall the share of the flipped images in it.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import yaml

from bench.ingest import REPO, image_files
from bench.train import imgpipe
from pipeline import files, store, tables
from pipeline.demo import write_demo_data


def flipped_copy(folder: Path, raw: Path, share: float, seed: int) -> set[str]:
    """raw/<class>/ of FOLDER's images, `share` of them under another class at random;
    the flipped images' paths in raw (as ingest names them)."""
    found = [(path, path.relative_to(folder).parts[-2]) for path in image_files(folder)]
    classes = sorted({label for _, label in found})
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(len(found), round(share * len(found)), replace=False).tolist())
    flipped = set()
    for index, (path, label) in enumerate(found):
        name = "_".join(path.relative_to(folder).parts)  # unique, and names the true class
        if index in chosen:
            label = rng.choice([other for other in classes if other != label])
        files.link_or_copy(path, raw / label / name)
        if index in chosen:
            flipped.add(f"{label}/{name}")
    return flipped


def scores(work: Path, flipped: set[str], share: float) -> dict:
    """Precision and recall of the top `share` of the prepared images in suspects.csv."""
    prepared = {row.path for row in store.read_split_rows(work / "processed")}
    flipped &= prepared  # ingest leaves out what it cannot read, and cross-class copies
    suspects = tables.read_suspects(work / "audit" / "suspects.csv")
    top = [row.path for row in suspects[: round(share * len(prepared))]]
    hits = len(flipped.intersection(top))
    return {
        "images": len(prepared),
        "flipped": len(flipped),
        "suspects": len(suspects),
        "top": len(top),
        "precision": hits / len(top) if top else 0.0,
        "recall": hits / len(flipped) if flipped else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", help="`demo`, or folders of class folders")
    parser.add_argument("--flip", type=float, default=0.05, help="share of labels flipped")
    parser.add_argument("--seed", type=int, default=0, help="which labels are flipped")
    parser.add_argument("-S", dest="changes", action="append", default=[],
                        metavar="KEY=VALUE", help="a param changed from params.yaml's")  # fmt: skip
    args = parser.parse_args()
    settings = yaml.safe_load((REPO / "params.yaml").read_text())
    for change in args.changes:
        key, _, value = change.partition("=")
        *sections, last = key.split(".")
        target = settings
        for section in sections:
            target = target[section]
        target[last] = yaml.safe_load(value)
    print(
        f"{settings['train']['model']}, {settings['train']['epochs']} epochs, "
        f"{settings['audit']['folds']} folds, ranked by {settings['audit']['rank_by']}, "
        f"{args.flip:.0%} of labels flipped (seed {args.seed}); {' '.join(args.changes)}\n"
    )
    print("| data set | images | flipped | suspects | top | precision | recall |")
    print("|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        with tempfile.TemporaryDirectory(prefix="bench-audit-") as scratch:
            work = Path(scratch)
            source = Path(dataset)
            if dataset == "demo":
                source = work / "demo"
                write_demo_data(source)
            flipped = flipped_copy(source, work / "raw", args.flip, args.seed)
            (work / "params.yaml").write_text(yaml.safe_dump(settings))
            imgpipe(work / "params.yaml", work, "ingest", "prepare", "audit")
            got = scores(work, flipped, args.flip)
        print(
            f"| {source.name if dataset != 'demo' else 'demo digits'} | {got['images']} | "
            f"{got['flipped']} | {got['suspects']} | {got['top']} | {got['precision']:.3f} | "
            f"{got['recall']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
