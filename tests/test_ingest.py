"""Ingest on tiny real images: decoding, orientation, quarantine, manifest."""

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from pipeline import ingest, store
from pipeline.errors import PipelineError
from pipeline.params import Ingest
from tests.conftest import image_bytes, make_dataset

GRAY_32 = Ingest(image_size=(32, 32), color_mode="grayscale")
RGB_24x40 = Ingest(image_size=(24, 40), color_mode="rgb")


@pytest.mark.parametrize(
    "fmt, mode", [("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "CMYK")]
)
@pytest.mark.parametrize("settings, shape", [(GRAY_32, (32, 32, 1)), (RGB_24x40, (24, 40, 3))])
def test_decode_image_gives_uint8_at_the_configured_size_and_mode(fmt, mode, settings, shape):
    pixels, source = ingest.decode_image(image_bytes(128, "x", fmt=fmt, mode=mode), settings)
    assert pixels.shape == shape
    assert pixels.dtype == np.uint8
    assert (source.width, source.height, source.format, source.mode) == (40, 30, fmt, mode)
    assert 80 < pixels.mean() < 180  # the noisy mid-grey survived conversion


def test_decode_image_applies_exif_orientation():
    # Stored 40 wide, 20 tall: dark left half, bright right half.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates it 90 degrees clockwise
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", exif=exif)

    pixels, _ = ingest.decode_image(buffer.getvalue(), GRAY_32)
    # Rotated clockwise, the dark left half is on top.
    assert pixels[:16].mean() < 50 and pixels[16:].mean() > 200


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_ingest_quarantines_bad_files_skips_hidden_ones_and_keeps_the_rest(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=2, classes={"cats": 50, "dogs": 200})
    good_jpeg = image_bytes(50, "nested", fmt="JPEG")
    _write(raw / "cats" / "more" / "deeper.jpg", good_jpeg)  # a sub-folder is still the class
    _write(raw / "cats" / "empty.png", b"")
    _write(raw / "dogs" / "notes.png", b"this is text, whatever the name says")
    _write(raw / "dogs" / "truncated.jpg", good_jpeg[: len(good_jpeg) // 2])
    _write(raw / "dogs" / ".DS_Store", b"\0\0\0\1Bud1")
    _write(raw / ".ipynb_checkpoints" / "x.png", image_bytes(1, "hidden"))
    _write(raw / "README.txt", b"not a class")

    interim = ingest.ingest(raw, GRAY_32)

    assert [row.path for row in interim.manifest] == [
        "cats/000.png",
        "cats/001.png",
        "cats/more/deeper.jpg",
        "dogs/000.png",
        "dogs/001.png",
    ]
    assert [row.label for row in interim.manifest] == ["cats"] * 3 + ["dogs"] * 2
    assert interim.images.shape == (5, 32, 32, 1)
    nested = interim.manifest[2]
    assert nested.sha256 == hashlib.sha256(good_jpeg).hexdigest()
    assert (nested.width, nested.height, nested.format, nested.mode) == (40, 30, "JPEG", "RGB")

    reasons = {row.path: row.reason for row in interim.quarantine}
    assert set(reasons) == {"cats/empty.png", "dogs/notes.png", "dogs/truncated.jpg"}
    assert "cannot identify image file" in reasons["dogs/notes.png"]
    assert "truncated" in reasons["dogs/truncated.jpg"].lower()
    assert interim.report == {
        "accepted": 5,
        "quarantined": 3,
        "skipped": 3,  # .DS_Store, the hidden folder's file, README.txt
        "classes": {"cats": 3, "dogs": 2},
    }


def test_ingest_row_i_of_the_array_is_manifest_row_i(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=3, classes={"dark": 20, "light": 240})
    interim = ingest.ingest(raw, GRAY_32)
    for row, pixels in zip(interim.manifest, interim.images, strict=True):
        expected, _ = ingest.decode_image((raw / row.path).read_bytes(), GRAY_32)
        np.testing.assert_array_equal(pixels, expected)


def test_ingest_outputs_round_trip_through_the_store(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=2)
    written = ingest.run(raw, tmp_path / "interim", GRAY_32)
    read = store.read_interim(tmp_path / "interim")
    np.testing.assert_array_equal(read.images, written.images)
    assert read.manifest == written.manifest
    assert read.report == written.report
    # Plain arrays: loadable without pickle, and memory-mapped.
    assert isinstance(read.images, np.memmap)
    assert sorted(p.name for p in (tmp_path / "interim").iterdir()) == sorted(store.INTERIM_FILES)


def test_a_folder_with_no_readable_image_is_an_error_that_says_what_is_expected(tmp_path):
    _write(tmp_path / "raw" / "cats" / "broken.jpg", b"nope")
    with pytest.raises(PipelineError, match=r"no readable images .* \(1 quarantined\)"):
        ingest.ingest(tmp_path / "raw", GRAY_32)
    with pytest.raises(PipelineError, match="is not a folder"):
        ingest.ingest(tmp_path / "missing", GRAY_32)
