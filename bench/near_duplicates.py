"""Prepare's near-duplicate search against the all-pairs search it replaced, in-process.

    python -m bench.near_duplicates --sizes 20000 50000 200000 1000000 --today-up-to 200000
    python -m bench.near_duplicates --incremental --sizes 200000

For each size N: N random 256-bit hashes, 1% of them replaced by near-copies of
others (each bit flipped with probability 0.05, so about 13 bits from their
original), searched at prepare's default max_distance of 24. Times
`pipeline.near_duplicates.near_duplicate_pairs` (faiss's binary flat index on all
cores) and, up to --today-up-to hashes, the numpy all-pairs search prepare had
before it (one core, copied below as the reference, not product code), checks
that both give the same pairs in the same order, and prints a table of seconds
and today ÷ new. Above --today-up-to, today's time is extrapolated from the
largest size measured as N²: both searches compare every pair.

With --incremental, for each size N the hashes are given to prepare's cache (in a
temporary folder) without a random 1% of them; then the full search of all N is
timed against prepare_cache.pairs_of with that cache (the kept pairs mapped to
today's rows, the 1% searched against all, the pairs kept again), and the two are
checked to be the same pairs in the same order.
"""

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from pipeline.cores import usable_cores
from pipeline.near_duplicates import near_duplicate_pairs
from pipeline.prepare_cache import PrepareCache, pairs_of

DISTANCE = 24  # prepare.near_duplicate_distance's default


def today_pairs(hashes: np.ndarray, max_distance: int, block: int = 512) -> np.ndarray:
    """prepare.near_duplicate_pairs as it was at c4780ce: every pair, a block of rows at a
    time against the rows from that block on, vectorised with numpy on one core."""
    pairs = []
    starts = range(0, len(hashes), block)
    for start in tqdm(starts, desc="today", unit="block", disable=None, leave=False):
        rows, later = hashes[start : start + block], hashes[start:]
        distances = np.zeros((len(rows), len(later)), np.uint16)
        for word in range(hashes.shape[1]):
            distances += np.bitwise_count(rows[:, None, word] ^ later[None, :, word])
        first, second = np.nonzero(distances <= max_distance)
        keep = second > first
        pairs.append(np.stack([first[keep], second[keep]], axis=1) + start)
    return np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64)


def hashes_with_copies(count: int, seed: int = 0) -> np.ndarray:
    """(count, 4) uint64: random hashes, 1% of them overwritten by near-copies of others."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, (count, 4), dtype=np.uint64)
    copies = rng.choice(count, (count // 100, 2), replace=False)  # (copy, original) rows
    flips = np.packbits(rng.random((len(copies), 256)) < 0.05, axis=1).view(">u8")
    hashes[copies[:, 0]] = hashes[copies[:, 1]] ^ flips.astype(np.uint64)
    return hashes


def timed(search, *args) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    pairs = search(*args)
    return pairs, time.perf_counter() - start


def incremental(sizes: list[int], block: int) -> None:
    """The full search against the cache's after adding 1%, at each size."""
    print("| hashes | new | pairs | full/s | incremental/s | incremental ÷ full |")
    print("|---|---|---|---|---|---|")
    for count in sorted(sizes):
        hashes = hashes_with_copies(count)
        shas = [f"{i:064x}" for i in range(count)]  # stand-ins for the files' sha256
        old = np.sort(np.random.default_rng(1).permutation(count)[count // 100 :])
        with tempfile.TemporaryDirectory() as folder:
            cache = PrepareCache(Path(folder) / "prepared.sqlite", "bench")
            pairs_of(hashes[old], [shas[i] for i in old], DISTANCE, cache)
            expected, full = timed(near_duplicate_pairs, hashes, DISTANCE, block)
            pairs, since = timed(pairs_of, hashes, shas, DISTANCE, cache)
            cache.close()
        if not np.array_equal(pairs, expected):
            raise SystemExit(f"at {count} hashes the searches differ")
        row = [f"{count:,}", f"{count - len(old):,}", f"{len(pairs):,}", f"{full:.2f}"]
        print(f"| {' | '.join(row)} | {since:.3f} | {since / full:.1%} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 200_000])
    parser.add_argument("--today-up-to", type=int, default=200_000)
    parser.add_argument("--block", type=int, default=16384, help="near_duplicate_pairs' tiles")
    parser.add_argument(
        "--incremental", action="store_true", help="full search against the cache's after +1%%"
    )
    args = parser.parse_args()
    print(f"faiss {faiss.__version__} on {usable_cores()} cores, max_distance {DISTANCE}\n")
    if args.incremental:
        incremental(args.sizes, args.block)
        return
    print("| hashes | pairs | today/s | new/s | today ÷ new |")
    print("|---|---|---|---|---|")
    measured = None  # (N, seconds) of today's largest run
    for count in sorted(args.sizes):
        hashes = hashes_with_copies(count)
        pairs, new = timed(near_duplicate_pairs, hashes, DISTANCE, args.block)
        if count <= args.today_up_to:
            expected, today = timed(today_pairs, hashes, DISTANCE)
            if not np.array_equal(pairs, expected):
                raise SystemExit(f"at {count} hashes the searches differ")
            measured, shown = (count, today), f"{today:.2f}"
        elif measured:
            today = measured[1] * (count / measured[0]) ** 2
            shown = f"~{today:.0f} (extrapolated)"
        else:
            today, shown = None, "–"
        ratio = f"{today / new:.1f}×" if today else "–"
        print(f"| {count:,} | {len(pairs):,} | {shown} | {new:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
