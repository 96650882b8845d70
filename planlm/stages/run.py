"""`planlm run`: the whole pipeline in one command, with presets (DESIGN.md section 2).

prepare -> pretrain-lm (only without --lm) -> train-planner -> finetune the paper's variants -> evaluate (test-split
perplexity with planner-predicted actions) -> a table in the layout of the paper's Table 1 (``OUT/results.md``,
``OUT/results.json``) -> ``planlm report`` (``OUT/report``). Every stage writes its own artifact under OUT and is
reused when it is already there with the same config, so an interrupted run picks up where it stopped.

Seeds (``--seeds 0,1,2``, the paper's Appendix C): a seed sets the initialisation and data order of every training
stage (the LM pretrained from scratch, the planner, the fine-tuned variants) and, with
``--split_seed_follows true``, the article split too (``prepare --split.seed``; the k-means seed stays 0, so only
the split changes). One seed keeps the layout ``OUT/{prepared,lm,planner,runs/<variant>}``; several put each seed's
stages in ``OUT/seed-<s>/`` (the prepared corpus stays shared in ``OUT/prepared`` unless the split follows the
seed). The table gives each variant's mean over seeds, the paired bootstrap 95% interval of its change vs Fixed
(:func:`planlm.eval.intervals.paired_bootstrap`) and the report's Figure 5 plot (``OUT/report/seeds.png``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from planlm.artifacts import check_writable, writes_artifact
from planlm.errors import check_max_steps, raise_if_problems
from planlm.models.planner import PlannerConfig
from planlm.presets import load_presets
from planlm.stages.prepare import ActionsPresetName
from planlm.train.lm_pretraining import LMPresetName
from planlm.train.start import AdapterConfig
from planlm.train.trainer import OptimConfig, TrainerConfig
from planlm.variants import (
    DEFAULT_VARIANTS,
    VARIANT_GROUPS,
    VARIANTS,
    expand_variants,
)


@dataclass
class Fp32Budget:
    """What a preset cuts where ``precision: auto`` runs fp32 (a CPU that only emulates bf16, AVX2), whose LM steps
    cost about twice as long, so that the job keeps its time budget (None: the preset's own value)."""

    finetune_max_steps: int | None = None
    """Fine-tuning steps per variant."""
    eval_window_step: int | None = None
    """Score every this-many-th test window of each article (planlm.eval.perplexity, ``window_step``)."""
    finetune_val_windows: int | None = None
    """Val windows of the fine-tuning loop's own val loss."""

    def changes(self, p: RunPreset) -> dict:
        """The fields of ``p`` this budget replaces, with their new values."""
        out = {}
        if self.finetune_max_steps is not None:
            out["finetune"] = dataclasses.replace(p.finetune, max_steps=self.finetune_max_steps)
        for name in ("eval_window_step", "finetune_val_windows"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass
class RunPreset:
    """Sizes of every stage of `planlm run` (one preset per budget)."""

    lm: str | None = None
    """The base LM when --lm is unset: a Hub name, folder or GGUF checkpoint (``smollm2-135m``: the embedded
    SmolLM2-135M, frozen as the paper freezes GPT-2); None = a small GPT-2 pretrained from scratch on the corpus
    (``lm_preset``)."""
    variants: list[str] | None = None
    """The variants trained when --variants is unset (None = planlm.variants.DEFAULT_VARIANTS)."""
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
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    """The NAP planner's architecture and options (defaults: the paper's; its context mode is ``planner_context``),
    e.g. issue 27's option ``{bigram_prior: true, bigram_alpha: 64, last_sentences: 2}`` (docs/results.md)."""
    finetune: OptimConfig = field(default_factory=OptimConfig)
    """Fine-tuning optimisation (paper: Adam 1e-4, batch 32, one epoch)."""
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    """Where and how the action adapters attach (paper: every layer but the first two, no gate)."""
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
    eval_window_step: int = 1
    """Score every this-many-th test window of each article (1: all; a cut that keeps every article)."""
    eval_oracle: bool = False
    """Also evaluate every variant that conditions on per-sentence actions with the oracle actions (the test
    sentences' own k-means actions): the ceiling a perfect planner would reach, in the table next to its PPL."""
    finetune_val_windows: int | None = 512
    """Val windows the fine-tuning loop's own val loss is computed on (None = all)."""
    precision: Literal["32-true", "bf16-mixed", "auto"] = "32-true"
    """The LM's precision in fine-tuning and evaluation: "bf16-mixed" runs it under bfloat16 autocast (fp32
    weights), about 2x faster on a CPU with native bfloat16 support (AVX512; a departure, for budgets); "auto" is
    bf16-mixed where the device computes bfloat16 natively and 32-true elsewhere (a CPU with AVX2 only emulates it,
    17x slower than fp32 there: bench/precision.py, :func:`native_bf16`). ``--trainer.precision`` other than
    32-true wins for the training stages."""
    fp32_budget: Fp32Budget = field(default_factory=Fp32Budget)
    """The cuts ``precision: auto`` makes where it runs fp32, to keep the preset's time budget
    (``planlm run --fp32_budget false`` runs the preset's own steps and windows in fp32)."""

    def resolved(self, accelerator: str = "auto", fp32_budget: bool = True) -> RunPreset:
        """This preset with ``precision: auto`` decided for ``accelerator`` (what the manifests then record), and,
        where that is fp32, its ``fp32_budget`` cuts applied (unless ``fp32_budget`` is False)."""
        if self.precision != "auto":
            return self
        if native_bf16(accelerator):
            return dataclasses.replace(self, precision="bf16-mixed")
        return dataclasses.replace(self, precision="32-true", **(self.fp32_budget.changes(self) if fp32_budget else {}))

    # ---- the stage settings every caller of the preset builds the same way (planlm run, bench/sweep_val.py) --------
    def lm_pretraining_optim(self):
        """`pretrain-lm`'s optimisation when the preset has no pretrained LM."""
        from planlm.train.lm_pretraining import lm_optim

        return lm_optim(self.lm_preset, max_steps=self.lm_max_steps,
                        **({"epochs": self.lm_epochs} if self.lm_epochs else {}))

    def finetune_windows(self):
        """The fine-tuning windows: ``context_length`` tokens, consecutive windows sharing one token, the loop's own
        val loss on at most ``finetune_val_windows`` windows."""
        from planlm.train.start import WindowConfig

        return WindowConfig(context_length=self.context_length, stride=self.context_length - 1,
                            max_val_windows=self.finetune_val_windows)

    def perplexity(self, oracle: bool):
        """The evaluation's perplexity settings; ``oracle``: also with the oracle actions."""
        from planlm.eval.perplexity import PerplexityConfig

        return PerplexityConfig(
            actions=["predicted", "oracle"] if oracle else ["predicted"], protocols=[self.eval_protocol],
            context_length=self.context_length, stride=self.eval_stride, max_articles=self.eval_max_articles,
            max_tokens=self.eval_max_tokens, batch_size=self.eval_batch_size, precision=self.precision,
            window_step=self.eval_window_step)


def native_bf16(accelerator: str = "auto") -> bool:
    """Whether bfloat16 matrix products run natively where ``accelerator`` ("cpu", "gpu"/"cuda" or "auto": a GPU
    when there is one) puts the LM: a CUDA device with bf16 support, or a CPU that oneDNN runs bfloat16 on (AVX512
    and later). On an AVX2-only CPU bf16 autocast is emulated and slower than fp32, so ``precision: auto`` keeps fp32
    there."""
    import torch

    if accelerator in ("gpu", "cuda") or accelerator == "auto" and torch.cuda.is_available():
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    supported = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(supported()) if supported is not None else False
    except RuntimeError:  # a build without oneDNN
        return False


# planlm/presets/run/*.yaml: default (the frozen SmolLM2-135M, <= 30 minutes on a 2-core CPU), small-lm (a small
# GPT-2 from scratch, goal <= 15 minutes: 19 on 2 AVX2 cores), quick (<= 3 minutes), paper (a GPU)
PRESETS: dict[str, RunPreset] = load_presets("run", RunPreset)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-").replace("--", "-")


def parse_seeds(seeds: list[int] | str) -> list[int]:
    """``"0,1,2"`` (or ``[0, 1, 2]``, or ``"3"``) -> ``[0, 1, 2]``; ValueError unless distinct integers >= 0."""
    values = [int(x) for x in seeds.replace(",", " ").split()] if isinstance(seeds, str) else [int(x) for x in seeds]
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise ValueError(seeds)
    return values


def parse_variants(variants: list[str] | str) -> list[str]:
    """``"Fixed,Cornille PA"`` (or ``[Fixed, Cornille PA]``, or one name or group) -> the names, as given."""
    names = variants.split(",") if isinstance(variants, str) else list(variants)
    return [str(name).strip() for name in names]


def validate_run(preset: str, variants: list[str], lm: str | None, seeds: list[int] | str = "0",
                 finetune_max_steps: int = -1, given: list[str] | None = None) -> None:
    """``variants``: the names after groups are expanded; ``given``: as on the command line (duplicates refused)."""
    problems = []
    repeated = [name for name, n in Counter(given or []).items() if n > 1]
    if repeated:
        problems.append(f"--variants names {', '.join(map(repr, repeated))} more than once; name each variant once")
    check_max_steps(problems, finetune_max_steps, "--finetune_max_steps")
    try:
        parse_seeds(seeds)
    except ValueError:
        problems.append(f"--seeds must be distinct non-negative integers such as 0,1,2 (got {seeds!r})")
    if preset not in PRESETS:
        problems.append(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        folded = {name.lower(): name for name in [*VARIANTS, *VARIANT_GROUPS]}
        hints = [f"{v!r} (did you mean {folded[v.lower()]!r}?)" if v.lower() in folded else repr(v) for v in unknown]
        problems.append(f"unknown variants {', '.join(hints)}; choose from {', '.join(VARIANTS)} or the groups "
                        f"{', '.join(VARIANT_GROUPS)}, several as 'A,B' or '[A, B]'")
    if not variants:
        problems.append("--variants is empty")
    if lm is not None and not lm.strip():
        problems.append("--lm is empty; leave it unset to pretrain a small LM offline, or name a Hub model / folder")
    raise_if_problems(problems, "run")


def results_table(rows: list[dict]) -> str:
    """The paper's Table 1 layout from :func:`planlm.report.results_table` rows (+ ``planner_top1`` stats; the
    paper's number is the rows' ``paper_ppl``, planlm.variants.paper_ppl by the row's name, from the GPT-2 column
    or, on an OLMo-like base LM, the OLMo-1B one: ``paper_lm``): PPL
    (planner-predicted actions), PPL relative to Fixed of the same seed with its paired bootstrap 95% interval,
    planner top-1; means ± std over seeds when there are several."""
    from planlm.stages.report import interval_cell, paper_header

    def cell(stat: dict | None, fmt: str, suffix: str = "") -> str:
        if stat is None:
            return "-"
        text = format(stat["mean"], fmt) + suffix
        return text + f" ± {format(stat['std'], fmt.lstrip('+'))}" if stat["n"] > 1 else text

    oracle = any(r.get("ppl_oracle") for r in rows)  # a column only when some variant was evaluated with them
    lines = [
        "| variant | seeds | PPL | vs Fixed | 95% CI vs Fixed | " + ("PPL, oracle actions | " if oracle else "")
        + f"planner top-1 | {paper_header(rows, 'paper')} |",
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if oracle else "") + "---:|",
    ]
    for r in rows:
        ci = interval_cell(r.get("ppl_rel_ci")).replace("–", "-")
        paper = "-" if r.get("paper_ppl") is None else f"{r['paper_ppl']:.2f}"
        lines.append(f"| {r['variant']} | {len(r['seeds'])} | {cell(r['ppl'], '.3f')} | "
                     f"{cell(r['ppl_rel'], '+.2f', '%')} | {ci} | "
                     + (f"{cell(r.get('ppl_oracle'), '.3f')} | " if oracle else "")
                     + f"{cell(r.get('planner_top1'), '.3f')} | {paper} |")
    return "\n".join(lines) + "\n"


def budget_departures(p: RunPreset) -> list[str]:
    """What a preset changes of the paper's fine-tuning and evaluation setting (Adam 1e-4, batch 32, one epoch,
    adapters without a gate, stride-1 perplexity on 1,000 test articles), one phrase each, for the results table."""
    f, paper = p.finetune, OptimConfig()  # OptimConfig's defaults are the paper's
    cuts = []
    if f.max_steps > 0:
        cuts.append(f"fine-tuning capped at {f.max_steps} optimizer steps (paper: one epoch)")
    elif f.epochs != paper.epochs:
        cuts.append(f"{f.epochs} fine-tuning epochs (paper: {paper.epochs})")
    if f.batch_size != paper.batch_size:
        cuts.append(f"batch {f.batch_size} x {p.context_length} tokens (paper: {paper.batch_size} x 128)")
    if f.lr != paper.lr:
        cuts.append(f"adapter learning rate {f.lr:g} (paper: {paper.lr:g})")
    if f.planner_lr is not None and f.planner_lr != f.lr:
        cuts.append(f"the unfrozen planner at its own rate {f.planner_lr:g}")
    if departed := planner_departures(p.planner):
        cuts.append(f"the planner with {departed} (paper: its architecture alone)")
    if p.adapters.gate:
        cuts.append("zero-initialised adapter gates, so every variant starts as the base LM (paper: no gate)")
    if p.adapters.projection_init == "zeros":
        cuts.append("zero-initialised adapter projections W_A, so every variant starts as the base LM (planlm's "
                    "default: xavier-normal; the paper gives none)")
    if p.eval_protocol != "paper":
        cuts.append(f"{p.eval_protocol} perplexity, stride {p.eval_stride} (paper: stride 1)")
    if p.eval_window_step > 1:
        cuts.append(f"every {p.eval_window_step}th test window of each article scored (about 1/{p.eval_window_step} "
                    "of the test tokens)")
    if p.precision != "32-true":
        cuts.append(f"the LM under {p.precision} autocast in fine-tuning and evaluation (paper: fp32)")
    if p.finetune_val_windows is not None and p.finetune_val_windows < 512:
        cuts.append(f"the fine-tuning loop's val loss on {p.finetune_val_windows} val windows")
    return cuts


def planner_departures(planner: PlannerConfig) -> str:
    """The NAP planner's options that differ from the paper's, as ``name value`` phrases ("" when none); its context
    mode is the preset's ``planner_context`` and its sizes come from the corpus, so neither counts."""
    paper = PlannerConfig()
    return ", ".join(f"{f.name} {getattr(planner, f.name)}" for f in dataclasses.fields(planner)
                     if f.name not in ("context", "num_actions", "encoder_dim")
                     and getattr(planner, f.name) != getattr(paper, f.name))


def no_nap_note(p: RunPreset, variants: list[str]) -> str | None:
    """What the results table says under the no-NAP rows (None when there are none): their adapters train in the
    no-NAP stage too (the paper's end-to-end stage with the LM frozen) and fine-tuning continues from them, so they
    have had twice the adapter training of every other row; at a small budget that alone lowers perplexity."""
    if not any(VARIANTS[name].planner_pretraining == "ntp" for name in variants):
        return None
    f = p.finetune
    each = f"{f.max_steps} steps" if f.max_steps > 0 else f"{f.epochs} epoch{'s' if f.epochs > 1 else ''}"
    return (f"Reading the no-NAP rows: their adapters train in the no-NAP stage ({each}, with the planner; the LM "
            f"frozen) and again in fine-tuning ({each}), twice the adapter training of the other rows. At a small "
            f"budget that alone lowers perplexity: compare them with Fixed fine-tuned for twice the steps "
            f"(docs/results.md, the fp32 run).")


def describe_base_lm(lm: str | None) -> str:
    """The base LM as the results table names it."""
    from planlm.gguf import is_gguf

    if lm is None:
        return "pretrained from scratch per seed"
    return f"{lm}, frozen" + (" (4-bit GGUF weights dequantized to fp32, not the original bf16)" if is_gguf(lm) else "")


def no_nap_planner(variants: list[str], out: Path, prepared: str, lm: str, p: RunPreset, seed: int,
                   trainer: TrainerConfig, force: bool, timed) -> Path | None:
    """The planner of the "no NAP pretraining" rows, built once into OUT/planner-ntp (None when no variant asks):
    a fresh planner and the adapters fine-tuning starts from, trained together by next-token prediction through the
    frozen LM (`planlm train-planner --objective ntp`), with the fine-tuning budget at its one rate ``lr`` for
    both: ``planner_lr`` is the rate of a NAP-pretrained planner, whose margins a high rate would erase, and this
    planner starts from scratch. The rows' fine-tuning then starts from this planner and these adapters."""
    from planlm.stages.train_planner import train_planner

    if not any(VARIANTS[name].planner_pretraining == "ntp" for name in variants):
        return None
    optim = dataclasses.replace(p.finetune, planner_lr=None, accumulate=1)
    timed("train-planner (no NAP: next-token prediction)", train_planner, prepared=prepared,
          out=str(out / "planner-ntp"), lm=lm, planner=PlannerConfig(context=p.planner_context), objective="ntp",
          adapters=p.adapters, windows=p.finetune_windows(), optim=optim, seed=seed, trainer=trainer, force=force)
    return out / "planner-ntp"


def bigram_planner(variants: list[str], out: Path, prepared: str, lm: str, p: RunPreset, seed: int,
                   trainer: TrainerConfig, force: bool, timed) -> Path | None:
    """The "planner" of the Bigram PA row, built once into OUT/planner-bigram (None when no variant asks): the train
    split's action bigram (`planlm train-planner --planner.kind bigram`, nothing trained)."""
    from planlm.stages.train_planner import train_planner

    if not any(VARIANTS[name].planner_pretraining == "bigram" for name in variants):
        return None
    timed("train-planner (action bigram)", train_planner, prepared=prepared, out=str(out / "planner-bigram"), lm=lm,
          planner=PlannerConfig(context=p.planner_context, kind="bigram"), seed=seed, trainer=trainer, force=force)
    return out / "planner-bigram"


def _has_article_records(evaluation: Path) -> bool:
    """Whether an existing evaluation holds the per-article records the intervals need (older ones do not)."""
    from planlm.eval.record import headline_by_article

    try:
        return headline_by_article(json.loads((evaluation / "metrics.json").read_text())) is not None
    except (OSError, ValueError):
        return True  # nothing readable there: evaluate's own checks decide


@writes_artifact()
def run(
    out: Path = Path("runs/demo"),
    data: str = "builtin",
    data_config: str | None = None,
    lm: str | None = None,
    preset: Literal["default", "paper", "quick", "small-lm"] = "default",  # planlm/presets/run/*.yaml (tests/test_presets.py)
    variants: list[str] | str | None = None,
    seeds: list[int] | str = "0",
    split_seed_follows: bool = False,
    finetune_max_steps: int = -1,
    fp32_budget: bool = True,
    planner: PlannerConfig = PlannerConfig(),
    trainer: TrainerConfig = TrainerConfig(),
    force: bool = False,
) -> Path:
    """Run the whole pipeline and print the results table (the paper's Table 1 layout).

    With no arguments: the embedded English Wikipedia sample and the embedded pretrained SmolLM2-135M, frozen as the
    paper freezes GPT-2 (offline), the variants Fixed, Uniform, Cornille PA and Soft / unfreeze halfway, and the
    oracle-action perplexity as the ceiling (at most 30 minutes on a 2-core CPU).
    At paper scale, with Hub access: ``--lm gpt2 --data wikimedia/wikipedia --data_config 20231101.en --preset paper``.
    Each variant's change vs Fixed comes with a paired bootstrap 95% interval over test articles (and seeds).

    Args:
        out: folder for every artifact (prepared/, lm/, planner/, runs/<variant>/, report/; seed-<s>/ per seed with
            several seeds) and the results table.
        data: corpus: builtin, a local .jsonl/.parquet/.txt/.xml(.bz2) file or folder, or a Hub dataset name.
        data_config: configuration of a Hub dataset (e.g. 20231101.en for wikimedia/wikipedia).
        lm: base causal LM (Hub name, folder or GGUF checkpoint); unset = the preset's (default: the embedded
            SmolLM2-135M; small-lm and quick: a small GPT-2 pretrained from scratch on the corpus).
        preset: default (the frozen pretrained SmolLM2-135M on the builtin corpus, <= 30 min on a 2-core CPU),
            small-lm (a small GPT-2 from scratch: corpora in other languages or tokenizers, goal <= 15 min), quick
            (<= 3 min smoke run), paper (the paper's settings, GPU).
        variants: which rows of the paper's Table 1 to train (names as in planlm.variants.VARIANTS; unset = the
            preset's, else Fixed, Uniform, Cornille OA, Cornille PA, Soft / unfreeze halfway), or groups of them:
            table1, no-nap, mix-sweep (Figure 4), default, all (planlm.variants.VARIANT_GROUPS); one name or
            group alone (``--variants mix-sweep``) or several (``--variants 'Fixed,no-nap'`` or ``'[Fixed, no-nap]'``).
        seeds: the seeds to run, e.g. 0,1,2 (the paper's Appendix C): each sets the initialisation and data order of
            every training stage, and the article split with --split_seed_follows true.
        split_seed_follows: each seed also draws its own train/val/test article split (a prepared corpus per seed).
        finetune_max_steps: cap on each variant's fine-tuning steps (-1 = the preset's epochs). A departure from
            the paper's one epoch, for a corpus whose epoch the budget cannot afford; recorded in each run's manifest.
        fp32_budget: where the preset's ``precision: auto`` runs fp32 (a CPU without native bf16, e.g. AVX2 only),
            apply its ``fp32_budget`` cuts (default: fewer steps and test windows, to keep its time budget); false
            runs the preset's own steps and windows in fp32 (the default preset: about an hour on 2 AVX2 cores).
        planner: the NAP planner's options where they differ from the paper's (unset: the preset's), e.g. issue
            27's option ``--planner.bigram_prior true --planner.bigram_alpha 64 --planner.last_sentences 2``; its
            context mode is the preset's ``planner_context``. Each departure is listed above the results table.
        trainer: devices, strategy and precision for every training stage.
        force: rebuild every stage even when its artifact is up to date.

    Returns:
        The output folder.
    """
    if variants is None:
        variants = (PRESETS[preset].variants if preset in PRESETS else None) or DEFAULT_VARIANTS
    given = parse_variants(variants)
    variants = expand_variants(given)
    validate_run(preset, variants, lm, seeds, finetune_max_steps, given=given)
    seeds = parse_seeds(seeds)
    from planlm.artifacts import write_json_atomic
    from planlm.stages.report import gather, report, seed_stats
    from planlm.stages.report import results_table as report_rows

    p = PRESETS[preset].resolved(trainer.accelerator, fp32_budget)
    fp32_cut = p != PRESETS[preset].resolved(trainer.accelerator, fp32_budget=False)  # the fp32 budget changed it
    lm = p.lm if lm is None else lm
    if finetune_max_steps != -1:
        p = dataclasses.replace(p, finetune=dataclasses.replace(p.finetune, max_steps=finetune_max_steps))
    if planner != PlannerConfig():
        p = dataclasses.replace(p, planner=planner)
    out = Path(out)
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    rows, corpus = [], None
    for seed in seeds:
        home = out if len(seeds) == 1 else out / f"seed-{seed}"
        tag = "" if len(seeds) == 1 else f" (seed {seed})"
        prepared = home / "prepared" if split_seed_follows and len(seeds) > 1 else out / "prepared"
        corpus, seed_rows = _run_seed(p, home, prepared, data, data_config, lm, variants, seed,
                                      seed if split_seed_follows else None, trainer, force, times, tag)
        rows += seed_rows

    evaluations = [Path(r["run"]) / "evaluate" for r in rows]  # this run's, not whatever else lies under OUT
    table_rows = report_rows(gather(evaluations).runs)
    for row in table_rows:  # the planner's top-1 (and the oracle-action PPL) on the test split, over the same seeds
        for key in ("planner_top1", "ppl_oracle"):
            values = [r[key] for r in rows if r["variant"] == row["variant"] and r.get(key) is not None]
            row[key] = seed_stats(values)
    table = results_table(table_rows)
    fp32_note = ("the preset's fp32 budget, as this CPU computes no bf16 natively "
                 "(--fp32_budget false: its own steps and windows in fp32)")
    cuts = budget_departures(p) + ([fp32_note] if fp32_cut else [])
    header = (
        f"# planlm run ({preset} preset, seeds {','.join(map(str, seeds))}"
        + (", split per seed" if split_seed_follows else "")
        + (f", fine-tuning capped at {finetune_max_steps} steps" if finetune_max_steps != -1 else "") + ")\n\n"
        f"Corpus: {data} ({len(corpus.texts)} articles, K={corpus.num_actions} actions, encoder {corpus.encoder}); "
        f"LM: {describe_base_lm(lm)}; perplexity on the test split with planner-predicted "
        f"actions, {p.eval_protocol} protocol (windows of {p.context_length} tokens"
        + (f", stride {p.eval_stride}" if p.eval_protocol == "strided" else ", stride 1") + "). 95% CI: paired "
        "bootstrap over test articles" + (" and seeds" if len(seeds) > 1 else "") + " (* = excludes 0).\n\n"
        + ("Departures from the paper (the budget's cuts): " + "; ".join(cuts) + ".\n\n" if cuts else "")
        + (note + "\n\n" if (note := no_nap_note(p, variants)) else "")
    )
    (out / ".results.md.tmp").write_text(header + table + "\nStage times (s): " + json.dumps(times) + "\n")
    (out / ".results.md.tmp").replace(out / "results.md")
    write_json_atomic(out / "results.json", rows)
    report(runs=evaluations, out=out / "report", force=True)
    print("\n" + header + table)
    print(f"results: {out / 'results.md'}, {out / 'results.json'}; report: {out / 'report' / 'report.html'}")
    return out


def _run_seed(p: RunPreset, home: Path, prepared: Path, data: str, data_config: str | None, lm: str | None,
              variants: list[str], seed: int, split_seed: int | None, trainer: TrainerConfig, force: bool,
              times: dict[str, float], tag: str):
    """Every stage of one seed into ``home``; returns (prepared corpus, one results row per variant)."""
    from planlm.data.corpus import SourceConfig, SplitConfig
    from planlm.data.encoders import EncoderConfig
    from planlm.data.prepared import PreparedCorpus
    from planlm.eval.record import MetricsRecord
    from planlm.stages.evaluate import evaluate
    from planlm.stages.finetune import finetune
    from planlm.stages.prepare import prepare
    from planlm.stages.pretrain_lm import pretrain_lm
    from planlm.stages.train_planner import train_planner

    def timed(name, fn, *args, **kwargs):
        print(f"\n=== planlm run: {name}{tag} ===", flush=True)
        t = time.time()
        result = fn(*args, **kwargs)
        times[name + tag] = round(time.time() - t, 1)
        return result

    split = SplitConfig() if split_seed is None else SplitConfig(seed=split_seed)
    prepared = timed(
        "prepare", prepare, out=str(prepared),
        source=SourceConfig(source=data, hub_config=data_config, max_articles=p.max_articles), split=split,
        encoder=EncoderConfig(name=p.encoder), num_actions=p.num_actions, preset=p.prepare_preset, force=force,
    )
    if lm is None:
        timed("pretrain-lm", pretrain_lm, prepared=str(prepared), out=str(home / "lm"), preset=p.lm_preset,
              optim=p.lm_pretraining_optim(), seed=seed, trainer=trainer, force=force)
        lm = str(home / "lm")
    planner_dir = home / "planner"
    timed("train-planner", train_planner, prepared=str(prepared), out=str(planner_dir), lm=lm,
          planner=dataclasses.replace(p.planner, context=p.planner_context), optim=p.planner_optim, seed=seed,
          trainer=trainer, force=force)
    # the stages that run the LM: at the preset's precision unless --trainer.precision asks for another
    lm_trainer = trainer if p.precision == "32-true" or trainer.precision != "32-true" else \
        dataclasses.replace(trainer, precision=p.precision)
    planners = {"nap": planner_dir,
                "ntp": no_nap_planner(variants, home, str(prepared), lm, p, seed, lm_trainer, force, timed),
                "bigram": bigram_planner(variants, home, str(prepared), lm, p, seed, trainer, force, timed)}

    rows = []
    for name in variants:
        run_dir = home / "runs" / slug(name)
        variant = VARIANTS[name]
        recipe = dataclasses.replace(variant.recipe)
        planner = planners[variant.planner_pretraining] if variant.needs_planner else None
        timed(f"finetune {name}", finetune, prepared=prepared, lm=lm, planner=planner,
              out=run_dir, recipe=recipe, optim=p.finetune, adapters=p.adapters, windows=p.finetune_windows(),
              trainer=lm_trainer, seed=seed, force=force)
        # fixed / uniform condition on no per-sentence action: no oracle perplexity for them
        ppl_cfg = p.perplexity(oracle=p.eval_oracle and variant.needs_planner)
        # an evaluation written before per-article records existed is redone (seconds), so the table has intervals
        ev = timed(f"evaluate {name}", evaluate, run=run_dir, ppl=ppl_cfg, variant=name,
                   force=force or not _has_article_records(run_dir / "evaluate"))
        m = MetricsRecord.load(Path(ev) / "metrics.json")
        rows.append({
            "variant": name, "ppl": m.ppl, "ppl_oracle": m.ppl_oracle, "planner_top1": m.planner_top1,
            "planner_top5": m.planner_top5,
            "protocol": p.eval_protocol, "run": str(run_dir), "seed": seed,
        })
    return PreparedCorpus.load(prepared), rows
