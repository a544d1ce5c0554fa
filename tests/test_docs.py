"""The README documents every setting exactly as the code defines it."""
from __future__ import annotations

from pathlib import Path

from imgsearch.config import documented_settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_settings_table_matches_the_code():
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- settings-table -->", 1)[1].split("<!-- /settings-table -->", 1)[0]
    rows = [line for line in table.strip().splitlines()[2:]]
    expected = [f"| `{env}` | {default if default.startswith(('the ', '(')) else f'`{default}`'} | {help} |"
                for env, default, help in documented_settings()]
    assert rows == expected
