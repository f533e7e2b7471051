import io

import numpy as np
from PIL import Image

from pipeline import figures


def solid(colour, channels=3, size=(32, 24)):
    return np.full((*size, channels), colour, np.uint8)


def drawn(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def centre(image: np.ndarray, colour) -> tuple[float, float, int]:
    """Mean row and column of the pixels of `colour`, and how many there are."""
    ys, xs = np.nonzero(np.abs(image - colour).sum(axis=2) < 30)
    return ys.mean(), xs.mean(), len(ys)


def test_image_grid_puts_each_image_in_its_cell_in_reading_order():
    red, green, blue = (200, 0, 0), (0, 200, 0), (0, 0, 200)
    rows = [[solid(red), solid(green)], [solid(blue)]]  # a short second row
    image = drawn(figures.image_grid(rows, "grid", cell_titles=[["a", "b"], ["c"]]))
    (red_y, red_x, red_n), (green_y, green_x, green_n), (blue_y, blue_x, blue_n) = (
        centre(image, colour) for colour in (red, green, blue)
    )
    assert red_n > 200 and abs(red_n - green_n) < red_n / 10 and abs(red_n - blue_n) < red_n / 10
    assert abs(red_y - green_y) < 2 and green_x - red_x > 20  # one row, left to right
    assert abs(red_x - blue_x) < 2 and blue_y - red_y > 20  # next row, first column
    assert (image[round(blue_y), round(green_x)] > 240).all()  # the missing cell is blank


def test_image_grid_shows_grayscale_values_as_they_are():
    rows = [[solid(100, channels=1), solid(30, channels=1)]]
    image = drawn(figures.image_grid(rows, "gray", row_titles=["one"]))
    assert centre(image, (100, 100, 100))[2] > 200  # not stretched to black or white
    assert centre(image, (30, 30, 30))[2] > 200
