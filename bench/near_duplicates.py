"""Prepare's near-duplicate search against the all-pairs search it replaced, in-process.

    python -m bench.near_duplicates --sizes 20000 50000 200000 1000000 --today-up-to 200000
    python -m bench.near_duplicates --incremental --sizes 200000

For each size N: descriptors' hashes of N random images, (N, VARIANTS, 4) as
`near_duplicates.descriptors` makes them: each image's hash as it is and of its crop,
random; 1% of the images replaced by near-copies of others, each hash of the original's
with each bit flipped with probability 0.05 (about 13 bits), and half as many by crops
of others (their hash as it is the original's crop's, so flipped). Searched at prepare's
default max_distance of 24. Times `pipeline.near_duplicates.near_duplicate_pairs`
(faiss's binary flat index on all cores) on the whole rule's hashes (`new`) and on each
image's hash as it is alone (`plain`: the search of the rule before crops), and, up to
--today-up-to images, the numpy all-pairs search prepare had before it on the hashes as
they are (the old rule, one core; copied below as the reference, not product code), and
prints a table of seconds and today ÷ new. Above --today-up-to, today's time is
extrapolated from the largest size measured as N²: both searches compare every pair. Up
to --check-up-to images, checks the pairs against a brute-force reference of the whole
rule, today's search extended to the crops' hashes.

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
from pipeline.near_duplicates import VARIANTS, near_duplicate_pairs
from pipeline.prepare_cache import PrepareCache, pairs_of

DISTANCE = 24  # prepare.near_duplicate_distance's default


def today_pairs(hashes: np.ndarray, max_distance: int, block: int = 512, queries=None):
    """prepare.near_duplicate_pairs as it was at c4780ce: every pair of the (N, 4) hashes,
    a block of rows at a time against the rows from that block on, vectorised with numpy
    on one core. Given (N, 4) `queries` (one each image), each query against every
    image instead: the (query's image, image) pairs."""
    pairs = []
    starts = range(0, len(hashes), block)
    for start in tqdm(starts, desc="today", unit="block", disable=None, leave=False):
        first = 0 if queries is not None else start
        rows = (hashes if queries is None else queries)[start : start + block]
        later = hashes[first:]
        distances = np.zeros((len(rows), len(later)), np.uint16)
        for word in range(hashes.shape[1]):
            distances += np.bitwise_count(rows[:, None, word] ^ later[None, :, word])
        row, column = np.nonzero(distances <= max_distance)
        keep = slice(None) if queries is not None else column > row
        pairs.append(np.stack([row[keep] + start, column[keep] + first], axis=1))
    return np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64)


def reference_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """near_duplicate_pairs' rule by brute force: today's search of the hashes as they
    are, and each transformed hash against every image's as it is; i < j, sorted."""
    pairs = [today_pairs(hashes[:, 0], max_distance)]
    for variant in range(1, hashes.shape[1]):
        pairs.append(today_pairs(hashes[:, 0], max_distance, queries=hashes[:, variant]))
    pairs = np.sort(np.concatenate(pairs), axis=1)
    return np.unique(pairs[pairs[:, 0] < pairs[:, 1]], axis=0)


def hashes_with_copies(count: int, seed: int = 0) -> np.ndarray:
    """(count, VARIANTS, 4) uint64: random hashes, 1% of the images overwritten by
    near-copies of others (every hash of the original's, bits flipped) and 0.5% by crops
    (the hash as it is of the original's crop's)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, (count, VARIANTS, 4), dtype=np.uint64)
    rows = rng.choice(count, (count // 100 + count // 200, 2), replace=False)
    copies, crops = rows[: count // 100], rows[count // 100 :]  # (copy, original) rows
    hashes[copies[:, 0]] = hashes[copies[:, 1]] ^ _flips(rng, (len(copies), VARIANTS))
    hashes[crops[:, 0], 0] = hashes[crops[:, 1], 1] ^ _flips(rng, len(crops))
    return hashes


def _flips(rng, shape) -> np.ndarray:
    """Hashes' bits to flip, each with probability 0.05: `shape` of 4 uint64."""
    shape = np.atleast_1d(shape)
    bits = rng.random((*shape, 256)) < 0.05
    return np.packbits(bits, axis=-1).view(">u8").astype(np.uint64)


def timed(search, *args) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    pairs = search(*args)
    return pairs, time.perf_counter() - start


def incremental(sizes: list[int], block: int) -> None:
    """The full search against the cache's after adding 1%, at each size."""
    print("| images | new | pairs | full/s | incremental/s | incremental ÷ full |")
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
            raise SystemExit(f"at {count} images the searches differ")
        row = [f"{count:,}", f"{count - len(old):,}", f"{len(pairs):,}", f"{full:.2f}"]
        print(f"| {' | '.join(row)} | {since:.3f} | {since / full:.1%} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 200_000])
    parser.add_argument("--today-up-to", type=int, default=200_000)
    parser.add_argument(
        "--check-up-to", type=int, default=50_000, help="checked against the reference up to"
    )
    parser.add_argument("--block", type=int, default=16384, help="near_duplicate_pairs' tiles")
    parser.add_argument(
        "--incremental", action="store_true", help="full search against the cache's after +1%%"
    )
    args = parser.parse_args()
    print(f"faiss {faiss.__version__} on {usable_cores()} cores, max_distance {DISTANCE}\n")
    if args.incremental:
        incremental(args.sizes, args.block)
        return
    print("| images | pairs | today/s | plain/s | new/s | today ÷ new |")
    print("|---|---|---|---|---|---|")
    measured = None  # (N, seconds) of today's largest run
    for count in sorted(args.sizes):
        hashes = hashes_with_copies(count)
        _, plain = timed(near_duplicate_pairs, hashes[:, :1], DISTANCE, args.block)
        pairs, new = timed(near_duplicate_pairs, hashes, DISTANCE, args.block)
        if count <= args.check_up_to and not np.array_equal(
            pairs, reference_pairs(hashes, DISTANCE)
        ):
            raise SystemExit(f"at {count} images the search differs from the reference")
        if count <= args.today_up_to:
            _, today = timed(today_pairs, hashes[:, 0], DISTANCE)
            measured, shown = (count, today), f"{today:.2f}"
        elif measured:
            today = measured[1] * (count / measured[0]) ** 2
            shown = f"~{today:.0f} (extrapolated)"
        else:
            today, shown = None, "–"
        ratio = f"{today / new:.1f}×" if today else "–"
        row = f"| {count:,} | {len(pairs):,} | {shown} | {plain:.2f} | {new:.2f} | {ratio} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
