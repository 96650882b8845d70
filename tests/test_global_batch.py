"""The global batch of an optimizer step is exactly --optim.batch_size on any device count and accumulation, or the
run is refused in one line naming the counts that work; step counts (and so unfreeze points and schedules) are in
optimizer steps of that global batch. The real check runs 3 gloo processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from finetune_env import cli_args, make_env
from planlm.cli import main
from planlm.train.trainer import global_batch_problems


def test_an_uneven_split_is_refused_with_the_counts_that_work():
    assert global_batch_problems(6, 1, 3) == [] and global_batch_problems(12, 2, 3) == []
    (line,) = global_batch_problems(32, 1, 3)
    assert "32" in line and "3 process(es)" in line and "1, 2, 4, 8, 16, 32" in line
    (line,) = global_batch_problems(32, 2, 64)  # the case where "halfway" never unfroze
    assert "1, 2, 4, 8, 16" in line and "multiple of 128" in line
    assert global_batch_problems(32, 1, None) == []  # devices "auto": checked by the loop once Lightning knows


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_env(tmp_path_factory.mktemp("global-batch"), n_articles=12, lm_dropout=0.0)


def test_finetune_refuses_a_batch_that_three_devices_cannot_share(env, tmp_path, capsys):
    argv = cli_args(env, tmp_path / "out", "--trainer.strategy", "ddp", "--trainer.devices", "3",
                    "--optim.batch_size", "8", "--optim.max_steps", "2")
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "does not split evenly over 3 process(es)" in err[0], err
    assert not (tmp_path / "out").exists()


def test_three_gloo_processes_take_exactly_the_global_batch(env, tmp_path):
    """Batch 12 over 3 processes x 2 accumulation steps: micro-batches of 2, and one epoch is ceil(windows / 12)
    optimizer steps, the count every schedule is computed in (before, a batch the devices could not share shrank
    every step's batch and ended the epoch early)."""
    out = tmp_path / "ddp"
    argv = cli_args(env, out, "--trainer.strategy", "ddp", "--trainer.devices", "3", "--optim.batch_size", "12",
                    "--optim.accumulate", "2", "--recipe.selection", "soft", "--recipe.planner_unfreeze", "0.5",
                    "--windows.max_val_windows", "6", "--checkpoint_every", "1000")
    done = subprocess.run([sys.executable, "-m", "planlm.cli", *argv], capture_output=True, text=True, timeout=600,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["optimizer_steps"] == math.ceil(counts["train_windows"] / 12) >= 2
