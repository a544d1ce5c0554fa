"""The command line, `python -m imgsearch COMMAND`: index and search a folder of images, and look after the app.

A folder's features live in `FOLDER/.imgsearch/<model_id>.npz` unless `--store DIR` says otherwise;
one file per engine, so indexing the same folder with two engines keeps both.

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
from typing import Callable, Iterable

from tqdm import tqdm

from .config import Settings
from . import evaluate
from .engines import ENGINE_NAMES, get_engine, load_active_engine
from .engines.base import Engine, WeightsUnavailable
from .engines.keras_weights import forget_failed_downloads
from .imaging import ImageError, configure_pillow, open_image
from .indexing import IndexReport, Shard, ShardError, find_shard_files, index_files, merge_shards, walk_images
from .library import Library, read_manifest
from .persist import atomic_write_bytes
from .ranking import top_k
from .retrieval import PostProcessing
from .store import FeatureSet, FeatureStore

STORE_DIR_NAME = ".imgsearch"
DEFAULT_CHECKPOINT_EVERY = 10
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
    configure_pillow(settings.max_image_pixels)
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


def folder_store_path(args: argparse.Namespace, folder: Path, engine: Engine) -> Path:
    store_dir = Path(args.store) if args.store else folder / STORE_DIR_NAME
    return store_dir / f"{engine.model_id}.npz"


def open_feature_set(path: Path, engine: Engine) -> FeatureSet:
    """The set saved at `path`, or an empty one when there is none yet (or it was made by another model)."""
    # A run killed while saving leaves its half-written copy behind; only this command writes this file.
    for abandoned in path.parent.glob(f".{path.name}.*.tmp"):
        abandoned.unlink(missing_ok=True)
    feature_set = FeatureSet(path, engine.model_id, engine.dim)
    feature_set.load()
    return feature_set


def index_with_progress(feature_set: FeatureSet, engine: Engine, names: Iterable[str],
                        resolve: Callable[[str], Path], total: int, settings: Settings,
                        checkpoint_every: int) -> IndexReport:
    with tqdm(total=total, unit="img", desc=engine.name, file=sys.stderr, dynamic_ncols=True) as bar:
        def progress(examined: int, failures: list[tuple[str, str]]) -> None:
            for name, reason in failures:
                bar.write(f"skipped {name}: {reason}", file=sys.stderr)
            bar.update(examined)

        return index_files(feature_set, engine, names, resolve, batch_size=settings.batch_size,
                           workers=settings.decode_workers, max_pixels=settings.max_image_pixels,
                           checkpoint_every=checkpoint_every, progress=progress)


def print_summary(report: IndexReport, feature_set: FeatureSet) -> None:
    skipped = len(report.failures)
    print(f"{report.examined} files: {report.computed} computed, {report.unchanged} unchanged, "
          f"{skipped} skipped{' (listed above)' if skipped else ''}, {report.dropped} dropped")
    print(f"{feature_set.path}: {len(feature_set)} images, {feature_set.model_id}")


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


def shard_spec(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def query_name_in(folder: Path, query: str) -> frozenset[str]:
    """The query's own name when it is one of the folder's images, so it is not its own first hit."""
    try:
        return frozenset([Path(query).resolve().relative_to(folder.resolve()).as_posix()])
    except ValueError:
        return frozenset()


def in_shard(names: Iterable[str], shard: Shard | None) -> Iterable[str]:
    return names if shard is None else (name for name in names if shard.holds(name))


# ----- commands --------------------------------------------------------------------------------


def run_index(args: argparse.Namespace) -> int:
    folder = existing_folder(args.folder)
    settings = load_settings(args)
    engine = load_engine(settings)
    store_path = folder_store_path(args, folder, engine)
    feature_set = open_feature_set(args.shard.path_for(store_path) if args.shard else store_path, engine)
    # A first pass over the names only (no images) gives the progress bar its total.
    total = sum(1 for _ in in_shard(walk_images(folder), args.shard))
    report = index_with_progress(feature_set, engine, in_shard(walk_images(folder), args.shard), folder.joinpath,
                                 total, settings, args.checkpoint_every)
    print_summary(report, feature_set)
    if args.shard:
        print(f"when every shard of {args.shard.count} has run: python -m imgsearch merge {folder}"
              + (f" --store {args.store}" if args.store else ""))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    folder = existing_folder(args.folder)
    store_dir = Path(args.store) if args.store else folder / STORE_DIR_NAME
    try:
        merged = merge_shards(find_shard_files(store_dir))
    except ShardError as exc:
        raise CommandError(f"cannot merge in {store_dir}: {exc}") from None
    print(f"{merged.path}: {len(merged)} images, {merged.model_id}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    folder = existing_folder(args.folder)
    settings = load_settings(args)
    try:
        image = open_image(args.query, max_pixels=settings.max_image_pixels)
    except ImageError as exc:
        raise CommandError(f"{args.query}: {exc.message}") from None
    except OSError as exc:
        raise CommandError(f"{args.query}: {exc.strerror or exc}") from None
    engine = load_engine(settings)
    feature_set = FeatureSet(folder_store_path(args, folder, engine), engine.model_id, engine.dim)
    if not feature_set.load():
        raise CommandError(f"no usable feature store at {feature_set.path} ({feature_set.load_problem}); "
                           f"run `python -m imgsearch index {folder} --engine {settings.model}` first")
    vector = engine.extract(engine.prepare(image)[None])
    hits = top_k((feature_set.snapshot(),), vector, args.k, engine.metric, query_name_in(folder, args.query))[0]
    if args.json:
        print(json.dumps({
            "query": str(args.query), "folder": str(folder), "model_id": engine.model_id, "metric": engine.metric,
            "results": [{"rank": rank, "score": round(score, 6), "name": name, "path": str(folder / name)}
                        for rank, (name, score) in enumerate(hits, 1)],
        }, indent=2))
    else:
        print(f"{'rank':>4}  {'score':<6}  path")
        for rank, (name, score) in enumerate(hits, 1):
            print(f"{rank:>4}  {score:.4f}  {folder / name}")
    return 0


def run_originals(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    manifest = settings.originals_manifest
    library = Library(settings.images_dir, settings.thumbnails_dir, settings.uploads_dir, manifest)
    if args.init:
        if manifest.exists():
            raise CommandError(f"{manifest} already exists; edit it by hand instead of --init")
        _, present = library.scan()  # with no manifest yet, every image counts as a user image
        if not present:
            raise CommandError(f"there are no images in {settings.images_dir} to list")
        atomic_write_bytes(manifest, "".join(f"{name}\n" for name in present).encode("utf-8"))
        print(f"wrote {manifest} listing {len(present)} originals")
    elif not manifest.exists():
        raise CommandError(f"{manifest} does not exist; whoever ships the originals creates it with --init")
    engine = load_engine(settings)
    originals = FeatureStore(settings.features_dir, engine.model_id, engine.dim).originals
    if args.merge:
        try:
            merged = merge_shards(find_shard_files(originals.path.parent, originals.path.stem), engine.model_id)
        except ShardError as exc:
            raise CommandError(f"cannot merge the originals' shards: {exc}") from None
        print(f"{merged.path}: {len(merged)} images, {merged.model_id}")
        return 0
    names = read_manifest(manifest)
    feature_set = open_feature_set(args.shard.path_for(originals.path) if args.shard else originals.path, engine)
    total = sum(1 for _ in in_shard(names, args.shard))
    report = index_with_progress(feature_set, engine, in_shard(names, args.shard), library.path_of, total,
                                 settings, args.checkpoint_every)
    print_summary(report, feature_set)
    if args.shard:
        print(f"when every shard of {args.shard.count} has run: python generate_original_features.py --merge")
    return 0


def run_rebuild(args: argparse.Namespace) -> int:
    from .service import ImageSearchService  # the app's core is only needed here

    settings = load_settings(args)
    engine = load_engine(settings)
    service = ImageSearchService(settings, engine).open()
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
    with service.store.lock:
        service.index.rebuild()
    described = service.index.describe()
    print(f"{engine.model_id}: {len(service.store.originals)} originals and {len(service.store.uploads)} user "
          f"images stored; the {described['backend']} index holds {described['count']} vectors"
          f"{'' if described['consistent'] else ' (MISMATCH with the stores)'}")
    return 0 if described["consistent"] else 1


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
                               help="only do shard i of n (0-based), into its own file; merge them afterwards")
    batch_options.add_argument("--checkpoint-every", type=positive_int, default=DEFAULT_CHECKPOINT_EVERY,
                               metavar="N", help="save progress every N batches (default: %(default)s)")
    store_option = argparse.ArgumentParser(add_help=False)
    store_option.add_argument("--store", metavar="DIR",
                              help=f"where the folder's feature files are (default: FOLDER/{STORE_DIR_NAME})")

    parser = argparse.ArgumentParser(prog="python -m imgsearch", description="Image similarity search.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    index = commands.add_parser(
        "index", parents=[engine_options, batch_options, store_option],
        help="build or update the feature store of a folder of images",
        description="Index every image under FOLDER (recursively; hidden files skipped). Unchanged files are "
                    "skipped, deleted files dropped, and an interrupted run resumes where it stopped.")
    index.add_argument("folder", metavar="FOLDER")
    index.set_defaults(run=run_index)

    merge = commands.add_parser("merge", parents=[store_option],
                                help="join the shard files of `index --shard` into the folder's store")
    merge.add_argument("folder", metavar="FOLDER")
    merge.set_defaults(run=run_merge)

    search = commands.add_parser("search", parents=[engine_options, store_option],
                                 help="rank a folder's images by similarity to a query image")
    search.add_argument("query", metavar="QUERY_IMAGE",
                        help="an image file; when it is inside FOLDER it is left out of its own results")
    search.add_argument("--folder", required=True, help="the folder indexed with `index`")
    search.add_argument("-k", type=positive_int, default=3, help="number of results (default: %(default)s)")
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    search.set_defaults(run=run_search)

    originals = commands.add_parser(
        "originals", parents=[engine_options, batch_options],
        help="compute the features of the app's original images (what generate_original_features.py runs)",
        description="Compute the features of the images named in the app's original_filenames.txt into the "
                    "originals store the app loads.")
    originals.add_argument("--merge", action="store_true", help="join the shard files of `--shard` runs")
    originals.add_argument("--init", action="store_true",
                           help="first write original_filenames.txt from the images now in images/ "
                                "(for whoever ships the originals; refused if it exists)")
    originals.set_defaults(run=run_originals)

    rebuild = commands.add_parser("rebuild", parents=[engine_options],
                                  help="rebuild the app's vector index from its feature stores")
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.run(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished batches are saved; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
