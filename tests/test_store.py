"""The on-disk format: arrays exactly as NumPy writes them, and damaged files named."""

import hashlib
import io

import numpy as np
import pytest

from pipeline import files, shards, store
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


def test_an_array_written_in_blocks_is_np_saves(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (10, 5, 3, 2), dtype=np.uint8)
    with files.array_writer(tmp_path / "a.npy", array.shape, array.dtype) as write:
        for start in (0, 4, 8):  # blocks of 4, 4 and 2 rows
            write(array[start : start + 4])
    expected = io.BytesIO()
    np.save(expected, array, allow_pickle=False)
    assert (tmp_path / "a.npy").read_bytes() == expected.getvalue()


def test_sharded_rows_read_back_as_the_array_they_were_cut_from(tmp_path):
    rows = 2000  # shards of 1 to about a hundred rows, and shape digits that differ
    array = np.random.default_rng(0).integers(0, 256, (rows, 5, 3, 2), dtype=np.uint8)
    hashes = [f"{i * 2654435761 % 2**64:016x}" + "0" * 48 for i in range(rows)]
    cut = shards.cut(hashes, ["a"] * 700 + ["b"] * 1300)
    assert len(cut) > 40 and cut[0].start == 0 and cut[-1].stop == rows
    shards.write_arrays(tmp_path, cut, lambda start, stop: array[start:stop])
    read = shards.Rows(tmp_path, cut)
    assert read.shape == array.shape and read.dtype == array.dtype
    np.testing.assert_array_equal(np.asarray(read), array)
    np.testing.assert_array_equal(read[699], array[699])
    for start, stop in [(0, 10), (3, 700), (695, 705), (1990, 2010)]:  # past the end: what is
        np.testing.assert_array_equal(read[start:stop], array[start:stop])
    chosen = np.sort(np.random.default_rng(1).choice(rows, 300, replace=False))
    picked = shards.Rows(tmp_path, cut, chosen)  # a split's rows
    np.testing.assert_array_equal(picked[np.arange(0, 300, 7)], array[chosen[::7]])
    blocks = list(files.read_blocks(picked, 64))
    assert [len(block) for block in blocks] == [64] * 4 + [44]
    np.testing.assert_array_equal(np.concatenate(blocks), array[chosen])


def test_shards_are_cut_where_the_hash_says_and_where_the_folder_changes():
    hashes = [f"{i:016x}" + "f" * 48 for i in range(1, 200)]
    folders = ["a"] * 50 + ["b"] * 149
    cut = shards.cut(hashes, folders)
    ends = [shard.stop - 1 for shard in cut]
    multiples = [i - 1 for i in range(1, 200) if i % shards.SHARD_ROWS == 0]
    assert ends == sorted({*multiples, 49, 198})
    assert [shard.name for shard in cut] == [hashes[shard.start][:16] for shard in cut]


def test_an_array_given_fewer_rows_than_its_shape_is_never_put_in_place(tmp_path):
    with (
        pytest.raises(ValueError, match="a.npy: 10 bytes written, not 20"),
        files.array_writer(tmp_path / "a.npy", (4, 5), np.uint8) as write,
    ):
        write(np.zeros((2, 5), np.uint8))
    assert list(tmp_path.iterdir()) == []


def _interim(count: int) -> store.Interim:
    manifest = [
        store.ManifestRow(
            f"dark/{i}.png", "dark", hashlib.sha256(bytes([i])).hexdigest(), 8, 8, "PNG", "L"
        )
        for i in range(count)
    ]
    images = np.zeros((count, 8, 8, 1), np.uint8)
    return store.Interim(images, manifest, [], [], {"files": {}})


def _cut_array(folder):
    shard = next((folder / "images").iterdir())
    shard.write_bytes(shard.read_bytes()[:-10])
    return shard


def _rows_without_columns(folder):
    shard = next((folder / "manifest").iterdir())
    shard.write_text("path,label\ndark/1.png,dark\n")
    return shard


def _cut_index(folder):
    (folder / "shards.csv").write_text("name\n")
    return folder / "shards.csv"


def _cut_json(folder):
    (folder / "report.json").write_text('{"files": ')
    return folder / "report.json"


@pytest.mark.parametrize("damage", [_cut_array, _rows_without_columns, _cut_index, _cut_json])
def test_a_damaged_output_is_named_with_how_to_mend_it(tmp_path, damage):
    store.write_interim(tmp_path, _interim(40))
    damaged = damage(tmp_path)
    with pytest.raises(PipelineError) as raised:
        store.read_interim(tmp_path)
    assert str(raised.value).startswith(f"{damaged} is damaged or not the file expected (")
    assert str(raised.value).endswith(
        "restore it (dvc checkout), run the stage that writes it again (dvc repro), "
        "or name the right file"
    )


def test_sharded_rows_take_an_index_per_axis_as_an_array_does(tmp_path):
    array = np.arange(3 * 4 * 5 * 2, dtype=np.uint8).reshape(3, 4, 5, 2)
    cut = [shards.Shard("a", 0, 2), shards.Shard("b", 2, 3)]
    shards.write_arrays(tmp_path, cut, lambda start, stop: array[start:stop])
    read = shards.Rows(tmp_path, cut)
    for key in [(1, slice(None), 2), (slice(1, 3), 0), (np.array([0, 2]), slice(1, 3), 1)]:
        np.testing.assert_array_equal(read[key], array[key])


def test_a_shard_of_pickled_objects_is_refused_unread(tmp_path):
    np.save(tmp_path / "a.npy", np.array([{"run": "code"}], dtype=object), allow_pickle=True)
    with pytest.raises(shards.Damaged, match="holds Python objects"):
        shards.Rows(tmp_path, [shards.Shard("a", 0, 1)])
