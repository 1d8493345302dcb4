"""The README and docs/ link to each other, to result files and to figures: every such link must
resolve (the file exists; a ``#fragment`` names an explicit ``<a id>`` or a heading of the
target page, as GitHub renders it), so that moving a section cannot leave a dead link."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+(?:\([^()\s]*\))?[^()\s]*)\)")
_ID = re.compile(r"<a id=\"([^\"]+)\"")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links inside them are not links)."""
    return _CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (letters of any script,
    digits, ``-`` and ``_`` kept), spaces to hyphens."""
    text = re.sub(r"`|\*\*|<[^>]+>", "", heading).strip().lower()
    kept = "".join(ch for ch in text
                   if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The fragments ``page`` offers: its explicit ``<a id>`` and its headings' slugs (a repeated
    slug gets ``-1``, ``-2``, … as on GitHub)."""
    text = page.read_text(encoding="utf-8")
    found = set(_ID.findall(text))
    seen: dict[str, int] = {}
    for _, title in _HEADING.findall(_FENCE.sub("", text)):
        slug = _slug(title)
        n = seen.get(slug, 0)
        found.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return found


def links(page: Path) -> list[str]:
    return _LINK.findall(_prose(page.read_text(encoding="utf-8")))


def dead_links(page: Path) -> list[str]:
    """The links of ``page`` that do not resolve, each with the reason."""
    dead = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            dead.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            dead.append(f"{target}: no anchor #{fragment} in {dest.name}")
    return dead


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    assert dead_links(page) == []


def test_the_readme_links_are_found():
    found = links(ROOT / "README.md")
    assert len(found) > 50 and "benchmarks/results/lambda_inits.md" in found


def test_the_checker_finds_dead_links(tmp_path):
    (tmp_path / "a.md").write_text("# A title, with `code`\n\n<a id=\"here\"></a>text\n",
                                   encoding="utf-8")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#here) [ok](a.md#a-title-with-code) [ok](#b-λ-section)\n"
                    "[bad](a.md#nowhere) [bad](missing.md) ![bad](img.png) [bad](#nope)\n"
                    "```\n[not a link](missing2.md)\n```\n`[nor this](missing3.md)`\n"
                    "## B λ section\n", encoding="utf-8")
    dead = dead_links(page)
    assert [d.split(":")[0] for d in dead] == ["a.md#nowhere", "missing.md", "img.png", "#nope"]


def test_every_result_file_is_named_in_the_docs():
    """A result in ``benchmarks/results/`` that no page names is a number nobody can find: each
    file (or its stem, for a figure or JSON beside a named table) appears in the README or docs."""
    text = "".join(p.read_text(encoding="utf-8") for p in PAGES)
    results = sorted((ROOT / "benchmarks" / "results").iterdir())
    assert len(results) > 100
    def named(word: str) -> bool:  # as a whole name: `foo` is not named by `foo_bar.md`
        return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None

    unnamed = [p.name for p in results if not (named(p.name) or named(p.name.split(".")[0]))]
    assert unnamed == []
