"""Changing the engine changes the feature space: the new vectors are computed in the background while the
previous engine keeps answering searches, and searches move over once the new vectors are complete."""
from __future__ import annotations

import dataclasses
import io
import threading

import numpy as np

from conftest import build_app, make_image
from imgsearch.engines.color import ColorHistogramEngine
from imgsearch.service import ImageSearchService
from imgsearch.web import create_app


class HeldEngine(ColorHistogramEngine):
    """A new feature space (colour histograms squared); the background job's extraction waits until the test
    lets it go, so the test sees the library in the middle of the change."""

    name = "held"

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def _extract(self, batch):
        if threading.current_thread().name == "feature-job":
            assert self.release.wait(60), "the test never released the engine"
        return np.square(super()._extract(batch))


def search(client, k: int = 5) -> tuple[str, list[str]]:
    """(the model that ranked, the names found) for a search by a library image."""
    body = client.post("/api/search", json={"filename": "red_circle.png", "k": k}).get_json()
    return body["model"], [hit["filename"] for hit in body["results"]]


def test_searches_use_the_previous_engine_until_the_new_vectors_are_complete(settings):
    color = dataclasses.replace(settings, model="color")
    before = build_app(color).test_client()
    assert search(before)[0] == "color" and before.get("/api/status").get_json()["switch"] is None

    held = HeldEngine().load()
    service = ImageSearchService(color, held).open()
    try:
        client = create_app(color, service=service).test_client()
        status = client.get("/api/status").get_json()
        assert status["model"] == "held" and status["switch"] == {
            "from": "color-none-chi2", "to": "held-none-chi2", "done": 0, "total": 6}
        assert search(client)[0] == "color"  # meanwhile the previous engine answers
        uploaded = client.post("/api/upload-image", data={"file": (io.BytesIO(make_image("purple", seed=77)),
                                                                    "new.png")}, content_type="multipart/form-data")
        assert uploaded.status_code == 200
        assert "new.png" in search(client, k=10)[1]  # an upload gets the previous engine's vector too

        held.release.set()
        service.startup_job.thread.join(60)
        assert client.get("/api/status").get_json()["switch"] is None
        model, found = search(client, k=10)
        assert model == "held" and len(found) == 6
    finally:
        held.release.set()
        service.close()

    # The next start remembers the new engine: nothing to fall back on, nothing pending.
    again = ImageSearchService(color, held).open()
    try:
        assert again.startup_job is None and again.status()["switch"] is None
    finally:
        again.close()
