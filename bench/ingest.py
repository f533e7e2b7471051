"""Ingest against the Keras way of reading an image folder, side by side.

    python -m bench.ingest generate DIR --count 5000 --size 500x375
    python -m bench.ingest compare DIR [DIR ...] --rounds 3
    python -m bench.ingest incremental DIR

`compare` alternates, round by round, four ways of turning a class-folder
tree into uint8 arrays at the size and colour mode of params.yaml:

- imgpipe:  `imgpipe ingest --no-cache`, a whole process, start-up included;
- keras:    `keras.utils.image_dataset_from_directory`, one full pass cast to
            uint8, timed inside its process after TensorFlow is imported
            (start-up excluded, which flatters Keras; "keras+start" is the
            whole process, as a user waits for it);
- limit:    Pillow's draft decode alone (no resize, no hashing, nothing
            written) on all cores: what the machine can decode at best;
- floor:    the least any Pillow ingest must do, as a whole process (start-up
            included, as for imgpipe): list the folder; read, hash (for
            deduplication), draft-decode and resize each file on all cores;
            write one array. No verdicts, cache, manifest or report. What
            imgpipe can reach at best, against the limit.

`incremental` times full runs (empty cache), re-runs with nothing changed and
re-runs after adding 1% new images, each a whole `imgpipe ingest` process with
the outputs deleted first (as `dvc repro` does), and checks that the output is
byte-identical to a from-scratch run.
"""

import argparse
import io
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
IMGPIPE = Path(sys.executable).parent / "imgpipe"

KERAS_PASS = """
import sys, time
import keras, numpy as np
folder, height, width, color_mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
dataset = keras.utils.image_dataset_from_directory(
    folder, image_size=(height, width), color_mode=color_mode, batch_size=64, shuffle=False,
    verbose=False)
arrays = [np.asarray(images).astype(np.uint8) for images, _ in dataset]
count = sum(len(a) for a in arrays)
print(count, time.perf_counter() - start)
"""

FLOOR = """
import hashlib, io, multiprocessing, os, sys
import numpy as np
from PIL import Image
folder, out, mode, width, height, resample = sys.argv[1:]
size, resample = (int(width), int(height)), Image.Resampling[resample.upper()]
def examine(path):
    data = open(path, "rb").read()
    hashlib.sha256(data).hexdigest()  # deduplication and the manifest need it
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft(mode, size)
            return image.convert(mode).resize(size, resample).tobytes()
    except Exception:
        return b""
files = sorted(os.path.join(d, name) for d, _, names in os.walk(folder) for name in names)
workers = len(os.sched_getaffinity(0))
with multiprocessing.get_context("fork").Pool(workers) as pool:  # chunks as imgpipe's
    pixels = pool.map(examine, files, chunksize=max(1, min(256, len(files) // (4 * workers))))
np.save(out, np.frombuffer(b"".join(pixels), np.uint8))
"""


def photo(seed: int, size: tuple[int, int]) -> bytes:
    """A JPEG that compresses like a photo: smooth shapes, edges and sensor noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16)
    for _ in range(12):  # a few hard-edged objects
        x, y = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 20, width // 4), rng.integers(height // 20, height // 4)
        pixels[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    pixels += rng.normal(0, 6, pixels.shape).astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def _write_photo(job: tuple[Path, int, tuple[int, int]]) -> None:
    path, seed, size = job
    path.write_bytes(photo(seed, size))


def generate(folder: Path, count: int, size: tuple[int, int], classes: int, first: int = 0) -> None:
    for index in range(classes):
        (folder / f"class_{index}").mkdir(parents=True, exist_ok=True)
    jobs = [
        (folder / f"class_{i % classes}" / f"photo_{i:06d}.jpg", i, size)
        for i in range(first, first + count)
    ]
    with multiprocessing.Pool() as pool:
        pool.map(_write_photo, jobs, chunksize=16)


def _draft_decode(job: tuple[Path, str, tuple[int, int]]) -> None:
    path, mode, size = job
    with Image.open(path) as image:
        image.draft(mode, size)
        image.load()


def decode_limit(files: list[Path], mode: str, size: tuple[int, int]) -> float:
    start = time.perf_counter()
    with multiprocessing.Pool() as pool:
        pool.map(_draft_decode, [(f, mode, size) for f in files], chunksize=16)
    return time.perf_counter() - start


def run_imgpipe(params: Path, raw: Path, out: Path, *options: str) -> float:
    shutil.rmtree(out, ignore_errors=True)  # dvc repro deletes a stage's outputs first
    start = time.perf_counter()
    subprocess.run(
        [IMGPIPE, "--params", params, "ingest", "--raw", raw, "--out", out, *options],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def run_floor(raw: Path, out: Path, mode: str, size: tuple[int, int], resample: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", FLOOR, raw, out, mode, *map(str, size), resample], check=True
    )
    return time.perf_counter() - start


def run_keras(raw: Path, height: int, width: int, color_mode: str) -> tuple | str:
    """(images read, seconds for the pass, for the whole process), or what stopped Keras."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", KERAS_PASS, raw, str(height), str(width), color_mode],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if done.returncode != 0:
        return [line for line in done.stderr.splitlines() if "Error" in line][-1][:160]
    count, seconds = done.stdout.split()
    return int(count), float(seconds), time.perf_counter() - start


def image_files(folder: Path) -> list[Path]:
    suffixes = {".jpg", ".jpeg", ".png", ".gif", ".bmp"}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes)


def compare(folders: list[Path], params: Path, rounds: int, color_mode: str | None) -> None:
    content = yaml.safe_load(params.read_text())
    if color_mode:
        content["ingest"]["color_mode"] = color_mode
    settings = content["ingest"]
    height, width = settings["image_size"]
    color_mode = settings["color_mode"]
    mode = "L" if color_mode == "grayscale" else "RGB"
    print(f"settings: {height}x{width} {color_mode}, {os.cpu_count()} cores, {rounds} rounds")
    header = f"{'folder':<28}{'images':>7}{'imgpipe/s':>11}{'keras/s':>9}{'keras+start/s':>15}"
    print(
        header + f"{'limit/s':>9}{'floor/s':>9}{'vs keras':>10}{'of limit':>10}{'floor/limit':>13}"
    )
    for folder in folders:
        files = image_files(folder)
        for path in files:  # warm the page cache, so that no method pays for the disk
            path.read_bytes()
        times = {"imgpipe": [], "keras": [], "keras+start": [], "limit": [], "floor": []}
        keras_error, keras_count = None, len(files)
        with tempfile.TemporaryDirectory() as scratch:
            run_params = Path(scratch) / "params.yaml"
            run_params.write_text(yaml.safe_dump(content))
            for _ in range(rounds):
                times["imgpipe"].append(
                    run_imgpipe(run_params, folder, Path(scratch) / "out", "--no-cache")
                )
                keras = run_keras(folder, height, width, color_mode)
                if isinstance(keras, str):
                    keras_error = keras
                else:
                    keras_count = keras[0]
                    times["keras"].append(keras[1])
                    times["keras+start"].append(keras[2])
                times["limit"].append(decode_limit(files, mode, (width, height)))
                floor_out = Path(scratch) / "floor.npy"
                times["floor"].append(
                    run_floor(folder, floor_out, mode, (width, height), settings["resample"])
                )
        rate = {name: len(files) / statistics.median(t) if t else float("nan")
                for name, t in times.items()}  # fmt: skip
        print(
            f"{folder.parent.name[:12] + '/' + folder.name[:14]:<28}{len(files):>7}"
            f"{rate['imgpipe']:>11.0f}{rate['keras']:>9.0f}{rate['keras+start']:>15.0f}"
            f"{rate['limit']:>9.0f}{rate['floor']:>9.0f}"
            f"{rate['imgpipe'] / rate['keras']:>9.2f}x{rate['imgpipe'] / rate['limit']:>10.0%}"
            f"{rate['floor'] / rate['limit']:>13.0%}"
        )
        if keras_error:
            print(f"  keras failed: {keras_error}")
        if keras_count != len(files):
            print(f"  keras read {keras_count} of the {len(files)} images")


def incremental(folder: Path, params: Path, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        raw = scratch / "raw"
        shutil.copytree(folder, raw)
        cache = ("--cache", str(scratch / "cache.sqlite"))
        files = image_files(raw)
        for path in files:  # warm the page cache
            path.read_bytes()
        full = []  # the denominator too is a median: one sample of it swayed the ratios
        for _ in range(rounds):
            for path in scratch.glob("cache.*"):  # empty the cache: SQLite and the kept array
                path.unlink()
            full.append(run_imgpipe(params, raw, scratch / "out", *cache))
        first = _outputs(scratch / "out")
        unchanged = [run_imgpipe(params, raw, scratch / "out", *cache) for _ in range(rounds)]
        same_again = _outputs(scratch / "out") == first
        size, new = Image.open(files[0]).size, max(1, len(files) // 100)
        grown = []
        for round_number in range(rounds):  # each round adds 1% never seen before
            generate(raw, new, size, classes=2, first=10**6 * (round_number + 1))
            grown.append(run_imgpipe(params, raw, scratch / "out", *cache))
        grown_bytes = _outputs(scratch / "out")
        run_imgpipe(params, raw, scratch / "scratch", "--no-cache")
        identical = grown_bytes == _outputs(scratch / "scratch")
    full, unchanged, grown = map(statistics.median, (full, unchanged, grown))
    print(f"{len(files)} images in {folder}; medians of {rounds} runs of each kind")
    print(f"  full run, empty cache       {full:7.2f} s")
    print(f"  re-run, nothing changed     {unchanged:7.2f} s  {unchanged / full:6.1%} of full")
    print(f"  same bytes as the full run  {same_again}")
    print(f"  re-run after adding 1%      {grown:7.2f} s  {grown / full:6.1%} of full")
    print(f"  same bytes as from scratch  {identical}")


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("generate", help="write photo-like JPEGs in class folders")
    make.add_argument("folder", type=Path)
    make.add_argument("--count", type=int, default=5000)
    make.add_argument("--size", default="500x375", help="WIDTHxHEIGHT")
    make.add_argument("--classes", type=int, default=2)
    side = commands.add_parser("compare", help="imgpipe vs keras vs the decode limit")
    side.add_argument("folders", type=Path, nargs="+")
    side.add_argument("--rounds", type=int, default=3)
    side.add_argument("--color-mode", choices=["grayscale", "rgb"], help="override params.yaml")
    grow = commands.add_parser("incremental", help="full run, unchanged re-run, +1%% re-run")
    grow.add_argument("folder", type=Path)
    grow.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    if args.command == "generate":
        width, height = map(int, args.size.split("x"))
        generate(args.folder, args.count, (width, height), args.classes)
    elif args.command == "compare":
        compare(args.folders, args.params, args.rounds, args.color_mode)
    else:
        incremental(args.folder, args.params, args.rounds)


if __name__ == "__main__":
    main()
