"""Prepare's near-duplicate rule on real photos and edited copies of them under new names.

    python -m bench.duplicates ../shared/datasets/hymenoptera ../shared/datasets/trashnet

Every photo of the folders (class folders, or split folders of class folders) is
copied into one raw folder, class by class, and of every `--every`th one each kind of
copy in KINDS is saved beside it under a new name; `imgpipe ingest` (ingest.run, at
params.yaml's settings: 64x64 grayscale by default) and prepare (split by hash) run on
it as the pipeline would. Prints, per kind, the share of copies grouped with their
original and the leakage; then the share of distinct originals (the photos ingest
accepted) grouped with another original, less the pairs in CHECKED, which were looked
at by eye and are the same scene shot twice.
"""

import argparse
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from pipeline import ingest, prepare, prepare_cache, store
from pipeline.params import load_params


def _jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _noise(image: Image.Image, level: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image, np.int16)
    noisy = pixels + rng.integers(-level, level + 1, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _crop(image: Image.Image, fraction: float = 0.05) -> Image.Image:
    dx, dy = round(image.width * fraction), round(image.height * fraction)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def _bright(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(factor)


def _blur(image: Image.Image, fraction: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(fraction * image.width))


# Each kind of copy: its encoded bytes, from the decoded original and a seed for noise.
KINDS = {
    "half size": lambda im, s: _jpeg(im.resize((im.width // 2, im.height // 2))),
    "JPEG q40": lambda im, s: _jpeg(im, 40),
    "blur 1%": lambda im, s: _jpeg(_blur(im, 0.01)),
    "blur 2%": lambda im, s: _jpeg(_blur(im, 0.02)),
    "noise ±3": lambda im, s: _jpeg(_noise(im, 3, s)),
    "noise ±10": lambda im, s: _jpeg(_noise(im, 10, s)),
    "brightness +15%": lambda im, s: _jpeg(_bright(im, 1.15)),
    "brightness -15%": lambda im, s: _jpeg(_bright(im, 0.85)),
    "crop 5%": lambda im, s: _jpeg(_crop(im)),
    "flip": lambda im, s: _jpeg(ImageOps.mirror(im)),
    "flip + JPEG q40": lambda im, s: _jpeg(ImageOps.mirror(im), 40),
    "crop 5% + brightness +15%": lambda im, s: _jpeg(_bright(_crop(im), 1.15)),
}

# Pairs of trashnet photos grouped with each other that are the same object shot twice
# (looked at by eye at 64x64): real near-duplicates, not false groups.
CHECKED = {
    frozenset(pair)
    for pair in [
        ("cardboard15", "cardboard361"), ("cardboard386", "cardboard72"), ("metal120", "metal50"),
        ("paper101", "paper108"), ("paper123", "paper547"), ("paper136", "paper148"),
        ("paper147", "paper99"), ("paper152", "paper392"), ("paper180", "paper284"),
        ("paper185", "paper390"), ("paper2", "paper40"), ("paper246", "paper349"),
        ("paper305", "paper308"), ("paper314", "paper53"), ("paper345", "paper451"),
        ("paper457", "paper553"), ("paper459", "paper466"), ("paper522", "paper534"),
        ("paper540", "paper56"),
    ]
}  # fmt: skip
COPY = "~"  # a copy's name: <original's stem>~<kind number>.jpg


def make_raw(folders: list[Path], raw: Path, every: int) -> None:
    """Each photo of `folders` in raw/<folder>-<class>/, with copies of every `every`th."""
    photos = [
        (path, raw / f"{folder.name}-{path.parent.name}")
        for folder in folders
        for path in sorted(folder.rglob("*.jpg"))
    ]
    for index, (path, label) in enumerate(photos):
        label.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, label / path.name)
        if index % every == 0:
            with Image.open(path) as image:
                image = image.convert("RGB")
                for number, make in enumerate(KINDS.values()):
                    (label / f"{path.stem}{COPY}{number}.jpg").write_bytes(make(image, index))


def original_of(path: str) -> str:
    """The path of the photo a copy was made of (a photo's own path for a photo)."""
    folder, name = path.rsplit("/", 1)
    return f"{folder}/{name.split(COPY)[0]}.jpg" if COPY in name else path


def measure(raw: Path, interim_folder: Path, params: Path) -> None:
    settings = load_params(params)
    ingest.run(raw, interim_folder, settings.ingest)
    interim = store.read_interim(interim_folder)
    processed = prepare.prepare(interim, settings.prepare.model_copy(update={"split": "hash"}))
    rows = {row.path: row for row in processed.rows}
    print(f"ingest at {settings.ingest.image_size[0]}x{settings.ingest.image_size[1]} "
          f"{settings.ingest.color_mode}, near_duplicate_distance "
          f"{settings.prepare.near_duplicate_distance}, split by hash\n")  # fmt: skip
    print("| copy | copies | grouped with their original | in another split |")
    print("|---|---|---|---|")
    for number, kind in enumerate(KINDS):
        pairs = [
            (row, rows[original_of(path)])
            for path, row in rows.items()
            if path.endswith(f"{COPY}{number}.jpg") and original_of(path) in rows
        ]  # a copy of a photo ingest kept (not a conflict)
        grouped = sum(copy.group != "" and copy.group == original.group for copy, original in pairs)
        apart = sum(copy.split != original.split for copy, original in pairs)
        print(f"| {kind} | {len(pairs)} | {grouped / len(pairs):.1%} | {apart} |")
    near = processed.report["near_duplicates"]
    print(f"\nleakage {near['leakage']}, pairs across classes {near['conflicts']}")
    originals = [path for path in rows if COPY not in path]
    paths = list(rows)
    found = prepare_cache.near_duplicates_of(
        interim, prepare.block_rows(interim.images), settings.prepare.near_duplicate_distance, None
    )
    among = [(paths[i], paths[j]) for i, j in found if COPY not in paths[i] + paths[j]]
    checked = [pair for pair in among if frozenset(Path(p).stem for p in pair) in CHECKED]
    false = [pair for pair in among if pair not in checked]
    grouped = {path for pair in false for path in pair}
    print(f"distinct originals {len(originals)}: {len(among)} pairs grouped, {len(checked)} of "
          f"them checked by eye as the same scene; the others join {len(grouped)} originals "
          f"({len(grouped) / len(originals):.2%})")  # fmt: skip
    for pair in false:
        print("  not checked:", *pair)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="folders of class folders")
    parser.add_argument("--every", type=int, default=4, help="copies of every n-th photo")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        make_raw(args.folders, Path(folder) / "raw", args.every)
        measure(Path(folder) / "raw", Path(folder) / "interim", args.params)


if __name__ == "__main__":
    main()
