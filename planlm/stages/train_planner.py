"""`planlm train-planner`: pretrain the planner by Next-Action Prediction (DESIGN.md 1.2).

NAP: cross-entropy between the planner's logits for sentence j (read from the sentences before j) and j's oracle
action. Paper defaults: Adam, lr 1e-4, weight decay 1e-4, batch 32 target sentences, one epoch. The same run scores
a unigram and a bigram baseline on the same validation sentences, so every number comes with its reference point;
the metrics and baselines live in :mod:`planlm.eval.nap`.

A planner of horizon H > 1 (``--planner.horizon H``) trains on every offset 1..H at once, offset h reading the oracle
actions of offsets 1..h-1 (teacher forcing); the loss is the mean cross-entropy over every scored (target, offset),
and validation reports each offset on its own ("planner" = offset 1, "planner offset h").
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from planlm.artifacts import (
    atomic_dir,
    read_manifest,
    up_to_date,
    write_manifest,
    writes_artifact,
)
from planlm.data.planner_inputs import PlannerInputs, needs_token_counts
from planlm.data.prepared import PreparedCorpus
from planlm.errors import PlanlmError, raise_if_problems
from planlm.eval.nap import (
    TOP_K,
    baseline_metrics,
    bigram_table,
    evaluate_nap,
    format_table,
    offset_name,
)
from planlm.models.planner import PlannerConfig
from planlm.stage_config import Fingerprint, config_of
from planlm.train.planner_nap import ArticleBatches, NAPCollate, nap_module
from planlm.train.start import AdapterConfig, WindowConfig
from planlm.train.trainer import OptimConfig, TrainerConfig

STAGE = "train-planner"


# ---- the stage ----------------------------------------------------------------------------------------------------
Objective = Literal["nap", "ntp"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)


def validate_train_planner(cfg: TrainPlannerConfig, out: str | Path) -> None:
    """Raise one error listing every problem with the arguments of :func:`train_planner`."""
    problems = []
    planner, prepared = cfg.planner, cfg.prepared
    corpus_k = corpus_d = None
    try:
        m = read_manifest(prepared, "prepare")
        corpus_k, corpus_d = m.get("num_actions"), m.get("embedding_dim")
    except PlanlmError as e:
        problems.append(str(e))
    if cfg.objective not in OBJECTIVES:
        problems.append(f"objective must be one of {', '.join(OBJECTIVES)} (got {cfg.objective!r})")
    if cfg.objective == "ntp" and not cfg.planned_lm and not cfg.lm:
        problems.append("objective ntp trains the planner through a frozen planned LM: pass --planned_lm DIR, or "
                        "--lm for the base LM with the fresh adapters finetune starts from")
    elif cfg.objective == "ntp" and cfg.planned_lm and not Path(cfg.planned_lm).is_dir():
        problems.append(f"--planned_lm {cfg.planned_lm} does not exist; build one with `planlm finetune`")
    if planner.kind == "bigram" and cfg.objective != "nap":
        problems.append("planner.kind bigram has nothing to train: use --objective nap (it fits the bigram only)")
    if cfg.objective == "ntp" and planner.horizon > 1:
        problems.append("objective ntp trains a next-sentence planner: use --planner.horizon 1 (NAP trains plans)")
    resolved = dataclasses.replace(planner, num_actions=planner.num_actions or 1, encoder_dim=planner.encoder_dim or 2)
    problems += [f"planner: {p}" for p in resolved.problems()]
    if planner.num_actions and corpus_k and planner.num_actions != corpus_k:
        problems.append(f"planner.num_actions={planner.num_actions} but {prepared} has K={corpus_k}; leave it 0")
    if planner.encoder_dim and corpus_d and planner.encoder_dim != corpus_d:
        problems.append(f"planner.encoder_dim={planner.encoder_dim} but {prepared} has d={corpus_d}; leave it 0")
    if needs_token_counts(planner) and not cfg.lm and cfg.objective != "ntp":
        problems.append(
            "the paper context counts LM tokens: pass --lm (Hub name or local folder) for its tokenizer, "
            "or set --planner.context_sentences N"
        )
    problems += cfg.optim.problems()
    if cfg.optim.accumulate != 1 or cfg.optim.planner_lr is not None:
        problems.append("optim.accumulate and optim.planner_lr belong to finetune; train-planner trains the planner "
                        "alone with optim.lr, one batch per step")
    if Path(out).resolve() == Path(prepared).resolve():
        problems.append("--out must differ from the prepared corpus directory")
    raise_if_problems(problems, STAGE)


@writes_artifact()
def train_planner(
    prepared: str = "runs/prepared",
    out: str = "runs/planner",
    lm: str | None = None,
    planner: PlannerConfig = PlannerConfig(),
    objective: Objective = "nap",
    planned_lm: str | None = None,
    adapters: AdapterConfig = AdapterConfig(),
    windows: WindowConfig = WindowConfig(),
    optim: OptimConfig = OptimConfig(weight_decay=1e-4),
    init_from_centroids: bool = True,
    seed: int = 0,
    trainer: TrainerConfig = TrainerConfig(),
    force: bool = False,
) -> dict:
    """Pretrain the planner by next-action prediction (NAP) on a prepared corpus (DESIGN.md 1.2).

    Trains on every sentence of the train articles, validates on the val articles, and reports the planner's val
    loss, top-1 / top-5 accuracy and action perplexity next to a unigram and a bigram baseline.

    Args:
        prepared: a `planlm prepare` output directory.
        out: the planner artifact directory to write (planner.safetensors, planner_config.json, manifest.json).
        lm: the LM whose tokenizer counts the paper context's tokens: a Hub name (gpt2) or a local folder (a
            `planlm pretrain-lm` output). Without it, set planner.context_sentences.
        planner: planner architecture and context (num_actions and encoder_dim come from the corpus).
        objective: "nap" (next-action prediction, the paper's pretraining) or "ntp" (next-token loss through the
            frozen LM, the paper's "no NAP pretraining": the planner and the action adapters train together).
        planned_lm: objective ntp: the planned-LM folder whose frozen LM and (trained further) adapters the stage
            starts from; unset: the base ``lm`` with the adapters `planlm finetune --seed` starts from (the paper's
            "no NAP pretraining", section 4.3: "an end-to-end stage in which we keep the LM parameters frozen").
        adapters: objective ntp without ``planned_lm``: where and how the adapters attach (as `planlm finetune
            --adapters.*`; a fine-tuning from this planner must use the same).
        windows: objective ntp: the training windows and the val windows its LM val loss reads (as `planlm finetune
            --windows.*`: 128 tokens, stride 127, at most 512 val windows).
        optim: Adam lr (paper: 1e-4), weight_decay (paper: 1e-4), batch_size (target sentences per step, or
            windows for ntp; paper: 32), epochs (paper: 1), max_steps (-1: no limit), grad_clip.
        init_from_centroids: initialise the policy head from the k-means centroids (paper).
        seed: seed of initialisation and shuffling.
        trainer: devices, precision, logging.
        force: rebuild ``out`` even when it exists.

    Returns:
        ``{"planner": metrics, "unigram": metrics, "bigram": metrics}``, metrics = loss, top1, top5, perplexity.
        Objective ntp also writes the trained adapters (``adapters.safetensors``), which `planlm finetune
        --planner OUT` starts from.
    """
    cfg = TrainPlannerConfig.from_call(locals())
    validate_train_planner(cfg, out)
    fingerprint = cfg.fingerprint()
    if up_to_date(out, STAGE, fingerprint, force):
        metrics = read_manifest(out, STAGE).get("metrics", {})
        print(format_table(metrics))
        return metrics
    train = _train_ntp if objective == "ntp" else _fit_bigram if planner.kind == "bigram" else _train_nap
    return train(cfg, Path(out), fingerprint)


# Everything `planlm train-planner` reads. Its fingerprint, recorded as the manifest's config, decides reuse: the
# config without the hardware settings, plus the prepared corpus's id.
# ``adapters`` counts for objective ntp only: a NAP planner's fingerprint is as before it existed (its artifacts are
# still reused), and an ntp planner trained before its adapters trained with it (issue 27) is rebuilt.
TrainPlannerConfig = config_of(train_planner, exclude=("out", "force"), fingerprint=Fingerprint(
    ignore=("trainer", "windows.num_workers"),  # DataLoader workers change no number
    absent_unless={"adapters": lambda c: c.objective == "ntp",
                   "windows": lambda c: c.objective == "ntp",
                   "planner.kind": lambda c: c.planner.kind != "transformer",
                   "planner.bigram_prior": lambda c: c.planner.bigram_prior,
                   "planner.last_sentences": lambda c: c.planner.last_sentences > 0,
                   "planner.bigram_alpha": lambda c: c.planner.bigram_alpha != 1.0,
                   "adapters.projection_init": lambda c: c.adapters.projection_init != "xavier"},
    extra=lambda c: {"prepared_id": read_manifest(c.prepared, "prepare").get("id")}))


@dataclasses.dataclass
class _Run:
    """What both objectives set up: the corpus, the planner and its inputs, split sentences, baselines."""

    corpus: PreparedCorpus
    planner: object
    builder: object
    split_ids: dict
    baselines: dict


def _setup(cfg: TrainPlannerConfig, tokenizer) -> _Run:
    import lightning as L
    import torch

    from planlm.models.planner import Planner

    prepared = cfg.prepared
    corpus = PreparedCorpus.load(prepared)
    planner_cfg = dataclasses.replace(cfg.planner, num_actions=corpus.num_actions, encoder_dim=corpus.embedding_dim)
    split_ids = {}
    for split in ("train", "val"):
        arts = corpus.article_ids(split)
        ranges = [np.arange(*corpus.sentence_range(a)) for a in arts]
        split_ids[split] = np.concatenate(ranges).astype(np.int64) if ranges else np.zeros(0, np.int64)
        if not len(split_ids[split]):
            raise PlanlmError(f"{prepared} has no {split} sentences; prepare it with a non-empty {split} split")
    L.seed_everything(cfg.seed, verbose=False)
    planner = Planner(planner_cfg, torch.from_numpy(corpus.centroids) if cfg.init_from_centroids else None)
    if planner_cfg.kind == "bigram" or planner_cfg.bigram_prior:  # the train split's bigram, fitted once
        table = bigram_table(corpus, split_ids["train"], alpha=planner_cfg.bigram_alpha)
        planner.set_bigram(torch.from_numpy(corpus.centroids), torch.from_numpy(table))
    return _Run(corpus, planner, PlannerInputs.from_config(corpus, planner_cfg, tokenizer=tokenizer, progress=True), split_ids,
                baseline_metrics(corpus, split_ids["train"], split_ids["val"]))


def _save(tmp: Path, run: _Run, cfg: TrainPlannerConfig, fingerprint: dict, metrics: dict, counts: dict,
          **extra) -> None:
    from planlm.persist import save_planner

    save_planner(run.planner.cpu(), tmp)
    write_manifest(
        tmp, STAGE, fingerprint,
        inputs={"prepared": cfg.prepared, **({"lm": cfg.lm} if cfg.lm else {}), **extra.pop("more_inputs", {})},
        counts={"train_sentences": len(run.split_ids["train"]), "val_sentences": len(run.split_ids["val"]),
                "parameters": sum(p.numel() for p in run.planner.parameters()), **counts},
        metrics=metrics, planner_config=run.planner.config, encoder=run.corpus.encoder,
        num_actions=run.corpus.num_actions, embedding_dim=run.corpus.embedding_dim, **extra,
    )


def _experiment(cfg: TrainPlannerConfig):
    """What --trainer.logger wandb records: group = the planner objective (NAP / NTP), the resolved config."""
    from planlm.artifacts import to_jsonable
    from planlm.train.trainer import Experiment

    return Experiment("train-planner", f"planner ({cfg.objective})", cfg.seed, to_jsonable(cfg))


def _train_nap(cfg: TrainPlannerConfig, out: Path, fingerprint: dict) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from planlm.persist import load_tokenizer
    from planlm.train.trainer import build_trainer, fit

    o, seed = cfg.optim, cfg.seed
    run = _setup(cfg, load_tokenizer(cfg.lm) if needs_token_counts(cfg.planner) else None)
    collate = NAPCollate(run.builder, run.corpus.actions, run.corpus, run.planner.config.horizon)
    gen = torch.Generator().manual_seed(seed)
    if run.planner.config.context == "causal":
        every_sentence = range(len(run.corpus.actions))  # the samplers yield global sentence ids
        train_loader = DataLoader(every_sentence, collate_fn=collate, batch_sampler=ArticleBatches(
            run.corpus, run.corpus.article_ids("train"), o.batch_size, shuffle=True, seed=seed))
        val_loader = DataLoader(every_sentence, collate_fn=collate, batch_sampler=ArticleBatches(
            run.corpus, run.corpus.article_ids("val"), o.batch_size, shuffle=False, seed=seed))
    else:
        train_loader = DataLoader(run.split_ids["train"].tolist(), batch_size=o.batch_size, shuffle=True, generator=gen,
                                  collate_fn=collate)
        val_loader = DataLoader(run.split_ids["val"].tolist(), batch_size=max(o.batch_size, 256), collate_fn=collate)
    module = nap_module(run.planner, o.lr, o.weight_decay, run.baselines)

    with atomic_dir(out, force=True) as tmp:
        trainer = build_trainer(cfg.trainer, tmp, max_epochs=o.epochs, max_steps=o.max_steps, num_sanity_val_steps=0,
                                enable_checkpointing=False, gradient_clip_val=o.grad_clip or None,
                                experiment=_experiment(cfg))
        started = time.perf_counter()
        got = fit(trainer, module, train_loader, val_loader)
        seconds = time.perf_counter() - started
        names = ("loss", "top1", f"top{TOP_K}", "perplexity")
        metrics = {
            offset_name(h): {m: float(got[f"val/{m}" if h == 1 else f"val/offset{h}_{m}"]) for m in names}
            for h in range(1, run.planner.config.horizon + 1)
        }
        metrics.update(run.baselines)
        if trainer.is_global_zero:
            _save(tmp, run, cfg, fingerprint, metrics, {"steps": trainer.global_step, "seconds": round(seconds, 2)},
                  context_tokenizer=cfg.lm)
    print(format_table(metrics))
    return metrics


def _fit_bigram(cfg: TrainPlannerConfig, out: Path, fingerprint: dict) -> dict:
    """``--planner.kind bigram``: the train split's action bigram as a planner (the "Bigram PA" baseline); nothing to
    train. Its val row differs from the bigram baseline's only where a stored (float16) embedding's nearest centroid
    is not the sentence's action."""
    from planlm.persist import load_tokenizer

    started = time.perf_counter()
    run = _setup(cfg, load_tokenizer(cfg.lm) if needs_token_counts(cfg.planner) else None)
    metrics = {"planner": evaluate_nap(run.planner, run.builder, run.split_ids["val"], run.corpus.actions),
               **run.baselines}
    with atomic_dir(out, force=True) as tmp:
        _save(tmp, run, cfg, fingerprint, metrics, {"steps": 0, "seconds": round(time.perf_counter() - started, 2)},
              context_tokenizer=cfg.lm)
    print(format_table(metrics))
    return metrics


def _train_ntp(cfg: TrainPlannerConfig, out: Path, fingerprint: dict) -> dict:
    """The paper's "no NAP pretraining": a fresh planner and the action adapters learn from the next-token loss
    through the frozen LM ("we replace NAP training of the planner with an end-to-end stage in which we keep the LM
    parameters frozen", section 4.3).

    The start is the base ``lm`` with the initial adapters of `planlm finetune` at this seed (or a `planlm finetune`
    folder's LM and adapters, ``planned_lm``); only the LM is frozen. The planner's logits reach the adapters by
    soft selection (exact gradient, DESIGN.md 1.5), on the paper's training windows (128 tokens, stride 127), all at
    ``optim.lr`` (the paper: one rate for everything). ``optim.batch_size`` counts windows here. This is a recipe
    of the ONE fine-tuning loop (planlm/train/loop.py), not a loop of its own. The trained adapters are saved next
    to the planner, and `planlm finetune --planner OUT` starts from both.
    """
    from planlm.artifacts import check_same
    from planlm.persist import load_planned_lm, load_tokenizer, save_adapters
    from planlm.train.loop import LoopData, PlannedLMModule
    from planlm.train.recipe import RecipeConfig
    from planlm.train.trainer import build_trainer, fit

    o, planned_lm = cfg.optim, cfg.planned_lm
    tokenizer_source = cfg.lm or str(Path(planned_lm) / "tokenizer")
    tokenizer = load_tokenizer(tokenizer_source)
    run = _setup(cfg, tokenizer)
    # the planner and the adapters train from the start, through soft selection (the exact gradient); the LM never
    recipe = RecipeConfig(selection="soft", actions="predicted", planner_unfreeze="immediate", train_lm=False)
    if planned_lm:  # the folder's adapters, read through soft selection whatever selection they were trained with
        model = load_planned_lm(planned_lm, config_changes={"selection": recipe.selection})
        check_same("num_actions", run.corpus.num_actions, model.config.num_actions, planned_lm,
                   "fine-tune the planned LM on this prepared corpus")
        model.planner = run.planner
    else:  # the base --lm with the adapters `planlm finetune --seed` starts from, frozen here (no NAP, section 4.3)
        from planlm.stages.finetune import FinetuneConfig
        from planlm.train.start import initial_planned_lm

        start = FinetuneConfig(prepared=Path(cfg.prepared), lm=cfg.lm, seed=cfg.seed, recipe=recipe,
                               adapters=cfg.adapters, trainer=cfg.trainer)
        model, _ = initial_planned_lm(start, run.corpus, fresh_planner=run.planner.config)
        run.planner = model.planner
    model.adapters.requires_grad_(True)  # PlannedLMModule freezes the LM (recipe.train_lm) and trains the planner
    train, val = cfg.windows.datasets(run.corpus, tokenizer)
    if len(train) == 0:
        raise PlanlmError(f"{cfg.prepared} has no training windows; prepare a corpus with train articles")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = LoopData(train, val, train.collate_fn(run.builder, pad_token_id=pad), o.batch_size,
                    num_workers=cfg.windows.num_workers)
    total = -(-len(train) // o.batch_size) * o.epochs
    total = min(total, o.max_steps) if o.max_steps > 0 else total
    module = PlannedLMModule(model, recipe, o, total, seed=cfg.seed, data=data)

    with atomic_dir(out, force=True) as tmp:
        trainer = build_trainer(cfg.trainer, tmp, max_epochs=o.epochs, max_steps=total, num_sanity_val_steps=0,
                                enable_checkpointing=False, use_distributed_sampler=False,
                                gradient_clip_val=o.grad_clip or None, experiment=_experiment(cfg))
        started = time.perf_counter()
        lm_loss = fit(trainer, module)["val/loss"]
        seconds = time.perf_counter() - started
        planner = evaluate_nap(run.planner, run.builder, run.split_ids["val"], run.corpus.actions)
        metrics = {"planner": {**planner, "lm_loss": lm_loss, "lm_perplexity": float(np.exp(lm_loss))},
                   **run.baselines}
        if trainer.is_global_zero:
            save_adapters(model.adapters, tmp)  # before the manifest, which hashes every file
            _save(tmp, run, cfg, fingerprint, metrics,
                  {"steps": trainer.global_step, "seconds": round(seconds, 2), "train_windows": len(train),
                   "val_windows": len(val),
                   "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                   "adapter_parameters": model.adapter_parameters()},
                  context_tokenizer=tokenizer_source, more_inputs={"planned_lm": planned_lm} if planned_lm else {},
                  adapters=stage_adapters_record(model))
    print(format_table(metrics))
    print(f"frozen LM with this planner and adapters: val LM loss {lm_loss:.4f} (perplexity {np.exp(lm_loss):.2f})")
    return metrics


def stage_adapters_record(model) -> dict:
    """What the ntp manifest records of the adapters it trained (``adapters``), which `planlm finetune` checks before
    it starts from them (:func:`planlm.train.start.load_stage_adapters`)."""
    from planlm.persist import ADAPTER_WEIGHTS

    return {"file": ADAPTER_WEIGHTS, "base_lm": model.config.base_lm, "layers": list(model.adapters.layers),
            "gate": bool(model.config.gate), "parameters": model.adapter_parameters()}
