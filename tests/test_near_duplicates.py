"""Near-duplicates as a person sees them: edited copies of generated photos grouped with
their originals, distinct photos never; the search exact, tiles or not."""

import io

import numpy as np
import pytest
from PIL import Image

from bench.duplicates import KINDS
from bench.ingest import photo
from pipeline import near_duplicates, prepare, prepare_report, store
from pipeline.ingest.decode import decode_bytes
from pipeline.params import Ingest
from tests.conftest import default_params, encode
from tests.test_prepare import SETTINGS, in_folders

INGEST = Ingest.model_validate(default_params()["ingest"])  # 64x64 grayscale


def _photos(count: int, first: int = 0) -> list[Image.Image]:
    """Textured photo-like images (bench.ingest's), decoded."""
    return [Image.open(io.BytesIO(photo(seed, (160, 120)))) for seed in range(first, first + count)]


def _smooth(count: int) -> list[Image.Image]:
    """Low-detail images: each a grey level of its own, with a gentle random shading of
    about 2 levels."""
    rng = np.random.default_rng(0)
    images = []
    for level in 40 + 12 * np.arange(count):
        shading = Image.fromarray(rng.uniform(0, 2, (3, 4)).astype(np.float32))
        shading = np.asarray(shading.resize((160, 120), Image.Resampling.BICUBIC))
        pixels = np.rint(level + shading).clip(0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels).convert("RGB"))
    return images


def interim_of(files: dict[str, bytes]) -> store.Interim:
    """What ingest makes of `files` (path -> bytes; the class is the folder)."""
    decoded = [decode_bytes(data, INGEST) for data in files.values()]
    rows = [
        store.ManifestRow(path, path.split("/")[0], d.sha256, d.width, d.height, d.format, d.mode)
        for path, d in zip(files, decoded, strict=True)
    ]
    height, width = INGEST.image_size
    pixels = [np.frombuffer(d.pixels, np.uint8).reshape(height, width, 1) for d in decoded]
    return store.Interim(np.stack(pixels), rows, [], [], {})


def with_copies(originals: list[Image.Image], kind: str) -> dict[str, bytes]:
    """Each original in class a or b, and its copy of `kind` beside it under a new name."""
    files = {}
    for i, original in enumerate(originals):
        folder = "ab"[i % 2]
        files[f"{folder}/{i:03d}.jpg"] = encode(original.convert("RGB"), "JPEG", quality=95)
        files[f"{folder}/{i:03d}-copy.jpg"] = KINDS[kind](original.convert("RGB"), i)
    return files


def assert_each_copy_only_with_its_original(processed: store.Processed) -> None:
    rows = {row.path: row for row in processed.rows}
    for path, row in rows.items():
        if path.endswith("-copy.jpg"):
            original = rows[path.replace("-copy", "")]
            assert row.group == original.group != "", path
            assert row.split == original.split, path
    groups = [row.group for path, row in rows.items() if not path.endswith("-copy.jpg")]
    assert len(set(groups)) == len(groups)  # no two originals together
    near = processed.report["near_duplicates"]
    assert (near["groups"], near["leakage"]) == (len(groups), 0)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_copy_is_grouped_with_its_original_and_no_other(kind):
    # Crops and flips (alone or combined) were never grouped by the pHash alone.
    processed = prepare.prepare(interim_of(with_copies(_photos(16), kind)), SETTINGS)
    assert_each_copy_only_with_its_original(processed)


@pytest.mark.parametrize("kind", ["noise ±3", "JPEG q40"])
def test_copies_of_low_detail_images_are_grouped_with_their_originals(kind):
    # On smooth, nearly uniform images the pHash's bits are noise: copies were far apart.
    processed = prepare.prepare(interim_of(with_copies(_smooth(12), kind)), SETTINGS)
    assert_each_copy_only_with_its_original(processed)


def test_distinct_photos_are_not_grouped():
    # The bound: at most 0.1% of distinct photos grouped, here none of 400 (with 12 smooth).
    files = {f"{'ab'[i % 2]}/{i:03d}.jpg": encode(image.convert("RGB"), "JPEG", quality=90)
             for i, image in enumerate(_photos(400) + _smooth(12))}  # fmt: skip
    near = prepare.prepare(interim_of(files), SETTINGS).report["near_duplicates"]
    assert near["pairs"] == 0


def test_a_flipped_copy_under_another_class_is_a_conflict_naming_both_paths():
    files = {f"a/{i}.jpg": encode(image, "JPEG", quality=95) for i, image in enumerate(_photos(20))}
    files["b/mirrored.jpg"] = KINDS["flip"](Image.open(io.BytesIO(files["a/3.jpg"])), 0)
    processed = prepare.prepare(interim_of(files), SETTINGS)
    near = processed.report["near_duplicates"]
    assert (near["conflicts"], near["conflicting_pairs"]) == (1, [["a/3.jpg", "b/mirrored.jpg"]])
    (warning,) = [w for w in processed.report["warnings"] if "two classes" in w]
    assert warning.startswith(
        "1 near-duplicate pairs are filed under two classes (first: a/3.jpg and "
        "b/mirrored.jpg): the same photo with two labels"
    )
    summary = prepare_report.summary(processed.report, 2, store.Path("out"))
    assert "1 across classes" in summary and f"warning: {warning}" in summary.splitlines()


def test_a_cropped_copy_in_another_given_split_folder_is_leakage():
    files = with_copies(_photos(12), "crop 5%")
    interim = in_folders(interim_of(files), ["train", "val"])  # each copy in the other folder
    near = prepare.prepare(interim, SETTINGS).report["near_duplicates"]
    assert near["leakage"] == near["pairs"] == 12
    assert ["train/a/000.jpg", "val/a/000-copy.jpg"] in near["leaking_pairs"]


# --- the search ----------------------------------------------------------------------


def all_pairs(found: near_duplicates.Descriptors, max_distance: int) -> list[tuple[int, int]]:
    """The reference: each pair's distances hash by hash, both ways, and thumbnail by
    thumbnail."""
    bits = np.unpackbits(found.hashes.view(np.uint8), axis=2).astype(bool)  # (N, V, 256)
    plain, close = bits[:, 0], np.zeros((len(bits),) * 2, bool)
    for variant in range(bits.shape[1]):
        distances = (bits[:, None, variant] != plain[None, :]).sum(axis=2)
        close |= (distances <= max_distance) | (distances <= max_distance).T
    levels = found.thumbnails.astype(float)
    low = levels.std(axis=1) <= near_duplicates.LOW_DETAIL
    close &= ~low[:, None] & ~low[None, :]  # a low-detail image's hash is noise
    rms = np.sqrt(((levels[:, None] - levels[None]) ** 2).mean(axis=2))
    close |= (rms <= near_duplicates.LOW_DETAIL_RMS) & low[:, None] & low[None, :]
    return list(map(tuple, np.argwhere(np.triu(close, 1)).tolist()))


def _descriptors_with_copies() -> near_duplicates.Descriptors:
    """Descriptors of photos, smooth images and copies of both of every kind."""
    originals = _photos(40) + _smooth(8)
    files = {}
    for kind in KINDS:
        files |= {f"{kind}/{path}": data for path, data in with_copies(originals, kind).items()}
    files = dict(list(files.items())[::3])  # 1/3 of them: some copies without originals
    pixels = interim_of(files).images
    return near_duplicates.descriptors(pixels, rows=50)


@pytest.mark.parametrize("block", [16, 64, 1000])
@pytest.mark.parametrize("max_distance", [0, 24, 100])
def test_near_duplicate_pairs_are_exactly_the_reference_in_order(block, max_distance):
    found = _descriptors_with_copies()
    pairs = near_duplicates.near_duplicate_pairs(
        found.hashes, max_distance, block, thumbnails=found.thumbnails
    )
    assert list(map(tuple, pairs.tolist())) == all_pairs(found, max_distance)


@pytest.mark.parametrize("max_distance", [0, 24, 100])
def test_the_pairs_given_those_among_old_images_are_a_full_search(max_distance):
    found = _descriptors_with_copies()
    expected = near_duplicates.near_duplicate_pairs(
        found.hashes, max_distance, 64, found.thumbnails
    )
    new = np.sort(np.random.default_rng(max_distance).choice(len(found.hashes), 30, replace=False))
    known = expected[~np.isin(expected, new).any(axis=1)]
    pairs = near_duplicates.near_duplicate_pairs_given(
        found.hashes, known, new, max_distance, 64, found.thumbnails
    )
    np.testing.assert_array_equal(pairs, expected)


def test_pairs_close_on_the_hashes_first_halves_are_checked_on_the_whole():
    """The search compares the hashes' first halves, then checks the pairs they find: copies
    of one hash with 20 to 28 bits flipped, all in its second half or spread across both,
    pair with it exactly while within max_distance."""
    rng = np.random.default_rng(0)
    original = rng.integers(0, 2**64, 4, dtype=np.uint64)
    copies = [original]
    for flipped in range(20, 29):
        for lowest in (128, 64):  # the second half only; both halves
            bits = np.zeros(256, bool)
            bits[rng.choice(np.arange(lowest, 256), flipped, replace=False)] = True
            copies.append(original ^ np.packbits(bits).view(">u8").astype(np.uint64))
    hashes = np.stack(copies)[:, None]  # (N, 1, 4): no transformed hash
    distances = np.bitwise_count(hashes[:, None, 0] ^ hashes[None, :, 0]).sum(axis=2)
    expected = np.argwhere(np.triu(distances <= 24, 1))
    assert {int(distances[0, j]) for i, j in expected if i == 0} == set(range(20, 25))
    np.testing.assert_array_equal(near_duplicates.near_duplicate_pairs(hashes, 24), expected)
