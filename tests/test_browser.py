"""The browser front end driven through Chromium against a real `python app.py` process.

One efficientnet-lite0 server serves most tests (private URLs allowed so URL search can reach a local
image host); a second, light `color` server with an access token and the default URL policy covers the
token prompt and the blocked-address error. Screenshots land in tests/artifacts/.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import io
import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from PIL import Image

from conftest import CHROMIUM, LiveServer, loopback_server, make_image, make_library

# Slow: real server processes (or the browser, or the benchmark run); `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

if not CHROMIUM.exists():
    pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# Upper bound for one UI step that waits on the server (feature extraction shares 2 busy cores).
STEP_TIMEOUT_MS = 60_000
expect.set_options(timeout=STEP_TIMEOUT_MS)
TOKEN = "browser-test-token"
XSS_NAME = "<img src=x onerror=alert(1)>.png"

ORIGINALS = {
    "red_circle.png": ("red", "ellipse", (160, 120)),
    "red_square.png": ("red", "rectangle", (120, 160)),
    "blue_circle.png": ("blue", "ellipse", (200, 200)),
    "blue_square.png": ("blue", "rectangle", (96, 96)),
    "green_circle.png": ("green", "ellipse", (300, 180)),
    "yellow_square.png": ("yellow", "rectangle", (64, 64)),
    "purple_circle.png": ("purple", "ellipse", (140, 140)),
}


def image_bytes(color: str, shape: str = "ellipse", size=(120, 100), seed: int = 7, fmt: str = "PNG") -> bytes:
    return make_image(color, size=size, fmt=fmt, seed=seed, shape=shape)


def file_payload(name: str, data: bytes, mime: str = "image/png") -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


# ---------------------------------------------------------------- servers


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host(tmp_path_factory):
    """A tiny local web server that URL searches fetch from."""
    root = tmp_path_factory.mktemp("image-host")
    (root / "query.png").write_bytes(image_bytes("red", "ellipse", seed=11))
    (root / "page.html").write_text("<html><body>not an image</body></html>")
    with loopback_server(functools.partial(QuietHandler, directory=str(root))) as url:
        yield url


def _library(tmp_path_factory, name: str, originals: dict) -> Path:
    data_dir = tmp_path_factory.mktemp(name)
    images = {file: image_bytes(color, shape, size, seed=i)
              for i, (file, (color, shape, size)) in enumerate(originals.items())}
    return make_library(data_dir, images)


# The offline network's shape with untrained weights: the page's behaviour, not its rankings, is under test.
UNTRAINED_LITE0 = {"IMAGE_SEARCH_MODEL": "efficientnet-lite0", "IMAGE_SEARCH_WEIGHTS": "random"}


@contextlib.contextmanager
def _serving(tmp_path_factory, cache_dir, folder: str, images: dict[str, bytes], env: dict[str, str]):
    """A started server on a fresh library of `images`; its data folder is `live.data_dir`."""
    data_dir = _library(tmp_path_factory, folder, images)
    live = LiveServer(data_dir, cache_dir=cache_dir, env=env).start()
    live.data_dir = data_dir
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache_dir):
    with _serving(tmp_path_factory, cache_dir, "browser-library", ORIGINALS, {
        **UNTRAINED_LITE0,
        "IMAGE_SEARCH_ALLOW_PRIVATE_URLS": "1",
        "IMAGE_SEARCH_QUERY_EXPANSION": "0",  # results in the order of the scores shown
    }) as live:
        yield live


@pytest.fixture(scope="module")
def unwatched_server(tmp_path_factory, cache_dir):
    """A library on a share the app cannot watch: files copied in by hand wait for "Generate Features".

    It also orders results by query expansion, as the default settings do, which the page must say.
    """
    with _serving(tmp_path_factory, cache_dir, "unwatched-library", ORIGINALS, {
        **UNTRAINED_LITE0,
        "IMAGE_SEARCH_WATCH": "0",
        "IMAGE_SEARCH_RESCAN_SECONDS": "0",
    }) as live:
        yield live


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory, cache_dir):
    """Token required, private addresses refused; the colour engine keeps it cheap to start."""
    with _serving(tmp_path_factory, cache_dir, "strict-library", {"red_circle.png": ORIGINALS["red_circle.png"]}, {
        "IMAGE_SEARCH_MODEL": "color",
        "IMAGE_SEARCH_TOKEN": TOKEN,
        "IMAGE_SEARCH_ALLOW_PRIVATE_URLS": "0",
    }) as live:
        yield live


# ---------------------------------------------------------------- browser


class PageProbe:
    """What a page did that it must not: script errors, anything the Content-Security-Policy blocked, and
    JavaScript dialogs (alert from injected HTML)."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda message: self.errors.append(message.text)
                if "Content Security Policy" in message.text else None)
        page.on("dialog", self._on_dialog)

    def _on_dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()


def _new_page(browser, request, servers, **context_options):
    context = browser.new_context(**{"viewport": {"width": 1280, "height": 900}, **context_options})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    probe = PageProbe(page)
    page.probe = probe
    request.addfinalizer(context.close)

    def check():
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for live in servers:
                print(f"---- server log {live.url}\n{live.output()[-6000:]}")
        assert not probe.errors, f"script errors on the page: {probe.errors}"

    request.addfinalizer(check)
    return page


@pytest.fixture
def page(browser, server, request):
    return _new_page(browser, request, [server])


@pytest.fixture
def new_page(browser, server, request):
    """Factory for pages with other context options (colour scheme, viewport)."""
    return lambda servers=(server,), **options: _new_page(browser, request, list(servers), **options)


def open_app(page, live, tab="gallery"):
    page.goto(f"{live.url}/#{tab}")
    expect(page.locator("#status-line")).to_contain_text("Model")
    expect(page.locator("#gallery-count")).not_to_be_empty()
    return page


def card(page, name):
    return page.locator(f'#gallery-grid > li[data-filename="{css_string(name)}"]')


def css_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def toast(page, kind):
    return page.locator(f"#toasts .toast-{kind}")


def screenshot(page, name):
    """Full-page capture, after scrolling once to the bottom so lazy thumbnails below the fold load too."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("() => [...document.querySelectorAll('img[data-src]')]"
                           ".every((img) => !img.checkVisibility() || (img.src && img.complete))")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def api_images(live) -> dict:
    return requests.get(f"{live.url}/api/images", timeout=10).json()


def delete_via_api(live, names):
    for name in names:
        requests.delete(f"{live.url}/api/delete-image/{quote(name, safe='')}", timeout=30).close()


def upload_through_input(page, files):
    page.locator("#upload-input").set_input_files(files)


def uploaded_names(page, live, before: set[str], count: int) -> list[str]:
    """The library names the last uploads got (the server may rename them)."""
    expect(page.locator("#gallery-grid > li:not(.is-original)")).to_have_count(
        len([n for n in before if n not in ORIGINALS]) + count)
    return sorted(set(api_images(live)["images"]) - before)


def drop_files(page, selector, files):
    """Dispatches dragenter/dragover/drop carrying `files` ([(name, mime, bytes)]) on `selector`."""
    payload = [{"name": n, "mime": m, "b64": base64.b64encode(d).decode()} for n, m, d in files]
    page.evaluate(
        """([selector, files]) => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], f.name, { type: f.mime }));
            }
            const zone = document.querySelector(selector);
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
            }
        }""",
        [selector, payload],
    )


def paste_image(page, name, data):
    page.evaluate(
        """([name, b64]) => {
            const transfer = new DataTransfer();
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, { type: "image/png" }));
            const init = { clipboardData: transfer, bubbles: true, cancelable: true };
            document.dispatchEvent(new ClipboardEvent("paste", init));
        }""",
        [name, base64.b64encode(data).decode()],
    )


def result_names(page) -> list[str]:
    return page.locator("#results-grid > li").evaluate_all("items => items.map((li) => li.dataset.filename)")


# ---------------------------------------------------------------- gallery


def test_gallery_lists_originals_with_badge_and_no_delete_or_select(page, server):
    open_app(page, server)
    expect(page.locator("#gallery-grid > li")).to_have_count(len(api_images(server)["images"]))
    expect(page.locator("#status-line")).to_contain_text("efficientnet-lite0")
    expect(page.locator("#status-line")).to_contain_text("cosine")
    expect(page.locator("#fallback-notice")).to_be_hidden()
    for name in ORIGINALS:
        item = card(page, name)
        expect(item.locator(".badge-original")).to_have_text("Original")
        expect(item.get_by_role("button", name=f"Delete {name}")).to_have_count(0)
        expect(item.locator("input[type=checkbox]")).to_have_count(0)
        expect(item.get_by_role("button", name=f"Find similar to {name}")).to_be_visible()
    # Thumbnails come from the thumbnail route and actually decode.
    first = card(page, "blue_circle.png").locator("img")
    expect(first).to_have_attribute("src", "/images/thumb/blue_circle.png")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first.element_handle())
    screenshot(page, "gallery")


def test_upload_by_click_and_drop_then_delete_one(page, server):
    open_app(page, server)
    before = set(api_images(server)["images"])
    upload_through_input(page, [file_payload("cat one.png", image_bytes("green", "rectangle", seed=21)),
                                file_payload("cat two.jpg", image_bytes("blue", "ellipse", seed=22, fmt="JPEG"),
                                             "image/jpeg")])
    expect(toast(page, "success").filter(has_text="Added 2 images to the library.")).to_be_visible()
    clicked = uploaded_names(page, server, before, 2)
    assert len(clicked) == 2

    drop_files(page, "#upload-zone", [("dropped.png", "image/png", image_bytes("yellow", "ellipse", seed=23))])
    expect(toast(page, "success").filter(has_text="to the library.").last).to_contain_text("dropped")
    [dropped] = uploaded_names(page, server, before | set(clicked), 1)

    for name in clicked + [dropped]:
        item = card(page, name)
        expect(item.locator(".badge-original")).to_have_count(0)
        expect(item.get_by_role("button", name=f"Delete {name}")).to_be_visible()
        expect(item.locator(".badge-pending")).to_have_count(0)  # uploads are indexed at once

    victim = clicked[0]
    card(page, victim).get_by_role("button", name=f"Delete {victim}").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(victim)
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(card(page, victim)).to_have_count(1)

    card(page, victim).get_by_role("button", name=f"Delete {victim}").click()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(toast(page, "success").filter(has_text=f"Deleted {victim}.")).to_be_visible()
    expect(card(page, victim)).to_have_count(0)
    assert victim not in api_images(server)["images"]
    delete_via_api(server, [clicked[1], dropped])


def test_batch_delete_and_originals_cannot_be_selected(page, server):
    open_app(page, server)
    before = set(api_images(server)["images"])
    upload_through_input(page, [file_payload(f"batch{i}.png", image_bytes(c, seed=30 + i))
                                for i, c in enumerate(["red", "green", "gray"])])
    names = uploaded_names(page, server, before, 3)

    page.get_by_role("button", name="Select page").click()
    user_cards = page.locator("#gallery-grid > li:not(.is-original)")
    expect(page.locator("#gallery-grid > li.is-selected")).to_have_count(user_cards.count())
    expect(page.locator("#gallery-grid > li.is-original.is-selected")).to_have_count(0)
    page.get_by_role("button", name="Clear", exact=True).click()
    expect(page.locator("#gallery-grid > li.is-selected")).to_have_count(0)
    expect(page.get_by_role("button", name="Delete selected")).to_be_disabled()

    for name in names[:2]:
        card(page, name).get_by_role("checkbox", name=f"Select {name}").check()
    expect(page.locator("#selection-count")).to_have_text("2 images selected")
    page.get_by_role("button", name="Delete selected").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_contain_text("Delete 2 images?")
    screenshot(page, "confirm-delete")
    dialog.get_by_role("button", name="Delete 2 images").click()
    expect(toast(page, "success").filter(has_text="Deleted 2 images.")).to_be_visible()
    expect(card(page, names[0])).to_have_count(0)
    expect(card(page, names[1])).to_have_count(0)
    expect(card(page, names[2])).to_have_count(1)
    expect(page.locator("#selection-count")).to_have_text("No images selected")
    assert set(ORIGINALS) <= set(api_images(server)["images"])
    delete_via_api(server, names[2:])


def test_files_copied_in_by_hand_are_indexed_without_pressing_anything(page, server):
    open_app(page, server)
    images_dir = server.data_dir / "images"
    planted = {"by_hand_a.png": image_bytes("purple", "rectangle", seed=51),
               "by_hand_b.png": image_bytes("gray", "ellipse", seed=52)}
    try:
        for name, data in planted.items():
            (images_dir / name).write_bytes(data)
        for name in planted:
            expect(card(page, name)).to_be_visible(timeout=30_000)
            expect(card(page, name).locator(".badge-pending")).to_have_count(0, timeout=30_000)
        (images_dir / "by_hand_a.png").unlink()
        expect(card(page, "by_hand_a.png")).to_have_count(0, timeout=30_000)
    finally:
        delete_via_api(server, [name for name in planted if (images_dir / name).exists()])


def test_generate_features_progress_bar_reaches_the_end_and_lists_skipped(browser, request, unwatched_server):
    server = unwatched_server
    page = _new_page(browser, request, [server])
    images_dir = server.data_dir / "images"
    planted = {"copied_a.png": image_bytes("purple", "rectangle", seed=41),
               "copied_b.png": image_bytes("gray", "ellipse", seed=42),
               "broken.jpg": b"this is not a jpeg at all"}
    for name, data in planted.items():
        (images_dir / name).write_bytes(data)
    try:
        open_app(page, server)
        for name in planted:  # not watched: nothing is known of them until the library is synced
            expect(card(page, name)).to_have_count(0)

        # Every text the counter shows, so the intermediate "done / total" states can be checked afterwards.
        page.evaluate("""() => {
            window.counterTexts = [];
            new MutationObserver((records) => records.forEach((record) =>
                record.addedNodes.forEach((node) => window.counterTexts.push(node.textContent)),
            )).observe(document.getElementById("generate-count"), { childList: true });
        }""")
        page.get_by_role("button", name="Generate Features").click()
        panel = page.locator("#generate-panel")
        expect(panel.locator("#generate-label")).to_have_text("Features are up to date")
        assert page.locator("#generate-bar").evaluate("bar => bar.value === bar.max && bar.max > 0")
        expect(panel.locator("#generate-count")).to_contain_text("2 new images indexed")
        shown = page.evaluate("() => window.counterTexts")
        assert any(re.fullmatch(r"[0-3] / 3 \(\d+%\)", text) for text in shown), shown
        expect(panel.locator("#skipped-summary")).to_have_text("1 file skipped")
        expect(panel.locator("#skipped-list")).to_contain_text("broken.jpg")
        expect(card(page, "broken.jpg").get_by_role("img", name="broken.jpg (no preview)")).to_be_visible()
        expect(page.locator("#status-line")).to_contain_text("1 unreadable")
        expect(page.get_by_role("button", name="Generate Features")).to_be_enabled()
        expect(toast(page, "info")).to_contain_text("Generated features for 2 images. 1 file skipped.")
        for name in ("copied_a.png", "copied_b.png"):
            expect(card(page, name).locator(".badge-pending")).to_have_count(0)
        screenshot(page, "generate-done")
    finally:
        delete_via_api(server, planted)


def test_page_reattaches_to_a_running_feature_job_after_reload(page, server):
    """When /api/status says a job runs, the page follows it (GET stream) instead of starting one."""
    followed = []

    def running_status(route):
        response = route.fetch()
        body = response.json()
        body["job"] = {"running": True, "current": 1, "total": 2}
        route.fulfill(response=response, body=json.dumps(body))

    page.route("**/api/status", running_status, times=1)
    page.on("request", lambda r: followed.append(r.method) if r.url.endswith("/api/generate-features") else None)
    open_app(page, server)
    expect(page.locator("#generate-label")).to_have_text("Features are up to date")
    assert followed == ["GET"]


# ---------------------------------------------------------------- search


def test_search_by_upload_file_drop_and_paste(page, server):
    open_app(page, server, tab="search")
    expect(page.get_by_role("tab", name="Upload Image", exact=True)).to_have_attribute("aria-selected", "true")
    page.locator("#query-input").set_input_files(file_payload("query red.png", image_bytes("red", seed=51)))
    expect(page.locator("#results-grid > li")).to_have_count(6)
    expect(page.locator("#query-caption")).to_have_text("query red.png")
    assert page.locator("#query-image").get_attribute("src").startswith("blob:")
    scores = page.locator("#results-grid .badge-score").all_inner_texts()
    assert all(re.fullmatch(r"\d{1,3}\.\d%", s) for s in scores), scores
    values = [float(s[:-1]) for s in scores]
    assert values == sorted(values, reverse=True)
    screenshot(page, "search-results")

    page.locator("#result-count").select_option("3")
    expect(page.locator("#results-grid > li")).to_have_count(3)
    expect(page.locator("#results-heading")).to_have_text("Top 3 matches")

    drop_files(page, "#query-zone", [("dropped query.png", "image/png", image_bytes("blue", "rectangle", seed=52))])
    expect(page.locator("#query-caption")).to_have_text("dropped query.png")
    expect(page.locator("#results-grid > li")).to_have_count(3)

    page.get_by_role("tab", name="Image URL", exact=True).click()
    paste_image(page, "clipboard.png", image_bytes("green", seed=53))
    expect(page.get_by_role("tab", name="Upload Image", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#query-caption")).to_have_text("clipboard.png")
    expect(page.locator("#search-status")).to_contain_text("3 matches for clipboard.png")


def test_search_by_url_and_add_to_library(page, server, image_host):
    open_app(page, server, tab="search")
    page.get_by_role("tab", name="Image URL", exact=True).click()
    url = f"{image_host}/query.png"
    page.get_by_label("Address of an image on the web").fill(url)
    page.locator("#url-form").get_by_role("button", name="Search").click()
    expect(page.locator("#results-grid > li")).to_have_count(6)
    expect(page.locator("#query-image")).to_have_attribute("src", url)
    assert result_names(page)[0] in ("red_circle.png", "red_square.png")

    before = set(api_images(server)["images"])
    page.get_by_label("Also add the query image to my library").check()
    page.locator("#url-form").get_by_role("button", name="Search").click()
    expect(toast(page, "success").filter(has_text="to the library.")).to_be_visible()
    added = sorted(set(api_images(server)["images"]) - before)
    assert len(added) == 1
    assert added[0] not in result_names(page)  # the added copy is not its own best match
    expect(card(page, added[0])).to_have_count(1)
    delete_via_api(server, added)


def test_search_from_library_picker_and_find_similar(page, server):
    open_app(page, server)
    card(page, "blue_square.png").get_by_role("button", name="Find similar to blue_square.png").click()
    expect(page.get_by_role("tab", name="Search")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tab", name="Choose from Library", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#query-caption")).to_have_text("blue_square.png")
    expect(page.locator("#results-grid > li")).to_have_count(6)
    assert "blue_square.png" not in result_names(page)

    picker = page.locator("#picker-grid")
    expect(picker.get_by_role("button", name="Search with blue_square.png")).to_have_attribute("aria-pressed", "true")
    page.get_by_label("Filter library images by file name").fill("green")
    expect(picker.locator("li")).to_have_count(1)
    picker.get_by_role("button", name="Search with green_circle.png").click()
    expect(page.locator("#query-caption")).to_have_text("green_circle.png")
    expect(page.locator("#search-status")).to_contain_text("matches for green_circle.png")
    assert "green_circle.png" not in result_names(page)
    assert len(result_names(page)) == 6


def test_result_viewer_opens_moves_with_arrows_and_closes_with_escape(page, server):
    open_app(page, server, tab="search")
    page.get_by_role("tab", name="Choose from Library", exact=True).click()
    page.locator("#picker-grid").get_by_role("button", name="Search with red_circle.png").click()
    expect(page.locator("#results-grid > li")).to_have_count(6)
    names = result_names(page)

    first = page.locator("#results-grid > li").first.locator(".card-thumb")
    first.click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(page.locator("#viewer-title")).to_have_text(names[0])
    expect(page.locator("#viewer-position")).to_have_text(f"1 / {len(names)}")
    expect(page.locator("#viewer-meta")).to_contain_text("% similar")
    expect(page.locator("#viewer-image")).to_have_attribute("src", f"/images/{quote(names[0])}")
    page.wait_for_function("() => document.getElementById('viewer-image').naturalWidth > 0")
    screenshot(page, "modal")

    page.keyboard.press("ArrowRight")
    expect(page.locator("#viewer-title")).to_have_text(names[1])
    page.keyboard.press("ArrowRight")
    expect(page.locator("#viewer-title")).to_have_text(names[2])
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#viewer-title")).to_have_text(names[1])
    page.get_by_role("button", name="Next image").click()
    expect(page.locator("#viewer-title")).to_have_text(names[2])
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    assert page.evaluate("() => document.activeElement.classList.contains('card-thumb')")


# ---------------------------------------------------------------- errors and hostile input


def test_error_toasts_show_the_servers_message(page, server, image_host):
    expected_upload = requests.post(f"{server.url}/api/upload-image",
                                    files={"file": ("notes.png", b"plain text, no pixels", "image/png")},
                                    timeout=30).json()["error"]
    expected_search = requests.post(f"{server.url}/api/search",
                                    files={"file": ("notes.png", b"plain text, no pixels", "image/png")},
                                    timeout=30).json()["error"]
    expected_url = requests.post(f"{server.url}/api/search", data={"url": f"{image_host}/page.html"},
                                 timeout=30).json()["error"]
    open_app(page, server)
    upload_through_input(page, [file_payload("notes.png", b"plain text, no pixels")])
    expect(toast(page, "error").filter(has_text=expected_upload)).to_contain_text("notes.png")
    expect(page.locator("#upload-list .upload-item.failed")).to_contain_text(expected_upload)
    screenshot(page, "error-toast")

    page.get_by_role("tab", name="Search").click()
    page.locator("#query-input").set_input_files(file_payload("notes.png", b"plain text, no pixels"))
    expect(toast(page, "error").filter(has_text=expected_search).last).to_be_visible()
    expect(page.locator("#search-status")).to_have_text(f"Search failed: {expected_search}")

    page.get_by_role("tab", name="Image URL", exact=True).click()
    page.get_by_label("Address of an image on the web").fill(f"{image_host}/page.html")
    page.locator("#url-form").get_by_role("button", name="Search").click()
    expect(toast(page, "error").filter(has_text=expected_url)).to_be_visible()
    expect(page.locator("#search-status")).to_have_text(f"Search failed: {expected_url}")


def test_token_prompt_and_blocked_private_url(new_page, strict_server, image_host):
    page = new_page(servers=(strict_server,))
    open_app(page, strict_server)
    url = f"{image_host}/query.png"
    expected = requests.post(f"{strict_server.url}/api/search", data={"url": url}, timeout=30).json()["error"]

    upload_through_input(page, [file_payload("needs token.png", image_bytes("blue", seed=61))])
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Access token").fill(TOKEN)
    dialog.get_by_role("button", name="Continue").click()
    expect(toast(page, "success").filter(has_text="Added needs_token.png to the library.")).to_be_visible()
    assert page.evaluate("() => sessionStorage.getItem('imgsearch.token')") == TOKEN

    page.get_by_role("tab", name="Search").click()
    page.get_by_role("tab", name="Image URL", exact=True).click()
    page.get_by_label("Address of an image on the web").fill(url)
    page.locator("#url-form").get_by_role("button", name="Search").click()
    expect(toast(page, "error").filter(has_text=expected)).to_be_visible()
    assert "private" in expected


def test_hostile_filenames_render_as_text(page, server):
    planted = server.data_dir / "images" / XSS_NAME
    planted.write_bytes(image_bytes("red", "rectangle", seed=71))
    before = set(api_images(server)["images"])
    try:
        open_app(page, server)
        item = card(page, XSS_NAME)
        expect(item.locator(".card-name")).to_have_text(XSS_NAME)
        expect(item.get_by_role("button", name=f"Delete {XSS_NAME}")).to_be_visible()

        upload_through_input(page, [file_payload(XSS_NAME, image_bytes("green", seed=72))])
        expect(toast(page, "success").filter(has_text="to the library.")).to_be_visible()
        upload_through_input(page, [file_payload(XSS_NAME, b"<script>alert(2)</script>")])
        expect(toast(page, "error").filter(has_text=XSS_NAME)).to_be_visible()
        expect(page.locator("#upload-list .upload-item.failed .card-name")).to_have_text(XSS_NAME)

        item.get_by_role("button", name=f"Find similar to {XSS_NAME}").click()
        expect(page.locator("#query-caption")).to_have_text(XSS_NAME)
        page.locator("#query-image").evaluate("img => img.decode()")
        assert page.locator("img[src='x']").count() == 0
        assert page.probe.dialogs == []
    finally:
        delete_via_api(server, set(api_images(server)["images"]) - before | {XSS_NAME})


# ---------------------------------------------------------------- scale, layout, themes, accessibility


def _png(size=(8, 8), color=(90, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def test_ten_thousand_images_keep_the_dom_bounded(page, server):
    names = [f"img-{i:05d}.jpg" for i in range(10_000)]
    listing = json.dumps({"images": names, "original_images": names[:50], "pending": names[-3:]})
    thumb = _png()
    page.route("**/api/images", lambda route: route.fulfill(status=200, content_type="application/json", body=listing))
    page.route("**/images/thumb/**", lambda route: route.fulfill(status=200, content_type="image/png", body=thumb))
    open_app(page, server)
    grid = page.locator("#gallery-grid > li")
    expect(grid).to_have_count(200)
    expect(page.locator("#gallery-pager .pager-label")).to_have_text("Page 1 of 50")
    assert page.evaluate("() => document.getElementsByTagName('*').length") < 5000
    # Lazy loading: only the thumbnails near the viewport have been requested.
    page.wait_for_function("() => document.querySelector('#gallery-grid img[src]') !== null")
    assert page.locator("#gallery-grid img[src]").count() < 200

    page.locator("#gallery-pager").get_by_role("button", name="Next").click()
    expect(page.locator("#gallery-pager .pager-label")).to_have_text("Page 2 of 50")
    expect(grid.first).to_have_attribute("data-filename", "img-00200.jpg")
    page.get_by_label("Filter the library by file name").fill("img-0999")
    expect(grid).to_have_count(10)
    expect(card(page, "img-09999.jpg").locator(".badge-pending")).to_be_visible()
    expect(page.locator("#gallery-pager")).to_be_hidden()

    page.get_by_role("tab", name="Search").click()
    page.get_by_role("tab", name="Choose from Library", exact=True).click()
    expect(page.locator("#picker-grid > li")).to_have_count(48)
    expect(page.locator("#picker-pager .pager-label")).to_have_text("Page 1 of 209")


def test_startup_indexing_shows_in_the_status_line_until_ready(page, server):
    def indexing_status(route):
        response = route.fetch()
        body = response.json()
        body["startup"] = {"state": "indexing originals", "current": 3, "total": 7}
        route.fulfill(response=response, body=json.dumps(body))

    page.route("**/api/status", indexing_status, times=1)
    page.goto(server.url)
    expect(page.locator("#status-line")).to_contain_text("Indexing originals 3 / 7")
    # The page polls while the server indexes; the real status then replaces the startup counter.
    expect(page.locator("#status-line")).to_contain_text("images indexed")


# What a server without the ResNet50 weights says about itself (the real reason, with its unbroken URL).
FALLBACK_REASON = (
    "The ImageNet weights for resnet50 (resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5) are not in "
    "/home/user/.keras/models and could not be downloaded (URL fetch failure on https://storage.googleapis.com/"
    "tensorflow/keras-applications/resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5: None -- [Errno -2] "
    "Name or service not known). Using the offline efficientnet-lite0 model instead.")


def fallback_status(route):
    """The real status, as a server that had to fall back would give it (the weights cannot be made to fail
    to download on a machine that has them, nor to download on one without a network)."""
    response = route.fetch()
    body = response.json()
    body.update(fallback=True, fallback_reason=FALLBACK_REASON, configured_model="resnet50")
    route.fulfill(response=response, body=json.dumps(body))


def assert_fits_the_screen(page):
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"the page is {width} px wide"


def test_first_run_empty_state(page, server):
    empty = json.dumps({"images": [], "original_images": [], "pending": []})
    page.route("**/api/images*", lambda route: route.fulfill(status=200, content_type="application/json", body=empty))
    open_app(page, server)
    expect(page.locator("#gallery-empty")).to_be_visible()
    expect(page.locator("#gallery-empty")).to_contain_text("Your library is empty")
    expect(page.locator("#gallery-grid > li")).to_have_count(0)
    expect(page.locator("#selection-bar")).to_be_hidden()


def test_fallback_notice_says_which_model_why_and_how_and_can_be_dismissed(new_page, server):
    phone = new_page(viewport={"width": 360, "height": 740})
    phone.route("**/api/status", fallback_status)
    open_app(phone, server)
    notice = phone.locator("#fallback-notice")
    expect(notice).to_be_visible()
    expect(notice.locator("p").first).to_have_text(
        "Searching with the offline model efficientnet-lite0, because this server could not get the ImageNet "
        "weights of resnet50.", use_inner_text=True)
    # The raw exception stays in /api/status and the log.
    expect(notice).not_to_contain_text("Errno")
    notice.get_by_text("How to get resnet50").click()
    expect(notice).to_contain_text("python -m imgsearch prepare --engine resnet50 --retry-download")
    expect(notice).to_contain_text("“Offline use”")
    for tab in ("Gallery", "Search", "Duplicates"):
        phone.get_by_role("tab", name=tab).click()
        assert_fits_the_screen(phone)
    screenshot(phone, "phone-fallback-notice")

    notice.get_by_role("button", name="Dismiss this notice").click()
    expect(notice).to_be_hidden()
    # Gone for the rest of the session, reloads included...
    phone.reload()
    expect(phone.locator("#status-line")).to_contain_text("Model")  # drawn with the notice, from one status
    expect(notice).to_be_hidden()
    # ... but a new session hears it again.
    desktop = new_page()
    desktop.route("**/api/status", fallback_status)
    open_app(desktop, server)
    expect(desktop.locator("#fallback-notice")).to_be_visible()
    assert_fits_the_screen(desktop)


def test_tabs_keyboard_and_labels(page, server):
    open_app(page, server)
    expect(page.get_by_role("tablist", name="Sections")).to_be_visible()
    gallery_tab = page.get_by_role("tab", name="Gallery")
    gallery_tab.focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Search")).to_be_focused()
    expect(page.get_by_role("tabpanel", name="Search")).to_be_visible()
    expect(page.locator("#panel-gallery")).to_be_hidden()
    for label in ("Upload Image", "Image URL", "Choose from Library"):
        expect(page.get_by_role("tab", name=label, exact=True)).to_have_count(1)
    expect(page.get_by_label("Results")).to_have_value("6")
    page.keyboard.press("Home")
    expect(gallery_tab).to_have_attribute("aria-selected", "true")

    unnamed = page.evaluate("""() => [...document.querySelectorAll('button')]
        .filter((b) => !b.textContent.trim() && !b.getAttribute('aria-label'))
        .map((b) => b.outerHTML)""")
    assert unnamed == []
    # The focused control gets a visible outline.
    page.keyboard.press("Tab")
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")


def first_result_in_view(page) -> bool:
    return page.locator("#results-grid > li").first.evaluate(
        "li => { const box = li.getBoundingClientRect(); return box.top >= 0 && box.bottom <= innerHeight; }")


def test_phone_width_and_dark_theme(new_page, server):
    phone = new_page(viewport={"width": 360, "height": 740})
    open_app(phone, server)
    assert_fits_the_screen(phone)
    screenshot(phone, "phone-gallery")
    card(phone, "blue_circle.png").get_by_role("button", name="Find similar to blue_circle.png").click()
    expect(phone.locator("#results-grid > li")).to_have_count(6)
    # The results start below the picker: the page brings them up.
    assert first_result_in_view(phone)
    assert_fits_the_screen(phone)
    screenshot(phone, "phone-search")

    # A name with no place to break, as a query caption, a toast and an upload row.
    long_name = f"{'x' * 150}.png"
    phone.evaluate("() => window.scrollTo(0, 0)")
    phone.get_by_role("tab", name="Upload Image", exact=True).click()
    phone.locator("#query-input").set_input_files(file_payload(long_name, image_bytes("yellow", seed=54)))
    expect(phone.locator("#query-caption")).to_have_text(long_name)
    assert first_result_in_view(phone)
    assert_fits_the_screen(phone)

    dark = new_page(color_scheme="dark")
    open_app(dark, server)
    background = dark.evaluate("() => getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(v) for v in re.findall(r"\d+", background)[:3])
    assert red + green + blue < 3 * 80, background
    screenshot(dark, "dark-gallery")
    card(dark, "green_circle.png").get_by_role("button", name="Find similar to green_circle.png").click()
    expect(dark.locator("#results-grid > li")).to_have_count(6)
    screenshot(dark, "dark-search")



# ---------------------------------------------------------------- the viewer, the results grid


def viewer_geometry(page) -> dict:
    """The drawn image's box, its natural size, the viewport, and the space the viewer gives it."""
    page.wait_for_function("() => { const img = document.getElementById('viewer-image');"
                           " return img.complete && img.naturalWidth > 0; }")
    return page.evaluate("""() => {
        const img = document.getElementById("viewer-image");
        const box = img.getBoundingClientRect();
        const body = document.querySelector(".viewer-body");
        const style = getComputedStyle(body);
        const area = body.getBoundingClientRect();
        const padX = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
        const padY = parseFloat(style.paddingTop) + parseFloat(style.paddingBottom);
        return {
            left: box.left, top: box.top, width: box.width, height: box.height,
            naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
            viewportWidth: innerWidth, viewportHeight: innerHeight,
            areaCentreX: area.left + parseFloat(style.paddingLeft) + (body.clientWidth - padX) / 2,
            areaCentreY: area.top + parseFloat(style.paddingTop) + (body.clientHeight - padY) / 2,
            areaWidth: body.clientWidth - padX, areaHeight: body.clientHeight - padY,
        };
    }""")


def assert_whole_image_fits(g: dict):
    # Within the viewport.
    assert g["left"] >= 0 and g["top"] >= 0, g
    assert g["left"] + g["width"] <= g["viewportWidth"] + 0.5, g
    assert g["top"] + g["height"] <= g["viewportHeight"] + 0.5, g
    # Never enlarged.
    assert g["width"] <= g["naturalWidth"] + 0.5 and g["height"] <= g["naturalHeight"] + 0.5, g
    # Whole: the box keeps the picture's proportions, so nothing is cut off.
    assert abs(g["width"] / g["height"] - g["naturalWidth"] / g["naturalHeight"]) < 0.02, g
    # Centred in the space the viewer has.
    assert abs(g["left"] + g["width"] / 2 - g["areaCentreX"]) <= 1, g
    assert abs(g["top"] + g["height"] / 2 - g["areaCentreY"]) <= 1, g
    # Shrunk no further than that space demands: natural size, or one side fills it.
    assert (g["width"] >= g["naturalWidth"] - 0.5 or abs(g["width"] - g["areaWidth"]) <= 1
            or abs(g["height"] - g["areaHeight"]) <= 1), g


def test_viewer_shows_the_whole_image_never_enlarged_and_centred(new_page, server):
    big = io.BytesIO()
    Image.new("RGB", (2400, 1600), (40, 120, 200)).save(big, "PNG")
    for viewport in ({"width": 1280, "height": 900}, {"width": 360, "height": 740}):
        page = new_page(viewport=viewport)
        # One picture larger than any screen; the others are small (64 to 300 px).
        page.route("**/images/blue_circle.png", lambda route: route.fulfill(
            status=200, content_type="image/png", body=big.getvalue()))
        open_app(page, server)
        for name, natural in (("yellow_square.png", (64, 64)), ("green_circle.png", (300, 180)),
                              ("blue_circle.png", (2400, 1600))):
            card(page, name).get_by_role("button", name=f"View {name}").click()
            expect(page.locator("#viewer-title")).to_have_text(name)
            geometry = viewer_geometry(page)
            assert (geometry["naturalWidth"], geometry["naturalHeight"]) == natural
            assert_whole_image_fits(geometry)
            if name == "yellow_square.png":
                assert geometry["width"] == 64  # shown at its own size, not blown up
            page.keyboard.press("Escape")
        screenshot(page, f"viewer-large-{viewport['width']}")


def test_results_fill_whole_rows_at_common_widths(page, server):
    open_app(page, server, tab="search")
    page.get_by_role("tab", name="Choose from Library", exact=True).click()
    page.locator("#picker-grid").get_by_role("button", name="Search with red_circle.png").click()
    expect(page.locator("#results-grid > li")).to_have_count(6)
    expect(page.locator("#reranked-note")).to_be_hidden()
    for width in (1280, 1024, 768, 360):
        page.set_viewport_size({"width": width, "height": 900})
        rows = page.locator("#results-grid > li").evaluate_all("""items => {
            const rows = new Map();
            for (const li of items) {
                const top = Math.round(li.getBoundingClientRect().top);
                rows.set(top, (rows.get(top) || 0) + 1);
            }
            return [...rows.values()];
        }""")
        columns = page.locator("#results-grid").evaluate(
            "grid => getComputedStyle(grid).gridTemplateColumns.split(' ').length")
        assert all(count == columns for count in rows), f"at {width} px: rows of {rows} in {columns} columns"
        assert_fits_the_screen(page)


# ---------------------------------------------------------------- the bundled examples, repeated uploads


def test_hiding_the_bundled_examples_everywhere_and_remembering_it(page, server):
    open_app(page, server)
    before = set(api_images(server)["images"])
    upload_through_input(page, [file_payload("mine 10.png", image_bytes("red", "rectangle", seed=81)),
                                file_payload("mine 9.png", image_bytes("blue", "ellipse", seed=82))])
    mine = uploaded_names(page, server, before, 2)
    try:
        own = requests.get(f"{server.url}/api/images", params={"source": "uploads"}, timeout=10).json()["images"]
        # The user's own images come first, in natural order (9 before 10).
        gallery = page.locator("#gallery-grid > li")
        assert gallery.evaluate_all("items => items.map((li) => li.dataset.filename)")[:len(own)] == own
        assert own.index("mine_9.png") < own.index("mine_10.png")

        switch = page.get_by_role("switch", name="Show the bundled examples")
        expect(switch).to_be_checked()
        with page.expect_request(lambda req: "/api/images?" in req.url and "source=uploads" in req.url):
            switch.uncheck()
        expect(gallery).to_have_count(len(own))
        expect(page.locator("#gallery-grid > li.is-original")).to_have_count(0)

        page.get_by_role("tab", name="Search").click()
        page.get_by_role("tab", name="Choose from Library", exact=True).click()
        expect(page.locator("#picker-grid > li")).to_have_count(len(own))
        expect(page.locator("#filter-source")).to_be_disabled()
        with page.expect_request("**/api/search") as sent:
            page.locator("#picker-grid").get_by_role("button", name="Search with mine_9.png").click()
        assert json.loads(sent.value.post_data)["source"] == "uploads"
        expect(page.locator("#results-grid > li")).to_have_count(len(own) - 1)
        expect(page.locator("#results-grid .badge-original")).to_have_count(0)

        # Remembered in this browser.
        page.reload()
        expect(page.locator("#gallery-count")).to_contain_text("of yours")
        expect(switch).not_to_be_checked()
        expect(page.locator("#gallery-grid > li.is-original")).to_have_count(0)
        switch.check()
        expect(page.locator("#gallery-grid > li.is-original")).to_have_count(len(ORIGINALS))
    finally:
        delete_via_api(server, mine)


def test_an_upload_already_in_the_library_says_so(page, server):
    copy = (server.data_dir / "images" / "red_circle.png").read_bytes()
    before = api_images(server)["images"]
    open_app(page, server)
    upload_through_input(page, [file_payload("my red.png", copy)])
    expect(toast(page, "info")).to_have_text(
        "my red.png is already in the library as red_circle.png; nothing was added.")
    expect(toast(page, "success")).to_have_count(0)
    assert api_images(server)["images"] == before

    page.get_by_role("tab", name="Search").click()
    page.get_by_label("Also add the query image to my library").check()
    page.locator("#query-input").set_input_files(file_payload("my red again.png", copy))
    expect(toast(page, "info").filter(has_text="The query image")).to_have_text(
        "The query image is already in the library as red_circle.png; nothing was added.")
    assert api_images(server)["images"] == before


# ---------------------------------------------------------------- progress streams, re-ranked results


def test_a_refused_progress_stream_is_not_a_failure(browser, request, unwatched_server):
    """With every progress stream taken the server answers 429 and runs the job anyway: the page waits for it."""
    server = unwatched_server
    page = _new_page(browser, request, [server])
    planted = server.data_dir / "images" / "waited_for.png"
    planted.write_bytes(image_bytes("green", "rectangle", seed=91))
    refusal = {"error": "2 progress streams are already open; the job goes on. Follow it with GET /api/status, "
                        "or try again when a stream closes."}

    def streams_taken(route):
        route.fetch()  # the server starts the job, which runs to its end
        route.fulfill(status=429, content_type="application/json", body=json.dumps(refusal))

    try:
        open_app(page, server)
        page.evaluate("""() => {
            window.labels = [];
            new MutationObserver(() => window.labels.push(document.getElementById("generate-label").textContent))
                .observe(document.getElementById("generate-label"), { childList: true });
        }""")
        page.route("**/api/generate-features", streams_taken)
        page.get_by_role("button", name="Generate Features").click()
        expect(page.locator("#generate-label")).to_have_text("Features are up to date")
        assert "Feature generation is running on the server" in page.evaluate("() => window.labels")
        expect(page.locator("#generate-panel")).not_to_have_class(re.compile("failed"))
        expect(toast(page, "success").filter(has_text="Feature generation finished.")).to_be_visible()
        expect(toast(page, "error")).to_have_count(0)
        expect(card(page, "waited_for.png")).to_be_visible()
        expect(card(page, "waited_for.png").locator(".badge-pending")).to_have_count(0)
    finally:
        delete_via_api(server, ["waited_for.png"])
        planted.unlink(missing_ok=True)


def test_results_reordered_by_query_expansion_say_so(browser, request, unwatched_server):
    page = _new_page(browser, request, [unwatched_server])
    open_app(page, unwatched_server, tab="search")
    page.get_by_role("tab", name="Choose from Library", exact=True).click()
    page.locator("#picker-grid").get_by_role("button", name="Search with red_circle.png").click()
    expect(page.locator("#results-grid > li")).to_have_count(6)
    note = page.locator("#reranked-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("query expansion")
    expect(note).to_contain_text("Each score is still that image's own similarity to the query.")
    screenshot(page, "search-reranked")
