"""The array format every stage writes: plain .npy, as NumPy itself writes it."""

import io

import numpy as np
import pytest

from pipeline import store


@pytest.mark.parametrize(
    "array",
    [
        np.arange(3 * store.WRITE_PIECE + 5, dtype=np.uint8).reshape(-1, 1, 1, 1),  # pieces
        np.random.default_rng(0).random((7, 3)).astype(np.float32),
        np.zeros((0, 64, 64, 1), np.uint8),
        np.arange(12, dtype=np.float32).reshape(6, 2)[::2],  # not contiguous
    ],
    ids=["several-pieces", "float32-labels", "empty", "strided"],
)
def test_arrays_are_written_byte_for_byte_as_np_save_writes_them(tmp_path, array):
    store.save_array(tmp_path / "a.npy", array)
    expected = io.BytesIO()
    np.save(expected, np.ascontiguousarray(array), allow_pickle=False)
    assert (tmp_path / "a.npy").read_bytes() == expected.getvalue()
    loaded = np.load(tmp_path / "a.npy", allow_pickle=False)
    assert loaded.dtype == array.dtype and np.array_equal(loaded, array)
