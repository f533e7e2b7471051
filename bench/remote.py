"""What `dvc push` moves to a real S3 server (SeaweedFS on 127.0.0.1), and how long it takes.

    python -m bench.remote FOLDER      # from the repository root; FOLDER: class folders of images

For the raw images (`dvc add data/raw`) and for the pipeline's arrays (the
outputs of ingest and prepare): the objects and bytes the first push uploads,
then those a push uploads after adding 1% new images; and the wall time of a
full push, and of a full pull into a fresh clone with an empty cache.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import s3fs
import yaml

from bench.ingest import generate, image_files
from tests.servers import seaweedfs

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DVC = BIN / "dvc"
# dvc runs each stage's `imgpipe` through the shell: it must find this environment's copy.
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def sh(cwd: Path, *command) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - start


def bucket_usage(fs: s3fs.S3FileSystem) -> tuple[int, int]:
    """(objects, bytes) stored under the remote's prefix."""
    fs.invalidate_cache()
    sizes = [info["size"] for info in fs.find("dvc/store", detail=True).values()]
    return len(sizes), sum(sizes)


def measure(folder: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        server = seaweedfs(scratch / "server")
        server.start()
        try:
            _measure(folder, scratch, server)
        finally:
            server.stop()


def _measure(folder: Path, scratch: Path, server) -> None:
    project = scratch / "a"
    shutil.copytree(REPO / "pipeline", project / "pipeline")
    for name in ["dvc.yaml", "params.yaml"]:
        shutil.copy(REPO / name, project / name)
    shutil.copytree(folder, project / "data" / "raw")
    count = len(image_files(project / "data" / "raw"))
    sh(project, "git", "init", "-q")
    sh(project, DVC, "init", "-q")
    sh(project, DVC, "remote", "add", "-d", "store", server.url)
    sh(project, DVC, "remote", "modify", "store", "endpointurl", server.config["endpointurl"])
    for option, value in server.local.items():
        sh(project, DVC, "remote", "modify", "--local", "store", option, value)
    fs = s3fs.S3FileSystem(
        key=server.local["access_key_id"],
        secret=server.local["secret_access_key"],
        client_kwargs={"endpoint_url": server.config["endpointurl"]},
    )
    rows = []

    def push(label: str, *targets: str) -> None:
        before = bucket_usage(fs)
        seconds = sh(project, DVC, "push", *targets)
        after = bucket_usage(fs)
        rows.append((label, after[0] - before[0], after[1] - before[1], seconds))

    sh(project, DVC, "add", "data/raw")
    push("raw images, first push", "data/raw.dvc")
    sh(project, DVC, "repro", "prepare")
    push("arrays (ingest + prepare), first push", "ingest", "prepare")

    size = _first_image_size(project / "data" / "raw")
    generate(project / "data" / "raw", max(1, count // 100), size, classes=2, first=10**7)
    sh(project, DVC, "add", "data/raw")
    push("raw images, after adding 1%", "data/raw.dvc")
    sh(project, DVC, "repro", "prepare")
    push("arrays, after adding 1%", "ingest", "prepare")

    sh(project, "git", "add", "-A")
    sh(project, "git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "all")
    clone = scratch / "b"
    sh(scratch, "git", "clone", "-q", project, clone)
    for option, value in server.local.items():
        sh(clone, DVC, "remote", "modify", "--local", "store", option, value)
    pull_all = sh(clone, DVC, "pull", "data/raw.dvc", "ingest", "prepare")
    processed = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["prepare"]["outs"]

    print(f"{count} images in {folder}, pushed to SeaweedFS on 127.0.0.1")
    print(f"{'push':<40}{'objects':>9}{'MB':>10}{'seconds':>9}")
    for label, objects, size_bytes, seconds in rows:
        print(f"{label:<40}{objects:>9}{size_bytes / 1e6:>10.1f}{seconds:>9.2f}")
    print(f"{'pull of all of it into a fresh clone':<40}{'':>9}{'':>10}{pull_all:>9.2f}")
    print(f"data/processed is {processed[0]['nfiles']} files, {processed[0]['size'] / 1e6:.1f} MB")


def _first_image_size(folder: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(image_files(folder)[0]) as image:
        return image.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="class folders of images")
    measure(parser.parse_args().folder)


if __name__ == "__main__":
    main()
