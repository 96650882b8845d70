"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends with the same loss and weights as an
uninterrupted run (CPU, deterministic mode)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from finetune_env import cli_args, make_env
from planlm.cli import main

# Soft selection with the planner unfreezing a third into training and mixed oracle/predicted actions: the resumed
# run must restore data order, optimizer, RNG (LM dropout), the mixing masks and the unfreeze state.
RECIPE = [
    "--recipe.selection", "soft", "--recipe.actions", "mix", "--recipe.p_predicted", "0.5",
    "--recipe.planner_unfreeze", "0.4", "--optim.epochs", "2", "--trainer.deterministic", "true", "--seed", "3",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_env(tmp_path_factory.mktemp("resume"), n_articles=12)


@pytest.fixture(scope="module")
def full(env):
    assert main(cli_args(env, env["root"] / "full", *RECIPE, "--checkpoint_every", "1000")) == 0
    return json.loads((env["root"] / "full" / "manifest.json").read_text())


@pytest.mark.parametrize("kill_at", ["mid-epoch", "epoch-end"])
def test_sigkill_then_resume_matches_uninterrupted(env, full, kill_at):
    root = env["root"]
    full_steps = full["counts"]["optimizer_steps"]
    # The run is killed right after its first checkpoint: step 2 (mid-epoch) or the last step of epoch 1 (of 2).
    every = 2 if kill_at == "mid-epoch" else full_steps // 2
    recipe = [*RECIPE, "--checkpoint_every", str(every)]
    killed = root / f"killed-{kill_at}"
    ckpt = root / f"killed-{kill_at}.work" / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, "-m", "planlm.cli", *cli_args(env, killed, *recipe)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run ended before its first checkpoint: nothing to resume from"
    assert not killed.exists(), "a killed run must not leave a half-written artifact"
    step_at_kill = torch.load(ckpt, weights_only=False)["global_step"]
    assert 0 < step_at_kill < full_steps

    assert main(cli_args(env, killed, *recipe, "--resume", "true")) == 0
    full_m = full
    resumed_m = json.loads((killed / "manifest.json").read_text())
    assert resumed_m["counts"]["optimizer_steps"] == full_steps
    for key in ("train_loss", "val_loss"):
        assert resumed_m["metrics"][key] == pytest.approx(full_m["metrics"][key], rel=1e-6)
    for name in ("adapters.safetensors", "planner.safetensors"):
        a, b = load_file(str(root / "full" / name)), load_file(str(killed / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7)
    # The planner did train (it unfroze a third of the way in), so its weights prove the unfreeze state resumed too.
    start = load_file(f"{env['planner']}/planner.safetensors")
    assert any(not torch.equal(start[k], a[k]) for k in start)


def test_resume_without_checkpoint_is_a_clear_error(env, capsys):
    assert main(cli_args(env, env["root"] / "never-ran", "--resume", "true")) == 2
    assert "--resume true but" in capsys.readouterr().err
