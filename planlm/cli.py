"""The `planlm` command: one typed function per pipeline stage (DESIGN.md section 2), parsed by jsonargparse.

Each stage's docstring is its ``--help``; ``--config file.yaml`` and dotted overrides (``--trainer.lr 3e-4``) work
for every subcommand. Bad input raises :class:`planlm.errors.PlanlmError`, which ends here as one line on stderr and
exit status 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys

from planlm.errors import PlanlmError
from planlm.eval.evaluate import evaluate
from planlm.eval.generate import generate
from planlm.mtp_compare import mtp_compare
from planlm.myopia import LMBudget, myopia_dp, myopia_lm
from planlm.prepare import actions_show, prepare
from planlm.report import report
from planlm.run import run
from planlm.train.finetune import finetune
from planlm.train.planner import train_planner
from planlm.train.pretrain_lm import PRESETS as LM_PRESETS, pretrain_lm

# subcommand -> stage function; nested dicts are command groups (`planlm actions show`).
COMMANDS: dict = {
    "prepare": prepare,
    "actions": {"show": actions_show},
    "pretrain-lm": pretrain_lm,
    "train-planner": train_planner,
    "finetune": finetune,
    "evaluate": evaluate,
    "generate": generate,
    "report": report,
    "run": run,
    "mtp-compare": mtp_compare,
    "myopia": {"dp": myopia_dp, "lm": myopia_lm},
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


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import CLI, ArgumentError, set_parsing_settings

    from planlm.train.trainer import configure_progress_output

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv is None:  # the `planlm` program itself (not a caller's process): tqdm lines fit for a log off a terminal
        configure_progress_output()
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    try:
        CLI(
            COMMANDS,
            args=with_preset_sections(sys.argv[1:] if argv is None else [str(a) for a in argv]),
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
