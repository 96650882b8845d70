"""Token-efficiency of planned pretraining (`pretrain-lm --planned.*`) against the Fixed LM of the same architecture.

    python bench/planned_pretraining.py --prepared runs/prepared           # builtin corpus, small-cpu LMs, CPU
    python bench/planned_pretraining.py --prepared runs/prepared --json    # the same, as one JSON object

Stages, all through the real ones (nothing re-implemented): a plain `pretrain-lm` LM (reference row, and the
tokenizer the planner's paper context counts, see planlm.train.pretrain_lm.PlannedPretraining), a NAP planner
(`train-planner --lm` that LM), then `pretrain-lm --planned.actions` fixed / oracle / predicted with the same seed,
data order, windows, optimizer and step budget, each saving a snapshot every ``--snapshot_every`` steps. Every
snapshot's test perplexity (strided protocol, windows of the training length) is computed with
planlm.eval.perplexity, keeping per-article NLL sums, so that:

- (a) tokens the planned LM needs to reach the Fixed LM's final test perplexity (log-linear interpolation between
  snapshots; "not reached" when its curve stays above), as a fraction of the Fixed LM's tokens;
- (b) the PPL gap planned - Fixed at equal tokens (every snapshot);

both come with a paired bootstrap 95 % interval over test articles (the same resampled articles for every model and
snapshot). Fixed is the fair baseline: the same GPT-2 with the same adapters on one constant action, trained on the
same article windows in the same order; the plain LM trains on blocks that cross articles (no padding), so its
tokens per step differ, and it is reported as a reference only. The plot (PPL vs training tokens) goes to --plot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np


def ppl(nll: np.ndarray, tokens: np.ndarray, arts=None) -> float:
    """Token-weighted perplexity over articles ``arts`` (indices, repeats allowed; None = all)."""
    if arts is None:
        return float(np.exp(nll.sum() / tokens.sum()))
    return np.exp(nll[..., arts].sum(-1) / tokens[arts].sum())  # (...,)


def tokens_to_reach(target: float, tokens: np.ndarray, curve: np.ndarray) -> float:
    """First training-token count where ``curve`` (PPL at ``tokens``) reaches ``target``: log-linear interpolation
    between the snapshots around the crossing; NaN when it never does."""
    below = np.nonzero(curve <= target)[0]
    if not len(below):
        return float("nan")
    i = below[0]
    if i == 0:
        return float(tokens[0])
    lo, hi = np.log(curve[i - 1]), np.log(curve[i])
    f = (lo - np.log(target)) / (lo - hi)
    return float(tokens[i - 1] + f * (tokens[i] - tokens[i - 1]))


def interval(values) -> list[float] | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", default="runs/prepared", help="a `planlm prepare` folder (e.g. the builtin corpus)")
    ap.add_argument("--out", default="runs/planned-pretraining", help="where the LMs and planner are written")
    ap.add_argument("--preset", default="small-cpu", help="pretrain-lm preset (LM shape, lr, batch)")
    ap.add_argument("--vocab_size", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=240, help="optimizer steps of every LM (the same token budget)")
    ap.add_argument("--snapshot_every", type=int, default=40)
    ap.add_argument("--plain_steps", type=int, default=None,
                    help="steps of the plain LM (default: --steps; 1 = only the tokenizer the planner counts with)")
    ap.add_argument("--planner_steps", type=int, default=-1, help="NAP steps (-1: one epoch, the paper's)")
    ap.add_argument("--layers", default=None, help="conditioned layers, e.g. 1,2 (default: all but the first two)")
    ap.add_argument("--variants", default="oracle,predicted", help="planned actions besides fixed")
    ap.add_argument("--eval_actions", default="predicted,oracle", help="action sources evaluated on planned LMs")
    ap.add_argument("--max_articles", type=int, default=None, help="test articles evaluated (None = all)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", default="docs/planned_pretraining.png")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per snapshot load otherwise
    from planlm.data.prepared import PreparedCorpus
    from planlm.eval.perplexity import perplexity
    from planlm.models.planner import PlannerConfig
    from planlm.persist import load_planned_lm, load_tokenizer
    from planlm.train.start import AdapterConfig
    from planlm.stages.train_planner import train_planner
    from planlm.train.lm_pretraining import PRESETS, PlannedPretraining, lm_optim
    from planlm.stages.pretrain_lm import pretrain_lm
    from planlm.train.trainer import OptimConfig, TrainerConfig

    quiet = TrainerConfig(accelerator="cpu", progress_bar=False, logger="none")
    out, block = Path(args.out), PRESETS[args.preset].block_size
    corpus = PreparedCorpus.load(args.prepared)
    optim = lm_optim(args.preset, max_steps=args.steps)
    seconds = {}

    t = time.perf_counter()
    plain = pretrain_lm(args.prepared, out=str(out / "plain"), preset=args.preset, vocab_size=args.vocab_size,
                        optim=lm_optim(args.preset, max_steps=args.plain_steps or args.steps), seed=args.seed,
                        trainer=quiet)
    seconds["plain"] = time.perf_counter() - t
    t = time.perf_counter()
    nap = train_planner(args.prepared, out=str(out / "planner"), lm=str(out / "plain"), planner=PlannerConfig(),
                        optim=OptimConfig(weight_decay=1e-4, max_steps=args.planner_steps), seed=args.seed,
                        trainer=quiet)
    seconds["planner"] = time.perf_counter() - t

    adapters = AdapterConfig(layers=[int(x) for x in args.layers.split(",")] if args.layers else None)
    variants = ["fixed"] + [v for v in args.variants.split(",") if v]
    eval_actions = [a for a in args.eval_actions.split(",") if a]
    tokenizer = load_tokenizer(str(out / "plain"))
    curves: dict[str, dict] = {}  # name -> {"tokens": [...], "nll": (S, A), "count": (A,)}
    article_ids = None
    for v in variants:
        t = time.perf_counter()
        folder = out / f"planned-{v}"
        pretrain_lm(args.prepared, out=str(folder), preset=args.preset, vocab_size=args.vocab_size, optim=optim,
                    seed=args.seed, trainer=quiet,
                    planned=PlannedPretraining(actions=v, planner=None if v == "fixed" else str(out / "planner"),
                                               snapshot_every=args.snapshot_every, adapters=adapters))
        seconds[f"train {v}"] = time.perf_counter() - t
        t = time.perf_counter()
        snaps = json.loads((folder / "manifest.json").read_text())["counts"]["snapshots"]
        for actions in (["predicted"] if v == "fixed" else eval_actions):
            name = "Fixed" if v == "fixed" else f"{v} (eval {actions})"
            rows = []
            for s in snaps:
                model = load_planned_lm(folder / "snapshots" / f"step-{s['step']:06d}")
                r = perplexity(model, corpus, tokenizer, "test", actions, "strided", block,
                               max_articles=args.max_articles, progress=False)
                record = r.by_article(corpus.sentence_article)  # per-article NLL sums and token counts
                ids, nll = np.asarray(record["article_ids"]), np.asarray(record["nll_sum"])
                count = np.asarray(record["tokens"], dtype=np.float64)
                if article_ids is None:
                    article_ids = ids
                assert np.array_equal(ids, article_ids)  # the same scored articles for every model (paired)
                rows.append(nll)
            curves[name] = {"tokens": np.array([s["tokens"] for s in snaps], dtype=np.float64),
                            "steps": [s["step"] for s in snaps], "nll": np.stack(rows), "count": count}
        seconds[f"eval {v}"] = time.perf_counter() - t

    result = summarize(curves, args.bootstrap, args.seed)
    result.update(command="python bench/planned_pretraining.py " + " ".join(argv if argv is not None
                                                                           else sys.argv[1:]),
                  preset=args.preset, steps=args.steps, test_articles=int(len(article_ids)),
                  test_tokens=int(curves["Fixed"]["count"].sum()), plain_steps=args.plain_steps or args.steps,
                  plain_lm_val_perplexity=plain["val_perplexity"],
                  planner_top1=nap["planner"]["top1"], planner_unigram_top1=nap["unigram"]["top1"],
                  seconds={k: round(v, 1) for k, v in seconds.items()}, uptime=os.getloadavg())
    if args.plot:
        plot(curves, result, Path(args.plot))
    print(json.dumps(result, indent=2) if args.json else table(result))
    return result


def summarize(curves: dict, n_boot: int, seed: int) -> dict:
    """(a) and (b) for every planned curve against Fixed, with paired article-bootstrap 95 % intervals."""
    rng = np.random.default_rng(seed)
    fixed = curves["Fixed"]
    a = fixed["nll"].shape[1]
    boots = [rng.integers(0, a, a) for _ in range(n_boot)]  # the same resampled articles for every model (paired)
    final_fixed = ppl(fixed["nll"][-1], fixed["count"])
    out = {"fixed_final_ppl": final_fixed, "fixed_tokens": float(fixed["tokens"][-1]), "curves": {}, "rows": []}
    for name, c in curves.items():
        curve = np.array([ppl(n, c["count"]) for n in c["nll"]])
        out["curves"][name] = {"tokens": c["tokens"].tolist(), "steps": c["steps"], "ppl": curve.tolist()}
        if name == "Fixed":
            continue
        assert np.array_equal(c["tokens"], fixed["tokens"])  # same windows, same order: equal tokens per snapshot
        reach = tokens_to_reach(final_fixed, c["tokens"], curve)
        gap = curve - np.array([ppl(n, fixed["count"]) for n in fixed["nll"]])  # (S,) at equal tokens
        boot_reach, boot_gap = [], []
        for arts in boots:
            f_curve = ppl(fixed["nll"], fixed["count"], arts)  # (S,)
            p_curve = ppl(c["nll"], c["count"], arts)
            boot_reach.append(tokens_to_reach(f_curve[-1], c["tokens"], p_curve) / fixed["tokens"][-1])
            boot_gap.append(p_curve - f_curve)
        boot_gap = np.stack(boot_gap)  # (n_boot, S)
        reached = np.isfinite(boot_reach)
        out["rows"].append({
            "model": name, "final_ppl": float(curve[-1]),
            "tokens_to_fixed_final": reach, "token_fraction": reach / fixed["tokens"][-1],
            "token_fraction_ci": interval(boot_reach), "reached_in_bootstrap": float(np.mean(reached)),
            "gap_at_equal_tokens": gap.tolist(),
            "gap_ci": [interval(boot_gap[:, i]) for i in range(len(gap))],
        })
    return out


def table(r: dict) -> str:
    lines = [f"Fixed LM: final test PPL {r['fixed_final_ppl']:.2f} after {r['fixed_tokens']:.0f} training tokens "
             f"({r['test_articles']} test articles, {r['test_tokens']} tokens)", "",
             "| model | final PPL | final gap vs Fixed [95% CI] | tokens to Fixed's final PPL (fraction) [95% CI] |",
             "|---|---|---|---|"]
    for row in r["rows"]:
        ci = row["gap_ci"][-1]
        frac, fci = row["token_fraction"], row["token_fraction_ci"]
        reach = "not reached" if not math.isfinite(frac) else f"{row['tokens_to_fixed_final']:.0f} ({frac:.2f})"
        fci_s = f"[{fci[0]:.2f}, {fci[1]:.2f}], reached in {100 * row['reached_in_bootstrap']:.0f}% of resamples" \
            if fci else "-"
        lines.append(f"| {row['model']} | {row['final_ppl']:.2f} | {row['gap_at_equal_tokens'][-1]:+.2f} "
                     f"[{ci[0]:+.2f}, {ci[1]:+.2f}] | {reach} {fci_s} |")
    lines += ["", "PPL gap planned - Fixed at equal tokens (95% CI):", "",
              "| tokens | " + " | ".join(row["model"] for row in r["rows"]) + " |",
              "|---|" + "---|" * len(r["rows"])]
    fixed = r["curves"]["Fixed"]
    for i, tok in enumerate(fixed["tokens"]):
        cells = [f"{row['gap_at_equal_tokens'][i]:+.2f} [{row['gap_ci'][i][0]:+.2f}, {row['gap_ci'][i][1]:+.2f}]"
                 for row in r["rows"]]
        lines.append(f"| {tok:.0f} (step {fixed['steps'][i]}) | " + " | ".join(cells) + " |")
    lines += ["", f"plain LM (blocks across articles, {r['plain_steps']} steps) val PPL "
              f"{r['plain_lm_val_perplexity']:.2f}; NAP planner top-1 "
              f"{r['planner_top1']:.3f} (unigram {r['planner_unigram_top1']:.3f}); seconds {r['seconds']}; "
              f"load {tuple(round(x, 1) for x in r['uptime'])}"]
    return "\n".join(lines)


def plot(curves: dict, r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, c in r["curves"].items():
        ax.plot(c["tokens"], c["ppl"], marker="o", label=name, lw=2.2 if name == "Fixed" else 1.5)
    ax.axhline(r["fixed_final_ppl"], color="gray", ls=":", lw=1, label="Fixed, final")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("test perplexity")
    ax.set_yscale("log")
    ax.set_title(f"Planned pretraining vs Fixed ({r['preset']}, {r['test_articles']} test articles)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
