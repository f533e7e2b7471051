"""Predict: classify image files with a trained model and nothing else.

Each file goes through exactly the code that made the training data (ingest's
decode_image, prepare's derive_view) with the settings the model was trained
with: ingest's from the record train wrote beside the model (model_record.ModelRecord),
the views from the model's own input shapes. No params.yaml, no prepared data.
Files go through in batches, so that memory holds one batch's pixels however many
files there are.
"""

import math
from itertools import islice
from pathlib import Path

import numpy as np

from pipeline.evaluate import class_indices_of, confidence_of, input_shapes, load_trained
from pipeline.ingest.cache import DecodeCache
from pipeline.ingest.decode import settings_key
from pipeline.ingest.scan import hidden, known_not_image
from pipeline.ingest.verdicts import stack_pixels
from pipeline.ingest.workers import decode_in_workers
from pipeline.params import CHANNELS, Ingest, View
from pipeline.prepare import CHUNK_BYTES, derive_view


def image_files(paths: list[Path]) -> list[Path]:
    """The files named, and every file under the folders named that ingest would not ignore
    (hidden, or known not to be an image), sorted."""
    files = []
    for path in paths:
        if path.is_dir():
            inside = (p for p in path.rglob("*") if p.is_file() and not known_not_image(p.name))
            files += sorted(p for p in inside if not any(map(hidden, p.relative_to(path).parts)))
        else:
            files.append(path)
    return files


# Each view's color_mode, by the channels of the model input it makes.
COLOR_MODES = {channels: mode for mode, channels in CHANNELS.items()}


def batch_images(shapes: list[tuple[int, int, int]], chunk_bytes: int = CHUNK_BYTES) -> int:
    """Images per batch: as many as keep each of a batch's uint8 arrays, of (H, W, C)
    `shapes` (its decoded pixels, each view), within `chunk_bytes`, as prepare's blocks
    are; at least one."""
    return max(1, chunk_bytes // max(map(math.prod, shapes)))


def predict(
    model_path: Path, paths: list[Path], workers: int = 1, chunk_bytes: int = CHUNK_BYTES
) -> list[dict]:
    """One row per file, in order: its label and probability, or why it could not be read
    as an image. The files are decoded and predicted a batch (batch_images) at a time."""
    from tqdm import tqdm

    model, trained_with = load_trained(model_path)  # refused before any decoding
    settings = trained_with.ingest
    shapes = input_shapes(model)
    views = [View(image_size=(height, width), color_mode=COLOR_MODES[channels])
             for height, width, channels in shapes]  # fmt: skip
    names = list(trained_with.classes)
    files = image_files(paths)
    decoded = (*settings.image_size, CHANNELS[settings.color_mode])
    size = batch_images([decoded, *shapes], chunk_bytes)
    nothing_kept = DecodeCache(None, settings_key(settings))
    # Spawned, not forked: this process runs TensorFlow's threads, and a forked child
    # inherits any lock one of them holds, held for ever.
    decoding = decode_in_workers(files, settings, nothing_kept, workers, "spawn")
    # One iterator for all batches: an islice of the bar itself starts a new pass over
    # it, which closes the bar when the batch drops it.
    progress = iter(tqdm(decoding, total=len(files), desc="predict", unit="img", disable=None))
    rows = []
    for start in range(0, len(files), size):
        batch = files[start : start + size]
        # Its results are an argument, never a name here, which would keep them while the
        # next batch is decoded.
        rows += _classify(model, views, names, settings, batch, list(islice(progress, len(batch))))
    return rows


def _classify(
    model, views: list[View], names: list[str], settings: Ingest, files: list[Path], results
) -> list[dict]:
    """The rows of one batch of files, its usable images predicted in one model call."""
    usable = [result for result in results if result.reason is None]
    predictions = iter([])
    if usable:
        images = np.asarray(stack_pixels(usable, settings))
        inputs = [derive_view(images, view) for view in views]
        probabilities = model.predict(inputs[0] if len(inputs) == 1 else inputs, verbose=0)
        indices = class_indices_of(probabilities)
        predictions = zip(indices, confidence_of(probabilities, indices), strict=True)
    rows = []
    for file, result in zip(files, results, strict=True):
        if result.reason is not None:
            rows.append({"file": str(file), "label": None, "probability": None,
                         "quarantined": result.reason})  # fmt: skip
            continue
        index, probability = next(predictions)
        rows.append({"file": str(file), "label": names[index], "probability": float(probability)})
    return rows


def render(rows: list[dict]) -> str:
    """The rows as a table: file, label, probability, or why the file was not usable."""
    width = max([len("file"), *(len(row["file"]) for row in rows)])
    lines = [f"{'file':<{width}}  {'label':<16}probability"]
    for row in rows:
        if row["label"] is None:
            lines.append(f"{row['file']:<{width}}  quarantined: {row['quarantined']}")
        else:
            lines.append(f"{row['file']:<{width}}  {row['label']:<16}{row['probability']:.3f}")
    return "\n".join(lines)
