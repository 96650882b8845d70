"""The fine-tuning recipes tests/test_ddp.py trains under DDP, all in ONE launch of 2 gloo CPU processes.

    python tests/ddp_recipes.py ENV.json OUT_DIR

Lightning's launcher starts the second process once, for the first Trainer; every later Trainer of this script joins
the same two processes, so the recipes share one process start-up (imports dominate a tiny run's time).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_env import cli_args  # noqa: E402

COMMON = ["--optim.max_steps", "4", "--trainer.deterministic", "true"]
RECIPES = {
    # name: recipe arguments (each trained by one process and by DDP over 2 processes on the same global batch)
    "soft-halfway": ["--recipe.selection", "soft", "--recipe.planner_unfreeze", "0.5"],
    "st-step-schedule": ["--recipe.selection", "straight-through", "--recipe.planner_unfreeze", "step:2",
                         "--recipe.actions", "schedule"],
    "nap-immediate": ["--recipe.selection", "soft", "--recipe.planner_unfreeze", "immediate",
                      "--recipe.nap_weight", "0.5"],
    "hard-mix": ["--recipe.selection", "hard", "--recipe.actions", "mix", "--recipe.p_predicted", "0.5",
                 "--recipe.planner_unfreeze", "never"],
    # never reaches its unfreeze step: with weight decay, the planner must still come out bit-identical
    "soft-frozen-decay": ["--recipe.selection", "soft", "--recipe.planner_unfreeze", "step:100",
                          "--optim.weight_decay", "0.1"],
}
PLANNER_TRAINS = {"soft-halfway": True, "st-step-schedule": True, "nap-immediate": True, "hard-mix": False,
                  "soft-frozen-decay": False}
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]


def recipe_args(env: dict, out: Path, name: str, *extra: str) -> list[str]:
    return cli_args(env, out, *COMMON, *RECIPES[name], *extra)


if __name__ == "__main__":
    from planlm.cli import main

    env, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    for name in RECIPES:
        code = main(recipe_args(env, out / name, name, *DDP))
        if code:
            sys.exit(f"recipe {name}: exit {code}")
