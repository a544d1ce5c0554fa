"""Tags kept per image, and ranking images for words by the probability mass of their tags."""
from __future__ import annotations

import numpy as np
import pytest

from imgsearch.tagging import NO_TAG, rank_by_text, text_scores, top_tags
from imgsearch.vocabulary import load

SORREL, TABBY, SEASHORE, ESPRESSO = 339, 281, 978, 967


@pytest.fixture(scope="module")
def vocabulary():
    return load()


def probabilities(*rows: dict[int, float]) -> np.ndarray:
    """(len(rows), 1000) class probabilities; what a row leaves over is spread over the other classes."""
    matrix = np.zeros((len(rows), 1000), np.float32)
    for matrix_row, row in zip(matrix, rows):
        matrix_row[:] = (1.0 - sum(row.values())) / (1000 - len(row))
        for index, p in row.items():
            matrix_row[index] = p
    return matrix


def test_top_tags_keep_the_most_probable_above_the_floor():
    classes, kept = top_tags(probabilities({SORREL: 0.7, SEASHORE: 0.2, TABBY: 0.06}), count=5, floor=0.05)
    assert classes.dtype == np.int16 and kept.dtype == np.float32 and classes.shape == kept.shape == (1, 5)
    assert classes[0].tolist() == [SORREL, SEASHORE, TABBY, NO_TAG, NO_TAG]
    np.testing.assert_allclose(kept[0], [0.7, 0.2, 0.06, 0.0, 0.0], rtol=1e-6)


def test_words_rank_by_probability_mass_and_leave_out_images_without_it(vocabulary):
    classes, kept = top_tags(probabilities(
        {SORREL: 0.3, SEASHORE: 0.6},   # a horse on a beach, mostly beach
        {TABBY: 0.9},                   # a cat
        {SORREL: 0.9},                  # a horse
    ), count=5, floor=0.01)
    horse = vocabulary.match("horse")
    assert [row for row, _score in rank_by_text(horse, classes, kept)] == [2, 0]
    # Every term must hold: the product of the masses.
    both = vocabulary.match("horse seashore")
    np.testing.assert_allclose(text_scores(both, classes, kept), [0.3 * 0.6, 0.0, 0.0], rtol=1e-6)
    assert rank_by_text(both, classes, kept) == [(0, pytest.approx(0.18))]
    assert rank_by_text(vocabulary.match("espresso"), classes, kept) == []
    assert len(rank_by_text(vocabulary.match("entity"), classes, kept, k=2)) == 2
