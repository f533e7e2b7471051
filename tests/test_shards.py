"""The sharded layout: a grown data set rewrites only the shards its new images land in,
prepare writes only those over its last run's outputs, and the bytes are the same however
they were built."""

import os
from pathlib import Path

import pytest

from pipeline import ingest, prepare, store
from pipeline.params import Ingest, Prepare
from pipeline.prepare_cache import CacheFile
from tests.conftest import CLASS_LEVELS, default_params, image_bytes, make_dataset, snapshot

INGEST = Ingest.model_validate(default_params()["ingest"] | {"image_size": [32, 32]})
PREPARE = Prepare.model_validate(
    default_params()["prepare"]
    | {
        "views": [
            {"image_size": [32, 32], "color_mode": "grayscale"},  # the ingested image: linked
            {"image_size": [16, 16], "color_mode": "rgb"},  # derived
        ]
    }
)
SHARDED = ("interim/images", "interim/manifest", *(f"processed/{name}" for name in
           ("splits", "labels", "view0", "view1")))  # fmt: skip


def build(raw: Path, root: Path, cache: Path | None = None) -> dict[str, bytes]:
    """Ingest and prepare `raw` under `root`; every file written, by path under it."""
    ingest.run(raw, root / "interim", INGEST, cache_path=cache)
    prepare.run(root / "interim", root / "processed", root / "report", PREPARE)
    return snapshot(root)


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> set[str]:
    """Files of the shard folders that are new or whose bytes changed."""
    return {
        path
        for path, data in after.items()
        if path.startswith(SHARDED) and before.get(path) != data
    }


def landed_in(root: Path, new: set[str]) -> set[str]:
    """Every shard file (in every shard folder) of the shards holding a path in `new`."""
    manifest = store.read_interim(root / "interim").manifest
    names = {
        shard.name
        for shard in store.interim_shards(manifest)
        if any(row.path in new for row in manifest[shard.start : shard.stop])
    }
    suffix = {"manifest": "csv", "splits": "csv"}
    return {
        f"{folder}/{name}.{suffix.get(folder.split('/')[1], 'npy')}"
        for folder in SHARDED
        for name in names
    }


def add_images(raw: Path, where: str) -> set[str]:
    """Three new images in each class, `where` says; their paths."""
    new = set()
    for name, level in CLASS_LEVELS.items():
        for index in range(3):
            path = (
                f"{name}/zzz{index}.png" if where.startswith("after") else f"{name}/b/{index}.png"
            )
            (raw / path).parent.mkdir(exist_ok=True)
            (raw / path).write_bytes(image_bytes(level, f"new {path}"))
            new.add(path)
    return new


@pytest.mark.parametrize("where", ["after each class's last image", "in a new sub-folder"])
def test_new_images_rewrite_only_the_shards_they_land_in(tmp_path, where):
    raw = make_dataset(tmp_path / "raw", per_class=100)
    before = build(raw, tmp_path / "before")
    new = add_images(raw, where)
    after = build(raw, tmp_path / "after")
    expected = landed_in(tmp_path / "after", new)
    assert changed(before, after) == expected
    # A shard a class's new images land in, or a new one: a few of the 300 images' files.
    shards_written = len(expected) // len(SHARDED)
    assert 0 < shards_written <= 2 * len(CLASS_LEVELS)
    cut = store.interim_shards(store.read_interim(tmp_path / "after" / "interim").manifest)
    assert len(cut) > len(CLASS_LEVELS)  # classes of several shards, most unchanged


def test_a_grown_set_built_with_the_cache_is_the_bytes_of_one_built_cold(tmp_path):
    raw = make_dataset(tmp_path / "raw", per_class=60)
    cache = tmp_path / "cache.sqlite"
    build(raw, tmp_path / "first", cache)
    (raw / "mid" / "010.png").unlink()
    for index in range(5):
        (raw / "dark" / f"new{index}.png").write_bytes(image_bytes(30, f"new {index}"))
    assert build(raw, tmp_path / "incremental", cache) == build(raw, tmp_path / "cold")


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file under `folder`, by path relative to it: its (device, inode)."""
    return {
        path.relative_to(folder).as_posix(): (path.stat().st_dev, path.stat().st_ino)
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_prepare_over_its_last_outputs_writes_only_the_files_that_change(tmp_path):
    """As `dvc repro` runs it (dvc.yaml keeps data/processed): the files whose bytes stay
    are left in place, and the folder ends as one built cold, stale shards gone."""
    raw = make_dataset(tmp_path / "raw", per_class=100)
    cache = tmp_path / "cache.sqlite"  # ingest links the shards it kept: their files stay
    before = build(raw, tmp_path / "kept", cache)
    processed = tmp_path / "kept" / "processed"
    kept = files_of(processed)
    add_images(raw, "after each class's last image")
    # The first image of a shard: the shard after the removal is named after its second.
    manifest = store.read_interim(tmp_path / "kept" / "interim").manifest
    first = store.interim_shards(manifest)[3]
    (raw / manifest[first.start].path).unlink()
    after = build(raw, tmp_path / "kept", cache)
    assert after == build(raw, tmp_path / "cold")
    written = {path for path, file in files_of(processed).items() if kept.get(path) != file}
    changed = {
        path.removeprefix("processed/")
        for path, data in after.items()
        if path.startswith("processed/") and before.get(path) != data
    }
    assert written == changed | {"labels.json"}  # the one file always written, last
    untouched = set(files_of(processed)) - written
    assert {path.split("/")[0] for path in untouched} == {"splits", "labels", "view0", "view1"}
    gone = {path.removeprefix("processed/") for path in set(before) - set(after)}
    assert f"splits/{first.name}.csv" in gone


def test_a_copy_of_a_view_found_whole_is_kept_unread_until_it_is_written(tmp_path):
    """As DVC's default cache.type leaves data/processed: its view's files copies of the
    interim's. A copy found whole is kept on the next run without being read (by its and
    its source's size, time and inode, as DVC's state trusts them: other bytes under the
    old size and time are kept too); one written since is read and put right."""
    build(make_dataset(tmp_path / "raw", per_class=20), tmp_path)
    view = sorted((tmp_path / "processed" / "view0").glob("*.npy"))
    for path in view:  # DVC's copy over prepare's link
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data)
    cache = CacheFile(tmp_path / "prepared.sqlite", INGEST)

    def rerun(cache: CacheFile | None) -> None:
        prepare.run(tmp_path / "interim", tmp_path / "processed", tmp_path / "report",
                    PREPARE, cache=cache)  # fmt: skip

    rerun(cache)  # reads each copy, finds it whole, keeps it
    forged, written = view[0], view[1]
    source = {path: (tmp_path / "interim" / "images" / path.name).read_bytes() for path in view}
    before = forged.stat()
    forged.write_bytes(source[forged][:-1] + bytes([source[forged][-1] ^ 1]))
    os.utime(forged, ns=(before.st_atime_ns, before.st_mtime_ns))
    written.write_bytes(source[written][:-1] + bytes([source[written][-1] ^ 1]))
    rerun(cache)
    assert forged.read_bytes() != source[forged]  # unread
    assert written.read_bytes() == source[written]
    assert all(not os.path.samefile(path, tmp_path / "interim" / "images" / path.name)
               for path in view[2:])  # fmt: skip
    rerun(None)  # without the cache every copy is read
    assert forged.read_bytes() == source[forged]


def test_a_view_no_longer_made_leaves_the_prepared_folder(tmp_path):
    build(make_dataset(tmp_path / "raw", per_class=20), tmp_path)
    one_view = PREPARE.model_copy(update={"views": PREPARE.views[:1]})
    prepare.run(tmp_path / "interim", tmp_path / "processed", tmp_path / "report", one_view)
    assert not (tmp_path / "processed" / "view1").exists()
    assert len(store.read_split(tmp_path / "processed", "train").views) == 1
