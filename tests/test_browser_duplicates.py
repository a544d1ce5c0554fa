"""The Duplicates tab and the search relevance options, driven through Chromium against a real server.

The library holds a real photograph as an original, a byte-for-byte user copy of it and a user copy
re-saved as JPEG quality 40, plus a few unrelated originals. Screenshots land in tests/artifacts/.
"""
from __future__ import annotations

import io
import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from conftest import PROJECT_DIR, LiveServer, make_library
from imgsearch.config import Settings
from test_browser import XSS_NAME, _new_page, api_images, card, open_app, screenshot, sync_api, toast

# Slow: real server processes (or the browser, or the benchmark run); `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

expect = sync_api.expect

PHOTO = "cat_chelsea.jpg"
EXACT_COPY = "cat_user_copy.jpg"
LOW_QUALITY_COPY = "cat_q40.jpg"
OTHER_ORIGINALS = ("coffee_cup.jpg", "flower_dahlia.jpg", "pagoda_china.jpg", "rocket_launch.jpg",
                   "coins_pompeii.jpg")


def photo_bytes(name: str) -> bytes:
    return (PROJECT_DIR / "images" / name).read_bytes()


def jpeg_quality_40(data: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, "JPEG", quality=40)
    return buffer.getvalue()


USER_COPIES = {EXACT_COPY: photo_bytes(PHOTO), LOW_QUALITY_COPY: jpeg_quality_40(photo_bytes(PHOTO))}


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache_dir):
    originals = {name: photo_bytes(name) for name in (PHOTO, *OTHER_ORIGINALS)}
    data_dir = make_library(tmp_path_factory.mktemp("duplicates-library"), originals, USER_COPIES)
    live = LiveServer(data_dir, cache_dir=cache_dir, env={"IMAGE_SEARCH_MODEL": "efficientnet-lite0"}).start()
    live.data_dir = data_dir
    yield live
    live.stop()


@pytest.fixture
def library(server):
    """Puts back any user copy an earlier test deleted, so each test starts from the same library.

    They are copied in by hand (an upload of the exact copy would be recognised as the original's bytes
    and not stored again), and the app's folder watcher indexes them.
    """
    missing = set(USER_COPIES) - set(api_images(server)["images"])
    for name in missing:
        (server.data_dir / "images" / name).write_bytes(USER_COPIES[name])
    deadline = time.monotonic() + 60
    while missing:
        listing = api_images(server)
        if missing <= set(listing["images"]) and not missing & set(listing["pending"]):
            break
        assert time.monotonic() < deadline, f"the watcher did not index {sorted(missing)}"
        time.sleep(0.2)
    return server


@pytest.fixture
def page(browser, server, request):
    return _new_page(browser, request, [server])


def group_with(page, name):
    return page.locator("#duplicate-groups > li").filter(has=page.locator(f'[data-filename="{name}"]'))


def result_names(page) -> list[str]:
    return page.locator("#results-grid > li").evaluate_all("items => items.map((li) => li.dataset.filename)")


# ---------------------------------------------------------------- duplicates


def test_keep_one_delete_the_others_never_touches_originals(page, library):
    open_app(page, library, tab="duplicates")
    expect(page.get_by_role("tab", name="Duplicates")).to_have_attribute("aria-selected", "true")
    # The control starts at the server's default threshold.
    default = Settings().duplicate_threshold
    expect(page.locator("#duplicate-threshold")).to_have_value(str(default))
    expect(page.locator("#duplicate-threshold-value")).to_have_text(f"{round(default * 100)}%")

    group = group_with(page, PHOTO)
    members = group.locator(".dup-member")
    expect(members).to_have_count(3)
    expect(members.first).to_have_attribute("data-filename", PHOTO)
    expect(members.first.locator(".badge-original")).to_have_text("Original")
    expect(group.locator(".badge-original")).to_have_count(1)
    expect(group.locator(".card-name")).to_have_text([PHOTO, LOW_QUALITY_COPY, EXACT_COPY])
    expect(group.locator(".badge-score")).to_have_text("100.0% best match")
    expect(group.get_by_label(f"Keep this one: {PHOTO}")).to_be_checked()
    expect(group.locator(".dup-note")).to_have_text(f"Deletes 2 images and keeps {PHOTO}.")
    screenshot(page, "duplicates")

    group.get_by_label(f"Keep this one: {LOW_QUALITY_COPY}").check()
    expect(group.locator(".dup-note")).to_have_text(
        f"Deletes 1 image and keeps {LOW_QUALITY_COPY}. 1 original also stays: originals are never deleted.")
    expect(group.locator(".will-delete")).to_have_attribute("data-filename", EXACT_COPY)

    with page.expect_request("**/api/delete-images") as sent:
        group.get_by_role("button", name="Delete the others").click()
        dialog = page.locator("#confirm-dialog")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text(EXACT_COPY)
        dialog.get_by_role("button", name="Delete 1 image").click()
    assert json.loads(sent.value.post_data) == {"filenames": [EXACT_COPY]}
    assert sent.value.headers["x-requested-with"] == "fetch"
    expect(toast(page, "success").filter(has_text=f"Deleted 1 image; kept {LOW_QUALITY_COPY}.")).to_be_visible()

    listing = api_images(library)
    assert EXACT_COPY not in listing["images"]
    assert {PHOTO, LOW_QUALITY_COPY} <= set(listing["images"])
    assert PHOTO in listing["original_images"]
    # Both the groups and the gallery were refreshed.
    expect(group.locator(".dup-member")).to_have_count(2)
    expect(card(page, EXACT_COPY)).to_have_count(0)
    expect(card(page, LOW_QUALITY_COPY)).to_have_count(1)

    # Keeping the copy leaves only the original to delete, which is never allowed.
    group.get_by_label(f"Keep this one: {LOW_QUALITY_COPY}").check()
    expect(group.get_by_role("button", name="Delete the others")).to_be_disabled()
    expect(group.locator(".dup-note")).to_have_text(
        "Nothing to delete: the other image is an original, and originals are never deleted.")

    # The quality-40 copy is about 96% similar: a stricter threshold leaves no group at all.
    slider = page.get_by_label("Similarity threshold")
    slider.focus()
    for _ in range(round((0.97 - Settings().duplicate_threshold) * 100)):
        page.keyboard.press("ArrowRight")
    expect(page.locator("#duplicate-threshold-value")).to_have_text("97%")
    with page.expect_request("**/api/duplicates?*") as asked:
        page.get_by_role("button", name="Find duplicates").click()
    assert parse_qs(urlsplit(asked.value.url).query)["threshold"] == ["0.97"]
    expect(page.locator("#duplicates-empty")).to_be_visible()
    expect(page.locator("#duplicates-empty")).to_contain_text("No near-duplicates at this threshold.")
    expect(page.locator("#duplicate-groups > li")).to_have_count(0)


def test_duplicates_fit_a_phone_and_the_tab_is_keyboard_reachable(browser, library, request):
    phone = _new_page(browser, request, [library], viewport={"width": 360, "height": 740})
    open_app(phone, library, tab="search")
    phone.get_by_role("tab", name="Search").focus()
    phone.keyboard.press("ArrowRight")
    expect(phone.get_by_role("tab", name="Duplicates")).to_be_focused()
    expect(phone.get_by_role("tabpanel", name="Duplicates")).to_be_visible()
    expect(group_with(phone, PHOTO).locator(".dup-member")).to_have_count(3)
    assert phone.evaluate("() => document.documentElement.scrollWidth") <= 360
    screenshot(phone, "duplicates-phone")

    phone.keyboard.press("Tab")
    outline = phone.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, "PNG")
    return buffer.getvalue()


def test_paging_hostile_names_and_server_errors(page, server):
    """A made-up answer of 45 groups: paging, names that look like HTML, an all-originals group, errors."""
    groups = []
    for i in range(45):
        names = [f"dup-{i:02d}-a.jpg", f"dup-{i:02d}-b.jpg"]
        if i == 0:
            names[1] = XSS_NAME
        groups.append({
            "members": [{"filename": n, "is_original": i == 1 or j == 0, "image_url": f"/images/{n}",
                         "thumb_url": f"/images/thumb/{n}"} for j, n in enumerate(names)],
            "pairs": [{"a": names[0], "b": names[1], "similarity": 0.95}],
            "best_similarity": 0.95,
        })

    def answer(route):
        query = parse_qs(urlsplit(route.request.url).query)
        number, size = int(query["page"][0]), int(query["per_page"][0])
        body = {"threshold": 0.9, "total_groups": len(groups), "page": number, "per_page": size,
                "groups": groups[(number - 1) * size: number * size]}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    thumb = _png((200, 120, 90))
    page.route("**/api/duplicates?*", answer)
    page.route("**/images/thumb/**", lambda route: route.fulfill(status=200, content_type="image/png", body=thumb))
    open_app(page, server, tab="duplicates")
    items = page.locator("#duplicate-groups > li")
    expect(items).to_have_count(20)
    expect(page.locator("#duplicate-threshold-value")).to_have_text("90%")
    pager = page.locator("#duplicates-pager")
    expect(pager.locator(".pager-label")).to_have_text("Page 1 of 3")
    expect(pager.get_by_role("button", name="Previous")).to_be_disabled()

    hostile = group_with(page, XSS_NAME)
    expect(hostile.locator(".card-name").nth(1)).to_have_text(XSS_NAME)
    assert page.locator("img[src='x']").count() == 0
    assert page.probe.dialogs == []
    both_originals = group_with(page, "dup-01-a.jpg")
    expect(both_originals.get_by_role("button", name="Delete the others")).to_be_disabled()
    expect(both_originals.locator(".dup-note")).to_contain_text("originals are never deleted")

    pager.get_by_role("button", name="Next").click()
    expect(pager.locator(".pager-label")).to_have_text("Page 2 of 3")
    expect(items.first.locator("h3")).to_contain_text("Group 21")
    pager.get_by_role("button", name="Next").click()
    expect(items).to_have_count(5)
    expect(pager.get_by_role("button", name="Next")).to_be_disabled()

    message = "threshold must be between 0.0 and 1.0."
    page.unroute("**/api/duplicates?*")
    page.route("**/api/duplicates?*", lambda route: route.fulfill(
        status=400, content_type="application/json", body=json.dumps({"error": message})))
    page.get_by_role("button", name="Find duplicates").click()
    expect(toast(page, "error").filter(has_text=message)).to_be_visible()
    expect(page.locator("#duplicates-status")).to_have_text(f"Could not look for duplicates: {message}")


# ---------------------------------------------------------------- search relevance


def test_minimum_similarity_and_hiding_near_exact_copies(page, library):
    searches = []
    page.on("request", lambda req: searches.append(req) if req.url.endswith("/api/search") else None)
    open_app(page, library, tab="search")
    page.get_by_role("tab", name="Choose from Library", exact=True).click()
    page.locator("#picker-grid").get_by_role("button", name=f"Search with {PHOTO}").click()
    expect(page.locator("#results-grid > li")).to_have_count(6)
    assert "min_similarity" not in json.loads(searches[-1].post_data)

    minimum = page.get_by_label("Minimum similarity")
    expect(minimum).to_have_value("0")
    with page.expect_request("**/api/search") as sent:
        minimum.fill("50")
        minimum.press("Enter")
    assert json.loads(sent.value.post_data)["min_similarity"] == 0.5
    expect(page.locator("#results-grid > li")).to_have_count(2)
    assert result_names(page) == [EXACT_COPY, LOW_QUALITY_COPY]
    expect(page.locator("#search-status")).to_contain_text("50% similar or more")

    hide = page.get_by_label("Hide near-exact copies of the query")
    asked = len(searches)
    hide.check()
    expect(page.locator("#results-grid > li")).to_have_count(1)
    assert result_names(page) == [LOW_QUALITY_COPY]
    expect(page.locator("#search-status")).to_contain_text("1 near-exact copy hidden")
    assert len(searches) == asked  # filtered in the page, not asked again
    screenshot(page, "search-relevance")

    # Only the exact copy is this close, and it is hidden: say so rather than show nothing.
    minimum.fill("97")
    minimum.press("Enter")
    empty = page.locator("#results-empty")
    expect(empty).to_be_visible()
    expect(empty).to_contain_text("The only match is a near-exact copy of the query (98% similar or more)")
    expect(page.locator("#results-grid > li")).to_have_count(0)
    hide.uncheck()
    expect(page.locator("#results-grid > li")).to_have_count(1)
    assert result_names(page) == [EXACT_COPY]
    assert len(searches) == asked + 1

    # The minimum stays set for the next query; nothing else in the library is that close to the cup.
    page.locator("#picker-grid").get_by_role("button", name="Search with coffee_cup.jpg").click()
    expect(page.locator("#query-caption")).to_have_text("coffee_cup.jpg")
    expect(empty).to_have_text("No match is 97% similar or more. Lower the minimum similarity to see more.")
