"""Prepare's peak memory against the number of images, one code tree beside another.

    python -m bench.ingest generate /tmp/photos-25k --count 25000 --size 96x72 --classes 3
    imgpipe --params rgb.yaml ingest --raw /tmp/photos-25k --out /tmp/interim-25k --no-cache
    python -m bench.prepare memory /tmp/interim-25k [...] --code ../main --code .

For each interim folder, one `imgpipe prepare` process per code tree (on PYTHONPATH, so
the tree's `pipeline` package is the one imported), with params.yaml's prepare settings
and one view of the ingested size and colour mode. Its peak RSS is the kernel's count for
that one process (ru_maxrss, as tests/conftest.peak_rss takes it); its outputs are
compared byte for byte with those of the first code tree.
"""

import argparse
import hashlib
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from pipeline import store
from tests.conftest import peak_rss

REPO = Path(__file__).resolve().parent.parent
IMGPIPE = Path(sys.executable).parent / "imgpipe"


def write_params(path: Path, images, distance: int | None) -> Path:
    """params.yaml's, with ingest's colour mode and one view as the interim's `images` are."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    _, height, width, channels = images.shape
    mode = "rgb" if channels == 3 else "grayscale"
    params["ingest"] |= {"image_size": [height, width], "color_mode": mode}
    params["prepare"]["views"] = [{"image_size": [height, width], "color_mode": mode}]
    if distance is not None:
        params["prepare"]["near_duplicate_distance"] = distance
    path.write_text(yaml.safe_dump(params))
    return path


def prepare_rss(code: Path, params: Path, interim: Path, out: Path) -> int:
    """Bytes: the peak RSS of one `imgpipe prepare` of `interim` run with `code`'s pipeline."""
    command = [IMGPIPE, "--params", params, "prepare", "--interim", interim,
               "--out", out / "processed", "--report-dir", out / "report"]  # fmt: skip
    return peak_rss(command, os.environ | {"PYTHONPATH": str(code.resolve())})


def digests(folder: Path) -> dict[str, str]:
    """Every file under `folder` by path: its sha256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.file_digest(p.open("rb"), "sha256").hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def memory(interims: list[Path], codes: list[Path], distance: int | None) -> None:
    print("| images | pixels | code | peak RSS | outputs |")
    print("|---|---|---|---|---|")
    for interim in interims:
        pixels = store.read_interim(interim).images
        size = math.prod(pixels.shape)
        with tempfile.TemporaryDirectory(dir=interim.parent) as scratch:
            params = write_params(Path(scratch) / "params.yaml", pixels, distance)
            first = None
            for index, code in enumerate(codes):
                out = Path(scratch) / str(index)
                rss = prepare_rss(code, params, interim, out)
                files = digests(out)
                first = first or files
                same = "first" if index == 0 else ("same" if files == first else "DIFFER")
                print(f"| {len(pixels):,} | {size / 2**20:,.0f} MiB | {code} | "
                      f"{rss / 2**20:,.0f} MiB | {same} |", flush=True)  # fmt: skip


class Blocky:
    """`count` blocky 64x64 RGB images (4x4 random colours, each 16 pixels wide), made
    when a block of rows is asked for: image i's colours come from seed i."""

    def __init__(self, count: int):
        self.count = count

    def __getitem__(self, rows: slice) -> np.ndarray:
        coarse = np.stack([
            np.random.default_rng(i).integers(0, 256, (4, 4, 3), np.uint8)
            for i in range(*rows.indices(self.count))
        ])  # fmt: skip
        return coarse.repeat(16, axis=1).repeat(16, axis=2)


def synthetic(count: int, out: Path) -> None:
    """An interim folder of `count` Blocky images, written straight into its shards with
    their manifest: no decoding, so a million take minutes, in little memory."""
    rows = [
        store.ManifestRow(f"c{i % 3}/{i:07d}.png", f"c{i % 3}",
                          hashlib.sha256(str(i).encode()).hexdigest(), 64, 64, "PNG", "RGB")
        for i in range(count)
    ]  # fmt: skip
    rows.sort(key=lambda row: row.path)  # ingest's order
    images = Blocky(count)
    store.write_interim(out, store.Interim(images, rows, [], [], {"synthetic": count}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    peak = commands.add_parser("memory", help="peak RSS of imgpipe prepare, code tree by tree")
    peak.add_argument("interims", type=Path, nargs="+", help="ingest's output folders")
    peak.add_argument("--code", type=Path, action="append", required=True,
                      help="a checkout whose pipeline package runs; repeat to compare")  # fmt: skip
    peak.add_argument("--distance", type=int, help="prepare.near_duplicate_distance (-1: off)")
    made = commands.add_parser("synthetic", help="an interim folder of blocky images, fast")
    made.add_argument("count", type=int)
    made.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "synthetic":
        synthetic(args.count, args.out)
    else:
        memory(args.interims, args.code, args.distance)


if __name__ == "__main__":
    main()
