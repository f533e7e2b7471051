"""Near-duplicates: what a person would call copies of one photo, found exactly.

Two images are near-duplicates when
- their 256-bit mirror-invariant perceptual hashes are within `max_distance` bits, or
  the hash of one's centre cropped by CROP on each side and scaled back is within that
  of the other's: a hash survives resizing, re-encoding, blur, noise and brightness,
  and being mirror-invariant, a horizontal flip (see _hashes); not a crop, which moves
  every frequency; or
- both are low-detail (their 8x8 thumbnails' grey levels spread by at most LOW_DETAIL:
  smooth, nearly uniform) and their 8x8 thumbnails are within LOW_DETAIL_RMS grey levels
  (root mean square) of each other. A low-detail image's hash is not used: its bits are
  noise, which parts copies and joins different smooth images alike.

A mirror-invariant hash rather than a hash of each image mirrored: one symmetric search
finds plain and flipped copies at once, where a mirrored hash costs N^2 distances more
(every ordered pair). It separates distinct photos a little less (on trashnet and
hymenoptera, median distance 116 bits against pHash's 126, 1st percentile 94 against
106) and groups up to 0.7 points fewer copies of a kind (98.9% of 5% crops against
99.6%), still grouping no distinct photo: bench/README.md has both, and a sign-canonical
hash (odd frequencies signed by the largest one's) that flips half its bits wherever
two odd coefficients nearly tie.

The descriptors are made a block of images at a time, so memory stays that of a block,
and keep 2 x 32 bytes of hashes and 64 of thumbnail an image. The pairs are found by
comparing every pair on all cores with faiss, first on the hashes' halves: time grows as
N^2 / 2 distances of the hashes plus N^2 of the crops' (every ordered pair: the crop is
of one side), plus L^2 thumbnail distances of the L low-detail images; memory as N.
Given the pairs among the images but a few new ones, only the new ones are searched,
against all (time new x N). Prepare keeps each group of near-duplicates in one split.
"""

from typing import NamedTuple

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

CROP = 0.05  # of each side: the crop whose hash each image also has
VARIANTS = 2  # hashes of each image: as it is, centre-cropped (both mirror-invariant)
PREFIX_BYTES = 16  # of a hash, on which pairs are searched before the whole is checked
PREFIX_BELOW = 32  # the distances (bits) the prefix is searched at: see _tile
THUMBNAIL_SIDE = 8  # the low-detail route's thumbnails, THUMBNAIL_SIDE^2 grey levels
LOW_DETAIL = 4.0  # the most a low-detail image's thumbnail levels spread (standard deviation)
LOW_DETAIL_RMS = 3.0  # the most two low-detail copies' thumbnails differ (root mean square)

# Bumped whenever descriptors would give others for the same pixels: prepare's cache keeps
# them.
PHASH_VERSION = 3


class Descriptors(NamedTuple):
    """Each image's (N, VARIANTS, 4) uint64 hashes (as it is, cropped) and its
    (N, THUMBNAIL_SIDE^2) uint8 thumbnail."""

    hashes: np.ndarray
    thumbnails: np.ndarray


DESCRIPTOR_BYTES = VARIANTS * 32 + THUMBNAIL_SIDE**2  # one image's, as prepare's cache keeps them


def descriptors(images: np.ndarray, rows: int, indices: np.ndarray | None = None) -> Descriptors:
    """The descriptors of each (H, W, C) uint8 image, or of the images at `indices`
    (sorted) only, reading no other, a block of `rows` images at a time."""
    blocks = [
        Descriptors(
            np.empty((0, VARIANTS, 4), np.uint64), np.empty((0, THUMBNAIL_SIDE**2), np.uint8)
        )
    ]
    total = len(images) if indices is None else len(indices)
    with tqdm(
        total=total, desc="perceptual hashes", unit="img", disable=None, leave=False
    ) as progress:
        for block in files.read_blocks(images, rows, indices):
            blocks.append(_block_descriptors(block))
            progress.update(len(block))
            del block  # now, not once the next block is read
    return Descriptors(*(np.concatenate(parts) for parts in zip(*blocks, strict=True)))


def _block_descriptors(images: np.ndarray) -> Descriptors:
    """A pHash much as imagehash computes one, vectorised over the block: a 32x32
    grayscale thumbnail, its 2-D DCT, and one bit per frequency of the lowest 16x16, made
    mirror-invariant (see _hashes); 256 bits rather than the usual 64, which gives
    different MNIST digits identical hashes. Of the image and of its centre crop."""
    gray = [pil_image(image).convert("L") for image in images]
    width, height = gray[0].size
    box = (CROP * width, CROP * height, (1 - CROP) * width, (1 - CROP) * height)
    small, cropped = (
        np.stack([np.asarray(g.resize((32, 32), Image.Resampling.BOX, box), np.float64)
                  for g in gray])
        for box in (None, box)
    )  # fmt: skip
    hashes = np.stack([_hashes(small), _hashes(cropped)], axis=1)
    side = THUMBNAIL_SIDE
    thumbnails = [np.asarray(g.resize((side, side), Image.Resampling.BOX)) for g in gray]
    return Descriptors(hashes, np.stack(thumbnails).reshape(len(images), side * side))


def _hashes(small: np.ndarray) -> np.ndarray:
    """(N, 4) uint64: the mirror-invariant pHash of each (32, 32) float64 thumbnail. Of
    the 2-D DCT's lowest 16x16 frequencies, mirroring keeps those of even horizontal
    frequency and flips the sign of the odd ones: 128 bits are the even ones above
    their median, 128 the odd ones' absolute values above theirs."""
    low = (DCT_32 @ small @ DCT_32.T)[:, :16, :16]
    even = low[:, :, 0::2].reshape(len(small), 128)
    odd = np.abs(low[:, :, 1::2]).reshape(len(small), 128)
    bits = np.concatenate(
        [part > np.median(part, axis=1, keepdims=True) for part in (even, odd)], axis=1
    )
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64)  # (N, 4)


def near_duplicate_pairs(
    hashes: np.ndarray,
    max_distance: int,
    block: int = 16384,
    thumbnails: np.ndarray | None = None,
) -> np.ndarray:
    """(P, 2) index pairs i < j of near-duplicates, sorted by i, then j: by `hashes`,
    (N, V, 4) as descriptors makes them (the first of the V the image as it is, the
    others transformed: the crop), within `max_distance` bits, and by `thumbnails`
    (none: no low-detail route).

    Exact: every pair is compared, with faiss's binary flat index on all cores, on the
    hashes' first halves (see _tile), in tiles of `block` rows against `block` rows
    whose codes (256 KiB at 16,384 rows of 16 bytes) stay in a core's cache; at a
    million hashes, one index over all of them is bound by memory and 1.7 times slower.
    The pairs the halves find are checked on the whole hashes. The hashes as they are
    are searched on and right of the diagonal only, the transformed ones in every tile,
    so time grows as N^2 / 2 distances, plus N^2 for each transformed hash, plus the
    halves' pairs checked (at 24 bits, 1 in 5,000 of the pairs compared on MNIST's
    digits, 1 in 30,000 on trashnet's photos); memory as N (the codes, their halves
    copied once into the tiles' indexes) plus the pairs found.
    """
    if max_distance < 0:
        return np.empty((0, 2), np.int64)
    codes = _codes(hashes)
    starts = range(0, len(codes), block)
    columns = [_tile(codes[start : start + block, 0], max_distance) for start in starts]
    faiss.omp_set_num_threads(usable_cores())
    tiles = [
        (row, column)
        for row in range(len(starts))
        for column in range(len(starts))
        if column >= row or codes.shape[1] > 1  # left of it, transformed hashes only
    ]
    pairs = [np.empty((0, 2), np.int64)]
    for row, column in tqdm(tiles, desc="near-duplicates", unit="tile", disable=None, leave=False):
        # Left of the diagonal, the hashes as they are were compared in the mirror tile.
        queries = codes[starts[row] : starts[row] + block, 0 if column >= row else 1 :]
        found = _close_images(columns[column], queries, max_distance)
        pairs.append(found + [starts[row], starts[column]])
    return _sorted_pairs(_with_low_detail(np.concatenate(pairs), thumbnails))


def near_duplicate_pairs_given(
    hashes: np.ndarray,
    known: np.ndarray,
    new: np.ndarray,
    max_distance: int,
    block: int = 16384,
    thumbnails: np.ndarray | None = None,
) -> np.ndarray:
    """near_duplicate_pairs(hashes, max_distance, block, thumbnails), given `known`: every
    such pair i < j of two rows not in `new` (sorted row indices). Only the new rows are
    searched, against all, so time grows as len(new) x N distances for each hash (the
    new rows' against all, all rows' transformed against the new): less than a full
    search while under half the rows are new, and a full search is made otherwise."""
    if max_distance < 0:
        return np.empty((0, 2), np.int64)
    if 2 * len(new) >= len(hashes):
        return near_duplicate_pairs(hashes, max_distance, block, thumbnails)
    found = _with_low_detail(_pairs_with(hashes, new, max_distance, block), thumbnails, new)
    return _sorted_pairs(np.concatenate([known, found]))


def _with_low_detail(pairs: np.ndarray, thumbnails: np.ndarray | None, new=None) -> np.ndarray:
    """The pairs by hash of two images that are not low-detail, and those by thumbnail of
    low-detail images of which one is in `new` (None: any)."""
    if thumbnails is None:
        return pairs
    low = low_detail(thumbnails)
    return np.concatenate([pairs[~low[pairs].any(axis=1)], low_detail_pairs(thumbnails, new)])


def _pairs_with(hashes: np.ndarray, new: np.ndarray, max_distance: int, block: int):
    """(P, 2) pairs within `max_distance` bits of which at least one is in `new`: each
    hash of a new row against every row's as it is, and every row's transformed hashes
    against the new rows' as they are."""
    codes = _codes(hashes)
    faiss.omp_set_num_threads(usable_cores())
    found = [np.empty((0, 2), np.int64)]
    starts = range(0, len(codes), block)  # tiles of the index, as near_duplicate_pairs'
    for start in tqdm(starts, desc="near-duplicates", unit="tile", disable=None, leave=False):
        tile = _close_images(
            _tile(codes[start : start + block, 0], max_distance), codes[new], max_distance
        )
        found.append(np.stack([new[tile[:, 0]], tile[:, 1] + start], axis=1))
    if codes.shape[1] > 1:
        new_tile = _tile(codes[new, 0], max_distance)
        for start in starts:
            tile = _close_images(new_tile, codes[start : start + block, 1:], max_distance)
            found.append(np.stack([tile[:, 0] + start, new[tile[:, 1]]], axis=1))
    return np.concatenate(found)


def low_detail_pairs(thumbnails: np.ndarray, new: np.ndarray | None = None) -> np.ndarray:
    """(P, 2) pairs of low-detail images whose thumbnails are within LOW_DETAIL_RMS grey
    levels, of which one is in `new` (sorted rows; None: any). Exact, with faiss's flat L2
    index on all cores: time grows as L x L (or new x L) x THUMBNAIL_SIDE^2 for the L
    low-detail images, memory as L."""
    low = np.flatnonzero(low_detail(thumbnails))
    queries = low if new is None else np.intersect1d(low, new)
    if not len(queries):
        return np.empty((0, 2), np.int64)
    # Whole grey levels: every squared distance is an integer that float32 holds exactly,
    # so a pair is found the same whatever the batch a search makes.
    levels = thumbnails.astype(np.float32)
    index = faiss.IndexFlatL2(levels.shape[1])
    index.add(levels[low])
    faiss.omp_set_num_threads(usable_cores())
    radius = LOW_DETAIL_RMS**2 * levels.shape[1] + 0.5  # range_search keeps below the radius
    limits, _, rows = index.range_search(levels[queries], radius)
    return np.stack([np.repeat(queries, np.diff(limits.astype(np.int64))), low[rows]], axis=1)


def low_detail(thumbnails: np.ndarray) -> np.ndarray:
    """(N,) bool: which images are low-detail, their thumbnails' levels spread within
    LOW_DETAIL."""
    return thumbnails.std(axis=1) <= LOW_DETAIL


def _sorted_pairs(pairs: np.ndarray) -> np.ndarray:
    """Each pair once, as i < j (none of an image with itself), sorted by i, then j."""
    pairs = np.sort(pairs.astype(np.int64), axis=1)
    return np.unique(pairs[pairs[:, 0] < pairs[:, 1]], axis=0)


def _codes(hashes: np.ndarray) -> np.ndarray:
    """(N, V, 32) uint8: each image's V hashes' bytes, as faiss's binary indexes take them."""
    if hashes.ndim != 3 or hashes.shape[2] != 4:
        raise ValueError(f"hashes must be (N, V, 4) uint64, not {hashes.shape}")
    # Hamming distance is the same whatever the bytes' order, as long as both sides share it.
    return np.ascontiguousarray(hashes, np.uint64).view(np.uint8)


class _Tile(NamedTuple):
    """Rows of hashes as they are, searched on their first `index.code_size` bytes."""

    index: faiss.IndexBinaryFlat
    codes: np.ndarray  # (B, 32) uint8: the whole hashes, which decide


def _tile(codes: np.ndarray, max_distance: int) -> _Tile:
    """Within PREFIX_BELOW bits a tile is searched on each hash's first PREFIX_BYTES, which
    faiss compares 1.4 times as fast as the whole 32 bytes; beyond, a half passes too many
    pairs to check (bench/README.md)."""
    prefix = PREFIX_BYTES if max_distance < PREFIX_BELOW else codes.shape[1]
    index = faiss.IndexBinaryFlat(prefix * 8)
    index.add(np.ascontiguousarray(codes[:, :prefix]))
    return _Tile(index, codes)


def _close_images(tile: _Tile, queries: np.ndarray, max_distance: int):
    """(P, 2) int64 (query image, tile row) within `max_distance` bits, of `queries`'
    (B, V, 32) codes: V hashes of each of B images. A prefix of a hash is never further
    from another's than the whole hash, so every pair within `max_distance` is among the
    prefixes' pairs; each of those is checked on the whole hashes."""
    images, variants = queries.shape[:2]
    codes = np.ascontiguousarray(queries).reshape(images * variants, queries.shape[2])
    prefix = codes[:, : tile.index.code_size]
    # range_search keeps distances strictly below its radius.
    limits, _, rows = tile.index.range_search(np.ascontiguousarray(prefix), max_distance + 1)
    query = np.repeat(np.arange(len(codes)), np.diff(limits.astype(np.int64)))
    words = codes[query].view(np.uint64) ^ tile.codes[rows].view(np.uint64)
    close = np.bitwise_count(words).sum(axis=1, dtype=np.int64) <= max_distance
    return np.stack([query[close] // variants, rows[close]], axis=1)


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
