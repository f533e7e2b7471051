"""The CPU cores this process may use: what parallel work is sized to."""

import os


def usable_cores() -> int:
    """The cores the scheduler lets this process run on (a container's or `taskset`'s
    limit), which may be fewer than the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
