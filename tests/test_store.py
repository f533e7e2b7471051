"""The on-disk format: arrays exactly as NumPy writes them, and damaged files named."""

import io

import numpy as np
import pytest

from pipeline import files, store
from pipeline.errors import PipelineError


@pytest.mark.parametrize(
    "array",
    [
        np.arange(3 * files.WRITE_PIECE + 5, dtype=np.uint8).reshape(-1, 1, 1, 1),  # pieces
        np.random.default_rng(0).random((7, 3)).astype(np.float32),
        np.zeros((0, 64, 64, 1), np.uint8),
        np.arange(12, dtype=np.float32).reshape(6, 2)[::2],  # not contiguous
    ],
    ids=["several-pieces", "float32-labels", "empty", "strided"],
)
def test_arrays_are_written_byte_for_byte_as_np_save_writes_them(tmp_path, array):
    files.save_array(tmp_path / "a.npy", array)
    expected = io.BytesIO()
    np.save(expected, np.ascontiguousarray(array), allow_pickle=False)
    assert (tmp_path / "a.npy").read_bytes() == expected.getvalue()
    loaded = np.load(tmp_path / "a.npy", allow_pickle=False)
    assert loaded.dtype == array.dtype and np.array_equal(loaded, array)


def test_an_array_written_and_read_in_blocks_is_np_saves_and_the_same_rows(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (10, 5, 3, 2), dtype=np.uint8)
    with files.array_writer(tmp_path / "a.npy", array.shape, array.dtype) as write:
        for start in (0, 4, 8):  # blocks of 4, 4 and 2 rows
            write(array[start : start + 4])
    expected = io.BytesIO()
    np.save(expected, array, allow_pickle=False)
    assert (tmp_path / "a.npy").read_bytes() == expected.getvalue()
    mapped = store.load_array(tmp_path / "a.npy")
    for start, stop in [(0, 10), (3, 7), (8, 12), (10, 12)]:  # past the end: what is there
        rows = files.read_rows(mapped, start, stop)
        assert not np.shares_memory(rows, mapped)  # read, not a view of the map
        np.testing.assert_array_equal(rows, array[start:stop])


def test_an_array_given_fewer_rows_than_its_shape_is_never_put_in_place(tmp_path):
    with (
        pytest.raises(ValueError, match="a.npy: 10 bytes written, not 20"),
        files.array_writer(tmp_path / "a.npy", (4, 5), np.uint8) as write,
    ):
        write(np.zeros((2, 5), np.uint8))
    assert list(tmp_path.iterdir()) == []


def _cut_array(folder):
    files.save_array(folder / "images.npy", np.zeros((4, 8, 8, 1), np.uint8))
    data = (folder / "images.npy").read_bytes()
    (folder / "images.npy").write_bytes(data[: len(data) // 2])


def _rows_without_columns(folder):
    (folder / "manifest.csv").write_text("path,label\ndark/1.png,dark\n")


def _cut_json(folder):
    (folder / "report.json").write_text('{"files": ')


@pytest.mark.parametrize(
    ("damage", "name"),
    [
        (_cut_array, "images.npy"),
        (_rows_without_columns, "manifest.csv"),
        (_cut_json, "report.json"),
    ],
)
def test_a_damaged_output_is_named_with_how_to_mend_it(tmp_path, damage, name):
    interim = store.Interim(np.zeros((0, 8, 8, 1), np.uint8), [], [], [], {"files": {}})
    store.write_interim(tmp_path, interim)
    damage(tmp_path)
    with pytest.raises(PipelineError) as raised:
        store.read_interim(tmp_path)
    assert str(raised.value).startswith(f"{tmp_path / name} is damaged or not the file expected (")
    assert str(raised.value).endswith(
        "restore it (dvc checkout), run the stage that writes it again (dvc repro), "
        "or name the right file"
    )
