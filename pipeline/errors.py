"""The one exception type a stage raises for a problem the user can fix."""


class PipelineError(Exception):
    """Bad input data or state; the CLI prints the message (no traceback) and exits 1."""
