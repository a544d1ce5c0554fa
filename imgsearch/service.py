"""The application core: the library's files, its catalogue, the engines' feature spaces and the feature job,
tied together without any HTTP."""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from .catalogue import Catalogue, ImageRecord, database_url, describe_url
from .config import Settings
from .duplicates import DuplicateFinder, DuplicateGroup
from .engines import get_engine, get_tagger
from .engines.base import Engine, WeightsUnavailable
from .errors import RequestError
from .extraction import ReadImage, read_image
from .fetch import fetch_image_bytes
from .imaging import ImageError
from .index import make_index
from .index.exact import ExactIndex
from .jobs import Job, JobRunner, Progress
from .library import Library, NotFound, natural_key
from .migrate import import_legacy_feature_files
from .query import Box, Filters, page_depth, rocchio
from .search import Searcher
from .space import FeatureSpace
from .sync import current_stamp, reconcile, sync
from .vocabulary import TextMatch, load as load_vocabulary
from .watch import CatalogueFollower, FolderWatcher

log = logging.getLogger(__name__)

# The catalogue remembers which engine served last, and with which of these settings, to fall back on it
# while a newly chosen engine computes its vectors.
SERVING_ENGINE = "serving_engine"
ENGINE_SETTINGS = ("weights", "metric", "precision", "feature_layer", "feature_pooling", "feature_scales",
                   "flip_average", "runtime")


class Refused(RequestError):
    """A request the service will not carry out, such as deleting an original."""


@dataclasses.dataclass(frozen=True)
class Hit:
    filename: str
    similarity: float
    is_original: bool


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    k: int | None = None              # results per page, clamped to 1..max_k; None means the default
    min_similarity: float = 0.0
    engine: str | None = None         # None means the active engine
    page: int = 1
    box: Box | None = None            # search by this region of the query image only
    text: str | None = None           # words: alone they rank by tags; with an image they restrict its results
    positive: tuple[str, ...] = ()    # library images to move towards ("more like this")
    negative: tuple[str, ...] = ()    # library images to move away from ("less like this")
    filters: Filters = Filters()


@dataclasses.dataclass(frozen=True)
class Added:
    """An upload's place in the library."""

    filename: str
    already_in_library: bool          # the same bytes were there already: nothing new was stored


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    hits: list[Hit]
    query_type: str                     # "file", "url" or "filename"
    query_filename: str | None          # the library image used as, or added from, the query
    engine: Engine                      # the engine that ranked the results (the tagger for words alone)
    already_in_library: bool = False    # the query was to be added, and its bytes were there already
    words: TextMatch | None = None      # what the query's words matched
    page: int = 1
    has_more: bool = False              # a next page has results
    reranked: bool = False              # query expansion ordered the results, not each one's own score


class ImageSearchService:
    def __init__(self, settings: Settings, engine: Engine):
        self.settings = settings
        self.engine = engine
        self.library = Library(settings.images_dir, settings.thumbnails_dir, settings.uploads_dir,
                               settings.originals_manifest)
        self.catalogue = Catalogue(database_url(settings.database, settings.data_dir))
        self.primary = FeatureSpace(self.catalogue, engine, lambda store: make_index(settings, store, engine))
        # What searches use: the active engine's space, or, while its vectors are still being computed after
        # the engine changed, the previous engine's (see `_previous_space`).
        self.serving = self.primary
        self.tagger = get_tagger(settings) if settings.tag_images else None
        # Tags are never ranked by similarity: the exact "index" is only there because every space has one.
        self.tags = FeatureSpace(self.catalogue, self.tagger, lambda store: ExactIndex(store, "tags")) \
            if self.tagger else None
        self.searcher = Searcher(self.catalogue, self.tags, load_vocabulary, settings.query_expansion)
        self._spaces: dict[str, FeatureSpace] = {}
        self._sorted: tuple[int, tuple[list[ImageRecord], list[ImageRecord]]] = (-1, ([], []))
        self.duplicates = DuplicateFinder(settings.duplicate_threshold)
        self.jobs = JobRunner(settings.max_streams)
        self.startup_job: Job | None = None
        self._watcher: FolderWatcher | None = None
        self._follower: CatalogueFollower | None = None

    @property
    def store(self):
        return self.serving.store

    @property
    def index(self):
        return self.serving.index

    # ----- lifecycle -------------------------------------------------------------------------

    def open(self) -> "ImageSearchService":
        """Open the catalogue, bring its rows up to date with the folder, load the vectors, start following."""
        abandoned = self.library.remove_abandoned_files()
        if abandoned:
            log.info("Removed %d temporary files left by an interrupted run", abandoned)
        self.catalogue.open()
        reconcile(self.catalogue, self.library)
        import_legacy_feature_files(self.catalogue, self.settings.features_dir)
        self.primary.open()
        self.serving = self._previous_space() or self.primary
        self._record_serving_engine()
        if self.tags:
            self.tags.open()
        self.library.remove_orphan_thumbnails()
        self._follower = CatalogueFollower(self.catalogue).start()
        if self.settings.watch_folder or self.settings.rescan_seconds:
            self._watcher = FolderWatcher(self.settings.images_dir, self.sync_now, self.settings.rescan_seconds,
                                          notify=self.settings.watch_folder, recorded=self._recorded).start()
        self._spaces = self._open_search_spaces()
        if any(space.pending() for space in self._synced_spaces()):
            self.startup_job = self.generate_features()
        return self

    def close(self) -> None:
        """Stop the background threads and let the database go (tests open many services in one process)."""
        for worker in (self._watcher, self._follower):
            if worker is not None:
                worker.stop()
        job = self.jobs.running
        if job is not None:
            job.thread.join()
        self.catalogue.close()

    # ----- reading -----------------------------------------------------------------------------

    def _split(self) -> tuple[list[ImageRecord], list[ImageRecord]]:
        """(originals, user images), each in natural order ("img2" before "img10"); sorted once per change
        of the catalogue, since status polls and gallery pages ask for it far more often than it changes."""
        version, split = self._sorted
        if version != self.catalogue.version:
            version = self.catalogue.version
            records = sorted(self.catalogue.records(), key=lambda record: natural_key(record.name))
            split = [r for r in records if r.is_original], [r for r in records if not r.is_original]
            self._sorted = version, split
        return split

    def list_images(self, filters: Filters = Filters()) -> dict:
        """The gallery: the user's own images first, then the originals; `filters` may narrow it."""
        originals, uploads = self._split()
        allowed = self.searcher.allowed(filters)
        shown = [r.name for r in uploads + originals if allowed is None or r.name in allowed]
        pending = set(self.primary.pending())
        return {
            "images": shown,
            "original_images": [r.name for r in originals if allowed is None or r.name in allowed],
            "pending": [name for name in shown if name in pending],
        }

    def status(self) -> dict:
        originals, uploads = self._split()
        job = self.jobs.running
        startup_running = self.startup_job is not None and self.startup_job.running
        return {
            **self.engine.describe(),
            "originals": len(originals),
            "user_images": len(uploads),
            "indexed": len(self.store),
            "pending": len(self.primary.pending()),
            "tags": {"tagged": len(self.tags.store), "pending": len(self.tags.pending())} if self.tags else None,
            "unreadable": [r.name for r in originals + uploads if r.error is not None],
            "job": {"running": job is not None, "current": job.current if job else 0,
                    "total": job.total if job else 0},
            "startup": {
                "state": "indexing originals" if startup_running else "ready",
                "current": self.startup_job.current if startup_running else 0,
                "total": self.startup_job.total if startup_running else 0,
            },
            "catalogue": {"backend": self.catalogue.backend, "url": describe_url(self.catalogue.url)},
            # While the engine changes: searches use `from` until `to` has a vector for every image.
            "switch": None if self.serving is self.primary else {
                "from": self.serving.model_id, "to": self.primary.model_id,
                "done": len(self.primary.store), "total": len(self.catalogue)},
            # Changes whenever the gallery or the vectors change, here or through another process.
            "library_version": f"{self.catalogue.version}.{self.primary.version}.{self.serving.model_id}",
            "index": self.index.describe(),
        }

    def feature_counts(self) -> dict:
        return {"count": len(self.store.uploads), "original_count": len(self.store.originals)}

    # ----- feature generation ------------------------------------------------------------------

    def generate_features(self, retry_unreadable: bool = False) -> Job:
        """Start (or join) the job that syncs the catalogue with the folder and computes every missing vector.

        `retry_unreadable` (what "Generate Features" asks for) reads files known to be unreadable again.
        """
        return self.jobs.start(lambda progress: self._sync(progress, retry_unreadable))

    def sync_now(self) -> None:
        """Run a sync that starts after this call and wait for it (a running one may predate a change)."""
        requested = self.jobs.generation
        job = self.generate_features()
        while job.generation <= requested:
            job.thread.join()
            job = self.generate_features()
        job.thread.join()

    def _recorded(self, names: set[str]) -> bool:
        """Whether the catalogue holds each of these files of images/ as it is now (or, gone, not at all)."""
        for name in names:
            record = self.catalogue.get(name)
            if (record.stamp if record else None) != current_stamp(self.library, name):
                return False
        return True

    def _synced_spaces(self) -> list[FeatureSpace]:
        """What the feature job and uploads keep current: the active engine's vectors, the previous engine's
        while it still serves, and, when tagging, the tags."""
        return [space for space in dict.fromkeys([self.primary, self.serving, self.tags]) if space is not None]

    def _sync(self, progress: Progress, retry_unreadable: bool) -> dict:
        report = sync(self.catalogue, self._synced_spaces(), self.library, batch_size=self.settings.batch_size,
                      workers=self.settings.decode_workers, max_pixels=self.settings.max_image_pixels,
                      progress=progress, retry_unreadable=retry_unreadable)
        self._switch_when_ready()
        return {**self.feature_counts(), "computed": report.computed}

    # ----- changing engines --------------------------------------------------------------------

    def _previous_space(self) -> FeatureSpace | None:
        """The engine that served before, while the active engine's vectors are incomplete.

        Changing the engine (or its settings) changes the feature space, and computing every vector again
        takes a while: meanwhile searches keep using the previous engine, whose vectors are all there.
        """
        recorded = self.catalogue.read_state(SERVING_ENGINE)
        if recorded is None or not self.primary.pending():
            return None
        spec = json.loads(recorded)
        if spec["model_id"] == self.engine.model_id:
            return None
        try:
            engine = get_engine(spec["name"], dataclasses.replace(self.settings, model=spec["name"],
                                                                  **spec["settings"]))
        except Exception as exc:  # its weights or its settings are gone: nothing to fall back on
            log.warning("The previous engine %s cannot be loaded (%s); searches use %s at once",
                        spec["model_id"], exc, self.engine.model_id)
            return None
        previous = FeatureSpace(self.catalogue, engine, lambda store: make_index(self.settings, store, engine)).open()
        if len(previous.pending()) >= len(self.primary.pending()):
            previous.close()
            return None
        log.info("Searches use %s until the %s features are complete (%d images to go)",
                 engine.model_id, self.engine.model_id, len(self.primary.pending()))
        return previous

    def _switch_when_ready(self) -> None:
        """Once the active engine covers the library, searches move to it and the previous engine is let go."""
        previous = self.serving
        if previous is not self.primary and not self.primary.pending():
            self.serving = self.primary
            previous.close()
            log.info("Searches now use %s", self.engine.model_id)
        self._record_serving_engine()

    def _record_serving_engine(self) -> None:
        """Remember which engine serves, so that a later change of engine knows what to fall back on."""
        if self.serving is not self.primary or self.primary.pending():
            return
        spec = {"name": self.engine.name, "model_id": self.engine.model_id,
                "settings": {name: getattr(self.settings, name) for name in ENGINE_SETTINGS}}
        if self.catalogue.read_state(SERVING_ENGINE) != json.dumps(spec, sort_keys=True):
            with self.catalogue.write() as write:
                write.set_state(SERVING_ENGINE, json.dumps(spec, sort_keys=True))

    # ----- library changes ---------------------------------------------------------------------

    def _read_upload(self, data: bytes, input_size: int) -> ReadImage:
        if len(data) > self.settings.max_upload_bytes:
            raise Refused(f"The file is larger than {self.settings.max_upload_mb} MB.", 413)
        return read_image(data, input_size, self.settings.max_image_pixels)

    def add_image(self, data: bytes, client_name: str) -> Added:
        """Validate, store and index one uploaded image: decoded once, one transaction."""
        read = self._read_upload(data, self.engine.input_size)
        return self._add(data, read, client_name)

    def _add(self, data: bytes, read: ReadImage, client_name: str,
             computed: dict[FeatureSpace, np.ndarray] | None = None) -> Added:
        """Store already-decoded upload bytes with a vector in every kept space (`computed` ones are reused)."""
        sha256 = read.details.sha256
        known = self.catalogue.name_with_hash(sha256)
        if known is not None and self.library.exists(known):
            return Added(known, True)
        computed = computed or {}
        vectors = {space: computed[space] if space in computed else
                   space.engine.extract(space.engine.prepare(read.image)[None])[0]
                   for space in self._synced_spaces()}
        staged = self.library.stage_upload(data)
        name = None
        try:
            with self.catalogue.write() as write:
                # The same bytes may have arrived meanwhile, through this process or another.
                known = write.name_with_hash(sha256)
                if known is not None and self.library.exists(known):
                    return Added(known, True)
                name = self.library.link_upload(staged, client_name, read.details.media_type)
                stamp = current_stamp(self.library, name)
                if stamp is not None:  # None: removed by hand the moment it appeared; it was stored, then deleted
                    # Without an EXIF date, an upload was taken when it arrived: its file's time, as for copies.
                    details = read.details if read.details.taken_at else dataclasses.replace(
                        read.details, taken_at=datetime.datetime.fromtimestamp(stamp[1] / 1e9).isoformat(
                            timespec="seconds"))
                    write.put_records([ImageRecord(name, False, *stamp).with_details(details)])
                    for space, vector in vectors.items():
                        space.put(write, [name], vector[None], [stamp])
        except BaseException:
            if name is not None:  # linked, but the transaction did not commit: leave no file without a row
                (self.settings.images_dir / name).unlink(missing_ok=True)
            raise
        finally:
            staged.unlink(missing_ok=True)
        return Added(name, False)

    def delete_images(self, names: Sequence[str]) -> list[str]:
        """Delete user images with their thumbnails and vectors; all names are checked before any is touched."""
        if not names:
            raise Refused("No filenames given.", 400)
        with self.catalogue.write() as write:
            for name in names:
                self.library.path_of(name)
                if self.library.is_original(name):
                    raise Refused(f"{name} is an original image and cannot be deleted.", 403)
            unique = list(dict.fromkeys(names))
            for name in unique:
                self.library.delete(name)
            write.remove(unique)
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
            spaces[name] = FeatureSpace(self.catalogue, engine,
                                        lambda store, metric=engine.metric: ExactIndex(store, metric)).open()
        return spaces

    def _space(self, engine_name: str | None) -> FeatureSpace:
        """The space searches use by default, or a named engine's whose vectors cover the whole library."""
        if not engine_name:
            return self.serving
        space = self.primary if engine_name == self.engine.name else self._spaces.get(engine_name)
        if space is None:
            # The same answer for every refused name, so a request learns nothing about files or models.
            offered = ", ".join([self.engine.name, *self._spaces])
            raise Refused(f"This server does not search with that engine; it offers: {offered}.", 400)
        missing = len(space.pending())
        if missing:
            raise Refused(f"The {engine_name} features are not ready: {missing} images have none. "
                          f"Run the app once with IMAGE_SEARCH_MODEL={engine_name} to compute them.", 409)
        return space

    def _rank(self, space: FeatureSpace, vector: np.ndarray | None, options: SearchOptions, query_type: str,
              query_filename: str | None = None, already_in_library: bool = False) -> SearchOutcome:
        """Rank the library for a query vector (or, without one, for the words of `options.text`), with
        the feedback, filters and page of `options`."""
        exclude = frozenset(options.positive) | frozenset(options.negative) | \
            (frozenset([query_filename]) if query_filename else frozenset())
        if options.positive or options.negative:
            vector = self._with_feedback(space, vector, options)
        words = self.searcher.vocabulary.match(options.text) if options.text else None
        if vector is None and words is None:
            raise Refused("Give a query: an image 'file', an image 'url', a library 'filename', 'text', "
                          "or 'positive' library images.")
        k = self.clamp_k(options.k)
        depth = page_depth(k, options.page) + 1  # one more tells whether there is a next page
        if vector is None:
            ranked = self.searcher.by_text(words, depth, exclude, self.searcher.allowed(options.filters))
        else:
            ranked = self.searcher.by_vector(space, vector, depth, exclude,
                                             self.searcher.allowed(options.filters, words))
        shown = ranked[(options.page - 1) * k: options.page * k]
        hits = [Hit(name, round(score, 6), self.library.is_original(name))
                for name, score in shown if score >= options.min_similarity]
        reranked = vector is not None and bool(self.settings.query_expansion) and space.engine.metric == "cosine"
        return SearchOutcome(hits, query_type, query_filename, space.engine if vector is not None else self.tagger,
                             already_in_library, words, options.page, len(ranked) > options.page * k, reranked)

    def _with_feedback(self, space: FeatureSpace, vector: np.ndarray | None, options: SearchOptions) -> np.ndarray:
        """The query moved towards the `positive` images and away from the `negative` ones (Rocchio)."""
        if space.engine.metric != "cosine":
            raise Refused(f"More like / less like needs a cosine engine; {space.engine.name} ranks by "
                          f"{space.engine.metric}.")
        if vector is None and not options.positive:
            raise Refused("'negative' images need a query, or 'positive' images, to move away from.")

        def vectors_of(names: tuple[str, ...]) -> list[np.ndarray]:
            found = []
            for name in names:
                self.library.path_of(name)  # 404 for a name that is not in the library
                stored = space.store.vector(name)
                if stored is None:
                    raise Refused(f"{name} has no features yet; generate them first.", 409)
                found.append(stored)
            return found

        return rocchio(vector, vectors_of(options.positive), vectors_of(options.negative))

    def _query_vector(self, space: FeatureSpace, image, box: Box | None) -> np.ndarray:
        image = box.crop(image) if box else image
        return space.engine.extract(space.engine.prepare(image)[None])[0]

    def _search_image(self, data: bytes, options: SearchOptions, query_type: str, add_to_library: bool,
                      client_name: str) -> SearchOutcome:
        """Rank the library against image bytes (decoded once); with `add_to_library` also store them,
        running the model once when the search uses the active engine on the whole image."""
        space = self._space(options.engine)
        read = self._read_upload(data, max(space.engine.input_size, self.engine.input_size))
        vector = self._query_vector(space, read.image, options.box)
        added = None
        if add_to_library:
            added = self._add(data, read, client_name, {} if options.box else {space: vector})
        return self._rank(space, vector, options, query_type, added.filename if added else None,
                          bool(added and added.already_in_library))

    def search_bytes(self, data: bytes, options: SearchOptions = SearchOptions(),
                     add_to_library: bool = False, client_name: str = "") -> SearchOutcome:
        return self._search_image(data, options, "file", add_to_library, client_name)

    def search_url(self, url: str, options: SearchOptions = SearchOptions(),
                   add_to_library: bool = False) -> SearchOutcome:
        data = fetch_image_bytes(url, allow_private=self.settings.allow_private_urls,
                                 timeout=self.settings.url_timeout, max_bytes=self.settings.max_upload_bytes)
        try:
            return self._search_image(data, options, "url", add_to_library, Path(url.split("?", 1)[0]).name)
        except ImageError as exc:
            raise Refused(f"The URL did not return a usable image: {exc.message}", 422) from None

    def search_filename(self, name: str, options: SearchOptions = SearchOptions()) -> SearchOutcome:
        path = self.library.path_of(name)
        space = self._space(options.engine)
        vector = space.store.vector(name)
        record = self.catalogue.get(name)
        if options.box or vector is None or record is None or space.store.stamp(name) != record.stamp:
            read = read_image(path, space.engine.input_size, self.settings.max_image_pixels)
            vector = self._query_vector(space, read.image, options.box)
        return self._rank(space, vector, options, "filename", name)

    def search_without_image(self, options: SearchOptions = SearchOptions()) -> SearchOutcome:
        """A query of words alone, or of `positive` (and `negative`) library images alone."""
        space = self._space(options.engine)
        return self._rank(space, None, options, "feedback" if options.positive else "text")

    # ----- tags --------------------------------------------------------------------------------

    def image_info(self, name: str) -> dict:
        """What the library knows of one image: its row and its shown tags."""
        self.library.path_of(name)
        record = self.catalogue.get(name)
        if record is None:
            raise NotFound(name)
        return {"filename": name, "is_original": record.is_original, "size": record.size,
                "taken_at": record.taken_at, "type": record.media_type, "unreadable": record.error,
                "tags": [{"name": tag, "probability": p} for tag, p in self.searcher.tags_of(name)]}

    def tag_counts(self) -> list[dict]:
        return [{"name": tag, "count": count} for tag, count in self.searcher.tag_counts()]
