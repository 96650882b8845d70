"""The `planlm` command: one typed function per pipeline stage (DESIGN.md section 2), parsed by jsonargparse.

Each stage's docstring is its ``--help``; ``--config file.yaml`` and dotted overrides (``--trainer.lr 3e-4``) work
for every subcommand. Bad input raises :class:`planlm.errors.PlanlmError`, which ends here as one line on stderr and
exit status 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
import sys
import types
import typing

import yaml

from planlm.errors import PlanlmError, raise_if_problems
from planlm.stages.evaluate import evaluate
from planlm.stages.finetune import finetune
from planlm.stages.generate import generate
from planlm.stages.prepare import actions_show, prepare
from planlm.stages.pretrain_lm import pretrain_lm
from planlm.stages.report import report
from planlm.stages.run import run
from planlm.stages.share import share
from planlm.stages.train_planner import train_planner
from planlm.studies.mtp_compare import mtp_compare
from planlm.studies.myopia import LMBudget, myopia_dp, myopia_lm, myopia_planned
from planlm.train.lm_pretraining import PRESETS as LM_PRESETS

# subcommand -> stage function; nested dicts are command groups (`planlm actions show`).
COMMANDS: dict = {
    "prepare": prepare,
    "actions": {"show": actions_show},
    "pretrain-lm": pretrain_lm,
    "train-planner": train_planner,
    "share": share,
    "finetune": finetune,
    "evaluate": evaluate,
    "generate": generate,
    "report": report,
    "run": run,
    "mtp-compare": mtp_compare,
    "myopia": {"dp": myopia_dp, "lm": myopia_lm, "planned": myopia_planned},
}

# Commands whose LM preset supplies a nested section: (command words, preset option, its default, section). The
# preset's section is read first, as if given first on the command line, so an explicit ``--optim.lr`` overrides that
# one value and every value left unset is the preset's (from Python: ``lm_optim(preset, lr=...)``).
PRESET_SECTIONS = [
    (("pretrain-lm",), "--preset", inspect.signature(pretrain_lm).parameters["preset"].default, "--optim"),
    (("mtp-compare",), "--preset", inspect.signature(mtp_compare).parameters["preset"].default, "--optim"),
    (("myopia", "lm"), "--budget.preset", LMBudget.preset, "--budget.optim"),
]


def with_preset_sections(argv: list[str]) -> list[str]:
    """``argv`` with the section of the LM preset it names (``--preset tiny`` or ``--preset=tiny``; the command's
    default preset otherwise) inserted right after the command words: ``pretrain-lm --optim {...} --preset tiny ...``.
    An unknown name inserts nothing: the stage's own check reports it."""
    for words, option, default, section in PRESET_SECTIONS:
        if tuple(argv[:len(words)]) != words:
            continue
        rest, name = argv[len(words):], default
        for i, arg in enumerate(rest):
            if arg == option and i + 1 < len(rest):
                name = rest[i + 1]
            elif arg.startswith(option + "="):
                name = arg.split("=", 1)[1]
        if name in LM_PRESETS:
            return [*words, section, json.dumps(dataclasses.asdict(LM_PRESETS[name].optim)), *rest]
    return argv


def _hint(fn, key: str):
    """The type of the dotted option ``key`` of stage ``fn`` (``kmeans.backend``: KMeansConfig's ``backend``), or
    None when there is no such option."""
    hints = typing.get_type_hints(fn)
    for i, part in enumerate(key.split(".")):
        hint = hints.get(part)
        if hint is None or i == key.count("."):
            return hint
        # the dataclass of a nested section, Optional or not
        section = next((h for h in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(h)), None)
        if section is None:
            return None
        hints = typing.get_type_hints(section)
    return None


def _choices(hint) -> tuple[tuple, bool] | None:
    """(the Literal's values, whether the option is a list of them) of a type, or None when it is no choice."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint), False
    if typing.get_origin(hint) is list and typing.get_args(hint):
        inner = _choices(typing.get_args(hint)[0])
        return (inner[0], True) if inner and not inner[1] else None
    args = typing.get_args(hint)
    if type(None) in args and len(args) == 2:  # Optional[Literal[...]]: its choices or null
        inner = _choices(next(a for a in args if a is not type(None)))
        return (inner[0] + ("null",), False) if inner and not inner[1] else None
    return None


def choice_problems(fn, args: list[str]) -> list[str]:
    """Every ``--key value`` / ``--key=value`` of ``args`` whose type is a ``Literal`` (or a list of them) and whose
    value is not among its choices, as one-line messages listing the choices: all of them, in the stage's one-line
    error (jsonargparse would stop at the first, in its own words)."""
    problems = []
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq and i + 1 < len(args):
            value = args[i + 1]
        choices = _choices(_hint(fn, key))
        if choices is None or (not eq and i + 1 >= len(args)):
            continue
        values = yaml.safe_load(value) if choices[1] else value
        if choices[1] and not isinstance(values, list):
            values = [values]
        names = [str(c) for c in choices[0]]
        if any(str(v) not in names for v in (values if choices[1] else [values])):
            problems.append(f"{key} must be {'a list of' if choices[1] else 'one of'} {', '.join(names)} "
                            f"(got {value})")
    return problems


def _floats(hint) -> tuple[bool, bool]:
    """(whether a type holds floats, whether it is a list of them): ``float``, ``float | None``, ``list[float]``."""
    if hint is float:
        return True, False
    if typing.get_origin(hint) is list and typing.get_args(hint):
        return _floats(typing.get_args(hint)[0])[0], True
    args = typing.get_args(hint)
    return (float in args, False) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (False, False)


def _non_finite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def finite_problems(fn, args: list[str]) -> list[str]:
    """Every float option of ``args`` given NaN or an infinity (``nan``, ``.nan``, ``inf``, ``-inf``, ``1e999``),
    as one-line messages: refused in the stage's own line (jsonargparse would reject ``nan`` as "not a float" and
    take ``-inf`` for an option), never trained with."""
    problems = []
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                continue
            value = args[i + 1]
        holds, is_list = _floats(_hint(fn, key))
        if not holds:
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            continue
        values = parsed if is_list and isinstance(parsed, list) else [parsed]
        for v in values:
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    continue
            if _non_finite(v):
                problems.append(f"{key} must be a finite number (got {value})")
                break
    return problems


_NUMBER_LIST = re.compile(r"^\s*[-+]?[\d.]+([eE][-+]?\d+)?(\s*,\s*[-+]?[\d.]+([eE][-+]?\d+)?)+\s*$")


def with_number_lists(fn, args: list[str]) -> list[str]:
    """``args`` with a comma-separated value of a list-of-numbers option in list form (``--seeds 1,1`` ->
    ``--seeds [1,1]``), so that every such option reads ``0,1,2`` like `planlm run --seeds` and the stage's own
    check judges the values."""
    out = list(args)
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        hint = _hint(fn, key)
        if typing.get_origin(hint) is not list or not set(typing.get_args(hint)) <= {int, float}:
            continue
        if eq and _NUMBER_LIST.match(value):
            out[i] = f"--{key}=[{value}]"
        elif not eq and i + 1 < len(args) and _NUMBER_LIST.match(args[i + 1]):
            out[i + 1] = f"[{args[i + 1]}]"
    return out


def _stage(argv: list[str]):
    """(command words, stage function) named by ``argv``, or (words, None)."""
    node, words = COMMANDS, []
    for word in argv:
        if not isinstance(node, dict) or word not in node:
            break
        node, words = node[word], [*words, word]
    return words, node if callable(node) else None


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import CLI, ArgumentError, set_parsing_settings

    from planlm.train.trainer import configure_progress_output

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv is None:  # the `planlm` program itself (not a caller's process): tqdm lines fit for a log off a terminal
        configure_progress_output()
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        words, fn = _stage(args)
        if fn is not None:
            rest = args[len(words):]
            raise_if_problems(choice_problems(fn, rest) + finite_problems(fn, rest), " ".join(words))
            args = [*words, *with_number_lists(fn, rest)]
        CLI(
            COMMANDS,
            args=with_preset_sections(args),
            prog="planlm",
            description="planlm: planner-conditioned language modeling (writing actions, planners, action adapters).",
            as_positional=True,
            exit_on_error=False,
        )
    except PlanlmError as e:
        print(f"planlm: error: {e}", file=sys.stderr)
        return 2
    except ArgumentError as e:  # bad options or --config file: one line, not a usage dump
        msg = " ".join(str(e).split())
        print(f"planlm: error: {msg[:300]} (see `planlm <stage> --help`)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("planlm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `planlm actions show ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
