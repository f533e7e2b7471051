"""The one exception type a stage raises for a problem the user can fix, and how any
exception is told in one line."""

import errno
import re


class PipelineError(Exception):
    """Bad input data or state; the CLI prints the message (no traceback) and exits 1."""


class NotOurs(PipelineError):
    """A path given to write at holds a file imgpipe did not create, which it never moves
    or overwrites; the CLI exits 2, as for a bad option."""


def one_line(error: BaseException) -> str:
    """'TypeName: message' on one line, and the same on every run: no object addresses
    like '<_io.BytesIO at 0x..>'."""
    message = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(error))
    return " ".join(f"{type(error).__name__}: {message}".split())


# What to do next, by the file system's reason.
NEXT_STEPS = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space",
    errno.EACCES: "fix its permissions or choose another path (see --help)",
    errno.EPERM: "fix its permissions or choose another path (see --help)",
    errno.EROFS: "choose a path on a writable file system (see --help)",
    errno.EEXIST: "a file stands where a folder is needed: move it or choose another path",
    errno.ENOTDIR: "part of the path is a file, not a folder: choose another path",
}


def refused(error: OSError) -> str:
    """'No such file or directory: PATH; ...': the reason, the path, what to do next."""
    where = f": {error.filename}" if error.filename else ""
    if error.filename2:
        where += f" -> {error.filename2}"
    step = NEXT_STEPS.get(error.errno, "check the path (see --help)")
    return f"{error.strerror or error}{where}; {step}, then run the command again"
