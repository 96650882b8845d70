"""Every `planlm ...` command quoted in README.md and docs/*.md against today's CLI: its subcommand exists and every
``--flag`` it passes is one that subcommand's parser accepts, so a renamed flag fails the suite, not a reader.

Commands are read from fenced and indented code blocks and from inline code. Shell syntax is taken apart the way
bash would (line continuations, comments, ``;`` ``&`` ``&&`` ``|`` ``||``, ``time`` / ``VAR=...`` prefixes,
``python -m planlm.cli``); placeholders (``$VAR``, ``<name>``, ``...``, ``[--flag VALUE]``) stand for values, never for
flags. The option strings come from the parser `planlm` itself builds (jsonargparse over planlm.cli.COMMANDS), not
from a hand list. ``planlm-lm-eval`` is lm-eval's own command with planlm's model registered: its flags are lm-eval's,
not checked here. ``python bench/X.py`` commands are checked for the script existing.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SEPARATORS = {";", "&", "&&", "|", "||", "(", ")", "do", "then", "else", "{", "}", "`"}
OTHER_PROGRAMS = {"planlm-lm-eval"}  # lm-eval's command line (planlm/integrations/lm_eval.py), not planlm's parser


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    words: tuple[str, ...]  # after `planlm`: subcommand words, then arguments


# ----------------------------------------------------------------------------------------------- reading markdown


def code_spans(text: str) -> list[tuple[int, str]]:
    """(line number, shell text) of every fenced block, indented block and inline code span of a markdown text; a
    block's lines are joined across ``\\`` continuations, one entry per logical line."""
    out, lines = [], text.splitlines()
    fence, prose = None, []
    i = 0
    while i < len(lines):
        line = lines[i]
        if fence is None and re.match(r"^\s*(```|~~~)", line):
            fence, i = line.strip()[:3], i + 1
            continue
        if fence is not None and line.strip().startswith(fence):
            fence, i = None, i + 1
            continue
        indented = fence is None and line.startswith("    ") and (i == 0 or not lines[i - 1].strip()
                                                                  or lines[i - 1].startswith("    "))
        if fence is not None or (indented and not line.lstrip().startswith(("-", "*", "|"))):
            start, joined = i + 1, line
            while joined.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                joined = joined.rstrip()[:-1] + " " + lines[i].strip()
            out.append((start, joined))
        else:
            prose.append((i + 1, line))
        i += 1
    for number, line in prose:
        out += [(number, span) for span in re.findall(r"`([^`\n]+)`", line)]
    return out


def placeholders_out(text: str) -> str:
    """``<name>`` / ``<variant>`` placeholders -> a plain word, so the shell lexer does not read them as redirects."""
    return re.sub(r"<[A-Za-z][\w .-]*>", "PLACEHOLDER", text)


def shell_segments(text: str) -> list[list[str]]:
    """The simple commands of one shell line: tokens split at separators, comments dropped."""
    lexer = shlex.shlex(placeholders_out(text), posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: prose, not a command
        return []
    segments, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    return [s for s in [*segments, current] if s]


PREFIXES = {"time", "nohup", "env", "exec", "command"}


def planlm_commands(tokens: list[str]) -> list[tuple[str, ...]]:
    """The arguments after ``planlm`` (or ``python -m planlm.cli``) when one simple command runs it (after ``time``,
    ``VAR=value`` and the like); none for any other program (``planlm-lm-eval --model planlm`` among them)."""
    i = 0
    while i < len(tokens) and (tokens[i] in PREFIXES or re.fullmatch(r"[A-Za-z_]\w*=\S*", tokens[i])):
        i += 1
    if i < len(tokens) and tokens[i] == "planlm":
        return [tuple(tokens[i + 1:])]
    if tokens[i:i + 3] in (["python", "-m", "planlm.cli"], ["python3", "-m", "planlm.cli"]):
        return [tuple(tokens[i + 3:])]
    return []


def bench_scripts(tokens: list[str]) -> list[str]:
    return [t for t in tokens if re.fullmatch(r"bench/[\w.-]+\.(py|sh)", t)]


def doc_commands(paths=DOCS) -> tuple[list[DocCommand], list[tuple[str, str]]]:
    """Every planlm command and every bench script quoted in ``paths``: (commands, [(where, script)])."""
    commands, scripts = [], []
    for path in paths:
        for number, span in code_spans(path.read_text()):
            for tokens in shell_segments(span):
                where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{number}"
                commands += [DocCommand(where, words) for words in planlm_commands(tokens)]
                scripts += [(where, s) for s in bench_scripts(tokens)]
    return commands, scripts


# ----------------------------------------------------------------------------------------------- the CLI's parser


@pytest.fixture(scope="module")
def parser():
    """The parser `planlm` builds (planlm.cli.main's CLI call), captured instead of run."""
    from jsonargparse import CLI, capture_parser, set_parsing_settings

    from planlm.cli import COMMANDS

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    return capture_parser(lambda: CLI(COMMANDS, args=[], prog="planlm", as_positional=True, exit_on_error=False))


def subparsers(parser) -> dict:
    action = getattr(parser, "_subcommands_action", None)
    return {} if action is None else dict(action._name_parser_map)


def option_name(token: str) -> str | None:
    """``--optim.lr`` of ``--optim.lr``, ``--optim.lr=1e-3`` or ``[--optim.lr`` (an optional flag in a doc's
    synopsis); None for a value (``-3``, ``-``, a path)."""
    token = token.lstrip("[")
    if not re.match(r"--[A-Za-z]", token):
        return None
    return token.split("=", 1)[0].rstrip("]")


def command_problems(parser, command: DocCommand) -> list[str]:
    """What today's CLI refuses of one doc command: an unknown subcommand, or flags its parser does not accept."""
    node, words, rest = parser, [], list(command.words)
    while subparsers(node) and rest and not rest[0].startswith("-"):
        if rest[0] not in subparsers(node):
            if rest[0] in ("PLACEHOLDER", "...") or rest[0].isupper():  # `planlm <stage> --help`, `planlm STAGE`
                return []
            return [f"{command.where}: `planlm {' '.join(command.words)}`: no subcommand "
                    f"{' '.join([*words, rest[0]])!r} (have: {', '.join(subparsers(node))})"]
        node, words, rest = subparsers(node)[rest[0]], [*words, rest[0]], rest[1:]
    if subparsers(node):  # `planlm myopia` alone: a group named in prose
        return [] if not rest else [f"{command.where}: `planlm {' '.join(command.words)}`: {words} needs a subcommand"]
    from planlm.cli import COMMANDS, choice_problems

    accepted = {o for a in node._actions for o in a.option_strings}
    unknown = [name for name in map(option_name, rest) if name and name not in accepted]
    stage = COMMANDS
    for word in words:
        stage = stage[word]
    said = f"{command.where}: `planlm {' '.join(command.words)}`: "
    return ([f"{said}`planlm {' '.join(words)}` has no {name}" for name in unknown]
            + [said + problem for problem in choice_problems(stage, concrete(rest))])


def concrete(args: list[str]) -> list[str]:
    """``args`` without the options whose value is a placeholder (``--variant $V``, ``--preset PRESET``), whose
    choices no doc can be held to; ``[--flag VALUE]`` brackets dropped."""
    out, i = [], 0
    args = [a.lstrip("[").rstrip("]") if option_name(a) or a.endswith("]") and "[" not in a else a for a in args]
    while i < len(args):
        key, eq, value = args[i].partition("=")
        if option_name(key) and not eq and i + 1 < len(args) and not option_name(args[i + 1]):
            value, step = args[i + 1], 2
        else:
            step = 1
        if not (value.startswith("$") or value in ("PLACEHOLDER", "...") or value.isupper()):
            out += args[i:i + step]
        i += step
    return out


# ----------------------------------------------------------------------------------------------------------- tests


def test_the_docs_quote_planlm_commands():
    commands, scripts = doc_commands()
    assert len(commands) > 50 and scripts  # the extraction finds them (README's main job among them)
    assert any(c.words[:1] == ("run",) for c in commands)


def test_every_documented_command_parses_today(parser):
    commands, _ = doc_commands()
    problems = [p for c in commands for p in command_problems(parser, c)]
    assert not problems, "doc commands that today's CLI refuses:\n" + "\n".join(problems)


def test_every_documented_bench_script_exists():
    _, scripts = doc_commands()
    missing = [f"{where}: {script}" for where, script in scripts if not (ROOT / script).is_file()]
    assert not missing, "doc commands name bench scripts that do not exist:\n" + "\n".join(missing)


def test_a_renamed_flag_is_reported(parser, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Run it:\n\n"
        "```bash\n"
        "time planlm finetune --prepared P --optim.lr 1e-3 \\\n"
        "    --optim.planer_lr 1e-5 --trainer.logger=none &   # a typo'd flag on a continued line\n"
        "OMP_NUM_THREADS=1 python -m planlm.cli run --preset quick; planlm myopia dp --out $OUT | tee log\n"
        "```\n\n"
        "and inline: `planlm evaluate --run RUN --split.val 3`, `planlm tokenize --out x`, `planlm <stage> --help`,\n"
        "`planlm run --preset quik --variants $V`,\n"
        "`planlm-lm-eval --model planlm --tasks T`, `planlm actions show DIR [--action N]`.\n\n"
        "    planlm report '[a, b]' --out /tmp/r --bogus_flag 1\n"
    )
    commands, _ = doc_commands([doc])
    words = {c.words[0] if c.words else "" for c in commands}
    assert words == {"finetune", "run", "myopia", "evaluate", "tokenize", "PLACEHOLDER", "actions", "report"}
    assert len(commands) == 9
    problems = "\n".join(p for c in commands for p in command_problems(parser, c))
    assert "has no --optim.planer_lr" in problems and "has no --optim.lr" not in problems
    assert "has no --split.val" in problems  # evaluate's --split is a choice, not a section
    assert "no subcommand 'tokenize'" in problems
    assert "has no --bogus_flag" in problems
    assert "has no --trainer.logger" not in problems
    assert "`planlm myopia" not in problems and "`planlm actions" not in problems
    assert "preset must be one of default, paper, quick, small-lm (got quik)" in problems  # a value, too
    assert len(problems.splitlines()) == 5


def test_shell_syntax_is_taken_apart():
    assert shell_segments("a --x 1 # comment; planlm run") == [["a", "--x", "1"]]
    assert shell_segments("for s in 0 1; do planlm run --seeds $s & done; wait") == [
        ["for", "s", "in", "0", "1"], ["planlm", "run", "--seeds", "$s"], ["done"], ["wait"]]
    assert planlm_commands(["time", "python", "-m", "planlm.cli", "run", "--out", "x"]) == [("run", "--out", "x")]
    assert planlm_commands(["OMP_NUM_THREADS=1", "planlm", "run"]) == [("run",)]
    assert planlm_commands(["planlm-lm-eval", "--model", "planlm"]) == []
    assert planlm_commands(["pip", "install", "planlm"]) == []
    assert option_name("--optim.lr=1e-3") == "--optim.lr" and option_name("[--action") == "--action"
    assert option_name("-1") is None and option_name("/tmp/x") is None
