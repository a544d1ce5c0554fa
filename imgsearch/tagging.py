"""Tags: each image's most probable ImageNet classes with their probabilities, and ranking images by words.

An image keeps at most TAGS_PER_IMAGE classes, and only those with a probability of at least TAG_FLOOR:
about 11 tags and 430 bytes of SQLite rows per image, with word-search average precision within 0.04 of
keeping all 1000 probabilities (37 KB per image). BENCHMARKS.md, "Word search", has the other policies.
A text query is ranked by probability mass: for each term of the query, the sum of the image's tag
probabilities on the term's classes; terms combine by product, so an image must carry every term.
"""
from __future__ import annotations

import numpy as np

from .vocabulary import TextMatch

TAGS_PER_IMAGE = 20
TAG_FLOOR = 0.005
# The class of an empty tag slot: arrays of tags are rectangular, images with fewer tags are padded.
NO_TAG = -1


def top_tags(probabilities: np.ndarray, count: int = TAGS_PER_IMAGE,
             floor: float = TAG_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """(n, classes) probabilities -> the tags: classes (n, count) int16 and probabilities (n, count) float32.

    Most probable first; slots whose probability is under `floor` hold class NO_TAG and probability 0.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    count = min(count, probabilities.shape[1])
    top = np.argpartition(-probabilities, count - 1, axis=1)[:, :count]
    top_probabilities = np.take_along_axis(probabilities, top, axis=1)
    order = np.argsort(-top_probabilities, axis=1, kind="stable")
    classes = np.take_along_axis(top, order, axis=1).astype(np.int16)
    kept = np.take_along_axis(top_probabilities, order, axis=1)
    below = kept < floor
    classes[below] = NO_TAG
    kept[below] = 0.0
    return classes, kept


def text_scores(match: TextMatch, classes: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(n,) scores of images for a text query, from their tags: the product of each term's probability mass."""
    scores = np.ones(len(classes), np.float32)
    for term in match.terms:
        on_term = np.isin(classes, np.fromiter(term.classes, np.int16, len(term.classes)))
        scores *= np.where(on_term, probabilities, 0.0).sum(axis=1, dtype=np.float32)
    return scores


def rank_by_text(match: TextMatch, classes: np.ndarray, probabilities: np.ndarray,
                 k: int | None = None) -> list[tuple[int, float]]:
    """(row, score) of the images that carry every term of the query, best first, at most `k`.

    Images without mass on a term are left out, never padded in; equal scores keep row order.
    """
    scores = text_scores(match, classes, probabilities)
    rows = np.flatnonzero(scores > 0)
    rows = rows[np.argsort(-scores[rows], kind="stable")]
    return [(int(row), float(scores[row])) for row in rows[:k]]
