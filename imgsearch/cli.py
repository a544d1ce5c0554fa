"""The command line, `python -m imgsearch COMMAND`: index and search a folder of images, and look after the app.

A folder's catalogue is the SQLite file `FOLDER/.imgsearch/catalogue.db` unless `--store DIR` (a folder
for it) or `--database URL` (SQLite or PostgreSQL, shared by several machines) says otherwise. It keeps
each engine's vectors apart, so indexing the same folder with two engines keeps both.

Each command is one `run_<command>(args) -> exit code` function plus one entry in `build_parser`.
A CommandError ends the command with its message on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from .catalogue import Catalogue, CatalogueError, database_url, describe_url, model_dimensions, read_vectors
from .config import Settings
from . import evaluate
from .engines import ENGINE_NAMES, get_engine, get_tagger, load_active_engine
from .engines.base import Engine, WeightsUnavailable
from .extraction import read_image
from .engines.keras_weights import forget_failed_downloads
from .errors import RequestError
from .imaging import ImageError, configure_decoding
from .index.exact import ExactIndex
from .library import Library
from .persist import atomic_write_bytes
from .query import MEDIA_TYPES, Box, Filters, rocchio
from .retrieval import PostProcessing
from .search import Searcher
from .space import FeatureSpace
from .sync import FileSource, FolderSource, Shard, SyncReport, reconcile, sync
from .vocabulary import load as load_vocabulary

STORE_DIR_NAME = ".imgsearch"
CATALOGUE_FILE = "catalogue.db"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A problem the user can fix (missing store, bad query, ...): printed without a traceback."""


# ----- shared pieces ---------------------------------------------------------------------------


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the command's options on top."""
    try:
        settings = Settings.from_env(model=getattr(args, "engine", None), weights=getattr(args, "weights", None),
                                     batch_size=getattr(args, "batch_size", None))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    configure_decoding(settings.max_image_pixels, settings.max_decode_bytes, settings.max_decodes)
    return settings


def load_engine(settings: Settings) -> Engine:
    """The engine the settings ask for; like the app, the offline model stands in for unavailable
    ImageNet weights, with a logged warning (printed on stderr)."""
    try:
        return load_active_engine(settings)
    except (ValueError, WeightsUnavailable) as exc:
        raise CommandError(str(exc)) from None


def existing_folder(text: str) -> Path:
    folder = Path(text)
    if not folder.is_dir():
        raise CommandError(f"{folder} is not a folder")
    return folder


def folder_catalogue(args: argparse.Namespace, folder: Path) -> Catalogue:
    """The catalogue of an indexed folder: `--database`, else `CATALOGUE_FILE` in `--store DIR` or FOLDER/.imgsearch."""
    if args.database:
        return open_catalogue(database_url(args.database, folder))
    store_dir = Path(args.store) if args.store else folder / STORE_DIR_NAME
    return open_catalogue(f"sqlite:///{store_dir / CATALOGUE_FILE}")


def open_catalogue(url: str) -> Catalogue:
    try:
        return Catalogue(url).open()
    except CatalogueError as exc:
        raise CommandError(str(exc)) from None


def sync_with_progress(catalogue: Catalogue, spaces: list[FeatureSpace], source: FileSource, settings: Settings,
                       only=None) -> SyncReport:
    """The sync loop with a progress bar on stderr; skipped files are listed as they happen."""
    with tqdm(unit="img", desc=spaces[0].engine.name, file=sys.stderr, dynamic_ncols=True) as bar:
        def progress(done: int, total: int, name: str | None, reason: str | None) -> None:
            if name:
                bar.write(f"skipped {name}: {reason}", file=sys.stderr)
            bar.total = total
            bar.update(done - bar.n)

        return sync(catalogue, spaces, source, batch_size=settings.batch_size, workers=settings.decode_workers,
                    max_pixels=settings.max_image_pixels, progress=progress, only=only, retry_unreadable=True)


def print_summary(report: SyncReport, space: FeatureSpace, where: str) -> None:
    skipped = len(report.failures)
    print(f"{report.examined} files: {report.computed} computed, {report.unchanged} unchanged, "
          f"{skipped} skipped{' (listed above)' if skipped else ''}, {report.dropped} dropped")
    print(f"{where}: {len(space.store)} images, {space.model_id}")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def box_spec(text: str) -> Box:
    try:
        return Box.parse(text)
    except RequestError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def shard_spec(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def query_name_in(folder: Path, query: str | None) -> frozenset[str]:
    """The query's own name when it is one of the folder's images, so it is not its own first hit."""
    if query is None:
        return frozenset()
    try:
        return frozenset([Path(query).resolve().relative_to(folder.resolve()).as_posix()])
    except ValueError:
        return frozenset()


def exact_space(catalogue: Catalogue, engine: Engine) -> FeatureSpace:
    return FeatureSpace(catalogue, engine, lambda store: ExactIndex(store, engine.metric)).open()


# ----- commands --------------------------------------------------------------------------------


def run_index(args: argparse.Namespace) -> int:
    folder = existing_folder(args.folder)
    settings = load_settings(args)
    engine = load_engine(settings)
    catalogue = folder_catalogue(args, folder)
    space = exact_space(catalogue, engine)
    spaces = [space] + ([exact_space(catalogue, get_tagger(settings))] if settings.tag_images else [])
    report = sync_with_progress(catalogue, spaces, FolderSource(folder), settings,
                                only=args.shard.holds if args.shard else None)
    print_summary(report, space, describe(catalogue))
    return 0


def describe(catalogue: Catalogue) -> str:
    return describe_url(catalogue.url)


def run_merge(args: argparse.Namespace) -> int:
    """Copy into this folder's catalogue the vectors of other catalogues of it (shards indexed elsewhere)."""
    folder = existing_folder(args.folder)
    target = folder_catalogue(args, folder)
    reconcile(target, FolderSource(folder))
    copied: dict[str, int] = {}
    for source_name in args.sources:
        if "://" not in source_name and not Path(source_name).is_file():
            raise CommandError(f"there is no catalogue at {source_name}")
        source = open_catalogue(database_url(source_name, folder) if "://" in source_name
                                else f"sqlite:///{Path(source_name).resolve()}")
        with source.reading() as conn:
            for model_id, dim in model_dimensions(conn).items():
                for names, matrix, stamps in read_vectors(conn, model_id, dim):
                    # Only vectors of files as they are now: a stale one would never be recomputed.
                    rows = [i for i, (name, stamp) in enumerate(zip(names, stamps))
                            if (record := target.get(name)) is not None and record.stamp == stamp]
                    with target.write() as write:
                        write.put_vectors(model_id, [names[i] for i in rows], matrix[rows], [stamps[i] for i in rows])
                    copied[model_id] = copied.get(model_id, 0) + len(rows)
        source.close()
    print(f"{describe(target)}: copied from {len(args.sources)} catalogue(s): "
          + (", ".join(f"{count} {model_id} vectors" for model_id, count in sorted(copied.items())) or "nothing"))
    return 0


def run_search(args: argparse.Namespace) -> int:
    folder = existing_folder(args.folder)
    settings = load_settings(args)
    if args.query is None and not args.text and not args.like:
        raise CommandError("give a QUERY_IMAGE, --text words, or --like images of the folder")
    engine = load_engine(settings)
    vector = None
    if args.query is not None:
        try:
            image = read_image(Path(args.query), engine.input_size, settings.max_image_pixels).image
            vector = engine.extract(engine.prepare(args.box.crop(image) if args.box else image)[None])[0]
        except ImageError as exc:
            raise CommandError(f"{args.query}: {exc.message}") from None
        except OSError as exc:
            raise CommandError(f"{args.query}: {exc.strerror or exc}") from None
    catalogue = folder_catalogue(args, folder)
    space = exact_space(catalogue, engine)
    if not len(space.store):
        raise CommandError(f"no {engine.model_id} features in {describe(catalogue)}; "
                           f"run `python -m imgsearch index {folder} --engine {settings.model}` first")
    tags = exact_space(catalogue, get_tagger(settings)) if settings.tag_images else None
    searcher = Searcher(catalogue, tags, load_vocabulary, settings.query_expansion)
    try:
        words = searcher.vocabulary.match(args.text) if args.text else None
        if args.like or args.unlike:
            vector = rocchio(vector, *[[feedback_vector(space, name) for name in names]
                                       for names in (args.like, args.unlike)])
        exclude = query_name_in(folder, args.query) | frozenset(args.like) | frozenset(args.unlike)
        if vector is None:
            hits = searcher.by_text(words, args.k, exclude, searcher.allowed(args.filters))
        else:
            hits = searcher.by_vector(space, vector, args.k, exclude, searcher.allowed(args.filters, words))
    except RequestError as exc:
        raise CommandError(exc.message) from None
    if args.json:
        print(json.dumps({
            "query": None if args.query is None else str(args.query), "folder": str(folder),
            "model_id": engine.model_id if vector is not None else tags.model_id,
            "metric": engine.metric if vector is not None else "tags",
            "matched": None if words is None else [{"text": term.text, "concepts": [c.name for c in term.concepts]}
                                                   for term in words.terms],
            "results": [{"rank": rank, "score": round(score, 6), "name": name, "path": str(folder / name)}
                        for rank, (name, score) in enumerate(hits, 1)],
        }, indent=2))
    else:
        if words is not None:
            print("words: " + "; ".join(f"{term.text} = {', '.join(c.name for c in term.concepts)}"
                                        for term in words.terms)
                  + (f" (not known: {', '.join(words.unmatched)})" if words.unmatched else ""))
        print(f"{'rank':>4}  {'score':<6}  path")
        for rank, (name, score) in enumerate(hits, 1):
            print(f"{rank:>4}  {score:.4f}  {folder / name}")
    return 0


def feedback_vector(space: FeatureSpace, name: str):
    vector = space.store.vector(name)
    if vector is None:
        raise CommandError(f"{name} is not an indexed image of the folder")
    return vector


def run_originals(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    manifest = settings.originals_manifest
    library = Library(settings.images_dir, settings.thumbnails_dir, settings.uploads_dir, manifest)
    if args.init:
        if manifest.exists():
            raise CommandError(f"{manifest} already exists; edit it by hand instead of --init")
        present = sorted(library.scan_stamps())  # with no manifest yet, every image counts as a user image
        if not present:
            raise CommandError(f"there are no images in {settings.images_dir} to list")
        atomic_write_bytes(manifest, "".join(f"{name}\n" for name in present).encode("utf-8"))
        print(f"wrote {manifest} listing {len(present)} originals")
        library = Library(settings.images_dir, settings.thumbnails_dir, settings.uploads_dir, manifest)
    elif not manifest.exists():
        raise CommandError(f"{manifest} does not exist; whoever ships the originals creates it with --init")
    engine = load_engine(settings)
    catalogue = open_catalogue(database_url(settings.database, settings.data_dir))
    space = exact_space(catalogue, engine)
    spaces = [space] + ([exact_space(catalogue, get_tagger(settings))] if settings.tag_images else [])

    def wanted(name: str) -> bool:
        return library.is_original(name) and (args.shard is None or args.shard.holds(name))

    report = sync_with_progress(catalogue, spaces, library, settings, only=wanted)
    print_summary(report, space, describe(catalogue))
    return 0


def run_rebuild(args: argparse.Namespace) -> int:
    from .service import ImageSearchService  # the app's core is only needed here

    settings = load_settings(args)
    engine = load_engine(settings)
    service = ImageSearchService(settings, engine).open()
    try:
        job = service.startup_job
        if job is not None:
            with tqdm(unit="img", desc="missing features", file=sys.stderr, dynamic_ncols=True) as bar:
                for state in job.events():
                    if state and "current" in state:
                        bar.total = state["total"]
                        bar.update(state["current"] - bar.n)
            if job.error:
                raise CommandError(job.error)
            print(f"computed {job.result['computed']} missing feature vectors")
        with service.catalogue.write():  # holds the write lock: nothing changes the index meanwhile
            service.index.rebuild()
        described = service.index.describe()
        print(f"{engine.model_id}: {len(service.store.originals)} originals and {len(service.store.uploads)} user "
              f"images stored; the {described['backend']} index holds {described['count']} vectors"
              f"{'' if described['consistent'] else ' (MISMATCH with the catalogue)'}")
        return 0 if described["consistent"] else 1
    finally:
        service.close()


def run_prepare(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if args.retry_download:
        forget_failed_downloads(settings.cache_dir)
    for name in dict.fromkeys(args.engines or [settings.model]):
        try:
            engine = load_engine(dataclasses.replace(settings, model=name))
        except ValueError as exc:  # the settings' own check, for this engine
            raise CommandError(str(exc)) from None
        print(f"{name}: {engine.model_id} runs on {engine.runtime}"
              + (f", standing in: {engine.fallback_reason}" if engine.fallback_reason else ""))
    if settings.tag_images:
        tagger = get_tagger(settings)
        print(f"tags: {tagger.model_id} runs on {tagger.runtime}")
    print(f"exported graphs are cached in {settings.cache_dir / 'onnx'}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    for dataset in args.datasets:
        existing_folder(dataset)
    try:
        options = PostProcessing(whiten_dim=args.whiten, strength=args.whiten_strength, power=args.power,
                                 dba_k=args.dba, qe_k=args.qe, alpha=args.alpha, keep_nearest=args.keep_nearest)
        engines = [get_engine(name, settings) for name in dict.fromkeys(args.engines or [settings.model])]
    except (ValueError, WeightsUnavailable) as exc:
        raise CommandError(str(exc)) from None
    cache_dir = None if args.no_cache else Path(args.cache)
    runs = []
    for dataset in args.datasets:
        for engine in engines:
            try:
                runs.append(evaluate.evaluate_dataset(
                    engine, dataset, options, robustness=args.robustness, seed=args.seed, cache_dir=cache_dir,
                    batch_size=settings.batch_size, progress=lambda message: print(message, file=sys.stderr)))
            except ValueError as exc:
                raise CommandError(f"{dataset}: {exc}") from None
            except ImageError as exc:
                raise CommandError(f"{dataset}: an image could not be read: {exc.message}") from None
    report = evaluate.build_report(runs, {
        "datasets": [str(d) for d in args.datasets], "engines": [e.model_id for e in engines],
        "postprocessing": options.label(), "robustness_sample": args.robustness, "seed": args.seed,
        "batch_size": settings.batch_size})
    written = evaluate.write_report(report, Path(args.out))
    print(evaluate.markdown_report(report))
    print("wrote " + ", ".join(str(path) for path in written.values()))
    return 0


# ----- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    engine_options = argparse.ArgumentParser(add_help=False)
    engine_options.add_argument(
        "--engine", metavar="NAME",
        help=f"feature engine: {', '.join(ENGINE_NAMES)} (default: IMAGE_SEARCH_MODEL, else resnet50)")
    engine_options.add_argument(
        "--weights", metavar="W",
        help="Keras engines: imagenet, a weights file, or random (default: IMAGE_SEARCH_WEIGHTS, else imagenet)")
    batch_options = argparse.ArgumentParser(add_help=False)
    batch_options.add_argument("--batch-size", type=positive_int, metavar="N",
                               help="images per model call (default: IMAGE_SEARCH_BATCH_SIZE, else 32)")
    batch_options.add_argument("--shard", type=shard_spec, metavar="i/n",
                               help="only do shard i of n (0-based); run the shards side by side on one catalogue")
    store_option = argparse.ArgumentParser(add_help=False)
    store_option.add_argument("--store", metavar="DIR",
                              help=f"the folder holding the SQLite catalogue {CATALOGUE_FILE} "
                                   f"(default: FOLDER/{STORE_DIR_NAME})")
    store_option.add_argument("--database", metavar="URL",
                              help="the catalogue as a database URL instead, sqlite:///path or postgresql://...")

    parser = argparse.ArgumentParser(prog="python -m imgsearch", description="Image similarity search.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    index = commands.add_parser(
        "index", parents=[engine_options, batch_options, store_option],
        help="build or update the catalogue of a folder of images",
        description="Index every image under FOLDER (recursively; hidden files skipped). Unchanged files are "
                    "skipped, deleted files dropped, and an interrupted run resumes where it stopped: every "
                    "batch is committed as it finishes.")
    index.add_argument("folder", metavar="FOLDER")
    index.set_defaults(run=run_index)

    merge = commands.add_parser("merge", parents=[store_option],
                                help="copy the vectors of other catalogues of FOLDER into its catalogue",
                                description="For shards indexed on machines that share no database: copy the "
                                            "vectors of each SOURCE catalogue (a catalogue.db path or a URL) "
                                            "for files that are unchanged since.")
    merge.add_argument("folder", metavar="FOLDER")
    merge.add_argument("sources", nargs="+", metavar="SOURCE")
    merge.set_defaults(run=run_merge)

    search = commands.add_parser("search", parents=[engine_options, store_option],
                                 help="rank a folder's images by similarity to a query image")
    search.add_argument("query", metavar="QUERY_IMAGE", nargs="?",
                        help="an image file; when it is inside FOLDER it is left out of its own results")
    search.add_argument("--folder", required=True, help="the folder indexed with `index`")
    search.add_argument("-k", type=positive_int, default=3, help="number of results (default: %(default)s)")
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    search.add_argument("--text", metavar="WORDS",
                        help="words (ImageNet's 1000 concepts and their WordNet names): alone they rank by tags, "
                             "with a QUERY_IMAGE they keep only the results that carry them")
    search.add_argument("--box", type=box_spec, metavar="X,Y,W,H",
                        help="search by this region of QUERY_IMAGE, as fractions of its width and height")
    search.add_argument("--like", action="append", default=[], metavar="NAME",
                        help="an image of the folder to move towards (repeatable)")
    search.add_argument("--unlike", action="append", default=[], metavar="NAME",
                        help="an image of the folder to move away from (repeatable)")
    search.add_argument("--tag", help="only images tagged with this tag or word")
    search.add_argument("--type", dest="media_type", choices=MEDIA_TYPES, help="only images of this file type")
    search.add_argument("--taken-from", metavar="YYYY-MM-DD", help="only images taken on or after this day")
    search.add_argument("--taken-to", metavar="YYYY-MM-DD", help="only images taken on or before this day")
    search.set_defaults(run=run_search)

    originals = commands.add_parser(
        "originals", parents=[engine_options, batch_options],
        help="compute the features of the app's original images (what generate_original_features.py runs)",
        description="Compute the features of the images named in the app's original_filenames.txt into the "
                    "app's catalogue.")
    originals.add_argument("--init", action="store_true",
                           help="first write original_filenames.txt from the images now in images/ "
                                "(for whoever ships the originals; refused if it exists)")
    originals.set_defaults(run=run_originals)

    rebuild = commands.add_parser("rebuild", parents=[engine_options],
                                  help="rebuild the app's vector index from its catalogue")
    rebuild.set_defaults(run=run_rebuild)

    prepare = commands.add_parser(
        "prepare", help="export and check the engines' ONNX graphs now, so the app starts without TensorFlow",
        description="Build each engine once: its Keras model is exported to ONNX, checked against Keras and "
                    "cached in IMAGE_SEARCH_CACHE_DIR, so the app and the other commands then run it without "
                    "loading TensorFlow. The engines' variants come from the settings. ImageNet weights that "
                    "cannot be had are remembered for a day, and the offline model is prepared in their place.")
    prepare.add_argument("--engine", dest="engines", action="append", metavar="NAME",
                         help=f"engine to prepare, repeatable: {', '.join(ENGINE_NAMES)} "
                              "(default: IMAGE_SEARCH_MODEL, else resnet50)")
    prepare.add_argument("--weights", metavar="W", help="Keras engines: imagenet, a weights file, or random")
    prepare.add_argument("--retry-download", action="store_true",
                         help="try downloading ImageNet weights again now, even if it failed within the last day")
    prepare.set_defaults(run=run_prepare)

    evaluation = commands.add_parser(
        "evaluate", help="measure retrieval quality on labelled image folders",
        description="Leave-one-out P@1, P@10 and mAP (overall and per class), near-duplicate recall@1 under seven "
                    "transforms, and the duplicate threshold that separates copies from same-class images. "
                    "A DATASET is a folder with labels.csv (filename,label) or one subfolder per class. "
                    "Writes evaluation.json, evaluation.md and precision_at_k.png into --out. The engines' own "
                    "variants come from the settings (IMAGE_SEARCH_FEATURE_POOLING, IMAGE_SEARCH_FEATURE_SCALES, "
                    "IMAGE_SEARCH_FLIP_AVERAGE).")
    evaluation.add_argument("datasets", nargs="+", metavar="DATASET")
    evaluation.add_argument("--engine", dest="engines", action="append", metavar="NAME",
                            help=f"engine to compare, repeatable: {', '.join(ENGINE_NAMES)} "
                                 "(default: IMAGE_SEARCH_MODEL, else resnet50)")
    evaluation.add_argument("--weights", metavar="W", help="Keras engines: imagenet, a weights file, or random")
    evaluation.add_argument("--batch-size", type=positive_int, metavar="N", help="images per model call")
    evaluation.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "imgsearch-evaluation"), metavar="DIR",
                            help="folder for the JSON, markdown and PNG outputs (default: %(default)s)")
    evaluation.add_argument("--robustness", type=non_negative_int, default=100, metavar="N",
                            help="images in the near-duplicate sample; 0 skips it (default: %(default)s)")
    evaluation.add_argument("--seed", type=int, default=0, help="seed of the near-duplicate sample (default: 0)")
    evaluation.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "imgsearch-eval-cache"),
                            metavar="DIR", help="where extracted features are kept between runs (default: %(default)s)")
    evaluation.add_argument("--no-cache", action="store_true", help="extract everything afresh and keep nothing")
    post = evaluation.add_argument_group("post-processing (cosine engines only; see imgsearch/retrieval.py)")
    post.add_argument("--whiten", type=non_negative_int, default=0, metavar="DIM",
                      help="PCA-whitening learned on each set, reduced to DIM dimensions (default: off)")
    post.add_argument("--whiten-strength", type=float, default=1.0, metavar="S",
                      help="1 whitens fully, 0 only centres and projects onto the top DIM axes (default: %(default)s)")
    post.add_argument("--power", type=float, default=0.5,
                      help="signed power applied after whitening (default: %(default)s, the signed square root)")
    post.add_argument("--dba", type=non_negative_int, default=0, metavar="K",
                      help="database-side augmentation with K neighbours (default: off)")
    post.add_argument("--qe", type=non_negative_int, default=0, metavar="K",
                      help="alpha query expansion with K hits (default: off)")
    post.add_argument("--alpha", type=float, default=3.0,
                      help="similarity exponent of the DBA and query-expansion weights (default: %(default)s)")
    post.add_argument("--keep-nearest", action="store_true",
                      help="keep the plain-cosine nearest image first, as the app's query expansion does")
    evaluation.set_defaults(run=run_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.run is run_search:
        try:
            args.filters = Filters.parse({"tag": args.tag, "type": args.media_type,
                                          "taken_from": args.taken_from, "taken_to": args.taken_to})
        except RequestError as exc:
            parser.error(exc.message)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.run(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished batches are saved; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
