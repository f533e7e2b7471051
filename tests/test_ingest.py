"""Ingest on real images of every kind: verdicts, decoding, determinism, the cache."""

import contextlib
import faulthandler
import hashlib
import io
import math
import multiprocessing
import os
import resource
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin, PngImagePlugin

from pipeline import ingest, store
from pipeline.errors import PipelineError
from pipeline.ingest import decode as decoding
from pipeline.ingest import scan as scanning
from pipeline.ingest import summary as summaries
from pipeline.ingest import workers as pool
from pipeline.ingest.cache import DecodeCache, kept_folder
from pipeline.params import Ingest
from tests.conftest import (
    BIN,
    CLASS_LEVELS,
    DATASETS,
    REPO,
    deadline,
    default_params,
    encode,
    image_bytes,
    make_dataset,
    peak_rss,
    snapshot,
    tmpfs,
    write_params,
)


def settings(**overrides) -> Ingest:
    return Ingest.model_validate({**default_params()["ingest"], "image_size": [32, 32]} | overrides)


GRAY = settings()
RGB = settings(color_mode="rgb", image_size=[24, 40])


def decode(data: bytes, ingest_settings: Ingest = GRAY) -> np.ndarray:
    return decoding.decode_image(data, ingest_settings)[0]


# --- decoding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, mode", [("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "LA"),
                  ("PNG", "1"), ("JPEG", "CMYK"), ("WEBP", "RGB"), ("GIF", "P"), ("BMP", "RGB"),
                  ("TIFF", "RGB"), ("TIFF", "LAB")],
)  # fmt: skip
@pytest.mark.parametrize("ingest_settings, shape", [(GRAY, (32, 32, 1)), (RGB, (24, 40, 3))])
def test_every_mode_pillow_reads_becomes_uint8_at_the_configured_size(
    fmt, mode, ingest_settings, shape
):
    data = image_bytes(128, "x", fmt=fmt, mode=mode)
    pixels, facts = decoding.decode_image(data, ingest_settings)
    assert pixels.shape == shape and pixels.dtype == np.uint8
    assert facts[:3] == (40, 30, fmt)
    assert 60 < pixels.mean() < 200  # the noisy mid-grey survived conversion


@pytest.mark.parametrize(
    "fmt, dtype, opened_as",
    [("PNG", np.uint16, "I;16"), ("TIFF", ">u2", "I;16B"), ("PPM", np.int32, "I")],  # PPM: PGM
)
def test_sixteen_bit_grayscale_is_scaled_not_clipped(fmt, dtype, opened_as):
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    data = encode(Image.fromarray(ramp.astype(dtype)), fmt)
    assert Image.open(io.BytesIO(data)).mode == opened_as
    pixels = decode(data, settings(image_size=[64, 64], resample="nearest"))
    # Clipping would make everything above 255/65535 white; scaling keeps the ramp.
    assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255
    assert 120 < np.median(pixels) < 135


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_fewer_bits_in_a_sixteen_bit_file_fill_the_range(bits):
    # A 12-bit camera's 0-4095 in a 16-bit PNG came out at most 15 of 255.
    ramp = np.linspace(0, 2**bits - 1, 64 * 64).astype(np.uint16).reshape(64, 64)
    pixels = decode(encode(Image.fromarray(ramp), "PNG"), settings(image_size=[64, 64]))
    assert pixels.min() == 0 and pixels.max() == 255
    assert 120 < np.median(pixels) < 135


@pytest.mark.parametrize("top", [1.0, 255.0])
def test_float_samples_in_0_1_or_0_255_are_scaled_by_that_range(top):
    ramp = np.linspace(0, top, 64 * 64, dtype=np.float32).reshape(64, 64)
    data = encode(Image.fromarray(ramp, "F"), "TIFF")
    pixels = decode(data, settings(image_size=[64, 64], resample="nearest"))
    # Before: 0-1 floats came out all black.
    assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255
    assert 120 < np.median(pixels) < 135


@pytest.mark.parametrize(
    "mode, samples, reason",
    [
        ("F", np.linspace(0, 1000, 256, dtype=np.float32), "from 0 to 1000: only 0-1 and 0-255"),
        ("F", np.full(256, np.nan, np.float32), "from nan to nan"),
        ("I", np.linspace(-5, 70000, 256).astype(np.int32), "from -5 to 70000: only 0-65535"),
    ],
)
def test_samples_with_no_known_scale_are_quarantined_not_clipped(mode, samples, reason):
    data = encode(Image.fromarray(samples.reshape(16, 16), mode), "TIFF")
    assert reason in decoding.decode_bytes(data, GRAY).reason


def test_a_png_with_a_text_chunk_too_large_for_pillow_is_accepted():
    info = PngImagePlugin.PngInfo()
    info.add_text("notes", "x" * 2_000_000, zip=True)  # 2 MB of text, a few kB compressed
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    with pytest.raises(ValueError, match="MAX_TEXT_CHUNK"):
        Image.open(io.BytesIO(encode(image, "PNG", pnginfo=info))).load()
    result = decoding.decode_bytes(encode(image, "PNG", pnginfo=info), RGB)
    assert result.reason is None
    assert np.frombuffer(result.pixels, np.uint8).reshape(24, 40, 3)[0, 0].tolist() == [200, 10, 10]


def test_transparent_pixels_become_white():
    clear = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    assert decode(encode(clear, "PNG")).min() == 255
    palette = Image.new("P", (40, 30), 0)
    assert decode(encode(palette, "PNG", transparency=0)).min() == 255


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_is_applied_once(fmt):
    stored = np.zeros((20, 40, 3), np.uint8)  # dark left half, bright right half
    stored[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates it 90 degrees clockwise
    # A TIFF keeps it as a tag of its own, which Pillow applies when loading the pixels.
    options = {"tiffinfo": dict(exif)} if fmt == "TIFF" else {"exif": exif}
    pixels = decode(encode(Image.fromarray(stored), fmt, **options))
    assert pixels[:16].mean() < 50 and pixels[16:].mean() > 200  # dark half on top


def test_resize_modes_fit_another_aspect_ratio_as_named():
    wide = np.full((20, 80), 255, np.uint8)
    wide[:, :20] = 0  # a dark left quarter
    data = encode(Image.fromarray(wide), "PNG")
    stretched, padded, cropped = (
        decode(data, settings(resize=mode)) for mode in ("stretch", "pad", "crop")
    )
    assert stretched[:, :6].max() < 30 and stretched[:, 10:].min() > 220
    assert padded[:8].max() == 0 and padded[-8:].max() == 0  # black bars above and below
    assert cropped.min() > 220  # the centre square has no dark quarter


def test_the_resampling_filter_is_a_setting():
    data = image_bytes(128, "noise", size=(97, 61))
    assert not np.array_equal(
        decode(data, settings(resample="nearest")), decode(data, settings(resample="lanczos"))
    )


@pytest.mark.parametrize("fmt", ["JPEG", "MPO"])
def test_large_jpegs_use_draft_decoding_without_visible_loss(fmt, monkeypatch):
    gradient = np.add.outer(np.arange(1200), np.arange(1600)) % 256
    image = Image.fromarray(gradient.astype(np.uint8)).convert("RGB")
    extra = {"save_all": True, "append_images": [image.resize((80, 60))]} if fmt == "MPO" else {}
    data = encode(image, fmt, quality=95, **extra)
    assert Image.open(io.BytesIO(data)).format == fmt
    drafted_sizes = []
    draft = JpegImagePlugin.JpegImageFile.draft  # MpoImageFile's too

    def recorded_draft(self, mode, size):
        result = draft(self, mode, size)
        drafted_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recorded_draft)
    drafted = decode(data, settings(image_size=[64, 64])).astype(int)
    assert drafted_sizes == [(200, 150)]  # decoded at 1/8 of 1600x1200
    with Image.open(io.BytesIO(data)) as full:  # the same pipeline without DCT scaling
        reference = np.asarray(full.convert("L").resize((64, 64), Image.Resampling.BILINEAR))
    assert np.abs(drafted[..., 0] - reference).mean() < 4


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; its pixel data is not valid."""
    data = bytearray(image_bytes(1, "bomb"))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def test_decompression_bombs_are_refused_before_any_pixel_is_decoded():
    # The pixel data is broken: a decode attempt would fail with another reason.
    result = decoding.decode_bytes(_png_claiming(4000, 3000), settings(max_pixels=10_000_000))
    assert "decompression bomb: 4000x3000" in result.reason
    assert "exceeds limit" in decoding.decode_bytes(_png_claiming(60000, 60000), GRAY).reason


def test_pillow_warnings_never_escape_as_errors():
    # Pillow warns (DecompressionBombWarning) at open for an image up to twice its limit,
    # which decode sets to ingest.max_pixels; under `python -W error` the warning must not
    # become the verdict: the reason is still ingest's own. (A palette PNG with bytes
    # transparency, this test's image before, never warned: it could not fail.)
    claiming = _png_claiming(4000, 3000)  # 12 MP, over 10 MP and under twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reason = decoding.decode_bytes(claiming, settings(max_pixels=10_000_000)).reason
    assert reason.startswith("decompression bomb: 4000x3000 pixels is over ingest.max_pixels")


# --- a folder with one file of every kind --------------------------------------------


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def messy(tmp_path):
    """A raw folder holding one file of each kind, and the verdict each must get."""
    raw = tmp_path / "raw"
    jpeg = image_bytes(60, "cat", fmt="JPEG")
    outside = tmp_path / "elsewhere"
    write(outside / "secret.png", image_bytes(1, "secret"))
    same = image_bytes(5, "who")
    expected = {
        "accepted": {
            "cats/rgb.jpg": jpeg,
            "cats/palette.png": encode(Image.new("P", (9, 9), 1), "PNG", transparency=1),
            "cats/cmyk.jpeg": image_bytes(90, "cmyk", fmt="JPEG", mode="CMYK"),
            "cats/Kitten Photos/deep/nested.png": image_bytes(70, "nested"),
            "cats/upper.PNG": image_bytes(80, "upper"),
            "dogs/a.webp": image_bytes(200, "dog-a", fmt="WEBP"),
            "dogs/b.gif": image_bytes(180, "dog-b", fmt="GIF", mode="P"),
        },
        "quarantined": {
            "cats/empty.png": b"",
            "cats/truncated.jpg": jpeg[: len(jpeg) // 2],
            "dogs/text.jpg": b"this is a text file whatever its name says",
            "dogs/bomb.png": _png_claiming(40000, 40000),
            "birds/corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(64)),
            "cats/iphone.HEIC": b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64),
        },
        "duplicate": {"cats/rgb_copy.jpg": jpeg},  # the first path in sorted order is kept,
        "conflict": {"dogs/maybe.png": same, "cats/maybe.png": same},
        "ignored": {
            "cats/.DS_Store": b"\0\0\0\1Bud1",
            "dogs/.ipynb_checkpoints/a-checkpoint.png": image_bytes(1, "ck"),
            "dogs/notes.txt": b"labels checked by hand",
            "__MACOSX/dogs/._a.webp": b"\0\5\26\7\0\2\0\0Mac OS X",
            "cats/@eaDir/rgb.jpg/SYNOPHOTO_THUMB_S.jpg": image_bytes(60, "thumb", fmt="JPEG"),
            "dogs/Thumbs.db": b"\0" * 16,
            "LICENSE": b"CC-BY",
        },
    }
    for files in expected.values():
        for relative, data in files.items():
            write(raw / relative, data)
    os.symlink(outside / "secret.png", raw / "dogs" / "link-out.png")
    os.symlink(outside, raw / "cats" / "folder-out")
    os.symlink(raw / "dogs" / "a.webp", raw / "dogs" / "link-in.webp")
    os.symlink(raw / "dogs" / "gone.png", raw / "dogs" / "dangling.png")
    os.symlink("loop.png", raw / "dogs" / "loop.png")  # a link to itself
    os.symlink(".loop", raw / "cats" / ".loop")
    expected["ignored"]["cats/.loop"] = None
    expected["quarantined"] |= dict.fromkeys(
        ["dogs/link-out.png", "cats/folder-out", "dogs/dangling.png", "dogs/loop.png"]
    )
    expected["duplicate"]["dogs/link-in.webp"] = None
    latin1 = os.fsdecode(b"caf\xe9")  # a Latin-1 name, as an old zip unpacks it
    write(raw / "cats" / f"{latin1}.png", image_bytes(50, "latin1 file"))
    write(raw / latin1 / "deep" / "x.png", image_bytes(40, "latin1 folder"))
    expected["quarantined"] |= dict.fromkeys(["cats/caf\\xe9.png", "caf\\xe9/deep/x.png"])
    return raw, {verdict: set(files) for verdict, files in expected.items()}


def verdicts_of(interim: store.Interim, found: scanning.Scan) -> dict[str, set[str]]:
    return {
        "accepted": {row.path for row in interim.manifest},
        "quarantined": {row.path for row in interim.quarantine},
        "duplicate": {row.path for row in interim.duplicates if row.verdict == "duplicate"},
        "conflict": {row.path for row in interim.duplicates if row.verdict == "conflict"},
        "ignored": set(found.ignored),
    }


def test_every_file_gets_exactly_the_one_verdict_it_deserves(messy):
    raw, expected = messy
    interim = ingest.run(raw, raw.parent / "out", GRAY)
    assert verdicts_of(interim, scanning.scan(raw)) == expected

    reasons = {row.path: row.reason for row in interim.quarantine}
    assert reasons["cats/empty.png"] == "empty file (0 bytes)"
    assert "truncated" in reasons["cats/truncated.jpg"].lower()
    assert "cannot identify image file" in reasons["dogs/text.jpg"]
    assert reasons["cats/iphone.HEIC"] == decoding.HEIF  # says what it is and what to do
    assert reasons["caf\\xe9/deep/x.png"] == scanning.NOT_UTF8
    assert "exceeds limit" in reasons["dogs/bomb.png"]
    assert reasons["dogs/link-out.png"] == "link resolves outside the raw data folder"
    assert reasons["cats/folder-out"] == "link resolves outside the raw data folder"
    assert reasons["dogs/dangling.png"] == "cannot be read: No such file or directory"
    assert reasons["dogs/loop.png"] == "cannot be read: Too many levels of symbolic links"
    details = {row.path: row.detail for row in interim.duplicates}
    assert details["cats/rgb_copy.jpg"] == "same image as cats/rgb.jpg"
    assert details["dogs/link-in.webp"] == "same image as dogs/a.webp"
    assert details["dogs/maybe.png"] == "same image in cats, dogs"

    manifest = {row.path: row for row in interim.manifest}
    assert manifest["cats/Kitten Photos/deep/nested.png"].label == "cats"
    cmyk = manifest["cats/cmyk.jpeg"]
    assert (cmyk.width, cmyk.height, cmyk.format, cmyk.mode) == (40, 30, "JPEG", "CMYK")
    assert cmyk.sha256 == hashlib.sha256((raw / "cats/cmyk.jpeg").read_bytes()).hexdigest()
    assert interim.images.shape == (len(manifest), 32, 32, 1)
    for index, row in enumerate(interim.manifest):  # row i of the array is manifest row i
        np.testing.assert_array_equal(interim.images[index], decode((raw / row.path).read_bytes()))


def test_a_named_pipe_is_quarantined_never_read(tmp_path):  # reading it waits for ever
    raw = make_dataset(tmp_path / "raw", per_class=2)
    os.mkfifo(raw / "mid" / "pipe.png")
    assert "mid/pipe.png" not in {candidate.path for candidate in scanning.scan(raw).candidates}
    interim = ingest.run(raw, raw.parent / "out", GRAY)
    assert {row.path: row.reason for row in interim.quarantine} == {
        "mid/pipe.png": decoding.NOT_REGULAR
    }


def test_a_file_larger_than_the_memory_allowed_is_quarantined(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=2)
    with open(raw / "mid" / "huge.png", "wb") as huge:
        huge.truncate(16 * 2**30)  # sparse: 16 GiB that take no disk

    def allow_4_gib():  # as `ulimit -v` does on a shared machine
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    command = [BIN / "imgpipe", "ingest", "--raw", raw, "--out", tmp_path / "out", "--no-cache"]
    one_thread = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # each thread reserves memory
    done = subprocess.run(command, cwd=REPO, env=one_thread, preexec_fn=allow_4_gib,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    quarantined = (tmp_path / "out" / "quarantine.csv").read_text().splitlines()[1:]
    assert quarantined == [f"mid/huge.png,{decoding.TOO_LARGE}"]


def test_the_report_counts_verdicts_per_class_and_warns_about_an_empty_class(messy, tmp_path):
    raw, expected = messy
    interim = ingest.run(raw, tmp_path / "out", GRAY)
    assert interim.report["files"] == {verdict: len(paths) for verdict, paths in expected.items()}
    assert interim.report["classes"]["birds"] == {
        "accepted": 0, "quarantined": 1, "duplicate": 0, "conflict": 0, "ignored": 0
    }  # fmt: skip
    assert interim.report["classes"]["cats"]["accepted"] == 5
    assert "__MACOSX" not in interim.report["classes"]  # a Mac zip's resource forks
    assert store.read_interim(tmp_path / "out").report == interim.report
    text = summaries.summary(interim, tmp_path / "out")
    assert "warning: class folder 'birds' has no usable image; it is not a class" in text
    assert "2 classes" in text and len(text.splitlines()) < 25


def test_a_folder_with_no_usable_image_is_an_error_that_says_what_is_expected(tmp_path):
    write(tmp_path / "raw" / "cats" / "broken.jpg", b"nope")
    with pytest.raises(PipelineError, match=r"no usable images .* \(1 quarantined\)"):
        ingest.run(tmp_path / "raw", tmp_path / "out", GRAY)
    with pytest.raises(PipelineError, match="is not a folder"):
        ingest.run(tmp_path / "missing", tmp_path / "out", GRAY)
    assert not (tmp_path / "out").exists()


# --- split folders: raw/train/<class>/, raw/val/<class>/, raw/test/<class>/ ------------

CATS_AND_DOGS = {"cats": 60, "dogs": 200}


def test_split_folders_are_splits_and_the_folders_inside_them_the_classes(tmp_path):
    raw = tmp_path / "raw"
    for folder, count in {"train": 3, "Validation": 2, "test": 1}.items():
        make_dataset(raw / folder, per_class=count, classes=CATS_AND_DOGS, seed=folder)
    write(raw / "train" / "notes.txt", b"outside every class folder")
    write(raw / "LICENSE", b"CC-BY")
    interim = ingest.run(raw, tmp_path / "out", GRAY)
    manifest = {row.path: (row.label, row.given_split) for row in interim.manifest}
    assert manifest["Validation/cats/000.png"] == ("cats", "val")
    assert {label for label, _ in manifest.values()} == {"cats", "dogs"}
    assert Counter(split for _, split in manifest.values()) == {"train": 6, "val": 4, "test": 2}
    report = interim.report
    assert list(report["classes"]) == ["cats", "dogs"]
    assert report["classes"]["cats"]["accepted"] == 6 and report["files"]["ignored"] == 2
    assert report["split_folders"] == {"Validation": "val", "test": "test", "train": "train"}
    assert report["warnings"] == []
    assert store.read_interim(tmp_path / "out").manifest == interim.manifest
    text = summaries.summary(interim, tmp_path / "out")
    assert "12 images in 2 classes" in text
    assert "split folders Validation/ (val), test/, train/: the classes are the folders" in text


def test_an_image_in_two_split_folders_is_kept_once_in_the_most_test_ward_and_warned(tmp_path):
    raw = tmp_path / "raw"
    for folder in ("train", "val"):
        make_dataset(raw / folder, per_class=2, classes=CATS_AND_DOGS, seed=folder)
    write(raw / "val" / "cats" / "leak.png", (raw / "train" / "cats" / "000.png").read_bytes())
    interim = ingest.run(raw, tmp_path / "out", GRAY)
    accepted = {row.path for row in interim.manifest}
    assert "val/cats/leak.png" in accepted and "train/cats/000.png" not in accepted
    assert {row.path: row.detail for row in interim.duplicates} == {
        "train/cats/000.png": "same image as val/cats/leak.png, in another split folder: "
        "kept in val only"
    }
    (warning,) = interim.report["warnings"]
    assert warning.startswith(
        "1 images are byte for byte in two split folders (first: train/cats/000.png and "
        "val/cats/leak.png); each is kept in its most test-ward split only"
    )
    assert f"warning: {warning}" in summaries.summary(interim, tmp_path / "out")


def test_a_class_folder_named_like_a_split_among_class_folders_is_a_warning(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=2, classes=CATS_AND_DOGS | {"Test": 128})
    interim = ingest.run(raw, tmp_path / "out", GRAY)
    assert {(row.label, row.given_split) for row in interim.manifest} == {
        ("cats", ""), ("dogs", ""), ("Test", "")
    }  # fmt: skip
    (warning,) = interim.report["warnings"]
    assert warning == (
        "class folder 'Test' is named like a split folder; if it holds a split, put every "
        "class folder under train/, val/ and test/ (raw/train/<class>/...), else rename it"
    )
    assert f"warning: {warning}" in summaries.summary(interim, tmp_path / "out")


HYMENOPTERA = DATASETS / "hymenoptera"


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason=f"{HYMENOPTERA} is not on this machine")
def test_hymenoptera_is_two_classes_in_given_train_and_val_folders():
    found = scanning.scan(HYMENOPTERA)
    assert found.classes == ["ants", "bees"]
    assert found.split_folders == {"train": "train", "val": "val"}
    assert Counter((c.given_split, c.label) for c in found.candidates).keys() == {
        ("train", "ants"), ("train", "bees"), ("val", "ants"), ("val", "bees")
    }  # fmt: skip
    assert len(found.candidates) == 398


# --- determinism and the incremental cache --------------------------------------------


def test_output_is_byte_identical_for_any_worker_count_and_listing_order(
    messy, tmp_path, monkeypatch
):
    raw, _ = messy
    ingest.run(raw, tmp_path / "serial", GRAY, workers=1)
    ingest.run(raw, tmp_path / "parallel", GRAY, workers=2)
    real_scandir = os.scandir

    class Reversed:  # a file system that lists entries in the opposite order
        def __init__(self, path):
            with real_scandir(path) as listing:
                self.entries = list(listing)[::-1]

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(scanning.os, "scandir", Reversed)
    ingest.run(raw, tmp_path / "reversed", GRAY, workers=2)
    serial = snapshot(tmp_path / "serial")
    assert serial == snapshot(tmp_path / "parallel") == snapshot(tmp_path / "reversed")
    assert sorted({name.split("/")[0] for name in serial}) == sorted(store.INTERIM_FILES)


@pytest.mark.parametrize("workers", [1, 2])  # one worker too: never the main process
@pytest.mark.parametrize("death", [signal.SIGSEGV, signal.SIGKILL], ids=["crash", "oom-killer"])
def test_a_file_that_kills_its_decoding_process_is_quarantined_and_the_run_goes_on(
    tmp_path, monkeypatch, death, workers
):
    raw = make_dataset(tmp_path / "raw")
    ingest.run(raw, tmp_path / "without", GRAY, workers=2)
    deadly = image_bytes(128, "deadly")
    write(raw / "mid" / "005b.png", deadly)  # in the middle: other files are in flight
    real = decoding.decode_image

    def dying_on_it(data, ingest_settings):  # the workers are forked: they inherit this
        if data == deadly:
            faulthandler.disable()  # pytest's: else it prints the dying worker's stack
            os.kill(os.getpid(), death)
        return real(data, ingest_settings)

    monkeypatch.setattr(decoding, "decode_image", dying_on_it)
    with deadline(60, "ingest hung after a decoding process died"):
        interim = ingest.run(raw, tmp_path / "with", GRAY, workers=workers)
    (row,) = interim.quarantine
    assert row.path == "mid/005b.png" and f"killed the process (signal {death.name})" in row.reason
    without, with_it = snapshot(tmp_path / "without"), snapshot(tmp_path / "with")
    assert _but_quarantine(with_it) == _but_quarantine(without)  # nothing else changed


def test_a_worker_killed_by_hand_mid_run_ends_with_the_same_bytes(tmp_path, monkeypatch):
    raw = make_dataset(tmp_path / "raw")
    ingest.run(raw, tmp_path / "uninterrupted", GRAY, workers=2)
    killed = tmp_path / "killed"  # the first worker to decode mid/005.png dies, once
    real = decoding.decode_image
    victim = (raw / "mid" / "005.png").read_bytes()

    def killed_once(data, ingest_settings):  # the workers are forked: they inherit this
        if data == victim and not killed.exists():
            killed.touch()
            faulthandler.disable()
            os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9` of that worker would
        return real(data, ingest_settings)

    monkeypatch.setattr(decoding, "decode_image", killed_once)
    with deadline(60, "ingest hung after a worker was killed"):
        ingest.run(raw, tmp_path / "again", GRAY, workers=2)
    assert killed.exists()
    assert snapshot(tmp_path / "again") == snapshot(tmp_path / "uninterrupted")


def test_unchanged_files_are_not_even_read_on_a_rerun(tmp_path, monkeypatch):
    raw = make_dataset(tmp_path / "raw", per_class=4)
    cache = tmp_path / "cache.sqlite"
    ingest.run(raw, tmp_path / "first", GRAY, cache_path=cache)
    log = tmp_path / "read.log"
    real = decoding.decode_file

    def logged(path, *rest):  # decode_file is what reads a file; forked workers inherit this
        with log.open("a") as file:
            file.write(f"{path}\n")
        return real(path, *rest)

    monkeypatch.setattr(pool, "decode_file", logged)
    ingest.run(raw, tmp_path / "again", GRAY, cache_path=cache)
    assert not log.exists()  # the stat signatures vouched for every file
    write(raw / "dark" / "new.png", image_bytes(30, "new"))
    ingest.run(raw, tmp_path / "grown", GRAY, cache_path=cache)
    assert log.read_text().split() == [str((raw / "dark" / "new.png").resolve())]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_slower_to_decode_than_the_limit_is_quarantined_and_the_run_goes_on(
    tmp_path, monkeypatch, workers
):
    raw = make_dataset(tmp_path / "raw")
    quick = settings(decode_seconds=1)
    ingest.run(raw, tmp_path / "without", quick, workers=workers)
    slow = image_bytes(128, "slow")
    write(raw / "mid" / "005b.png", slow)
    real = decoding.decode_image

    def stuck_on_it(data, ingest_settings):  # the workers are forked: they inherit this
        if data == slow:
            time.sleep(600)  # as a crafted progressive JPEG decodes: without end in sight
        return real(data, ingest_settings)

    monkeypatch.setattr(decoding, "decode_image", stuck_on_it)
    started = time.monotonic()
    interim = ingest.run(raw, tmp_path / "with", quick, workers=workers)
    assert time.monotonic() - started < 30
    (row,) = interim.quarantine
    assert row.path == "mid/005b.png"
    assert "longer than ingest.decode_seconds = 1 s" in row.reason
    without, with_it = snapshot(tmp_path / "without"), snapshot(tmp_path / "with")
    assert _but_quarantine(with_it) == _but_quarantine(without)  # nothing else changed


# Decodes slowly in every process: at the top level, spawned workers run it too.
SLOW_DECODING = """
import sys, time
from pathlib import Path
from pipeline.ingest import decode, workers
from pipeline.ingest.cache import DecodeCache, kept_folder
from pipeline.params import load_params

real = decode.decode_image


def slow(data, settings):
    time.sleep(0.2)
    return real(data, settings)


decode.decode_image = slow
if __name__ == "__main__":
    settings = load_params(Path(sys.argv[2])).ingest
    paths = sorted(Path(sys.argv[1]).rglob("*.png"))
    for _ in workers.decode_in_workers(paths, settings, DecodeCache(None, ""), 2, sys.argv[3]):
        print("decoded", flush=True)
"""


def children(pid: int) -> list[int]:
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:  # fields: state, ppid, ...
                found.append(int(stat_file.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes from /proc")
@pytest.mark.parametrize("start_method", ["fork", "spawn"])  # ingest's, predict's
@pytest.mark.parametrize("death", [signal.SIGKILL, signal.SIGTERM])
def test_decoding_workers_end_with_their_parent_however_it_ends(tmp_path, start_method, death):
    raw = make_dataset(tmp_path / "raw", per_class=100)  # 60 s of decoding on two workers
    script = tmp_path / "slow_decoding.py"
    script.write_text(SLOW_DECODING)
    parent = subprocess.Popen(
        [sys.executable, script, raw, REPO / "params.yaml", start_method],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert parent.stdout.readline() == "decoded\n"  # the workers are at work
        workers = children(parent.pid)
        assert len(workers) >= 2
        os.kill(parent.pid, death)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(map(running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in workers if running(pid)] == []  # before: blocked for ever
    finally:
        parent.kill()
        for pid in children(parent.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_an_interrupted_run_stops_decoding_the_files_already_queued(tmp_path, monkeypatch):
    raw = make_dataset(tmp_path / "raw", per_class=134)  # 402 files: chunks of 50
    paths = sorted(raw.rglob("*.png"))
    log = tmp_path / "decoded.log"
    real = decoding.decode_image

    def slow_and_logged(data, ingest_settings):  # the workers are forked: they inherit this
        with open(log, "a") as file:
            file.write("x")
        time.sleep(0.01)  # as a large photo takes: chunks outlast the parent's reaction
        return real(data, ingest_settings)

    monkeypatch.setattr(decoding, "decode_image", slow_and_logged)
    results = pool.decode_in_workers(paths, GRAY, DecodeCache(None, ""), workers=2)
    next(results)
    results.close()  # what a Ctrl-C does to it
    for _ in range(600):  # until the workers have exited
        if not multiprocessing.active_children():
            break
        time.sleep(0.1)
    # The two chunks being decoded end (101 files here); without the stop, the queued
    # ones were decoded too (300).
    assert len(log.read_text()) < 150


@pytest.fixture
def counted_decodes(monkeypatch, tmp_path):
    """Record each decode_image call: the workers are forked, so they inherit the stand-in,
    which appends the hash to a log file (one write, whole, per call)."""
    log = DecodeLog(tmp_path / "decodes.log")
    real = decoding.decode_image

    def counting(data, ingest_settings):
        with log.path.open("a") as file:
            file.write(hashlib.sha256(data).hexdigest() + "\n")
        return real(data, ingest_settings)

    monkeypatch.setattr(decoding, "decode_image", counting)
    return log


class DecodeLog:
    """The hashes decoded so far, compared like a list."""

    def __init__(self, path):
        self.path = path

    def hashes(self) -> list[str]:
        return self.path.read_text().split() if self.path.exists() else []

    def __len__(self) -> int:
        return len(self.hashes())

    def __eq__(self, other) -> bool:
        return self.hashes() == other

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def test_a_rerun_decodes_nothing_and_a_grown_folder_only_new_files(tmp_path, counted_decodes):
    raw = make_dataset(tmp_path / "raw", per_class=10)
    cache = tmp_path / "cache.sqlite"
    ingest.run(raw, tmp_path / "first", GRAY, cache_path=cache)
    assert len(counted_decodes) == 30

    counted_decodes.clear()
    ingest.run(raw, tmp_path / "again", GRAY, cache_path=cache)
    assert counted_decodes == []
    assert snapshot(tmp_path / "again") == snapshot(tmp_path / "first")

    write(raw / "dark" / "new.png", image_bytes(30, "new"))
    os.utime(raw / "mid" / "000.png", ns=(1, 1))  # touched, same content: no decode
    ingest.run(raw, tmp_path / "grown", GRAY, cache_path=cache)
    assert len(counted_decodes) == 1
    ingest.run(raw, tmp_path / "scratch", GRAY, cache_path=None)
    assert snapshot(tmp_path / "grown") == snapshot(tmp_path / "scratch")


def test_the_cache_is_keyed_by_settings_and_safe_to_delete(tmp_path, counted_decodes):
    raw = make_dataset(tmp_path / "raw", per_class=4)
    cache = tmp_path / "cache.sqlite"
    ingest.run(raw, tmp_path / "gray", GRAY, cache_path=cache)
    colour = ingest.run(raw, tmp_path / "rgb", RGB, cache_path=cache)
    assert colour.images.shape[1:] == (24, 40, 3)
    assert len(counted_decodes) == 24  # other settings: nothing reused
    cache.unlink()
    ingest.run(raw, tmp_path / "rebuilt", GRAY, cache_path=cache)
    assert snapshot(tmp_path / "rebuilt") == snapshot(tmp_path / "gray")


def test_switching_settings_back_decodes_nothing(tmp_path, counted_decodes):
    raw = make_dataset(tmp_path / "raw", per_class=4)
    cache = tmp_path / "cache.sqlite"
    ingest.run(raw, tmp_path / "gray", GRAY, cache_path=cache)
    ingest.run(raw, tmp_path / "rgb", RGB, cache_path=cache)
    counted_decodes.clear()
    ingest.run(raw, tmp_path / "gray again", GRAY, cache_path=cache)
    assert counted_decodes == []  # each settings' images are kept, not only the last's
    assert snapshot(tmp_path / "gray again") == snapshot(tmp_path / "gray")


def test_the_kept_shards_are_the_caches_one_copy_of_the_pixels(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=10)
    cache = tmp_path / "cache.sqlite"
    large = settings(color_mode="rgb", image_size=[96, 96])
    interim = ingest.run(raw, tmp_path / "out", large, cache_path=cache)
    pixels = interim.images.shape[0] * math.prod(interim.images.shape[1:])  # 830 KB
    assert cache.stat().st_size < pixels / 4  # not in SQLite too: facts and hashes only
    kept = kept_folder(cache, decoding.settings_key(large))
    assert sum(path.stat().st_size for path in kept.iterdir()) > pixels


def test_a_changed_file_is_decoded_again(tmp_path, counted_decodes):
    raw = make_dataset(tmp_path / "raw", per_class=4)
    cache = tmp_path / "cache.sqlite"
    ingest.run(raw, tmp_path / "before", GRAY, cache_path=cache)
    write(raw / "dark" / "000.png", image_bytes(240, "now bright"))
    counted_decodes.clear()
    after = ingest.run(raw, tmp_path / "after", GRAY, cache_path=cache)
    assert len(counted_decodes) == 1
    changed = [row.path for row in after.manifest].index("dark/000.png")
    assert after.images[changed].mean() > 200


def _but_quarantine(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in files.items() if not name.startswith(("quar", "report"))}


def _linked(first: Path, then: Path) -> set[str]:
    """The names of the shard files in `then` that are `first`'s files, not copies."""
    shards = {path.name for path in first.iterdir()} & {path.name for path in then.iterdir()}
    return {name for name in shards if os.path.samefile(first / name, then / name)}


def test_a_rerun_links_the_kept_shards_of_unchanged_images_instead_of_writing_them(
    tmp_path, counted_decodes
):
    raw = make_dataset(tmp_path / "raw", per_class=6)
    cache = tmp_path / "cache.sqlite"
    ingest.run(raw, tmp_path / "first", GRAY, cache_path=cache)
    kept, first = kept_folder(cache, decoding.settings_key(GRAY)), tmp_path / "first" / "images"
    assert len(_linked(first, kept)) == len(list(first.iterdir())) >= len(CLASS_LEVELS)

    ingest.run(raw, tmp_path / "again", GRAY, cache_path=cache)
    assert _linked(first, tmp_path / "again" / "images") == {p.name for p in first.iterdir()}
    assert snapshot(tmp_path / "again") == snapshot(tmp_path / "first")

    (raw / "mid" / "002.png").unlink()  # rows from the kept shards, one fewer
    write(raw / "dark" / "new.png", image_bytes(30, "new"))
    counted_decodes.clear()
    changed = ingest.run(raw, tmp_path / "changed", GRAY, cache_path=cache)
    assert len(counted_decodes) == 1
    ingest.run(raw, tmp_path / "scratch", GRAY, cache_path=None)
    assert snapshot(tmp_path / "changed") == snapshot(tmp_path / "scratch")
    # Only the shards of the classes that changed were written; the rest are links.
    untouched = {
        f"{shard.name}.npy"
        for shard in store.interim_shards(changed.manifest)
        if changed.manifest[shard.start].label not in ("dark", "mid")
    }
    assert untouched and _linked(first, tmp_path / "changed" / "images") == untouched


@pytest.mark.parametrize("damage", ["all but the header overwritten", "pages overwritten"])
def test_a_damaged_cache_is_set_aside_with_a_warning_and_the_run_goes_on(
    tmp_path, capsys, counted_decodes, damage
):
    raw = make_dataset(tmp_path / "raw", per_class=4)
    cache = tmp_path / "cache.sqlite"
    ingest.run(raw, tmp_path / "scratch", GRAY, cache_path=None)
    ingest.run(raw, tmp_path / "first", GRAY, cache_path=cache)
    # The header, which holds the cache's mark, survives; the schema page may not.
    keep = 100 if damage == "all but the header overwritten" else 4096
    with cache.open("r+b") as file:
        file.seek(keep)
        file.write(b"\xff" * (cache.stat().st_size - keep))
    damaged = cache.read_bytes()

    ingest.run(raw, tmp_path / "out", GRAY, cache_path=cache)
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "scratch")
    assert f"decode cache {cache} is damaged" in capsys.readouterr().err
    assert cache.with_name("cache.sqlite.damaged").read_bytes() == damaged  # kept, not deleted
    counted_decodes.clear()
    ingest.run(raw, tmp_path / "again", GRAY, cache_path=cache)  # the new cache serves
    assert counted_decodes == []
    assert snapshot(tmp_path / "again") == snapshot(tmp_path / "scratch")


def test_setting_a_damaged_cache_aside_never_replaces_a_file_already_there(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=2)
    cache = tmp_path / "cache.sqlite"
    ingest.run(raw, tmp_path / "first", GRAY, cache_path=cache)
    with cache.open("r+b") as file:  # torn pages behind an intact header
        file.seek(100)
        file.write(b"\xff" * (cache.stat().st_size - 100))
    damaged = cache.read_bytes()
    earlier = cache.with_name("cache.sqlite.damaged")
    earlier.write_bytes(b"set aside by an earlier run, or the user's")
    ingest.run(raw, tmp_path / "out", GRAY, cache_path=cache)
    assert earlier.read_bytes() == b"set aside by an earlier run, or the user's"
    assert cache.with_name("cache.sqlite.damaged.1").read_bytes() == damaged


def test_the_kept_shards_never_go_over_a_file_the_cache_did_not_put_there(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=2)
    cache = tmp_path / "cache.sqlite"
    theirs = cache.with_suffix(".images")  # where the cache keeps its shards
    theirs.write_bytes(b"someone else's file")
    ingest.run(raw, tmp_path / "out", GRAY, cache_path=cache)
    assert theirs.read_bytes() == b"someone else's file"


def test_a_cache_that_cannot_be_opened_stops_the_run_with_what_to_do(tmp_path):
    # Busy past the timeout, read-only or full are the same kind of SQLite error; a
    # folder in the cache's place gives it on any machine, even to root.
    raw = make_dataset(tmp_path / "raw", per_class=2)
    in_the_way = tmp_path / "cache.sqlite"
    in_the_way.mkdir()
    with pytest.raises(PipelineError, match="cannot be used .* --no-cache"):
        ingest.run(raw, tmp_path / "out", GRAY, cache_path=in_the_way)
    assert list(in_the_way.iterdir()) == [] and not (tmp_path / "out").exists()


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    with tmpfs(folder, "ro"):
        yield folder


def test_a_cache_on_a_read_only_file_system_is_a_warning_and_the_run_goes_on(
    tmp_path, read_only_folder, capsys
):
    # Before: the outputs were written, then ingest exited 1 naming a .partial file.
    raw = make_dataset(tmp_path / "raw", per_class=4)
    ingest.run(raw, tmp_path / "scratch", GRAY, cache_path=None)
    ingest.run(raw, tmp_path / "out", GRAY, cache_path=read_only_folder / "decoded.sqlite")
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "scratch")
    warning = capsys.readouterr().err
    assert f"the decode cache's folder {read_only_folder} is not writable" in warning
    assert "--no-cache" in warning and "IMGPIPE_DECODE_CACHE" in warning


def test_a_kept_shard_edited_or_deleted_is_not_trusted(tmp_path, counted_decodes):
    raw = make_dataset(tmp_path / "raw", per_class=4)
    cache = tmp_path / "cache.sqlite"
    ingest.run(raw, tmp_path / "first", GRAY, cache_path=cache)
    first = snapshot(tmp_path / "first")  # read now: the kept shards are the same files
    kept = sorted(kept_folder(cache, decoding.settings_key(GRAY)).iterdir())[1]
    with kept.open("r+b") as file:  # edited in place, as `np.load(mmap_mode="r+")` could
        file.seek(-16, os.SEEK_END)
        file.write(bytes(16))
    later = kept.stat().st_mtime_ns + 10**9  # a later edit; timestamps can be coarse
    os.utime(kept, ns=(later, later))
    ingest.run(raw, tmp_path / "edited", GRAY, cache_path=cache)
    assert snapshot(tmp_path / "edited") == first
    kept.unlink()
    counted_decodes.clear()
    ingest.run(raw, tmp_path / "deleted", GRAY, cache_path=cache)
    assert snapshot(tmp_path / "deleted") == first
    # Only the images of the shard that went are decoded again; the other shards serve.
    assert len(counted_decodes) == np.load(tmp_path / "first" / "images" / kept.name).shape[0]


def peak_rss_of_ingest(folder: Path, count: int) -> int:
    """Bytes: the peak RSS of an `imgpipe ingest` of `count` distinct tiny PNGs, each made
    256x256 RGB (192 KiB of pixels), on one worker without the cache."""
    rng = np.random.default_rng(count)
    for index in range(count):
        tiny = Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8))
        write(folder / "raw" / f"c{index % 2}" / f"{index:05d}.png", encode(tiny))
    big = {"image_size": [256, 256], "color_mode": "rgb"}
    params = write_params(folder / "params.yaml", ingest=big, prepare={"views": [big]})
    return peak_rss([BIN / "imgpipe", "--params", params, "ingest", "--raw", folder / "raw",
                     "--out", folder / "interim", "--workers", "1", "--no-cache"])  # fmt: skip


@pytest.mark.slow
def test_ingests_peak_memory_does_not_grow_with_the_images(tmp_path):
    # 2000 images are 375 MiB of pixels: ingest held them all (and stacked them) before
    # its pixels waited in a spill file and went to the shards one shard at a time.
    few = peak_rss_of_ingest(tmp_path / "few", 100)
    many = peak_rss_of_ingest(tmp_path / "many", 2000)
    assert many < few + (64 << 20), (few, many)
