"""The README stays short, and every relative link in it and in docs/ resolves: the file exists and an
``#anchor`` names a heading of the target, slugged as GitHub does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, inline code removed (a link or heading there is not one)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lowercased, every character but letters, digits,
    underscores, hyphens and spaces dropped, spaces made hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    return "".join("-" if c == " " else c for c in text if c.isalnum() or c in "_- ")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose(path.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file (web and mail addresses left out)."""
    prose = "\n".join(re.sub(r"`[^`]*`", "", line) for line in _prose(path.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(prose) if not re.match(r"[a-z]+:", t)]


def test_slugs_follow_github():
    assert github_slug("The audit report (`report.html`)") == "the-audit-report-reporthtml"
    assert github_slug("GPUs, many processes, resuming") == "gpus-many-processes-resuming"
    assert github_slug("Policy file and gates") == "policy-file-and-gates"


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n[ok](a.md#title) [bad](a.md#nothing) `[code](x.md)`\n")
    assert links(tmp_path / "a.md") == ["a.md#title", "a.md#nothing"]
    assert anchors(tmp_path / "a.md") == {"title"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    for target in links(page):
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        assert resolved.is_file(), f"{page.name}: {target} names no file"
        if anchor:
            assert resolved.suffix == ".md", f"{page.name}: {target} has an anchor into a file that is not Markdown"
            assert anchor in anchors(resolved), f"{page.name}: {target} names no heading of {resolved.name}"


def test_readme_is_short_and_links_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 200
    assert "docs/README.md" in links(ROOT / "README.md")
    listed = set(links(ROOT / "docs" / "README.md"))
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "README.md":
            assert page.name in listed, f"docs/README.md does not list {page.name}"
