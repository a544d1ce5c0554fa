"""Every engine through the same HTTP flow: upload, index, search, delete. Keras engines use random weights."""
from __future__ import annotations

import dataclasses
import io
import json

import pytest

from conftest import build_app, make_image
from imgsearch.catalogue import model_dimensions

# Slow: builds Keras networks with TensorFlow; `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

ENGINES = {
    # name: (dimension, metric, what runs it)
    "resnet50": (2048, "cosine", "onnxruntime"),
    "efficientnet-lite0": (1280, "cosine", "onnxruntime"),
    "vgg16": (4096, "euclidean", "onnxruntime"),
    "mobilenetv2": (1280, "cosine", "onnxruntime"),
    "color": (1440, "chi2", "numpy"),
    "custom": (16, "cosine", "onnxruntime"),
}


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory):
    import keras
    import numpy as np

    from test_engine_custom import BLUE, RED, build_classifier, noisy_squares

    keras.utils.set_random_seed(0)
    images = np.concatenate([noisy_squares(RED, 16, seed=1), noisy_squares(BLUE, 16, seed=2)])
    model = build_classifier()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images.astype("float32"), np.array([0] * 16 + [1] * 16), epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("custom") / "vehicles.keras"
    model.save(path)
    return path


def engine_settings(settings, name, custom_model):
    model = f"custom:{custom_model}" if name == "custom" else name
    return dataclasses.replace(settings, model=model, weights="random")


def upload(client, data, name):
    return client.post("/api/upload-image", data={"file": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def search_file(client, data, **fields):
    return client.post("/api/search", data={"file": (io.BytesIO(data), "query.png"), **fields},
                       content_type="multipart/form-data")


@pytest.mark.parametrize("name", list(ENGINES))
def test_engine_serves_the_whole_flow(name, settings, custom_model, data_dir):
    dimension, metric, runtime = ENGINES[name]
    client = build_app(engine_settings(settings, name, custom_model)).test_client()
    status = client.get("/api/status").get_json()
    assert (status["model"], status["dimension"], status["metric"], status["runtime"]) == (
        name, dimension, metric, runtime)
    assert status["indexed"] == 6 and status["fallback"] is False

    sunset = make_image("purple", size=(120, 90), seed=11)
    assert upload(client, sunset, "sunset.png").status_code == 200
    (data_dir / "images" / "copied.png").write_bytes(make_image("green", seed=12))
    stream = client.post("/api/generate-features").get_data(as_text=True)
    final = json.loads(stream.strip().splitlines()[-1][6:])
    assert final["complete"] and final["computed"] == 1 and final["count"] == 2

    body = search_file(client, sunset).get_json()
    assert body["model"] == name and body["metric"] == metric
    assert body["results"][0]["filename"] == "sunset.png"
    assert body["results"][0]["similarity"] >= 0.99
    scores = [r["similarity"] for r in body["results"]]
    assert len(scores) == 6 and scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)

    by_name = client.post("/api/search", json={"filename": "copied.png", "k": 100}).get_json()["results"]
    assert len(by_name) == 7 and "copied.png" not in [r["filename"] for r in by_name]

    assert client.delete("/api/delete-image/sunset.png").get_json() == {"success": True}
    after = search_file(client, sunset).get_json()["results"]
    assert "sunset.png" not in [r["filename"] for r in after]
    assert client.get("/api/status").get_json()["indexed"] == 7


def test_vgg16_can_rank_by_cosine_in_its_own_store(settings, data_dir):
    app = build_app(dataclasses.replace(settings, model="vgg16", weights="random", metric="cosine"))
    assert app.test_client().get("/api/status").get_json()["metric"] == "cosine"
    with app.extensions["image_search"].catalogue.reading() as conn:
        engines = {model: dim for model, dim in model_dimensions(conn).items() if not model.startswith("imagenet-tags")}
    assert engines == {"vgg16-random-cosine": 4096}


def test_colour_engine_ranks_by_colour(settings):
    client = build_app(dataclasses.replace(settings, model="color")).test_client()
    results = search_file(client, make_image("red", shape="ellipse", seed=77)).get_json()["results"]
    assert {r["filename"] for r in results[:2]} == {"red_circle.png", "red_square.png"}


def test_a_search_may_name_another_ready_engine_the_server_offers(settings):
    settings = dataclasses.replace(settings, search_engines="color")
    lite = build_app(settings).test_client()
    refused = lite.post("/api/search", json={"filename": "red_circle.png", "engine": "color"})
    assert refused.status_code == 409 and "not ready" in refused.get_json()["error"]
    not_offered = [lite.post("/api/search", json={"filename": "red_circle.png", "engine": name}).get_json()["error"]
                   for name in ("nope", "vgg16", "custom:/etc/passwd")]
    assert len(set(not_offered)) == 1 and "efficientnet-lite0, color" in not_offered[0]

    build_app(dataclasses.replace(settings, model="color"))  # computes the colour store for this library
    lite = build_app(settings).test_client()
    body = lite.post("/api/search", json={"filename": "red_circle.png", "engine": "color"}).get_json()
    assert body["model"] == "color" and body["metric"] == "chi2"
    assert body["results"][0]["filename"] == "red_square.png"
    assert lite.post("/api/search", json={"filename": "red_circle.png"}).get_json()["model"] == "efficientnet-lite0"
