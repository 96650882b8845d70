"""The `planlm` command: one typed function per pipeline stage (DESIGN.md section 2), parsed by jsonargparse.

Each stage's docstring is its ``--help``; ``--config file.yaml`` and dotted overrides (``--trainer.lr 3e-4``) work
for every subcommand. Bad input raises :class:`planlm.errors.PlanlmError`, which ends here as one line on stderr and
exit status 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from planlm.errors import PlanlmError

# subcommand -> "module:function"; nested dicts are command groups (`planlm actions show`).
COMMANDS: dict = {
    "prepare": "planlm.prepare:prepare",
    "actions": {"show": "planlm.prepare:actions_show"},
    "pretrain-lm": "planlm.train.pretrain_lm:pretrain_lm",
    "train-planner": "planlm.train.planner:train_planner",
    "finetune": "planlm.train.finetune:finetune",
    "evaluate": "planlm.eval.evaluate:evaluate",
    "generate": "planlm.eval.generate:generate",
    "report": "planlm.report:report",
    "run": "planlm.run:run",
}


def _resolve(spec: str) -> Callable:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def components(commands: dict = COMMANDS) -> dict:
    """The command table with every "module:function" resolved to its function."""
    return {k: components(v) if isinstance(v, dict) else _resolve(v) for k, v in commands.items()}


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import CLI, set_parsing_settings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    try:
        CLI(
            components(),
            args=argv,
            prog="planlm",
            description="planlm: planner-conditioned language modeling (writing actions, planners, action adapters).",
            as_positional=True,
        )
    except PlanlmError as e:
        print(f"planlm: error: {e}", file=sys.stderr)
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
