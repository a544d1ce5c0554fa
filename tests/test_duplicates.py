"""The duplicate finder's bounds: its per-threshold cache, the pair cap and the order of a group's pairs."""
from __future__ import annotations

import numpy as np
import pytest

from imgsearch import duplicates
from imgsearch.duplicates import DuplicateFinder, TooManyPairs
from imgsearch.store import Snapshot


def snapshot(vectors: np.ndarray, prefix: str) -> Snapshot:
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return Snapshot(vectors.astype(np.float32), tuple(f"{prefix}{i}.png" for i in range(len(vectors))),
                    np.ones(len(vectors), np.float32))


@pytest.fixture
def library():
    rng = np.random.default_rng(0)
    base = rng.random((3, 16))
    # Ten near-copies of each of three images, split across originals and uploads.
    vectors = np.repeat(base, 10, axis=0) + rng.normal(0, 0.01, (30, 16))
    return snapshot(vectors[:15], "o"), snapshot(vectors[15:], "u")


def test_groups_are_cached_per_rounded_threshold_until_the_store_changes(library):
    finder = DuplicateFinder(0.9)
    threshold, groups = finder.groups(library, "cosine", None, lambda name: name.startswith("o"))
    assert threshold == 0.9 and [len(g.members) for g in groups] == [10, 10, 10]
    assert finder.groups(library, "cosine", 0.90004, str.isupper)[1] is groups
    changed = (library[0], snapshot(np.random.default_rng(1).random((4, 16)), "n"))
    assert finder.groups(changed, "cosine", 0.9, str.isupper)[1] is not groups


def test_pairs_come_most_similar_first_a_page_at_a_time(library):
    group = DuplicateFinder(0.9).groups(library, "cosine", None, lambda name: False)[1][0]
    assert group.pair_count == 45
    scores = [score for _, _, score in group.pairs()]
    assert scores == sorted(scores, reverse=True) and group.best_similarity == scores[0]
    assert group.pairs(10, 20) == group.pairs()[10:20]


def test_too_many_pairs_is_refused(library, monkeypatch):
    monkeypatch.setattr(duplicates, "MAX_PAIRS", 100)
    with pytest.raises(TooManyPairs):
        DuplicateFinder(0.5).groups(library, "cosine", None, lambda name: False)


@pytest.mark.parametrize("threshold", [0.0, 0.49, 1.5])
def test_thresholds_outside_the_range_are_refused(library, threshold):
    with pytest.raises(ValueError):
        DuplicateFinder(threshold)
