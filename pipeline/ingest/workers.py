"""Decoding on worker processes: results in order, whatever a file does to its worker.

Decoding always runs in worker processes, never in the caller's, whatever their
number: a file that kills its worker (a crash in a C decoder, the out-of-memory
killer) or decodes for longer than ingest.decode_seconds (a watchdog kills that
worker) costs the worker, not the run. The files the workers held are then
decoded again one process each, and the others anew, so the culprit is
quarantined and the run goes on (multiprocessing.Pool would hang). After a
Ctrl-C the workers skip the files already queued, and a worker ends with its
parent, however the parent ends.
"""

import collections
import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.ingest.cache import DecodeCache
from pipeline.ingest.decode import Decoded, decode_file
from pipeline.params import CHANNELS, Ingest


def _too_slow(settings: Ingest) -> Decoded:
    """Not cached (sha256 empty): how long decoding takes depends on the machine."""
    return Decoded(
        "",
        None,
        reason=f"decoding took longer than ingest.decode_seconds = {settings.decode_seconds:g} "
        "s (a crafted file, or a machine far too busy); raise the limit to accept it",
    )


# Per-process state of the decoding workers, set once by `_start_worker`.
_worker: dict = {}


TAKEN, DONE = 1, 2  # a file's state in the workers' shared record of what they decode
CHUNK_BYTES = 4 << 20  # of pixels in a chunk of results; a few chunks a worker are in memory


def _start_worker(settings: Ingest, cache_path: Path | None, key: str, parent: int, shared=None):
    _die_with(parent)
    _worker["settings"] = settings
    _worker["cache"] = DecodeCache(cache_path, key, read_only=True)
    _worker["shared"] = shared


def _die_with(parent: int) -> None:
    """End this worker when its parent ends, however it ends (SIGKILL included): left
    behind, a worker waits for work for ever and holds the parent's output open."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the line above took effect
        os._exit(1)


def _decode_in_worker(job: tuple[int, Path]) -> tuple[int, Decoded | None]:
    index, path = job
    states, started, pids, stop = _worker["shared"]
    if stop.value:  # interrupted (Ctrl-C): skip the files already queued
        return index, None
    started[index], pids[index] = time.monotonic(), os.getpid()  # for the watchdog
    states[index] = TAKEN  # should this process die, the file is a suspect
    result = decode_file(path, _worker["settings"], _worker["cache"])
    states[index] = DONE
    return index, result


def _decode_chunk(jobs: list[tuple[int, Path]]) -> list[tuple[int, Decoded | None]]:
    return [_decode_in_worker(job) for job in jobs]


def _in_order(pool, jobs: list[tuple[int, Path]], chunk: int, ahead: int) -> Iterator:
    """What _decode_in_worker gives for each of `jobs`, in order, decoded in chunks of
    `chunk` with at most `ahead` chunks submitted and not yet taken: unlike pool.map,
    which submits every chunk at once, results never pile up when they are taken more
    slowly than they are made."""
    pending = collections.deque()
    for start in range(0, len(jobs), chunk):
        pending.append(pool.submit(_decode_chunk, jobs[start : start + chunk]))
        if len(pending) >= ahead:
            yield from pending.popleft().result()
    while pending:
        yield from pending.popleft().result()


def _decode_in_own_process(path: Path, state: tuple, answer) -> None:
    _start_worker(*state)
    answer.send(decode_file(path, _worker["settings"], _worker["cache"]))


def _decode_alone(path: Path, state: tuple, context) -> Decoded:
    """Decode one file in a process of its own, so that if it kills the process, or takes
    longer than the limit, the verdict is on that file alone."""
    import signal  # only a run whose decoding killed a process pays for importing it

    settings = state[0]
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_decode_in_own_process, args=(path, state, sender))
    process.start()
    sender.close()  # else recv() would wait for ever on a process that died
    result = None
    try:
        if receiver.poll(settings.decode_seconds):
            result = receiver.recv()
        else:
            process.kill()
            process.join()
            return _too_slow(settings)
    except EOFError:
        pass
    process.join()
    if result is not None:
        return result
    code = process.exitcode
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return Decoded(
        "",
        None,
        reason=f"decoding it killed the process ({how}): a crash in an image decoder, "
        "or the system out of memory",
    )


def _watch(shared, limit: float, overdue: set[int], done) -> None:
    """Kill the worker of any file decoding for longer than `limit` seconds; the pool then
    breaks and decode_in_workers settles the file. Runs in a thread until `done` is set."""
    import signal

    states, started, pids, _ = shared
    taken = np.frombuffer(states, np.int8)
    since = np.frombuffer(started, np.float64)
    while not done.wait(min(0.5, limit / 4)):
        for index in np.flatnonzero((taken == TAKEN) & (since < time.monotonic() - limit)):
            overdue.add(int(index))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids[index], signal.SIGKILL)


def decode_in_workers(
    paths: list[Path],
    settings: Ingest,
    cache: DecodeCache,
    workers: int,
    start_method: str | None = None,
) -> Iterator[Decoded]:
    """Results in the order of `paths`, decoded on `workers` processes, started by
    `start_method` (multiprocessing's default, fork on Linux, unless named).

    Always in worker processes, never in this one, whatever their number: so a file
    that kills its worker (a crash in a C decoder, the out-of-memory killer) or decodes
    for longer than ingest.decode_seconds costs that worker, not the run. The files the
    workers held are then decoded again one process each, and the others anew: the
    culprit is quarantined and the run goes on (multiprocessing.Pool would hang). A
    worker ends with this process, however it ends."""
    if not paths:
        return
    # Only runs that decode pay for importing these.
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context(start_method)
    workers = min(workers, len(paths))
    row_bytes = math.prod(settings.image_size) * CHANNELS[settings.color_mode]
    state = (settings, cache.path, cache.settings_key, os.getpid())
    settled: dict[int, Decoded] = {}  # files decoded alone after a worker died
    done = 0  # results yielded
    while done < len(paths):
        todo = [index for index in range(done, len(paths)) if index not in settled]
        # Few, large chunks (less IPC), each at most CHUNK_BYTES of pixels.
        chunk = max(1, min(256, len(todo) // (workers * 4), CHUNK_BYTES // row_bytes))
        shared = (
            context.RawArray("b", len(paths)),  # each file's state: TAKEN, DONE
            context.RawArray("d", len(paths)),  # when it was taken (time.monotonic)
            context.RawArray("i", len(paths)),  # by which process
            context.RawValue("b", 0),  # stop: skip the queued files
        )
        overdue: set[int] = set()
        finished = threading.Event()
        watchdog = threading.Thread(
            target=_watch, args=(shared, settings.decode_seconds, overdue, finished), daemon=True
        )
        pool = ProcessPoolExecutor(workers, context, _start_worker, (*state, shared))
        watchdog.start()
        try:
            jobs = [(index, paths[index]) for index in todo]
            for index, result in _in_order(pool, jobs, chunk, ahead=2 * workers):
                yield from (settled[before] for before in range(done, index))
                yield result
                done = index + 1
            yield from (settled[after] for after in range(done, len(paths)))
            done = len(paths)
        except BrokenProcessPool:
            states = shared[0]
            suspects = [index for index, taken in enumerate(states) if taken == TAKEN]
            for index in suspects or todo[:1]:  # at least one file settled each time
                if index in overdue:
                    settled[index] = _too_slow(settings)
                else:
                    settled[index] = _decode_alone(paths[index], state, context)
        finally:
            finished.set()
            shared[3].value = 1  # else, after a Ctrl-C, the queued chunks are decoded first
            pool.shutdown(wait=False, cancel_futures=True)
