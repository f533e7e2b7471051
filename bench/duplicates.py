"""Prepare's near-duplicate rule on real photos and edited copies of them under new names.

python -m bench.duplicates ../shared/datasets/hymenoptera ../shared/datasets/trashnet
"""

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps


def _jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _noise(image: Image.Image, level: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image, np.int16)
    noisy = pixels + rng.integers(-level, level + 1, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _crop(image: Image.Image, fraction: float = 0.05) -> Image.Image:
    dx, dy = round(image.width * fraction), round(image.height * fraction)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def _bright(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(factor)


def _blur(image: Image.Image, fraction: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(fraction * image.width))


# Each kind of copy: its encoded bytes, from the decoded original and a seed for noise.
KINDS = {
    "half size": lambda im, s: _jpeg(im.resize((im.width // 2, im.height // 2))),
    "JPEG q40": lambda im, s: _jpeg(im, 40),
    "blur 1%": lambda im, s: _jpeg(_blur(im, 0.01)),
    "blur 2%": lambda im, s: _jpeg(_blur(im, 0.02)),
    "noise ±3": lambda im, s: _jpeg(_noise(im, 3, s)),
    "noise ±10": lambda im, s: _jpeg(_noise(im, 10, s)),
    "brightness +15%": lambda im, s: _jpeg(_bright(im, 1.15)),
    "brightness -15%": lambda im, s: _jpeg(_bright(im, 0.85)),
    "crop 5%": lambda im, s: _jpeg(_crop(im)),
    "flip": lambda im, s: _jpeg(ImageOps.mirror(im)),
    "flip + JPEG q40": lambda im, s: _jpeg(ImageOps.mirror(im), 40),
    "crop 5% + brightness +15%": lambda im, s: _jpeg(_bright(_crop(im), 1.15)),
}
