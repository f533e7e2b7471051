"""The walk of the raw folder: every file under it, in sorted order, as a candidate image of
its class, ignored, or refused before it is read.

Rules kept here: class folders are the top-level folders, or, when every top-level
folder is named like a split (SPLIT_FOLDERS: train/, val/, test/, ...), the folders
inside those, each image then keeping its folder's split; hidden files and folders
and the folders tools keep beside images (TOOL_FOLDERS) are ignored, and so are
files known not to be images; a link is followed only when it stays inside the raw
folder (a loop is refused, not followed); a name that is not UTF-8, a named pipe,
socket or device, and a file that vanished are refused with a reason.
"""

import os
import stat
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

from pipeline import store
from pipeline.errors import PipelineError
from pipeline.ingest.cache import signature
from pipeline.ingest.decode import NOT_REGULAR, unreadable

# Files people keep beside their images; anything else is tried as an image.
NOT_IMAGES = frozenset(
    {
        *(".txt", ".md", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".xml", ".yaml", ".yml"),
        *(".html", ".htm", ".pdf", ".doc", ".docx", ".zip", ".tar", ".gz", ".7z", ".db"),
        *(".ini", ".log", ".py", ".ipynb", ".dvc", ".mp4", ".mov", ".avi", ".mkv", ".mp3", ".wav"),
    }
)

# Folders that tools keep beside images: a Mac zip's resource forks, a Synology NAS's
# thumbnails (which would otherwise pass as more images of the class).
TOOL_FOLDERS = frozenset({"__MACOSX", "@eaDir"})

# The names people give split folders, matched whatever their case, and the split each
# one holds: the one list of them.
SPLIT_FOLDERS = {
    **dict.fromkeys(("train", "training"), "train"),
    **dict.fromkeys(("val", "valid", "validation", "dev"), "val"),
    **dict.fromkeys(("test", "testing"), "test"),
}

LINK_OUT = "link resolves outside the raw data folder"

NOT_UTF8 = "name is not UTF-8 (shown with \\x escapes), which the manifest cannot hold: rename it"


class Candidate(NamedTuple):
    """A file that may be an image of a class."""

    path: str  # relative to the raw folder, with '/' separators
    label: str
    given_split: str  # the split of its split folder; "" in plain class folders
    signature: tuple[int, int, int]  # see cache.signature


@dataclass(frozen=True)
class Scan:
    """What a walk of the raw folder found, before any file is decoded."""

    candidates: list[Candidate]
    ignored: list[str]
    refused: list[store.QuarantineRow]  # links out of the raw folder, files that vanished
    classes: list[str]  # every class folder, even one with no usable image, sorted
    split_folders: dict[str, str]  # each split folder's split; {} for plain class folders

    def class_of(self, path: str) -> str | None:
        """The class folder a path is in; None for a file outside every class folder."""
        depth = 1 if self.split_folders else 0
        parts = path.split("/")
        return parts[depth] if len(parts) > depth + 1 else None


def scan(raw: Path) -> Scan:
    """List every file under `raw`, in sorted order whatever order the file system gives."""
    if not raw.is_dir():
        raise PipelineError(f"{raw} is not a folder; expected {raw}/<class>/<image files>")
    root = raw.resolve()
    layout = split_folders(raw)
    candidates, ignored, refused, classes = [], [], [], set()

    # Plain strings, not Path objects: this runs once per file on every re-run.
    def walk(folder: str, prefix: str, label: str | None, split: str) -> None:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=attrgetter("name"))
        for entry in entries:
            relative = prefix + entry.name
            if not _utf8(entry.name):  # e.g. Latin-1 names, as an old zip unpacks them
                bad = _files_of(entry, relative)
                refused.extend(store.QuarantineRow(_escaped(path), NOT_UTF8) for path in bad)
            # realpath and isdir, not Path.resolve and is_dir: they raise on a link loop
            elif entry.is_symlink() and not Path(os.path.realpath(entry.path)).is_relative_to(root):
                refused.append(store.QuarantineRow(relative, LINK_OUT))
            elif hidden(entry.name):
                ignored.extend(_files_of(entry, relative))
            elif entry.is_dir(follow_symlinks=False):
                if label is None and layout and not prefix:  # a split folder, not a class
                    walk(entry.path, relative + "/", None, layout[entry.name])
                else:
                    if label is None:
                        classes.add(entry.name)
                    walk(entry.path, relative + "/", label or entry.name, split)
            elif entry.is_symlink() and os.path.isdir(entry.path):
                ignored.append(relative)  # a folder link inside raw: its files are reached directly
            elif label is None or known_not_image(entry.name):
                ignored.append(relative)
            else:
                try:
                    facts = entry.stat()  # follows a link inside raw to its target
                except OSError as error:
                    refused.append(store.QuarantineRow(relative, unreadable(error)))
                    continue
                if not stat.S_ISREG(facts.st_mode):
                    refused.append(store.QuarantineRow(relative, NOT_REGULAR))
                    continue
                candidates.append(Candidate(relative, label, split, signature(facts)))

    walk(str(raw), "", None, "")
    return Scan(candidates, ignored, refused, sorted(classes), layout)


def split_folders(raw: Path) -> dict[str, str]:
    """{folder name: split} when every top-level folder of `raw` (hidden and tool folders
    aside) is named like a split, else {}: then the classes are the folders inside them."""
    with os.scandir(raw) as listing:
        folders = sorted(
            entry.name
            for entry in listing
            if entry.is_dir(follow_symlinks=False) and not hidden(entry.name) and _utf8(entry.name)
        )
    splits = {name: split_named(name) for name in folders}
    return splits if folders and all(splits.values()) else {}


def split_named(name: str) -> str | None:
    """The split a folder's name says it holds (Validation/ -> val), or None."""
    return SPLIT_FOLDERS.get(name.lower())


def _utf8(name: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (os.scandir gives them as surrogates)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _escaped(path: str) -> str:
    """`path` with each byte that is not UTF-8 written as a \\x escape."""
    return path.encode(errors="surrogateescape").decode(errors="backslashreplace")


def hidden(name: str) -> bool:
    """A file or folder that never holds data: hidden (.DS_Store, .ipynb_checkpoints), or
    one of TOOL_FOLDERS."""
    return name.startswith(".") or name in TOOL_FOLDERS


def known_not_image(name: str) -> bool:
    return _extension(name) in NOT_IMAGES


def _extension(name: str) -> str:
    """os.path.splitext(name)[1].lower() for a name not starting with a dot, at a third of
    the cost (it runs once per file on every re-run)."""
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def _files_of(entry: os.DirEntry, relative: str) -> list[str]:
    """`relative` itself, or every file under it when it is a folder (not a folder link)."""
    if not entry.is_dir(follow_symlinks=False):
        return [relative]
    files = (path for path in Path(entry.path).rglob("*") if path.is_file())
    return sorted(f"{relative}/{path.relative_to(entry.path).as_posix()}" for path in files)
