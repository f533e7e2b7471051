"""The one exception type a stage raises for a problem the user can fix, and how any
exception is told in one line."""

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
