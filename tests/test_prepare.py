"""Prepare: a split that never reshuffles or leaks, labels, views, the report and plots."""

import dataclasses
import hashlib
import io
from itertools import cycle

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline import ingest, near_duplicates, prepare, prepare_report, store, tables
from pipeline.cli import cli
from pipeline.errors import PipelineError
from pipeline.params import Ingest, Prepare
from tests.conftest import (
    BIN,
    DATASETS,
    default_params,
    encode,
    peak_rss,
    photo_like,
    snapshot,
    write_params,
)


def settings(**overrides) -> Prepare:
    return Prepare.model_validate(default_params()["prepare"] | overrides)


SETTINGS = settings(val_fraction=0.2, test_fraction=0.2, split_salt="s")
RGB_INGEST = Ingest.model_validate(default_params()["ingest"] | {"color_mode": "rgb"})


def _hash(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def noise_interim(
    count: int, classes=("b", "a", "c"), seed: int = 0, shape=(64, 64, 1)
) -> store.Interim:
    """Distinct random images of `shape`: no two are near-duplicates."""
    rng = np.random.default_rng(seed)
    rows = [
        store.ManifestRow(f"{classes[i % len(classes)]}/{i}.png", classes[i % len(classes)],
                          _hash(i), 64, 64, "PNG", "L")
        for i in range(count)
    ]  # fmt: skip
    images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
    return store.Interim(images, rows, [], [], {})


def ingested(photos) -> store.Interim:
    """Ingest of `photos` into photos.parent / "interim"."""
    return ingest.run(photos, photos.parent / "interim", RGB_INGEST)


def run_in(folder, settings=SETTINGS, chunk_bytes=prepare.CHUNK_BYTES) -> store.Processed:
    """prepare.run of folder/interim into folder/processed and folder/report."""
    out, report = folder / "processed", folder / "report"
    return prepare.run(folder / "interim", out, report, settings, chunk_bytes)


# --- the split ---------------------------------------------------------------------


def test_split_fractions_match_the_settings():
    counts = {"train": 0, "val": 0, "test": 0}
    for i in range(20_000):
        counts[prepare.natural_split(_hash(i), SETTINGS)] += 1
    assert abs(counts["test"] / 20_000 - 0.2) < 0.01
    assert abs(counts["val"] / 20_000 - 0.2) < 0.01


def test_the_salt_decides_the_split():
    other = settings(val_fraction=0.2, test_fraction=0.2, split_salt="other")
    splits = [prepare.natural_split(_hash(i), s) for s in (SETTINGS, other) for i in range(200)]
    assert splits[:200] != splits[200:]


def test_growing_the_data_by_ten_percent_never_moves_an_old_image():
    before = prepare.prepare(noise_interim(300), SETTINGS)
    after = prepare.prepare(noise_interim(330), SETTINGS)
    old = {row.path: row.split for row in before.rows}
    new = {row.path: row.split for row in after.rows}
    assert {path: new[path] for path in old} == old
    assert after.report["near_duplicates"]["moved"] == 0


def test_groups_are_transitive_and_take_the_most_test_ward_split():
    pairs = np.array([[0, 3], [3, 5], [1, 2]])
    groups = near_duplicates.group_of(6, pairs)
    assert groups.tolist() == [0, 1, 1, 0, 4, 0]
    shas = [_hash(i) for i in range(6)]
    natural = [prepare.natural_split(sha, SETTINGS) for sha in shas]
    splits, reported_natural = prepare.assign_splits(shas, groups, SETTINGS)
    assert reported_natural == natural
    order = prepare.SPLIT_ORDER
    for members in ([0, 3, 5], [1, 2], [4]):
        highest = max((natural[i] for i in members), key=order.get)
        assert {splits[i] for i in members} == {highest}


def all_close_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int]]:
    """The reference: every pair's distance bit by bit, i < j, by i then j, of (N, 1, 4)
    hashes (one variant: the image as it is)."""
    bits = np.unpackbits(hashes[:, 0].view(np.uint8), axis=1).astype(bool)  # (N, 256)
    distances = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    return list(map(tuple, np.argwhere(np.triu(distances <= max_distance, 1)).tolist()))


def planted_hashes(count: int, distances: list[int], seed: int = 0) -> np.ndarray:
    """(N, 1, 4): random 256-bit hashes, then for each distance a copy of 10 of them with
    exactly that many bits flipped, all shuffled so that copies land before and after
    their originals."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (count, 256), dtype=np.uint8)
    copies = []
    for distance in distances:
        for original in rng.choice(count, 10, replace=False):
            copy = bits[original].copy()
            copy[rng.choice(256, distance, replace=False)] ^= 1
            copies.append(copy)
    bits = rng.permutation(np.concatenate([bits, copies]))
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64)[:, None]


@pytest.mark.parametrize("max_distance", [-1, 0, 1, 8, 24, 110, 256])
def test_near_duplicate_pairs_are_exactly_the_close_pairs_in_order(max_distance):
    # Copies around each threshold; near 110 bits, about 1% of random pairs are close too.
    hashes = planted_hashes(400, [0, 1, 2, 7, 8, 9, 23, 24, 25])
    pairs = near_duplicates.near_duplicate_pairs(hashes, max_distance, block=64)  # 8 x 8 tiles
    assert pairs.dtype == np.int64
    assert list(map(tuple, pairs.tolist())) == all_close_pairs(hashes, max_distance)


@pytest.mark.parametrize("block", [1, 4, 7, 64])
def test_near_duplicate_pairs_are_every_close_pair_once_whatever_the_block(block):
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, (30, 1, 4), dtype=np.uint64)
    hashes[10:20] = hashes[:10]
    hashes[10:20, 0, 0] ^= np.uint64(0b111)  # 3 bits from an earlier image
    hashes[25] = hashes[5]  # close to 5 and 15, across blocks
    expected = all_close_pairs(hashes, 3)
    pairs = near_duplicates.near_duplicate_pairs(hashes, max_distance=3, block=block)
    assert list(map(tuple, pairs.tolist())) == expected
    assert len(expected) == 10 + 2  # each edited copy with its original; 25 with 5 and 15


def _resized_reencoded(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.resize((image.width // 2, image.height // 2)).save(buffer, "JPEG", quality=60)
    return Image.open(buffer)


def test_near_duplicate_pairs_are_exactly_the_close_pairs_of_real_perceptual_hashes():
    originals = [photo_like(i) for i in range(200)]
    images = originals + [_resized_reencoded(image) for image in originals[::4]]
    pixels = np.stack([np.asarray(image.convert("RGB").resize((64, 64))) for image in images])
    hashes = near_duplicates.descriptors(pixels, rows=64).hashes[:, :1]
    for max_distance in (0, 16, 24, 96):
        pairs = near_duplicates.near_duplicate_pairs(hashes, max_distance, block=32)
        assert list(map(tuple, pairs.tolist())) == all_close_pairs(hashes, max_distance)
    assert len(pairs) > 50 + 25  # the 50 copies and more: these hashes are not random


@pytest.mark.skipif(not (DATASETS / "trashnet").is_dir(), reason="no shared trashnet data set")
def test_near_duplicate_pairs_are_exactly_the_close_pairs_of_trashnet_photos():
    files = sorted((DATASETS / "trashnet").glob("*/*.jpg"))[::5]  # about 500 of 2,527
    pixels = []
    for file in files:
        with Image.open(file) as image:
            image.draft("RGB", (64, 64))
            pixels.append(np.asarray(image.convert("RGB").resize((64, 64))))
    hashes = near_duplicates.descriptors(np.stack(pixels), rows=128).hashes[:, :1]
    for max_distance in (24, 80, 110):
        pairs = near_duplicates.near_duplicate_pairs(hashes, max_distance, block=128)
        assert list(map(tuple, pairs.tolist())) == all_close_pairs(hashes, max_distance)
    assert len(pairs) > 1000  # these photos have no copies: only far thresholds pair them


def test_descriptors_do_not_depend_on_how_many_images_a_block_holds():
    images = noise_interim(20).images
    whole = near_duplicates.descriptors(images, rows=20)
    for rows in (1, 7):
        for part, expected in zip(near_duplicates.descriptors(images, rows), whole, strict=True):
            np.testing.assert_array_equal(part, expected)


def test_the_leakage_metric_counts_pairs_split_apart():
    pairs = np.array([[0, 1], [1, 2]])
    assert len(prepare.leaks(pairs, ["train", "train", "train"])) == 0
    assert prepare.leaks(pairs, ["train", "test", "train"]).tolist() == [[0, 1], [1, 2]]


@pytest.fixture
def photos(tmp_path):
    """A raw folder of 40 distinct structured images in two classes."""
    raw = tmp_path / "raw"
    for i in range(40):
        folder = raw / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:02d}.png").write_bytes(encode(photo_like(i)))
    return raw


def _copy_landing_in(source: bytes, split: str, settings: Prepare) -> bytes:
    """A resized, re-encoded copy of `source` whose own hash would put it in `split`."""
    image = Image.open(io.BytesIO(source))
    for quality in range(60, 96):
        copy = encode(image.resize((77, 58)).convert("RGB"), "JPEG", quality=quality)
        if prepare.natural_split(hashlib.sha256(copy).hexdigest(), settings) == split:
            return copy
    raise AssertionError(f"no copy lands in {split}")


@pytest.mark.parametrize("original_split, copy_split", [("test", "train"), ("train", "test")])
def test_a_resized_reencoded_copy_always_shares_its_originals_split(
    photos, original_split, copy_split
):
    first = prepare.prepare(ingested(photos), SETTINGS)
    assert first.report["near_duplicates"]["pairs"] == 0
    original = next(row for row in first.rows if row.split == original_split)
    copy = _copy_landing_in((photos / original.path).read_bytes(), copy_split, SETTINGS)
    (photos / "cats" / "zz-copy.jpg").write_bytes(copy)

    grown = prepare.prepare(ingested(photos), SETTINGS)
    rows = {row.path: row for row in grown.rows}
    together = "test"  # the more test-ward of the two
    assert rows[original.path].split == rows["cats/zz-copy.jpg"].split == together
    moved = {path for path, row in rows.items() if row.moved_from}
    assert moved == ({"cats/zz-copy.jpg"} if original_split == "test" else {original.path})
    assert rows[original.path].group == rows["cats/zz-copy.jpg"].group != ""
    near = grown.report["near_duplicates"]
    assert (near["pairs"], near["groups"], near["moved"], near["leakage"]) == (1, 1, 1, 0)
    # Nothing else moved.
    before = {row.path: row.split for row in first.rows if row.path != original.path}
    assert all(rows[path].split == split for path, split in before.items())


def test_near_duplicate_grouping_can_be_turned_off(photos):
    interim = ingested(photos)
    same = store.ManifestRow("dogs/same.png", "dogs", _hash(1), 1, 1, "PNG", "RGB")
    images = np.concatenate([interim.images, interim.images[:1]])
    interim = store.Interim(images, [*interim.manifest, same], [], [], {})
    assert prepare.prepare(interim, SETTINGS).report["near_duplicates"]["pairs"] == 1
    off = prepare.prepare(
        interim, settings(**SETTINGS.model_dump() | {"near_duplicate_distance": -1})
    )
    assert off.report["near_duplicates"]["pairs"] == 0


# --- split folders: raw/train/, raw/val/, raw/test/ ----------------------------------


def in_folders(interim: store.Interim, folders: list[str]) -> store.Interim:
    """`interim` with image i moved into the split folder folders[i % len(folders)]."""
    rows = [
        dataclasses.replace(row, path=f"{folder}/{row.path}", given_split=folder)
        for row, folder in zip(interim.manifest, cycle(folders), strict=False)  # cycle: endless
    ]
    return store.Interim(interim.images, rows, [], [], {})


def run_prepare(folder, params):
    """`imgpipe prepare` of folder/interim into folder/processed and folder/report."""
    arguments = ["prepare", "--interim", folder / "interim", "--out", folder / "processed",
                 "--report-dir", folder / "report"]  # fmt: skip
    return CliRunner().invoke(cli, ["--params", params, *map(str, arguments)])


def test_given_split_folders_are_kept_exactly():
    interim = in_folders(noise_interim(120), ["train", "val", "test"])
    processed = prepare.prepare(interim, SETTINGS)  # prepare.split: auto
    assert [row.split for row in processed.rows] == [row.given_split for row in interim.manifest]
    assert processed.report["split"] == {"mode": "folders", "given": ["train", "val", "test"]}


def test_a_split_no_folder_gives_is_drawn_from_the_train_folder_alone():
    interim = in_folders(noise_interim(600), ["train", "val"])
    processed = prepare.prepare(interim, SETTINGS)
    for row, prepared in zip(interim.manifest, processed.rows, strict=True):
        drawn = "test" if prepare.natural_split(row.sha256, SETTINGS) == "test" else "train"
        assert prepared.split == ("val" if row.given_split == "val" else drawn), row.path
    assert abs(processed.report["splits"]["test"]["total"] / 300 - SETTINGS.test_fraction) < 0.07
    assert processed.report["split"] == {"mode": "folders", "given": ["train", "val"]}


def test_near_duplicates_in_two_given_split_folders_are_leakage_listed_and_warned():
    interim = in_folders(noise_interim(60), ["train", "val"])
    interim.images[1] = interim.images[0]  # train/ and val/: they cannot share a split
    interim.images[4] = interim.images[2]  # both in train/: drawn together
    processed = prepare.prepare(interim, SETTINGS)
    rows, paths = processed.rows, [row.path for row in interim.manifest]
    assert (rows[0].split, rows[1].split) == ("train", "val")  # given splits never move
    assert rows[0].group == rows[1].group != "" and rows[2].split == rows[4].split
    near = processed.report["near_duplicates"]
    assert (near["pairs"], near["leakage"]) == (2, 1)
    assert near["leaking_pairs"] == [[paths[0], paths[1]]]
    # 0 and 1 are in two classes too: a conflict, warned about as well
    (warning,) = [w for w in processed.report["warnings"] if "split folders" in w]
    assert warning.startswith(
        f"1 near-duplicate pairs are in two given split folders (first: {paths[0]} and "
        f"{paths[1]}), so the model is tested on near-copies of images it trained on"
    )
    assert warning.endswith("or set prepare.split: hash")


def test_split_by_hash_ignores_the_split_folders():
    plain = noise_interim(120)
    by_hash = prepare.prepare(
        in_folders(plain, ["train", "val"]), settings(**SETTINGS.model_dump() | {"split": "hash"})
    )
    assert [row.split for row in by_hash.rows] == [
        row.split for row in prepare.prepare(plain, SETTINGS).rows
    ]
    assert by_hash.report["split"] == {"mode": "hash", "given": []}


def test_split_by_folders_without_split_folders_is_one_line_naming_the_key(tmp_path):
    store.write_interim(tmp_path / "interim", noise_interim(60))
    result = run_prepare(
        tmp_path, write_params(tmp_path / "params.yaml", prepare={"split": "folders"})
    )
    assert result.exit_code == 1
    assert result.output == (
        "Error: prepare.split = 'folders' needs the raw images in split folders "
        "(<raw>/train/<class>/..., beside val/ and test/), but ingest found plain class "
        "folders; set prepare.split: auto or hash, or move the class folders under train/, "
        "val/ and test/\n"
    )
    assert not (tmp_path / "processed").exists()


def test_prepare_ends_saying_how_many_near_duplicates_leak_across_split_folders(tmp_path):
    raw = tmp_path / "raw"
    for i in range(36):
        folder = raw / ("train" if i % 3 else "val") / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:02d}.png").write_bytes(encode(photo_like(i)))
    copy = Image.open(raw / "train" / "cats" / "01.png").resize((77, 58))
    (raw / "val" / "cats" / "copy.jpg").write_bytes(encode(copy, "JPEG", quality=90))
    ingest.run(raw, tmp_path / "interim", RGB_INGEST)
    result = run_prepare(
        tmp_path, write_params(tmp_path / "params.yaml", prepare={"test_fraction": 0.25})
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1] == "  split by folders (given: train, val; test drawn from train)"
    assert lines[-1].startswith(
        "warning: 1 near-duplicate pairs are in two given split folders (first: "
        "train/cats/01.png and val/cats/copy.jpg)"
    )
    report = tables.read_json(tmp_path / "report" / "report.json")
    assert report["near_duplicates"]["leaking_pairs"] == [
        ["train/cats/01.png", "val/cats/copy.jpg"]
    ]


# --- labels, views, the report --------------------------------------------------------


def test_label_modes():
    two, three = np.array([0, 1, 1]), np.array([2, 0, 1])
    np.testing.assert_array_equal(prepare.encode_labels(two, 2, "auto"), [[0], [1], [1]])
    np.testing.assert_array_equal(
        prepare.encode_labels(three, 3, "auto"), [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    )
    np.testing.assert_array_equal(
        prepare.encode_labels(two, 2, "categorical"), [[1, 0], [0, 1], [0, 1]]
    )
    assert prepare.encode_labels(two, 2, "binary").dtype == np.float32
    with pytest.raises(PipelineError, match="'binary' needs exactly two classes, found 3"):
        prepare.encode_labels(three, 3, "binary")


def test_the_label_map_is_sorted_and_a_new_class_shifts_later_indices():
    processed = prepare.prepare(noise_interim(90, classes=("b", "c")), SETTINGS)
    assert processed.class_indices == {"b": 0, "c": 1}
    grown = prepare.prepare(noise_interim(90, classes=("b", "c", "a")), SETTINGS)
    assert grown.class_indices == {"a": 0, "b": 1, "c": 2}  # documented: sorted order


# prepare's blocks of one image, of a few (7 of noise_interim's, whose 32x32 float64
# thumbnails are their largest arrays; 4 of 64x64 RGB images), and of all the images.
BLOCKS = {"one": 1, "few": 7 * near_duplicates.THUMBNAIL_BYTES, "all": prepare.CHUNK_BYTES}


@pytest.mark.parametrize("chunk_bytes", BLOCKS.values(), ids=BLOCKS)
def test_pixels_stay_with_their_labels_in_every_split(tmp_path, chunk_bytes):
    interim = noise_interim(90)
    store.write_interim(tmp_path / "interim", interim)
    processed = run_in(tmp_path, chunk_bytes=chunk_bytes)
    by_path = {row.path: i for i, row in enumerate(interim.manifest)}
    for name in store.SPLITS:
        split = store.read_split(tmp_path / "processed", name)
        rows = [row for row in processed.rows if row.split == name]
        assert len(split.views[0]) == len(split.labels) == len(rows)
        for row, pixels, label in zip(rows, split.views[0], split.labels, strict=True):
            np.testing.assert_array_equal(pixels, interim.images[by_path[row.path]])
            assert label.argmax() == processed.class_indices[row.label]


def test_blocks_of_any_size_write_the_same_bytes(photos):
    copy = Image.open(photos / "cats" / "01.png").resize((77, 58))  # a near-duplicate pair
    (photos / "dogs" / "copy.jpg").write_bytes(encode(copy, "JPEG", quality=90))
    ingested(photos)
    views = [
        {"image_size": [64, 64], "color_mode": "rgb"},  # the ingested images as they are
        {"image_size": [24, 32], "color_mode": "grayscale"},
    ]
    written = []
    for chunk_bytes in BLOCKS.values():
        processed = run_in(photos.parent, settings(views=views), chunk_bytes)
        written.append([snapshot(photos.parent / name) for name in ("processed", "report")])
    assert processed.report["near_duplicates"]["pairs"] == 1
    assert written[0] == written[1] == written[2]


def peak_rss_of_prepare(folder, count: int) -> int:
    """Bytes: the peak RSS of an `imgpipe prepare` process of `count` noise images of
    128x128 RGB, its one view those images as they are."""
    store.write_interim(folder / "interim", noise_interim(count, shape=(128, 128, 3)))
    rgb = {"image_size": [128, 128], "color_mode": "rgb"}
    params = write_params(folder / "params.yaml", ingest=rgb, prepare={"views": [rgb]})
    return peak_rss([BIN / "imgpipe", "--params", params, "prepare", "--interim",
                     folder / "interim", "--out", folder / "processed",
                     "--report-dir", folder / "report"])  # fmt: skip


@pytest.mark.slow
def test_prepares_peak_memory_grows_with_its_block_size_not_with_the_images(tmp_path):
    # 6000 images of 128x128 RGB are 281 MiB of pixels, more than the 256 MiB allowed
    # beyond the run on 60 images. prepare before blocks held twice that: every page of
    # images.npy read through its map (such pages count in RSS) and each split's copy of
    # its view (698 MB, against 137 MB for 60 images). In blocks it holds about two
    # blocks at most: 211 MB, against 136 MB.
    few = peak_rss_of_prepare(tmp_path / "few", 60)
    many = peak_rss_of_prepare(tmp_path / "many", 6000)
    assert many < few + 4 * prepare.CHUNK_BYTES, (few, many)


def test_two_views_are_derived_from_the_same_ingested_image(photos):
    interim = ingested(photos)
    views = [
        {"image_size": [64, 64], "color_mode": "grayscale"},
        {"image_size": [32, 32], "color_mode": "rgb"},
    ]
    processed = run_in(photos.parent, settings(views=views))
    gray, colour = store.read_split(photos.parent / "processed", "train").views
    assert gray.shape[1:] == (64, 64, 1) and colour.shape[1:] == (32, 32, 3)
    first = [row.path for row in interim.manifest].index(
        next(row.path for row in processed.rows if row.split == "train")
    )
    source = Image.fromarray(interim.images[first])
    np.testing.assert_array_equal(gray[0, :, :, 0], np.asarray(source.convert("L")))
    np.testing.assert_array_equal(
        colour[0], np.asarray(source.resize((32, 32), Image.Resampling.BILINEAR))
    )


def test_the_report_counts_each_split_and_class():
    processed = prepare.prepare(noise_interim(120), SETTINGS)
    report = processed.report
    for split, counts in report["splits"].items():
        assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
        assert counts["total"] == sum(row.split == split for row in processed.rows)
    assert sum(counts["total"] for counts in report["splits"].values()) == 120


def test_plots_are_real_pngs(tmp_path):
    store.write_interim(tmp_path / "interim", noise_interim(60))
    run_in(tmp_path)
    for name in ("class_balance.png", "samples.png"):
        with Image.open(tmp_path / "report" / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 100


def test_class_balance_writes_each_bar_s_count_and_keeps_its_legend_off_the_title():
    processed = prepare.prepare(noise_interim(60), SETTINGS)
    classes = list(processed.class_indices)
    figure = prepare_report.class_balance_figure(processed.report, classes)
    figure.draw_without_rendering()  # lays the figure out, as saving it does
    (axes,), (legend,), (title,) = figure.axes, figure.legends, figure.texts
    splits = processed.report["splits"]
    counts = [str(splits[split][name]) for split in store.SPLITS for name in classes]
    assert [label.get_text() for label in axes.texts] == counts
    assert title.get_text() == "Class balance per split"
    assert not legend.get_window_extent().overlaps(title.get_window_extent())


def test_one_class_or_an_empty_test_split_is_an_error_that_says_what_to_do():
    with pytest.raises(PipelineError, match="at least two class folders"):
        prepare.prepare(noise_interim(20, classes=("only",)), SETTINGS)
    with pytest.raises(PipelineError, match="split is empty .* change prepare"):
        prepare.prepare(noise_interim(2), SETTINGS)


def test_a_class_with_no_training_image_is_a_warning():
    interim = noise_interim(60, classes=("a", "b"))
    rare = next(i for i, row in enumerate(interim.manifest)
                if prepare.natural_split(row.sha256, SETTINGS) == "test")  # fmt: skip
    row = interim.manifest[rare]
    interim.manifest[rare] = store.ManifestRow(row.path, "rare", *dataclasses.astuple(row)[2:])
    (warning,) = prepare.prepare(interim, SETTINGS).report["warnings"]
    assert warning.startswith("class 'rare' has no image in train (0 in val, 1 in test)")


def test_a_split_far_from_its_fraction_because_groups_moved_is_a_warning_naming_the_cause():
    interim = noise_interim(60)
    interim.images[:30] = interim.images[0]  # one near-duplicate group of half the images
    report = prepare.prepare(interim, SETTINGS).report
    moved = report["near_duplicates"]["moved"]
    assert moved > 0
    assert any(
        warning.startswith("test holds ")
        and f"{moved} images moved with their near-duplicate "
        "groups; lower prepare.near_duplicate_distance (now 24)"
        in warning
        for warning in report["warnings"]
    ), report["warnings"]


def test_a_split_as_asked_has_no_warning():
    assert prepare.prepare(noise_interim(300), SETTINGS).report["warnings"] == []
