"""Prepare's cache: hashes and pairs kept by content hash; the same pairs and bytes as
without it, whatever it holds."""

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import near_duplicates, prepare_cache, store
from pipeline.cli import cli
from pipeline.params import Ingest
from tests.conftest import default_params, foreign_file, snapshot, write_params
from tests.test_prepare import _hash, noise_interim, planted_hashes

DISTANCE = 24
GRAY = Ingest.model_validate(default_params()["ingest"])


@pytest.fixture
def searched(monkeypatch) -> list[np.ndarray]:
    """The rows each incremental search took as new, one array a search."""
    news = []

    def spy(hashes, new, max_distance, block):
        news.append(new)
        return search(hashes, new, max_distance, block)

    search = near_duplicates._pairs_with
    monkeypatch.setattr(near_duplicates, "_pairs_with", spy)
    return news


def _changed(count: int, change: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the hashes before and after `change`: a random 70% of them, then 30% more
    (added), 30% fewer (removed), or 20% of them gone and the rest added, in a new order
    (both: renamed files move in the manifest)."""
    everything = np.arange(count)
    before = np.sort(rng.choice(count, count * 7 // 10, replace=False))
    if change == "added":
        return before, everything
    if change == "removed":
        return everything, np.sort(rng.choice(count, count * 7 // 10, replace=False))
    gone = rng.choice(before, len(before) // 5, replace=False)
    return before, rng.permutation(np.setdiff1d(everything, gone))


@pytest.mark.parametrize("max_distance", [0, DISTANCE, 110])
@pytest.mark.parametrize("change", ["added", "removed", "both"])
def test_the_pairs_equal_a_full_search_after_adding_removing_or_both(
    tmp_path, searched, change, max_distance
):
    # Copies around each threshold; near 110 bits, about 1% of random pairs are close too.
    hashes = planted_hashes(300, [0, 0, 0, 1, 2, 23, 24, 24, 24, 25])
    shas = [_hash(i) for i in range(len(hashes))]
    before, after = _changed(len(hashes), change, np.random.default_rng(max_distance))
    cache = prepare_cache.PrepareCache(tmp_path / "prepared.sqlite", "key")
    for rows in before, after:
        pairs = prepare_cache.pairs_of(hashes[rows], [shas[i] for i in rows], max_distance, cache)
        expected = near_duplicates.near_duplicate_pairs(hashes[rows], max_distance)
        np.testing.assert_array_equal(pairs, expected)
    cache.close()
    # The second search took only the images the first had not seen as new.
    (new,) = searched
    assert sorted(after[new].tolist()) == sorted(set(after.tolist()) - set(before.tolist()))
    # Pairs of two old images (from the cache), of an old and a new, and of two new.
    kinds = set(np.isin(after[expected], before).sum(axis=1).tolist())
    assert kinds == ({2} if change == "removed" else {0, 1, 2})


def test_a_full_search_is_made_when_half_the_images_are_new(tmp_path, searched):
    hashes = planted_hashes(100, [0, 24])
    shas = [_hash(i) for i in range(len(hashes))]
    cache = prepare_cache.PrepareCache(tmp_path / "prepared.sqlite", "key")
    prepare_cache.pairs_of(hashes[:60], shas[:60], DISTANCE, cache)  # cold: all new
    pairs = prepare_cache.pairs_of(hashes, shas, DISTANCE, cache)  # 60 of 120 new
    cache.close()
    assert searched == []
    np.testing.assert_array_equal(pairs, near_duplicates.near_duplicate_pairs(hashes, DISTANCE))


def _with_copies(count: int, seed: int = 0) -> store.Interim:
    """Noise images, the last tenth of them near-copies (one grey level brighter) of the
    first tenth, so that prepare finds pairs."""
    interim = noise_interim(count, seed=seed)
    images = interim.images
    images[-(count // 10) :] = np.clip(images[: count // 10].astype(int) + 1, 0, 255)
    return interim


def _added(interim: store.Interim, extra: store.Interim) -> store.Interim:
    """`interim` with the images of `extra` put among its own, as new files sort in."""
    order = np.argsort([row.path for row in interim.manifest + extra.manifest], kind="stable")
    images = np.concatenate([interim.images, extra.images])[order]
    manifest = [(interim.manifest + extra.manifest)[i] for i in order]
    return dataclasses.replace(interim, images=images, manifest=manifest)


@pytest.fixture
def project(tmp_path):
    """A params file and a function that prepares an interim into tmp_path/<name>/ with
    the given extra arguments, returning the outputs' bytes."""
    params = write_params(tmp_path / "params.yaml")

    def prepared(name: str, interim: store.Interim, *options) -> dict[str, bytes]:
        folder = tmp_path / name
        store.write_interim(folder / "interim", interim)
        result = CliRunner().invoke(
            cli,
            [str(a) for a in ("--params", params, "prepare", "--interim", folder / "interim",
                              "--out", folder / "processed", "--report-dir", folder / "report",
                              *options)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return snapshot(folder / "processed") | snapshot(folder / "report")

    return prepared


@pytest.fixture
def hashed(monkeypatch) -> list[np.ndarray]:
    """The images each block of perceptual hashes was made of."""
    blocks = []

    def spy(images):
        blocks.append(images)
        return block_descriptors(images)

    block_descriptors = near_duplicates._block_descriptors
    monkeypatch.setattr(near_duplicates, "_block_descriptors", spy)
    return blocks


def test_prepare_writes_the_same_bytes_without_the_cache_cold_warm_and_after_adding(
    tmp_path, project, hashed
):
    interim = _with_copies(60)
    extra = noise_interim(70, seed=1)  # 5 new images, among the old ones by path
    new = store.Interim(extra.images[65:], extra.manifest[65:], [], [], {})
    new.images[0] = np.clip(interim.images[1].astype(int) + 1, 0, 255)  # a copy of an old one
    grown = _added(interim, new)
    cache = ("--cache", tmp_path / "prepared.sqlite")

    expected = project("scratch", interim, "--no-cache")
    assert b'"pairs": 6' in expected["report.json"]
    hashed.clear()
    assert project("cold", interim, *cache) == expected
    assert project("warm", interim, *cache) == expected
    assert sum(map(len, hashed)) == 60  # all 60 by the cold run, none by the warm one
    grown_expected = project("grown scratch", grown, "--no-cache")
    assert b'"pairs": 8' in grown_expected["report.json"]
    hashed.clear()
    assert project("grown", grown, *cache) == grown_expected
    # Only the new images were hashed: their pixels alone were read.
    rows = [i for i, row in enumerate(grown.manifest) if row in new.manifest]
    np.testing.assert_array_equal(np.concatenate(hashed), grown.images[rows])


def test_the_hashes_are_keyed_by_the_ingest_settings_that_made_the_pixels(tmp_path, hashed):
    interim = _with_copies(20)
    # The same files ingested with other settings would be other pixels.
    nearest = GRAY.model_copy(update={"resample": "nearest"})
    for ingest, hashed_now in [(GRAY, 20), (GRAY, 0), (nearest, 20), (nearest, 0)]:
        hashed.clear()
        cache = prepare_cache.CacheFile(tmp_path / "prepared.sqlite", ingest)
        prepare_cache.near_duplicates_of(interim, 8, DISTANCE, cache)
        assert sum(map(len, hashed)) == hashed_now


def test_the_last_runs_descriptors_come_from_one_row_and_only_the_others_one_by_one(
    tmp_path, monkeypatch
):
    asked = []
    by_image = prepare_cache.PrepareCache.descriptors
    monkeypatch.setattr(prepare_cache.PrepareCache, "descriptors",
                        lambda self, shas: asked.append(shas) or by_image(self, shas))  # fmt: skip
    interim, extra = _with_copies(30), noise_interim(40, seed=1)
    grown = _added(interim, store.Interim(extra.images[35:], extra.manifest[35:], [], [], {}))
    cache = prepare_cache.CacheFile(tmp_path / "prepared.sqlite", GRAY)
    previous = set()
    for run in (interim, interim, grown, interim):
        expected = prepare_cache.near_duplicates_of(run, 8, DISTANCE, None)
        asked.clear()
        pairs = prepare_cache.near_duplicates_of(run, 8, DISTANCE, cache)
        np.testing.assert_array_equal(pairs, expected)
        shas = {row.sha256 for row in run.manifest}
        assert set(asked[0]) == shas - previous  # all 30, none, the 5 added, none
        previous = shas


def test_a_damaged_cache_is_set_aside_with_a_warning_and_the_pairs_are_the_same(tmp_path, capsys):
    interim = _with_copies(40)
    path = tmp_path / "prepared.sqlite"
    expected = prepare_cache.near_duplicates_of(interim, 8, DISTANCE, None)
    cache = prepare_cache.CacheFile(path, GRAY)
    prepare_cache.near_duplicates_of(interim, 8, DISTANCE, cache)
    assert len(expected) == 4  # each copy with its original
    with path.open("r+b") as file:  # torn pages behind the header, which holds the mark
        file.seek(100)
        file.write(b"\xff" * (path.stat().st_size - 100))
    damaged = path.read_bytes()
    pairs = prepare_cache.near_duplicates_of(interim, 8, DISTANCE, cache)
    np.testing.assert_array_equal(pairs, expected)
    assert f"prepare: warning: the prepare cache {path} is damaged" in capsys.readouterr().err
    assert path.with_name("prepared.sqlite.damaged").read_bytes() == damaged


@pytest.mark.parametrize("kind", ["notes", "another program's SQLite database"])
def test_a_cache_path_holding_a_file_imgpipe_did_not_make_is_refused_untouched(tmp_path, kind):
    foreign = foreign_file(tmp_path, kind)
    params = write_params(tmp_path / "params.yaml")
    store.write_interim(tmp_path / "interim", _with_copies(20))
    before = snapshot(tmp_path)
    result = CliRunner().invoke(
        cli,
        [str(a) for a in ("--params", params, "prepare", "--interim", tmp_path / "interim",
                          "--out", tmp_path / "out", "--report-dir", tmp_path / "report",
                          "--cache", foreign)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.output == (
        f"Error: --cache {foreign} is not an imgpipe prepare cache, and prepare never moves or "
        "overwrites a file it did not create: name a new file (or --no-cache)\n"
    )
    assert snapshot(tmp_path) == before  # nothing written beside it, no output made
