"""`dvc plots show` makes a page whose charts render without a network (plots/vendor.py)."""

import re
import runpy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import BIN, REPO, dvc_env

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM, reason="needs Chromium (Debian package chromium; .ci/run installs it)"
)
TEMPLATE = REPO / "plots" / "template.html"


def test_the_template_inlines_the_versions_dvc_render_loads_from_its_cdn():
    vendor = runpy.run_path(str(REPO / "plots" / "vendor.py"))  # its functions, not main
    page = TEMPLATE.read_text(encoding="utf-8")
    assert vendor["inlined_packages"](page) == vendor["cdn_packages"](), (
        "dvc-render changed its scripts' versions: run plots/vendor.py"
    )
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC adds no CDN tag to it


def loss_page(root: Path, offline_template: bool) -> Path:
    """The page `dvc plots show` writes for this dvc.yaml and two epochs of dvclive's loss
    files, with this repository's .dvc/config (and so its template) or DVC's default."""
    root.mkdir()
    subprocess.run([BIN / "dvc", "init", "-q", "--no-scm"], cwd=root, env=dvc_env(), check=True)
    shutil.copy(REPO / "dvc.yaml", root)
    if offline_template:
        shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
        shutil.copytree(REPO / "plots", root / "plots")
    for split, losses in {"train": (0.9, 0.4), "val": (1.0, 0.7)}.items():
        folder = root / "results" / "train" / "plots" / "metrics" / split
        folder.mkdir(parents=True)
        lines = [f"{1000 + step}\t{step}\t{loss}" for step, loss in enumerate(losses)]
        (folder / "loss.tsv").write_text("\n".join(["timestamp\tstep\tloss", *lines, ""]))
    # The stages' plots are missing: DVC warns and draws the others.
    shown = subprocess.run([BIN / "dvc", "plots", "show"], cwd=root, env=dvc_env(),
                           capture_output=True, text=True)  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return root / "dvc_plots" / "index.html"


def offline_chromium(profile: Path, *arguments: str) -> str:
    """Headless Chromium's output with no network: in a network namespace of its own where
    unshare can make one, and with every host unresolvable and every proxied request sent
    to a closed port in any case."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
               "--proxy-server=127.0.0.1:9", "--virtual-time-budget=10000", *arguments]  # fmt: skip
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        command = ["unshare", "-n", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def loss_canvas(dom: str) -> tuple[int, int] | None:
    """The size of the canvas vega-embed drew in the loss chart's element, if it did."""
    drawn = re.search(r'<div id="loss" class="vega-embed.*?<canvas width="(\d+)" height="(\d+)"',
                      dom)  # fmt: skip
    return (int(drawn[1]), int(drawn[2])) if drawn else None


def coloured_pixels(screenshot: Path) -> int:
    """Pixels of a saturated colour (chart lines, legend dots): none on a blank page, whose
    only pixels are white, grey or black."""
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    return int(np.sum(pixels.max(axis=2) - pixels.min(axis=2) > 60))


def render(page: Path, folder: Path) -> tuple[str, Path]:
    """The page's DOM once its scripts ran, and a screenshot of it, both offline."""
    screenshot = folder / "screenshot.png"
    dom = offline_chromium(folder / "profile", "--dump-dom", page.as_uri())
    offline_chromium(folder / "profile", f"--screenshot={screenshot}", "--window-size=1000,800",
                     page.as_uri())  # fmt: skip
    return dom, screenshot


@pytest.mark.slow
@needs_chromium
def test_the_plots_page_draws_the_loss_chart_offline(tmp_path):
    dom, screenshot = render(loss_page(tmp_path / "project", offline_template=True), tmp_path)
    canvas = loss_canvas(dom)
    assert canvas and min(canvas) > 200, "vega-embed drew no loss chart"
    assert coloured_pixels(screenshot) > 1000  # the two loss lines and their legend


@pytest.mark.slow
@needs_chromium
def test_dvcs_own_page_draws_nothing_offline(tmp_path):
    """What the test above guards against: DVC's page loads Vega from a CDN."""
    dom, screenshot = render(loss_page(tmp_path / "project", offline_template=False), tmp_path)
    assert "cdn.jsdelivr.net" in dom
    assert loss_canvas(dom) is None and coloured_pixels(screenshot) == 0
