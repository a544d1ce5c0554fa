"""`python -m imgsearch train`: a labelled folder in, a `custom:<path>` model out, served by a real app process."""
from __future__ import annotations

import contextlib
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import LiveServer, make_image, make_library
from imgsearch import cli
from imgsearch.engines.custom import MODEL_INFO, CustomKerasEngine, read_model_info
from imgsearch.engines.efficientnet_lite import EfficientNetLiteEngine
from imgsearch.extraction import prepare_file
from imgsearch.training import split_classes

# Three kinds of generated photo, wider than tall, so centre-cropping and stretching give different pixels.
CLASSES = {"red_discs": ("red", "ellipse"), "blue_boxes": ("blue", "rectangle"), "yellow_discs": ("yellow", "ellipse")}
PER_CLASS = 10
SIZE = (150, 90)


def write_labelled_set(root: Path, per_class: dict[str, int], first_seed: int = 0) -> Path:
    for name, count in per_class.items():
        color, shape = CLASSES[name]
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(make_image(color, size=SIZE, shape=shape, seed=first_seed + i))
    return root


@contextlib.contextmanager
def cache_env(cache_dir: Path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGE_SEARCH_CACHE_DIR", str(cache_dir))
        yield


def train(*argv) -> tuple[int, str, str]:
    """Run `train` in this process, as `python -m imgsearch train` would; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["train", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = write_labelled_set(tmp_path_factory.mktemp("labelled") / "shapes", dict.fromkeys(CLASSES, PER_CLASS))
    (root / "red_discs" / "broken.jpg").write_bytes(b"not a JPEG at all")
    return root


@pytest.fixture(scope="module")
def features_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def trained(dataset, features_cache, cache_dir, tmp_path_factory):
    """(model path, exit code, stdout, stderr) of one training run on the generated set."""
    model = tmp_path_factory.mktemp("model") / "shapes.keras"
    with cache_env(cache_dir):
        code, out, err = train(dataset, "--out", model, "--cache", features_cache, "--holdout", "0.3", "--epochs", "15")
    return model, code, out, err


# ----- a run ---------------------------------------------------------------------------------------


def test_training_reports_accuracy_and_the_held_out_comparison(trained):
    model, code, out, err = trained
    assert code == 0, err
    assert "skipped red_discs/broken.jpg:" in err
    assert "18 images of 3 classes to fit on, 3 for validation, 9 held out" in out
    assert "validation accuracy 1.000 (3 images), held-out accuracy 1.000 (9 images)" in out
    base_row = next(line for line in out.splitlines() if "(base)" in line)
    trained_row = next(line for line in out.splitlines() if "trained embedding" in line)
    assert base_row.split()[0] == "efficientnet-lite0-imagenet-cosine"
    # three held-out images per class: P@10 is at most 2/10, and the classes are easy
    assert float(trained_row.split()[-1]) == pytest.approx(1.0)
    assert float(trained_row.split()[-2]) == pytest.approx(0.2)
    assert f"IMAGE_SEARCH_MODEL=custom:{model}" in out


def test_the_model_records_its_classes_and_how_images_are_prepared(trained):
    model, *_ = trained
    info = read_model_info(model)
    assert info["classes"] == sorted(CLASSES)
    assert (info["base"], info["prepare"], info["feature_layer"]) == ("efficientnet-lite0", "centre-crop", "embedding")
    assert info["training"]["images"] == 3 * PER_CLASS and info["training"]["skipped"] == 1
    assert list(info["training"]["stages"]) == ["head"]


def test_served_vectors_are_the_trained_embedding_of_the_base_features(trained, cache_dir):
    """The custom engine prepares images as the base engine did in training (centre crop, not a stretch) and runs
    the exported graph; its vectors are the head's embedding of the base engine's features."""
    import keras

    model, *_ = trained
    engine = CustomKerasEngine(str(model), cache_dir=cache_dir).load()
    base = EfficientNetLiteEngine(cache_dir=cache_dir).load()
    assert engine.runtime == "onnxruntime" and engine.dim == 256
    images = [make_image(color, size=SIZE, shape=shape, seed=99) for color, shape in CLASSES.values()]
    prepared = np.stack([prepare_file(engine, image) for image in images])
    np.testing.assert_array_equal(prepared, np.stack([prepare_file(base, image) for image in images]))
    stretched = np.asarray(Image.open(io.BytesIO(images[0])).convert("RGB").resize((224, 224), Image.BILINEAR))
    assert np.abs(prepared[0].astype(int) - stretched).mean() > 5

    classifier = keras.models.load_model(model, compile=False)
    head = keras.Model(classifier.get_layer("base_features").output, classifier.get_layer("embedding").output)
    expected = np.array(head(base.extract(prepared)))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    cosines = np.sum(engine.extract(prepared) * expected, axis=1)
    assert cosines.min() > 0.9999


def test_retraining_the_same_file_makes_a_new_feature_space(trained, dataset, features_cache, cache_dir, tmp_path):
    model, *_ = trained
    retrained = tmp_path / "shapes.keras"
    shutil.copy(model, retrained)
    before = CustomKerasEngine(str(retrained)).model_id
    with cache_env(cache_dir):
        code, _, err = train(dataset, "--out", retrained, "--cache", features_cache, "--overwrite", "--seed", "1",
                               "--epochs", "2")
    assert code == 0, err
    assert CustomKerasEngine(str(retrained)).model_id != before


@pytest.mark.slow
def test_fine_tuning_trains_the_top_blocks_only(dataset, features_cache, cache_dir, tmp_path):
    import keras

    from imgsearch.training import base_backbone

    model = tmp_path / "tuned.keras"
    with cache_env(cache_dir):
        code, out, err = train(dataset, "--out", model, "--cache", features_cache, "--fine-tune", "2",
                               "--epochs", "3")
    assert code == 0, err
    assert "fine-tuned: stopped after 3 epochs" in out and "top blocks fine-tuned" in out
    assert list(read_model_info(model)["training"]["stages"]) == ["head", "fine-tuned"]
    tuned = keras.models.load_model(model, compile=False).get_layer("efficientnet_lite0")
    original = base_backbone(EfficientNetLiteEngine(cache_dir=cache_dir))
    changed = {layer.name for layer in original.layers if layer.weights and not all(
        np.array_equal(a, b) for a, b in zip(layer.get_weights(), tuned.get_layer(layer.name).get_weights()))}
    assert {"block14_project_conv", "block15_expand_conv", "head_conv"} <= changed
    assert all(name.startswith(("block14_", "block15_", "head_")) and not name.endswith("_bn") for name in changed)
    assert CustomKerasEngine(str(model), cache_dir=cache_dir).load().runtime == "onnxruntime"


def test_fine_tuning_more_blocks_than_the_network_has_is_refused(dataset, features_cache, cache_dir, tmp_path):
    with cache_env(cache_dir):
        code, _, err = train(dataset, "--out", tmp_path / "m.keras", "--cache", features_cache, "--fine-tune", "17")
    assert code == 2 and "has 16 blocks to fine-tune, not 17" in err


# ----- serving it --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(trained, cache_dir, tmp_path_factory):
    model, code, *_ = trained
    assert code == 0
    library = {f"{name}_{i}.png": make_image(color, size=SIZE, shape=shape, seed=50 + i)
               for name, (color, shape) in CLASSES.items() for i in range(3)}
    data_dir = make_library(tmp_path_factory.mktemp("app") / "data", library)
    server = LiveServer(data_dir, {"IMAGE_SEARCH_MODEL": f"custom:{model}", "IMAGE_SEARCH_TAGS": "0"},
                        cache_dir).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_status_names_the_model_and_its_classes(server):
    status = requests.get(server.url + "/api/status", timeout=10).json()
    assert (status["model"], status["model_file"], status["dimension"]) == ("custom", "shapes.keras", 256)
    assert status["classes"] == sorted(CLASSES) and status["trained_on"] == "efficientnet-lite0"
    assert status["runtime"] == "onnxruntime" and status["indexed"] == 9


@pytest.mark.slow
def test_search_with_the_trained_model_finds_the_same_class(server):
    query = make_image("blue", size=SIZE, shape="rectangle", seed=77)
    response = requests.post(server.url + "/api/search", files={"file": ("q.png", query)}, data={"k": "3"},
                             timeout=60)
    assert response.status_code == 200, server.output()[-2000:]
    assert [hit["filename"].rsplit("_", 1)[0] for hit in response.json()["results"]] == ["blue_boxes"] * 3


@pytest.mark.slow
def test_the_status_line_names_the_model_and_its_classes(server, browser):
    expect = pytest.importorskip("playwright.sync_api").expect
    page = browser.new_page()
    try:
        page.goto(server.url)
        status = page.locator("#status-line")
        expect(status).to_contain_text("Model custom shapes.keras", timeout=30_000)
        expect(status).to_contain_text("Classes blue_boxes, red_discs, yellow_discs")
    finally:
        page.close()


# ----- bad input ---------------------------------------------------------------------------------


def test_an_existing_model_is_kept_unless_overwrite(trained, dataset, features_cache, cache_dir):
    model, *_ = trained
    before = model.read_bytes()
    with cache_env(cache_dir):
        code, _, err = train(dataset, "--out", model, "--cache", features_cache)
    assert code == 2 and "already exists; pass --overwrite" in err
    assert model.read_bytes() == before


@pytest.mark.parametrize("out, message", [("model.h5", "ending in .keras"), ("model", "ending in .keras")])
def test_the_output_must_be_a_keras_file(dataset, tmp_path, out, message):
    code, _, err = train(dataset, "--out", tmp_path / out)
    assert code == 2 and message in err


def test_one_class_is_not_enough(tmp_path, features_cache, cache_dir):
    folder = write_labelled_set(tmp_path / "one", {"red_discs": 4})
    with cache_env(cache_dir):
        code, _, err = train(folder, "--out", tmp_path / "m.keras", "--cache", features_cache)
    assert code == 2 and "at least 2 classes; found 1 (red_discs)" in err


def test_a_class_with_one_image_is_named(tmp_path, features_cache, cache_dir):
    folder = write_labelled_set(tmp_path / "small", {"red_discs": 4, "blue_boxes": 1})
    with cache_env(cache_dir):
        code, _, err = train(folder, "--out", tmp_path / "m.keras", "--cache", features_cache)
    assert code == 2 and "these have 1: blue_boxes" in err
    assert not (tmp_path / "m.keras").exists()


def test_a_class_left_with_one_readable_image_is_named_after_the_skipped_ones(tmp_path, features_cache, cache_dir):
    folder = write_labelled_set(tmp_path / "broken", {"red_discs": 3, "blue_boxes": 1})
    (folder / "blue_boxes" / "truncated.png").write_bytes(make_image("blue")[:40])
    with cache_env(cache_dir):
        code, _, err = train(folder, "--out", tmp_path / "m.keras", "--cache", features_cache)
    assert code == 2
    assert "skipped blue_boxes/truncated.png:" in err and "these have 1: blue_boxes" in err


def test_a_labels_file_naming_a_missing_image_skips_it(tmp_path, features_cache, cache_dir):
    folder = write_labelled_set(tmp_path / "listed", {"red_discs": 3, "blue_boxes": 3})
    rows = [f"{path.relative_to(folder).as_posix()},{path.parent.name}" for path in sorted(folder.rglob("*.png"))]
    (folder / "labels.csv").write_text("filename,label\n" + "\n".join(rows + ["gone.png,blue_boxes"]) + "\n")
    with cache_env(cache_dir):
        code, _, err = train(folder, "--out", tmp_path / "m.keras", "--cache", features_cache, "--epochs", "2")
    assert code == 0, err
    assert "skipped gone.png: no such file" in err
    assert zipfile.ZipFile(tmp_path / "m.keras").read(MODEL_INFO)


def test_only_the_offline_network_can_be_trained_on(dataset, tmp_path):
    code, _, err = train(dataset, "--out", tmp_path / "m.keras", "--base", "color")
    assert code == 2 and "train builds on efficientnet-lite0, not color" in err


# ----- the split ---------------------------------------------------------------------------------


def test_every_class_is_split_with_something_to_fit_on_and_to_check():
    labels = ["a"] * 2 + ["b"] * 3 + ["c"] * 20
    split = split_classes(labels, holdout=0.2, validation=0.2, seed=0)
    parts = [split.fit, split.validation, split.held_out]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    for name, count in (("a", 2), ("b", 3), ("c", 20)):
        rows = {i for i, label in enumerate(labels) if label == name}
        fit, validation, held = (len(rows & set(part.tolist())) for part in parts)
        assert fit >= 1 and held >= 1
        assert (fit, validation, held) == {"a": (1, 0, 1), "b": (2, 0, 1), "c": (13, 3, 4)}[name]
    again = split_classes(labels, holdout=0.2, validation=0.2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, [again.fit, again.validation, again.held_out]))
    assert not split_classes(labels, holdout=0, validation=0.2).held_out.size
