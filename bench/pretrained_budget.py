"""Val loss per variant against the fine-tuning budget on a frozen pretrained LM: how the default preset's settings
were chosen (issue 26), on the VAL split only.

    python bench/pretrained_budget.py --out /tmp/budget                       # SmolLM2-135M, builtin corpus
    python bench/pretrained_budget.py --out /tmp/budget --steps 40,80 --lrs 1e-3,3e-3 --gates true,false
    python bench/pretrained_budget.py --out /tmp/budget --variants 'Fixed,Cornille PA' --json
    python bench/pretrained_budget.py --out /tmp/budget --planner bigram_prior   # the planner with the bigram prior

Every stage is planlm's own (``prepare`` with the small preset, ``train-planner`` with its context counted in the LM's
tokens, ``finetune`` per variant x steps x adapter rate x gate, ``evaluate --split val``), written under ``--out``
and reused when it is already there, so a sweep can be extended value by value. Per run it prints the fine-tuning
val loss (the loop's own, on at most 512 val windows), the val perplexity with planner-predicted actions and, for the
variants that condition on per-sentence actions, with the oracle actions (the val sentences' own k-means actions: the
ceiling a perfect planner would reach), each against Fixed of the same budget, and the fine-tuning seconds. The
test split is never read.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

from planlm.variants import VARIANTS

PLANNERS = ("paper", "bigram_prior", "bigram")


def parse_list(text: str, cast=str) -> list:
    return [cast(x.strip()) for x in text.split(",") if x.strip()]


def parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for every artifact of the sweep (reused)")
    ap.add_argument("--lm", default="smollm2-135m", help="the frozen base LM")
    ap.add_argument("--data", default="builtin", help="corpus (planlm prepare --source.source)")
    ap.add_argument("--variants", default="Fixed,Uniform,Cornille PA,Soft / unfreeze halfway")
    ap.add_argument("--steps", default="80", help="fine-tuning steps, comma-separated")
    ap.add_argument("--lrs", default="1e-3", help="adapter learning rates, comma-separated")
    ap.add_argument("--gates", default="true", help="zero-initialised adapter gates: true, false or both")
    ap.add_argument("--batch", type=int, default=8, help="windows of 128 tokens per optimizer step")
    ap.add_argument("--planner_lr", type=float, default=1e-5, help="the unfrozen planner's own rate")
    ap.add_argument("--eval_stride", type=int, default=64, help="strided val perplexity, windows of 128")
    ap.add_argument("--planner", choices=PLANNERS, default="paper",
                    help="paper: the paper's planner; bigram_prior: with the action-bigram prior on its logits; "
                         "bigram: the train split's action bigram (nothing learned)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = parse_list(args.variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"bench/pretrained_budget.py: unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if "Fixed" not in names:
        names.insert(0, "Fixed")  # every change is against Fixed of the same budget

    from planlm.data.corpus import SourceConfig
    from planlm.data.encoders import EncoderConfig
    from planlm.eval.perplexity import PerplexityConfig
    from planlm.eval.record import MetricsRecord
    from planlm.models.planner import PlannerConfig
    from planlm.stages.evaluate import evaluate
    from planlm.stages.finetune import finetune
    from planlm.stages.prepare import prepare
    from planlm.stages.run import PRESETS, slug
    from planlm.stages.train_planner import train_planner
    from planlm.train.start import AdapterConfig, WindowConfig
    from planlm.train.trainer import TrainerConfig

    preset = PRESETS["default"]
    trainer = TrainerConfig(accelerator="cpu", progress_bar=False, logger="none")
    out = args.out
    prepared = prepare(out=str(out / "prepared"), source=SourceConfig(source=args.data),
                       encoder=EncoderConfig(name=preset.encoder), preset=preset.prepare_preset)
    planner = out / ("planner" if args.planner == "paper" else f"planner-{args.planner}")
    config = PlannerConfig(kind="bigram" if args.planner == "bigram" else "transformer",
                           bigram_prior=args.planner == "bigram_prior")
    train_planner(prepared=str(prepared), out=str(planner), lm=args.lm, planner=config, optim=preset.planner_optim,
                  seed=args.seed, trainer=trainer)
    rows = []
    for steps, lr, gate in itertools.product(parse_list(args.steps, int), parse_list(args.lrs, float),
                                             [parse_bool(g) for g in parse_list(args.gates)]):
        budget = {"steps": steps, "lr": lr, "gate": gate, "batch": args.batch}
        for name in names:
            variant = VARIANTS[name]
            tag = "" if args.planner == "paper" or not variant.needs_planner else f"-{args.planner}"
            run = out / "runs" / f"{slug(name)}{tag}-s{steps}-lr{lr:g}-gate{int(gate)}-b{args.batch}"
            optim = dataclasses.replace(preset.finetune, lr=lr, planner_lr=args.planner_lr, batch_size=args.batch,
                                        max_steps=steps)
            t = time.time()
            finetune(prepared=prepared, lm=args.lm, planner=planner if variant.needs_planner else None, out=run,
                     recipe=variant.recipe, optim=optim, windows=WindowConfig(context_length=128, stride=127),
                     adapters=AdapterConfig(gate=gate), trainer=trainer, checkpoint_every=100_000, seed=args.seed)
            seconds = round(time.time() - t, 1)
            ppl = PerplexityConfig(actions=["predicted", "oracle"] if variant.needs_planner else ["predicted"],
                                   protocols=["strided"], context_length=128, stride=args.eval_stride, batch_size=16)
            ev = evaluate(run=run, split="val", ppl=ppl, variant=name, out=run / "evaluate-val")
            m = MetricsRecord.load(Path(ev) / "metrics.json")
            manifest = json.loads((run / "manifest.json").read_text())
            rows.append({**budget, "planner": args.planner if variant.needs_planner else "-", "variant": name,
                         "val_loss": manifest["metrics"].get("val_loss"),
                         "val_ppl": m.ppl, "val_ppl_oracle": m.ppl_oracle, "finetune_s": seconds})
            print(json.dumps(rows[-1]), flush=True)
    fixed = {(r["steps"], r["lr"], r["gate"]): r["val_ppl"] for r in rows if r["variant"] == "Fixed"}
    for r in rows:
        base = fixed[(r["steps"], r["lr"], r["gate"])]
        r["vs_fixed_pct"] = round(100 * (r["val_ppl"] / base - 1), 2)
        oracle = r["val_ppl_oracle"]
        r["oracle_vs_fixed_pct"] = None if oracle is None else round(100 * (oracle / base - 1), 2)
    if args.json:
        print(json.dumps(rows, indent=2))
        return rows
    print(f"\nval split only; LM {args.lm} frozen, batch {args.batch} x 128, planner {args.planner}, "
          f"planner_lr {args.planner_lr:g}")
    print("| steps | adapter lr | gate | planner | variant | val loss | val PPL | vs Fixed | val PPL, oracle | vs Fixed "
          "| s |")
    print("|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        oracle = "- | -" if r["val_ppl_oracle"] is None else \
            f"{r['val_ppl_oracle']:.3f} | {r['oracle_vs_fixed_pct']:+.2f}%"
        print(f"| {r['steps']} | {r['lr']:g} | {str(r['gate']).lower()} | {r['planner']} | {r['variant']} | "
              f"{r['val_loss']:.4f} | {r['val_ppl']:.3f} | {r['vs_fixed_pct']:+.2f}% | {oracle} | {r['finetune_s']:.0f} |")
    return rows


if __name__ == "__main__":
    main()
