"""Colour-region histograms: a classic content-based image retrieval descriptor, ranked by chi-squared.

The image is cut into five regions: a centred ellipse whose axes are 75% of the width and height, and
the four corner quadrants with that ellipse taken out. Each region gets a 3-D HSV histogram with
8 hue × 12 saturation × 3 value bins (288), normalised to sum to 1; the five are concatenated into
1440 numbers. The centre region lets "red thing in the middle of a blue scene" differ from the reverse.
No model and no TensorFlow: it is pure numpy and Pillow.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .base import Engine

HSV_BINS = (8, 12, 3)
BINS_PER_REGION = HSV_BINS[0] * HSV_BINS[1] * HSV_BINS[2]
REGIONS = 5
ELLIPSE_AXES = 0.75  # ellipse width and height as a fraction of the image's
CHI2_EPSILON = 1e-10
PREPARED_SIZE = 256
_CHI2_BLOCK_ROWS = 1024


class ColorHistogramEngine(Engine):
    name = "color"
    dim = REGIONS * BINS_PER_REGION
    metric = "chi2"
    input_size = PREPARED_SIZE
    weights = "none"
    runtime = "numpy"

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Squash the whole image to 256×256, with no crop.

        The regions are defined as fractions of the width and height, so stretching one axis maps
        each region onto itself and leaves the histograms (pixel proportions) unchanged, while a crop
        would throw away the corners the descriptor describes. One fixed shape lets batches stack.
        256 px keeps 65k pixels per image, plenty for 288-bin histograms, and is Corel-1k's own size.
        Box filtering averages source pixels, so downscaling does not skip thin coloured details.
        """
        if image.size != (PREPARED_SIZE, PREPARED_SIZE):
            image = image.resize((PREPARED_SIZE, PREPARED_SIZE), Image.Resampling.BOX)
        return np.asarray(image, dtype=np.uint8)

    def _load(self) -> None:
        """Nothing to load: the descriptor has no weights."""

    def _extract(self, batch: np.ndarray) -> np.ndarray:
        # (n, h, w, 3) RGB -> (n, h, w, 3) HSV, each channel 0..255 (hue 0..255 covers the whole circle)
        hsv = np.stack([np.asarray(Image.fromarray(rgb).convert("HSV")) for rgb in batch])
        return region_histograms(hsv)


@functools.lru_cache(maxsize=8)
def region_masks(height: int, width: int) -> np.ndarray:
    """(5, height, width) bool: top-left, top-right, bottom-right, bottom-left corners, then the ellipse.

    Every pixel is in exactly one region. A pixel belongs to the ellipse when its centre lies inside.
    """
    ys = (np.arange(height) + 0.5)[:, None]
    xs = (np.arange(width) + 0.5)[None, :]
    semi_x, semi_y = ELLIPSE_AXES * width / 2, ELLIPSE_AXES * height / 2
    ellipse = ((xs - width / 2) / semi_x) ** 2 + ((ys - height / 2) / semi_y) ** 2 <= 1.0
    top = np.broadcast_to(ys < height / 2, (height, width))
    left = np.broadcast_to(xs < width / 2, (height, width))
    corners = [top & left, top & ~left, ~top & ~left, ~top & left]
    masks = np.stack([corner & ~ellipse for corner in corners] + [ellipse])
    masks.flags.writeable = False
    return masks


@functools.lru_cache(maxsize=8)
def _region_labels(height: int, width: int) -> np.ndarray:
    # (h, w) region number of each pixel, pre-multiplied into the offset of that region's histogram
    return (np.argmax(region_masks(height, width), axis=0) * BINS_PER_REGION).astype(np.int32)


def hsv_bin_indices(hsv: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 HSV -> (...) int32 bin number in 0..287, hue-major; each channel's bins span 0..255."""
    h_bins, s_bins, v_bins = HSV_BINS
    channels = hsv.astype(np.int32)
    hue = channels[..., 0] * h_bins >> 8
    saturation = channels[..., 1] * s_bins >> 8
    value = channels[..., 2] * v_bins >> 8
    return (hue * s_bins + saturation) * v_bins + value


def region_histograms(hsv: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) uint8 HSV -> (n, 1440) float32: five 288-bin histograms, each summing to 1.

    A region with no pixels (only possible in images a few pixels wide) gets an all-zero histogram.
    """
    n, height, width = hsv.shape[:3]
    labels = _region_labels(height, width)
    per_image = REGIONS * BINS_PER_REGION
    image_offsets = (np.arange(n, dtype=np.int32) * per_image)[:, None, None]
    bins = hsv_bin_indices(hsv) + labels + image_offsets
    counts = np.bincount(bins.ravel(), minlength=n * per_image).reshape(n, REGIONS, BINS_PER_REGION)
    region_sizes = region_masks(height, width).sum(axis=(1, 2))[None, :, None]
    return (counts / np.maximum(region_sizes, 1)).reshape(n, per_image).astype(np.float32)


def chi2_distances(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(d,) and (n, d) histograms -> (n,) float32 distances ½ Σ (a−b)² / (a+b+ε).

    Works through the rows in blocks so the temporaries stay a few MB however large the library is.
    """
    query = np.asarray(query, dtype=np.float32)
    distances = np.empty(len(matrix), dtype=np.float32)
    for start in range(0, len(matrix), _CHI2_BLOCK_ROWS):
        block = np.asarray(matrix[start:start + _CHI2_BLOCK_ROWS], dtype=np.float32)
        difference = block - query
        total = block + query
        total += CHI2_EPSILON
        np.square(difference, out=difference)
        difference /= total
        distances[start:start + len(block)] = 0.5 * difference.sum(axis=1)
    return distances


def chi2_similarity(distances: np.ndarray, regions: int = REGIONS) -> np.ndarray:
    """Chi-squared distances -> similarity in 0..1.

    Between two histograms that each sum to 1 the distance is at most 1, so five regions give at
    most 5; 1 means identical, 0 means no colour in common in any region.
    """
    return np.clip(1.0 - np.asarray(distances, dtype=np.float32) / regions, 0.0, 1.0)
