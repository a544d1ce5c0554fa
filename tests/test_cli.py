"""The command line and the indexing loop behind it: index, search, resume, shards, and the originals script."""
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
from imgsearch.config import Settings
from imgsearch.engines import get_engine
from imgsearch.engines.color import ColorHistogramEngine
from imgsearch.indexing import Shard, index_files, walk_images
from imgsearch.service import ImageSearchService
from imgsearch.store import FeatureSet

COLOR_STORE = ".imgsearch/color-none-chi2.npz"
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
    """name -> (vector, stamp) of a saved feature file."""
    feature_set = FeatureSet(path, model_id, dim)
    assert feature_set.load(), feature_set.load_problem
    return {name: (feature_set.vector(name), feature_set.stamp(name)) for name in feature_set.names}


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
    assert list(walk_images(photos)) == ["blue.png", "broken.jpg", "green.jpg", "red.png",
                                         "sub/deeper/purple.webp", "sub/red_square.png", "yellow.gif"]


def test_shards_partition_names_the_same_way_everywhere():
    names = [f"folder/{i}.jpg" for i in range(200)]
    shards = [Shard.parse(f"{i}/3") for i in range(3)]
    parts = [{name for name in names if shard.holds(name)} for shard in shards]
    assert sum(map(len, parts)) == len(names) and set().union(*parts) == set(names)
    assert all(len(part) > 40 for part in parts)
    assert Shard.parse("1/3").path_for(Path("s/model.npz")) == Path("s/model.shard-1-of-3.npz")
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError):
            Shard.parse(bad)


# ----- index and search ------------------------------------------------------------------------


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
    assert "no usable feature store" in err and "python -m imgsearch index" in err
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
    assert "0 computed, 5 unchanged, 2 skipped (listed above), 1 dropped" in out
    assert "green.jpg" not in stored(photos / COLOR_STORE)


def test_store_option_and_one_file_per_engine(photos, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    assert index(capsys, photos, "--store", elsewhere)[0] == 0
    assert (elsewhere / "color-none-chi2.npz").is_file() and not (photos / ".imgsearch").exists()
    code, out, _ = run(capsys, "search", photos / "red.png", "--folder", photos, "--engine", "color",
                       "--store", elsewhere)
    assert code == 0 and len(out.splitlines()) == 4


# ----- interruption and resume -----------------------------------------------------------------


def test_interrupted_run_resumes_and_extracts_each_file_once(photos, capsys, monkeypatch):
    store = photos / COLOR_STORE
    saved_rows_seen = []

    def look_at_checkpoint(batch_number):
        saved_rows_seen.append(len(stored(store)) if store.exists() else 0)

    interrupted = ScriptedColorEngine(stop_at_batch=4, before_batch=look_at_checkpoint)
    monkeypatch.setattr(cli, "load_engine", lambda settings: interrupted)
    code, _, err = run(capsys, "index", photos, "--batch-size", 1, "--checkpoint-every", 2)
    assert code == cli.EXIT_INTERRUPTED and "run the same command again to resume" in err
    # Checkpoints after batches 2 (and 4, which never came); the stop itself saves the 3 finished batches.
    assert saved_rows_seen == [0, 0, 2, 2]
    assert interrupted.rows == 3 and len(stored(store)) == 3

    abandoned = store.with_name(f".{store.name}.k1ll3d.tmp")  # what a kill during a save leaves behind
    abandoned.write_bytes(b"half a file")
    resumed = ScriptedColorEngine()
    monkeypatch.setattr(cli, "load_engine", lambda settings: resumed)
    code, out, _ = run(capsys, "index", photos, "--batch-size", 1, "--checkpoint-every", 2)
    assert code == 0 and "3 computed, 3 unchanged" in out
    assert interrupted.rows + resumed.rows == len(GOOD_IMAGES)
    assert sorted(stored(store)) == GOOD_IMAGES and not abandoned.exists()


def test_names_are_streamed_not_listed_up_front(photos):
    """Extraction starts before the name list is exhausted, with at most two batches read ahead."""
    pulled = 0

    def names():
        nonlocal pulled
        for name in GOOD_IMAGES:
            pulled += 1
            yield name

    pulled_at_batch = []
    engine = ScriptedColorEngine(before_batch=lambda batch_number: pulled_at_batch.append(pulled)).load()
    feature_set = FeatureSet(photos / "streamed.npz", engine.model_id, engine.dim)
    index_files(feature_set, engine, names(), photos.joinpath, batch_size=2)
    assert pulled_at_batch == [4, 6, 6]


def test_a_file_changed_during_extraction_is_left_for_the_next_run(photos):
    engine = ColorHistogramEngine().load()
    touched = photos / "blue.png"

    def touch(batch_number):
        if batch_number == 1:
            os.utime(touched, ns=(stamp_of(touched)[1] + 10**9,) * 2)

    meddling = ScriptedColorEngine(before_batch=touch).load()
    feature_set = FeatureSet(photos / "store.npz", engine.model_id, engine.dim)
    report = index_files(feature_set, meddling, GOOD_IMAGES, photos.joinpath, batch_size=2)
    assert ("blue.png", "changed or vanished while it was being read; run again") in report.failures
    assert "blue.png" not in feature_set and report.computed == 5
    report = index_files(feature_set, engine, GOOD_IMAGES, photos.joinpath, batch_size=2)
    assert (report.computed, report.unchanged) == (1, 5) and feature_set.stamp("blue.png") == stamp_of(touched)


def test_lock_and_vector_index_are_kept_in_step(photos):
    """What a live app needs: changes under its lock, and its vector index told about them."""
    class RecordingLock:
        held = False

        def __enter__(self):
            self.held = True

        def __exit__(self, *exc_info):
            self.held = False

    lock = RecordingLock()

    class RecordingIndex:
        def __init__(self):
            self.names = set()

        def add(self, names, vectors):
            assert lock.held and len(names) == len(vectors)
            self.names.update(names)

        def remove(self, names):
            assert lock.held
            self.names.difference_update(names)

    engine = ColorHistogramEngine().load()
    feature_set = FeatureSet(photos / "store.npz", engine.model_id, engine.dim)
    vector_index = RecordingIndex()
    index_files(feature_set, engine, GOOD_IMAGES, photos.joinpath, lock=lock, index=vector_index)
    assert vector_index.names == set(GOOD_IMAGES)
    report = index_files(feature_set, engine, GOOD_IMAGES[1:] + ["gone.png"], photos.joinpath, lock=lock,
                         index=vector_index)
    assert report.failures == [("gone.png", "file not found")] and report.dropped == 1
    assert vector_index.names == set(GOOD_IMAGES[1:]) == set(feature_set.names)


# ----- shards ----------------------------------------------------------------------------------


def test_two_shards_merged_equal_one_unsharded_run(photos, tmp_path, capsys):
    whole = tmp_path / "whole"
    index(capsys, photos, "--store", whole)
    for shard in ("0/2", "1/2"):
        code, out, _ = index(capsys, photos, "--shard", shard)
        assert code == 0 and f"when every shard of 2 has run: python -m imgsearch merge {photos}" in out
    parts = [stored(photos / f".imgsearch/color-none-chi2.shard-{i}-of-2.npz") for i in range(2)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert not (photos / COLOR_STORE).exists()

    code, out, _ = run(capsys, "merge", photos)
    assert code == 0 and "6 images, color-none-chi2" in out
    merged, unsharded = stored(photos / COLOR_STORE), stored(whole / "color-none-chi2.npz")
    assert sorted(merged) == sorted(unsharded) == GOOD_IMAGES
    for name, (vector, stamp) in unsharded.items():
        assert np.allclose(merged[name][0], vector) and merged[name][1] == stamp


def test_merge_refuses_missing_or_mixed_shards(photos, capsys):
    code, _, err = run(capsys, "merge", photos)
    assert code == 2 and "no shard files" in err
    index(capsys, photos, "--shard", "0/2")
    code, _, err = run(capsys, "merge", photos)
    assert code == 2 and "shard(s) 1 of 2 are missing" in err
    FeatureSet(photos / ".imgsearch/other-model.shard-1-of-2.npz", "other-model", 4).save()
    code, _, err = run(capsys, "merge", photos)
    assert code == 2 and "different models (color-none-chi2, other-model)" in err
    assert not (photos / COLOR_STORE).exists()


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
    assert len(service.store.originals) == 6 and service.store.originals.load_problem == ""


def test_originals_init_shards_and_merge(tmp_path, monkeypatch, capsys):
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
    code, _, err = run_script(monkeypatch, capsys, "--merge")
    assert code == 2 and "missing" in err
    assert run_script(monkeypatch, capsys, "--shard", "1/2")[0] == 0
    code, out, _ = run_script(monkeypatch, capsys, "--merge")
    assert code == 0 and "originals.npz: 5 images" in out

    settings = Settings(data_dir=data, model="color")
    service = ImageSearchService(settings, get_engine("color", settings)).open()
    assert service.startup_job is None and service.status()["pending"] == 0
    assert sorted(service.store.originals.names) == ["blue.png", "green.png", "purple.png", "red.png", "yellow.png"]


def test_rebuild_computes_what_is_missing_and_reports_counts(data_dir, monkeypatch, capsys):
    monkeypatch.setenv("IMAGE_SEARCH_DATA_DIR", str(data_dir))
    code, out, _ = run(capsys, "rebuild", "--engine", "color")
    assert code == 0
    assert "computed 6 missing feature vectors" in out
    assert "color-none-chi2: 6 originals and 0 user images stored; the exact index holds 6 vectors" in out
    code, out, _ = run(capsys, "rebuild", "--engine", "color")
    assert code == 0 and "computed" not in out and "index holds 6 vectors" in out
