"""Property tests for filename handling: `Library.link_upload` and the name checks of `Library.path_of`.

Whatever name a client sends, the stored name is a plain, fresh file name inside images/ that keeps the
image's real format as its extension; whatever name a request asks for, the only paths ever returned are
existing files directly inside images/.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsearch.imaging import EXTENSION_FOR_FORMAT
from imgsearch.library import WINDOWS_DEVICE_NAMES, Library, NotFound

ORIGINALS = ("image.png", "photo.jpg", "red_circle.png", "a.gif", "image_1.png")
EXTENSIONS = sorted(set(EXTENSION_FOR_FORMAT.values()))
DATA = b"\x89PNG pretend image bytes"

# Pieces that matter to paths and names, mixed freely with arbitrary text.
TRICKY = st.sampled_from([
    "..", ".", "/", "\\", "\x00", "~", " ", ":", "C:", "%2F", "%00", "..%2f", "\u202e", "\u0301", "\ufeff",
    "名前", "ﬁ", "Ａ", "\ud800", "\udcff", "image", "photo", "red_circle", ".png", ".jpg", ".PNG", ".gif",
    "/etc/passwd", "../../app.py", "\r\n", "\t", "<script>", "\"", "'", "-", "--", "CON", "nul", "Com1", "LPT9",
])
ANY_CHARACTER = st.characters(exclude_categories=())
NAMES = st.one_of(
    st.text(),
    st.text(ANY_CHARACTER),
    st.lists(st.one_of(TRICKY, st.text(ANY_CHARACTER, max_size=4)), max_size=12).map("".join),
    st.text(st.sampled_from("a名./\\"), min_size=100, max_size=2000),
    st.sampled_from(ORIGINALS),
)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Library:
    root = tmp_path_factory.mktemp("sanitiser")
    (root / "images").mkdir()
    for name in ORIGINALS:
        (root / "images" / name).write_bytes(name.encode())
    (root / "manifest.txt").write_text("".join(f"{name}\n" for name in ORIGINALS))
    (root / "outside.png").write_bytes(b"outside")
    (root / "images" / "inside.png").write_bytes(b"inside")
    return Library(root / "images", root / "thumbnails", root / "uploads", root / "manifest.txt")


def save_upload(library: Library, client_name: str, extension: str) -> str:
    """What the app does with an upload's bytes: stage and sync them, then link them in under a fresh name."""
    staged = library.stage_upload(DATA)
    try:
        return library.link_upload(staged, client_name, extension)
    finally:
        staged.unlink()


@PROPERTY_SETTINGS
@given(client_name=NAMES, extension=st.sampled_from(EXTENSIONS))
def test_stored_name_is_a_fresh_plain_name_inside_images(library, client_name, extension):
    name = save_upload(library, client_name, extension)

    assert name == os.path.basename(name) and not os.path.isabs(name)
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert name.isascii() and len(name.encode()) <= 255
    assert not name.startswith("-") and name.split(".")[0].upper() not in WINDOWS_DEVICE_NAMES
    assert name not in ORIGINALS
    assert name.rsplit(".", 1)[1] == extension
    stored = library.images_dir / name
    assert stored.resolve().parent == library.images_dir.resolve()
    assert stored.read_bytes() == DATA
    assert library.path_of(name) == stored
    assert list(library.staging_dir.iterdir()) == []
    for original in ORIGINALS:
        assert (library.images_dir / original).read_bytes() == original.encode()


def _outside_names(library: Library) -> list[str]:
    root = library.images_dir.parent
    return ["../outside.png", str(root / "outside.png"), "../manifest.txt", "inside.png/../../outside.png",
            "..\\outside.png", "./inside.png", "inside.png/", "inside.png\x00", "", ".", ".."]


@PROPERTY_SETTINGS
@given(data=st.data())
def test_path_of_never_leaves_images(library, data):
    name = data.draw(st.one_of(NAMES, st.sampled_from(["inside.png", *ORIGINALS, *_outside_names(library)])))
    try:
        path = library.path_of(name)
    except NotFound:
        return
    assert path == library.images_dir / name and path.is_file()
    assert path.resolve().parent == library.images_dir.resolve()


def test_path_of_finds_files_inside_and_nothing_else(library):
    assert library.path_of("inside.png") == library.images_dir / "inside.png"
    for name in _outside_names(library):
        with pytest.raises(NotFound):
            library.path_of(name)


def test_many_uploads_of_one_name_never_share_a_name(library):
    names = [save_upload(library, "../same.png", "png") for _ in range(20)]
    assert len(set(names)) == 20 and all(Path(library.images_dir / n).is_file() for n in names)
