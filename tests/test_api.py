"""The HTTP API contract, through Flask's test client on a real engine and real images."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import PROJECT_DIR, build_app, make_image


def upload(client, data: bytes, name: str):
    return client.post("/api/upload-image", data={"file": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def sse_events(response) -> list[dict]:
    text = response.get_data(as_text=True)
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


class TestLibrary:
    def test_lists_originals_and_uploads(self, client):
        listing = client.get("/api/images").get_json()
        assert listing["original_images"] == sorted(listing["original_images"])
        assert set(listing["original_images"]) == set(listing["images"])
        assert listing["pending"] == []

        response = upload(client, make_image("purple"), "holiday.png")
        assert response.status_code == 200
        body = response.get_json()
        assert body["success"] is True and body["filename"] == "holiday.png"

        listing = client.get("/api/images").get_json()
        assert "holiday.png" in listing["images"]
        assert "holiday.png" not in listing["original_images"]

    def test_upload_is_searchable_at_once(self, client):
        upload(client, make_image("purple", seed=7), "violet.png")
        status = client.get("/api/status").get_json()
        assert status["pending"] == 0 and status["indexed"] == status["originals"] + status["user_images"]
        assert status["catalogue"]["backend"] == "sqlite"
        results = client.post("/api/search", data={"file": (io.BytesIO(make_image("purple", seed=8)), "q.png")},
                              content_type="multipart/form-data").get_json()["results"]
        assert results[0]["filename"] == "violet.png"

    def test_upload_never_overwrites(self, client, data_dir):
        first = upload(client, make_image("gray"), "same.png").get_json()["filename"]
        second = upload(client, make_image("gray", seed=3), "same.png").get_json()["filename"]
        assert first == "same.png" and second != first and second.endswith(".png")
        clash = upload(client, make_image("gray", seed=4), "red_circle.png").get_json()["filename"]
        assert clash != "red_circle.png"
        original = (data_dir / "images" / "red_circle.png").read_bytes()
        assert original == make_image("red", shape="ellipse", seed=0)

    def test_extension_follows_real_format(self, client):
        body = upload(client, make_image("blue", fmt="JPEG"), "looks_like.png").get_json()
        assert body["filename"] == "looks_like.jpg"

    def test_several_files_in_one_request(self, client):
        files = [(io.BytesIO(make_image("red", seed=100 + i)), f"batch{i}.png") for i in range(3)]
        files.append((io.BytesIO(b"not an image"), "broken.png"))
        body = client.post("/api/upload-image", data={"file": files}, content_type="multipart/form-data").get_json()
        assert [u["filename"] for u in body["uploaded"]] == ["batch0.png", "batch1.png", "batch2.png"]
        assert body["failed"][0]["original_name"] == "broken.png"

    @pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "I;16"])
    def test_any_pixel_mode_becomes_rgb(self, client, mode):
        image = Image.new("RGB", (64, 48), (200, 40, 40)).convert(mode if mode != "I;16" else "L")
        if mode == "I;16":
            image = image.convert("I;16")
        buffer = io.BytesIO()
        image.save(buffer, "PNG" if mode != "CMYK" else "JPEG")
        assert upload(client, buffer.getvalue(), f"mode.{'png' if mode != 'CMYK' else 'jpg'}").status_code == 200

    def test_exif_orientation_is_applied(self, client, app):
        image = Image.new("RGB", (120, 60), (10, 200, 10))
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise on display
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", exif=exif)
        name = upload(client, buffer.getvalue(), "rotated.jpg").get_json()["filename"]
        with client.get(f"/images/thumb/{name}") as response:
            thumb = Image.open(io.BytesIO(response.data))
        assert thumb.height > thumb.width

    def test_animated_gif_uses_first_frame(self, client):
        frames = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 0, 255)] * 20]
        buffer = io.BytesIO()
        frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
        assert upload(client, buffer.getvalue(), "anim.gif").status_code == 200


class TestUploadErrors:
    @pytest.mark.parametrize("data,status", [
        (b"", 400),
        (b"this is text, not an image", 400),
        (make_image("red", fmt="JPEG")[:300], 400),
        (b"%PDF-1.4\n%...", 415),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", 415),
        (b"II*\x00" + b"\x00" * 64, 415),
    ], ids=["empty", "text", "truncated-jpeg", "pdf", "svg", "tiff"])
    def test_refused_with_json_error(self, client, data, status):
        response = upload(client, data, "evil.png")
        assert response.status_code == status
        assert response.is_json and response.get_json()["error"]

    def test_no_file_part(self, client):
        response = client.post("/api/upload-image", data={"other": "x"}, content_type="multipart/form-data")
        assert response.status_code == 400 and "file" in response.get_json()["error"]

    def test_decompression_bomb(self, client):
        buffer = io.BytesIO()
        Image.new("1", (30000, 30000)).save(buffer, "PNG")
        assert len(buffer.getvalue()) < 2_000_000
        response = upload(client, buffer.getvalue(), "bomb.png")
        assert response.status_code == 400 and "limit" in response.get_json()["error"]
        assert client.get("/api/status").status_code == 200

    def test_nothing_left_on_disk(self, client, data_dir):
        before = sorted(p.name for p in (data_dir / "images").iterdir())
        upload(client, b"garbage", "junk.png")
        assert sorted(p.name for p in (data_dir / "images").iterdir()) == before
        assert [p for p in (data_dir / "uploads").iterdir()] == []


class TestDelete:
    def test_delete_removes_image_thumbnail_and_features(self, client, data_dir, app):
        name = upload(client, make_image("green", seed=5), "leaf.png").get_json()["filename"]
        with client.get(f"/images/thumb/{name}") as response:
            assert response.status_code == 200
        assert (data_dir / "thumbnails" / f"{name}.jpg").exists()
        response = client.delete(f"/api/delete-image/{name}")
        assert response.status_code == 200 and response.get_json() == {"success": True}
        assert not (data_dir / "images" / name).exists()
        assert not (data_dir / "thumbnails" / f"{name}.jpg").exists()
        assert name not in app.extensions["image_search"].store
        assert client.get(f"/images/{name}").status_code == 404

    def test_originals_are_protected(self, client, data_dir):
        response = client.delete("/api/delete-image/red_circle.png")
        assert response.status_code == 403 and response.is_json
        assert (data_dir / "images" / "red_circle.png").exists()

    def test_unknown_and_traversal_are_404(self, client, data_dir):
        assert client.delete("/api/delete-image/nope.png").status_code == 404
        assert client.delete("/api/delete-image/..%2Fapp.py").status_code == 404
        assert client.delete("/api/delete-image/../original_filenames.txt").status_code in (404, 405)
        assert (data_dir / "original_filenames.txt").exists()

    def test_batch_delete_is_all_or_nothing(self, client, data_dir):
        names = [upload(client, make_image("gray", seed=i), f"g{i}.png").get_json()["filename"] for i in range(3)]
        refused = client.post("/api/delete-images", json={"filenames": names + ["red_circle.png"]})
        assert refused.status_code == 403
        assert all((data_dir / "images" / n).exists() for n in names)
        done = client.post("/api/delete-images", json={"filenames": names})
        assert done.status_code == 200 and done.get_json()["deleted"] == names
        assert not any((data_dir / "images" / n).exists() for n in names)
        assert client.post("/api/delete-images", json={"filenames": ["ghost.png"]}).status_code == 404
        assert client.post("/api/delete-images", json={"filenames": "x"}).status_code == 400


class TestFeatures:
    def test_generate_streams_progress_and_skips_unreadable(self, client, data_dir):
        images = data_dir / "images"
        for i in range(5):
            (images / f"by_hand_{i}.png").write_bytes(make_image("blue", seed=20 + i))
        (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
        events = sse_events(client.post("/api/generate-features"))
        progress = [e for e in events if "progress" in e]
        assert progress[-1]["current"] == progress[-1]["total"] == 6
        assert [s["filename"] for s in progress[-1]["skipped"]] == ["corrupt.jpg"]
        final = events[-1]
        assert final["complete"] is True and final["count"] == 5 and final["original_count"] == 6
        assert final["computed"] == 5
        status = client.get("/api/status").get_json()
        assert status["pending"] == 0 and status["unreadable"] == ["corrupt.jpg"]

    def test_second_run_computes_nothing(self, client):
        events = sse_events(client.post("/api/generate-features"))
        assert events[-1]["complete"] and events[-1]["computed"] == 0

    def test_follow_reports_the_last_job(self, client):
        events = sse_events(client.get("/api/generate-features"))
        assert events == [{"complete": True, "count": 0, "original_count": 6, "computed": 6, "skipped": []}]

    def test_follow_without_any_job(self, tmp_path, cache_dir):
        from imgsearch.config import Settings

        settings = Settings(data_dir=tmp_path, cache_dir=cache_dir, model="efficientnet-lite0")
        events = sse_events(build_app(settings).test_client().get("/api/generate-features"))
        assert events == [{"complete": True, "count": 0, "original_count": 0, "computed": 0, "skipped": []}]

    def test_changed_file_is_recomputed(self, client, data_dir, app):
        name = upload(client, make_image("red", seed=1), "change.png").get_json()["filename"]
        store = app.extensions["image_search"].store
        before = store.vector(name)
        path = data_dir / "images" / name
        path.write_bytes(make_image("blue", seed=1, size=(90, 70)))
        events = sse_events(client.post("/api/generate-features"))
        assert events[-1]["computed"] == 1
        assert not np.allclose(store.vector(name), before)

    def test_check_features(self, client):
        assert client.get("/api/check-features").get_json() == {"exists": True}


class TestSearch:
    def test_by_file_ranks_same_colour_first(self, client):
        query = make_image("blue", shape="ellipse", seed=99)
        response = client.post("/api/search", data={"file": (io.BytesIO(query), "q.png")},
                               content_type="multipart/form-data")
        body = response.get_json()
        assert response.status_code == 200 and len(body["results"]) == 6
        first = body["results"][0]
        assert first["filename"].startswith("blue")
        assert set(first) >= {"filename", "similarity", "image_url", "thumb_url", "is_original"}
        assert first["image_url"] == f"/images/{first['filename']}"
        assert first["thumb_url"] == f"/images/thumb/{first['filename']}"
        # Query expansion is on by default: the nearest image comes first, the expansion orders the rest.
        scores = [r["similarity"] for r in body["results"]]
        assert body["reranked"] is True and scores[0] == max(scores) and all(0 <= s <= 1 for s in scores)

    def test_by_file_can_add_the_query_to_the_library(self, client):
        body = client.post("/api/search", data={"file": (io.BytesIO(make_image("green", seed=31)), "pick.png"),
                                                "add_to_library": "true"},
                           content_type="multipart/form-data").get_json()
        assert body["query"]["filename"] == "pick.png"
        assert "pick.png" not in [r["filename"] for r in body["results"]]
        assert "pick.png" in client.get("/api/images").get_json()["images"]

    def test_by_filename_excludes_the_query(self, client):
        for payload in ({"json": {"filename": "red_circle.png", "k": 3}},
                        {"data": {"filename": "red_circle.png", "k": "3"}}):
            body = client.post("/api/search", **payload).get_json()
            names = [r["filename"] for r in body["results"]]
            assert "red_circle.png" not in names and len(names) == 3
            assert body["query"] == {"type": "filename", "filename": "red_circle.png",
                                     "image_url": "/images/red_circle.png"}

    def test_k_is_clamped_above_and_refused_below_one(self, client, app):
        for i in range(4):
            upload(client, make_image("gray", seed=i), f"k{i}.png")
        body = client.post("/api/search", json={"filename": "red_circle.png", "k": 1000}).get_json()
        assert len(body["results"]) == 9
        for k in (0, -3, "0"):
            refused = client.post("/api/search", json={"filename": "red_circle.png", "k": k})
            assert refused.status_code == 400 and refused.get_json()["error"] == "k must be between 1 and 100."
        assert client.post("/api/search", json={"filename": "red_circle.png", "k": "many"}).status_code == 400

    def test_min_similarity_cuts_results(self, client):
        body = client.post("/api/search", json={"filename": "red_circle.png", "min_similarity": 0.999}).get_json()
        assert body["results"] == []

    def test_errors(self, client):
        assert client.post("/api/search", json={"filename": "missing.png"}).status_code == 404
        assert client.post("/api/search", json={}).status_code == 400
        assert client.post("/api/search", data="not json", content_type="application/json").status_code == 400
        response = client.post("/api/search", data={"file": (io.BytesIO(b"nope"), "q.png")},
                               content_type="multipart/form-data")
        assert response.status_code == 400 and response.is_json
        blocked = client.post("/api/search", json={"url": "http://127.0.0.1/x.png"})
        assert blocked.status_code == 403 and "127.0.0.1" in blocked.get_json()["error"]
        assert client.post("/api/search", json={"url": "file:///etc/passwd"}).status_code == 400

    def test_empty_library_returns_no_results(self, tmp_path, cache_dir):
        from imgsearch.config import Settings

        settings = Settings(data_dir=tmp_path, cache_dir=cache_dir, model="efficientnet-lite0")
        client = build_app(settings).test_client()
        body = client.post("/api/search", data={"file": (io.BytesIO(make_image()), "q.png")},
                           content_type="multipart/form-data").get_json()
        assert body["results"] == []
        assert client.get("/api/check-features").get_json() == {"exists": False}


class TestImagesAndStatus:
    def test_image_and_thumbnail_headers(self, client):
        with client.get("/images/red_circle.png") as full:
            assert full.status_code == 200 and full.headers["X-Content-Type-Options"] == "nosniff"
            assert full.headers.get("ETag") and full.headers.get("Last-Modified")
            etag = full.headers["ETag"]
        with client.get("/images/thumb/red_circle.png") as thumb:
            assert thumb.mimetype == "image/jpeg" and thumb.headers["X-Content-Type-Options"] == "nosniff"
            assert max(Image.open(io.BytesIO(thumb.data)).size) <= 200
        with client.get("/images/red_circle.png", headers={"If-None-Match": etag}) as cached:
            assert cached.status_code == 304

    @pytest.mark.parametrize("path", ["/images/../app.py", "/images/..%2Fapp.py", "/images/thumb/..%2F..%2Fapp.py",
                                      "/images/%2Fetc%2Fpasswd", "/images/thumb/../original_filenames.txt",
                                      "/images/.hidden.png"])
    def test_nothing_outside_the_library(self, client, path):
        response = client.get(path)
        assert response.status_code == 404

    def test_status(self, client):
        status = client.get("/api/status").get_json()
        assert status["model"] == "efficientnet-lite0" and status["dimension"] == 1280
        assert status["metric"] == "cosine" and status["weights"]
        assert status["originals"] == 6 and status["user_images"] == 0 and status["indexed"] == 6
        assert status["job"] == {"running": False, "current": 0, "total": 0}
        assert status["startup"]["state"] == "ready" and status["fallback"] is False
        assert status["index"]["consistent"] is True


class TestGuards:
    def test_cross_site_posts_are_refused(self, client):
        response = client.post("/api/delete-images", json={"filenames": ["x"]},
                               headers={"Origin": "https://evil.example"})
        assert response.status_code == 403
        assert client.post("/api/generate-features", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403

    def test_token_protects_state_changes(self, settings):
        import dataclasses

        client = build_app(dataclasses.replace(settings, token="s3cret")).test_client()
        assert upload(client, make_image(), "a.png").status_code == 401
        assert client.delete("/api/delete-image/red_circle.png").status_code == 401
        ok = client.post("/api/upload-image", data={"file": (io.BytesIO(make_image()), "a.png")},
                         headers={"Authorization": "Bearer s3cret"}, content_type="multipart/form-data")
        assert ok.status_code == 200
        assert client.post("/api/search", json={"filename": "red_circle.png"}).status_code == 200
        assert client.get("/api/status").get_json()["auth_required"] is True


class TestDuplicates:
    def test_groups_near_copies_and_pages(self, client):
        photo = (PROJECT_DIR / "images" / "cat_chelsea.jpg").read_bytes()
        upload(client, photo, "trip.jpg")
        buffer = io.BytesIO()
        Image.open(io.BytesIO(photo)).save(buffer, "JPEG", quality=40)
        upload(client, buffer.getvalue(), "trip_copy.jpg")
        body = client.get("/api/duplicates?threshold=0.95").get_json()
        groups = [[m["filename"] for m in g["members"]] for g in body["groups"]]
        assert groups == [["trip.jpg", "trip_copy.jpg"]]
        group = body["groups"][0]
        assert group["pairs"][0]["similarity"] >= 0.95 and group["best_similarity"] >= 0.95
        assert group["group"] == 1 and group["pair_count"] == 1
        pairs = client.get("/api/duplicates/1/pairs?threshold=0.95").get_json()
        assert [(p["a"], p["b"]) for p in pairs["pairs"]] == [("trip.jpg", "trip_copy.jpg")]
        assert client.get("/api/duplicates/2/pairs?threshold=0.95").status_code == 404
        assert client.get("/api/duplicates?page=2&per_page=1&threshold=0.95").get_json()["groups"] == []
        for threshold in ("2", "0", "0.49"):
            response = client.get(f"/api/duplicates?threshold={threshold}")
            assert response.status_code == 400 and "between 0.5 and 1" in response.get_json()["error"]
