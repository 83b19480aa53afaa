"""Every relative link in README.md and docs/*.md resolves: the file exists, and a #fragment into a Markdown file
names one of its headings (GitHub's anchor rule: lower case, punctuation dropped, spaces to hyphens). Links inside
code blocks are not links and are skipped."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(md: Path) -> set[str]:
    out = set()
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
    for line in text.splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def _broken(files: list[Path]) -> list[str]:
    bad = []
    for f in files:
        text = re.sub(r"```.*?```", "", f.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue                                   # http:, https:, mailto:
            path, _, frag = target.partition("#")
            dest = f.parent / path if path else f
            if not dest.exists():
                bad.append(f"{f.name}: {target}")
            elif frag and dest.suffix == ".md" and frag not in _anchors(dest):
                bad.append(f"{f.name}: {target} (no such heading)")
    return bad


def test_readme_and_docs_links_resolve():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(files) > 10
    assert _broken(files) == []


def test_the_check_finds_a_broken_file_link_and_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Which settings for my card\n")
    md = tmp_path / "README.md"
    md.write_text("[ok](docs/a.md#which-settings-for-my-card) [gone](docs/b.md) [anchor](docs/a.md#nope)\n"
                  "```\n[in code](docs/c.md)\n```\n[web](https://example.com)\n")
    assert _broken([md]) == ["README.md: docs/b.md", "README.md: docs/a.md#nope (no such heading)"]
