"""Prepare's near-duplicate search against the all-pairs search it replaced, in-process.

    python -m bench.near_duplicates --sizes 20000 50000 200000 1000000 --today-up-to 200000

For each size N: N random 256-bit hashes, 1% of them replaced by near-copies of
others (each bit flipped with probability 0.05, so about 13 bits from their
original), searched at prepare's default max_distance of 24. Times
`pipeline.near_duplicates.near_duplicate_pairs` (faiss's binary flat index on all
cores) and, up to --today-up-to hashes, the numpy all-pairs search prepare had
before it (one core, copied below as the reference, not product code), checks
that both give the same pairs in the same order, and prints a table of seconds
and today ÷ new. Above --today-up-to, today's time is extrapolated from the
largest size measured as N²: both searches compare every pair.
"""

import argparse
import time

import faiss
import numpy as np
from tqdm import tqdm

from pipeline.cores import usable_cores
from pipeline.near_duplicates import near_duplicate_pairs

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 200_000])
    parser.add_argument("--today-up-to", type=int, default=200_000)
    parser.add_argument("--block", type=int, default=16384, help="near_duplicate_pairs' tiles")
    args = parser.parse_args()
    print(f"faiss {faiss.__version__} on {usable_cores()} cores, max_distance {DISTANCE}\n")
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
