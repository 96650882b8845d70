"""`--trainer.logger wandb` (Weights & Biases), in offline mode: the run folder holds the run's config and the metrics
the csv logger has."""

from __future__ import annotations

import csv
import json
import sys

import pytest

pytest.importorskip("wandb")

from finetune_env import cli_args, make_env
from helpers import assert_refused

from planlm.cli import main


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_env(tmp_path_factory.mktemp("wandb"))


def offline_run(root):
    """The one offline run folder under ``root`` (wandb/offline-run-*/)."""
    runs = sorted(root.rglob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def test_finetune_logs_an_offline_wandb_run(env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "planlm-test")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = env["root"] / "wandb-run"
    assert main(cli_args(env, out, "--optim.max_steps", "3", "--trainer.logger", "wandb")) == 0
    run = offline_run(out / "logs")
    # wandb's offline record file (protobuf records, written by its service): the run's identity, its resolved config,
    # and the metrics the csv logger has, as the JSON values the service uploads on `wandb sync`
    record = next(run.glob("run-*.wandb")).read_bytes()
    for text in ("planlm-test", "Soft / unfreeze halfway / seed 0", "finetune", '"soft"', "planner_unfreeze",
                 "train/loss", "val/loss", "trainer/global_step"):
        assert text.encode() in record, text
    manifest = json.loads((out / "manifest.json").read_text())
    val_loss = manifest["metrics"]["val_loss"] if "metrics" in manifest else manifest["val_loss"]
    assert repr(float(val_loss))[:6].encode() in record  # the final val/loss, as logged


def test_csv_stays_as_it_was(env):
    out = env["root"] / "csv-run"
    assert main(cli_args(env, out, "--optim.max_steps", "2")) == 0
    with open(out / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train/loss") for r in rows) and not list(out.rglob("offline-run-*"))


def test_missing_wandb_names_the_extra(env, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert_refused(capsys, cli_args(env, env["root"] / "no-wandb", "--optim.max_steps", "1", "--trainer.logger",
                                    "wandb"), r"pip install 'planlm\[wandb\]'", env["root"])
