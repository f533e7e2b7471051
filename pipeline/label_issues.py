"""Likely label errors from out-of-sample predicted probabilities: confident learning
(Northcutt, Jiang and Chuang, 2021), the ranking of cleanlab's `find_label_issues` with its
defaults (filter_by="prune_by_noise_rate"), written here because cleanlab is AGPL-3.0.
tests/test_audit.py checks it against cleanlab's on the same inputs.

1. Each class's threshold: the mean probability the model gives the class over the images
   labelled with it (its mean self-confidence).
2. The confident joint C[i][j]: images labelled i whose probability of j reaches j's
   threshold (the likeliest such class when there are several), calibrated so that each
   row sums to the images labelled i.
3. Prune by noise rate: of the images labelled i, the C[i][j] (j != i) with the largest
   margin p(j) - p(i) are issues, except those whose likeliest class is their given one.
4. Rank the issues by their label quality: the given label's probability
   (self_confidence), or (p(given) - the largest other + 1) / 2 (normalized_margin).

Pure numpy: O(N·K) time and memory for N images of K classes, plus a sort per class.
"""

import numpy as np

_EPSILON = 1e-6  # cleanlab's fuzzy comparisons, kept so that the two agree on ties


def thresholds(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(K,) each class's mean self-confidence; 2 (above any probability) for a class no
    image is labelled with."""
    classes = probabilities.shape[1]
    means = [
        probabilities[labels == k, k].mean() if np.any(labels == k) else 2.0 for k in range(classes)
    ]
    return np.maximum(means, 2 * _EPSILON)


def confident_joint(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(K, K) int: images given label i (row) confidently of class j (column), calibrated
    so that row i sums to the images labelled i and the whole to N."""
    classes = probabilities.shape[1]
    confident = probabilities >= thresholds(labels, probabilities) - _EPSILON
    count = confident.sum(axis=1)
    guess = np.where(count > 1, probabilities.argmax(axis=1), confident.argmax(axis=1))
    joint = np.zeros((classes, classes), np.int64, order="F")  # as cleanlab's (see below)
    np.add.at(joint, (labels[count > 0], guess[count > 0]), 1)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))  # every class keeps one image
    given = np.bincount(labels, minlength=classes)
    # In cleanlab's memory order: np.sum adds in it, and a count that lands near .5 then
    # rounds the same way.
    calibrated = (joint.T / np.maximum(joint.sum(axis=1), 1e-100) * given).T
    calibrated = calibrated / max(np.sum(calibrated), 1e-100) * given.sum()
    return np.array([_round_keeping_sum(row) for row in calibrated])


def _round_keeping_sum(values: np.ndarray) -> np.ndarray:
    """Integers near `values` with the same (rounded) sum: those rounded furthest from
    their value move by one (cleanlab's round_preserving_sum)."""
    ints = values.round()
    total = values.sum().round()
    while abs(ints.sum() - total) > _EPSILON:
        step = 1 if total > ints.sum() else -1
        changes = min(int(abs(total - ints.sum())), len(values))
        ints[np.argsort(values - ints)[::-step][:changes]] += step
    return ints.astype(np.int64)


def _keep_one_per_class(joint: np.ndarray) -> np.ndarray:
    """The prune counts, as cleanlab's _keep_at_least_n_per_class with n = 1: a class left
    with no image it keeps takes one from each of its noise counts, shared out."""
    counts = joint.T.astype(np.float64)  # rows: the true class, columns: the given one
    diagonal = counts.diagonal()
    kept = np.maximum(diagonal, 1)
    shares = np.maximum(np.count_nonzero(counts, axis=0) - 1.0, 1.0)
    counts = np.maximum(counts - (kept - diagonal) / shares, 0)
    np.fill_diagonal(counts, kept)
    return counts.astype(np.int64).T  # back to rows of given labels


def find_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(N,) bool: the images whose given label confident learning calls wrong."""
    labels = np.asarray(labels)
    prune = _keep_one_per_class(confident_joint(labels, probabilities))
    issues = np.zeros(len(labels), bool)
    for given in range(probabilities.shape[1]):
        members = np.flatnonzero(labels == given)
        if len(members) <= 1:  # cleanlab's min_examples_per_class
            continue
        for other in range(probabilities.shape[1]):
            count = prune[given, other]
            if other == given or count <= 0:
                continue
            margin = probabilities[members, other] - probabilities[members, given]
            issues[members[np.argsort(-margin, kind="stable")[:count]]] = True
    bumped = probabilities.copy()
    bumped[np.arange(len(labels)), labels] += _EPSILON
    issues[bumped.argmax(axis=1) == labels] = False  # the model agrees with the label
    return issues


def quality(labels: np.ndarray, probabilities: np.ndarray, rank_by: str) -> np.ndarray:
    """(N,) each given label's quality, 0 worst to 1 best, by `rank_by` (params.RANKINGS):
    self_confidence or normalized_margin."""
    rows = np.arange(len(labels))
    own = probabilities[rows, labels]
    if rank_by == "self_confidence":
        return own
    others = probabilities.copy()
    others[rows, labels] = -np.inf
    return (own - others.max(axis=1) + 1) / 2


def rank_issues(
    labels: np.ndarray, probabilities: np.ndarray, rank_by: str = "self_confidence"
) -> tuple[np.ndarray, np.ndarray]:
    """The issues' indices, most likely wrong first, and their quality scores."""
    scores = quality(labels, probabilities, rank_by)
    found = np.flatnonzero(find_issues(labels, probabilities))
    order = found[np.argsort(scores[found], kind="stable")]
    return order, scores[order]
