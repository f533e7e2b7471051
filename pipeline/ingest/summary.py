"""Ingest's one-screen account of a run: verdicts per class and the first problems."""

from pathlib import Path

from pipeline import store
from pipeline.ingest.verdicts import VERDICTS


def summary(interim: store.Interim, out: Path, max_rows: int = 12) -> str:
    """A one-screen account of the run: verdicts per class and the first problems."""
    files = interim.report["files"]
    lines = [
        f"ingest: {len(interim.manifest)} images in "
        f"{len({row.label for row in interim.manifest})} classes -> {out}",
    ]
    if folders := interim.report["split_folders"]:
        named = ", ".join(
            f"{name}/" if name == split else f"{name}/ ({split})" for name, split in folders.items()
        )
        lines.append(f"  split folders {named}: the classes are the folders inside them")
    lines += [
        "  " + ", ".join(f"{count} {verdict}" for verdict, count in files.items()),
        f"  {'class':<20}" + "".join(f"{verdict:>12}" for verdict in VERDICTS),
    ]
    classes = interim.report["classes"]
    for name, counts in list(classes.items())[:max_rows]:
        lines.append(f"  {name[:20]:<20}" + "".join(f"{counts[v]:>12}" for v in VERDICTS))
    if len(classes) > max_rows:
        lines.append(f"  ... {len(classes) - max_rows} more classes in {out / 'report.json'}")
    for name, counts in classes.items():
        if counts["accepted"] == 0:
            lines.append(f"warning: class folder '{name}' has no usable image; it is not a class")
    lines.extend(f"warning: {warning}" for warning in interim.report["warnings"])
    problems = [(r.path, r.reason) for r in interim.quarantine] + [
        (r.path, r.detail) for r in interim.duplicates
    ]
    for path, reason in problems[:5]:
        lines.append(f"  {path}: {reason}")
    if len(problems) > 5:
        lines.append(f"  ... see {out / 'quarantine.csv'} and {out / 'duplicates.csv'}")
    return "\n".join(lines)
