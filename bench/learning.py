"""Does every model learn at default params? Test accuracy per model and seed.

    python -m bench.learning ../shared/datasets/trashnet --seeds 0 1 2

The class folders under FOLDER are copied into one raw folder, ingested and
prepared once at the repository's params.yaml; then each model trains and is
evaluated with `imgpipe train` and `imgpipe evaluate` at every seed, with only
`train.model` and `base.seed` changed (and, for multi_input, an RGB ingest with
its two views, 64×64 grayscale and 32×32 RGB). Prints test accuracy and macro
F1 per seed, the last epoch's training loss, whether train said the run
learned, and each model's worst seed.
"""

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from bench.ingest import REPO
from bench.train import imgpipe, merged_raw
from pipeline.params import MODEL_NAMES

MULTI_INPUT_VIEWS = [
    {"image_size": [64, 64], "color_mode": "grayscale"},
    {"image_size": [32, 32], "color_mode": "rgb"},
]


def prepared(folder: Path, work: Path, settings: dict) -> list[str]:
    """Copy, ingest and prepare FOLDER into work/ at these params; the class names."""
    classes = merged_raw(folder, work / "raw")
    (work / "params.yaml").write_text(yaml.safe_dump(settings))
    imgpipe(work / "params.yaml", work, "ingest", "prepare")
    return classes


def trained(work: Path, settings: dict, model: str, seed: int) -> dict:
    """Train and evaluate one model at one seed; its figures."""
    settings = {
        **settings,
        "base": {**settings["base"], "seed": seed},
        "train": {**settings["train"], "model": model},
    }
    params = work / f"{model}-{seed}.yaml"
    params.write_text(yaml.safe_dump(settings))
    imgpipe(params, work, "train", "evaluate")
    test = json.loads((work / "results" / "metrics.json").read_text())
    train = json.loads((work / "live" / "metrics.json").read_text())
    return {**test, "train_loss": train["train"]["loss"], "learned": train["learned"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--epochs", type=int, help="[default: params.yaml's]")
    args = parser.parse_args()
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder of class folders")
    defaults = yaml.safe_load((REPO / "params.yaml").read_text())
    if args.epochs:
        defaults["train"]["epochs"] = args.epochs
    colour = {
        **defaults,
        "ingest": {**defaults["ingest"], "color_mode": "rgb"},
        "prepare": {**defaults["prepare"], "views": MULTI_INPUT_VIEWS},
    }
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as scratch:
        works, classes = {}, []
        for model in args.models:
            setup = colour if model == "multi_input" else defaults
            key = "rgb" if setup is colour else "gray"
            if key not in works:
                works[key] = (Path(scratch) / key, setup)
                classes = prepared(args.folder.resolve(), works[key][0], setup)
        epochs = defaults["train"]["epochs"]
        print(f"{args.folder.name}: {len(classes)} classes, {epochs} epochs, default params")
        print(f"{'model':<13} {'seed':>4} {'test accuracy':>13} {'macro F1':>8} "
              f"{'train loss':>10}  learned")  # fmt: skip
        for model in args.models:
            work, setup = works["rgb" if model == "multi_input" else "gray"]
            accuracies = []
            for seed in args.seeds:
                result = trained(work, setup, model, seed)
                accuracies.append(result["accuracy"])
                print(f"{model:<13} {seed:>4} {result['accuracy']:>13.3f} "
                      f"{result['macro_f1']:>8.3f} {result['train_loss']:>10.3f}  "
                      f"{result['learned']}", flush=True)  # fmt: skip
            print(f"{model:<13} {'min':>4} {min(accuracies):>13.3f}", flush=True)


if __name__ == "__main__":
    main()
