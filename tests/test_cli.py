"""The command line and the sync loop behind it: index, search, resume, shards, merge, and the originals script."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PROJECT_DIR, make_image
from imgsearch import cli
from imgsearch.catalogue import Catalogue, read_vectors
from imgsearch.config import Settings
from imgsearch.engines import get_engine
from imgsearch.engines.color import ColorHistogramEngine
from imgsearch.index.exact import ExactIndex
from imgsearch.service import ImageSearchService
from imgsearch.space import FeatureSpace
from imgsearch.sync import FolderSource, Shard, sync, walk_images

COLOR_STORE = ".imgsearch/catalogue.db"
GOOD_IMAGES = ["blue.png", "green.jpg", "red.png", "sub/deeper/purple.webp", "sub/red_square.png", "yellow.gif"]


@pytest.fixture
def photos(tmp_path) -> Path:
    """Six readable images in nested folders, one broken one, and files the walk must ignore."""
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    specs = {
        "blue.png": ("blue", "ellipse", "PNG"), "green.jpg": ("green", "ellipse", "JPEG"),
        "red.png": ("red", "ellipse", "PNG"), "sub/deeper/purple.webp": ("purple", "rectangle", "WEBP"),
        "sub/red_square.png": ("red", "rectangle", "PNG"), "yellow.gif": ("yellow", "rectangle", "GIF"),
    }
    for seed, (name, (color, shape, fmt)) in enumerate(specs.items()):
        (root / name).write_bytes(make_image(color, shape=shape, fmt=fmt, seed=seed))
    (root / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden" / "secret.png").write_bytes(make_image("gray"))
    (root / ".dotfile.png").write_bytes(make_image("gray"))
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def index(capsys, folder, *extra) -> tuple[int, str, str]:
    return run(capsys, "index", folder, "--engine", "color", "--batch-size", 2, *extra)


def stored(path: Path, dim: int = ColorHistogramEngine.dim, model_id: str = "color-none-chi2") -> dict:
    """name -> (vector, stamp) of one engine's vectors in a catalogue file."""
    assert path.is_file(), path
    catalogue = Catalogue(f"sqlite:///{path}").open()
    try:
        with catalogue.reading() as conn:
            return {name: (vector, stamp) for names, matrix, stamps in read_vectors(conn, model_id, dim)
                    for name, vector, stamp in zip(names, matrix, stamps)}
    finally:
        catalogue.close()


def stamp_of(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


class ScriptedColorEngine(ColorHistogramEngine):
    """The colour engine, counting the images it extracts and able to stop or meddle at a given batch."""

    def __init__(self, stop_at_batch: int | None = None, before_batch=None):
        super().__init__()
        self.batches = 0
        self.rows = 0
        self.stop_at_batch = stop_at_batch
        self.before_batch = before_batch

    def _extract(self, batch):
        self.batches += 1
        if self.before_batch:
            self.before_batch(self.batches)
        if self.batches == self.stop_at_batch:
            raise KeyboardInterrupt
        self.rows += len(batch)
        return super()._extract(batch)


# ----- the folder walk and shards --------------------------------------------------------------


def test_walk_is_recursive_sorted_and_skips_hidden_and_non_images(photos):
    assert [name for name, _ in walk_images(photos)] == ["blue.png", "broken.jpg", "green.jpg", "red.png",
                                         "sub/deeper/purple.webp", "sub/red_square.png", "yellow.gif"]


def test_shards_partition_names_the_same_way_everywhere():
    names = [f"folder/{i}.jpg" for i in range(200)]
    shards = [Shard.parse(f"{i}/3") for i in range(3)]
    parts = [{name for name in names if shard.holds(name)} for shard in shards]
    assert sum(map(len, parts)) == len(names) and set().union(*parts) == set(names)
    assert all(len(part) > 40 for part in parts)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError):
            Shard.parse(bad)


# ----- index and search ------------------------------------------------------------------------


@pytest.mark.slow
def test_round_trip_through_python_dash_m(photos):
    """The real entry point, in a fresh process: index, then a JSON search."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def python_m(*argv):
        return subprocess.run([sys.executable, "-m", "imgsearch", *map(str, argv)], cwd=PROJECT_DIR, env=env,
                              capture_output=True, text=True, timeout=300)

    indexed = python_m("index", photos, "--engine", "color", "--batch-size", "2")
    assert indexed.returncode == 0, indexed.stderr
    assert "7 files: 6 computed, 0 unchanged, 1 skipped (listed above), 0 dropped" in indexed.stdout
    assert "skipped broken.jpg: The file is not a readable image." in indexed.stderr
    assert sorted(stored(photos / COLOR_STORE)) == GOOD_IMAGES

    found = python_m("search", photos / "red.png", "--folder", photos, "--engine", "color", "-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    answer = json.loads(found.stdout)
    assert answer["model_id"] == "color-none-chi2" and answer["metric"] == "chi2"
    assert answer["reranked"] is False  # query expansion applies to cosine engines only
    assert [hit["rank"] for hit in answer["results"]] == [1, 2, 3]
    names = [hit["name"] for hit in answer["results"]]
    assert "red.png" not in names and set(names) <= set(GOOD_IMAGES)  # the query is not its own hit
    assert [hit["path"] for hit in answer["results"]] == [str(photos / name) for name in names]
    scores = [hit["score"] for hit in answer["results"]]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)


def test_search_prints_rank_score_and_path(photos, capsys):
    assert index(capsys, photos)[0] == 0
    (photos.parent / "query.png").write_bytes(make_image("red", shape="rectangle", seed=42))
    code, out, _ = run(capsys, "search", photos.parent / "query.png", "--folder", photos, "--engine", "color", "-k", 2)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["rank", "score", "path"]
    assert len(rows) == 2
    rank, score, path = rows[0].split()
    assert rank == "1" and 0.0 < float(score) <= 1.0
    assert path == str(photos / "sub" / "red_square.png")
    code, out, _ = run(capsys, "search", photos / "sub" / "red_square.png", "--folder", photos, "--engine", "color")
    assert code == 0 and "red_square.png" not in out


def test_search_errors_are_clear_and_exit_2(photos, capsys):
    code, out, err = run(capsys, "search", photos / "red.png", "--folder", photos, "--engine", "color")
    assert code == 2 and out == ""
    assert "no color-none-chi2 features" in err and "python -m imgsearch index" in err
    index(capsys, photos)
    for query, message in ((photos / "notes.txt", "not a readable image"), (photos / "absent.png", "No such file")):
        code, out, err = run(capsys, "search", query, "--folder", photos, "--engine", "color")
        assert code == 2 and out == "" and message in err
    code, _, err = run(capsys, "search", photos / "red.png", "--folder", photos / "absent", "--engine", "color")
    assert code == 2 and "is not a folder" in err


def test_rerun_skips_unchanged_recomputes_modified_and_drops_deleted(photos, capsys):
    index(capsys, photos)
    first = stored(photos / COLOR_STORE)

    code, out, _ = index(capsys, photos)
    assert code == 0 and "0 computed, 6 unchanged, 1 skipped" in out
    assert {n: s for n, (_, s) in stored(photos / COLOR_STORE).items()} == {n: s for n, (_, s) in first.items()}

    changed = photos / "blue.png"
    changed.write_bytes(make_image("yellow", seed=7))
    os.utime(changed, ns=(first["blue.png"][1][1] + 10**9,) * 2)
    (photos / "sub" / "red_square.png").unlink()
    code, out, _ = index(capsys, photos)
    assert code == 0 and "6 files: 1 computed, 4 unchanged, 1 skipped (listed above), 1 dropped" in out
    after = stored(photos / COLOR_STORE)
    assert "sub/red_square.png" not in after
    assert after["blue.png"][1] == stamp_of(changed)
    assert not np.allclose(after["blue.png"][0], first["blue.png"][0])
    assert np.array_equal(after["red.png"][0], first["red.png"][0])


def test_a_file_that_becomes_unreadable_loses_its_vector(photos, capsys):
    index(capsys, photos)
    (photos / "green.jpg").write_bytes(b"truncated")
    code, out, err = index(capsys, photos)
    assert code == 0 and "skipped green.jpg:" in err
    assert "0 computed, 5 unchanged, 2 skipped (listed above), 0 dropped" in out
    assert "green.jpg" not in stored(photos / COLOR_STORE)


def test_store_option_and_one_file_per_engine(photos, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    assert index(capsys, photos, "--store", elsewhere)[0] == 0
    assert (elsewhere / "catalogue.db").is_file() and not (photos / ".imgsearch").exists()
    code, out, _ = run(capsys, "search", photos / "red.png", "--folder", photos, "--engine", "color",
                       "--store", elsewhere)
    assert code == 0 and len(out.splitlines()) == 4


# ----- interruption and resume -----------------------------------------------------------------


def test_interrupted_run_resumes_and_extracts_each_file_once(photos, capsys, monkeypatch):
    store = photos / COLOR_STORE
    committed_rows_seen = []

    def look_at_catalogue(batch_number):
        committed_rows_seen.append(len(stored(store)))

    interrupted = ScriptedColorEngine(stop_at_batch=4, before_batch=look_at_catalogue)
    monkeypatch.setattr(cli, "load_engine", lambda settings: interrupted)
    code, _, err = run(capsys, "index", photos, "--batch-size", 1)
    assert code == cli.EXIT_INTERRUPTED and "run the same command again to resume" in err
    # Every finished batch is committed at once; the fourth never finished.
    assert committed_rows_seen == [0, 1, 2, 3]
    assert interrupted.rows == 3 and len(stored(store)) == 3

    resumed = ScriptedColorEngine()
    monkeypatch.setattr(cli, "load_engine", lambda settings: resumed)
    code, out, _ = run(capsys, "index", photos, "--batch-size", 1)
    assert code == 0 and "3 computed, 3 unchanged" in out
    assert interrupted.rows + resumed.rows == len(GOOD_IMAGES)
    assert sorted(stored(store)) == GOOD_IMAGES


def test_a_file_changed_during_extraction_is_left_for_the_next_run(photos, tmp_path):
    touched = photos / "blue.png"

    def touch(batch_number):
        if batch_number == 1:
            os.utime(touched, ns=(stamp_of(touched)[1] + 10**9,) * 2)

    catalogue = Catalogue(f"sqlite:///{tmp_path / 'catalogue.db'}").open()
    meddling = ScriptedColorEngine(before_batch=touch).load()
    space = FeatureSpace(catalogue, meddling, lambda store: ExactIndex(store, meddling.metric)).open()
    report = sync(catalogue, space, FolderSource(photos), batch_size=2)
    assert "blue.png" not in space.store and report.computed == 5
    assert "blue.png" in space.pending()
    report = sync(catalogue, space, FolderSource(photos), batch_size=2)
    assert (report.computed, report.unchanged) == (1, 5) and space.store.stamp("blue.png") == stamp_of(touched)
    catalogue.close()


# ----- shards and merge ------------------------------------------------------------------------


@pytest.mark.slow
def test_two_shard_processes_at_once_fill_one_catalogue_like_one_run(photos, tmp_path, capsys):
    """Shards run side by side on one SQLite catalogue: its writers queue, nothing is lost or doubled."""
    whole = tmp_path / "whole"
    index(capsys, photos, "--store", whole)
    runs = [subprocess.Popen([sys.executable, "-m", "imgsearch", "index", str(photos), "--engine", "color",
                              "--batch-size", "1", "--shard", shard], cwd=PROJECT_DIR, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for shard in ("0/2", "1/2")]
    outputs = [process.communicate(timeout=300) for process in runs]
    assert all(process.returncode == 0 for process in runs), outputs
    computed = [int(out.split(" computed")[0].rsplit(" ", 1)[-1]) for out, _ in outputs]
    assert sum(computed) == 6 and all(computed)
    sharded, unsharded = stored(photos / COLOR_STORE), stored(whole / "catalogue.db")
    assert sorted(sharded) == sorted(unsharded) == GOOD_IMAGES
    for name, (vector, stamp) in unsharded.items():
        assert np.allclose(sharded[name][0], vector) and sharded[name][1] == stamp


def test_merge_copies_the_vectors_of_shards_indexed_elsewhere(photos, tmp_path, capsys):
    for shard, store in (("0/2", "a"), ("1/2", "b")):
        assert index(capsys, photos, "--shard", shard, "--store", tmp_path / store)[0] == 0
    (photos / "sub" / "red_square.png").unlink()  # gone since: its vector is not merged
    code, out, _ = run(capsys, "merge", photos, tmp_path / "a" / "catalogue.db", tmp_path / "b" / "catalogue.db")
    assert code == 0 and "copied from 2 catalogue(s): 5 color-none-chi2 vectors, 5 imagenet-tags-" in out
    assert sorted(stored(photos / COLOR_STORE)) == [name for name in GOOD_IMAGES if name != "sub/red_square.png"]
    code, out, _ = index(capsys, photos)
    assert code == 0 and "0 computed, 5 unchanged" in out
    code, _, err = run(capsys, "merge", photos, tmp_path / "absent" / "nothing.db" / "x.db")
    assert code == 2 and "there is no catalogue at" in err


# ----- the app's originals and index -----------------------------------------------------------


def run_script(monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["generate_original_features.py", *argv])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(PROJECT_DIR / "generate_original_features.py"), run_name="__main__")
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_generate_original_features_makes_the_store_the_app_loads(settings, monkeypatch, capsys):
    """With the app's offline model, on a data dir given by IMAGE_SEARCH_DATA_DIR."""
    monkeypatch.setenv("IMAGE_SEARCH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("IMAGE_SEARCH_MODEL", "efficientnet-lite0")
    monkeypatch.setenv("IMAGE_SEARCH_CACHE_DIR", str(settings.cache_dir))
    code, out, _ = run_script(monkeypatch, capsys, "--batch-size", "4")
    assert code == 0 and "6 files: 6 computed, 0 unchanged, 0 skipped, 0 dropped" in out
    code, out, _ = run_script(monkeypatch, capsys)
    assert code == 0 and "0 computed, 6 unchanged" in out

    engine = get_engine("efficientnet-lite0", settings)
    service = ImageSearchService(settings, engine).open()
    assert service.startup_job is None and service.status()["pending"] == 0
    assert len(service.store.originals) == 6
    service.close()


def test_originals_init_and_shards(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for i, color in enumerate(("red", "green", "blue", "yellow", "purple")):
        (data / "images" / f"{color}.png").write_bytes(make_image(color, seed=i))
    monkeypatch.setenv("IMAGE_SEARCH_DATA_DIR", str(data))
    monkeypatch.setenv("IMAGE_SEARCH_MODEL", "color")

    code, _, err = run_script(monkeypatch, capsys)
    assert code == 2 and "--init" in err
    code, out, _ = run_script(monkeypatch, capsys, "--init", "--shard", "0/2")
    assert code == 0 and "listing 5 originals" in out
    assert (data / "original_filenames.txt").read_text().split() == ["blue.png", "green.png", "purple.png",
                                                                      "red.png", "yellow.png"]
    code, _, err = run_script(monkeypatch, capsys, "--init")
    assert code == 2 and "already exists" in err
    first = int(out.split(" computed")[0].rsplit(" ", 1)[-1])
    code, out, _ = run_script(monkeypatch, capsys, "--shard", "1/2")
    assert code == 0 and first + int(out.split(" computed")[0].rsplit(" ", 1)[-1]) == 5
    assert "5 images, color-none-chi2" in out

    settings = Settings(data_dir=data, model="color", watch_folder=False, rescan_seconds=0)
    service = ImageSearchService(settings, get_engine("color", settings)).open()
    assert service.startup_job is None and service.status()["pending"] == 0
    assert sorted(service.store.originals.names) == ["blue.png", "green.png", "purple.png", "red.png", "yellow.png"]
    service.close()


def test_rebuild_computes_what_is_missing_and_reports_counts(data_dir, monkeypatch, capsys):
    monkeypatch.setenv("IMAGE_SEARCH_DATA_DIR", str(data_dir))
    code, out, _ = run(capsys, "rebuild", "--engine", "color")
    assert code == 0
    assert "computed 6 missing feature vectors" in out
    assert "color-none-chi2: 6 originals and 0 user images stored; the exact index holds 6 vectors" in out
    code, out, _ = run(capsys, "rebuild", "--engine", "color")
    assert code == 0 and "computed" not in out and "index holds 6 vectors" in out


@pytest.mark.slow
def test_the_imgsearch_command_works_from_any_folder(tmp_path):
    """`make` installs the project into its venv, which puts an `imgsearch` command beside the interpreter."""
    command = Path(sys.executable).with_name("imgsearch")
    if not command.exists():
        pytest.skip("the project is not installed in this environment (make does `pip install -e .`)")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "red.png").write_bytes(make_image("red"))
    indexed = subprocess.run([str(command), "index", "photos", "--engine", "color"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert indexed.returncode == 0 and "1 computed" in indexed.stdout, indexed.stderr
