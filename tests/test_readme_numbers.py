"""The README's account of what the published runs show quotes only numbers that a committed table holds, so it
cannot drift from the tables again; the measurements that no table holds sit in quoted paragraphs that name
their source."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTION = "## What the published runs show"
OUTSIDE = "> Outside the tables (source:"
NUMBER = re.compile(r"(?<![\w.])[-−+]?(\d+\.\d+)")


def findings(readme: str) -> str:
    """The README's section on the published runs, up to the next section of the same level."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    return readme[start : end if end != -1 else len(readme)]


def untraceable(section: str, tables: str) -> list[str]:
    """The decimal numbers of ``section`` (outside its sourced quotes) that no table text holds, sign aside."""
    quoted, missing = False, []
    for line in section.splitlines():
        stripped = line.strip()
        if stripped.startswith(">"):
            quoted = quoted or stripped.startswith(OUTSIDE)
            if not quoted:
                missing.append(f"a quoted paragraph without its source: {stripped[:60]!r}")
            continue
        quoted = False
        for number in NUMBER.findall(stripped):
            if not re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", tables):
                missing.append(number)
    return missing


def _tables() -> str:
    board = REPO / "leaderboard"
    pages = sorted(board.glob("*--*.md")) + sorted(board.glob("*--*.html"))
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


def test_every_number_of_the_findings_is_in_a_committed_table():
    section = findings((REPO / "README.md").read_text(encoding="utf-8"))
    assert untraceable(section, _tables()) == []
    assert NUMBER.findall(section)  # the section does quote numbers


def test_the_check_catches_a_number_no_table_holds_and_an_unsourced_quote():
    tables = "| ew | -11.39 ± 3.32 | 0.6063 |"
    assert untraceable("ew is at −11.39 ± 3.32 (absErr 0.6063).", tables) == []
    assert untraceable("ew is at −11.38 ± 3.32.", tables) == ["11.38"]  # one digit off
    assert untraceable("absErr 0.606.", tables) == ["0.606"]  # a rounding of the table's number is not it
    assert untraceable("> Outside the tables (source: run X): 2.846\n> and 1.715", tables) == []
    assert len(untraceable("> measured once: 2.846", tables)) == 1  # a quote must name its source
