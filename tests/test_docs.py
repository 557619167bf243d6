"""The documentation a newcomer reads: every link inside the repository resolves.

A clone has nothing beside the repository, so a link to `../shared/...` (or any
path outside it) is broken for every reader but us. Links to other Markdown
files are checked down to their `#anchor`, with the anchors GitHub makes from
headings. Costs a few milliseconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import REPO_ROOT

DOCUMENTS = sorted(
    {
        REPO_ROOT / "README.md",
        REPO_ROOT / "SECURITY.md",
        REPO_ROOT / "bench" / "README.md",
        REPO_ROOT / "client" / "README.md",
        *(REPO_ROOT / "docs").glob("*.md"),
    }
)
FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, ...


def prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken(document: Path, target: str) -> str | None:
    """Why `target`, linked from `document`, does not resolve inside the repository; None if it does."""
    path_part, _, anchor = target.partition("#")
    linked = (document.parent / path_part).resolve() if path_part else document
    if not linked.is_relative_to(REPO_ROOT):
        return "points outside the repository (a clone has nothing there)"
    if not linked.exists():
        return "no such file"
    if anchor and linked.suffix == ".md" and anchor not in anchors(linked):
        return f"{linked.relative_to(REPO_ROOT)} has no heading #{anchor}"
    return None


def test_the_documents_are_there() -> None:
    names = {str(path.relative_to(REPO_ROOT)) for path in DOCUMENTS}
    expected = {"docs/PROTOCOL.md", "docs/server.md", "docs/grading.md", "bench/README.md"}
    assert expected <= names
    assert all(path.is_file() for path in DOCUMENTS)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves_inside_the_repository(document: Path) -> None:
    problems = [
        f"{target}: {why}"
        for target in links(document)
        if not EXTERNAL.match(target) and (why := broken(document, target)) is not None
    ]
    assert not problems, f"{document.relative_to(REPO_ROOT)}: " + "; ".join(problems)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_nothing_refers_to_the_shared_folder(document: Path) -> None:
    """Not even in code: `../shared` exists on the team's machine only."""
    assert "../shared" not in document.read_text(encoding="utf-8")


def test_the_link_checker_finds_broken_links(tmp_path: Path) -> None:
    """The checker itself: a missing file, a missing anchor and an escape are each caught."""
    document = REPO_ROOT / "docs" / "PROTOCOL.md"
    assert broken(document, "server.md") is None
    assert broken(document, "#1-transport-and-framing") is None
    assert broken(document, "../SECURITY.md#threat-model") is None
    assert broken(document, "missing.md") == "no such file"
    assert broken(document, "#no-such-heading") == "docs/PROTOCOL.md has no heading #no-such-heading"
    assert broken(document, "../../shared/PROTOCOL.md") is not None
    assert "(a clone has nothing there)" in (broken(document, "../../shared/PROTOCOL.md") or "")
    sample = tmp_path / "sample.md"
    sample.write_text('[a](x.md) `[b](y.md)`\n```\n[c](z.md)\n```\n![d](img.png "title")\n')
    assert links(sample) == ["x.md", "img.png"]
    assert slug("6. The client's flow") == "6-the-clients-flow"
    assert slug("Decisions where the text is silent") == "decisions-where-the-text-is-silent"


def test_the_readme_scripts_exist_and_run() -> None:
    """Every `./script` the README tells you to run is there and executable."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    scripts = set(re.findall(r"(?m)^\./([\w.-]+)", readme))
    assert {"run-server.sh", "test.sh"} <= scripts
    for script in scripts:
        path = REPO_ROOT / script
        assert path.is_file() and path.stat().st_mode & 0o111, f"{script} is not an executable file"
