"""Decoding: one image file -> (H, W, C) uint8 pixels at the configured size, or the
reason it is not a usable image.

`decode_image` is the pure core (bytes in, pixels out) and the only code that
turns an image file into model input; ingest and predict both reach it through
`decode_file`, which reads the file (never a named pipe, socket or device) and
asks the decode cache first, and `decode_bytes`, which turns any failure into a
reason instead of an exception.
"""

import hashlib
import io
import os
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import one_line
from pipeline.params import PIL_MODES, Ingest

if TYPE_CHECKING:  # the cache stores Decoded results: it imports this module
    from pipeline.ingest.cache import DecodeCache
    from pipeline.ingest.pixels import Located

# Bumped whenever decode_bytes would give other pixels or another reason for the same
# file and settings: the decode cache keeps both.
DECODER_VERSION = 6

# EXIF orientation -> the transpose that shows the image as the camera saw it.
ORIENTATION_TAG = 0x0112

TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

SIDEWAYS = frozenset({5, 6, 7, 8})  # orientations that swap width and height

TOO_LARGE = "cannot be read: larger than the memory this process may use"

NOT_REGULAR = "not a regular file (a named pipe, socket or device), which reading would block on"

# The ftyp brands of HEIC/HEIF files (ISO base media), which Pillow cannot read; it can
# read AVIF, whose brand is avif.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})

HEIF = "HEIC/HEIF image (an iPhone's default), which Pillow cannot read: convert it to JPEG"

ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

WHITE = (255, 255, 255, 255)  # what transparent pixels become


class Decoded(NamedTuple):
    """What decoding one file gave: pixels and source facts, or the reason it failed."""

    sha256: str
    # (H, W, C) uint8 in C order: bytes, or where they wait (pixels.Located); None when
    # rejected
    pixels: "bytes | Located | None"
    width: int = 0  # as stored in the file, before orientation and resizing
    height: int = 0
    format: str = ""
    mode: str = ""
    reason: str | None = None  # why the file was quarantined


class Rejected(Exception):
    """A file Pillow can open but that must not be used; the message is the reason."""


def decode_image(data: bytes, settings: Ingest) -> tuple[np.ndarray, tuple[int, int, str, str]]:
    """Decode one image file's bytes into (H, W, C) uint8 pixels at the configured size.

    Also returns (width, height, format, mode) as stored in the file (a TIFF's size as
    Pillow reports it: already oriented). Raises
    `Rejected`, or whatever Pillow raises, for a file that is not a usable image.
    """
    try:
        return _decode(data, settings)
    except ValueError as error:
        # Pillow caps the text it decompresses (PngImagePlugin.MAX_TEXT_CHUNK and
        # MAX_TEXT_MEMORY) and refuses the whole file above the cap; text is not pixels.
        if "MAX_TEXT" not in str(error) or (stripped := without_png_text(data)) == data:
            raise
        return _decode(stripped, settings)


def _decode(data: bytes, settings: Ingest) -> tuple[np.ndarray, tuple[int, int, str, str]]:
    height, width = settings.image_size
    # Pillow refuses above twice this limit when opening; the check below refuses above it.
    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    with warnings.catch_warnings():
        # Pillow warns about odd but readable files (palette transparency, bad EXIF);
        # they are not failures, and under `python -W error` they must not become ones.
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as image:
            facts = (image.width, image.height, image.format or "", image.mode)
            if image.width * image.height > settings.max_pixels:
                raise Rejected(
                    f"decompression bomb: {image.width}x{image.height} pixels is over "
                    f"ingest.max_pixels = {settings.max_pixels}"
                )
            if image.format in ("JPEG", "MPO"):  # MPO: a camera's JPEG with extra pictures
                # DCT scaling: decode at 1/2, 1/4 or 1/8 size while still at least the target.
                sideways = _orientation(image) in SIDEWAYS
                wanted = (height, width) if sideways else (width, height)
                image.draft("L" if settings.color_mode == "grayscale" else None, wanted)
            image.load()  # Pillow applies a TIFF's orientation itself here, and drops the tag
            orientation = _orientation(image)
            if orientation in TRANSPOSES:
                image = image.transpose(TRANSPOSES[orientation])
            image = _convert(image, PIL_MODES[settings.color_mode])
            image = _fit(image, (width, height), settings)
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]  # (H, W) -> (H, W, 1)
    return pixels, facts


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # A broken EXIF block must not cost an otherwise readable image.
        return 1


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if image.mode == "I" or image.mode.startswith("I;16") or image.mode == "F":
        # convert() would clip every sample above 255 to white and show 0-1 floats black.
        image = Image.fromarray(to_8_bits(np.asarray(image), image.mode))
    if image.mode == "LAB":  # Pillow converts LAB to RGB only
        image = image.convert("RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba)
    return image.convert(mode)


def to_8_bits(samples: np.ndarray, mode: str) -> np.ndarray:
    """Integer or float samples -> uint8, by a rule that depends only on the file.

    Integers (16-bit PNG, TIFF and PGM; Pillow opens a PGM as 32-bit "I") are
    shifted down from the fewest bits, 8, 10, 12, 14 or 16, that hold the brightest
    sample, so a 12-bit camera's 0-4095 in a 16-bit file fills 0-255. Floats
    (mode F) in 0-1 are scaled by 255; in 0-255 they are rounded. Anything else has
    no known scale and is rejected, never clipped.
    """
    if not samples.size:
        return samples.astype(np.uint8)
    low, high = samples.min(), samples.max()
    if mode == "F":
        if not np.isfinite(samples).all() or low < 0 or high > 255:
            raise Rejected(
                f"32-bit float samples from {low:g} to {high:g}: only 0-1 and 0-255 have a "
                "known scale to 8 bits; convert it to an 8-bit image"
            )
        scale = 255 if high <= 1 else 1
        return np.rint(samples * scale).astype(np.uint8)
    if low < 0 or high > 65535:
        raise Rejected(
            f"32-bit integer samples from {low} to {high}: only 0-65535 has a known scale "
            "to 8 bits; convert it to an 8-bit or 16-bit image"
        )
    bits = max(8, int(high).bit_length() + int(high).bit_length() % 2)  # 8, 10, ..., 16
    return (samples.astype(np.uint32) >> (bits - 8)).astype(np.uint8)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def without_png_text(data: bytes) -> bytes:
    """A PNG file's bytes without its text chunks (comments, metadata; never pixels), or
    `data` unchanged when it is not a PNG whose chunks can be walked."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    kept, position = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        end = position + 12 + length  # length, type, data, CRC
        if data[position + 4 : position + 8] not in PNG_TEXT_CHUNKS:
            kept.append(data[position:end])
        position = end
    return b"".join(kept)


def _fit(image: Image.Image, size: tuple[int, int], settings: Ingest) -> Image.Image:
    resample = Image.Resampling[settings.resample.upper()]
    if settings.resize == "crop":  # fill the target, cutting the longer side
        return ImageOps.fit(image, size, resample)
    if settings.resize == "pad":  # keep all of the image, black bars on the shorter side
        return ImageOps.pad(image, size, resample, color=0)
    return image.resize(size, resample)


def decode_bytes(data: bytes, settings: Ingest, sha256: str | None = None) -> Decoded:
    """Decode one file's bytes (hashed unless `sha256` is given); a failure is the reason."""
    sha256 = sha256 or hashlib.sha256(data).hexdigest()
    if not data:
        return Decoded(sha256, None, reason="empty file (0 bytes)")
    try:
        pixels, facts = decode_image(data, settings)
    except Rejected as error:
        return Decoded(sha256, None, reason=str(error))
    except UnidentifiedImageError as error:
        heif = data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS
        return Decoded(sha256, None, reason=HEIF if heif else one_line(error))
    except Exception as error:  # Any decoder failure is a verdict on this file, not the run.
        return Decoded(sha256, None, reason=one_line(error))
    return Decoded(sha256, pixels.tobytes(), *facts)


def decode_file(path: Path, settings: Ingest, cache: "DecodeCache") -> Decoded:
    """Read one file and decode it, unless the cache already holds that content (as
    DecodeCache.cached gives it)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # opening a named pipe waits for a writer
            return Decoded("", None, reason=NOT_REGULAR)
        data = path.read_bytes()
    except OSError as error:
        return Decoded("", None, reason=unreadable(error))
    except MemoryError:  # e.g. under `ulimit -v`; without a limit the OOM killer acts
        return Decoded("", None, reason=TOO_LARGE)
    sha256 = hashlib.sha256(data).hexdigest()
    hit = cache.cached(sha256)
    return hit if hit is not None else decode_bytes(data, settings, sha256)


def unreadable(error: OSError) -> str:
    return f"cannot be read: {error.strerror or error}"


def settings_key(settings: Ingest) -> str:
    """Everything that decides decode_image's output for given bytes (not the time limit:
    a file over it is never cached)."""
    settings_json = settings.model_dump_json(exclude={"decode_seconds"})
    return f"decoder={DECODER_VERSION} pillow={PIL.__version__} {settings_json}"
