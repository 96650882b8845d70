"""Val-split sweeps of a `planlm run` preset's fine-tuning settings: how every preset departure is chosen (issue 27
item 1; the frozen-LM budget of issue 26), on the VAL split only. The test split is never read.

    python bench/sweep_val.py --preset quick --planner_lrs 1e-3,1e-4,1e-5 --seeds 0,1,2 --out /tmp/sweep-quick
    python bench/sweep_val.py --preset small-lm --lrs 1e-4,1e-3 --variants 'Fixed,Cornille PA' --out /tmp/sweep-sm
    python bench/sweep_val.py --preset default --steps 80,160 --lrs 1e-3,3e-3 --gates true,false --out /tmp/b26
    python bench/sweep_val.py --preset default --gates false --projection_inits zeros --out /tmp/b26   # W_A = 0
    python bench/sweep_val.py --preset default --planner bigram_prior --out /tmp/b26   # a planner at the bigram's level
    python bench/sweep_val.py --preset default --planner paper,bigram_prior+last2 --out /tmp/b27   # side by side

Every stage is planlm's own, with the preset's settings except the swept ones: ``prepare`` (shared by the seeds),
``pretrain-lm`` per seed when the preset has no pretrained LM, ``train-planner`` per seed, then ``finetune`` per
variant x steps x adapter rate x planner rate x gate x W_A initialisation (the combinations that can train), and
``evaluate --split val`` (the preset's protocol, every val article). Everything is written under ``--out`` and reused
when already there, so a sweep can be extended value by value. Per run it prints the fine-tuning loop's own val loss,
the val perplexity with planner-predicted actions and, for the variants that condition on per-sentence actions, with
the oracle actions (the val sentences' own k-means actions), the planner's val top-1 and the fine-tuning seconds; then
the mean over seeds, each against Fixed of the same budget and seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

from planlm.variants import VARIANTS

PLANNERS = ("paper", "bigram_prior", "bigram", "alpha<A>", "last<N>")
"""The planner names of ``--planner``, joined by ``+`` (``bigram_prior+last2``): paper = the paper's planner;
bigram_prior = with the action-bigram prior on its logits; bigram = the train split's action bigram alone (nothing
learned); alpha<A> = that bigram smoothed by A pseudo-counts per row (PlannerConfig.bigram_alpha); last<N> = the last
N context sentences' embeddings straight into its logits (PlannerConfig.last_sentences)."""


def planner_overrides(name: str) -> dict:
    """``"bigram_prior+last2"`` -> the PlannerConfig fields it sets; SystemExit naming the choices otherwise."""
    out = {}
    for part in name.split("+"):
        if part == "bigram_prior":
            out["bigram_prior"] = True
        elif part == "bigram":
            out["kind"] = "bigram"
        elif part.startswith("alpha") and part[5:].replace(".", "", 1).isdigit() and float(part[5:]) > 0:
            out["bigram_alpha"] = float(part[5:])
        elif part.startswith("last") and part[4:].isdigit() and int(part[4:]) > 0:
            out["last_sentences"] = int(part[4:])
        elif part != "paper":
            sys.exit(f"bench/sweep_val.py: unknown planner {name!r}; join names of {', '.join(PLANNERS)} with +")
    return out


def parse_list(text: str | None, cast=str) -> list:
    return [cast(x.strip()) for x in (text or "").split(",") if x.strip()]


def parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def run_name(variant: str, planner: str, budget: dict, default_planner_lr: float | None) -> str:
    """The run folder of one (variant, budget): the planner kind and a non-default planner rate only where they
    matter, so the folders of earlier sweeps are found again."""
    from planlm.stages.run import slug

    needs_planner = VARIANTS[variant].needs_planner
    tag = "" if planner == "paper" or not needs_planner else f"-{planner}"
    plr = "" if budget["planner_lr"] == default_planner_lr or not needs_planner else f"-plr{budget['planner_lr']:g}"
    precision = "" if budget["precision"] == "32-true" else f"-{budget['precision']}"
    init = "" if budget["projection_init"] == "xavier" else f"-proj{budget['projection_init']}"
    return (f"{slug(variant)}{tag}{plr}-s{budget['steps']}-lr{budget['lr']:g}-gate{int(budget['gate'])}{init}"
            f"-b{budget['batch']}{precision}")


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds per (budget, variant), each seed's change against Fixed of the same budget and seed."""
    keys = ("steps", "lr", "planner_lr", "gate", "projection_init", "batch", "precision")
    fixed = {(tuple(r[k] for k in keys), r["seed"]): r["val_ppl"] for r in rows if r["variant"] == "Fixed"}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        base = fixed[(tuple(r[k] for k in keys), r["seed"])]
        r["vs_fixed_pct"] = round(100 * (r["val_ppl"] / base - 1), 3)
        r["oracle_vs_fixed_pct"] = None if r["val_ppl_oracle"] is None else \
            round(100 * (r["val_ppl_oracle"] / base - 1), 3)
        groups.setdefault((tuple(r[k] for k in keys), r["variant"], r["planner"]), []).append(r)

    def mean(values):
        values = [v for v in values if v is not None]
        return round(statistics.fmean(values), 4) if values else None

    return [{**dict(zip(keys, budget)), "variant": variant, "planner": planner, "seeds": len(group),
             **{f: mean(r[f] for r in group) for f in ("val_loss", "val_ppl", "vs_fixed_pct", "val_ppl_oracle",
                                                       "oracle_vs_fixed_pct", "planner_top1", "finetune_s")}}
            for (budget, variant, planner), group in groups.items()]


def cell(value, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def main(argv=None) -> list[dict]:
    from planlm.stages.run import PRESETS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for every artifact of the sweep (reused)")
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS), help="the `planlm run` preset")
    ap.add_argument("--lm", default=None, help="the frozen base LM (default: the preset's; none = from scratch)")
    ap.add_argument("--data", default="builtin", help="corpus (planlm prepare --source.source)")
    ap.add_argument("--variants", default="Fixed,Uniform,Cornille PA,Soft / unfreeze halfway")
    ap.add_argument("--steps", default=None, help="fine-tuning steps, comma-separated (default: the preset's)")
    ap.add_argument("--lrs", default=None, help="adapter learning rates (default: the preset's)")
    ap.add_argument("--planner_lrs", default=None, help="the unfrozen planner's own rates (default: the preset's)")
    ap.add_argument("--gates", default=None, help="zero-initialised adapter gates: true, false or both")
    ap.add_argument("--projection_inits", default=None,
                    help="how the adapters' W_A start: xavier, zeros or both (zeros only with gate false)")
    ap.add_argument("--batch", type=int, default=None, help="windows per optimizer step (default: the preset's)")
    ap.add_argument("--planner", default="paper",
                    help="planners, comma-separated, each swept side by side: paper (the paper's planner), "
                         "bigram_prior (with the action-bigram prior on its logits), bigram (the train split's action "
                         "bigram, nothing learned), last<N> (the last N context sentences straight into its logits), "
                         "alpha<A> (that bigram smoothed by A pseudo-counts), or several joined by + "
                         "(bigram_prior+alpha64+last2)")
    ap.add_argument("--precision", default=None, choices=["32-true", "bf16-mixed"],
                    help="the LM's precision in fine-tuning and evaluation (default: the preset's, auto decided for "
                         "this CPU)")
    ap.add_argument("--seeds", default="0", help="seeds, comma-separated: each trains its own LM (from scratch), "
                                                 "planner and variants")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = parse_list(args.variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"bench/sweep_val.py: unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if "Fixed" not in names:
        names.insert(0, "Fixed")  # every change is against Fixed of the same budget

    from planlm.data.corpus import SourceConfig
    from planlm.data.encoders import EncoderConfig
    from planlm.eval.record import MetricsRecord
    from planlm.models.adapters import PROJECTION_INITS, projection_problem
    from planlm.stages.evaluate import evaluate
    from planlm.stages.finetune import finetune
    from planlm.stages.prepare import prepare
    from planlm.stages.pretrain_lm import pretrain_lm
    from planlm.stages.train_planner import train_planner
    from planlm.train.trainer import TrainerConfig

    p = PRESETS[args.preset].resolved("cpu")  # precision auto: bf16 only where this CPU computes it natively
    lm = args.lm if args.lm is not None else p.lm
    f = p.finetune
    grid = {
        "steps": parse_list(args.steps, int) or [f.max_steps],
        "lr": parse_list(args.lrs, float) or [f.lr],
        "planner_lr": parse_list(args.planner_lrs, float) or [f.planner_lr],
        "gate": [parse_bool(g) for g in parse_list(args.gates)] or [p.adapters.gate],
        "projection_init": parse_list(args.projection_inits) or [p.adapters.projection_init],
    }
    if bad := [i for i in grid["projection_init"] if i not in PROJECTION_INITS]:
        sys.exit(f"bench/sweep_val.py: unknown --projection_inits {', '.join(bad)}; choose from "
                 f"{', '.join(PROJECTION_INITS)}")
    budgets = [b for b in (dict(zip(grid, values)) for values in itertools.product(*grid.values()))
               if not projection_problem(b["projection_init"], b["gate"])]  # zeros behind a zero gate cannot train
    if not budgets:
        sys.exit("bench/sweep_val.py: --projection_inits zeros needs --gates false (a zero W_A behind a zero gate "
                 "never trains)")
    batch = args.batch or f.batch_size
    precision = args.precision or p.precision
    trainer = TrainerConfig(accelerator="cpu", progress_bar=False, logger="none")
    lm_trainer = dataclasses.replace(trainer, precision=precision)
    out = args.out
    prepared = prepare(out=str(out / "prepared"), source=SourceConfig(source=args.data, max_articles=p.max_articles),
                       encoder=EncoderConfig(name=p.encoder), num_actions=p.num_actions, preset=p.prepare_preset)
    planners = {name: dataclasses.replace(p.planner, context=p.planner_context, **planner_overrides(name))
                for name in parse_list(args.planner)}
    for name, config in planners.items():  # the sizes come from the prepared corpus: check the rest before training
        problems = dataclasses.replace(config, num_actions=2, encoder_dim=2 * config.n_heads).problems()
        if problems:
            sys.exit(f"bench/sweep_val.py: planner {name!r}: {'; '.join(problems)}")
    rows = []
    for seed in [int(s) for s in parse_list(args.seeds)]:
        home = out if seed == 0 else out / f"seed-{seed}"
        seed_lm = lm
        if seed_lm is None:  # the preset's small LM, pretrained from scratch per seed
            seed_lm = str(home / "lm")
            pretrain_lm(prepared=str(prepared), out=seed_lm, preset=p.lm_preset, optim=p.lm_pretraining_optim(),
                        seed=seed, trainer=trainer)
        planner_dirs = {}
        for kind, config in planners.items():
            planner_dirs[kind] = home / ("planner" if kind == "paper" else f"planner-{kind}")
            train_planner(prepared=str(prepared), out=str(planner_dirs[kind]), lm=seed_lm, planner=config,
                          optim=p.planner_optim, seed=seed, trainer=trainer)
        for budget in budgets:
            steps, lr, planner_lr = budget["steps"], budget["lr"], budget["planner_lr"]
            budget = {**budget, "batch": batch, "precision": precision}
            for name, kind in ((n, k) for n in names for k in (planners if VARIANTS[n].needs_planner else ["-"])):
                variant = VARIANTS[name]
                run = home / "runs" / run_name(name, kind, budget, f.planner_lr)
                # a variant without a planner has no planner rate: its run is the same for every swept planner rate
                optim = dataclasses.replace(f, lr=lr, planner_lr=planner_lr if variant.needs_planner else f.planner_lr,
                                            batch_size=batch, max_steps=steps)
                adapters = dataclasses.replace(p.adapters, gate=budget["gate"],
                                               projection_init=budget["projection_init"])
                t = time.time()
                finetune(prepared=prepared, lm=seed_lm, planner=planner_dirs.get(kind), out=run,
                         recipe=variant.recipe, optim=optim, adapters=adapters,
                         windows=p.finetune_windows(), trainer=lm_trainer, checkpoint_every=100_000, seed=seed)
                seconds = round(time.time() - t, 1)
                ppl = dataclasses.replace(p.perplexity(oracle=variant.needs_planner), precision=precision)
                ev = evaluate(run=run, split="val", ppl=ppl, variant=name, out=run / "evaluate-val")
                m = MetricsRecord.load(Path(ev) / "metrics.json")
                manifest = json.loads((run / "manifest.json").read_text())
                rows.append({**budget, "seed": seed, "planner": kind,
                             "variant": name, "val_loss": manifest["metrics"].get("val_loss"), "val_ppl": m.ppl,
                             "val_ppl_oracle": m.ppl_oracle, "planner_top1": m.planner_top1, "finetune_s": seconds})
                print(json.dumps(rows[-1]), flush=True)
    means = summarise(rows)
    if args.json:
        print(json.dumps({"runs": rows, "means": means}, indent=2))
        return means
    print(f"\nval split only; preset {args.preset}, LM {lm or 'pretrained from scratch per seed'}"
          f"{', frozen' if lm else ''}, planner {args.planner}; mean over seeds {args.seeds}")
    print("| steps | adapter lr | planner lr | gate | W_A init | batch | precision | variant | planner | seeds "
          "| val loss | val PPL | vs Fixed | val PPL, oracle | vs Fixed | planner top-1 | finetune s |")
    print("|---:|---:|---:|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in means:
        print(f"| {r['steps']} | {r['lr']:g} | {cell(r['planner_lr'], 'g')} | {str(r['gate']).lower()} | "
              f"{r['projection_init']} | "
              f"{r['batch']} | {r['precision']} | {r['variant']} | {r['planner']} | {r['seeds']} | "
              f"{cell(r['val_loss'], '.4f')} | {r['val_ppl']:.3f} | "
              f"{r['vs_fixed_pct']:+.2f}% | {cell(r['val_ppl_oracle'], '.3f')} | "
              f"{cell(r['oracle_vs_fixed_pct'], '+.2f', '%')} | {cell(r['planner_top1'], '.3f')} | "
              f"{r['finetune_s']:.0f} |")
    return means


if __name__ == "__main__":
    main()
