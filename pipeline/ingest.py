"""Ingest: a folder of class sub-folders of images -> uint8 arrays and a manifest.

`decode_image` is the pure core (bytes in, pixels out) and is the only code
that turns an image file into model input, so `predict` can reuse it exactly.
"""

import hashlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline import store
from pipeline.errors import PipelineError
from pipeline.params import Ingest

# What Pillow raises for files that are not (valid) images.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

PIL_MODES = {"grayscale": "L", "rgb": "RGB"}


def decode_image(data: bytes, settings: Ingest) -> tuple[np.ndarray, Image.Image]:
    """Decode, orient, convert and resize one image file's bytes.

    Returns the (H, W, C) uint8 pixels and the opened (not decoded) source image
    for its metadata. Raises one of IMAGE_ERRORS for anything that is not a valid image.
    """
    height, width = settings.image_size
    with Image.open(io.BytesIO(data)) as source:
        # Orientation first, so that width and height mean what the viewer saw.
        image = ImageOps.exif_transpose(source).convert(PIL_MODES[settings.color_mode])
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]  # (H, W) -> (H, W, 1)
    return pixels, source


def scan(raw: Path) -> tuple[list[tuple[str, str]], int]:
    """List (path relative to `raw`, class) for every candidate image, in sorted order.

    Each sub-folder of `raw` is a class; files in its sub-folders belong to it.
    Hidden files and folders, and files directly in `raw`, are skipped and counted.
    """
    if not raw.is_dir():
        raise PipelineError(f"{raw} is not a folder; expected {raw}/<class>/<image files>")
    found, skipped = [], 0
    for entry in sorted(raw.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            skipped += 1
            continue
        for path in sorted(entry.rglob("*")):
            relative = path.relative_to(raw)
            if any(part.startswith(".") for part in relative.parts):
                skipped += path.is_file()
            elif path.is_file():
                found.append((relative.as_posix(), entry.name))
    return found, skipped


def ingest(raw: Path, settings: Ingest) -> store.Interim:
    """Read every image under `raw`; undecodable files are quarantined with a reason."""
    candidates, skipped = scan(raw)
    pixels, manifest, quarantine = [], [], []
    for relative, label in tqdm(candidates, desc="ingest", unit="img", disable=None):
        data = (raw / relative).read_bytes()
        try:
            array, source = decode_image(data, settings)
        except IMAGE_ERRORS as error:
            reason = f"{type(error).__name__}: {error}".replace("\n", " ")
            quarantine.append(store.QuarantineRow(relative, reason))
            continue
        pixels.append(array)
        manifest.append(
            store.ManifestRow(
                path=relative,
                label=label,
                sha256=hashlib.sha256(data).hexdigest(),
                width=source.width,
                height=source.height,
                format=source.format or "",
                mode=source.mode,
            )
        )
    if not manifest:
        raise PipelineError(
            f"no readable images under {raw} ({len(quarantine)} quarantined); "
            f"expected {raw}/<class>/<image files>"
        )
    report = {
        "accepted": len(manifest),
        "quarantined": len(quarantine),
        "skipped": skipped,
        "classes": dict(sorted(Counter(row.label for row in manifest).items())),
    }
    return store.Interim(np.stack(pixels), manifest, quarantine, report)


def run(raw: Path, out: Path, settings: Ingest) -> store.Interim:
    interim = ingest(raw, settings)
    store.write_interim(out, interim)
    return interim
