"""Write the page `dvc plots show` fills, with Vega's scripts inlined: it renders offline.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN (dvc-render's
VegaRenderer.SCRIPTS), so on a machine without a network it shows no chart.
This script fetches the versions that CDN tags name from the npm registry
(`npm pack`) and writes, beside itself:

    template.html    dvc-render's page with the three builds the CDN serves inlined,
                     in place of its CDN tags (.dvc/config's plots.html_template)
    LICENSE.<name>   each package's licence
    SOURCE.md        what was fetched: versions, files, licences, npm integrity

Run it again after upgrading dvc-render (tests/test_plots_page.py says when):

    .venv/bin/python plots/vendor.py
"""

import json
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CDN_TAG = re.compile(r"cdn\.jsdelivr\.net/npm/([\w-]+)@([\w.-]+)")
SOURCE_MAP = re.compile(r"\n//# sourceMappingURL=\S+\s*$")
INLINED = re.compile(r"<!-- ([\w-]+)@([\w.-]+) ")  # the comment before each inlined script


def cdn_packages() -> dict[str, str]:
    """The packages and versions dvc-render's page loads from the CDN, in its order."""
    from dvc_render.vega import VegaRenderer

    return dict(CDN_TAG.findall(VegaRenderer.SCRIPTS))


def inlined_packages(template: str) -> dict[str, str]:
    """The packages and versions a template written by this script holds."""
    return dict(INLINED.findall(template))


def fetch(name: str, version: str, folder: Path) -> dict:
    """npm's record of the package's tarball, with the tarball's build and licence texts."""
    packed = subprocess.run(
        ["npm", "pack", "--json", "--silent", f"{name}@{version}"],
        cwd=folder, capture_output=True, text=True, check=True,
    )  # fmt: skip
    record = json.loads(packed.stdout)[0]
    with tarfile.open(folder / record["filename"]) as tarball:

        def text(member: str) -> str:
            return tarball.extractfile(f"package/{member}").read().decode()

        manifest = json.loads(text("package.json"))
        record["build"] = manifest["jsdelivr"]  # the file the CDN serves for name@version
        record["license"] = manifest["license"]
        # The source map is not vendored: drop the comment that names it.
        record["script"] = SOURCE_MAP.sub("", text(record["build"]))
        record["license_text"] = text("LICENSE")
    if re.search(r"</script", record["script"], re.IGNORECASE):
        raise SystemExit(f"{name}'s {record['build']} holds '</script': it cannot be inlined")
    return record


def inline(record: dict) -> str:
    return (
        f"<!-- {record['id']} {record['build']}, {record['license']} "
        f"(LICENSE.{record['name']}) -->\n<script>{record['script']}</script>"
    )


def source(records: list[dict]) -> str:
    rows = [
        f"| {r['name']} | {r['version']} | {r['build']} | {r['license']}, LICENSE.{r['name']} "
        f"| {r['integrity']} |"
        for r in records
    ]
    return "\n".join([
        "# Vega's scripts for `dvc plots show`, offline",
        "",
        "Written by `plots/vendor.py`, which fetched with `npm pack` from the npm registry",
        "the versions dvc-render's page loads from its CDN, and inlined them into",
        "template.html (`.dvc/config`: `plots.html_template`). Each build also bundles its",
        "npm dependencies (d3 modules, fast-json-patch, semver...) under the permissive",
        "licences (ISC, MIT, BSD) that their own packages name.",
        "Run `.venv/bin/python plots/vendor.py` again after upgrading dvc-render.",
        "",
        "| package | version | file | licence | npm integrity |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])  # fmt: skip


def main() -> None:
    from dvc_render.html import PAGE_HTML

    with tempfile.TemporaryDirectory() as folder:
        records = [fetch(n, v, Path(folder)) for n, v in cdn_packages().items()]
    page = PAGE_HTML.replace("{scripts}", "\n".join(map(inline, records)))
    (HERE / "template.html").write_text(page, encoding="utf-8")
    for record in records:
        (HERE / f"LICENSE.{record['name']}").write_text(record["license_text"], encoding="utf-8")
    (HERE / "SOURCE.md").write_text(source(records), encoding="utf-8")


if __name__ == "__main__":
    main()
