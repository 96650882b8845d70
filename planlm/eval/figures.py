"""Figures of the paper's grid drawn from evaluate's ``metrics.json`` dicts (`planlm report` calls them).

- :func:`plot_mixing`: the paper's Figure 4, perplexity (and, where measured, plan-matching accuracy) against p,
  the probability of planner-predicted actions in hard-selection training (p = 0 is Cornille OA, p = 1 Cornille
  PA), with scheduled sampling (p rising from 0 to 1 over training) as a marker of its own at its mean p, 0.5.
- :func:`plot_planner_correct`: the paper's Appendix E, each variant's perplexity on the tokens of sentences whose
  planner action was right (= the oracle action) and on the others, with the share of tokens in each.

Each takes a list of metrics dicts (several seeds of one variant are averaged, with their standard deviation) and
returns the PNG's path, or None when the runs hold nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SCHEDULED_SAMPLING_P = 0.5
"""Where scheduled sampling sits on Figure 4's p axis: the mean of its linear 0 -> 1 schedule."""


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed): the one place planlm picks it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_mixing(metrics: list[dict], path: Path) -> Path | None:
    """Figure 4 against p (planner-predicted actions in training): the perplexity panel, one line for evaluation
    with predicted actions (``ppl``) and one with oracle actions (``ppl_oracle``) where recorded, and, where runs
    measured it (`planlm evaluate --generation true`), the plan-matching panel (``plan_matching``: how often a
    generated sentence's own action equals the one it was conditioned on); scheduled sampling
    (``training_actions == "schedule"``) as star markers at p = 0.5. None unless at least two values of p exist."""
    mixed = [m for m in metrics if _number(m.get("p_predicted"))]
    scheduled = [m for m in metrics if m.get("training_actions") == "schedule"]
    ps = sorted({float(m["p_predicted"]) for m in mixed})
    if len(ps) < 2:
        return None
    panels = [("perplexity", "Oracle / predicted action mixing (Figure 4)",
               (("ppl", "predicted actions at test", "o", "tab:blue"),
                ("ppl_oracle", "oracle actions at test", "s", "tab:orange")))]
    if any(_number(m.get("plan_matching")) for m in mixed + scheduled):
        panels.append(("plan-matching accuracy", "Generated sentences that follow their plan",
                       (("plan_matching", "generation, planner in the loop", "o", "tab:green"),)))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (ylabel, title, series) in zip(axes[0], panels):
        _draw_against_p(ax, mixed, scheduled, ps, series)
        ax.set(xlabel="p (fraction of planner-predicted actions in training)", ylabel=ylabel, title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_against_p(ax, mixed: list[dict], scheduled: list[dict], ps: list[float], series) -> None:
    """One panel of Figure 4: each ``(key, label, marker, color)`` of ``series`` as mean ± std over seeds at every p
    that has it, and scheduled sampling's value as a star at :data:`SCHEDULED_SAMPLING_P`."""
    for key, label, marker, color in series:
        points = [(p, _mean_std([m[key] for m in mixed if m["p_predicted"] == p and _number(m.get(key))]))
                  for p in ps if any(m["p_predicted"] == p and _number(m.get(key)) for m in mixed)]
        if points:
            ax.errorbar([p for p, _ in points], [s[0] for _, s in points], yerr=[s[1] for _, s in points],
                        marker=marker, color=color, capsize=3, label=label)
        values = [m[key] for m in scheduled if _number(m.get(key))]
        if values:
            mean, std = _mean_std(values)
            ax.errorbar([SCHEDULED_SAMPLING_P], [mean], yerr=[std], marker="*", markersize=14, color=color,
                        capsize=3, linestyle="none", label=f"scheduled sampling ({label})")


def planner_correct_rows(metrics: list[dict], actions: str = "predicted") -> list[dict]:
    """Appendix E per variant (in the order found): ``{"variant", "right", "wrong", "right_share"}`` with the
    perplexities as (mean, std) over seeds, from evaluate's ``by_planner_correct[actions]``."""
    per: dict[str, list[dict]] = {}
    for m in metrics:
        split = (m.get("by_planner_correct") or {}).get(actions)
        if isinstance(split, dict) and "right" in split and "wrong" in split:
            per.setdefault(m["variant"], []).append(split)
    rows = []
    for variant, splits in per.items():
        row = {"variant": variant}
        for part in ("right", "wrong"):
            values = [s[part]["ppl"] for s in splits if _number(s[part].get("ppl"))]
            row[part] = _mean_std(values) if values else None
        tokens = [(s["right"]["tokens"], s["wrong"]["tokens"]) for s in splits]
        row["right_share"] = float(np.mean([r / max(r + w, 1) for r, w in tokens]))
        rows.append(row)
    return rows


def plot_planner_correct(metrics: list[dict], path: Path, actions: str = "predicted") -> Path | None:
    """Appendix E: bars of each variant's PPL on the tokens of sentences the planner got right and wrong, labelled
    with the share of tokens each part holds. None unless some run recorded the split."""
    rows = planner_correct_rows(metrics, actions)
    if not rows:
        return None
    plt = pyplot()
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(rows)), 4))
    for offset, part, color in ((-0.2, "right", "tab:green"), (0.2, "wrong", "tab:red")):
        stats = [r[part] or (float("nan"), 0.0) for r in rows]
        bars = ax.bar(x + offset, [s[0] for s in stats], 0.4, yerr=[s[1] for s in stats], color=color, capsize=3,
                      label=f"planner {part}")
        shares = [r["right_share"] if part == "right" else 1 - r["right_share"] for r in rows]
        ax.bar_label(bars, labels=[f"{100 * s:.0f}%" for s in shares], fontsize=7)
    ax.set_xticks(x, [r["variant"] for r in rows], rotation=30, ha="right")
    ax.set(ylabel=f"perplexity ({actions} actions)",
           title="Perplexity by whether the planner's action was right (Appendix E; % = share of tokens)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
