"""The colour-region histogram engine: regions, bins, normalisation, chi-squared, and Corel-1k quality."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image

from conftest import dataset
from imgsearch.engines.color import (
    BINS_PER_REGION,
    REGIONS,
    ColorHistogramEngine,
    chi2_distances,
    chi2_similarity,
    region_masks,
)

@pytest.fixture(scope="module")
def engine():
    return ColorHistogramEngine().load()


def histograms_of(engine, image: Image.Image) -> np.ndarray:
    """One image -> (5, 288) region histograms."""
    return engine.extract(engine.prepare(image)[None])[0].reshape(REGIONS, BINS_PER_REGION)


def test_engine_identity(engine):
    assert (engine.name, engine.dim, engine.metric, engine.weights) == ("color", 1440, "chi2", "none")
    assert engine.model_id == "color-none-chi2"


@pytest.mark.parametrize("height, width", [(256, 256), (100, 160), (37, 21)])
def test_regions_partition_the_image(height, width):
    masks = region_masks(height, width)
    assert masks.shape == (REGIONS, height, width)
    assert (masks.sum(axis=0) == 1).all()


def test_ellipse_covers_its_share_of_the_image():
    masks = region_masks(256, 256)
    expected = math.pi / 4 * 0.75 ** 2
    assert masks[4].mean() == pytest.approx(expected, abs=0.005)
    corner_sizes = masks[:4].sum(axis=(1, 2))
    assert (corner_sizes == corner_sizes[0]).all()


def test_regions_are_in_the_right_places():
    masks = region_masks(200, 300)
    top_left, top_right, bottom_right, bottom_left, ellipse = masks
    assert top_left[0, 0] and top_right[0, -1] and bottom_right[-1, -1] and bottom_left[-1, 0]
    assert ellipse[100, 150]
    assert ellipse[100, 150 + 110] and not ellipse[100, 150 + 115]  # semi-axis 0.375 * 300 = 112.5
    assert ellipse[100 + 73, 150] and not ellipse[100 + 76, 150]   # semi-axis 0.375 * 200 = 75


@pytest.mark.parametrize("rgb, hsv_bin", [
    ((255, 0, 0), (0, 11, 2)),      # pure red: first hue bin, top saturation and value
    ((0, 0, 255), (5, 11, 2)),      # blue: hue 240° / 45° per bin -> bin 5
    ((0, 128, 0), (2, 11, 1)),      # dark green: hue 120° -> bin 2, value 128 -> middle bin
    ((128, 128, 128), (0, 0, 1)),   # grey: no saturation, hue 0
    ((0, 0, 0), (0, 0, 0)),
    ((255, 255, 255), (0, 0, 2)),
])
def test_pure_colour_puts_all_mass_in_one_bin_per_region(engine, rgb, hsv_bin):
    histograms = histograms_of(engine, Image.new("RGB", (120, 80), rgb)).reshape(REGIONS, 8, 12, 3)
    for region in histograms:
        assert region[hsv_bin] == pytest.approx(1.0)
        assert region.sum() == pytest.approx(1.0)


def test_each_region_sums_to_one_and_sees_its_own_colours(engine):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    assert histograms_of(engine, noise).sum(axis=1) == pytest.approx(np.ones(REGIONS), abs=1e-5)

    image = Image.new("RGB", (256, 256), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 40, 40))  # a red patch in the top-left corner only
    histograms = histograms_of(engine, image).reshape(REGIONS, 8, 12, 3)
    red_share = histograms[:, 0, 11, 2]
    assert red_share[0] > 0.1
    assert (red_share[1:] == 0).all()


def test_prepare_keeps_the_whole_image_at_one_shape(engine):
    wide = Image.new("RGB", (900, 300), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 10, 300))  # a thin red strip at the far left edge
    prepared = engine.prepare(wide)
    assert prepared.shape == (256, 256, 3) and prepared.dtype == np.uint8
    assert prepared[128, 0, 0] > 200 and prepared[128, 0, 2] < 50
    assert engine.prepare(Image.new("RGB", (40, 70))).shape == (256, 256, 3)


def test_chi2_on_hand_computed_histograms():
    query = np.array([0.5, 0.5, 0.0, 0.0], np.float32)
    matrix = np.array([
        [0.5, 0.5, 0.0, 0.0],    # identical
        [0.0, 0.0, 0.5, 0.5],    # disjoint: ½ (0.25/0.5 · 4) = 1
        [0.25, 0.25, 0.25, 0.25],  # ½ (2 · 0.0625/0.75 + 2 · 0.0625/0.25) = 1/3
        [1.0, 0.0, 0.0, 0.0],    # ½ (0.25/1.5 + 0.25/0.5) = 1/3
    ], np.float32)
    assert chi2_distances(query, matrix) == pytest.approx([0.0, 1.0, 1 / 3, 1 / 3], abs=1e-6)


def test_chi2_works_in_blocks_and_matches_direct_formula():
    rng = np.random.default_rng(1)
    matrix = rng.random((2500, 1440)).astype(np.float32)
    query = rng.random(1440).astype(np.float32)
    direct = 0.5 * ((matrix - query) ** 2 / (matrix + query + 1e-10)).sum(axis=1)
    distances = chi2_distances(query, matrix)
    assert distances.dtype == np.float32 and distances.shape == (2500,)
    assert distances == pytest.approx(direct, rel=1e-4)
    assert chi2_distances(query, matrix[:0]).shape == (0,)


def test_identical_images_have_distance_zero_and_similarity_one(engine):
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    vector = engine.extract(engine.prepare(image)[None])[0]
    distance = chi2_distances(vector, vector[None])
    assert distance == pytest.approx([0.0], abs=1e-7)
    assert chi2_similarity(distance) == pytest.approx([1.0])


def test_similarity_spans_zero_to_one(engine):
    red, blue = (engine.extract(engine.prepare(Image.new("RGB", (32, 32), colour))[None])[0]
                 for colour in ((255, 0, 0), (0, 0, 255)))
    distance = chi2_distances(red, blue[None])
    assert distance == pytest.approx([5.0], abs=1e-5)
    assert chi2_similarity(distance) == pytest.approx([0.0], abs=1e-6)
    assert chi2_similarity(np.array([7.0, -1.0, 2.5])) == pytest.approx([0.0, 1.0, 0.5])


@pytest.mark.slow
def test_corel1k_retrieval_matches_the_reference():
    """Leave-one-out on Corel-1k, chi-squared ranking: the reference descriptor gives P@10 0.715, mAP 0.501."""
    from imgsearch.imaging import open_image

    corel = dataset("corel1k")

    engine = ColorHistogramEngine().load()
    with open(corel / "labels.csv", newline="") as labels_file:
        rows = list(csv.DictReader(labels_file))
    labels = np.array([row["label"] for row in rows])
    vectors = np.concatenate([
        engine.extract(np.stack([engine.prepare(open_image(corel / row["filename"])) for row in rows[i:i + 50]]))
        for i in range(0, len(rows), 50)
    ])
    precisions, average_precisions = [], []
    for i, vector in enumerate(vectors):
        distances = chi2_distances(vector, vectors)
        distances[i] = np.inf
        relevant = labels[np.argsort(distances, kind="stable")[:-1]] == labels[i]
        precisions.append(relevant[:10].mean())
        ranks = np.flatnonzero(relevant) + 1
        average_precisions.append((np.arange(1, len(ranks) + 1) / ranks).mean())
    assert np.mean(precisions) == pytest.approx(0.715, abs=0.02)
    assert np.mean(average_precisions) == pytest.approx(0.501, abs=0.02)
