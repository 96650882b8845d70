"""planlm inside other tools: EleutherAI's lm-evaluation-harness (``lm_eval``), the Hugging Face Hub (planlm/hub.py)
and Weights & Biases (planlm/train/trainer.py). Each third-party package is an optional extra, imported only here."""

from __future__ import annotations

import sys


def lm_eval_main(argv: list[str] | None = None) -> int:
    """``planlm-lm-eval``: the harness's ``lm_eval`` command (same arguments, same output) with ``--model planlm``
    registered (planlm/integrations/lm_eval.py); bad input, or the harness not installed, ends in one line and exit
    status 2."""
    from planlm.errors import PlanlmError

    try:
        # importing it registers the model; without lm-eval it raises one line naming the extra
        from planlm.integrations.lm_eval import harness_command

        cli_evaluate = harness_command()
        saved = sys.argv
        sys.argv = [saved[0] if argv is None else "planlm-lm-eval", *(saved[1:] if argv is None else argv)]
        try:  # the harness's command reads its arguments from sys.argv
            cli_evaluate()
        finally:
            sys.argv = saved
    except PlanlmError as e:
        print(f"planlm-lm-eval: error: {e}", file=sys.stderr)
        return 2
    return 0
