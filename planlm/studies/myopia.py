"""`planlm myopia`: how much does a model pre-cache for the future? (Wu, Morris, Levine 2024.)

The myopia gap is the loss of a myopically trained model (planlm/models/myopic.py: no gradient from the loss at j
into the hidden states of positions i < j) minus the loss of a vanilla one trained on the same data and budget.

- ``planlm myopia dp``: the synthetic task D_p (planlm/data/synthetic.py), where pre-caching is needed and the gap is
  large: a GPT-2 trunk with linear input/output layers, Huber loss, fresh data every step, per seed.
- ``planlm myopia lm``: natural text. Vanilla and myopic GPT-2s trained from scratch by the `pretrain-lm` stage (same
  prepared corpus, preset, steps, seed), then scored token by token on the held-out articles: the gap with a paired
  bootstrap confidence interval over seeds and articles, the gap by position in the window (does it grow as more
  context could have been pre-cached?), and linear probes of future tokens on both models' hidden states
  (planlm/eval/probes.py).
- ``planlm myopia planned``: does a plan of the next sentence replace the LM's own pre-caching? Fixed and a
  planner-conditioned variant, each fine-tuned vanilla and myopic from one pretrained LM (`finetune --myopic`): both
  gaps and their difference, with paired bootstrap intervals over articles and seeds.

Each writes one folder atomically: ``myopia.json``, ``myopia.md`` (the table), ``myopia.png`` and ``manifest.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from planlm.artifacts import (
    atomic_dir,
    read_manifest,
    up_to_date,
    write_json_atomic,
    write_manifest,
)
from planlm.errors import PlanlmError, check_finite, raise_if_problems
from planlm.eval.probes import ProbeConfig
from planlm.stage_config import Fingerprint, config_of
from planlm.stages.pretrain_lm import pretrain_lm
from planlm.train.lm_pretraining import (
    PRESET_OPTIM,
    PRESETS,
    LMPresetName,
    blocks,
    resolve_optim,
    token_stream,
)
from planlm.train.trainer import OptimConfig, TrainerConfig

STAGE = "myopia"
EvalSplit = Literal["test", "val"]  # held-out articles only: the LMs train on the train split
KINDS = ("vanilla", "myopic")


# ---------------------------------------------------------------------------------------------------------- D_p


@dataclass
class DpConfig:
    """The D_p task and its model (paper: sequence length 64, GPT-2 trunk, linear input/output layers, Huber loss)."""

    p: float = 0.5
    """Probability that a position's target is the sum of the ten earlier sines (z_t = 1)."""
    length: int = 64
    """Sequence length (paper: 64)."""
    frequency: float = 10.0
    """The sines' frequency (paper: 10). Lower is a departure that a CPU learns in fewer steps."""
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    steps: int = 3000
    """Optimizer steps (a fresh batch each)."""
    batch_size: int = 32
    lr: float = 3e-3
    """Peak AdamW learning rate (one-cycle schedule, 5 % warmup)."""
    eval_sequences: int = 512
    """Held-out sequences (one fixed seeded set for every model)."""
    eval_every: int = 250
    """Steps between evaluations of the learning curve."""


def _dp_eval(model, batch) -> dict:
    import torch

    with torch.no_grad():
        loss = torch.nn.functional.huber_loss(model(batch.inputs), batch.targets, reduction="none")  # (B, T)
    return {"loss": loss.mean().item(), "loss_sum_positions": loss[batch.z].mean().item(),
            "loss_copy_positions": loss[~batch.z].mean().item(), "per_position": loss.mean(0).tolist()}


def train_dp(cfg: DpConfig, myopic: bool, seed: int) -> dict:
    """Train one D_p model; returns its held-out losses and learning curve (same eval set for every model)."""
    import torch

    from planlm.data.synthetic import dp_batch
    from planlm.models.myopic import SequenceRegressor, make_myopic

    torch.manual_seed(seed)
    model = SequenceRegressor(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, n_positions=cfg.length)
    if myopic:
        make_myopic(model.trunk)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    data = torch.Generator().manual_seed(10_000 + seed)  # training data: per seed, the same for vanilla and myopic
    held_out = dp_batch(cfg.eval_sequences, cfg.p, cfg.length, frequency=cfg.frequency,
                        generator=torch.Generator().manual_seed(12345))
    curve, t0 = [], time.perf_counter()
    for step in range(1, cfg.steps + 1):
        batch = dp_batch(cfg.batch_size, cfg.p, cfg.length, frequency=cfg.frequency, generator=data)
        loss = torch.nn.functional.huber_loss(model(batch.inputs), batch.targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append({"step": step, **{k: v for k, v in _dp_eval(model, held_out).items() if k != "per_position"}})
            print(f"myopia dp: {KINDS[myopic]} seed {seed} step {step}: held-out loss {curve[-1]['loss']:.4f} "
                  f"(sum positions {curve[-1]['loss_sum_positions']:.4f})", flush=True)
    seconds = time.perf_counter() - t0
    return {"kind": KINDS[myopic], "seed": seed, **_dp_eval(model, held_out), "curve": curve, "seconds": seconds}


def _bootstrap_ci(values: np.ndarray, n: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of the mean of ``values``."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def validate_myopia_dp(dp: DpConfig, seeds: list[int]) -> None:
    """Raise one error listing every problem with the arguments of :func:`myopia_dp`."""
    problems = []
    check_finite(problems, **{f"dp.{k}": getattr(dp, k) for k in ("p", "frequency", "lr")})
    if not 0.0 <= dp.p <= 1.0:
        problems.append(f"dp.p must be in [0, 1] (got {dp.p})")
    for name in ("length", "n_layer", "n_head", "n_embd", "steps", "batch_size", "eval_sequences", "eval_every"):
        if getattr(dp, name) < 1:
            problems.append(f"dp.{name} must be positive (got {getattr(dp, name)})")
    if dp.n_embd % max(dp.n_head, 1):
        problems.append(f"dp.n_embd {dp.n_embd} is not divisible by dp.n_head {dp.n_head}")
    if dp.frequency <= 0:
        problems.append(f"dp.frequency must be positive (got {dp.frequency})")
    if dp.lr <= 0:
        problems.append(f"dp.lr must be positive (got {dp.lr})")
    problems += _seed_problems(seeds)
    raise_if_problems(problems, "myopia dp")


def myopia_dp(
    out: str = "runs/myopia-dp",
    dp: DpConfig = DpConfig(),
    seeds: list[int] = [0, 1, 2],  # noqa: B006  (jsonargparse reads the default)
    force: bool = False,
) -> dict:
    """The myopia gap on the synthetic task D_p: vanilla and myopic models per seed, same data and steps.

    Writes OUT/myopia.json, myopia.md (losses per seed, gap, 95 % bootstrap interval over seeds), myopia.png
    (learning curves and loss by position) and manifest.json.

    Args:
        out: output folder (written atomically).
        dp: the task, model and training settings.
        seeds: one vanilla and one myopic model per seed.
        force: rebuild ``out`` even when it exists with the same config.

    Returns:
        ``{"gap", "gap_ci", "runs": [...]}``.
    """
    validate_myopia_dp(dp, seeds)
    config = MyopiaDpConfig.from_call(locals()).fingerprint()
    if up_to_date(out, STAGE, config, force):
        return read_manifest(out, STAGE).get("metrics", {})

    runs = [train_dp(dp, myopic, seed) for seed in seeds for myopic in (False, True)]
    by = {(r["kind"], r["seed"]): r for r in runs}
    gaps = np.array([by["myopic", s]["loss"] - by["vanilla", s]["loss"] for s in seeds])
    result = {
        "task": "dp", "config": config, "runs": runs,
        "gap": float(gaps.mean()), "gap_ci": _bootstrap_ci(gaps) if len(seeds) > 1 else None,
        "gap_per_seed": gaps.tolist(),
        **{f"{k}_loss": float(np.mean([by[k, s]["loss"] for s in seeds])) for k in KINDS},
    }
    lines = [f"# Myopia gap on D_p (p = {dp.p}, frequency {dp.frequency:g}, length {dp.length}, "
             f"{dp.n_layer} layers x {dp.n_embd}, "
             f"{dp.steps} steps of {dp.batch_size}; Huber loss on {dp.eval_sequences} held-out sequences)", "",
             "| seed | model | loss | loss at z=1 (sum) | loss at z=0 (copy) |", "|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['kind']} | {r['loss']:.4f} | {r['loss_sum_positions']:.4f} | "
              f"{r['loss_copy_positions']:.4f} |" for r in runs]
    lines += ["", f"Myopia gap (myopic - vanilla): **{result['gap']:.4f}**" + _ci_text(result["gap_ci"])
              + f"; per seed {', '.join(f'{g:.4f}' for g in gaps)}.", ""]
    with atomic_dir(out, force=True) as tmp:
        _plot_dp(runs, tmp / "myopia.png")
        _write_result(tmp, result, lines, config, inputs=None,
                      metrics={k: result[k] for k in ("gap", "gap_ci", "vanilla_loss", "myopic_loss")})
    print(f"myopia dp: vanilla {result['vanilla_loss']:.4f}, myopic {result['myopic_loss']:.4f}, "
          f"gap {result['gap']:.4f}{_ci_text(result['gap_ci'])} -> {out}")
    return result


# What `planlm myopia dp` reads; its fingerprint (the manifest's config) decides reuse.
MyopiaDpConfig = config_of(myopia_dp, exclude=("out", "force"), fingerprint=Fingerprint(
    extra=lambda c: {"task": "dp"}))


# ---------------------------------------------------------------------------------------------- natural text


@dataclass
class LMBudget:
    """What both LMs of a seed are trained with (`pretrain-lm` arguments; unset = the preset's)."""

    preset: LMPresetName = "small-cpu"
    vocab_size: int = 8192
    block_size: int | None = None
    optim: OptimConfig = field(default_factory=lambda: PRESET_OPTIM)  # the very object: the preset's section
    """`pretrain-lm --optim` (lr, batch_size, epochs, max_steps: -1 = the epochs, ...); unset values: the preset's."""


@dataclass
class MyopiaProbeConfig(ProbeConfig):
    """Linear probes of future tokens (planlm/eval/probes.py: its settings, with smaller defaults for a CPU) on the
    hidden states of the first seed's two LMs."""

    distances: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    """The hidden state at t predicts the token at t + d (d = 1: the next token; d >= 2: further ahead)."""
    vocab_size: int = 200
    """Most frequent target tokens kept as classes; the rest share one "other" class."""
    max_iter: int = 50
    """L-BFGS iterations per probe (full batch)."""
    layers: list[int] | None = None
    """Hidden states after these layers (1 = after the first block); None = every layer."""
    max_windows: int = 48
    """Held-out windows whose positions the probes use (train/held-out split by window)."""
    enabled: bool = True
    """Fit the probes."""


def _windows(prepared: str, lm_dir: Path, split: str, block_size: int):
    """Evaluation windows of ``split``: each article (+ eos) cut into ``block_size`` blocks, tail kept."""
    from planlm.data.prepared import PreparedCorpus
    from planlm.persist import load_tokenizer

    corpus = PreparedCorpus.load(prepared)
    tokenizer = load_tokenizer(str(lm_dir))
    windows, articles = [], []
    for a in corpus.article_ids(split):
        for b in blocks(token_stream(tokenizer, [corpus.texts[a]]), block_size, keep_tail=True):
            windows.append(b)
            articles.append(int(a))
    return windows, np.array(articles)


def token_losses(lm, windows: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """``(W, T - 1)`` next-token cross-entropy of ``lm`` at every position of every window (NaN where absent)."""
    import torch

    t = max(len(w) for w in windows)
    out = np.full((len(windows), t - 1), np.nan)
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(windows):  # windows of one length batch together (all but article tails share one)
        by_length.setdefault(len(w), []).append(i)
    with torch.no_grad():
        for length, members in by_length.items():
            for start in range(0, len(members), batch_size):
                rows = members[start:start + batch_size]
                ids = torch.from_numpy(np.stack([windows[i] for i in rows]))  # (b, length)
                logits = lm(input_ids=ids).logits[:, :-1]  # (b, length - 1, V)
                loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
                out[rows, : length - 1] = loss.double().numpy()
    return out


def gap_statistics(vanilla: np.ndarray, myopic: np.ndarray, articles: np.ndarray, n_boot: int = 2000,
                   seed: int = 0) -> dict:
    """The myopia gap with paired bootstrap intervals.

    Args:
        vanilla, myopic: ``(S, W, P)`` per-token losses of each seed's two LMs on the same windows (NaN = absent).
        articles: ``(W,)`` the article of each window: articles are resampled whole.

    Returns:
        ``gap`` (token-weighted, mean over seeds), ``gap_ci`` (seeds and articles resampled), ``gap_ci_articles``
        (articles only), ``gap_per_seed``, ``per_position`` gap ``(P,)`` and its article-bootstrap interval, the
        least-squares ``slope`` of the per-position gap (nats per position) with its interval.
    """
    rng = np.random.default_rng(seed)
    diff = myopic - vanilla  # (S, W, P), paired: same seed index, same windows
    present = ~np.isnan(diff[0])  # (W, P)
    ids, index = np.unique(articles, return_inverse=True)
    a = len(ids)
    # per article: summed gap (S, A), token count (A,); per article and position: (S, A, P), (A, P)
    art_sum = np.zeros((diff.shape[0], a))
    np.add.at(art_sum.T, index, np.nansum(diff, axis=2).T)
    art_count = np.bincount(index, weights=present.sum(1), minlength=a)
    pos_sum = np.zeros((diff.shape[0], a, diff.shape[2]))
    np.add.at(pos_sum.transpose(1, 0, 2), index, np.nan_to_num(diff).transpose(1, 0, 2))
    pos_count = np.zeros((a, diff.shape[2]))
    np.add.at(pos_count, index, present)
    positions = np.arange(diff.shape[2])

    def stats(seeds, arts):
        gap = (art_sum[seeds][:, arts].sum(1) / art_count[arts].sum()).mean()
        per_pos = (pos_sum[seeds][:, arts].sum(1) / np.maximum(pos_count[arts].sum(0), 1)).mean(0)  # (P,)
        return gap, per_pos

    def slope(per_pos):
        return float(np.polyfit(positions, per_pos, 1)[0])

    all_seeds, all_arts = np.arange(diff.shape[0]), np.arange(a)
    gap, per_pos = stats(all_seeds, all_arts)
    boot_joint, boot_articles, boot_pos, boot_slope = [], [], [], []
    for _ in range(n_boot):
        arts = rng.integers(0, a, a)
        g, pp = stats(all_seeds, arts)
        boot_articles.append(g)
        boot_pos.append(pp)
        boot_slope.append(slope(pp))
        boot_joint.append(stats(rng.integers(0, len(all_seeds), len(all_seeds)), arts)[0])
    ci = lambda x: [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]  # noqa: E731
    boot_pos = np.array(boot_pos)
    return {
        "gap": float(gap), "gap_ci": ci(boot_joint), "gap_ci_articles": ci(boot_articles),
        "gap_per_seed": (art_sum.sum(1) / art_count.sum()).tolist(),
        "per_position": per_pos.tolist(),
        "per_position_ci": [np.percentile(boot_pos, q, axis=0).tolist() for q in (2.5, 97.5)],
        "slope": slope(per_pos), "slope_ci": ci(boot_slope),
        "articles": int(a), "tokens": int(present.sum()), "bootstrap": n_boot,
    }


def _hidden_state_probes(lm, windows: list[np.ndarray], cfg: MyopiaProbeConfig, block_size: int) -> list[dict]:
    """Probe rows (planlm/eval/probes.py) on the hidden state after each layer (kind "post": what the layer passes
    on; HF applies the final norm to the last layer's)."""
    import torch

    from planlm.eval.probes import rows_to_json, run_probes

    full = [w for w in windows if len(w) == block_size][: cfg.max_windows]
    if len(full) < 2:
        raise PlanlmError(f"myopia probes need at least 2 full evaluation windows of {block_size} tokens "
                          f"(got {len(full)}); use a larger evaluation split or a smaller --budget.block_size")
    ids = torch.from_numpy(np.stack(full))  # (W, T)
    with torch.no_grad():
        hidden = lm(input_ids=ids, output_hidden_states=True).hidden_states  # L + 1 of (W, T, H)
    layers = cfg.layers or list(range(1, len(hidden)))
    features = {layer: {"post": hidden[layer].float()} for layer in layers}
    rows = run_probes(features, ids, config=cfg, progress=False)
    return rows_to_json(rows)


def validate_myopia_lm(prepared: str, out: str, budget: LMBudget, seeds: list[int], probes: MyopiaProbeConfig,
                       split: str, bootstrap: int) -> None:
    """Raise one error listing every problem with the arguments of :func:`myopia_lm`."""
    problems = []
    try:
        read_manifest(prepared, "prepare")
    except PlanlmError as e:
        problems.append(f"{e} (build it with `planlm prepare --out {prepared}`)")
    if budget.preset not in PRESETS:
        problems.append(f"unknown budget.preset {budget.preset!r}; use one of {', '.join(PRESETS)}")
    problems += [f"budget.{p}" for p in budget.optim.problems()]
    if split not in get_args(EvalSplit):
        problems.append(f"split must be one of {', '.join(get_args(EvalSplit))} (got {split!r})")
    if any(d < 1 for d in probes.distances) or not probes.distances:
        problems.append(f"probes.distances must be positive token distances (got {probes.distances})")
    if Path(out).resolve() == Path(prepared).resolve():
        problems.append("--out must differ from --prepared")
    problems += _seed_problems(seeds, bootstrap)
    raise_if_problems(problems, "myopia lm")


def myopia_lm(
    prepared: str = "runs/prepared",
    out: str = "runs/myopia-lm",
    budget: LMBudget = LMBudget(),
    seeds: list[int] = [0, 1],  # noqa: B006  (jsonargparse reads the default)
    probes: MyopiaProbeConfig = MyopiaProbeConfig(),
    split: EvalSplit = "test",
    bootstrap: int = 2000,
    trainer: TrainerConfig = TrainerConfig(logger="none"),
    force: bool = False,
) -> dict:
    """The myopia gap on natural text: vanilla and myopic GPT-2s from scratch (`pretrain-lm`), same corpus and budget.

    Per seed, `pretrain-lm` trains a vanilla and a myopic LM (same tokenizer, data order, steps and initialisation);
    both are scored on every token of the ``split`` articles (windows of the training block size). Reported: the gap
    (myopic - vanilla cross-entropy, nats/token) with 95 % paired bootstrap intervals (seeds and articles resampled;
    articles only), the gap by position in the window with its slope, and linear probes of the tokens 1..d ahead on
    both LMs' hidden states. The LMs are kept under OUT/lm/.

    Args:
        prepared: a `planlm prepare` output (e.g. the builtin corpus).
        out: output folder (written atomically): myopia.json, myopia.md, myopia.png, manifest.json, lm/.
        budget: what every LM is trained with (`pretrain-lm` preset and overrides).
        seeds: one vanilla and one myopic LM per seed.
        probes: future-token probes (on the first seed's LMs).
        split: the articles scored: test or val.
        bootstrap: bootstrap resamples.
        trainer: devices, precision, logging of `pretrain-lm`.
        force: rebuild ``out`` even when it exists with the same config.

    Returns:
        The content of myopia.json.
    """
    validate_myopia_lm(prepared, out, budget, seeds, probes, split, bootstrap)
    budget = replace(budget, optim=resolve_optim(budget.preset, budget.optim))  # the config records the real values
    config = MyopiaLMConfig.from_call(locals()).fingerprint()
    if up_to_date(out, STAGE, config, force):
        return read_manifest(out, STAGE).get("metrics", {})

    from planlm.persist import load_lm

    block_size = budget.block_size or PRESETS[budget.preset].block_size
    with atomic_dir(out, force=True) as tmp:
        trained, losses, probe_rows, windows, articles = {}, {k: [] for k in KINDS}, {}, None, None
        for seed in seeds:
            for kind in KINDS:
                lm_dir = tmp / "lm" / f"{kind}-seed{seed}"
                metrics = pretrain_lm(
                    str(prepared), out=str(lm_dir), preset=budget.preset, vocab_size=budget.vocab_size,
                    block_size=budget.block_size, optim=budget.optim, seed=seed, myopic=kind == "myopic",
                    trainer=trainer,
                )
                trained[kind, seed] = {"kind": kind, "seed": seed, **metrics,
                                       **read_manifest(lm_dir, "pretrain-lm")["counts"]}
                if windows is None:  # one tokenizer for all (BPE trained on the same train text)
                    windows, articles = _windows(prepared, lm_dir, split, block_size)
                    if not windows:
                        raise PlanlmError(f"{prepared} has no {split} articles to score; use --split val")
                lm, _ = load_lm(str(lm_dir))
                losses[kind].append(token_losses(lm.eval(), windows))
                trained[kind, seed]["eval_loss"] = float(np.nanmean(losses[kind][-1]))  # token-weighted
                if probes.enabled and seed == seeds[0]:
                    probe_rows[kind] = _hidden_state_probes(lm, windows, probes, block_size)
        stats = gap_statistics(np.stack(losses["vanilla"]), np.stack(losses["myopic"]), articles, n_boot=bootstrap)
        mean_loss = {k: float(np.nanmean(np.stack(losses[k]))) for k in KINDS}
        result = {"task": "lm", "config": config, "runs": list(trained.values()), **stats,
                  "vanilla_loss": mean_loss["vanilla"], "myopic_loss": mean_loss["myopic"],
                  "probes": probe_rows}
        _plot_lm(result, tmp / "myopia.png")
        _write_result(tmp, result, _lm_markdown(result, budget, split), config, inputs={"prepared": prepared},
                      metrics={k: result[k] for k in ("gap", "gap_ci", "gap_ci_articles", "slope", "slope_ci",
                                                      "vanilla_loss", "myopic_loss")})
    print(f"myopia lm: vanilla {mean_loss['vanilla']:.4f}, myopic {mean_loss['myopic']:.4f} nats/token, "
          f"gap {stats['gap']:.4f}{_ci_text(stats['gap_ci'])} -> {out}")
    return result


# What `planlm myopia lm` reads (the budget's optim as resolved); its fingerprint (the manifest's config) decides
# reuse: no hardware settings, plus the prepared corpus's id.
MyopiaLMConfig = config_of(myopia_lm, exclude=("out", "force"), name="MyopiaLMConfig", fingerprint=Fingerprint(
    ignore=("trainer",), extra=lambda c: {"task": "lm", "prepared_id": read_manifest(c.prepared, "prepare").get("id")}))


# ----------------------------------------------------------------------------------- planned vs Fixed LMs


MODELS = ("fixed-vanilla", "fixed-myopic", "planned-vanilla", "planned-myopic")


def validate_myopia_planned(prepared: str, lm: str, planner: str, out: str, variant: str, seeds: list[int],
                            optim: OptimConfig, bootstrap: int) -> None:
    """Raise one error listing every problem with the arguments of :func:`myopia_planned`."""
    from planlm.gguf import is_gguf
    from planlm.models.selection import needs_planner
    from planlm.variants import VARIANTS

    problems = []
    for role, path, stage, fix in (("prepared", prepared, "prepare", "planlm prepare"),
                                   ("planner", planner, "train-planner", "planlm train-planner")):
        try:
            read_manifest(path, stage)
        except PlanlmError as e:
            problems.append(f"--{role}: {e} (build it with `{fix} --out {path}`)")
    if not Path(lm).is_dir() and not is_gguf(lm) and (Path(lm).is_absolute() or lm.startswith((".", "~")) or lm.count("/") > 1):
        problems.append(f"--lm {lm} is not a folder; pass a `planlm pretrain-lm` output, a local HF model folder or "
                        "a Hub name")
    if variant not in VARIANTS:
        problems.append(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
    elif not needs_planner(VARIANTS[variant].recipe.selection):
        problems.append(f"variant {variant!r} reads no plan; compare a planner-conditioned one (e.g. 'Cornille PA')")
    problems += optim.problems()
    if Path(out).resolve() in {Path(x).resolve() for x in (prepared, lm, planner)}:
        problems.append("--out must differ from --prepared, --lm and --planner")
    problems += _seed_problems(seeds, bootstrap)
    raise_if_problems(problems, "myopia planned")


def myopia_planned(
    prepared: str = "runs/demo/prepared",
    lm: str = "runs/demo/lm",
    planner: str = "runs/demo/planner",
    out: str = "runs/myopia-planned",
    variant: str = "Cornille PA",
    seeds: list[int] = [0, 1],  # noqa: B006  (jsonargparse reads the default)
    optim: OptimConfig = OptimConfig(lr=1.0e-3),
    context_length: int = 128,
    eval_stride: int = 64,
    eval_max_articles: int | None = 1000,
    train_lm: bool = True,
    bootstrap: int = 2000,
    trainer: TrainerConfig = TrainerConfig(logger="none"),
    force: bool = False,
) -> dict:
    """Does an explicit plan of the next sentence replace the LM's own pre-caching? The myopia gap of a
    planner-conditioned LM vs that of a Fixed one.

    Per seed, four `planlm finetune` runs from the same pretrained LM, data order and initialisation: Fixed and
    ``variant``, each vanilla and myopic (``--myopic``: the loss at j sends no gradient into earlier positions' hidden
    states, so the LM and the adapters cannot learn to pre-cache); the LM trains with its adapters (``train_lm``,
    a myopic fine-tuning as in Wu et al.'s Pythia figures). Each is scored by `planlm evaluate` on the test articles
    (windows of ``context_length``, stride ``eval_stride``; planner-predicted actions, and oracle actions for the
    planned LM). Reported, in nats per token, each with a paired bootstrap 95 % interval over articles and seeds
    (:func:`planlm.eval.intervals.pooled_bootstrap`): the gap of Fixed, the gap of the planned LM, and their difference
    (planned minus Fixed: negative = the plan replaces some pre-caching).

    Args:
        prepared: a `planlm prepare` output.
        lm: the pretrained (vanilla) base LM every run starts from (a `planlm pretrain-lm` folder or HF folder).
        planner: a NAP-pretrained planner (`planlm train-planner`) on the same corpus.
        out: output folder (written atomically): myopia.json, myopia.md, myopia.png, manifest.json; the fine-tuned
            runs go to OUT-runs/ (each reused when up to date, so a killed comparison resumes at its current run).
        variant: the planner-conditioned row of planlm.variants compared with Fixed.
        seeds: four runs per seed.
        optim: fine-tuning optimisation of every run (default: the CPU run preset's rate, one epoch, batch 32).
        context_length: training and evaluation window length (training stride context_length - 1).
        eval_stride: stride of the strided perplexity protocol.
        eval_max_articles: test articles scored (the first this many).
        train_lm: fine-tune the LM with the adapters (False: only the adapters, whose gradients myopia then cuts).
        bootstrap: bootstrap resamples.
        trainer: devices, precision, logging of `finetune`.
        force: retrain and rescore everything.

    Returns:
        The content of myopia.json.
    """
    validate_myopia_planned(prepared, lm, planner, out, variant, seeds, optim, bootstrap)
    config = MyopiaPlannedConfig.from_call(locals()).fingerprint()
    if up_to_date(out, STAGE, config, force):
        return read_manifest(out, STAGE).get("metrics", {})

    import json

    from planlm.eval.perplexity import PerplexityConfig
    from planlm.stages.evaluate import evaluate
    from planlm.stages.finetune import finetune
    from planlm.stages.run import slug
    from planlm.train.start import WindowConfig
    from planlm.variants import VARIANTS

    runs_dir = Path(f"{out}-runs")
    records, losses = [], []  # per seed: model -> per-article record; rows of the losses table
    for seed in seeds:
        records.append({})
        for model in MODELS:
            name = "Fixed" if model.startswith("fixed") else variant
            myopic = model.endswith("myopic")
            run_dir = runs_dir / f"{slug(name)}-{'myopic' if myopic else 'vanilla'}-seed{seed}"
            print(f"\n=== planlm myopia planned: {name}, {'myopic' if myopic else 'vanilla'}, seed {seed} ===",
                  flush=True)
            recipe = replace(VARIANTS[name].recipe, train_lm=train_lm)
            finetune(prepared=Path(prepared), lm=str(lm), planner=Path(planner) if name != "Fixed" else None,
                     out=run_dir, recipe=recipe, optim=optim,
                     windows=WindowConfig(context_length=context_length, stride=context_length - 1),
                     trainer=trainer, seed=seed, myopic=myopic, force=force)
            actions = ["predicted"] if name == "Fixed" else ["predicted", "oracle"]
            ev = evaluate(run=run_dir, variant=name, force=force, ppl=PerplexityConfig(
                actions=actions, protocols=["strided"], context_length=context_length, stride=eval_stride,
                max_articles=eval_max_articles, batch_size=64))
            ppl = json.loads((Path(ev) / "metrics.json").read_text())["perplexity"]["strided"]
            for source in actions:
                key = model if source == "predicted" else model + "-oracle"
                records[-1][key] = ppl[source]["by_article"]
                losses.append({"seed": seed, "model": key, "loss": math.log(ppl[source]["ppl"])})
    result = {"task": "planned", "config": config, "losses": losses, **_planned_gaps(records, bootstrap)}
    with atomic_dir(out, force=True) as tmp:
        _plot_planned(result, variant, tmp / "myopia.png")
        _write_result(tmp, result, _planned_markdown(result, variant), config,
                      inputs={"prepared": prepared, "lm": lm, "planner": planner},
                      metrics={k: result[k] for k in ("gap_fixed", "gap_planned", "gap_difference")})
    print(f"myopia planned: gap Fixed {result['gap_fixed']['estimate']:.4f}, {variant} "
          f"{result['gap_planned']['estimate']:.4f}, difference {result['gap_difference']['estimate']:.4f} "
          f"[{result['gap_difference']['low']:.4f}, {result['gap_difference']['high']:.4f}] nats/token -> {out}")
    return result


# What `planlm myopia planned` reads; its fingerprint (the manifest's config) decides reuse: the prepared corpus and
# the planner by their ids (not where they lie), no hardware settings.
MyopiaPlannedConfig = config_of(myopia_planned, exclude=("out", "force"), fingerprint=Fingerprint(
    ignore=("prepared", "planner", "trainer"),
    extra=lambda c: {"task": "planned", "prepared_id": read_manifest(c.prepared, "prepare").get("id"),
                     "planner_id": read_manifest(c.planner, "train-planner").get("id")}))


def _planned_gaps(records: list[dict[str, dict]], n_boot: int) -> dict:
    """The gaps (myopic - vanilla loss, nats/token) of Fixed and of the planned LM (predicted and oracle actions)
    and their differences, each with its paired bootstrap interval (one article draw for all models of a seed)."""
    from planlm.eval.intervals import pooled_bootstrap

    def gap(model):
        return lambda nll: nll[f"{model}-myopic"] - nll[f"{model}-vanilla"]

    def oracle_gap(nll):
        return nll["planned-myopic-oracle"] - nll["planned-vanilla-oracle"]

    def stat(fn):
        return pooled_bootstrap(records, fn, n_boot)

    fixed = gap("fixed")
    return {
        "gap_fixed": stat(fixed), "gap_planned": stat(gap("planned")), "gap_planned_oracle": stat(oracle_gap),
        "gap_difference": stat(lambda nll: gap("planned")(nll) - fixed(nll)),
        "gap_difference_oracle": stat(lambda nll: oracle_gap(nll) - fixed(nll)),
    }


def _planned_markdown(r: dict, variant: str) -> list[str]:
    cfg = r["config"]
    ci = r["gap_fixed"]
    lines = [f"# Myopia gap of {variant} vs Fixed (fine-tuned from one LM, train_lm {cfg['train_lm']}; "
             f"{len(cfg['seeds'])} seed(s), {ci['articles'][0]} test articles; {ci['resampled']} resampled)", "",
             "| seed | model | test loss (nats/token) |", "|---|---|---|"]
    lines += [f"| {x['seed']} | {x['model']} | {x['loss']:.4f} |" for x in r["losses"]]
    lines += ["", "| gap (myopic - vanilla, nats/token) | estimate | 95 % CI |", "|---|---|---|"]
    for key, label in (("gap_fixed", "Fixed"), ("gap_planned", f"{variant}, predicted actions"),
                       ("gap_planned_oracle", f"{variant}, oracle actions"),
                       ("gap_difference", f"{variant} - Fixed (predicted)"),
                       ("gap_difference_oracle", f"{variant} - Fixed (oracle)")):
        x = r[key]
        mark = " *" if x["low"] > 0 or x["high"] < 0 else ""
        lines.append(f"| {label} | {x['estimate']:+.4f} | [{x['low']:+.4f}, {x['high']:+.4f}]{mark} |")
    lines += ["", "(* = the interval excludes 0. A negative difference: the planned LM loses less by myopia, i.e. its "
              "plan stands in for some of the pre-caching the Fixed LM does.)", ""]
    return lines


def _plot_planned(r: dict, variant: str, path: Path) -> None:
    from planlm.eval.figures import pyplot

    plt = pyplot()
    keys = ("gap_fixed", "gap_planned", "gap_planned_oracle")
    labels = ("Fixed", f"{variant}\n(predicted)", f"{variant}\n(oracle)")
    est = np.array([r[k]["estimate"] for k in keys])
    err = np.array([[r[k]["estimate"] - r[k]["low"] for k in keys], [r[k]["high"] - r[k]["estimate"] for k in keys]])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar(range(len(keys)), est, yerr=err, capsize=6, color=["tab:gray", "tab:blue", "tab:green"])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(keys)), labels)
    ax.set(title="myopia gap (95 % CI)", ylabel="myopic - vanilla test loss (nats/token)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- shared


def _seed_problems(seeds: list[int], bootstrap: int | None = None) -> list[str]:
    out = [f"bootstrap must be at least 100 (got {bootstrap})"] if bootstrap is not None and bootstrap < 100 else []
    if not seeds:
        return out + ["seeds must name at least one seed"]
    if len(set(seeds)) != len(seeds):
        return out + [f"seeds must be distinct (got {seeds})"]
    return out


def _ci_text(ci) -> str:
    return f" (95 % CI [{ci[0]:.4f}, {ci[1]:.4f}])" if ci else ""


def _write_result(tmp: Path, result: dict, lines: list[str], config: dict, inputs, metrics: dict) -> None:
    write_json_atomic(tmp / "myopia.json", result)
    (tmp / "myopia.md").write_text("\n".join(lines) + "\n")
    write_manifest(tmp, STAGE, config, inputs=inputs, metrics=metrics)


def _lm_markdown(r: dict, budget: LMBudget, split: str) -> list[str]:
    runs = r["runs"]
    lines = [f"# Myopia gap on natural text (pretrain-lm preset {budget.preset}, {runs[0]['steps']} steps, "
             f"{runs[0]['trained_tokens']} training tokens per LM; {r['tokens']} {split} tokens in {r['articles']} "
             f"articles)", "",
             "| seed | model | val loss (pretrain-lm) | " + split + " loss (nats/token) |", "|---|---|---|---|"]
    per_seed = {}
    for run in runs:
        per_seed.setdefault(run["seed"], {})[run["kind"]] = run
    for i, (seed, kinds) in enumerate(per_seed.items()):
        for kind in KINDS:
            gap = "" if kind == "vanilla" else f" (gap {r['gap_per_seed'][i]:+.4f})"
            lines.append(f"| {seed} | {kind} | {kinds[kind]['val_loss']:.4f} | {kinds[kind]['eval_loss']:.4f}{gap} |")
    pp = np.array(r["per_position"])
    q = max(1, len(pp) // 4)
    lines += [
        "", f"Myopia gap (myopic - vanilla, nats/token): **{r['gap']:.4f}**, 95 % CI over seeds and articles "
        f"[{r['gap_ci'][0]:.4f}, {r['gap_ci'][1]:.4f}], over articles only [{r['gap_ci_articles'][0]:.4f}, "
        f"{r['gap_ci_articles'][1]:.4f}].", "",
        f"By position in the window: gap {pp[:q].mean():.4f} over the first quarter, {pp[-q:].mean():.4f} over the "
        f"last; slope {r['slope'] * 100:.4f} nats per 100 positions (95 % CI [{r['slope_ci'][0] * 100:.4f}, "
        f"{r['slope_ci'][1] * 100:.4f}]).", "",
    ]
    if r["probes"]:
        rows = {k: {(p["layer"], p["distance"]): p for p in r["probes"][k]} for k in KINDS}
        lines += ["Linear probes of the token d ahead on the hidden state after each layer (held-out accuracy; "
                  "first seed):", "", "| layer | d | vanilla | myopic | majority baseline |", "|---|---|---|---|---|"]
        for key in sorted(rows["vanilla"]):
            v, m = rows["vanilla"][key], rows["myopic"].get(key)
            lines.append(f"| {key[0]} | {key[1]} | {v['accuracy']:.4f} | {m['accuracy']:.4f} | {v['baseline']:.4f} |")
        lines.append("")
    return lines


def _plot_dp(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"vanilla": "tab:blue", "myopic": "tab:red"}
    for r in runs:
        steps = [c["step"] for c in r["curve"]]
        axes[0].plot(steps, [c["loss"] for c in r["curve"]], color=colors[r["kind"]], alpha=0.8,
                     label=f"{r['kind']} seed {r['seed']}")
        axes[1].plot(r["per_position"], color=colors[r["kind"]], alpha=0.8)
    axes[0].set(title="D_p: held-out Huber loss", xlabel="step", ylabel="loss")
    axes[0].legend(fontsize=7)
    axes[1].set(title="D_p: held-out loss by position", xlabel="position t", ylabel="loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_lm(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if r["probes"] else 1, figsize=(11 if r["probes"] else 5.5, 4), squeeze=False)
    ax = axes[0, 0]
    pp, (lo, hi) = np.array(r["per_position"]), r["per_position_ci"]
    x = np.arange(1, len(pp) + 1)
    ax.fill_between(x, lo, hi, color="tab:red", alpha=0.2, label="95 % CI (articles)")
    ax.plot(x, pp, color="tab:red", label=f"gap (mean {r['gap']:.3f})")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(title="myopia gap by position", xlabel="position in window (tokens of context)",
           ylabel="myopic - vanilla loss (nats)")
    ax.legend(fontsize=8)
    if r["probes"]:
        ax = axes[0, 1]
        for kind, style in zip(KINDS, ("-", "--")):
            rows = r["probes"][kind]
            layers = sorted({p["layer"] for p in rows})
            distances = sorted({p["distance"] for p in rows})
            for i, layer in enumerate(layers):
                acc = [next(p["accuracy"] for p in rows if p["layer"] == layer and p["distance"] == d)
                       for d in distances]
                ax.plot(distances, acc, style, marker="o", color=plt.get_cmap("viridis")(i / max(1, len(layers) - 1)),
                        label=f"{kind} layer {layer}")
        base = [np.mean([p["baseline"] for p in r["probes"]["vanilla"] if p["distance"] == d]) for d in distances]
        ax.plot(distances, base, "k:", label="majority baseline")
        ax.set(title="future-token probes (hidden states)", xlabel="distance d (tokens ahead)",
               ylabel="held-out accuracy", xticks=distances)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
