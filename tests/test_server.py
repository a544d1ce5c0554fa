"""`python app.py` as a real process, over real HTTP."""
from __future__ import annotations

import pytest
import requests

from conftest import LiveServer, make_image

# Slow: real server processes (or the browser, or the benchmark run); `make test-fast` leaves these out.
pytestmark = pytest.mark.slow


def test_full_flow_over_http(data_dir, cache_dir, image_server):
    server = LiveServer(data_dir, {"IMAGE_SEARCH_ALLOW_PRIVATE_URLS": "1"}, cache_dir).start()
    try:
        base = server.url
        assert "<html" in requests.get(base + "/", timeout=10).text.lower()
        uploaded = requests.post(base + "/api/upload-image",
                                 files={"file": ("sky.png", make_image("blue", seed=3), "image/png")}, timeout=30)
        assert uploaded.status_code == 200, uploaded.text
        name = uploaded.json()["filename"]

        by_file = requests.post(base + "/api/search", files={"file": ("q.png", make_image("blue", seed=4))},
                                timeout=30).json()
        assert by_file["results"][0]["filename"] in (name, "blue_circle.png", "blue_square.png")

        by_url = requests.post(base + "/api/search", json={"url": image_server + "/blue.png", "k": 3}, timeout=30)
        assert by_url.status_code == 200 and len(by_url.json()["results"]) == 3
        not_image = requests.post(base + "/api/search", json={"url": image_server + "/page.html"}, timeout=30)
        assert not_image.status_code == 415 and not_image.json()["error"]

        added = requests.post(base + "/api/search", json={"url": image_server + "/blue.png", "add_to_library": True},
                              timeout=30).json()
        assert added["query"]["filename"] == "blue.png"
        assert "blue.png" in requests.get(base + "/api/images", timeout=10).json()["images"]

        by_name = requests.post(base + "/api/search", data={"filename": name}, timeout=30).json()
        assert name not in [r["filename"] for r in by_name["results"]]

        huge = requests.post(base + "/api/upload-image",
                             files={"file": ("huge.jpg", b"\xff\xd8" + b"\0" * (17 * 1024 * 1024))}, timeout=60)
        assert huge.status_code == 413 and huge.json()["error"]

        stream = requests.post(base + "/api/generate-features", stream=True, timeout=60)
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert '"complete": true' in stream.text

        assert requests.delete(f"{base}/api/delete-image/{name}", timeout=10).json() == {"success": True}
        assert requests.delete(base + "/api/delete-image/red_circle.png", timeout=10).status_code == 403
    except Exception:
        print(server.output())
        raise
    finally:
        server.stop()


def test_restart_keeps_everything(data_dir, cache_dir):
    server = LiveServer(data_dir, cache_dir=cache_dir).start()
    try:
        for i, color in enumerate(["red", "green", "purple"]):
            requests.post(server.url + "/api/upload-image",
                          files={"file": (f"keep{i}.png", make_image(color, seed=50 + i))}, timeout=30)
        before = requests.post(server.url + "/api/search", json={"filename": "keep0.png"}, timeout=30).json()
    finally:
        server.stop()
    server = LiveServer(data_dir, cache_dir=cache_dir).start()
    try:
        status = requests.get(server.url + "/api/status", timeout=10).json()
        assert status["user_images"] == 3 and status["pending"] == 0 and status["indexed"] == 9
        after = requests.post(server.url + "/api/search", json={"filename": "keep0.png"}, timeout=30).json()
        assert after["results"] == before["results"]
    finally:
        server.stop()


def test_offline_fallback_is_announced(data_dir, cache_dir, tmp_path):
    """With no ImageNet weights for ResNet50 the app still starts, on the offline model, and says so."""
    env = {"IMAGE_SEARCH_MODEL": "resnet50", "IMAGE_SEARCH_WEIGHTS": "imagenet",
           "KERAS_HOME": str(tmp_path / "empty-keras-home"), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    server = LiveServer(data_dir, env, cache_dir).start()
    try:
        status = requests.get(server.url + "/api/status", timeout=10).json()
        assert status["model"] == "efficientnet-lite0" and status["fallback"] is True
        assert "ResNet50" in status["fallback_reason"] or "resnet50" in status["fallback_reason"]
        assert status["indexed"] == 6
        assert "Falling back to the offline model" in server.output()
    finally:
        server.stop()
