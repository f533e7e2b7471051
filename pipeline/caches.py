"""imgpipe's caches (ingest's decode cache, prepare's hashes and pairs): SQLite files that
let a re-run skip work already done, safe to delete at any time.

DVC deletes a stage's outputs before running it again, so the caches live outside
them. SQLite commits whole transactions, so a killed run never leaves a half-written
entry. Every cache file carries one mark in SQLite's header (PRAGMA application_id),
and a cache only ever opens, sets aside or replaces a file with that mark: any other
file at its path is refused, never touched. Each cache creates only its own tables,
so two could even share a file. A marked file that is damaged (torn pages) is set
aside, and the stage does its work again with a new one.
"""

import contextlib
import itertools
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

from pipeline.errors import NotOurs, PipelineError

# "imgp" in SQLite's header: the mark of imgpipe's cache files.
APPLICATION_ID = 0x696D6770
SQLITE_HEADER = b"SQLite format 3\x00"
# The tables of decode caches made before the mark, which are taken as marked.
UNMARKED_TABLES = {"results", "hashes", "kept_array"}

T = TypeVar("T")


class Kind(NamedTuple):
    """One stage's cache, as its messages name it."""

    stage: str  # the stage that keeps it: "ingest"
    name: str  # "decode cache"
    env: str  # the environment variable that names its path
    without: str  # what the stage does without it: "decoding every file"


def use(path: Path | None, kind: Kind, work: Callable[[Path | None], T]) -> T:
    """work(path), where `path` is the cache (None: none). A cache whose folder is not
    writable is left out, with a warning; a damaged one is set aside, with a warning, and
    the work done again with a new one."""
    if path is not None and not writable(path):
        print(
            f"{kind.stage}: warning: the {kind.name}'s folder {path.parent} is not writable; "
            f"{kind.without} without it (pass --no-cache, or point --cache or {kind.env} at "
            "a writable path)",
            file=sys.stderr,
        )
        path = None
    try:
        return work(path)
    except sqlite3.DatabaseError as error:
        if not is_damaged(error):  # busy past the timeout, read-only, full: not ours to fix
            raise PipelineError(
                f"the {kind.name} {path} cannot be used ({error}); run again with --no-cache or "
                f"another --cache path, or after the {kind.stage} that holds it ends"
            ) from None
        # Only a cache: set it aside and do the work again with a new one.
        aside = set_aside(path)
        print(
            f"{kind.stage}: warning: the {kind.name} {path} is damaged ({error}); moved it to "
            f"{aside} and {kind.without} again",
            file=sys.stderr,
        )
        return work(path)


def connect(path: Path, kind: Kind, schema: str) -> sqlite3.Connection:
    """The cache at `path` to read and write, made (with its folders and mark) if need be;
    a file there that is not an imgpipe cache is refused (NotOurs)."""
    claim(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    connection = sqlite3.connect(path, timeout=60)
    if new:  # set before any table, or never: the pages rows free can leave the file
        connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
    connection.executescript(schema)
    if connection.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    return connection


def claim(path: Path, kind: Kind) -> None:
    """Refuse a path that holds anything but one of imgpipe's cache files (NotOurs)."""
    try:
        with path.open("rb") as file:
            header = file.read(100)
    except (FileNotFoundError, IsADirectoryError):  # nothing to touch; SQLite says why not
        return
    if header.startswith(SQLITE_HEADER):
        mark = int.from_bytes(header[68:72], "big")
        if mark == APPLICATION_ID or (mark == 0 and _tables(path) == UNMARKED_TABLES):
            return
    raise NotOurs(
        f"--cache {path} is not an imgpipe {kind.name}, and {kind.stage} never moves or "
        "overwrites a file it did not create: name a new file (or --no-cache)"
    )


def _tables(path: Path) -> set[str]:
    try:
        uri = path.resolve().as_uri() + "?mode=ro"
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as database:
            return {name for (name,) in database.execute(query)}
    except sqlite3.DatabaseError:
        return set()


def is_damaged(error: sqlite3.DatabaseError) -> bool:
    """SQLite's "file is not a database" and "database disk image is malformed" are plain
    DatabaseErrors; busy, locked, full or read-only files are OperationalErrors."""
    return type(error) is sqlite3.DatabaseError


def writable(path: Path) -> bool:
    """Whether the cache at `path` can be created or written (not a read-only file system,
    nor a folder without write permission)."""
    folder = path.parent
    while not folder.exists():  # the cache makes the folders it needs
        folder = folder.parent
    return os.access(folder, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def set_aside(path: Path) -> Path:
    """Move a damaged cache out of the way (kept, not deleted) to a name not yet taken;
    returns its new path."""
    for number in itertools.count():
        aside = path.with_name(path.name + ".damaged" + (f".{number}" if number else ""))
        with contextlib.suppress(FileExistsError):
            os.link(path, aside)  # unlike a rename, never replaces a file already there
            path.unlink()
            return aside


def execute_in(connection: sqlite3.Connection, query: str, key: str, values: list[str]) -> list:
    """Run `query` (its WHERE clause ending "IN ({})") for `key` and each of `values`, one
    statement per batch of 500, not per value; the rows it gives."""
    rows = []
    for start in range(0, len(values), 500):
        batch = values[start : start + 500]
        rows += connection.execute(query.format(", ".join("?" * len(batch))), (key, *batch))
    return rows
