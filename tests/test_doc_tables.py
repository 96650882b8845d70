"""Every measured table in docs/results.md, docs/results-planner.md and docs/performance.md says, in its section
(since the previous heading) and before the table, the commit its numbers were measured at (``commit <hex>``) and the
command that produced them (an indented or fenced code line), so a reader can re-run it at that code state.

Reference tables (numbers computed or quoted, not measured by a command) are exempt by section heading, each with
its reason in EXEMPT.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / name for name in ("results.md", "results-planner.md", "performance.md")]

EXEMPT = {
    # heading (without the leading #s): why its tables need no commit or command
    "The paper pipeline on 285k articles on one H100, by arithmetic":
        "arithmetic over figures measured elsewhere (each row names its source), not a measurement",
}

HEADING = re.compile(r"^#{1,6} ")
FENCE = re.compile(r"^\s*(```|~~~)")
SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
COMMIT = re.compile(r"\bcommit [0-9a-f]{7,40}\b", re.IGNORECASE)
COMMAND = re.compile(r"^(planlm |python |bash |PLANLM_|[A-Za-z_]\w*=)")


def table_problems(text: str, name: str = "doc") -> list[str]:
    """``name:line (heading): what is missing`` for every table of a markdown ``text`` whose section, before it, has
    no ``commit <hex>`` mention (in its prose, across line breaks) or no command line; exempt headings are skipped."""
    problems, lines = [], text.splitlines()
    heading, prose, command, fence = "", "", False, False
    for i, line in enumerate(lines):
        if FENCE.match(line):
            fence = not fence
            continue
        if fence or line.startswith("    "):
            command = command or bool(COMMAND.match(line.strip()))
            continue
        if HEADING.match(line):
            heading, prose, command = line.lstrip("#").strip(), "", False
            continue
        prose += " " + line.strip()
        commit = bool(COMMIT.search(prose))
        is_table = line.lstrip().startswith("|") and i + 1 < len(lines) and SEPARATOR.match(lines[i + 1])
        if is_table and heading not in EXEMPT:
            missing = [what for what, found in (("`commit <hex>`", commit), ("command", command)) if not found]
            if missing:
                problems.append(f"{name}:{i + 1} ({heading}): no {' and no '.join(missing)} before the table")
    return problems


def test_every_measured_table_names_its_commit_and_command():
    problems = [p for path in DOCS for p in table_problems(path.read_text(), path.relative_to(ROOT).as_posix())]
    assert not problems, "tables without their commit or command:\n" + "\n".join(problems)


def test_the_exemptions_name_existing_sections():
    headings = {line.lstrip("#").strip() for path in DOCS for line in path.read_text().splitlines()
                if HEADING.match(line)}
    assert set(EXEMPT) <= headings


def test_a_table_without_its_commit_is_reported():
    doc = (
        "# Results\n\n"
        "## Measured, complete\n\n"
        "Measured at\ncommit 40a0138 (a mention may wrap):\n\n"
        "    planlm run --out /tmp/x\n\n"
        "| a | b |\n|---|---:|\n| 1 | 2 |\n\n"
        "## No commit\n\n"
        "```\nOMP_NUM_THREADS=1 planlm run --out /tmp/y\n```\n\n"
        "| a | b |\n|---|---:|\n| 1 | 2 |\n\n"
        "## The commit comes after the table, the command is prose\n\n"
        "Run `python bench/x.py`.\n\n"
        "| a |\n|---|\n| 1 |\n\n"
        "(commit 40a0138)\n\n"
        "## The paper pipeline on 285k articles on one H100, by arithmetic\n\n"
        "| a |\n|---|\n| 1 |\n"
    )
    assert table_problems(doc) == [
        "doc:20 (No commit): no `commit <hex>` before the table",
        "doc:28 (The commit comes after the table, the command is prose): no `commit <hex>` and no command before "
        "the table",
    ]
