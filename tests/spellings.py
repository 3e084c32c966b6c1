"""The spellings SPEC §0 names for the result options, for the tests of every helper that writes results."""

from __future__ import annotations

import json
from pathlib import Path

NAMES = ("terminationMessagePath", "termination-message-path")
# (name, dashes, "=" or a separate value): every spelling Go's flag package takes, of both names.
SPELLINGS = [(n, d, eq) for n in NAMES for d in ("-", "--") for eq in (True, False)]


def spelling_id(spelling: tuple[str, str, bool]) -> str:
    name, dashes, eq = spelling
    return f"{dashes}{name}{'=v' if eq else '_v'}"


def flag(dashes: str, name: str, value: Path | str, *, eq: bool) -> list[str]:
    return [f"{dashes}{name}={value}"] if eq else [f"{dashes}{name}", str(value)]


def result_args(tmp_path: Path, spelling: tuple[str, str, bool]) -> list[str]:
    """tmp_path/termination-log in the spelling under test, --results-dir in the same form."""
    name, dashes, eq = spelling
    return [
        *flag(dashes, name, tmp_path / "termination-log", eq=eq),
        *flag(dashes, "results-dir", tmp_path / "results", eq=eq),
    ]


def written(tmp_path: Path) -> dict[str, str]:
    """The results as the termination message has them, checked against --results-dir's files."""
    entries = json.loads((tmp_path / "termination-log").read_text())
    results = {e["key"]: e["value"] for e in entries}
    files = {p.name: p.read_text() for p in (tmp_path / "results").iterdir()}
    assert files == results
    return results
