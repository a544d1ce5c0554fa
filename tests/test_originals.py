"""The bundled originals: distinct, credited photographs of many subjects, none a near-duplicate of another."""
from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from conftest import PROJECT_DIR, LiveServer, make_library
from imgsearch.config import Settings
from imgsearch.engines import ENGINE_NAMES

# Slow: real server processes (or the browser, or the benchmark run); `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

MANIFEST = PROJECT_DIR / "original_filenames.txt"
CREDITS = PROJECT_DIR / "images" / "CREDITS.md"
# The engines a fresh install runs without any download; the demo library must show no duplicates in either.
OFFLINE_ENGINES = [name for name in ("efficientnet-lite0", "efficientnet-lite1") if name in ENGINE_NAMES]


def manifest() -> list[str]:
    return MANIFEST.read_text(encoding="utf-8").split()


def credit_rows() -> dict[str, dict[str, str]]:
    """File name -> its row of the credits table, by column title."""
    lines = [line for line in CREDITS.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        row = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[row["File"].strip("`")] = row
    return rows


def test_fifty_small_credited_photographs_of_at_least_fifteen_subjects():
    names = manifest()
    assert len(names) >= 50 and len(set(names)) == len(names)
    rows = credit_rows()
    assert sorted(rows) == sorted(names)
    assert len({rows[name]["Subject"] for name in names}) >= 15
    for name in names:
        assert all(rows[name][column] for column in ("Author", "Source (package, file)", "Licence")), rows[name]
        path = PROJECT_DIR / "images" / name
        assert path.stat().st_size <= 1_000_000, name
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and max(image.size) <= 1024, name


@pytest.mark.parametrize("engine", OFFLINE_ENGINES)
def test_the_originals_form_no_duplicate_group_at_the_default_threshold(tmp_path, cache_dir, engine):
    originals = {name: (PROJECT_DIR / "images" / name).read_bytes() for name in manifest()}
    server = LiveServer(make_library(tmp_path / "data", originals), cache_dir=cache_dir,
                        env={"IMAGE_SEARCH_MODEL": engine}).start()
    try:
        status = requests.get(server.url + "/api/status", timeout=30).json()
        assert (status["model"], status["originals"], status["indexed"]) == (engine, len(originals), len(originals))
        body = requests.get(server.url + "/api/duplicates", timeout=60).json()
        assert body["threshold"] == Settings().duplicate_threshold
        assert body["total_groups"] == 0, [group["pairs"] for group in body["groups"]]

        # The same check finds a real near-duplicate: a re-saved copy of one original.
        buffer = io.BytesIO()
        Image.open(io.BytesIO(originals["cat_chelsea.jpg"])).save(buffer, "JPEG", quality=40)
        upload = requests.post(server.url + "/api/upload-image", timeout=60,
                               files={"file": ("cat_copy.jpg", buffer.getvalue(), "image/jpeg")})
        assert upload.status_code == 200, upload.text
        groups = requests.get(server.url + "/api/duplicates", timeout=60).json()["groups"]
        assert [[m["filename"] for m in group["members"]] for group in groups] == [["cat_chelsea.jpg", "cat_copy.jpg"]]
    except BaseException:
        print(server.output()[-3000:])
        raise
    finally:
        server.stop()
