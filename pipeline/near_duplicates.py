"""Near-duplicates: a perceptual hash of each image, and every pair of hashes within a
distance, found exactly.

The hashes are made a block of images at a time, so memory stays that of a block;
the pairs are found by comparing every pair on all cores (faiss's binary flat
index), so time grows as N^2 / 2 and memory as N; or, given the pairs among the
images but a few new ones, only the new ones are searched, against all (time
new x N). Prepare keeps each group of near-duplicates in one split.
"""

import faiss
import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline import files
from pipeline.cores import usable_cores


def _dct_matrix(size: int) -> np.ndarray:
    k, n = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.cos(np.pi * (2 * n + 1) * k / (2 * size))


DCT_32 = _dct_matrix(32)
THUMBNAIL_BYTES = DCT_32.nbytes  # an image's 32x32 float64 thumbnail for its hash

# Bumped whenever perceptual_hashes would give other hashes for the same pixels: prepare's
# cache keeps them.
PHASH_VERSION = 1


def perceptual_hashes(
    images: np.ndarray, rows: int, indices: np.ndarray | None = None
) -> np.ndarray:
    """(N, 4) uint64: a 256-bit perceptual hash (pHash) of each (H, W, C) uint8 image, or
    of the images at `indices` (sorted) only, reading no other.

    A pHash as imagehash computes one, vectorised over a block of `rows` images at a
    time: a 32x32 grayscale thumbnail, its 2-D DCT, and one bit per frequency of the
    lowest 16x16, set where it is above their median. 256 bits rather than the usual
    64: on the MNIST demo the 64-bit hash gives different digits identical hashes.
    """
    hashes = [np.empty((0, 4), np.uint64)]
    total = len(images) if indices is None else len(indices)
    with tqdm(
        total=total, desc="perceptual hashes", unit="img", disable=None, leave=False
    ) as progress:
        for block in files.read_blocks(images, rows, indices):
            hashes.append(_block_hashes(block))
            progress.update(len(block))
            del block  # now, not once the next block is read
    return np.concatenate(hashes)


def _block_hashes(images: np.ndarray) -> np.ndarray:
    small = np.stack(
        [
            np.asarray(
                pil_image(image).convert("L").resize((32, 32), Image.Resampling.BOX), np.float64
            )
            for image in images
        ]
    )  # (N, 32, 32)
    low = (DCT_32 @ small @ DCT_32.T)[:, :16, :16].reshape(len(images), 256)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64)  # (N, 4)


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int, block: int = 16384) -> np.ndarray:
    """(P, 2) index pairs i < j whose hashes differ in at most `max_distance` bits, sorted
    by i, then j.

    Exact: every pair is compared, with faiss's binary flat index on all cores, in
    tiles of `block` rows against `block` rows whose codes (512 KiB at 16,384 rows of
    32 bytes) stay in a core's cache; at a million hashes, one index over all of them
    is bound by memory and 1.7 times slower. Only tiles on or right of the diagonal
    are searched, so time grows as N^2 / 2 distances; memory as N (the codes, copied
    once into the tiles' indexes) plus the pairs found.
    """
    if max_distance < 0:
        return np.empty((0, 2), np.int64)
    codes = _codes(hashes)
    starts = range(0, len(codes), block)
    indexes = [_binary_index(codes[start : start + block]) for start in starts]
    faiss.omp_set_num_threads(usable_cores())
    tiles = [(row, column) for row in range(len(starts)) for column in range(row, len(starts))]
    pairs = [np.empty((0, 2), np.int64)]
    for row, column in tqdm(tiles, desc="near-duplicates", unit="tile", disable=None, leave=False):
        queries = codes[starts[row] : starts[row] + block]
        found = _close_pairs(indexes[column], queries, max_distance)
        found += [starts[row], starts[column]]
        pairs.append(found[found[:, 1] > found[:, 0]])  # only a diagonal tile has j <= i
    pairs = np.concatenate(pairs)
    # Each tile's pairs come by i then j, and a row's tiles by j: a stable sort by i is enough.
    return pairs[np.argsort(pairs[:, 0], kind="stable")]


def near_duplicate_pairs_given(
    hashes: np.ndarray, known: np.ndarray, new: np.ndarray, max_distance: int, block: int = 16384
) -> np.ndarray:
    """near_duplicate_pairs(hashes, max_distance), given `known`: every such pair i < j of
    two rows not in `new` (sorted row indices). Only the new rows are searched, against
    all, so time grows as len(new) x N distances: less than a full search's N^2 / 2 while
    under half the rows are new, and a full search is made otherwise."""
    if max_distance < 0:
        return np.empty((0, 2), np.int64)
    if 2 * len(new) >= len(hashes):
        return near_duplicate_pairs(hashes, max_distance, block)
    pairs = np.concatenate([known, _pairs_with(hashes, new, max_distance, block)])
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _pairs_with(hashes: np.ndarray, new: np.ndarray, max_distance: int, block: int):
    """(P, 2) pairs i < j within `max_distance` bits of which at least one is in `new`."""
    codes = _codes(hashes)
    queries = codes[new]
    faiss.omp_set_num_threads(usable_cores())
    found = [np.empty((0, 2), np.int64)]
    starts = range(0, len(codes), block)  # tiles of the index, as near_duplicate_pairs'
    for start in tqdm(starts, desc="near-duplicates", unit="tile", disable=None, leave=False):
        tile = _close_pairs(_binary_index(codes[start : start + block]), queries, max_distance)
        found.append(np.stack([new[tile[:, 0]], tile[:, 1] + start], axis=1))
    found = np.concatenate(found)
    is_new = np.zeros(len(codes), bool)
    is_new[new] = True
    # Two new rows find each other: the pair is kept once, as the first found it; and no
    # row is paired with itself.
    once = ~is_new[found[:, 1]] | (found[:, 0] < found[:, 1])
    return np.sort(found[once], axis=1)


def _codes(hashes: np.ndarray) -> np.ndarray:
    """(N, 32) uint8: the hashes' bytes, as faiss's binary indexes take them."""
    # Hamming distance is the same whatever the bytes' order, as long as both sides share it.
    return np.ascontiguousarray(hashes, np.uint64).view(np.uint8)


def _binary_index(codes: np.ndarray) -> faiss.IndexBinaryFlat:
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    return index


def _close_pairs(index: faiss.IndexBinaryFlat, queries: np.ndarray, max_distance: int):
    """(P, 2) int64 (query row, index row) within `max_distance` bits, by query row, then
    index row: faiss scans the index in order for each query."""
    # range_search keeps distances strictly below its radius.
    limits, _, rows = index.range_search(queries, max_distance + 1)
    return np.stack(
        [np.repeat(np.arange(len(queries)), np.diff(limits.astype(np.int64))), rows], axis=1
    )


def group_of(count: int, pairs: np.ndarray) -> np.ndarray:
    """For each image, the smallest index in its connected group of near-duplicates."""
    parent = np.arange(count)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(i), root(j)
        parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(count)])


def pil_image(image: np.ndarray) -> Image.Image:
    """The Pillow image of one (H, W, C) uint8 array."""
    return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
