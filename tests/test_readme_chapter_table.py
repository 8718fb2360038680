"""README's chapter table: every row names a command and the tests that show it, and those tests exist.

A row without a test must say "not built yet" (no row claims what nothing shows)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADING = "### The chapter, live: every check and pitfall"


def table_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(HEADING):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))  # a cell may hold an escaped \|
            rows.append([c.strip() for c in cells])
    return rows[1:]  # without the header


def test_every_row_is_tested_or_honestly_not_built():
    rows = table_rows()
    assert len(rows) >= 15
    for chapter, command, sees, tested in rows:
        if command == "not built yet":
            assert tested == "-", chapter
            continue
        refs = re.findall(r"`(test_[\w.]+\.py)(?:::(\w+)(?:\[[^\]]+\])?)?`|`(test_\w+)`", tested)
        assert refs, f"row '{chapter}' names no test"
        current_file = None
        for file, func, bare in refs:
            if file:
                current_file = file
                path = ROOT / "tests" / file
                assert path.exists(), f"row '{chapter}': {file} does not exist"
            name = func or bare
            if name:
                assert current_file, f"row '{chapter}': {name} without a test file"
                source = (ROOT / "tests" / current_file).read_text()
                assert re.search(rf"^def {name}\(", source, re.M), f"row '{chapter}': {current_file}::{name} missing"
