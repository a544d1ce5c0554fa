"""Groups of near-identical images: connected components of the 'similarity ≥ threshold' graph.

The similarity matrix is never held whole: rows are compared in blocks against the library, so
memory stays O(block × N) however large the library is, and only the edges above the threshold
are kept.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

from .ranking import similarities
from .store import Snapshot

BLOCK_ROWS = 512


@dataclasses.dataclass(frozen=True)
class DuplicateGroup:
    members: list[str]               # sorted: the suggested image to keep comes first
    pairs: list[tuple[str, str, float]]  # every edge above the threshold inside the group

    @property
    def best_similarity(self) -> float:
        return max(score for _, _, score in self.pairs)


def _edges(snapshots: tuple[Snapshot, ...], metric: str, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs (i, j, similarity) with i < j in the concatenated numbering of the snapshots.

    Each pair is computed once: a block is compared only with the rows from its own start onwards.
    """
    offsets = np.cumsum([0] + [len(s) for s in snapshots])
    edges = []
    for a, source in enumerate(snapshots):
        for start in range(0, len(source), BLOCK_ROWS):
            block = source.matrix[start:start + BLOCK_ROWS]
            for b in range(a, len(snapshots)):
                skip = start if b == a else 0
                target = snapshots[b]
                target = Snapshot(target.matrix[skip:], target.names[skip:], target.sq_norms[skip:])
                scores = similarities(target, block, metric)
                rows, cols = np.nonzero(scores >= threshold)
                first = offsets[a] + start + rows
                second = offsets[b] + skip + cols
                keep = second > first
                edges.extend(zip(first[keep].tolist(), second[keep].tolist(),
                                 scores[rows[keep], cols[keep]].tolist()))
    return edges


def find_duplicate_groups(snapshots: tuple[Snapshot, ...], metric: str, threshold: float,
                          is_original=lambda name: False) -> list[DuplicateGroup]:
    """Groups of two or more images, largest and closest first. Originals are listed first in a group."""
    snapshots = tuple(_without_deleted(snapshot) for snapshot in snapshots)
    edges = _edges(snapshots, metric, threshold)
    names = [name for snapshot in snapshots for name in snapshot.names]
    parent = list(range(len(names)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in edges:
        root_i, root_j = find(i), find(j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    members: dict[int, set[int]] = defaultdict(set)
    pairs: dict[int, list[tuple[str, str, float]]] = defaultdict(list)
    for i, j, score in edges:
        root = find(i)
        members[root].update((i, j))
        pairs[root].append((names[i], names[j], round(score, 6)))
    groups = [
        DuplicateGroup(sorted((names[i] for i in members[root]), key=lambda n: (not is_original(n), n)),
                       sorted(pairs[root], key=lambda p: -p[2]))
        for root in members
    ]
    groups.sort(key=lambda g: (-len(g.members), -g.best_similarity, g.members[0]))
    return groups


def _without_deleted(snapshot: Snapshot) -> Snapshot:
    """The snapshot's live rows only (a copy when some rows are deleted; the scan itself costs far more)."""
    if not len(snapshot.dead):
        return snapshot
    rows = snapshot.live_rows()
    return Snapshot(snapshot.matrix[rows], tuple(snapshot.names[row] for row in rows), snapshot.sq_norms[rows])
