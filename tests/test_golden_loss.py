"""Golden-loss test: a deterministic 20-step tiny fine-tuning run reproduces the stored per-step training losses.

A change that moves these numbers changes what planlm computes (data order, alignment, selection, adapters, planner,
optimizer). When the change is intended, regenerate the file with
``PLANLM_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_loss.py`` and say why in the commit message.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from finetune_env import cli_args, make_env
from planlm.cli import main

GOLDEN = Path(__file__).parent / "golden" / "finetune_soft_tiny.json"
RECIPE = ["--recipe.selection", "soft", "--recipe.planner_unfreeze", "0.5", "--optim.max_steps", "20",
          "--trainer.deterministic", "true", "--seed", "0"]


def test_golden_loss(tmp_path):
    env = make_env(tmp_path)
    out = tmp_path / "run"
    assert main(cli_args(env, out, *RECIPE)) == 0
    rows = list(csv.DictReader(open(out / "logs" / "metrics.csv")))
    losses = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    got = [losses[s] for s in sorted(losses)]
    assert len(got) == 20
    if os.environ.get("PLANLM_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"recipe": RECIPE, "train_loss": got}, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())["train_loss"]
    assert got == pytest.approx(expected, rel=1e-4)
