"""Predict: classify image files with a trained model and nothing else.

Each file goes through exactly the code that made the training data (ingest's
decode_image, prepare's derive_view) with the settings the model was trained
with: ingest's from the record train wrote beside the model (store.ModelRecord),
the views from the model's own input shapes. No params.yaml, no prepared data.
"""

from pathlib import Path

from pipeline.evaluate import class_indices_of, confidence_of, input_shapes, load_trained
from pipeline.ingest.cache import DecodeCache
from pipeline.ingest.decode import settings_key
from pipeline.ingest.scan import hidden, known_not_image
from pipeline.ingest.verdicts import stack_pixels
from pipeline.ingest.workers import decode_in_workers
from pipeline.params import CHANNELS, View
from pipeline.prepare import derive_view


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


def predict(model_path: Path, paths: list[Path], workers: int = 1) -> list[dict]:
    """One row per file: its label and probability, or why it could not be read as an image."""
    from tqdm import tqdm

    model, trained_with = load_trained(model_path)  # refused before any decoding
    settings = trained_with.ingest
    views = [View(image_size=(height, width), color_mode=COLOR_MODES[channels])
             for height, width, channels in input_shapes(model)]  # fmt: skip
    names = list(trained_with.classes)
    files = image_files(paths)
    nothing_kept = DecodeCache(None, settings_key(settings))
    # Spawned, not forked: this process runs TensorFlow's threads, and a forked child
    # inherits any lock one of them holds, held for ever.
    decoding = decode_in_workers(files, settings, nothing_kept, workers, "spawn")
    progress = tqdm(decoding, total=len(files), desc="predict", unit="img", disable=None)
    results = list(progress)
    usable = [result for result in results if result.reason is None]
    predictions = iter([])
    if usable:
        images = stack_pixels(usable, settings)
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
