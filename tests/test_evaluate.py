"""Leave-one-out retrieval metrics and labelled-folder reading, on tiny generated data."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgsearch.engines.base import Engine
from imgsearch.evaluate import evaluate_engine, leave_one_out_metrics, model_throughput, read_labelled_folder


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


def test_evaluate_engine_runs_a_folder_end_to_end(tmp_path):
    for i in range(5):
        _write_image(tmp_path / "red" / f"{i}.png", (200 + 10 * i, 10, 10))
        _write_image(tmp_path / "green" / f"{i}.jpg", (10, 200 + 10 * i, 10))
    result = evaluate_engine(MeanColourEngine(), tmp_path, batch_size=3)
    assert result["P@1"] == 1.0 and result["mAP"] == 1.0
    assert result["images"] == 10 and result["engine"] == "mean-colour"
    assert result["batch_size"] == 3 and result["images_per_second"] > 0


def test_model_throughput_counts_images_per_second():
    images = np.zeros((7, 8, 8, 3), np.uint8)
    assert model_throughput(MeanColourEngine(), images, batch_size=3) > 0
