"""The README a newcomer reads: short, and every relative link (pages, images) resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md"))]


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code blocks are not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]


def test_readme_is_short_and_points_to_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 12_000
    assert readme.lstrip().startswith("# ") and "make demo" in readme[:400] and "make test" in readme[:400]
    linked = {Path(t.split("#")[0]).name for t in relative_links(ROOT / "README.md")}
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= linked  # every docs page reachable


def test_every_relative_link_resolves():
    broken = []
    for page in pages():
        for target in relative_links(page):
            if not (page.parent / target.split("#")[0]).resolve().exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
    assert sum(len(relative_links(p)) for p in pages()) >= 10
