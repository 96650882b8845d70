"""A tiny, fully offline finetune setting shared by the training-loop tests: synthetic corpus, tiny GPT-2, planner."""

from __future__ import annotations

from pathlib import Path

from helpers import synthetic_prepared, tiny_lm, tiny_planner


def make_env(root: Path, n_articles: int = 20, lm_dropout: float = 0.1) -> dict:
    corpus = synthetic_prepared(root / "prep", n_articles=n_articles)
    return {
        "root": root,
        "corpus": corpus,
        "prepared": str(root / "prep"),
        "lm": tiny_lm(root / "lm", corpus.texts, dropout=lm_dropout),
        "planner": tiny_planner(root / "planner", corpus),
    }


def cli_args(env: dict, out: Path, *extra: str) -> list[str]:
    """`planlm finetune` arguments for a small deterministic CPU run (windows of 32, batch 4)."""
    return [
        "finetune", "--prepared", env["prepared"], "--lm", env["lm"], "--planner", env["planner"], "--out", str(out),
        "--windows.context_length", "32", "--windows.stride", "31", "--optim.batch_size", "4", "--optim.lr", "1e-3",
        "--trainer.accelerator", "cpu", "--trainer.progress_bar", "false", "--trainer.log_every_n_steps", "1",
        *extra,
    ]
