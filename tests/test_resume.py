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
from planlm.errors import PlanlmError

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
    saved = torch.load(ckpt, weights_only=False)
    step_at_kill = saved["global_step"]
    assert 0 < step_at_kill < full_steps
    # the trainable state only: the frozen base LM is rebuilt from --lm and recorded by its content hash
    assert not any(k.startswith("model.lm.") for k in saved["state_dict"])
    assert any(k.startswith("model.adapters.") for k in saved["state_dict"])
    assert len(saved["planlm"]["frozen_lm"]) == 16

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


def _module(env, train_lm: bool = False):
    from planlm.data.prepared import PreparedCorpus
    from planlm.stages.finetune import FinetuneConfig
    from planlm.train.loop import PlannedLMModule
    from planlm.train.recipe import RecipeConfig
    from planlm.train.start import initial_planned_lm
    from planlm.train.trainer import OptimConfig

    recipe = RecipeConfig(selection="soft", planner_unfreeze="0.5", train_lm=train_lm)
    cfg = FinetuneConfig(prepared=env["prepared"], lm=env["lm"], planner=env["planner"], recipe=recipe)
    model, _ = initial_planned_lm(cfg, PreparedCorpus.load(env["prepared"]))
    return PlannedLMModule(model, recipe, OptimConfig(), total_steps=10)


def test_a_checkpoint_holds_the_lm_only_when_it_trains_and_refuses_another_lm(env):
    module = _module(env)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("model.lm.") for k in checkpoint["state_dict"])
    # resuming puts the same frozen LM back, so Lightning's strict load sees every key
    module.on_load_checkpoint(checkpoint)
    assert checkpoint["state_dict"].keys() == module.state_dict().keys()
    # another LM at the same path: refused in one line, before any weight is loaded
    changed = {k: v for k, v in checkpoint.items()}
    changed["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("model.lm.")}
    other = _module(env)
    with torch.no_grad():
        next(other.model.lm.parameters()).add_(1.0)
    with pytest.raises(PlanlmError, match="content hash"):
        other.on_load_checkpoint(changed)
    trained = _module(env, train_lm=True)
    checkpoint = {"state_dict": trained.state_dict()}
    trained.on_save_checkpoint(checkpoint)
    assert any(k.startswith("model.lm.") for k in checkpoint["state_dict"]) and checkpoint["planlm"]["frozen_lm"] is None
