"""Groups of near-identical images: connected components of the 'similarity ≥ threshold' graph.

The similarity matrix is never held whole: rows are compared in blocks against the library, so
memory stays O(block × N) however large the library is, and only the edges above the threshold
are kept, as numpy arrays (12 bytes an edge). A low threshold can still link almost every pair, so
thresholds below MIN_THRESHOLD are refused, a search that finds more than MAX_PAIRS edges stops
there, and groups hand out their pairs a page at a time.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Callable

import numpy as np

from .errors import RequestError
from .ranking import similarities
from .store import Snapshot

BLOCK_ROWS = 512
MIN_THRESHOLD = 0.5        # the lowest the UI's slider goes; below it, unrelated photos link up
MAX_PAIRS = 2_000_000      # 24 MB of edges; about 2,000 images all alike
CACHED_THRESHOLDS = 8


class TooManyPairs(RequestError):
    """More near-duplicate pairs than one search may collect."""


@dataclasses.dataclass(frozen=True)
class DuplicateGroup:
    members: list[str]               # sorted: the suggested image to keep comes first
    names: list[str]                 # every image's name, shared by all groups of one search
    pair_rows: np.ndarray            # (pairs, 2) indices into `names`, most similar first
    pair_scores: np.ndarray          # (pairs,) similarities, descending

    @property
    def best_similarity(self) -> float:
        return round(float(self.pair_scores[0]), 6)

    @property
    def pair_count(self) -> int:
        return len(self.pair_scores)

    def pairs(self, start: int = 0, stop: int | None = None) -> list[tuple[str, str, float]]:
        """The group's edges from `start` to `stop`, most similar first: (name, name, similarity)."""
        rows, scores = self.pair_rows[start:stop].tolist(), self.pair_scores[start:stop].tolist()
        return [(self.names[a], self.names[b], round(score, 6)) for (a, b), score in zip(rows, scores)]


def _edges(snapshots: tuple[Snapshot, ...], metric: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(edges, 2) index pairs i < j in the concatenated numbering of the snapshots, and their similarities.

    Each pair is computed once: a block is compared only with the rows from its own start onwards.
    """
    offsets = np.cumsum([0] + [len(s) for s in snapshots])
    rows, scores, found = [], [], 0
    for a, source in enumerate(snapshots):
        for start in range(0, len(source), BLOCK_ROWS):
            block = source.matrix[start:start + BLOCK_ROWS]
            for b in range(a, len(snapshots)):
                skip = start if b == a else 0
                target = snapshots[b]
                target = Snapshot(target.matrix[skip:], target.names[skip:], target.sq_norms[skip:])
                block_scores = similarities(target, block, metric)
                hits, cols = np.nonzero(block_scores >= threshold)
                first = offsets[a] + start + hits
                second = offsets[b] + skip + cols
                keep = second > first
                found += int(keep.sum())
                if found > MAX_PAIRS:
                    raise TooManyPairs(f"More than {MAX_PAIRS:,} pairs of images are at least {threshold:g} "
                                       "similar; raise the threshold.")
                rows.append(np.stack([first[keep], second[keep]], axis=1).astype(np.int32))
                scores.append(block_scores[hits[keep], cols[keep]].astype(np.float32))
    if not rows:
        return np.zeros((0, 2), np.int32), np.zeros(0, np.float32)
    return np.concatenate(rows), np.concatenate(scores)


def find_duplicate_groups(snapshots: tuple[Snapshot, ...], metric: str, threshold: float,
                          is_original: Callable[[str], bool] = lambda name: False) -> list[DuplicateGroup]:
    """Groups of two or more images, largest and closest first. Originals are listed first in a group."""
    snapshots = tuple(_without_deleted(snapshot) for snapshot in snapshots)
    edges, scores = _edges(snapshots, metric, threshold)
    names = [name for snapshot in snapshots for name in snapshot.names]
    parent = list(range(len(names)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges.tolist():
        root_i, root_j = find(i), find(j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    roots = np.fromiter((find(i) for i in edges[:, 0].tolist()), np.int64, len(edges))
    # Sort every edge by group, then by similarity (highest first), so each group is one slice.
    order = np.lexsort((-scores, roots))
    edges, scores, roots = edges[order], scores[order], roots[order]
    starts = np.flatnonzero(np.r_[True, roots[1:] != roots[:-1]]) if len(roots) else np.zeros(0, np.int64)
    groups = []
    for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(roots)]):
        members = sorted({names[i] for i in np.unique(edges[start:stop]).tolist()},
                         key=lambda n: (not is_original(n), n))
        groups.append(DuplicateGroup(members, names, edges[start:stop], scores[start:stop]))
    groups.sort(key=lambda g: (-len(g.members), -g.best_similarity, g.members[0]))
    return groups


class DuplicateFinder:
    """Duplicate groups per threshold, reused until the feature store changes; one search runs at a time."""

    def __init__(self, default_threshold: float):
        if not MIN_THRESHOLD <= default_threshold <= 1.0:
            raise ValueError(f"IMAGE_SEARCH_DUPLICATE_THRESHOLD must be between {MIN_THRESHOLD} and 1")
        self.default_threshold = default_threshold
        self._lock = threading.Lock()
        self._snapshots: tuple[Snapshot, ...] = ()
        self._groups: collections.OrderedDict[float, list[DuplicateGroup]] = collections.OrderedDict()

    def groups(self, snapshots: tuple[Snapshot, ...], metric: str, threshold: float | None,
               is_original: Callable[[str], bool]) -> tuple[float, list[DuplicateGroup]]:
        """(the threshold used, its groups); the threshold is rounded to two decimals."""
        # Rounded to the UI's step, so that 0.8, 0.80001, 0.80002... are one search, not many.
        threshold = round(self.default_threshold if threshold is None else threshold, 2)
        if not MIN_THRESHOLD <= threshold <= 1.0:
            raise RequestError(f"threshold must be between {MIN_THRESHOLD} and 1.")
        with self._lock:
            if len(snapshots) != len(self._snapshots) or any(a is not b for a, b in zip(snapshots, self._snapshots)):
                self._snapshots, self._groups = snapshots, collections.OrderedDict()
            if threshold in self._groups:
                self._groups.move_to_end(threshold)
            else:
                self._groups[threshold] = find_duplicate_groups(snapshots, metric, threshold, is_original)
                if len(self._groups) > CACHED_THRESHOLDS:
                    self._groups.popitem(last=False)
            return threshold, self._groups[threshold]


def _without_deleted(snapshot: Snapshot) -> Snapshot:
    """The snapshot's live rows only (a copy when some rows are deleted; the scan itself costs far more)."""
    if not len(snapshot.dead):
        return snapshot
    rows = snapshot.live_rows()
    return Snapshot(snapshot.matrix[rows], tuple(snapshot.names[row] for row in rows), snapshot.sq_norms[rows])
