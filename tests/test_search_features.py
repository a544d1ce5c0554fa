"""Search beyond one whole image, through the HTTP API and the command line: words and tags, a region of the
query, more like these / less like those, filters, and paging.

The library is a copy of the shipped photographs (real photos, so the ImageNet tagger has something to say)
plus a few user uploads; tags come from the real offline classifier.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import PROJECT_DIR, build_app, make_image
from imgsearch import cli
from imgsearch.config import Settings

PHOTOS = PROJECT_DIR / "images"


@pytest.fixture(scope="module")
def library(tmp_path_factory, cache_dir) -> Path:
    data_dir = tmp_path_factory.mktemp("photos") / "data"
    shutil.copytree(PHOTOS, data_dir / "images", ignore=shutil.ignore_patterns("*.md"))
    shutil.copy(PROJECT_DIR / "original_filenames.txt", data_dir / "original_filenames.txt")
    return data_dir


@pytest.fixture(scope="module")
def client(library, cache_dir):
    settings = Settings(data_dir=library, cache_dir=cache_dir, model="efficientnet-lite0", watch_folder=False,
                        rescan_seconds=0)
    app = build_app(settings, close_after_test=False)
    client = app.test_client()
    for name, colour, seed in (("mine_red.png", "red", 1), ("mine_blue.png", "blue", 2), ("mine_green.jpg", "green", 3),
                               ("mine_gray.png", "gray", 4)):
        fmt = "JPEG" if name.endswith(".jpg") else "PNG"
        upload(client, make_image(colour, size=(120, 90), fmt=fmt, seed=seed), name)
    yield client
    app.extensions["image_search"].close()


def upload(client, data: bytes, name: str) -> dict:
    body = client.post("/api/upload-image", data={"file": (io.BytesIO(data), name)},
                       content_type="multipart/form-data").get_json()
    assert body["success"], body
    return body


def search(client, **fields):
    return client.post("/api/search", json=fields)


def names(response) -> list[str]:
    assert response.status_code == 200, response.get_json()
    return [hit["filename"] for hit in response.get_json()["results"]]


def photo(name: str) -> Image.Image:
    return Image.open(PHOTOS / name).convert("RGB")


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


# ----- words and tags --------------------------------------------------------------------------


def test_words_find_images_through_their_hypernyms(client):
    assert names(search(client, text="dog"))[0] == "dogs_at_a_window.jpg"  # tagged only with spaniel breeds
    assert names(search(client, text="cats"))[0] == "cat_chelsea.jpg"
    assert "boats_at_sunset.jpg" in names(search(client, text="vehicle", k=10))  # a canoe is a vehicle
    assert "bird_nuthatch.jpg" in names(search(client, text="bird", k=3))

    body = search(client, text="espresso or tripod please").get_json()
    assert {hit["filename"] for hit in body["results"][:2]} == {"coffee_cup.jpg",
                                                              "portrait_photographer_with_camera.jpg"}
    assert body["model"] == "imagenet-tags" and body["query"]["type"] == "text"
    terms = body["query"]["text"]["terms"]
    assert len(terms) == 1 and {c["name"] for c in terms[0]["concepts"]} >= {"espresso", "tripod"}
    assert body["query"]["text"]["unmatched"] == ["please"]
    scores = [hit["similarity"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)


def test_unknown_words_get_a_422_with_the_closest_words(client):
    response = search(client, text="elefant")
    assert response.status_code == 422
    body = response.get_json()
    assert "elephant" in body["suggestions"] and "1000 ImageNet concepts" in body["error"]
    assert search(client, text="x" * 201).status_code == 400


def test_tags_are_listed_counted_and_filter_the_gallery(client):
    info = client.get("/api/image/coffee_cup.jpg").get_json()
    assert info["tags"][0]["name"] == "espresso" and info["tags"][0]["probability"] > 0.5
    assert info["is_original"] is True and info["type"] == "jpg" and info["taken_at"]
    counts = {tag["name"]: tag["count"] for tag in client.get("/api/tags").get_json()["tags"]}
    assert counts["daisy"] >= 4 and counts["alp"] == 2
    gallery = client.get("/api/images?tag=alp").get_json()
    assert gallery["images"] == ["mountains_aitzgorri.jpg", "mountains_picos_de_europa.jpg"]
    assert client.get("/api/images?tag=dog").get_json()["images"] == ["dogs_at_a_window.jpg"]
    assert client.get("/api/image/nope.jpg").status_code == 404


def test_words_with_an_image_keep_only_the_results_that_carry_them(client):
    daisies = set(client.get("/api/images?tag=daisy").get_json()["images"])
    everything = names(search(client, filename="flower_yellow.jpg", k=100))
    with_words = names(search(client, filename="flower_yellow.jpg", text="daisy", k=3))
    assert with_words == [name for name in everything if name in daisies][:3]


# ----- a region of the query -------------------------------------------------------------------


def test_a_box_searches_by_that_region_of_the_query(client):
    """Two library photos side by side: a box on each half finds that half's photo."""
    left, right = photo("paintbrushes.jpg").resize((320, 240)), photo("ladybird_on_a_stem.jpg").resize((320, 240))
    composite = Image.new("RGB", (640, 240))
    composite.paste(left, (0, 0))
    composite.paste(right, (320, 0))
    data = jpeg(composite)

    def top(box):
        response = client.post("/api/search", data={"file": (io.BytesIO(data), "pair.jpg"), "box": box, "k": "1"},
                               content_type="multipart/form-data")
        return names(response)[0]

    assert top("0,0,0.5,1") == "paintbrushes.jpg"
    assert top("0.5,0,0.5,1") == "ladybird_on_a_stem.jpg"
    body = search(client, filename="paintbrushes.jpg", box=[0.5, 0.0, 0.5, 1.0]).get_json()
    assert body["query"]["box"] == [0.5, 0.0, 0.5, 1.0]
    for bad in ([0.5, 0, 0.6, 1], [0, 0, 0, 1], "a,b,c,d", [0, 0, 1], [0, 0, 0.01, 0.01]):
        assert search(client, filename="paintbrushes.jpg", box=bad).status_code == 400
    assert search(client, box=[0, 0, 1, 1]).status_code == 400  # a box needs a query image


# ----- more like these, less like those --------------------------------------------------------


def test_feedback_moves_the_results(client):
    def rank(results, name):
        return results.index(name) if name in results else len(results)

    plain = names(search(client, filename="lake_at_dusk.jpg", k=20))
    towards = names(search(client, filename="lake_at_dusk.jpg", k=20, positive=["mountains_aitzgorri.jpg"]))
    assert rank(towards, "mountains_picos_de_europa.jpg") < rank(plain, "mountains_picos_de_europa.jpg")
    assert "mountains_aitzgorri.jpg" not in towards  # marked images are not shown again

    away = names(search(client, filename="lake_at_dusk.jpg", k=20, negative=[plain[0]]))
    assert plain[0] not in away
    body = search(client, positive=["mountains_aitzgorri.jpg"], k=1).get_json()
    assert body["query"]["type"] == "feedback" and body["results"][0]["filename"] == "mountains_picos_de_europa.jpg"

    assert search(client, negative=["mountains_aitzgorri.jpg"]).status_code == 400
    assert search(client, filename="lake_at_dusk.jpg", positive=["nope.jpg"]).status_code == 404


# ----- filters and paging ----------------------------------------------------------------------


def test_filters_apply_before_the_top_k_cut(client):
    uploads = names(search(client, filename="flower_yellow.jpg", source="uploads", k=3))
    assert len(uploads) == 3 and all(name.startswith("mine_") for name in uploads)
    assert len(names(search(client, filename="flower_yellow.jpg", source="uploads", k=10))) == 4
    originals = names(search(client, filename="mine_red.png", source="originals", k=6))
    assert len(originals) == 6 and not any(name.startswith("mine_") for name in originals)
    assert names(search(client, filename="flower_yellow.jpg", type="png", k=10)) == \
        [n for n in names(search(client, filename="flower_yellow.jpg", k=100)) if n.endswith(".png")][:10]
    daisies = set(client.get("/api/images?tag=daisy").get_json()["images"])
    tagged = names(search(client, filename="mine_red.png", tag="daisy", k=4))
    assert tagged == [n for n in names(search(client, filename="mine_red.png", k=100)) if n in daisies][:4]
    for bad in ({"source": "mine"}, {"type": "tiff"}, {"taken_from": "yesterday"},
                {"taken_from": "2020-02-02", "taken_to": "2020-01-01"}, {"page": 0}, {"k": 20, "page": 100}):
        assert search(client, filename="flower_yellow.jpg", **bad).status_code == 400, bad


def test_the_date_taken_comes_from_exif_and_filters(client):
    exif = Image.Exif()
    exif[0x8769] = {36867: "2019:07:14 10:30:00"}  # DateTimeOriginal
    buffer = io.BytesIO()
    Image.open(io.BytesIO(make_image("yellow", size=(120, 90), seed=9))).convert("RGB").save(buffer, "JPEG", exif=exif)
    name = upload(client, buffer.getvalue(), "summer_2019.jpg")["filename"]
    assert client.get(f"/api/image/{name}").get_json()["taken_at"] == "2019-07-14T10:30:00"
    assert names(search(client, filename="mine_red.png", taken_from="2019-07-01", taken_to="2019-07-31")) == [name]
    assert client.get("/api/images?taken_to=2019-12-31").get_json()["images"] == [name]
    assert name not in names(search(client, filename="mine_red.png", taken_from="2020-01-01", k=100))


def test_an_upload_without_exif_was_taken_when_it_arrived(client):
    name = upload(client, make_image("gray", size=(120, 90), seed=31), "no_exif.png")["filename"]
    taken = client.get(f"/api/image/{name}").get_json()["taken_at"]
    assert taken and name in names(search(client, filename="mine_red.png", taken_from=taken[:10], k=100))


def test_feedback_lists_in_a_form_take_one_field_per_name(client, library):
    with_comma = "lake, at dusk.jpg"
    shutil.copy(library / "images" / "lake_at_dusk.jpg", library / "images" / with_comma)
    client.post("/api/generate-features").get_data()
    query = jpeg(photo("mountains_aitzgorri.jpg").resize((200, 150)))
    response = client.post("/api/search", data={"file": (io.BytesIO(query), "q.jpg"), "negative": [with_comma],
                                                "positive": ["mountains_aitzgorri.jpg", "lake_at_dusk.jpg"], "k": "20"},
                           content_type="multipart/form-data")
    body = response.get_json()
    assert body["query"]["negative"] == [with_comma] and len(body["query"]["positive"]) == 2
    assert with_comma not in names(response)


def test_pages_follow_each_other(client):
    everything = names(search(client, filename="flower_yellow.jpg", k=30))
    first = search(client, filename="flower_yellow.jpg", k=10, page=1).get_json()
    second = search(client, filename="flower_yellow.jpg", k=10, page=2).get_json()
    assert [h["filename"] for h in first["results"] + second["results"]] == everything[:20]
    assert first["has_more"] is True and first["page"] == 1
    uploads = len(client.get("/api/images?source=uploads").get_json()["images"])
    last = search(client, filename="flower_yellow.jpg", source="uploads", k=uploads - 1, page=2).get_json()
    assert len(last["results"]) == 1 and last["has_more"] is False


def test_the_gallery_lists_the_users_images_first_in_natural_order(client):
    for number in (10, 9, 100):
        upload(client, make_image("purple", size=(60, 40), seed=200 + number), f"img{number}.png")
    images = client.get("/api/images").get_json()["images"]
    mine = [name for name in images if name.startswith("img")]
    assert mine == ["img9.png", "img10.png", "img100.png"]
    assert images.index("img9.png") < images.index("architecture_wavy_facade.jpg")
    uploads_only = client.get("/api/images?source=uploads").get_json()
    assert not uploads_only["original_images"] and "img10.png" in uploads_only["images"]


# ----- the command line ------------------------------------------------------------------------


def test_the_command_line_searches_by_words_region_and_feedback(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("dogs_at_a_window.jpg", "cat_chelsea.jpg", "paintbrushes.jpg", "ladybird_on_a_stem.jpg",
                 "mountains_aitzgorri.jpg", "mountains_picos_de_europa.jpg", "lake_at_dusk.jpg"):
        shutil.copy(PHOTOS / name, folder / name)

    def imgsearch(*argv):
        code = cli.main([str(arg) for arg in argv])
        out, err = capsys.readouterr()
        return code, out, err

    assert imgsearch("index", folder, "--engine", "efficientnet-lite0")[0] == 0
    code, out, _ = imgsearch("search", "--folder", folder, "--engine", "efficientnet-lite0", "--text", "puppy dog",
                             "--json", "-k", "1")
    answer = json.loads(out)
    assert code == 0 and answer["results"][0]["name"] == "dogs_at_a_window.jpg"
    assert answer["matched"][0]["text"] == "dog"

    pair = Image.new("RGB", (640, 240))
    pair.paste(photo("paintbrushes.jpg").resize((320, 240)), (0, 0))
    pair.paste(photo("ladybird_on_a_stem.jpg").resize((320, 240)), (320, 0))
    (tmp_path / "pair.jpg").write_bytes(jpeg(pair))
    code, out, _ = imgsearch("search", tmp_path / "pair.jpg", "--folder", folder, "--engine", "efficientnet-lite0",
                             "--box", "0.5,0,0.5,1", "-k", "1")
    assert code == 0 and out.splitlines()[-1].endswith("ladybird_on_a_stem.jpg")

    code, out, _ = imgsearch("search", "--folder", folder, "--engine", "efficientnet-lite0",
                             "--like", "mountains_aitzgorri.jpg", "-k", "1")
    assert code == 0 and out.splitlines()[-1].endswith("mountains_picos_de_europa.jpg")

    code, _, err = imgsearch("search", "--folder", folder, "--engine", "efficientnet-lite0", "--text", "elefant")
    assert code == 2 and "elephant" in err
    code, _, err = imgsearch("search", "--folder", folder, "--engine", "efficientnet-lite0")
    assert code == 2 and "give a QUERY_IMAGE" in err
    with pytest.raises(SystemExit):  # argparse refuses a malformed box with its usage line
        imgsearch("search", tmp_path / "pair.jpg", "--folder", folder, "--box", "0.5,0,0.9,1")
