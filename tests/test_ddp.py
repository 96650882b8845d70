"""Distributed training through Lightning: every fine-tuning recipe trains under DDP over 2 CPU processes (gloo) and
matches one process on the same global batch (the resumable sampler gives each rank its slice of the same global
batch; DDP averages the gradients). The recipes are in tests/ddp_recipes.py and share one 2-process launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddp_recipes import DDP, PLANNER_TRAINS, RECIPES, recipe_args
from finetune_env import cli_args, make_env
from planlm.cli import main

LR = 1e-3  # finetune_env's learning rate


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # No dropout: ranks draw their own dropout masks, so only a dropout-free LM can match one process.
    env = make_env(tmp_path_factory.mktemp("ddp"), lm_dropout=0.0)
    root = env["root"]
    paths = {k: env[k] for k in ("prepared", "lm", "planner")}
    (root / "env.json").write_text(json.dumps(paths))
    cmd = [sys.executable, str(Path(__file__).with_name("ddp_recipes.py")), str(root / "env.json"), str(root / "ddp")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ})
    # rank 0's traceback ends the output when the other rank failed first: show that rank's lines too
    others = [line for line in done.stderr.splitlines() if not line.startswith("[rank0]")]
    assert done.returncode == 0, "\n".join(others)[-3000:] + "\n...\n" + done.stderr[-1500:]
    return env


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_under_ddp_matches_single_process(runs, name):
    root = runs["root"]
    assert main(recipe_args(runs, root / "single" / name, name)) == 0
    single_dir, ddp_dir = root / "single" / name, root / "ddp" / name
    for file in ("adapters.safetensors", "planner.safetensors"):
        if not (single_dir / file).exists():
            continue
        a, b = load_file(str(single_dir / file)), load_file(str(ddp_dir / file))
        # DDP averages per-rank mean losses, one process takes the mean over all tokens (and NAP's mean over all
        # table sentences; a sentence whose windows sit on both ranks counts on both): they differ a little, and
        # Adam turns a tiny gradient difference on a near-zero gradient into a full step of size lr. So: almost
        # every weight agrees tightly, and none by more than a few Adam steps.
        close = torch.cat([torch.isclose(b[k], a[k], rtol=2e-3, atol=2e-4).flatten() for k in a])
        # NAP's per-rank means weigh the shared sentences differently: its planner agrees less tightly.
        least = 0.9 if name == "nap-immediate" and file == "planner.safetensors" else 0.98
        assert close.float().mean() >= least, (file, close.float().mean())
        for k in a:
            assert (b[k] - a[k]).abs().max() <= 3 * LR, (file, k)
    single = json.loads((single_dir / "manifest.json").read_text())["metrics"]
    ddp = json.loads((ddp_dir / "manifest.json").read_text())["metrics"]
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], rel=1e-3)
    start = load_file(f"{runs['planner']}/planner.safetensors")
    for trained in (load_file(str(single_dir / "planner.safetensors")), load_file(str(ddp_dir / "planner.safetensors"))):
        changed = [k for k in start if not torch.equal(start[k], trained[k])]
        if PLANNER_TRAINS[name]:
            assert changed, "the planner did not train"
        else:
            # A planner before its unfreeze step stays bit-identical: its gradients stay None (no Adam weight-decay
            # drift, no zero-gradient steps), in one process and under DDP.
            assert not changed, changed


def test_hard_selection_with_unfreeze_is_refused(runs, capsys):
    args = cli_args(runs, runs["root"] / "hard", "--recipe.selection", "hard", "--recipe.planner_unfreeze", "0.5")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "argmax gives the planner no gradient" in err and len(err.strip().splitlines()) == 1


def test_fsdp_on_cpu_is_refused(runs, capsys):
    args = cli_args(runs, runs["root"] / "fsdp", "--trainer.strategy", "fsdp", *DDP[2:])
    assert main(args) == 2
    assert "Lightning's FSDP has no CPU support" in capsys.readouterr().err
    assert not (runs["root"] / "fsdp").exists()
