"""What a search can ask for beyond one whole image: a region of the query image, feedback (more like these,
less like those), words, filters on the library, and paging. Parsing and checking only; `search.py` runs it.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from .errors import RequestError
from .imaging import ALLOWED_EXTENSIONS

# Rocchio's weights, as in the SMART system's classic setting: the query counts fully, the images marked
# "more like this" pull it towards their mean, those marked "less like this" push it away, more gently.
ROCCHIO_QUERY = 1.0
ROCCHIO_POSITIVE = 0.75
ROCCHIO_NEGATIVE = 0.25
MAX_FEEDBACK = 50          # images per list
MIN_REGION_PIXELS = 16     # a region narrower or lower than this is too small to describe anything
MAX_RESULTS_DEPTH = 1000   # page × k: how deep paging may go
SOURCES = ("originals", "uploads")
MEDIA_TYPES = tuple(sorted(set(ALLOWED_EXTENSIONS) - {"jpeg"}))


@dataclasses.dataclass(frozen=True)
class Box:
    """A region of an image as fractions of its width and height: left, top, width, height."""

    x: float
    y: float
    w: float
    h: float

    @classmethod
    def parse(cls, value: Any) -> "Box | None":
        """[x, y, w, h] (JSON) or "x,y,w,h" (a form field); None when absent. 400 for anything else."""
        if value is None or value == "":
            return None
        parts = value.split(",") if isinstance(value, str) else value
        if not isinstance(parts, (list, tuple)) or len(parts) != 4:
            raise RequestError("box must be four numbers: x, y, width, height, as fractions of the image.")
        try:
            x, y, w, h = (float(part) for part in parts)
        except (TypeError, ValueError):
            raise RequestError("box must be four numbers: x, y, width, height, as fractions of the image.") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or x < 0 or y < 0 or w <= 0 or h <= 0 \
                or x + w > 1.0001 or y + h > 1.0001:
            raise RequestError("box must lie inside the image: 0 <= x, y and 0 < width, height, "
                               "with x + width <= 1 and y + height <= 1.")
        return cls(x, y, min(w, 1 - x), min(h, 1 - y))

    def crop(self, image: Image.Image) -> Image.Image:
        left, top = round(self.x * image.width), round(self.y * image.height)
        right, bottom = round((self.x + self.w) * image.width), round((self.y + self.h) * image.height)
        if right - left < MIN_REGION_PIXELS or bottom - top < MIN_REGION_PIXELS:
            raise RequestError(f"The region is {right - left}×{bottom - top} pixels of this image; "
                               f"it must be at least {MIN_REGION_PIXELS}×{MIN_REGION_PIXELS}.")
        return image.crop((left, top, right, bottom))

    def as_list(self) -> list[float]:
        return [round(v, 6) for v in (self.x, self.y, self.w, self.h)]


@dataclasses.dataclass(frozen=True)
class Filters:
    """Which library images a search may return; every given condition must hold."""

    source: str | None = None        # "originals" or "uploads"
    tag: str | None = None           # a tag name or vocabulary word the image is tagged with
    taken_from: str | None = None    # "YYYY-MM-DD", inclusive
    taken_to: str | None = None      # "YYYY-MM-DD", inclusive
    media_type: str | None = None    # the file type: jpg, png, gif, bmp, webp

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> "Filters":
        """From request fields; 400 naming the field and what it accepts for a bad value."""
        def text(name: str) -> str | None:
            value = values.get(name)
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise RequestError(f"{name} must be text.")
            return value.strip()

        source = text("source")
        if source is not None and source not in SOURCES:
            raise RequestError(f"source must be one of: {', '.join(SOURCES)}.")
        media_type = text("type")
        if media_type is not None:
            media_type = "jpg" if media_type.lower() in ("jpeg", "jpg") else media_type.lower()
            if media_type not in MEDIA_TYPES:
                raise RequestError(f"type must be one of: {', '.join(MEDIA_TYPES)}.")
        taken_from, taken_to = _date(text("taken_from"), "taken_from"), _date(text("taken_to"), "taken_to")
        if taken_from and taken_to and taken_from > taken_to:
            raise RequestError("taken_from must not be after taken_to.")
        tag = text("tag")
        if tag is not None and len(tag) > 200:
            raise RequestError("tag is at most 200 characters.")
        return cls(source, tag, taken_from, taken_to, media_type)

    @property
    def active(self) -> bool:
        return any(dataclasses.astuple(self))

    def admits_record(self, is_original: bool, taken_at: str | None, media_type: str | None) -> bool:
        """The conditions on the image's row (the tag is checked against its tags separately)."""
        if self.source and is_original != (self.source == "originals"):
            return False
        if self.media_type and media_type != self.media_type:
            return False
        if self.taken_from or self.taken_to:
            day = (taken_at or "")[:10]
            if not day or (self.taken_from and day < self.taken_from) or (self.taken_to and day > self.taken_to):
                return False
        return True

    def as_dict(self) -> dict:
        return {key: value for key, value in (("source", self.source), ("tag", self.tag),
                                              ("taken_from", self.taken_from), ("taken_to", self.taken_to),
                                              ("type", self.media_type)) if value}


def _date(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        return datetime.date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        raise RequestError(f"{name} must be a date, YYYY-MM-DD.") from None


def filenames(value: Any, name: str) -> tuple[str, ...]:
    """A list of library filenames from a request field (a JSON list, or a form field repeated per name)."""
    if value is None or value == "" or value == []:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
        raise RequestError(f"{name} must be a list of library filenames.")
    items = value
    if len(items) > MAX_FEEDBACK:
        raise RequestError(f"{name} may name at most {MAX_FEEDBACK} images.")
    return tuple(dict.fromkeys(item.strip() for item in items))


def rocchio(query: np.ndarray | None, positives: Sequence[np.ndarray], negatives: Sequence[np.ndarray]) -> np.ndarray:
    """The query moved towards the mean of `positives` and away from the mean of `negatives`, unit length.

    All vectors are unit length (cosine engines); without a query, the positives alone define it.
    """
    parts = []
    if query is not None:
        parts.append(ROCCHIO_QUERY * np.asarray(query, np.float32))
    if len(positives):
        parts.append(ROCCHIO_POSITIVE * np.mean(positives, axis=0))
    if len(negatives):
        parts.append(-ROCCHIO_NEGATIVE * np.mean(negatives, axis=0))
    total = np.sum(parts, axis=0).astype(np.float32)
    return total / max(float(np.linalg.norm(total)), 1e-12)


def page_depth(k: int, page: int) -> int:
    """How many ranked results page `page` of `k` needs; 400 past MAX_RESULTS_DEPTH."""
    if page * k > MAX_RESULTS_DEPTH:
        raise RequestError(f"page × k may be at most {MAX_RESULTS_DEPTH}.")
    return page * k
