"""The application core: library files, feature store, index and jobs, tied together without any HTTP."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from . import imaging
from .config import Settings
from .duplicates import DuplicateFinder, DuplicateGroup
from .engines import get_engine
from .engines.base import Engine, WeightsUnavailable
from .errors import RequestError
from .extraction import extract_files, prepare_file
from .fetch import fetch_image_bytes
from .index import make_index
from .index.base import VectorIndex
from .index.exact import ExactIndex
from .jobs import Job, JobRunner, Progress
from .library import Library, NotFound
from .persist import remove_temp_files
from .retrieval import search_with_expansion
from .store import FeatureStore

log = logging.getLogger(__name__)


class Refused(RequestError):
    """A request the service will not carry out, such as deleting an original."""


@dataclasses.dataclass(frozen=True)
class Hit:
    filename: str
    similarity: float
    is_original: bool


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    k: int | None = None              # clamped to 1..max_k; None means the default
    min_similarity: float = 0.0
    engine: str | None = None         # None means the active engine


@dataclasses.dataclass(frozen=True)
class FeatureSpace:
    """One engine with its feature store and index: vectors from different spaces never meet."""

    engine: Engine
    store: FeatureStore
    index: VectorIndex


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    hits: list[Hit]
    query_type: str                     # "file", "url" or "filename"
    query_filename: str | None          # the library image used as, or added from, the query
    engine: Engine                      # the engine that ranked the results


class ImageSearchService:
    def __init__(self, settings: Settings, engine: Engine):
        self.settings = settings
        self.engine = engine
        self.library = Library(settings.images_dir, settings.thumbnails_dir, settings.uploads_dir,
                               settings.originals_manifest)
        self.store = FeatureStore(settings.features_dir, engine.model_id, engine.dim)
        self.index = make_index(settings, self.store, engine)
        self.primary = FeatureSpace(engine, self.store, self.index)
        self._spaces: dict[str, FeatureSpace] = {}
        self.duplicates = DuplicateFinder(settings.duplicate_threshold)
        self.jobs = JobRunner(settings.max_streams)
        self.startup_job: Job | None = None
        self._unreadable: dict[str, tuple[int, int]] = {}

    # ----- lifecycle -------------------------------------------------------------------------

    def open(self) -> "ImageSearchService":
        """Load stored features, drop those of vanished images, and index whatever is missing."""
        abandoned = self.library.remove_abandoned_files() + remove_temp_files(self.store.directory)
        if abandoned:
            log.info("Removed %d temporary files left by an interrupted run", abandoned)
        self.store.load()
        with self.store.lock:
            self._forget_vanished()
            self.index.rebuild()
        self.library.remove_orphan_thumbnails()
        self._spaces = self._open_search_spaces()
        if self._pending():
            self.startup_job = self.generate_features()
        return self

    def _forget_vanished(self) -> None:
        originals, uploads = self.library.scan()
        on_disk = {True: set(originals), False: set(uploads)}
        for is_original in (True, False):
            feature_set = self.store.set_for(is_original)
            gone = [name for name in feature_set.names if name not in on_disk[is_original]]
            if gone:
                feature_set.remove(gone)
                self.index.remove(gone)
                feature_set.save()

    # ----- reading -----------------------------------------------------------------------------

    def list_images(self) -> dict:
        stamps = self.library.scan_stamps()
        originals, uploads = self.library.split(stamps)
        return {
            "images": originals + uploads,
            "original_images": originals,
            "pending": [name for name, _ in self._pending(stamps)],
        }

    def _pending(self, stamps: dict[str, tuple[int, int]] | None = None) -> list[tuple[str, tuple[int, int]]]:
        """(name, stamp) of images whose features are missing or older than the file, originals first."""
        stamps = self.library.scan_stamps() if stamps is None else stamps
        pending = [(name, stamp) for name, stamp in stamps.items()
                   if self.store.set_for(self.library.is_original(name)).stamp(name) != stamp
                   and self._unreadable.get(name) != stamp]
        # Sorting only what is pending, not the whole listing again, keeps status polls cheap at 100k images.
        return sorted(pending, key=lambda item: (not self.library.is_original(item[0]), item[0]))

    def status(self) -> dict:
        stamps = self.library.scan_stamps()
        originals, uploads = self.library.split(stamps)
        pending = self._pending(stamps)
        job = self.jobs.running
        startup_running = self.startup_job is not None and self.startup_job.running
        return {
            **self.engine.describe(),
            "originals": len(originals),
            "user_images": len(uploads),
            "indexed": len(self.store),
            "pending": len(pending),
            "unreadable": sorted(self._unreadable),
            "job": {"running": job is not None, "current": job.current if job else 0,
                    "total": job.total if job else 0},
            "startup": {
                "state": "indexing originals" if startup_running else "ready",
                "current": self.startup_job.current if startup_running else 0,
                "total": self.startup_job.total if startup_running else 0,
            },
            "stores": {"originals": self.store.originals.load_problem or "loaded",
                       "user": self.store.uploads.load_problem or "loaded"},
            "index": self.index.describe(),
        }

    # ----- feature generation ------------------------------------------------------------------

    def generate_features(self) -> Job:
        """Start (or join) the job that computes every missing or stale feature vector."""
        return self.jobs.start(self._compute_pending)

    def _compute_pending(self, progress: Progress) -> dict:
        with self.store.lock:
            self._forget_vanished()
            work = self._pending()
            work += [(n, s) for n, s in self._unreadable.items() if (n, s) not in work]
        stamps = dict(work)
        total, done, computed = len(work), 0, 0
        progress(0, total, None, None)
        batches = extract_files(self.engine, (name for name, _ in work), self.library.path_of,
                                self.settings.batch_size, self.settings.decode_workers,
                                self.settings.max_image_pixels)
        for batch in batches:
            computed += self._commit(batch.names, batch.vectors, [stamps[n] for n in batch.names])
            for name in batch.names:
                self._unreadable.pop(name, None)
            done += len(batch.names)
            progress(done, total, None, None)
            for name, reason in batch.failures:
                self._unreadable[name] = stamps[name]
                done += 1
                progress(done, total, name, reason)
        return {**self.feature_counts(), "computed": computed}

    def feature_counts(self) -> dict:
        return {"count": len(self.store.uploads), "original_count": len(self.store.originals)}

    def _commit(self, names: Sequence[str], vectors: np.ndarray, stamps: Sequence[tuple[int, int]]) -> int:
        """Store vectors for images that still exist unchanged; returns how many were stored."""
        with self.store.lock:
            stored = 0
            for is_original in (True, False):
                rows = [i for i, name in enumerate(names) if self.library.is_original(name) == is_original
                        and self._current_stamp(name) == stamps[i]]
                if rows:
                    chosen = [names[i] for i in rows]
                    feature_set = self.store.set_for(is_original)
                    feature_set.add(chosen, vectors[rows], [stamps[i] for i in rows])
                    feature_set.save()
                    self.index.add(chosen, vectors[rows])
                    stored += len(rows)
            return stored

    def _current_stamp(self, name: str) -> tuple[int, int] | None:
        try:
            return self.library.stamp(name)
        except (NotFound, OSError):
            return None

    # ----- library changes ---------------------------------------------------------------------

    def add_image(self, data: bytes, client_name: str) -> str:
        """Validate, store and index one uploaded image; returns its library name."""
        if len(data) > self.settings.max_upload_bytes:
            raise Refused(f"The file is larger than {self.settings.max_upload_mb} MB.", 413)
        # [1]: the decoded image is dropped at once, before the second decode below.
        extension = imaging.decode_image(data, max_pixels=self.settings.max_image_pixels)[1]
        name = self.library.save_upload(data, client_name, extension)
        stamp = self._current_stamp(name)
        if stamp is not None:  # None: another request deleted it the moment it appeared
            vectors = self.engine.extract(prepare_file(self.engine, data, self.settings.max_image_pixels)[None])
            self._commit([name], vectors, [stamp])
        return name

    def delete_images(self, names: Sequence[str]) -> list[str]:
        """Delete user images with their thumbnails and features; all names are checked before any is touched."""
        if not names:
            raise Refused("No filenames given.", 400)
        with self.store.lock:
            for name in names:
                self.library.path_of(name)
                if self.library.is_original(name):
                    raise Refused(f"{name} is an original image and cannot be deleted.", 403)
            unique = list(dict.fromkeys(names))
            self.store.uploads.remove(unique)
            self.index.remove(unique)
            self.store.uploads.save()
            for name in unique:
                self.library.delete(name)
                self._unreadable.pop(name, None)
        return unique

    def duplicate_groups(self, threshold: float | None = None) -> tuple[float, list[DuplicateGroup]]:
        """(threshold used, near-duplicate groups over the whole library); reused until the store changes."""
        return self.duplicates.groups(self.store.snapshots(), self.engine.metric, threshold, self.library.is_original)

    # ----- search ------------------------------------------------------------------------------

    def clamp_k(self, k: int | None) -> int:
        if k is None:
            return self.settings.default_k
        return max(1, min(int(k), self.settings.max_k))

    def _open_search_spaces(self) -> dict[str, FeatureSpace]:
        """The other engines a search may name (IMAGE_SEARCH_SEARCH_ENGINES), loaded here at startup.

        A request can only pick one of these: nothing is ever loaded or read on behalf of a request.
        """
        spaces = {}
        for name in self.settings.search_engine_names:
            if name == self.engine.name:
                continue
            try:
                engine = get_engine(name, self.settings)
            except WeightsUnavailable as exc:
                log.warning("Searches cannot use %s: %s", name, exc)
                continue
            store = FeatureStore(self.settings.features_dir, engine.model_id, engine.dim)
            store.load()
            spaces[name] = FeatureSpace(engine, store, ExactIndex(store, engine.metric))
        return spaces

    def _space(self, engine_name: str | None) -> FeatureSpace:
        """The active engine's space, or an allowed engine's whose store covers the whole library."""
        if not engine_name or engine_name == self.engine.name:
            return self.primary
        space = self._spaces.get(engine_name)
        if space is None:
            # The same answer for every refused name, so a request learns nothing about files or models.
            offered = ", ".join([self.engine.name, *self._spaces])
            raise Refused(f"This server does not search with that engine; it offers: {offered}.", 400)
        originals, uploads = self.library.scan()
        missing = [name for name in originals + uploads if name not in space.store]
        if missing:
            raise Refused(f"The {engine_name} features are not ready: {len(missing)} images have none. "
                          f"Run the app once with IMAGE_SEARCH_MODEL={engine_name} to compute them, "
                          "then restart this server.", 409)
        return space

    def _search(self, space: FeatureSpace, vector: np.ndarray, options: SearchOptions,
                exclude: frozenset[str]) -> list[Hit]:
        if space is not self.primary:
            # Another engine's store may still hold images deleted since it was made.
            exclude |= {name for name in space.store.originals.names + space.store.uploads.names
                        if name not in self.library.original_names and not self.library.exists(name)}
        k = self.clamp_k(options.k)
        if self.settings.query_expansion and space.engine.metric == "cosine":
            ranked = search_with_expansion(lambda query, n: space.index.search(query[None], n, exclude)[0], vector,
                                           space.store.vector, self.settings.query_expansion, k)
        else:
            ranked = space.index.search(vector[None], k, exclude)[0]
        return [Hit(name, round(score, 6), self.library.is_original(name))
                for name, score in ranked if score >= options.min_similarity]

    def _search_source(self, source: bytes | Path, options: SearchOptions, query_type: str,
                       query_filename: str | None = None) -> SearchOutcome:
        """Rank the library against an image file or its bytes, decoded exactly as library images are.

        `query_filename`, the query's own name in the library if it has one, is left out of the results.
        """
        space = self._space(options.engine)
        vector = space.engine.extract(prepare_file(space.engine, source, self.settings.max_image_pixels)[None])[0]
        exclude = frozenset([query_filename]) if query_filename else frozenset()
        hits = self._search(space, vector, options, exclude)
        return SearchOutcome(hits, query_type, query_filename, space.engine)

    def search_bytes(self, data: bytes, options: SearchOptions = SearchOptions(),
                     add_to_library: bool = False, client_name: str = "") -> SearchOutcome:
        if len(data) > self.settings.max_upload_bytes:
            raise Refused(f"The file is larger than {self.settings.max_upload_mb} MB.", 413)
        added = self.add_image(data, client_name) if add_to_library else None
        return self._search_source(data, options, "file", added)

    def search_url(self, url: str, options: SearchOptions = SearchOptions(),
                   add_to_library: bool = False) -> SearchOutcome:
        data = fetch_image_bytes(url, allow_private=self.settings.allow_private_urls,
                                 timeout=self.settings.url_timeout, max_bytes=self.settings.max_upload_bytes)
        try:
            added = self.add_image(data, Path(url.split("?", 1)[0]).name) if add_to_library else None
            return self._search_source(data, options, "url", added)
        except imaging.ImageError as exc:
            raise Refused(f"The URL did not return a usable image: {exc.message}", 422) from None

    def search_filename(self, name: str, options: SearchOptions = SearchOptions()) -> SearchOutcome:
        path = self.library.path_of(name)
        space = self._space(options.engine)
        vector = space.store.vector(name)
        if vector is not None and space.store.stamp(name) == self.library.stamp(name):
            hits = self._search(space, vector, options, frozenset([name]))
            return SearchOutcome(hits, "filename", name, space.engine)
        return self._search_source(path, options, "filename", name)
