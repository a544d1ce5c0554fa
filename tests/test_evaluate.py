"""Leave-one-out retrieval metrics and labelled-folder reading, on tiny generated data."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from imgsearch.engines.base import Engine
from imgsearch.engines.concatenated import ConcatenatedEngine
from imgsearch.evaluate import (
    KNOWN_TRANSFORMS,
    TRANSFORMS,
    WIDER_TRANSFORMS,
    class_subset,
    dataset_features,
    duplicate_threshold_study,
    evaluate_dataset,
    features_of,
    leave_one_out_metrics,
    model_throughput,
    near_duplicate_ranks,
    read_labelled_folder,
    robustness_sample,
    same_class_pair_similarities,
)
from imgsearch.imaging import ImageError
from imgsearch.retrieval import PostProcessing


def test_perfectly_separated_classes_score_one():
    vectors = np.array([[1, 0], [0.9, 0.1], [0.95, 0.05], [0, 1], [0.1, 0.9], [0.05, 0.95]])
    labels = ["a", "a", "a", "b", "b", "b"]
    result = leave_one_out_metrics(vectors, labels, ks=(1, 2))
    assert result["P@1"] == result["P@2"] == result["mAP"] == 1.0
    assert result["images"] == 6 and result["classes"] == 2 and result["queries"] == 6
    assert set(result["per_class"]) == {"a", "b"}


def test_figures_match_a_hand_worked_ranking():
    # Unit vectors at these angles: cosine ranks the others by angular distance.
    angles = np.radians([0, 10, 25, 90, 100])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = ["a", "a", "b", "a", "b"]
    result = leave_one_out_metrics(vectors, labels, ks=(1, 2))
    # Per query (ranking of the others -> relevance):
    # 0: 10a 25b 90a 100b -> AP (1 + 2/3)/2;  P@1 1, P@2 1/2
    # 1: 0a 25b 90a 100b  -> AP (1 + 2/3)/2;  P@1 1, P@2 1/2
    # 2: 10a 0a 90a 100b  -> rel only b at rank 4 -> AP 1/4; P@1 0, P@2 0
    # 3: 100b 25b 10a 0a  -> AP (1/3 + 2/4)/2;  P@1 0, P@2 0
    # 4: 90a 25b 10a 0a   -> AP 1/2;  P@1 0, P@2 1/2
    ap = [(1 + 2 / 3) / 2, (1 + 2 / 3) / 2, 1 / 4, (1 / 3 + 2 / 4) / 2, 1 / 2]
    assert result["mAP"] == pytest.approx(np.mean(ap))
    assert result["P@1"] == pytest.approx(2 / 5)
    assert result["P@2"] == pytest.approx((0.5 + 0.5 + 0 + 0 + 0.5) / 5)
    assert result["per_class"]["b"]["mAP"] == pytest.approx((1 / 4 + 1 / 2) / 2)
    assert result["per_class"]["a"]["queries"] == 3


def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(40, 8))
    labels = [str(i % 4) for i in range(40)]
    whole = leave_one_out_metrics(vectors, labels)
    chunked = leave_one_out_metrics(vectors, labels, chunk_size=7)
    assert whole == chunked


def test_singleton_classes_are_not_queries():
    vectors = np.eye(3)
    result = leave_one_out_metrics(vectors, ["a", "a", "b"])
    assert result["queries"] == 2 and "b" not in result["per_class"]
    with pytest.raises(ValueError, match="more than one image"):
        leave_one_out_metrics(vectors, ["a", "b", "c"])


def test_vector_and_label_counts_must_agree():
    with pytest.raises(ValueError, match="3 vectors but 2 labels"):
        leave_one_out_metrics(np.eye(3), ["a", "b"])


def _write_image(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), colour).save(path)


def test_reads_class_subfolders(tmp_path):
    _write_image(tmp_path / "red" / "1.png", (255, 0, 0))
    _write_image(tmp_path / "red" / "2.jpg", (250, 0, 0))
    _write_image(tmp_path / "blue" / "1.png", (0, 0, 255))
    (tmp_path / "blue" / "notes.txt").write_text("not an image")
    paths, labels = read_labelled_folder(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["blue/1.png", "red/1.png", "red/2.jpg"]
    assert labels == ["blue", "red", "red"]


def test_reads_labels_csv_in_preference_to_folders(tmp_path):
    _write_image(tmp_path / "x" / "1.png", (0, 0, 0))
    _write_image(tmp_path / "x" / "2.png", (0, 0, 0))
    (tmp_path / "labels.csv").write_text("filename,label\nx/1.png,cat\nx/2.png,dog\n")
    paths, labels = read_labelled_folder(tmp_path)
    assert paths == [tmp_path / "x" / "1.png", tmp_path / "x" / "2.png"]
    assert labels == ["cat", "dog"]


def test_labels_csv_needs_its_columns(tmp_path):
    (tmp_path / "labels.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(ValueError, match="filename,label"):
        read_labelled_folder(tmp_path)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="labels.csv"):
        read_labelled_folder(tmp_path)


class MeanColourEngine(Engine):
    """A stand-in engine whose feature is the image's mean colour, so the expected ranking is obvious."""

    name = "mean-colour"
    dim = 3
    metric = "cosine"
    input_size = 8
    weights = "none"

    def _load(self):
        pass

    def _extract(self, batch):
        return batch.reshape(len(batch), -1, 3).mean(axis=1)


def test_model_throughput_counts_images_per_second():
    images = np.zeros((7, 8, 8, 3), np.uint8)
    assert model_throughput(MeanColourEngine(), images, batch_size=3) > 0


# ----- engine metrics, robustness, threshold and the `evaluate` command ------------------------


def test_ranks_with_the_engines_own_metric():
    # Row 1 points the same way as row 0 but is far away; row 2 is close but at an angle. By cosine,
    # row 0's best is row 1 (a miss), and row 2 ties rows 0 and 1 (index order gives row 0, a hit).
    vectors = np.array([[1.0, 0.0], [10.0, 0.0], [1.2, 0.5]])
    labels = ["a", "b", "a"]
    assert leave_one_out_metrics(vectors, labels, ks=(1,), metric="cosine")["per_class"]["a"]["P@1"] == 0.5
    assert leave_one_out_metrics(vectors, labels, ks=(1,), metric="euclidean")["per_class"]["a"]["P@1"] == 1.0


def test_precision_curve_runs_to_the_requested_depth():
    vectors = np.eye(4)[[0, 0, 1, 1]] + 0.01 * np.arange(4)[:, None]
    result = leave_one_out_metrics(vectors, ["a", "a", "b", "b"], curve_depth=5)
    assert result["precision_curve"][0] == result["P@1"] == 1.0
    assert result["precision_curve"][4] == pytest.approx(1 / 5)  # one relevant image among 3 others, k = 5


def test_transforms_do_what_they_say():
    image = Image.new("RGB", (200, 100), (200, 100, 50))
    assert TRANSFORMS["crop70"](image).size == (140, 70)
    assert TRANSFORMS["downscale64"](image).size == (64, 32)
    assert TRANSFORMS["rotate10"](image).size == (200, 100)
    gray = np.asarray(TRANSFORMS["grayscale"](image))
    assert gray.shape == (100, 200, 3) and (gray[..., 0] == gray[..., 2]).all()
    assert np.asarray(TRANSFORMS["brightness1.6"](image))[0, 0].tolist() == [255, 160, 80]
    assert KNOWN_TRANSFORMS == ("crop70", "rotate10", "jpeg20", "downscale64", "grayscale", "mirror", "brightness1.6")
    assert set(KNOWN_TRANSFORMS) | set(WIDER_TRANSFORMS) == set(TRANSFORMS)
    assert not set(KNOWN_TRANSFORMS) & set(WIDER_TRANSFORMS) and len(WIDER_TRANSFORMS) >= 10


def test_wider_transforms_do_what_they_say():
    pixels = np.random.default_rng(2).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    letterbox = np.asarray(TRANSFORMS["letterbox"](image))
    assert letterbox.shape == (200, 200, 3) and letterbox[:50].max() == 0 and letterbox[150:].max() == 0
    assert (letterbox[50:150] == pixels).all()
    border = np.asarray(TRANSFORMS["border10"](image))
    assert border.shape == (140, 240, 3) and border[:20].min() == 255 and (border[20:120, 20:220] == pixels).all()
    assert (np.asarray(TRANSFORMS["offcrop75"](image)) == pixels[:75, :150]).all()
    assert TRANSFORMS["crop50"](image).size == (100, 50)
    assert TRANSFORMS["stretch1.4"](image).size == (280, 100)
    assert TRANSFORMS["shrink50"](image).size == (100, 50)
    inset = np.asarray(TRANSFORMS["inset60"](image))
    assert inset.shape == pixels.shape and (inset[:10] == 90).all()
    assert len(TRANSFORMS["palette64"](image).getcolors(4096)) <= 64
    assert TRANSFORMS["reposted"](image).size == (81, 45)
    assert np.asarray(TRANSFORMS["blur"](image)).std() < pixels.std() / 2
    # Noise is seeded: a copy is the same on every run.
    assert (np.asarray(TRANSFORMS["noise15"](image)) == np.asarray(TRANSFORMS["noise15"](image))).all()
    plain = Image.new("RGB", (200, 100), (20, 120, 220))
    caption = np.asarray(TRANSFORMS["caption"](plain))
    assert caption.shape == (100, 200, 3) and (caption[:85] == (20, 120, 220)).all()
    assert caption[85:].max() > 200 and (caption[85:] == 0).mean() > 0.5  # light text on a black banner
    watermark = np.asarray(TRANSFORMS["watermark"](plain))
    assert watermark.shape == (100, 200, 3) and 0 < (watermark != (20, 120, 220)).any(axis=2).mean() < 0.3
    for name in ("contrast0.5", "saturation1.8", "noise15"):
        assert TRANSFORMS[name](image).size == image.size
        assert not (np.asarray(TRANSFORMS[name](image)) == pixels).all()


def test_class_subset_draws_a_seeded_handful_of_each_class():
    labels = ["a"] * 20 + ["b"] * 3 + ["c"] * 12
    rows = class_subset(labels, 10, seed=4)
    drawn = [labels[i] for i in rows]
    assert (drawn.count("a"), drawn.count("b"), drawn.count("c")) == (10, 3, 10)
    assert rows.tolist() == sorted(set(rows.tolist())) == class_subset(labels, 10, seed=4).tolist()
    assert rows.tolist() != class_subset(labels, 10, seed=5).tolist()


def test_near_duplicate_ranks_count_only_strictly_better_images():
    scores = np.array([[0.9, 0.95, 0.1], [0.5, 0.5, 0.2]])
    assert near_duplicate_ranks(scores, np.array([0, 1])).tolist() == [2, 1]


def test_robustness_sample_is_seeded():
    first = robustness_sample(1000, 10, seed=3)
    assert first.tolist() == robustness_sample(1000, 10, seed=3).tolist()
    assert len(set(first)) == 10 and robustness_sample(5, 10).tolist() == [0, 1, 2, 3, 4]


def test_threshold_study_picks_the_best_f1_on_the_grid():
    positives = np.array([0.99, 0.97, 0.95, 0.90])
    negatives = np.array([0.50, 0.80, 0.93])
    study = duplicate_threshold_study(positives, negatives)
    # 0.94 and 0.95 both keep 3 of 4 copies with no false duplicate (F1 6/7); the higher one wins.
    # 0.90 would keep all 4 but also the 0.93 negative (F1 8/9 > 6/7), so it is the best.
    assert study["threshold"] == 0.90
    assert study["precision"] == pytest.approx(4 / 5) and study["recall"] == 1.0 and study["false_positives"] == 1
    assert duplicate_threshold_study(np.array([0.99]), np.array([0.5]))["threshold"] == 0.99


def test_same_class_pairs_are_each_counted_once():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    scores = same_class_pair_similarities(vectors, ["a", "a", "a", "b"], "cosine")
    assert np.sort(scores) == pytest.approx([0.6, 0.6, 1.0])


def test_features_are_cached_per_engine_and_transform(tmp_path):
    for i in range(3):
        _write_image(tmp_path / "set" / "x" / f"{i}.png", (50 * i, 100, 10))
    root = tmp_path / "set"
    paths, _ = read_labelled_folder(root)
    first, timing = dataset_features(MeanColourEngine(), root, paths, tmp_path / "cache")
    again, cached = dataset_features(MeanColourEngine(), root, paths, tmp_path / "cache")
    assert not timing["from_cache"] and cached["from_cache"] and cached["images"] == 3
    np.testing.assert_array_equal(first, again)
    grey, timing = dataset_features(MeanColourEngine(), root, paths, tmp_path / "cache", transform_name="grayscale")
    assert not timing["from_cache"] and not np.allclose(grey, first)
    subset, timing = dataset_features(MeanColourEngine(), root, paths[1:], tmp_path / "cache")
    assert timing["from_cache"]
    np.testing.assert_array_equal(subset, first[1:])


def test_unreadable_and_missing_images_are_an_error_or_skipped_and_listed(tmp_path):
    for i in range(3):
        _write_image(tmp_path / "set" / "x" / f"{i}.png", (50 * i, 100, 10))
    (tmp_path / "set" / "x" / "1.png").write_bytes(b"not a PNG")
    root = tmp_path / "set"
    paths = sorted(root.rglob("*.png")) + [root / "x" / "gone.png"]
    with pytest.raises(ImageError, match="x/1.png"):
        dataset_features(MeanColourEngine(), root, paths, tmp_path / "cache")
    vectors, timing = dataset_features(MeanColourEngine(), root, paths, tmp_path / "cache", skip_unreadable=True)
    assert len(vectors) == 2
    assert [name for name, _ in timing["skipped"]] == ["x/1.png", "x/gone.png"]
    assert timing["skipped"][1][1] == "no such file"


def test_evaluate_dataset_with_post_processing(tmp_path):
    for i in range(4):
        _write_image(tmp_path / "red" / f"{i}.png", (200 + 10 * i, 10 + 5 * i, 10))
        _write_image(tmp_path / "green" / f"{i}.png", (10, 200 + 10 * i, 10 + 5 * i))
        _write_image(tmp_path / "blue" / f"{i}.png", (10 + 5 * i, 10, 200 + 10 * i))
    result = evaluate_dataset(MeanColourEngine(), tmp_path, PostProcessing(dba_k=2, qe_k=1), robustness=4,
                              cache_dir=None, progress=lambda message: None)
    assert result["postprocessing"] == "dba2+aqe1" and result["P@1"] == 1.0
    assert set(result["robustness"]["recall_at_1"]) == set(TRANSFORMS)
    assert result["duplicate_threshold"]["positives"] == 4 * len(KNOWN_TRANSFORMS)
    assert len(result["precision_curve"]) == 50


def test_evaluate_dataset_on_a_small_library_uses_the_full_sets_vectors(tmp_path):
    for i in range(6):
        _write_image(tmp_path / "red" / f"{i}.png", (150 + 20 * i, 10, 10 + 20 * i))
        _write_image(tmp_path / "blue" / f"{i}.png", (10 + 20 * i, 10, 150 + 20 * i))
    progress = []
    full = evaluate_dataset(MeanColourEngine(), tmp_path, robustness=0, cache_dir=tmp_path / "cache",
                            progress=progress.append)
    small = evaluate_dataset(MeanColourEngine(), tmp_path, robustness=3, cache_dir=tmp_path / "cache", per_class=2,
                             seed=1, progress=progress.append)
    assert (full["images"], small["images"]) == (12, 4)
    assert small["dataset"] == f"{tmp_path.name} (2 per class)" and small["subset"] == {"per_class": 2, "seed": 1}
    assert small["per_class"]["red"]["queries"] == small["per_class"]["blue"]["queries"] == 2
    assert small["robustness"]["sample"] == 3
    assert small["timing"]["extraction"]["from_cache"]  # the subset's rows come from the full set's vectors


class ChannelEngine(MeanColourEngine):
    """The mean of one colour channel, scaled: alone it cannot tell colours apart along the other two."""

    dim = 1

    def __init__(self, channel: int, scale: float):
        super().__init__()
        self.channel, self.scale = channel, scale
        self.name = f"channel{channel}"

    def _extract(self, batch):
        return self.scale * batch[..., self.channel].reshape(len(batch), -1).mean(axis=1, keepdims=True)


def test_concatenated_engine_joins_each_parts_unit_vectors(tmp_path):
    for i, colour in enumerate([(250, 10, 10), (10, 250, 10), (240, 20, 10)]):
        _write_image(tmp_path / "x" / f"{i}.png", colour)
    paths, _ = read_labelled_folder(tmp_path)
    both = ConcatenatedEngine([MeanColourEngine(), ChannelEngine(1, scale=100.0)])
    assert (both.name, both.dim, both.metric) == ("mean-colour+channel1", 4, "cosine")
    assert both.model_id == "mean-colour+channel1-none+none-cosine"
    vectors = both.extract(np.stack([both.prepare(Image.open(path).convert("RGB")) for path in paths]))
    # Each part at unit length, scaled so the whole vector is: cosines are the mean of the parts' cosines.
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors[:, :3], axis=1), np.sqrt(0.5), rtol=1e-6)
    np.testing.assert_allclose(vectors[:, 3], np.sqrt(0.5), rtol=1e-6)  # one dimension: the scale does not matter
    # evaluate joins the parts' own cached features, and gets what the engine computes.
    joined, timing = features_of(both, tmp_path, paths, tmp_path / "cache", batch_size=2)
    np.testing.assert_allclose(joined, vectors, atol=1e-6)
    assert timing["images"] == 3 and len(timing["parts"]) == 2
    assert dataset_features(MeanColourEngine(), tmp_path, paths, tmp_path / "cache")[1]["from_cache"]
    with pytest.raises(ValueError, match="cosine"):
        ConcatenatedEngine([MeanColourEngine()])


def _toy_colour_set(root):
    """Solid colours, whose colour histograms are either identical (similarity 1) or disjoint (0).

    Sorted order: 0 blue/1 (blue), 1 blue/2 (blue), 2 red/1 (red), 3 red/2 (red), 4 red/3 (blue pixels!).
    Rankings (ties in index order) and relevance:
      q0: 1 4 2 3 -> + - - -  AP 1,     P@1 1
      q1: 0 4 2 3 -> + - - -  AP 1,     P@1 1
      q2: 3 0 1 4 -> + - - +  AP (1 + 2/4)/2 = 3/4,   P@1 1
      q3: 2 0 1 4 -> + - - +  AP 3/4,   P@1 1
      q4: 0 1 2 3 -> - - + +  AP (1/3 + 2/4)/2 = 5/12, P@1 0
    P@10 counts hits among the 4 others out of 10: (1 + 1 + 2 + 2 + 2) / 5 / 10.
    """
    for name, colour in [("blue/1", (0, 0, 255)), ("blue/2", (0, 0, 210)), ("red/1", (255, 0, 0)),
                         ("red/2", (215, 0, 0)), ("red/3", (0, 0, 230))]:
        _write_image(root / f"{name}.png", colour)


def test_evaluate_command_writes_json_markdown_and_chart(tmp_path, capsys):
    from imgsearch.cli import main

    _toy_colour_set(tmp_path / "toy")
    out = tmp_path / "out"
    code = main(["evaluate", str(tmp_path / "toy"), "--engine", "color", "--out", str(out),
                 "--robustness", "5", "--cache", str(tmp_path / "cache")])
    assert code == 0
    report = json.loads((out / "evaluation.json").read_text())
    (run,) = report["runs"]
    assert run["model_id"] == "color-none-chi2" and run["dataset"] == "toy"
    assert run["P@1"] == pytest.approx(4 / 5)
    assert run["mAP"] == pytest.approx((1 + 1 + 3 / 4 + 3 / 4 + 5 / 12) / 5)
    assert run["P@10"] == pytest.approx(8 / 50)
    assert run["per_class"]["red"]["mAP"] == pytest.approx((3 / 4 + 3 / 4 + 5 / 12) / 3)
    recall = run["robustness"]["recall_at_1"]
    assert recall["mirror"] == recall["crop70"] == 1.0  # a solid colour is unchanged by both
    assert set(run["duplicate_threshold"]["recall_by_transform"]) == set(TRANSFORMS)
    markdown = (out / "evaluation.md").read_text()
    assert "| toy | color-none-chi2 | none | 5 | 2 | 0.800 | 0.160 | 0.783 |" in markdown
    assert "## Near-duplicate recall@1" in markdown and "| red |" in markdown
    assert "| dataset | engine | post-processing | blur |" in markdown  # the wider set has its own table
    assert markdown in capsys.readouterr().out
    assert (out / "precision_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_command_measures_small_libraries_and_concatenations(tmp_path, capsys):
    from imgsearch.cli import main

    _toy_colour_set(tmp_path / "toy")
    out = tmp_path / "out"
    code = main(["evaluate", str(tmp_path / "toy"), "--engine", "color", "--per-class", "2", "--robustness", "0",
                 "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert code == 0
    (run,) = json.loads((out / "evaluation.json").read_text())["runs"]
    assert run["images"] == 4 and run["dataset"] == "toy (2 per class)"
    # `color` ranks by chi-squared, so it cannot be joined as a unit vector.
    assert main(["evaluate", str(tmp_path / "toy"), "--engine", "color+color", "--out", str(out), "--no-cache"]) == 2
    assert "cosine" in capsys.readouterr().err


def test_evaluate_command_refuses_an_unlabelled_folder(tmp_path, capsys):
    from imgsearch.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty"), "--engine", "color", "--out", str(tmp_path / "out"),
                 "--no-cache"]) == 2
    assert "labels.csv" in capsys.readouterr().err
