"""The README and docs/ stay true where they state a command or point at a file.

- Every relative link in README.md and docs/*.md names a file of the repository.
- Every `python -m labutils ...` command in a code block parses with the command line's own parser
  (``labutils.cli.parser()``): a renamed or removed option fails here, not in a reader's terminal.
- The README's first screen sends each reader (student, instructor, library user) to their part.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from labutils.cli import parser
from labutils.errors import LabError

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FIRST_SCREEN = 40  # lines


def code_blocks(text: str) -> list[str]:
    """The lines of the fenced code blocks of a markdown text."""
    return [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) for line in block.splitlines()]


def labutils_commands(text: str) -> list[list[str]]:
    """The argument lists of every ``python -m labutils`` command in the code blocks (comments dropped)."""
    commands = []
    for line in code_blocks(text):
        words = shlex.split(line, comments=True)
        for i in range(len(words) - 2):
            if words[i].endswith("python") or words[i].endswith("python3"):
                if words[i + 1 : i + 3] == ["-m", "labutils"]:
                    rest = words[i + 3 :]
                    if "&&" in rest:
                        rest = rest[: rest.index("&&")]
                    commands.append(rest)
    return commands


def test_the_pages_exist():
    assert len(PAGES) >= 4, [p.name for p in PAGES]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_names_a_file(page: Path):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_labutils_command_parses(page: Path):
    for argv in labutils_commands(page.read_text()):
        try:
            parser().parse_args(argv)
        except (LabError, SystemExit) as error:
            pytest.fail(f"{page.relative_to(ROOT)}: `python -m labutils {shlex.join(argv)}` does not parse: {error}")


def test_the_commands_are_found():
    """The extraction itself: the library page's explain commands are seen (else the test above checks nothing)."""
    commands = labutils_commands((ROOT / "docs" / "library.md").read_text())
    assert any(argv[:1] == ["explain"] for argv in commands), commands
    assert labutils_commands("```bash\npython -m labutils summary vgg16   # Table 2\n```") == [["summary", "vgg16"]]


def test_the_first_screen_serves_every_reader():
    first = "\n".join((ROOT / "README.md").read_text().splitlines()[:FIRST_SCREEN])
    for reader, page in [("student", None), ("instructor", "docs/instructors.md"), ("library user", "docs/library.md")]:
        assert reader in first, f"the README's first {FIRST_SCREEN} lines do not address the {reader}"
        if page:
            assert f"]({page})" in first, f"the README's first {FIRST_SCREEN} lines do not link {page}"
    assert ".venv/bin/python -m pytest" in first and "pip install torch==" in first, "the two commands"
