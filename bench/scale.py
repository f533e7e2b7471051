"""The whole pipeline at 25,000 to 200,000 images: each stage's time and memory, and what
DVC caches and uploads after adding 1% new images.

    python -m bench.scale --sizes 25000 100000 200000 --size 64x64 --color-mode rgb \\
        --work /tmp/imgpipe-scale

For each N: N photo-like JPEGs from bench.ingest's generator (WORK/photos-N-..., made
once and reused by later runs), and a new git + DVC repository in a temporary folder
under WORK set up as the tests set one up: this checkout's pipeline/, dvc.yaml,
.gitignore and .dvcignore; params.yaml with the size, colour mode and epochs given and
one view of that size; the photos as data/raw (hard links), tracked with `dvc add`. The
DVC remote is a plain folder: its growth is what a push uploads, in objects and bytes, to
any remote (bench/remote.py times pushes to a SeaweedFS server).

Measured, each as a whole process under GNU time (`/usr/bin/time -f %e,%M`: wall seconds,
and the peak RSS of the largest one process, the command's or one of its workers', not
their sum):

- `dvc add data/raw`, and the first `dvc push` of everything;
- each stage's `imgpipe` command as `dvc repro <stage>` runs it (the copied dvc.yaml's
  commands are prefixed with GNU time, nothing else changes), and beside it the whole
  `dvc repro <stage>`, DVC's hashing and caching of the outputs included;
- `imgpipe predict` of --predict raw files, evenly spaced in sorted order;
- the near-duplicate search: `near_duplicate_pairs` in this process on the perceptual
  hashes of the ingested images (prepare prints no time for it); the search only.

Then, each time from the same pushed state (git reset; the DVC cache and the remote put
back from hard-linked copies; `dvc checkout`), 1% new photos are added each of three ways
(or those --patterns names):

- appended:   named after every file of their class folder;
- random:     each beside a random existing file, named to sort right after it;
- sub-folder: in a new folder batch_2/ of half the class folders (it sorts before
              the files beside it);

then `dvc add data/raw`, `dvc repro` and `dvc push`. What each push uploads (the
remote's growth) and how much the DVC cache grows are given for the raw images (the new
photos and data/raw's new listing, uploaded whatever the layout) apart from the arrays
(data/interim and data/processed, ingest's and prepare's outputs), as a share of the
arrays' bytes too; the model's upload; and how long prepare's command took in that
`dvc repro`, beside its first run's (which described and searched every image). Each
pattern adds other photos (seeds), so that ingest's decode cache, which is not put back,
never holds one pattern's photos for the next. Bytes are counted by walking the folders,
each inode once (DVC may hard-link), whatever files they hold.
"""

import argparse
import os
import random
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.ingest import generate, image_files
from pipeline import store
from pipeline.cores import usable_cores
from pipeline.near_duplicates import descriptors, near_duplicate_pairs
from pipeline.params import load_params
from pipeline.prepare import block_rows
from tests.conftest import dvc_env, write_params

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DVC = BIN / "dvc"
TIME = "/usr/bin/time"
STAGES = ("ingest", "prepare", "train", "evaluate")
MB, MiB = 1e6, 2**20


@dataclass(frozen=True)
class Usage:
    """Regular files under a folder and their bytes."""

    files: int
    bytes: int

    def __sub__(self, other: "Usage") -> "Usage":
        return Usage(self.files - other.files, self.bytes - other.bytes)

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.files + other.files, self.bytes + other.bytes)


def usage(folder: Path) -> Usage:
    """What `folder` holds, each inode once; links are not followed."""
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            facts = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(facts.st_mode):
                sizes[facts.st_dev, facts.st_ino] = facts.st_size
    return Usage(len(sizes), sum(sizes.values()))


@dataclass(frozen=True)
class Timing:
    seconds: float
    peak_rss: int | None  # bytes; None where no process of its own is measured


def read_timing(path: Path) -> Timing:
    """GNU time's `%e,%M` line (seconds, KiB), the last line of its -o file."""
    seconds, kib = path.read_text().splitlines()[-1].split(",")
    return Timing(float(seconds), int(kib) * 1024)


@dataclass(frozen=True)
class Repo:
    """The benchmark's git + DVC repository, its folder remote, and GNU time's files."""

    root: Path
    remote: Path
    timings: Path

    def run(self, *command) -> float:
        """Seconds `command` took in the repository; it must succeed."""
        environment = dvc_env(
            # dvc runs each stage's `imgpipe` through the shell: it must find this venv's;
            # the stages import the copied pipeline package, the one dvc.yaml's deps hash.
            PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
            PYTHONPATH=str(self.root),
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        environment.pop("IMGPIPE_DECODE_CACHE", None)  # the default: .cache/ in the repository
        start = time.perf_counter()
        done = subprocess.run(command, cwd=self.root, env=environment, capture_output=True,
                              text=True)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(map(str, command))} failed:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")  # fmt: skip
        return time.perf_counter() - start

    def timed(self, name: str, *command) -> Timing:
        """`command` run under GNU time."""
        self.run(TIME, "-o", self.timings / name, "-f", "%e,%M", *command)
        return read_timing(self.timings / name)

    def repro(self, stage: str) -> tuple[Timing, float]:
        """The stage's command under GNU time, and the seconds of its whole `dvc repro`."""
        seconds = self.run(DVC, "repro", stage)
        return read_timing(self.timings / stage), seconds

    def growth(self, folder: Path, *command) -> Usage:
        """How much `folder` grows while `command` runs."""
        before = usage(folder)
        self.run(*command)
        return usage(folder) - before

    @property
    def cache(self) -> Path:
        return self.root / ".dvc" / "cache"


def photos(work: Path, count: int, size: tuple[int, int], classes: int) -> Path:
    """WORK's folder of `count` photos at these settings, generated the first time."""
    folder = work / f"photos-{count}-{size[0]}x{size[1]}-{classes}"
    done = work / f"{folder.name}.done"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)  # a generation cut short
        generate(folder, count, size, classes)
        done.touch()
    return folder


def timed_commands(dvc_yaml: str, timings: Path) -> str:
    """dvc.yaml with each stage's `imgpipe <stage>` run under GNU time."""
    prefix = f"{TIME} -o {shlex.quote(str(timings))}/"
    text, count = re.subn(r"^(\s*cmd: )(imgpipe (\w+))", rf"\1{prefix}\3 -f %e,%M \2",
                          dvc_yaml, flags=re.MULTILINE)  # fmt: skip
    if count != len(STAGES):
        raise SystemExit(f"dvc.yaml has {count} `cmd: imgpipe ...` lines, expected {STAGES}")
    return text


def new_repo(scratch: Path, raw: Path, args: argparse.Namespace) -> Repo:
    """A repository of this pipeline and the photos, before `dvc add`."""
    repo = Repo(scratch / "project", scratch / "remote", scratch / "timings")
    repo.timings.mkdir()
    shutil.copytree(REPO / "pipeline", repo.root / "pipeline",
                    ignore=shutil.ignore_patterns("__py*"))  # fmt: skip
    for name in [".gitignore", ".dvcignore"]:
        shutil.copy(REPO / name, repo.root / name)
    dvc_yaml = timed_commands((REPO / "dvc.yaml").read_text(), repo.timings)
    (repo.root / "dvc.yaml").write_text(dvc_yaml)
    view = {"image_size": [args.size[1], args.size[0]], "color_mode": args.color_mode}
    write_params(repo.root / "params.yaml", ingest=view, prepare={"views": [view]},
                 train={"epochs": args.epochs})  # fmt: skip
    # Links, not copies: N photos are not written again, and nothing writes into them
    # (WORK holds both folders, so one file system).
    shutil.copytree(raw, repo.root / "data" / "raw", copy_function=os.link)
    repo.run("git", "init", "-q")
    repo.run(DVC, "init", "-q")
    repo.run(DVC, "remote", "add", "-d", "store", repo.remote)
    return repo


def commit(repo: Repo, message: str) -> None:
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-qm", message)


def near_duplicate_search(repo: Repo) -> tuple[int, float]:
    """(pairs, seconds) of prepare's near-duplicate search over the ingested images."""
    settings = load_params(repo.root / "params.yaml").prepare
    images = store.read_interim(repo.root / "data" / "interim").images
    found = descriptors(images, block_rows(images))
    start = time.perf_counter()
    distance = settings.near_duplicate_distance
    pairs = near_duplicate_pairs(found.hashes, distance, thumbnails=found.thumbnails)
    return len(pairs), time.perf_counter() - start


def predict(repo: Repo, count: int) -> tuple[int, Timing]:
    """(files, timing) of `imgpipe predict` on `count` raw files spread over all of them."""
    files = image_files(repo.root / "data" / "raw")
    chosen = files[:: max(1, len(files) // count)][:count]
    return len(chosen), repo.timed("predict", BIN / "imgpipe", "predict", "models/model.keras",
                                   *chosen)  # fmt: skip


# Each pattern adds `count` photos of seeds from `first` on and returns their paths.
def appended(raw: Path, staging: Path, count: int, size, first: int) -> list[Path]:
    """bench.ingest's names go on counting from `first` (N), after every existing one."""
    before = set(image_files(raw))
    generate(raw, count, size, len(class_folders(raw)), first)
    return sorted(set(image_files(raw)) - before)


def random_places(raw: Path, staging: Path, count: int, size, first: int) -> list[Path]:
    """Each beside a random existing photo: photo_000123_new.jpg after photo_000123.jpg."""
    generate(staging, count, size, 1, first)
    beside = random.Random(0).sample(image_files(raw), count)
    added = [old.with_name(f"{old.stem}_new{old.suffix}") for old in beside]
    for new, target in zip(image_files(staging), added, strict=True):
        new.rename(target)
    return added


def sub_folders(raw: Path, staging: Path, count: int, size, first: int) -> list[Path]:
    """In batch_2/ of the first half of the class folders."""
    classes = class_folders(raw)[: max(1, len(class_folders(raw)) // 2)]
    generate(staging, count, size, len(classes), first)
    for made, folder in zip(class_folders(staging), classes, strict=True):
        made.rename(folder / "batch_2")
    return [path for folder in classes for path in image_files(folder / "batch_2")]


PATTERNS = {"appended": appended, "random": random_places, "sub-folder": sub_folders}


def class_folders(raw: Path) -> list[Path]:
    return sorted(path for path in raw.iterdir() if path.is_dir())


@dataclass(frozen=True)
class Growth:
    raw_pushed: Usage
    raw_cached: Usage
    arrays_pushed: Usage
    arrays_cached: Usage
    model_pushed: Usage
    arrays: Usage  # data/interim + data/processed after the growth
    repro_seconds: float
    prepare: Timing  # its command in that repro, with the cache and outputs of the last


def arrays(repo: Repo) -> Usage:
    return usage(repo.root / "data" / "interim") + usage(repo.root / "data" / "processed")


def grow(repo: Repo) -> Growth:
    """Track, rebuild and push the added photos, each step's growth apart."""
    raw_cached = repo.growth(repo.cache, DVC, "add", "data/raw")
    start = time.perf_counter()
    arrays_cached = repo.growth(repo.cache, DVC, "repro", "prepare")
    repo.run(DVC, "repro")
    seconds = time.perf_counter() - start
    return Growth(
        raw_pushed=repo.growth(repo.remote, DVC, "push", "data/raw.dvc"),
        raw_cached=raw_cached,
        arrays_pushed=repo.growth(repo.remote, DVC, "push", "ingest", "prepare"),
        arrays_cached=arrays_cached,
        model_pushed=repo.growth(repo.remote, DVC, "push"),
        arrays=arrays(repo),
        repro_seconds=seconds,
        prepare=read_timing(repo.timings / "prepare"),
    )


def link_tree(source: Path, target: Path) -> None:
    """A copy of `source` made of hard links: DVC never writes into a stored object."""
    shutil.copytree(source, target, copy_function=os.link)


def restore(repo: Repo, base: Path, added: list[Path]) -> None:
    """Back to the pushed state kept in `base`: the photos, git, the cache, the remote."""
    for path in added:
        path.unlink()
    for folder in {path.parent for path in added}:
        if not any(folder.iterdir()):  # batch_2/
            folder.rmdir()
    repo.run("git", "reset", "-q", "--hard")
    for kept, folder in [(base / "cache", repo.cache), (base / "remote", repo.remote)]:
        shutil.rmtree(folder)
        link_tree(kept, folder)
    repo.run(DVC, "checkout", "--force")


def measure(count: int, args: argparse.Namespace) -> None:
    raw = photos(args.work, count, args.photo_size, args.classes)
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        scratch = Path(scratch)
        repo = new_repo(scratch, raw, args)
        rows = [("dvc add data/raw", repo.timed("add", DVC, "add", "data/raw"), None)]
        commit(repo, "raw images")
        for stage in STAGES:
            rows.append((stage, *repo.repro(stage)))
            if stage == "prepare":
                pairs, seconds = near_duplicate_search(repo)
                search = Timing(seconds, None)
                rows.append((f"near-duplicate search, {pairs:,} pairs", search, None))
        files, timing = predict(repo, args.predict)
        rows.append((f"predict, {files:,} files", timing, None))
        commit(repo, "pipeline")
        pushed = usage(repo.remote)
        rows.append(("dvc push, all", repo.timed("push", DVC, "push"), None))
        pushed = usage(repo.remote) - pushed
        base = scratch / "base"
        link_tree(repo.cache, base / "cache")
        link_tree(repo.remote, base / "remote")
        sizes = usage(repo.root / "data" / "raw"), arrays(repo)
        new = max(1, count // 100)
        growths, added = {}, []
        for index, name in enumerate(args.patterns):
            pattern = PATTERNS[name]
            if index:
                restore(repo, base, added)
            staging = scratch / f"new-{name}"
            added = pattern(repo.root / "data" / "raw", staging, new, args.photo_size,
                            count + index * new)  # fmt: skip
            growths[name] = grow(repo)
    print_stages(count, args, rows, sizes, pushed)
    if growths:
        first = next(timing for name, timing, _ in rows if name == "prepare")
        print_growth(new, growths, first)


def print_stages(count: int, args, rows, sizes: tuple[Usage, Usage], pushed: Usage) -> None:
    (photo_w, photo_h), (width, height) = args.photo_size, args.size
    print(f"\n### {count:,} photos {photo_w}×{photo_h}, {args.classes} classes → "
          f"{width}×{height} {args.color_mode}, {args.epochs} epoch(s)\n")  # fmt: skip
    print("| step | wall s | peak RSS MiB | dvc repro s |")
    print("|---|---|---|---|")
    for name, timing, repro in rows:
        rss = "–" if timing.peak_rss is None else f"{timing.peak_rss / MiB:,.0f}"
        whole = "–" if repro is None else f"{repro:.2f}"
        print(f"| {name} | {timing.seconds:.2f} | {rss} | {whole} |")
    raw, data = sizes
    print(f"\nraw {raw.bytes / MB:,.1f} MB in {raw.files:,} files; arrays (data/interim + "
          f"data/processed) {data.bytes / MB:,.1f} MB in {data.files:,} files;\nfirst push "
          f"{pushed.bytes / MB:,.1f} MB in {pushed.files:,} files")  # fmt: skip


def print_growth(new: int, growths: dict[str, Growth], full_prepare: Timing) -> None:
    print(f"\nAfter adding 1% ({new:,} photos); MB (files); % of the arrays' bytes after it; "
          "prepare's command, % of its first run's:\n")  # fmt: skip
    print("| +1% | raw pushed | raw cached | arrays pushed | arrays cached | model pushed "
          "| repro s | prepare s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, growth in growths.items():
        print(f"| {name} | {sized(growth.raw_pushed)} | {sized(growth.raw_cached)} "
              f"| {sized(growth.arrays_pushed, growth.arrays)} "
              f"| {sized(growth.arrays_cached, growth.arrays)} "
              f"| {sized(growth.model_pushed)} | {growth.repro_seconds:.1f} "
              f"| {growth.prepare.seconds:.2f} "
              f"{100 * growth.prepare.seconds / full_prepare.seconds:.0f}% |")  # fmt: skip


def sized(used: Usage, of: Usage | None = None) -> str:
    """MB (files), and the share of `of`'s bytes when given."""
    shown = f"{used.bytes / MB:,.2f} ({used.files:,})"
    return f"{shown} {100 * used.bytes / of.bytes:.0f}%" if of else shown


def dimensions(text: str) -> tuple[int, int]:
    width, height = map(int, text.split("x"))
    return width, height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000, 200_000])
    parser.add_argument("--size", type=dimensions, default=(64, 64),
                        help="WIDTHxHEIGHT that ingest resizes to")  # fmt: skip
    parser.add_argument("--color-mode", choices=["grayscale", "rgb"], default="rgb")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--photo-size", type=dimensions, default=(96, 72),
                        help="WIDTHxHEIGHT of the generated photos")  # fmt: skip
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--predict", type=int, default=1000, help="raw files to predict")
    parser.add_argument("--patterns", nargs="*", choices=list(PATTERNS), default=list(PATTERNS),
                        help="ways of adding 1%% to measure; none: the stages only")  # fmt: skip
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "imgpipe-scale",
        help="keeps the photos; each repository lives here while measured",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"{usable_cores()} cores; DVC remote: a local folder")
    for count in args.sizes:
        measure(count, args)


if __name__ == "__main__":
    main()
