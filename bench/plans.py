"""Multi-sentence plans (issue 16): test perplexity for planner horizons H and sampled plans M on one budget, with
the planner compute each costs, through the ordinary stages (prepare, pretrain-lm, train-planner, finetune, evaluate).

    python bench/plans.py --out runs/plans                       # H in {1, 2, 4} x M in {1, 4, 16}, builtin corpus
    python bench/plans.py --out runs/plans --json                # + the results as one JSON object
    python bench/plans.py --out runs/plans --plot docs/plans.png # + perplexity vs planner compute (matplotlib)
    python bench/plans.py --prepared runs/quick/prepared --lm runs/quick/lm   # reuse a `planlm run` corpus and LM

Every run shares the prepared corpus, the LM (a small GPT-2 pretrained from scratch, the ``quick`` run preset's
sizes) and the fine-tuning budget (same steps, batch, windows and seed); H picks the planner
(``train-planner --planner.horizon H``, NAP on every offset), M the conditioning (``finetune --recipe.plan_samples
M``: soft selection, planner unfrozen halfway, plans sampled at ``--temperature``). ``M = 0`` at H = 1 is the
paper's soft selection (the reference row). Perplexity: ``evaluate`` on the test split (strided protocol).

Planner compute: the planner's forward + backward per training step (plan sampling included, planner trainable as
after the unfreeze), timed side by side in this process, round-robin over the variants on the same fine-tuning
batches (median of ``--timing_steps``), also as a ratio to one step of the LM alone (Fixed). NAP top-1 / top-5 per
offset: each planner's validation metrics (teacher-forced, from train-planner) and its test metrics (evaluate).
Every stage reuses an up-to-date artifact in ``--out``, so a second call only re-times and re-tabulates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

REFERENCE = (1, 0)  # H = 1, M = 0: the paper's soft selection


def run_name(h: int, m: int) -> str:
    return f"h{h}-m{m}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/plans"), help="folder of every artifact")
    ap.add_argument("--horizons", default="1,2,4", help="planner horizons H")
    ap.add_argument("--samples", default="1,4,16", help="sampled plans M (0 = no sampling)")
    ap.add_argument("--temperature", type=float, default=1.0, help="plan sampling temperature")
    ap.add_argument("--rollout", default="context", help="planner rollout: context or decoder")
    ap.add_argument("--prepared", type=Path, default=None, help="a prepared corpus to use instead of preparing one")
    ap.add_argument("--lm", default=None, help="an LM folder (pretrain-lm) to use instead of pretraining one")
    ap.add_argument("--articles", type=int, default=40, help="builtin articles to prepare")
    ap.add_argument("--lm_steps", type=int, default=150, help="LM pretraining steps (small-cpu preset)")
    ap.add_argument("--planner_epochs", type=int, default=2, help="NAP epochs per planner")
    ap.add_argument("--planner_ff", type=int, default=2048, help="planner feed-forward width (paper: 2048)")
    ap.add_argument("--planner_batch", type=int, default=32, help="NAP target sentences per step (paper: 32)")
    ap.add_argument("--splits", default="test", help="splits to evaluate perplexity on (the first is plotted)")
    ap.add_argument("--steps", type=int, default=40, help="fine-tuning steps per run (the shared budget)")
    ap.add_argument("--batch", type=int, default=16, help="fine-tuning windows per step")
    ap.add_argument("--context_length", type=int, default=64, help="window length")
    ap.add_argument("--eval_tokens", type=int, default=6000, help="scored test tokens per perplexity")
    ap.add_argument("--timing_steps", type=int, default=5, help="timed planner steps per variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=None, help="write perplexity vs planner compute here (PNG)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args(argv)

    from planlm.data.corpus import SourceConfig
    from planlm.eval.perplexity import PerplexityConfig
    from planlm.stages.evaluate import evaluate
    from planlm.models.planner import PlannerConfig
    from planlm.data.encoders import EncoderConfig
    from planlm.stages.prepare import prepare
    from planlm.train.start import WindowConfig
    from planlm.stages.finetune import finetune
    from planlm.train.recipe import RecipeConfig
    from planlm.stages.train_planner import train_planner
    from planlm.train.lm_pretraining import lm_optim
    from planlm.stages.pretrain_lm import pretrain_lm
    from planlm.train.trainer import OptimConfig, TrainerConfig

    horizons = [int(h) for h in args.horizons.split(",")]
    samples = [int(m) for m in args.samples.split(",")]
    grid = [REFERENCE] + [(h, m) for h in horizons for m in samples if (h, m) != REFERENCE]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    trainer = TrainerConfig(accelerator="cpu", progress_bar=False, logger="csv")
    seconds: dict[str, float] = {}

    def timed(name, fn, **kwargs):
        t = time.time()
        result = fn(**kwargs)
        seconds[name] = round(time.time() - t, 1)
        return result

    prepared = args.prepared or timed("prepare", prepare, out=str(out / "prepared"),
                                      source=SourceConfig(source="builtin", max_articles=args.articles),
                                      encoder=EncoderConfig(name="all-MiniLM-L6-v2"), preset="small")
    lm = args.lm
    if lm is None:
        lm = str(out / "lm")
        timed("pretrain-lm", pretrain_lm, prepared=str(prepared), out=lm, preset="small-cpu",
              optim=lm_optim("small-cpu", max_steps=args.lm_steps), seed=args.seed, trainer=trainer)
    nap = {}
    for h in sorted({h for h, _ in grid}):
        nap[h] = timed(f"train-planner H={h}", train_planner, prepared=str(prepared), out=str(out / f"planner-h{h}"),
                       lm=lm, planner=PlannerConfig(horizon=h, rollout=args.rollout, ff=args.planner_ff),
                       optim=OptimConfig(lr=1e-3, weight_decay=1e-4, batch_size=args.planner_batch,
                                         epochs=args.planner_epochs), seed=args.seed,
                       trainer=trainer)
    rows = []
    for h, m in grid:
        name = run_name(h, m)
        recipe = RecipeConfig(selection="soft", planner_unfreeze="0.5", plan_samples=m,
                              plan_temperature=args.temperature)
        timed(f"finetune {name}", finetune, prepared=prepared, lm=lm, planner=out / f"planner-h{h}",
              out=out / "runs" / name, recipe=recipe, optim=OptimConfig(lr=1e-3, batch_size=args.batch,
              max_steps=args.steps), windows=WindowConfig(context_length=args.context_length,
              stride=args.context_length - 1), trainer=trainer, seed=args.seed)
        ppl = PerplexityConfig(actions=["predicted"], protocols=["strided"], context_length=args.context_length,
                               stride=args.context_length // 2, max_tokens=args.eval_tokens, batch_size=64)
        row = {"H": h, "M": m}
        for split in args.splits.split(","):
            ev = timed(f"evaluate {name} {split}", evaluate, run=out / "runs" / name, out=out / "eval" / split / name,
                       split=split, ppl=ppl, variant=f"H={h} M={m}")
            metrics = json.loads((Path(ev) / "metrics.json").read_text())
            row.setdefault("ppl", metrics["ppl"])  # the first split's: the plotted one
            row[f"ppl_{split}"] = metrics["ppl"]
            row[f"tokens_{split}"] = metrics["perplexity"]["strided"]["predicted"]["tokens"]
            row[f"nap_{split}"] = metrics.get("planner_offsets") or [metrics["planner"]]
        rows.append(row)

    timing = planner_timing(out, grid, prepared, lm, args)
    for r in rows:
        r.update(timing[(r["H"], r["M"])])
    result = {
        "grid": rows, "lm_step_ms": timing["lm_step_ms"],
        "val_nap": {h: {k: v for k, v in m.items() if k.startswith("planner")} for h, m in nap.items()},
        "seconds": seconds, "settings": {k: str(v) for k, v in vars(args).items()},
    }
    (out / "plans.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result, args.splits.split(",")))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        print(json.dumps(result, indent=2))
    return result


def planner_timing(out: Path, grid, prepared, lm, args) -> dict:
    """Planner forward + backward per fine-tuning step of each (H, M), side by side on the same batches, and one LM
    step alone (Fixed) for scale: ``{(H, M): {"planner_ms", "planner_x_lm"}, "lm_step_ms": ...}``."""
    from planlm.data.planner_inputs import PlannerInputs
    from planlm.data.prepared import PreparedCorpus
    from planlm.data.windows import WindowDataset
    from planlm.persist import load_planned_lm, load_tokenizer

    torch.manual_seed(args.seed)
    corpus = PreparedCorpus.load(prepared)
    tokenizer = load_tokenizer(lm)
    models = {}
    for h, m in grid:
        model = load_planned_lm(out / "runs" / run_name(h, m))
        model.train()
        model.planner.requires_grad_(True)  # as after the unfreeze: the plan's gradient is part of the cost
        models[(h, m)] = model
    some = next(iter(models.values()))
    ds = WindowDataset.from_corpus(corpus, tokenizer, "train", args.context_length, args.context_length - 1)
    collate = ds.collate_fn(PlannerInputs.from_config(corpus, some.planner.config, tokenizer=tokenizer),
                            pad_token_id=tokenizer.pad_token_id)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed)).tolist()
    batches = [collate([ds[i] for i in order[b * args.batch:(b + 1) * args.batch]])
               for b in range(args.timing_steps + 1)]

    def planner_step(model, batch):
        if model.config.plans:
            _, weights = model.plan(batch["planner_inputs"])  # (N, H, K)
        else:
            weights = torch.softmax(model.planner(**batch["planner_inputs"]) / model.config.temperature, -1)
        weights.square().sum().backward()  # any scalar: the backward through the rollout is what is timed
        model.planner.zero_grad(set_to_none=True)

    def lm_step(batch):  # the LM alone, frozen, as in Fixed: its forward + backward to nothing trainable but inputs
        lm_model = some.lm
        emb = lm_model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
        lm_model(inputs_embeds=emb, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()

    steps = {key: (lambda b, mdl=mdl: planner_step(mdl, b)) for key, mdl in models.items()}
    steps["lm"] = lm_step
    names = list(steps)
    times = {n: [] for n in names}
    for i, batch in enumerate(batches):
        for n in names[i % len(names):] + names[:i % len(names)]:  # round-robin, rotating start
            t = time.perf_counter()
            steps[n](batch)
            if i > 0:  # the first batch warms up
                times[n].append(time.perf_counter() - t)
    ms = {n: statistics.median(t) * 1000 for n, t in times.items()}
    result = {key: {"planner_ms": round(ms[key], 2), "planner_x_lm": round(ms[key] / ms["lm"], 3)} for key in models}
    result["lm_step_ms"] = round(ms["lm"], 1)
    return result


def markdown(result: dict, splits: list[str]) -> str:
    rows = result["grid"]
    ref = next(r for r in rows if (r["H"], r["M"]) == REFERENCE)
    first = splits[0]
    lines = ["| H | M | " + " | ".join(f"{s} PPL ({ref[f'tokens_{s}']} tokens)" for s in splits)
             + f" | {first} vs H=1 soft | planner ms / step | planner / LM step | {first} NAP top-1 / top-5 per offset |",
             "|---:|---:|" + "---:|" * len(splits) + "---:|---:|---:|---|"]
    for r in rows:
        nap = ", ".join(f"{o['top1']:.3f} / {o['top5']:.3f}" for o in r[f"nap_{first}"])
        m = "0 (soft)" if r["M"] == 0 else r["M"]
        ppls = " | ".join(f"{r[f'ppl_{s}']:.2f}" for s in splits)
        lines.append(f"| {r['H']} | {m} | {ppls} | {r['ppl'] - ref['ppl']:+.2f} | {r['planner_ms']:.1f} | "
                     f"{r['planner_x_lm']:.3f} | {nap} |")
    lines += ["", f"LM step alone (forward + backward): {result['lm_step_ms']} ms.", "",
              "| planner H | val NAP per offset: loss / top-1 / top-5 |", "|---:|---|"]
    for h, offsets in result["val_nap"].items():
        lines.append(f"| {h} | " + "; ".join(f"{name}: {o['loss']:.3f} / {o['top1']:.3f} / {o['top5']:.3f}"
                                              for name, o in offsets.items()) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for h in sorted({r["H"] for r in rows}):
        pts = sorted((r["planner_ms"], r["ppl"], r["M"]) for r in rows if r["H"] == h)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"H = {h}")
        for x, y, m in pts:
            ax.annotate(f"M={m}" if m else "soft", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("planner time per training step (ms, forward + backward)")
    ax.set_ylabel("perplexity")
    ax.set_title("Multi-sentence plans: perplexity vs planner compute")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
