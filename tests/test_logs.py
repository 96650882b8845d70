"""Logs that read well: off a terminal (CI, `planlm run > log`, nohup) training prints one line every
log_every_n_steps steps with the bar's figures, and tqdm bars print lines, never carriage-return refreshes."""

from __future__ import annotations

import io
import re
import sys

from finetune_env import cli_args, make_env
from planlm.cli import main
from planlm.train.trainer import LineProgress, TrainerConfig, _LineStream, progress_callback


def test_training_off_a_terminal_prints_one_line_per_n_steps(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stderr", _LineStream(sys.stderr))  # what `planlm` does off a terminal
    env = make_env(tmp_path, n_articles=12)
    argv = cli_args(env, tmp_path / "out", "--optim.max_steps", "4", "--windows.max_val_windows", "2",
                    "--trainer.progress_bar", "true", "--trainer.log_every_n_steps", "2")
    assert main(argv) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "\r" not in text
    steps = re.findall(r"^epoch \d+ batch \d+/\d+ step (\d+)/4 .*train/loss [\d.]+.*train/tok_s [\d.e+]+", text, re.M)
    assert steps and len(steps) <= 3, text  # every 2nd batch (and an epoch's last), not every step
    assert re.search(r"^validation at step 4: .*val/loss [\d.]+", text, re.M), text


def test_the_bar_stays_on_a_terminal(monkeypatch):
    from lightning.pytorch.callbacks import TQDMProgressBar

    import planlm.train.trainer as trainer

    monkeypatch.setattr(trainer, "on_terminal", lambda stream=None: True)
    assert isinstance(progress_callback(TrainerConfig()), TQDMProgressBar)
    monkeypatch.setattr(trainer, "on_terminal", lambda stream=None: False)
    assert isinstance(progress_callback(TrainerConfig(log_every_n_steps=7)), LineProgress)


def test_tqdm_off_a_terminal_writes_lines():
    from tqdm import tqdm

    buf = io.StringIO()
    for _ in tqdm(range(5), desc="embed", file=_LineStream(buf), mininterval=0, miniters=1, ascii=True):
        pass
    out = buf.getvalue()
    assert "\r" not in out
    lines = out.splitlines()
    assert lines[-1].startswith("embed: 100%") and "5/5" in lines[-1]
    assert all(line.startswith("embed:") for line in lines) and len(lines) >= 2
