"""The library catalogue through the public surfaces: several real servers sharing one library on SQLite and on
PostgreSQL, the change feed between them, the folder watcher, the hash dedupe, the import of earlier versions'
feature files, and files that vanish while they are being read.
"""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from bench.common import poll_until
from conftest import DEFAULT_ORIGINALS, LiveServer, make_image, make_library
from imgsearch.engines.color import ColorHistogramEngine
from imgsearch.imaging import open_image
from imgsearch.watch import SETTLE_SECONDS, FolderWatcher

# Slow: real server processes (or the browser, or the benchmark run); `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

COLOR = {"IMAGE_SEARCH_MODEL": "color"}
# How long a test waits for something that should take about a second; it bounds a hang, it times nothing.
PATIENCE = 30


def new_library(root: Path) -> Path:
    originals = {name: make_image(colour, shape=shape, seed=i)
                 for i, (name, (colour, shape)) in enumerate(DEFAULT_ORIGINALS.items())}
    return make_library(root / "data", originals)


def eventually(check, what: str):
    """Poll `check()` until it returns something truthy; fail, saying `what`, after PATIENCE seconds."""
    return poll_until(check, what, PATIENCE)


def upload(server: LiveServer, data: bytes, name: str) -> dict:
    response = requests.post(server.url + "/api/upload-image", files={"file": (name, data)}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def top_hit(server: LiveServer, data: bytes) -> str | None:
    results = requests.post(server.url + "/api/search", files={"file": ("q.png", data)}, timeout=60).json()["results"]
    return results[0]["filename"] if results else None


def listing(server: LiveServer) -> dict:
    return requests.get(server.url + "/api/images", timeout=30).json()


def status(server: LiveServer) -> dict:
    return requests.get(server.url + "/api/status", timeout=30).json()


@pytest.fixture
def two_servers(tmp_path, catalogue_env):
    """Two `python app.py` processes on one data folder and one catalogue."""
    data_dir = new_library(tmp_path)
    first = LiveServer(data_dir, {**COLOR, **catalogue_env}).start()
    second = LiveServer(data_dir, {**COLOR, **catalogue_env}, log_name="server-2.log").start()
    yield first, second
    first.stop()
    second.stop()


def test_two_processes_follow_each_others_changes(two_servers):
    first, second = two_servers
    violet = make_image("purple", shape="rectangle", seed=300)
    name = upload(first, violet, "violet.png")["filename"]
    eventually(lambda: top_hit(second, violet) == name, "the other process finds the upload")
    assert name in listing(second)["images"]
    assert status(second)["user_images"] == status(first)["user_images"] == 1
    assert status(second)["index"]["consistent"] is True

    # A near copy makes a duplicate group on the other process too.
    copy = upload(first, make_image("purple", shape="rectangle", seed=301), "violet_copy.png")["filename"]
    groups = eventually(
        lambda: [g for g in requests.get(second.url + "/api/duplicates?threshold=0.9", timeout=30).json()["groups"]
                 if {m["filename"] for m in g["members"]} >= {name, copy}], "the copy's duplicate group")
    assert groups

    assert requests.delete(f"{second.url}/api/delete-image/{name}", timeout=30).json() == {"success": True}
    eventually(lambda: name not in listing(first)["images"], "the delete reaches the first process")
    assert top_hit(first, violet) != name
    assert status(first)["user_images"] == status(second)["user_images"] == 1
    assert status(first)["indexed"] == status(second)["indexed"] == len(DEFAULT_ORIGINALS) + 1


class Uploader(threading.Thread):
    """Uploads distinct images to one server until it dies or is told to stop; keeps the acknowledged names."""

    def __init__(self, server: LiveServer, number: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.server, self.number, self.stop_event = server, number, stop
        self.acknowledged: dict[str, bytes] = {}

    def run(self):
        session = requests.Session()
        for i in range(10_000):
            if self.stop_event.is_set():
                return
            data = make_image(["blue", "yellow", "purple", "gray"][i % 4], size=(64, 48), seed=10_000 * self.number + i)
            try:
                response = session.post(self.server.url + "/api/upload-image",
                                        files={"file": (f"p{self.number}_{i}.png", data)}, timeout=30)
            except requests.RequestException:
                return
            if response.status_code == 200:
                self.acknowledged[response.json()["filename"]] = data


@pytest.mark.timeout(300)
def test_uploads_to_two_processes_survive_one_being_killed(two_servers):
    survivor, victim = two_servers
    stop = threading.Event()
    uploaders = [Uploader(server, number, stop) for number, server in enumerate([survivor, victim] * 2)]
    for uploader in uploaders:
        uploader.start()
    eventually(lambda: sum(len(u.acknowledged) for u in uploaders) >= 20, "uploads being acknowledged")
    victim.kill()
    time.sleep(1)
    stop.set()
    for uploader in uploaders:
        uploader.join(60)
    acknowledged = {name: data for uploader in uploaders for name, data in uploader.acknowledged.items()}
    through_victim = {name for u in uploaders if u.server is victim for name in u.acknowledged}
    assert through_victim, "the killed process acknowledged nothing before it died"

    images = eventually(lambda: (found := listing(survivor)) and not found["pending"] and found, "a settled library")
    assert set(acknowledged) <= set(images["images"])
    library_status = status(survivor)
    assert library_status["user_images"] == len(images["images"]) - len(DEFAULT_ORIGINALS)
    assert library_status["indexed"] == len(images["images"]) and library_status["index"]["consistent"] is True
    for name in sorted(through_victim)[:5] + sorted(set(acknowledged) - through_victim)[:5]:
        assert top_hit(survivor, acknowledged[name]) == name


def test_files_copied_in_or_removed_by_hand_are_followed(tmp_path):
    data_dir = new_library(tmp_path)
    server = LiveServer(data_dir, COLOR).start()
    try:
        images = data_dir / "images"
        teal = make_image("green", shape="rectangle", seed=400)
        (images / "by_hand.png").write_bytes(teal)
        eventually(lambda: "by_hand.png" in listing(server)["images"] and not listing(server)["pending"],
                   "the copied file is indexed")
        assert top_hit(server, teal) == "by_hand.png"

        (images / "by_hand.png").write_bytes(make_image("yellow", shape="ellipse", seed=401))
        eventually(lambda: top_hit(server, make_image("yellow", shape="ellipse", seed=401)) == "by_hand.png",
                   "the changed file's features are recomputed")

        (images / "broken.jpg").write_bytes(b"not a picture")
        eventually(lambda: status(server)["unreadable"] == ["broken.jpg"], "the unreadable file is reported")

        (images / "by_hand.png").unlink()
        (images / "broken.jpg").unlink()
        eventually(lambda: not {"by_hand.png", "broken.jpg"} & set(listing(server)["images"]),
                   "the removed files leave the library")
        assert status(server)["unreadable"] == []
    finally:
        server.stop()


def test_the_watcher_skips_the_folder_scan_for_changes_the_catalogue_already_holds(tmp_path):
    """An upload's own file wakes the watcher too; the whole folder is listed only when something is new."""
    scans, checked = [], []
    recorded = {"app_upload.png"}

    def is_recorded(names):
        checked.append(names)
        return names <= recorded

    watcher = FolderWatcher(tmp_path, lambda: scans.append(True), rescan_seconds=0, recorded=is_recorded).start()
    try:
        (tmp_path / "app_upload.png").write_bytes(make_image("red", seed=1))
        eventually(lambda: checked, "the watcher sees the upload")
        time.sleep(2 * SETTLE_SECONDS)  # late events of the same write are checked, and skipped, too
        assert all(names == {"app_upload.png"} for names in checked) and scans == []

        (tmp_path / "copied_by_hand.png").write_bytes(make_image("blue", seed=2))
        eventually(lambda: scans, "a file the catalogue does not hold is synced")
        assert checked[-1] == {"copied_by_hand.png"}
    finally:
        watcher.stop()


def test_the_same_bytes_are_stored_once(client, data_dir):
    photo = make_image("purple", seed=500)

    def send(name):
        return client.post("/api/upload-image", data={"file": (io.BytesIO(photo), name)},
                           content_type="multipart/form-data").get_json()

    first, again = send("first.png"), send("second name.png")
    assert (first["filename"], first["already_in_library"]) == ("first.png", False)
    assert (again["filename"], again["already_in_library"]) == ("first.png", True)
    assert not (data_dir / "images" / "second_name.png").exists()
    original = (data_dir / "images" / "red_circle.png").read_bytes()
    same_as_original = client.post("/api/upload-image", data={"file": (io.BytesIO(original), "mine.png")},
                                   content_type="multipart/form-data").get_json()
    assert same_as_original["filename"] == "red_circle.png" and same_as_original["already_in_library"] is True

    searched = client.post("/api/search", data={"file": (io.BytesIO(photo), "q.png"), "add_to_library": "1"},
                           content_type="multipart/form-data").get_json()
    assert searched["query"] == {"type": "file", "filename": "first.png", "already_in_library": True,
                                 "image_url": "/images/first.png"}
    assert "first.png" not in [hit["filename"] for hit in searched["results"]]
    assert client.get("/api/status").get_json()["user_images"] == 1


def test_a_file_deleted_while_it_is_read_is_never_listed_unreadable(app, data_dir, monkeypatch):
    """A sync lists the work, then the file goes before it is decoded: no 'unreadable' ghost, no row left."""
    (data_dir / "images" / "fleeting.png").write_bytes(make_image("gray", seed=600))
    library = app.extensions["image_search"].library
    resolve = library.path_of

    def lose_while_reading(name):
        path = resolve(name)
        if name == "fleeting.png":
            path.unlink(missing_ok=True)
        return path

    monkeypatch.setattr(library, "path_of", lose_while_reading)
    client = app.test_client()
    events = [line for line in client.post("/api/generate-features").get_data(as_text=True).splitlines()
              if line.startswith("data: ")]
    assert '"skipped": []' in events[-1]
    body = client.get("/api/status").get_json()
    assert body["unreadable"] == [] and body["pending"] == 0
    assert "fleeting.png" not in client.get("/api/images").get_json()["images"]


def test_feature_files_of_earlier_versions_are_imported_without_recomputing(tmp_path, cache_dir):
    """A data folder as the previous version left it: features/<model>/originals.npz and uploads.npz."""
    data_dir = new_library(tmp_path)
    images = data_dir / "images"
    (images / "mine.png").write_bytes(make_image("yellow", seed=700))
    engine = ColorHistogramEngine().load()

    def vector(name):
        return engine.extract(engine.prepare(open_image(images / name))[None])[0]

    def stamp(name):
        info = (images / name).stat()
        return info.st_size, info.st_mtime_ns

    originals = sorted(DEFAULT_ORIGINALS)
    # Stored under red_circle.png: blue_circle.png's vector. Only an import, never a recomputation, gives that.
    vectors = [vector("blue_circle.png" if name == "red_circle.png" else name) for name in originals]
    folder = data_dir / "features" / engine.model_id
    folder.mkdir(parents=True)
    for file, names, matrix in (("originals.npz", originals, np.stack(vectors)),
                                ("uploads.npz", ["mine.png"], vector("mine.png")[None])):
        np.savez(folder / file, features=matrix, filenames=np.array(names), model_id=np.array(engine.model_id),
                 stamps=np.array([stamp(name) for name in names], np.int64), version=np.array(1))

    untagged = {**COLOR, "IMAGE_SEARCH_TAGS": "0"}  # tags were never in those files: they would be computed
    server = LiveServer(data_dir, untagged).start()
    try:
        assert status(server)["pending"] == 0 and status(server)["indexed"] == len(originals) + 1
        follow = requests.get(server.url + "/api/generate-features", timeout=30).text
        assert '"computed": 0' in follow  # no feature job ran at startup
        results = requests.post(server.url + "/api/search", json={"filename": "red_circle.png", "k": 1},
                                timeout=30).json()["results"]
        assert results[0]["filename"] == "blue_circle.png" and results[0]["similarity"] == pytest.approx(1.0)
    finally:
        server.stop()
    assert sorted(p.name for p in folder.iterdir()) == ["originals.npz.imported", "uploads.npz.imported"]

    restarted = LiveServer(data_dir, untagged).start()  # imported once: the renamed files are not read again
    try:
        assert status(restarted)["indexed"] == len(originals) + 1
    finally:
        restarted.stop()


def test_an_unreachable_database_is_one_clear_line(tmp_path):
    data_dir = new_library(tmp_path)
    server = LiveServer(data_dir, {**COLOR, "IMAGE_SEARCH_DATABASE": "postgresql://nobody@127.0.0.1:9/none"})
    with pytest.raises(RuntimeError, match="exited"):
        server.start(timeout=60)
    assert "Cannot open the catalogue at postgresql://nobody@127.0.0.1:9/none" in server.output()
    assert "Traceback" not in server.output()
