"""The `planlm` command: one typed function per pipeline stage (DESIGN.md section 2), parsed by jsonargparse.

Each stage's docstring is its ``--help``; ``--config file.yaml`` and dotted overrides (``--trainer.lr 3e-4``) work
for every subcommand. Bad input raises :class:`planlm.errors.PlanlmError`, which ends here as one line on stderr and
exit status 2.
"""

from __future__ import annotations

import os
import sys

from planlm.errors import PlanlmError
from planlm.eval.evaluate import evaluate
from planlm.eval.generate import generate
from planlm.mtp_compare import mtp_compare
from planlm.myopia import myopia_dp, myopia_lm
from planlm.prepare import actions_show, prepare
from planlm.report import report
from planlm.run import run
from planlm.train.finetune import finetune
from planlm.train.planner import train_planner
from planlm.train.pretrain_lm import pretrain_lm

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
            args=argv,
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
