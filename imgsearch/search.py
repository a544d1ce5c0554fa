"""Ranking a library: by a query vector (with feedback and query expansion), or by words through the images'
tags; both under filters and with paging. The app's core and the command line use it alike.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from .catalogue import Catalogue
from .engines.tagger import unpack_tags
from .errors import RequestError
from .query import Filters
from .retrieval import search_with_expansion
from .space import FeatureSpace
from .tagging import text_scores
from .vocabulary import Term, TextMatch, Vocabulary

# An image carries a tag, or a word, when its classifier probability on it (summed over the word's classes)
# is at least this: about 2.5 tags per image, the ones worth showing to people. Ranking by words uses
# every stored tag; filtering by a tag or a word uses this floor.
TAG_SHOWN = 0.05


@dataclasses.dataclass(frozen=True)
class TagTable:
    """The tags of every tagged image, as arrays: names[i] has classes[i] with probabilities[i]."""

    names: list[str]
    classes: np.ndarray        # (n, TAGS_PER_IMAGE) int16, -1 for an empty slot
    probabilities: np.ndarray  # (n, TAGS_PER_IMAGE) float32


class Searcher:
    """Ranks the images of a catalogue; `tags` is the tag space, None where images are not tagged."""

    def __init__(self, catalogue: Catalogue, tags: FeatureSpace | None, vocabulary: Callable[[], Vocabulary],
                 query_expansion: int = 0):
        self.catalogue = catalogue
        self.tags = tags
        self._vocabulary = vocabulary
        self.query_expansion = query_expansion

    @property
    def vocabulary(self) -> Vocabulary:
        return self._vocabulary()

    # ----- tags --------------------------------------------------------------------------------

    def tag_table(self) -> TagTable:
        if self.tags is None:
            raise RequestError("Images are not tagged here, so words cannot be searched.", 409)
        names, vectors = [], []
        for snapshot in self.tags.store.snapshots():
            rows = snapshot.live_rows()
            names += [snapshot.names[row] for row in rows]
            vectors.append(snapshot.matrix[rows])
        classes, probabilities = unpack_tags(np.concatenate(vectors) if vectors else np.zeros((0, self.tags.engine.dim)))
        return TagTable(names, classes, probabilities)

    def tags_of(self, name: str) -> list[tuple[str, float]]:
        """An image's shown tags, most probable first: (tag name, probability)."""
        if self.tags is None or (vector := self.tags.store.vector(name)) is None:
            return []
        classes, probabilities = unpack_tags(vector[None])
        return [(self.vocabulary.tag_names[c], round(float(p), 4))
                for c, p in zip(classes[0], probabilities[0]) if c >= 0 and p >= TAG_SHOWN]

    def tag_counts(self) -> list[tuple[str, int]]:
        """Every shown tag in the library with how many images carry it, commonest first."""
        table = self.tag_table()
        shown = table.classes[(table.classes >= 0) & (table.probabilities >= TAG_SHOWN)]
        counts = np.bincount(shown.astype(np.int64), minlength=len(self.vocabulary.tag_names))
        names = self.vocabulary.tag_names
        return sorted(((names[c], int(n)) for c, n in enumerate(counts) if n), key=lambda item: (-item[1], item[0]))

    def match_tag(self, tag: str) -> TextMatch:
        """A tag name ("crane (bird)") or a vocabulary word or phrase, as terms."""
        vocabulary = self.vocabulary
        try:
            index = vocabulary.class_of_tag(tag)
        except KeyError:
            return vocabulary.match(tag)
        # Exactly that class: "crane (bird)" must not also mean the machine.
        return TextMatch(tag, (Term(tag, (tag,), (vocabulary.class_concept(index),), frozenset([index])),), ())

    # ----- which images a search may return ----------------------------------------------------

    def allowed(self, filters: Filters, words: TextMatch | None = None) -> frozenset[str] | None:
        """The names the filters and words admit; None when nothing restricts the search."""
        if not filters.active and words is None:
            return None
        names = {record.name for record in self.catalogue.records()
                 if filters.admits_record(record.is_original, record.taken_at, record.media_type)}
        for match in [m for m in (self.match_tag(filters.tag) if filters.tag else None, words) if m is not None]:
            table = self.tag_table()
            carrying = np.ones(len(table.names), bool)
            for term in match.terms:  # every term must hold, each with enough mass
                single = dataclasses.replace(match, terms=(term,))
                carrying &= text_scores(single, table.classes, table.probabilities) >= TAG_SHOWN
            names &= {name for name, keep in zip(table.names, carrying) if keep}
        return frozenset(names)

    # ----- ranking -----------------------------------------------------------------------------

    def by_vector(self, space: FeatureSpace, vector: np.ndarray, depth: int, exclude: frozenset[str],
                  allowed: frozenset[str] | None) -> list[tuple[str, float]]:
        """The `depth` best (name, similarity) for a query vector, best first."""
        def search(query: np.ndarray, n: int) -> list[tuple[str, float]]:
            return space.index.search(query[None], n, exclude, allowed)[0]

        if self.query_expansion and space.engine.metric == "cosine":
            return search_with_expansion(search, vector, space.store.vector, self.query_expansion, depth)
        return search(vector, depth)

    def by_text(self, match: TextMatch, depth: int, exclude: frozenset[str],
                allowed: frozenset[str] | None) -> list[tuple[str, float]]:
        """The `depth` images with the most probability mass on every term of `match`, best first."""
        table = self.tag_table()
        scores = text_scores(match, table.classes, table.probabilities)
        rows = [row for row in np.flatnonzero(scores > 0)
                if table.names[row] not in exclude and (allowed is None or table.names[row] in allowed)]
        rows.sort(key=lambda row: (-scores[row], table.names[row]))
        return [(table.names[row], min(float(scores[row]), 1.0)) for row in rows[:depth]]

