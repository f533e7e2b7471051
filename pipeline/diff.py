"""What changed in the data between two versions: per class, images added, removed,
relabelled and moved between splits.

Images are matched by content (sha256), so a renamed file is neither added nor
removed. Versions are read from git revisions through DVC's file system, which takes
the files from the DVC cache (or the remote), without checking anything out.
"""

from collections import Counter, defaultdict
from pathlib import Path

from pipeline import store
from pipeline.errors import PipelineError

CHANGES = ("added", "removed", "relabelled", "moved_with_group", "moved")


def compare(before: list[store.SplitRow], after: list[store.SplitRow]) -> dict:
    """Counts of each change per class (of the newer version), plus a total.

    `moved_with_group` are images whose near-duplicate group moved them toward
    test; `moved` is any other change of split, which a fixed salt and fixed
    fractions never cause.
    """
    old = {row.sha256: row for row in before}
    new = {row.sha256: row for row in after}
    counts = defaultdict(Counter)
    for sha256, row in new.items():
        if sha256 not in old:
            counts[row.label]["added"] += 1
            continue
        was = old[sha256]
        if was.label != row.label:
            counts[row.label]["relabelled"] += 1
        if was.split != row.split:
            by_group = bool(row.moved_from or was.moved_from)
            counts[row.label]["moved_with_group" if by_group else "moved"] += 1
    for sha256, row in old.items():
        if sha256 not in new:
            counts[row.label]["removed"] += 1
    table = {label: {c: counts[label][c] for c in CHANGES} for label in sorted(counts)}
    table["total"] = {c: sum(counts[label][c] for label in counts) for c in CHANGES}
    return table


def read_rows(processed: Path, rev: str | None) -> list[store.SplitRow]:
    """The split rows of the prepared folder `processed` at a git revision, or in the work
    tree when `rev` is None."""
    if rev is None:
        if not (processed / "shards.csv").exists():
            raise PipelineError(
                f"{processed} holds no prepared splits; run `dvc repro prepare` first"
            )
        return store.read_split_rows(processed)
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    try:
        versioned = DVCFileSystem(rev=rev)
        return store.read_split_rows(processed, versioned.read_text, f" at {rev}")
    except FileNotFoundError:  # DVC's own words say "neither as a DVC output nor as ..."
        raise PipelineError(
            f"{processed} is not in {rev}: prepare had not run there, or its dvc.lock was not "
            "committed. imgpipe diff compares prepared splits: run `dvc repro prepare` and "
            "commit dvc.lock first"
        ) from None
    except (DvcException, SCMError) as error:
        raise PipelineError(
            f"cannot read {processed} at {rev}: {error}; check the revision, "
            "and `dvc fetch` its data if this machine's DVC cache does not have it"
        ) from None


def render(table: dict) -> str:
    width = max(len("class"), *(len(label) for label in table))
    lines = [f"{'class':<{width}}" + "".join(f"{c:>18}" for c in CHANGES)]
    for label, counts in table.items():
        lines.append(f"{label:<{width}}" + "".join(f"{counts[c]:>18}" for c in CHANGES))
    return "\n".join(lines)
