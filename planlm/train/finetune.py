"""`planlm finetune`: train a planned LM (adapters, + planner, + LM) with any recipe of the paper (DESIGN.md 1.5-1.6).

Checkpoints go to ``OUT.work/checkpoints`` while training (``--resume true`` continues exactly from the last one);
the finished planned LM is written atomically to ``OUT`` as a ``save_pretrained`` folder with a manifest.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from planlm.errors import PlanlmError, raise_if_problems
from planlm.models.selection import needs_planner
from planlm.train.loop import RecipeConfig
from planlm.train.trainer import OptimConfig, TrainerConfig, strategy_problems


@dataclass
class WindowConfig:
    """How articles become training windows (paper: 128 tokens, stride 127)."""

    context_length: int = 128
    """Tokens per window (paper: 128)."""
    stride: int = 127
    """Tokens between window starts (paper: 127: every token is scored once)."""
    max_train_articles: int | None = None
    """Use only the first this many train articles (None = all)."""
    max_val_windows: int | None = 512
    """Validate on at most this many val windows (None = all)."""
    num_workers: int = 0
    """DataLoader worker processes."""


@dataclass
class AdapterConfig:
    """Where and how the action adapters attach (paper: every layer but the first two, no gate)."""

    layers: list[int] | None = None
    """Conditioned layers; None = every layer but the first two (paper)."""
    gate: bool = False
    """Zero-initialised gate on every adapter, so training starts from the exact base LM (a departure)."""


@dataclass
class FinetuneConfig:
    """Everything `planlm finetune` reads; saved in the manifest and in OUT/finetune_config.json."""

    prepared: Path = Path("runs/prepared")
    lm: str = "gpt2"
    planner: Path | None = None
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint_every: int = 200
    seed: int = 0


def validate_finetune(cfg: FinetuneConfig, out: Path) -> None:
    problems = list(cfg.recipe.problems()) + strategy_problems(cfg.trainer)
    if not Path(cfg.prepared).exists():
        problems.append(f"--prepared {cfg.prepared} does not exist; build it with `planlm prepare --out {cfg.prepared}`")
    if needs_planner(cfg.recipe.selection) and cfg.planner is None:
        problems.append(
            f"recipe.selection={cfg.recipe.selection!r} needs a planner: pass --planner DIR (from `planlm train-planner`)"
        )
    if cfg.planner is not None and not Path(cfg.planner).exists():
        problems.append(f"--planner {cfg.planner} does not exist; train one with `planlm train-planner`")
    problems += cfg.optim.problems()
    if cfg.checkpoint_every < 1:
        problems.append(f"checkpoint_every must be positive (got {cfg.checkpoint_every})")
    if Path(out).resolve() == Path(cfg.prepared).resolve():
        problems.append("--out must differ from --prepared")
    raise_if_problems(problems, "finetune")


def build_planned_lm(cfg: FinetuneConfig, corpus, lm_model, planner):
    """The PlannedLM of a finetune config: adapters initialised from the corpus's k-means centroids."""
    import torch

    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig

    r = cfg.recipe
    pcfg = PlannedLMConfig(
        num_actions=corpus.num_actions,
        action_dim=corpus.embedding_dim,
        layers=cfg.adapters.layers,
        gate=cfg.adapters.gate,
        **r.selection_fields(),
        train_lm=r.train_lm,
        base_lm=str(Path(cfg.lm).resolve()) if Path(cfg.lm).exists() else str(cfg.lm),  # loadable from any cwd
        seed=cfg.seed,
    )
    return PlannedLM(lm_model, pcfg, centroids=torch.from_numpy(corpus.centroids), planner=planner)


def check_planner_fits(planner, corpus, planner_dir) -> None:
    from planlm.artifacts import check_same

    fix = "train the planner on this prepared corpus (`planlm train-planner --prepared ...`)"
    check_same("num_actions", corpus.num_actions, planner.config.num_actions, planner_dir, fix)
    check_same("encoder_dim", corpus.embedding_dim, planner.config.encoder_dim, planner_dir, fix)


def finetune(
    prepared: Path = Path("runs/prepared"),
    lm: str = "gpt2",
    planner: Path | None = None,
    out: Path = Path("runs/finetune"),
    recipe: RecipeConfig = RecipeConfig(),
    optim: OptimConfig = OptimConfig(),
    windows: WindowConfig = WindowConfig(),
    adapters: AdapterConfig = AdapterConfig(),
    trainer: TrainerConfig = TrainerConfig(),
    checkpoint_every: int = 200,
    seed: int = 0,
    resume: bool = False,
    force: bool = False,
) -> Path:
    """Fine-tune a planned LM: action adapters (+ planner, + LM) on a prepared corpus, with one of the paper's recipes.

    Paper defaults: frozen base LM, soft selection, planner unfrozen halfway, Adam lr 1e-4, batch 32, one epoch,
    windows of 128 tokens with stride 127. Recipes are combinations of ``--recipe.*`` fields (see
    planlm/train/loop.py): e.g. Cornille PA is ``--recipe.selection hard --recipe.planner_unfreeze never``.

    Args:
        prepared: prepared corpus (`planlm prepare`).
        lm: base causal LM: a Hugging Face Hub name (gpt2, EleutherAI/pythia-160m, allenai/OLMo-1B-hf) or a local
            folder (e.g. from `planlm pretrain-lm`).
        planner: planner artifact (`planlm train-planner`); needed by every selection but fixed and uniform.
        out: output folder of the planned LM (written atomically when training finishes).
        recipe: selection, training actions, planner unfreeze schedule, NAP weight, frozen or trained LM.
        optim: learning rate, batch size, epochs, steps.
        windows: window length and stride, data limits.
        adapters: conditioned layers, optional zero gate.
        trainer: devices, strategy (ddp, fsdp), precision, logger.
        checkpoint_every: save a resumable checkpoint every this many optimizer steps.
        seed: seed of initialisation, data order and action mixing.
        resume: continue exactly from the last checkpoint in OUT.work/checkpoints.
        force: retrain even if OUT already holds a planned LM trained with this config.

    Returns:
        The output folder.
    """
    cfg = FinetuneConfig(
        prepared=Path(prepared), lm=str(lm), planner=Path(planner) if planner else None, recipe=recipe, optim=optim,
        windows=windows, adapters=adapters, trainer=trainer, checkpoint_every=checkpoint_every, seed=seed,
    )
    out = Path(out)
    validate_finetune(cfg, out)
    from planlm.artifacts import up_to_date

    if up_to_date(out, "finetune", cfg, force):
        return out
    return run_finetune(cfg, out, resume=resume, force=force)


def run_finetune(cfg: FinetuneConfig, out: Path, resume: bool = False, force: bool = False) -> Path:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from planlm.artifacts import atomic_dir, write_json_atomic, write_manifest
    from planlm.data.planner_inputs import PlannerInputs
    from planlm.data.prepared import PreparedCorpus
    from planlm.data.windows import WindowDataset
    from planlm.persist import load_lm, load_planner, save_planned_lm
    from planlm.train.loop import LoopData, PlannedLMModule
    from planlm.train.resumable import AtomicCheckpointIO
    from planlm.train.trainer import build_trainer

    t0 = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    corpus = PreparedCorpus.load(cfg.prepared)
    lm_model, tokenizer = load_lm(cfg.lm)
    planner = None
    if needs_planner(cfg.recipe.selection):
        planner = load_planner(cfg.planner)
        check_planner_fits(planner, corpus, cfg.planner)
    model = build_planned_lm(cfg, corpus, lm_model, planner)

    w = cfg.windows
    train = WindowDataset.from_corpus(corpus, tokenizer, "train", w.context_length, w.stride, max_articles=w.max_train_articles)
    val = WindowDataset.from_corpus(corpus, tokenizer, "val", w.context_length, w.stride)
    if w.max_val_windows is not None and len(val) > w.max_val_windows:
        import torch.utils.data as tud

        val = tud.Subset(val, range(w.max_val_windows))
    if len(train) == 0:
        raise PlanlmError(f"{cfg.prepared} has no training windows; prepare a corpus with train articles")
    planner_fn = None
    if planner is not None:
        planner_fn = PlannerInputs.from_config(corpus, planner.config, tokenizer=tokenizer)
    collate = (train.collate_fn(planner_fn, pad_token_id=tokenizer.pad_token_id))
    data = LoopData(train, val, collate, cfg.optim.batch_size, cfg.optim.accumulate, w.num_workers)

    steps_per_epoch = math.ceil(len(train) / cfg.optim.batch_size)
    total_steps = steps_per_epoch * cfg.optim.epochs
    if cfg.optim.max_steps > 0:
        total_steps = min(total_steps, cfg.optim.max_steps)
    module = PlannedLMModule(model, cfg.recipe, cfg.optim, total_steps, seed=cfg.seed, data=data,
                             compile=cfg.trainer.compile)

    work = out.with_name(out.name + ".work")
    ckpt_dir = work / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if not resume and work.exists():
        shutil.rmtree(work)  # a fresh run: stale checkpoints of an earlier try must not be resumed by accident
    if resume and not last.exists():
        raise PlanlmError(f"--resume true but {last} does not exist; run without --resume to start afresh")
    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir), every_n_train_steps=cfg.checkpoint_every, save_last=True, save_top_k=0,
        save_on_train_epoch_end=True,
    )
    trainer = build_trainer(
        cfg.trainer, work, callbacks=[checkpoint], find_unused_parameters=module.planner_waits,
        max_epochs=cfg.optim.epochs, max_steps=total_steps, accumulate_grad_batches=cfg.optim.accumulate,
        gradient_clip_val=cfg.optim.grad_clip or None, use_distributed_sampler=False, num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()], check_val_every_n_epoch=1,
    )
    trainer.fit(module, ckpt_path=str(last) if resume else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val_loss", "train_loss")}
    if "val_loss" not in metrics and len(val):
        trainer.validate(module, verbose=False)  # max_steps ended mid-epoch: still report the final model's val loss
        metrics["val_loss"] = float(trainer.callback_metrics["val_loss"])
    if not trainer.is_global_zero:
        return out

    counts = {
        "train_windows": len(train), "val_windows": len(val), "optimizer_steps": int(trainer.global_step),
        "adapter_parameters": model.adapter_parameters(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    with atomic_dir(out, force=True) as tmp:
        save_planned_lm(model, tmp)
        tokenizer.save_pretrained(tmp / "tokenizer")
        write_json_atomic(tmp / "finetune_config.json", dataclasses.asdict(cfg))
        if (work / "logs").exists():
            shutil.copytree(work / "logs", tmp / "logs")
        inputs = {"prepared": cfg.prepared, "lm": cfg.lm}
        if cfg.planner:
            inputs["planner"] = cfg.planner
        write_manifest(
            tmp, "finetune", cfg, inputs=inputs, counts=counts, metrics=metrics,
            encoder=corpus.encoder, num_actions=corpus.num_actions, seconds=round(time.time() - t0, 1),
        )
    shutil.rmtree(work, ignore_errors=True)
    print(f"planlm finetune: {cfg.recipe.selection} / {cfg.recipe.actions} -> {out} "
          f"({counts['optimizer_steps']} steps, " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + ")")
    return out
