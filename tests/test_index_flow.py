"""The whole HTTP flow once per index backend, and the same answers from every backend on the same data."""
from __future__ import annotations

import dataclasses
import io
import json

import pytest

from conftest import build_app, make_image
from imgsearch.index.exact import ExactIndex

BACKENDS = ["exact", "faiss", "milvus:index/vectors.db"]


def upload(client, data: bytes, name: str):
    return client.post("/api/upload-image", data={"file": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def search_file(client, data: bytes, k: int = 6) -> list[str]:
    body = client.post("/api/search", data={"file": (io.BytesIO(data), "query.png"), "k": str(k)},
                       content_type="multipart/form-data").get_json()
    return [r["filename"] for r in body["results"]]


def index_status(client) -> dict:
    return client.get("/api/status").get_json()["index"]


def same_answers_as_exact(service) -> None:
    """Every library image as a query: the backend returns the exact backend's top 6 on the same store."""
    exact = ExactIndex(service.store, service.engine.metric)
    names = [name for snapshot in service.store.snapshots() for name in snapshot.names]
    queries = [service.store.vector(name) for name in names]
    for name, query in zip(names, queries):
        exclude = frozenset([name])
        expected = exact.search(query[None], 6, exclude)[0]
        got = service.index.search(query[None], 6, exclude)[0]
        assert [n for n, _ in got] == [n for n, _ in expected], name
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-4)


@pytest.mark.parametrize("spec", BACKENDS)
def test_http_flow(spec, settings, image_server):
    settings = dataclasses.replace(settings, index=spec, allow_private_urls=True)
    app = build_app(settings)
    client = app.test_client()
    backend = spec.split(":")[0]
    assert index_status(client) == {**index_status(client), "backend": backend, "count": 6, "consistent": True}

    uploaded = upload(client, make_image("purple", seed=7), "violet.png").get_json()["filename"]
    for i in range(2):
        (settings.images_dir / f"added_by_hand_{i}.png").write_bytes(make_image("green", shape="rectangle", seed=30 + i))
    events = [json.loads(line[6:]) for line in client.post("/api/generate-features").get_data(as_text=True).splitlines()
              if line.startswith("data: ")]
    assert events[-1]["complete"] is True and events[-1]["computed"] == 2
    assert index_status(client)["count"] == 9 and index_status(client)["consistent"] is True

    assert search_file(client, make_image("purple", seed=8))[0] == uploaded
    by_url = client.post("/api/search", json={"url": f"{image_server}/blue.png", "k": 3}).get_json()
    assert by_url["results"][0]["filename"].startswith("blue")
    by_name = client.post("/api/search", json={"filename": "added_by_hand_0.png", "k": 3}).get_json()
    names = [r["filename"] for r in by_name["results"]]
    assert names[0] == "added_by_hand_1.png" and "added_by_hand_0.png" not in names and len(names) == 3
    same_answers_as_exact(app.extensions["image_search"])

    assert client.delete(f"/api/delete-image/{uploaded}").status_code == 200
    assert uploaded not in search_file(client, make_image("purple", seed=8), k=20)
    assert index_status(client)["count"] == 8 and index_status(client)["consistent"] is True
    before_restart = search_file(client, make_image("yellow", seed=9))

    # A second process over the same data: the index comes back from disk (or the Milvus file) consistent.
    service = app.extensions["image_search"]
    if hasattr(service.index, "close"):
        service.index.close()
    restarted = build_app(settings)
    client = restarted.test_client()
    assert index_status(client)["count"] == 8 and index_status(client)["consistent"] is True
    assert search_file(client, make_image("yellow", seed=9)) == before_restart
    same_answers_as_exact(restarted.extensions["image_search"])
    restarted_index = restarted.extensions["image_search"].index
    if hasattr(restarted_index, "close"):
        restarted_index.close()
