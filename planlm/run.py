"""`planlm run`: the whole pipeline in one command, with presets (DESIGN.md section 2).

prepare -> pretrain-lm (only without --lm) -> train-planner -> finetune the paper's variants -> evaluate (test-split
perplexity with planner-predicted actions) -> a table in the layout of the paper's Table 1 (``OUT/results.md``,
``OUT/results.json``) -> ``planlm report`` (``OUT/report``). Every stage writes its own artifact under OUT and is
reused when it is already there with the same config, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

from planlm.artifacts import writes_artifact
from planlm.errors import raise_if_problems
from planlm.prepare import ActionsPresetName
from planlm.presets import load_presets
from planlm.train.pretrain_lm import LMPresetName
from planlm.train.trainer import OptimConfig, TrainerConfig
from planlm.variants import DEFAULT_VARIANTS, PAPER_PPL, VARIANT_GROUPS, VARIANTS, expand_variants

@dataclass
class RunPreset:
    """Sizes of every stage of `planlm run` (one preset per budget)."""

    max_articles: int | None = None
    """Corpus articles to read (None = all)."""
    prepare_preset: ActionsPresetName = "auto"
    """`planlm prepare --preset` (auto / small / paper)."""
    num_actions: int | None = None
    """K; None = chosen by the prepare preset."""
    encoder: str = "all-MiniLM-L6-v2"
    """Sentence encoder (paper: all-mpnet-base-v2)."""
    lm_preset: LMPresetName = "small-cpu"
    """`planlm pretrain-lm --preset` when no --lm is given."""
    lm_epochs: int | None = None
    """LM pretraining epochs (None = the LM preset's)."""
    lm_max_steps: int = -1
    """Cap on LM pretraining steps (-1 = the preset's epochs)."""
    planner_optim: OptimConfig = field(default_factory=lambda: OptimConfig(weight_decay=1e-4))
    """Planner NAP pretraining (paper: Adam 1e-4, weight decay 1e-4, batch 32, one epoch; a small corpus needs more
    than one epoch at 1e-4 gives)."""
    planner_context: Literal["paper", "causal"] = "paper"
    """Planner context mode (paper / causal)."""
    finetune: OptimConfig = field(default_factory=OptimConfig)
    """Fine-tuning optimisation (paper: Adam 1e-4, batch 32, one epoch)."""
    context_length: int = 128
    """Window length (paper: 128)."""
    eval_protocol: Literal["paper", "strided"] = "paper"
    """paper (stride 1, last token scored) or strided."""
    eval_stride: int | None = None
    """Stride of the strided protocol."""
    eval_max_articles: int | None = 1000
    """Test articles evaluated (paper: 1000)."""
    eval_max_tokens: int | None = None
    """Cap on scored tokens per perplexity."""
    eval_batch_size: int = 64
    """Windows per evaluation forward pass."""


# planlm/presets/run/*.yaml: quick (<= 3 minutes on a 2-core CPU), default (<= 15 minutes), paper (a GPU)
PRESETS: dict[str, RunPreset] = load_presets("run", RunPreset)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-").replace("--", "-")


def validate_run(preset: str, variants: list[str], lm: str | None) -> None:
    problems = []
    if preset not in PRESETS:
        problems.append(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        problems.append(f"unknown variants {unknown}; choose from {list(VARIANTS)} or the groups {list(VARIANT_GROUPS)}")
    if not variants:
        problems.append("--variants is empty")
    if lm is not None and not lm.strip():
        problems.append("--lm is empty; leave it unset to pretrain a small LM offline, or name a Hub model / folder")
    raise_if_problems(problems, "run")


def results_table(rows: list[dict]) -> str:
    """The paper's Table 1 layout: PPL (planner-predicted actions) and PPL relative to Fixed."""
    fixed = next((r["ppl"] for r in rows if r["variant"] == "Fixed"), None)
    lines = [
        "| variant | PPL | vs Fixed | planner top-1 | paper PPL (GPT-2, Wikipedia) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        rel = f"{100 * (r['ppl'] / fixed - 1):+.2f}%" if fixed else "-"
        top1 = f"{r['planner_top1']:.3f}" if r.get("planner_top1") is not None else "-"
        paper = f"{PAPER_PPL[r['variant']]:.2f}" if r["variant"] in PAPER_PPL else "-"
        lines.append(f"| {r['variant']} | {r['ppl']:.3f} | {rel} | {top1} | {paper} |")
    return "\n".join(lines) + "\n"


def no_nap_planner(variants: list[str], out: Path, prepared: str, lm: str, p: RunPreset, seed: int,
                   trainer: TrainerConfig, force: bool, timed) -> Path | None:
    """The planner of the "no NAP pretraining" rows, built once into OUT/planner-ntp (None when no variant asks):
    a fresh planner trained by next-token prediction through the frozen LM and the adapters fine-tuning starts from,
    with the fine-tuning budget and the planner's learning rate (`planlm train-planner --objective ntp`)."""
    from planlm.models.planner import PlannerConfig
    from planlm.train.planner import train_planner

    if not any(VARIANTS[name].planner_pretraining == "ntp" for name in variants):
        return None
    lr = p.finetune.lr if p.finetune.planner_lr is None else p.finetune.planner_lr
    optim = dataclasses.replace(p.finetune, lr=lr, planner_lr=None, accumulate=1)
    timed("train-planner (no NAP: next-token prediction)", train_planner, prepared=prepared,
          out=str(out / "planner-ntp"), lm=lm, planner=PlannerConfig(context=p.planner_context), objective="ntp",
          optim=optim, seed=seed, trainer=trainer, force=force)
    return out / "planner-ntp"


@writes_artifact()
def run(
    out: Path = Path("runs/demo"),
    data: str = "builtin",
    data_config: str | None = None,
    lm: str | None = None,
    preset: Literal["default", "paper", "quick"] = "default",  # planlm/presets/run/*.yaml (tests/test_presets.py)
    variants: list[str] | str = DEFAULT_VARIANTS,
    seed: int = 0,
    trainer: TrainerConfig = TrainerConfig(),
    force: bool = False,
) -> Path:
    """Run the whole pipeline and print the results table (the paper's Table 1 layout).

    With no arguments: the embedded English Wikipedia sample, a small GPT-2 pretrained from scratch (offline), and the
    variants Fixed, Uniform, Cornille OA, Cornille PA and Soft / unfreeze halfway (at most 15 minutes on a 2-core CPU).
    At paper scale, with Hub access: ``--lm gpt2 --data wikimedia/wikipedia --data_config 20231101.en --preset paper``.

    Args:
        out: folder for every artifact (prepared/, lm/, planner/, runs/<variant>/, report/) and the results table.
        data: corpus: builtin, a local .jsonl/.parquet/.txt/.xml(.bz2) file or folder, or a Hub dataset name.
        data_config: configuration of a Hub dataset (e.g. 20231101.en for wikimedia/wikipedia).
        lm: base causal LM (Hub name or folder); unset = pretrain a small GPT-2 from scratch on the corpus.
        preset: quick (<= 3 min smoke run), default (<= 15 min on a 2-core CPU), paper (the paper's settings, GPU).
        variants: which rows of the paper's Table 1 to train (names as in planlm.variants.VARIANTS), or groups of
            them: table1, no-nap, mix-sweep (Figure 4), default, all (planlm.variants.VARIANT_GROUPS); one name or
            group alone (``--variants mix-sweep``) or a list (``--variants '[Fixed, no-nap]'``).
        seed: seed of every stage.
        trainer: devices, strategy and precision for every training stage.
        force: rebuild every stage even when its artifact is up to date.

    Returns:
        The output folder.
    """
    variants = expand_variants([variants] if isinstance(variants, str) else list(variants))
    validate_run(preset, variants, lm)
    from planlm.data.corpus import SourceConfig
    from planlm.data.prepared import PreparedCorpus
    from planlm.eval.evaluate import PerplexityConfig, evaluate
    from planlm.models.planner import PlannerConfig
    from planlm.prepare import EncoderConfig, prepare
    from planlm.report import report
    from planlm.train.finetune import WindowConfig, finetune
    from planlm.train.planner import train_planner
    from planlm.train.pretrain_lm import lm_optim, pretrain_lm

    p = PRESETS[preset]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        print(f"\n=== planlm run: {name} ===", flush=True)
        t = time.time()
        result = fn(*args, **kwargs)
        times[name] = round(time.time() - t, 1)
        return result

    prepared = timed(
        "prepare", prepare, out=str(out / "prepared"),
        source=SourceConfig(source=data, hub_config=data_config, max_articles=p.max_articles),
        encoder=EncoderConfig(name=p.encoder), num_actions=p.num_actions, preset=p.prepare_preset, force=force,
    )
    if lm is None:
        optim = lm_optim(p.lm_preset, max_steps=p.lm_max_steps, **({"epochs": p.lm_epochs} if p.lm_epochs else {}))
        timed("pretrain-lm", pretrain_lm, prepared=str(prepared), out=str(out / "lm"), preset=p.lm_preset,
              optim=optim, seed=seed, trainer=trainer, force=force)
        lm = str(out / "lm")
    planner_dir = out / "planner"
    timed("train-planner", train_planner, prepared=str(prepared), out=str(planner_dir), lm=lm,
          planner=PlannerConfig(context=p.planner_context), optim=p.planner_optim, seed=seed, trainer=trainer,
          force=force)
    ntp_dir = no_nap_planner(variants, out, str(prepared), lm, p, seed, trainer, force, timed)

    rows = []
    for name in variants:
        run_dir = out / "runs" / slug(name)
        variant = VARIANTS[name]
        recipe = dataclasses.replace(variant.recipe)
        planner = (ntp_dir if variant.planner_pretraining == "ntp" else planner_dir) if variant.needs_planner else None
        timed(f"finetune {name}", finetune, prepared=prepared, lm=lm, planner=planner,
              out=run_dir, recipe=recipe, optim=p.finetune, windows=WindowConfig(context_length=p.context_length,
              stride=p.context_length - 1), trainer=trainer, seed=seed, force=force)
        ppl_cfg = PerplexityConfig(
            actions=["predicted"], protocols=[p.eval_protocol], context_length=p.context_length, stride=p.eval_stride,
            max_articles=p.eval_max_articles, max_tokens=p.eval_max_tokens, batch_size=p.eval_batch_size,
        )
        ev = timed(f"evaluate {name}", evaluate, run=run_dir, ppl=ppl_cfg, variant=name, force=force)
        m = json.loads((Path(ev) / "metrics.json").read_text())
        rows.append({
            "variant": name, "ppl": m["ppl"], "planner_top1": m.get("planner_top1"), "planner_top5": m.get("planner_top5"),
            "protocol": p.eval_protocol, "run": str(run_dir), "seed": seed,
        })

    table = results_table(rows)
    corpus = PreparedCorpus.load(prepared)
    header = (
        f"# planlm run ({preset} preset)\n\nCorpus: {data} ({len(corpus.texts)} articles, K={corpus.num_actions} actions, "
        f"encoder {corpus.encoder}); LM: {lm}; perplexity on the test split with planner-predicted actions, "
        f"{p.eval_protocol} protocol (windows of {p.context_length} tokens"
        + (f", stride {p.eval_stride}" if p.eval_protocol == "strided" else ", stride 1") + ").\n\n"
    )
    from planlm.artifacts import write_json_atomic

    (out / ".results.md.tmp").write_text(header + table + "\nStage times (s): " + json.dumps(times) + "\n")
    (out / ".results.md.tmp").replace(out / "results.md")
    write_json_atomic(out / "results.json", rows)
    timed("report", report, runs=out / "runs", out=out / "report", force=True)
    print("\n" + header + table)
    print(f"results: {out / 'results.md'}, {out / 'results.json'}; report: {out / 'report' / 'report.html'}")
    return out
