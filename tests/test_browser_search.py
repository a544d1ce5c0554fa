"""Searching beyond one whole image, in the browser: words, a region, more/less like this, filters, paging, tags.

One server holds the 50 shipped photographs (images/ and original_filenames.txt) with the real offline
network and tagger, plus three of the user's own copies of them. What the page shows is checked against
what the API answers for the same request. The README's screenshots come from this library too: they are
written to tests/artifacts/, and over docs/screenshot-*.png when IMAGE_SEARCH_UPDATE_SCREENSHOTS=1.
"""
from __future__ import annotations

import io
import json
import os
import shutil

import pytest
import requests
from PIL import Image

from conftest import PROJECT_DIR, LiveServer, make_library
from test_browser import (ARTIFACTS, _new_page, api_images, assert_fits_the_screen, assert_whole_image_fits, card,
                          file_payload, open_app, result_names, screenshot, sync_api, toast, viewer_geometry)

expect = sync_api.expect

DOCS = PROJECT_DIR / "docs"
SHIPPED = (PROJECT_DIR / "original_filenames.txt").read_text().split()


def resaved(name: str, fmt: str = "JPEG", scale: float = 1.0, crop: float = 1.0, taken: str | None = None,
            **options) -> bytes:
    """A user's copy of a shipped photograph: cropped to its centre, scaled, saved again, maybe with a date taken."""
    image = Image.open(PROJECT_DIR / "images" / name).convert("RGB")
    if crop < 1:
        width, height = round(image.width * crop), round(image.height * crop)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    if scale != 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    if taken:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[36867] = taken  # DateTimeOriginal
        options["exif"] = exif
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def square(name: str, size: int = 300) -> Image.Image:
    image = Image.open(PROJECT_DIR / "images" / name).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size))


def composite(left: str, right: str) -> bytes:
    """Two photographs side by side in one JPEG."""
    image = Image.new("RGB", (600, 300))
    image.paste(square(left), (0, 0))
    image.paste(square(right), (300, 0))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# The user's own photos: copies of three shipped ones, so that Duplicates has something to show.
USER_PHOTOS = {
    "my_cat.jpg": resaved("cat_chelsea.jpg", scale=0.8, quality=60, taken="2019:07:14 12:30:00"),
    "my_pagoda.png": resaved("pagoda_china.jpg", "PNG", crop=0.9),
    "my_rocket.jpg": resaved("rocket_launch.jpg", crop=0.85, quality=85),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache_dir):
    originals = {name: (PROJECT_DIR / "images" / name).read_bytes() for name in SHIPPED}
    data_dir = make_library(tmp_path_factory.mktemp("photo-library"), originals)
    live = LiveServer(data_dir, cache_dir=cache_dir, env={"IMAGE_SEARCH_MODEL": "efficientnet-lite0"}).start()
    for name, data in USER_PHOTOS.items():
        response = requests.post(f"{live.url}/api/upload-image", files={"file": (name, data)}, timeout=60)
        assert response.json()["filename"] == name, response.text
    yield live
    live.stop()


@pytest.fixture
def page(browser, server, request):
    return _new_page(browser, request, [server])


def api_search(live, **fields) -> dict:
    return requests.post(f"{live.url}/api/search", json={"k": 6, **fields}, timeout=60).json()


def names_of(answer: dict) -> list[str]:
    return [result["filename"] for result in answer["results"]]


def search_library_image(page, name):
    page.get_by_role("tab", name="Choose from Library", exact=True).click()
    page.locator("#picker-grid").get_by_role("button", name=f"Search with {name}").click()
    expect(page.locator("#query-caption")).to_have_text(name)


def search_words(page, words):
    page.get_by_label("Search by words").fill(words)
    page.locator("#words-form").get_by_role("button", name="Search").click()


def shown_results(page, expected: list[str]) -> list[str]:
    """Waits until the results are `expected`, then returns them (a clearer failure than a timeout alone)."""
    grid = page.locator("#results-grid > li")
    try:
        expect(grid).to_have_count(len(expected))
        page.wait_for_function("names => [...document.querySelectorAll('#results-grid > li')]"
                               ".map((li) => li.dataset.filename).join('\\n') === names.join('\\n')", arg=expected)
    except AssertionError:
        pass
    return result_names(page)


# ---------------------------------------------------------------- words


def test_words_find_what_they_name_and_say_which_concepts_matched(page, server):
    expected = api_search(server, text="animal")
    open_app(page, server, tab="search")
    expect(page.locator("#words-help")).to_contain_text("ImageNet's 1000 concepts")
    expect(page.locator("#words-help")).to_contain_text("and no more")
    search_words(page, "animal")
    # "animal" is a WordNet concept above the classes: it finds the cat, the dogs and the bird by their kind.
    assert shown_results(page, names_of(expected)) == names_of(expected)
    assert {"cat_chelsea.jpg", "dogs_at_a_window.jpg", "bird_nuthatch.jpg"} & set(names_of(expected))
    info = page.locator("#words-info")
    expect(info.locator(".term-text")).to_have_text(["“animal”"])
    expect(info.get_by_role("list", name="Concepts for animal").locator("li")).to_have_text(["animal"])
    expect(page.locator("#query-words-shown")).to_have_text("“animal”")
    expect(page.locator("#search-status")).to_contain_text("for “animal” (imagenet-tags, tags)")

    # A word outside the vocabulary is named and left out; the rest still searches.
    expected = api_search(server, text="seashore beach")
    search_words(page, "seashore beach")
    assert shown_results(page, names_of(expected)) == names_of(expected)
    expect(info.locator(".unmatched")).to_have_text("Not among the 1000 concepts, so left out: “beach”.")

    # Words with an image keep the similar images that carry them.
    daisies = set(requests.get(f"{server.url}/api/images", params={"tag": "daisy"}, timeout=10).json()["images"])
    expected = api_search(server, filename="flower_yellow.jpg", text="daisy")
    search_words(page, "daisy")
    search_library_image(page, "flower_yellow.jpg")
    assert shown_results(page, names_of(expected)) == names_of(expected)
    assert set(names_of(expected)) <= daisies
    expect(page.locator("#search-status")).to_contain_text("for flower_yellow.jpg, “daisy”")
    # Without the image, the words alone.
    page.get_by_role("button", name="Remove image").click()
    expected = api_search(server, text="daisy")
    assert shown_results(page, names_of(expected)) == names_of(expected)
    expect(page.locator("#query-stage")).to_be_hidden()


def test_unknown_words_offer_the_closest_ones_as_buttons(page, server):
    refusal = requests.post(f"{server.url}/api/search", json={"text": "dgo"}, timeout=30)
    assert refusal.status_code == 422
    suggestions = refusal.json()["suggestions"]
    assert "dog" in suggestions
    open_app(page, server, tab="search")
    search_words(page, "dgo")
    info = page.locator("#words-info")
    expect(info.locator(".error-text")).to_have_text(refusal.json()["error"])
    expect(info.get_by_role("list", name="Suggested words").get_by_role("button")).to_have_text(suggestions)
    expect(toast(page, "error")).to_have_count(0)

    with page.expect_request("**/api/search") as sent:
        info.get_by_role("button", name="dog", exact=True).click()
    assert json.loads(sent.value.post_data)["text"] == "dog"
    expect(page.get_by_label("Search by words")).to_have_value("dog")
    expected = api_search(server, text="dog")
    assert shown_results(page, names_of(expected)) == names_of(expected)
    assert names_of(expected)[0] == "dogs_at_a_window.jpg"


# ---------------------------------------------------------------- a region of the query


def drag(page, selector, start, end):
    """Drags the mouse across `selector` between two points given as fractions of its box."""
    box = page.locator(selector).bounding_box()
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=5)
    page.mouse.up()


def test_a_box_dragged_on_the_query_searches_that_region(page, server):
    query = composite("cat_chelsea.jpg", "rocket_launch.jpg")
    open_app(page, server, tab="search")
    page.locator("#query-input").set_input_files(file_payload("cat and rocket.jpg", query, "image/jpeg"))
    expect(page.locator("#results-grid > li")).to_have_count(6)
    expect(page.locator("#query-box")).to_be_hidden()
    page.locator("#query-image").evaluate("img => img.decode()")

    # A file query's body is not visible to the test; the answer says which region the server searched.
    with page.expect_response("**/api/search") as answered:
        drag(page, "#query-stage", (0.55, 0.1), (0.95, 0.9))
    assert answered.value.json()["query"]["box"] == pytest.approx([0.55, 0.1, 0.4, 0.8], abs=0.01)
    expect(page.locator("#query-kind")).to_have_text("Query region")
    expect(page.locator("#query-box")).to_be_visible()
    # The rocket and the user's copy of it lead; the cat, left of the box, is gone.
    rockets = {"rocket_launch.jpg", "my_rocket.jpg"}
    page.wait_for_function("() => !document.getElementById('search-results').hasAttribute('aria-busy')")
    assert set(result_names(page)[:2]) == rockets
    assert not {"cat_chelsea.jpg", "my_cat.jpg"} & set(result_names(page))
    shown = page.locator("#query-box").bounding_box()
    stage = page.locator("#query-stage").bounding_box()
    assert shown["x"] - stage["x"] == pytest.approx(0.55 * stage["width"], abs=3)
    assert shown["width"] == pytest.approx(0.4 * stage["width"], abs=3)

    with page.expect_response("**/api/search"):
        drag(page, "#query-stage", (0.05, 0.05), (0.45, 0.95))
    page.wait_for_function("() => !document.getElementById('search-results').hasAttribute('aria-busy')")
    assert set(result_names(page)[:2]) == {"cat_chelsea.jpg", "my_cat.jpg"}
    assert not rockets & set(result_names(page))

    with page.expect_response("**/api/search") as answered:
        page.get_by_role("button", name="Whole image").click()
    assert "box" not in answered.value.json()["query"]
    expect(page.locator("#query-box")).to_be_hidden()
    expect(page.locator("#query-kind")).to_have_text("Query")


# ---------------------------------------------------------------- more like this, less like this


def test_more_and_less_like_this_refine_the_results_at_once(page, server):
    baseline = api_search(server, filename="flower_yellow.jpg")
    assert {"leaf_veins.jpg", "grass_blades.jpg"} <= set(names_of(baseline))
    open_app(page, server, tab="search")
    search_library_image(page, "flower_yellow.jpg")
    assert shown_results(page, names_of(baseline)) == names_of(baseline)
    expect(page.locator("#refinement")).to_be_hidden()

    with page.expect_request("**/api/search") as sent:
        page.get_by_role("button", name="Less like leaf_veins.jpg", exact=True).click()
    assert json.loads(sent.value.post_data)["negative"] == ["leaf_veins.jpg"]
    less = api_search(server, filename="flower_yellow.jpg", negative=["leaf_veins.jpg"])
    assert shown_results(page, names_of(less)) == names_of(less)
    # Away from the leaf: it and the grass that looks like it leave the top six.
    assert not {"leaf_veins.jpg", "grass_blades.jpg"} & set(names_of(less))
    refinement = page.locator("#refinement")
    expect(refinement).to_be_visible()
    expect(refinement.get_by_role("list", name="Less like these").locator("li")).to_have_attribute(
        "data-filename", "leaf_veins.jpg")
    expect(page.locator("#refine-positive")).to_be_hidden()

    page.get_by_role("button", name="More like dandelion_seeds.jpg", exact=True).click()
    more = api_search(server, filename="flower_yellow.jpg", positive=["dandelion_seeds.jpg"],
                      negative=["leaf_veins.jpg"])
    assert shown_results(page, names_of(more)) == names_of(more)
    # Towards the seed head: the other dandelion photograph comes in.
    assert "dandelion_clocks.jpg" in names_of(more) and "dandelion_clocks.jpg" not in names_of(less)
    expect(refinement.get_by_role("list", name="More like these").locator("li")).to_have_attribute(
        "data-filename", "dandelion_seeds.jpg")
    screenshot(page, "search-refined")

    # One mark taken back, then all of them.
    page.get_by_role("button", name="Stop searching less like leaf_veins.jpg").click()
    only_more = api_search(server, filename="flower_yellow.jpg", positive=["dandelion_seeds.jpg"])
    assert shown_results(page, names_of(only_more)) == names_of(only_more)
    page.get_by_role("button", name="Clear refinement").click()
    assert shown_results(page, names_of(baseline)) == names_of(baseline)
    expect(refinement).to_be_hidden()


# ---------------------------------------------------------------- filters and paging


def test_filters_apply_before_the_cut_and_results_page(page, server):
    open_app(page, server, tab="search")
    search_library_image(page, "flower_yellow.jpg")
    expect(page.locator("#results-grid > li")).to_have_count(6)
    page.locator("#search-filters summary").click()

    page.locator("#filter-source").select_option("uploads")
    expected = api_search(server, filename="flower_yellow.jpg", source="uploads")
    assert set(names_of(expected)) == set(USER_PHOTOS)
    assert shown_results(page, names_of(expected)) == names_of(expected)
    expect(page.locator("#filters-active")).to_have_text("(1 on)")

    page.locator("#filter-type").select_option("png")
    assert shown_results(page, ["my_pagoda.png"]) == ["my_pagoda.png"]

    # The date taken: EXIF DateTimeOriginal (2019 for the cat), else the file's date (today for the others).
    page.locator("#filter-type").select_option("")
    page.locator("#filter-taken-to").fill("2019-12-31")
    assert shown_results(page, ["my_cat.jpg"]) == ["my_cat.jpg"]
    page.locator("#filter-source").select_option("")
    page.locator("#filter-taken-to").fill("")
    page.locator("#filter-taken-from").fill("2020-01-01")
    expect(page.locator("#filters-active")).to_have_text("(1 on)")
    expected = api_search(server, filename="flower_yellow.jpg", taken_from="2020-01-01")
    assert len(names_of(expected)) == 6 and "my_cat.jpg" not in names_of(expected)
    assert shown_results(page, names_of(expected)) == names_of(expected)

    # A tag filter still returns k results when k exist: the filter comes before the cut.
    page.get_by_role("button", name="Clear filters").click()
    expect(page.locator("#filters-active")).to_have_text("")
    page.locator("#filter-tag").fill("animal")
    page.locator("#filter-tag").press("Enter")
    expected = api_search(server, filename="flower_yellow.jpg", tag="animal")
    assert len(names_of(expected)) == 6
    assert shown_results(page, names_of(expected)) == names_of(expected)
    expect(page.locator("#search-status")).to_contain_text("1 filter on")

    # Paging, with has_more deciding the way on.
    page.get_by_role("button", name="Clear filters").click()
    pager = page.locator("#results-pager")
    expect(pager.get_by_role("button", name="Previous")).to_be_disabled()
    second = api_search(server, filename="flower_yellow.jpg", page=2)
    with page.expect_request("**/api/search") as sent:
        pager.get_by_role("button", name="Next").click()
    assert json.loads(sent.value.post_data)["page"] == 2
    assert shown_results(page, names_of(second)) == names_of(second)
    expect(pager.locator(".pager-label")).to_have_text("Page 2")
    pager.get_by_role("button", name="Previous").click()
    expect(pager.locator(".pager-label")).to_have_text("Page 1")
    # The last page: 53 images less the query, 48 a page.
    page.locator("#result-count").select_option("48")
    pager.get_by_role("button", name="Next").click()
    expect(page.locator("#results-grid > li")).to_have_count(4)
    expect(pager.get_by_role("button", name="Next")).to_be_disabled()
    assert_fits_the_screen(page)


# ---------------------------------------------------------------- tags in the viewer and the gallery


def test_the_viewer_shows_tags_and_the_gallery_filters_by_tag(page, server):
    info = requests.get(f"{server.url}/api/image/cat_chelsea.jpg", timeout=10).json()
    assert info["tags"]
    flowers = requests.get(f"{server.url}/api/images", params={"tag": "flower"}, timeout=10).json()["images"]
    open_app(page, server)
    card(page, "cat_chelsea.jpg").get_by_role("button", name="View cat_chelsea.jpg").click()
    tags = page.locator("#viewer-details").get_by_role("list", name="Tags").locator("li")
    expect(tags).to_have_text([f"{tag['name']}{round(tag['probability'] * 100)}%" for tag in info["tags"]])
    expect(page.locator("#viewer-details")).to_contain_text("JPG")
    page.keyboard.press("Escape")

    tag = page.get_by_label("Show only images with this tag")
    with page.expect_request(lambda req: "/api/images?" in req.url and "tag=flower" in req.url):
        tag.fill("flower")
        tag.press("Enter")
    grid = page.locator("#gallery-grid > li")
    expect(grid).to_have_count(len(flowers))
    assert grid.evaluate_all("items => items.map((li) => li.dataset.filename)") == flowers
    expect(page.locator("#gallery-count")).to_have_text(f"({len(flowers)} images tagged “flower”)")
    # The suggestions are the tags in use, with their counts.
    in_use = requests.get(f"{server.url}/api/tags", timeout=10).json()["tags"]
    assert page.locator("#tag-options option").count() == len(in_use)

    tag.fill("dgo")
    tag.press("Enter")
    status = page.locator("#gallery-tag-status")
    expect(status.get_by_role("button", name="dog", exact=True)).to_be_visible()
    status.get_by_role("button", name="dog", exact=True).click()
    expect(tag).to_have_value("dog")
    expect(grid).to_have_count(1)
    expect(grid.first).to_have_attribute("data-filename", "dogs_at_a_window.jpg")
    tag.fill("")
    tag.press("Enter")
    expect(grid).to_have_count(len(api_images(server)["images"]))


# ---------------------------------------------------------------- duplicates of the bundled examples


def test_groups_made_only_of_bundled_examples_are_hidden_until_asked_for(page, server):
    threshold = 0.6
    mine = requests.get(f"{server.url}/api/duplicates", params={"threshold": threshold}, timeout=60).json()
    every = requests.get(f"{server.url}/api/duplicates", params={"threshold": threshold, "original_groups": 1},
                         timeout=60).json()
    assert every["total_groups"] > mine["total_groups"] > 0
    open_app(page, server, tab="duplicates")
    slider = page.get_by_label("Similarity threshold")
    slider.fill(str(threshold))
    with page.expect_request("**/api/duplicates?*") as asked:
        page.get_by_role("button", name="Find duplicates").click()
    assert "original_groups" not in asked.value.url
    groups = page.locator("#duplicate-groups > li")
    expect(groups).to_have_count(mine["total_groups"])
    for index in range(mine["total_groups"]):
        expect(groups.nth(index).locator(".dup-member:not(:has(.badge-original))")).not_to_have_count(0)
    expect(page.locator("#duplicates-status")).to_contain_text("groups made only of bundled examples are not shown")

    with page.expect_request("**/api/duplicates?*") as asked:
        page.get_by_label("Also show groups made only of the bundled examples").check()
    assert "original_groups=1" in asked.value.url
    expect(groups).to_have_count(every["total_groups"])


# ---------------------------------------------------------------- the README's screenshots


def publish(page, name):
    """A viewport capture for the README: always to tests/artifacts/, over docs/ when asked to."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"screenshot-{name}.png"
    page.mouse.move(0, 0)  # no hover effect on whatever the last click left the pointer over
    page.wait_for_function("() => [...document.querySelectorAll('img')]"
                           ".every((img) => !img.checkVisibility() || !img.getAttribute('src') || img.complete)")
    page.screenshot(path=str(path))
    if os.environ.get("IMAGE_SEARCH_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS / path.name)


def test_screenshots_of_the_gallery_search_viewer_and_duplicates(new_page_factory, server):
    page = new_page_factory(viewport={"width": 1280, "height": 900})
    open_app(page, server)
    expect(page.locator("#gallery-grid > li").first).to_have_attribute("data-filename", "my_cat.jpg")
    publish(page, "gallery")

    card(page, "flower_yellow.jpg").get_by_role("button", name="Find similar to flower_yellow.jpg").click()
    expect(page.locator("#results-grid > li")).to_have_count(6)
    # The compact query source keeps the results on the first screen.
    page.get_by_role("tab", name="Upload Image", exact=True).click()
    page.evaluate("() => window.scrollTo(0, document.querySelector('.tabs').offsetTop)")
    publish(page, "search")

    page.locator("#results-grid > li").first.locator(".card-thumb").click()
    expect(page.locator("#viewer-details").get_by_role("list", name="Tags")).to_be_visible()
    assert_whole_image_fits(viewer_geometry(page))  # a real photograph, larger than the space it has
    publish(page, "viewer")
    page.keyboard.press("Escape")

    page.get_by_role("tab", name="Duplicates").click()
    expect(page.locator("#duplicate-groups > li")).to_have_count(len(USER_PHOTOS))
    publish(page, "duplicates")


@pytest.fixture
def new_page_factory(browser, server, request):
    return lambda **options: _new_page(browser, request, [server], **options)
