"""`planlm finetune`: train a planned LM (adapters, + planner, + LM) with any recipe of the paper (DESIGN.md 1.5-1.6).

Checkpoints go to ``OUT.work/checkpoints`` while training (``--resume true`` continues exactly from the last one);
the finished planned LM is written atomically to ``OUT`` as a ``save_pretrained`` folder with a manifest.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path

from planlm.artifacts import writes_artifact
from planlm.errors import PlanlmError, raise_if_problems
from planlm.models.adapters import OFFSET_INITS
from planlm.models.mtp import MTPConfig
from planlm.models.selection import needs_planner
from planlm.stage_config import Fingerprint, config_of
from planlm.train.recipe import RecipeConfig
from planlm.train.start import (
    AdapterConfig,
    WindowConfig,
    initial_planned_lm,
    stage_adapters,
)
from planlm.train.trainer import OptimConfig, TrainerConfig, strategy_problems, global_batch_problems, world_size


def validate_finetune(cfg: FinetuneConfig, out: Path) -> None:
    from planlm.train.trainer import logger_problems, mtp_problems

    problems = list(cfg.recipe.problems()) + strategy_problems(cfg.trainer) + mtp_problems(cfg.mtp, cfg.trainer)
    problems += logger_problems(cfg.trainer)
    problems += global_batch_problems(cfg.optim.batch_size, cfg.optim.accumulate, world_size(cfg.trainer))
    if not Path(cfg.prepared).exists():
        problems.append(f"--prepared {cfg.prepared} does not exist; build it with `planlm prepare --out {cfg.prepared}`")
    if needs_planner(cfg.recipe.selection) and cfg.planner is None:
        problems.append(
            f"recipe.selection={cfg.recipe.selection!r} needs a planner: pass --planner DIR (from `planlm train-planner`)"
        )
    if cfg.planner is not None and not Path(cfg.planner).exists():
        problems.append(f"--planner {cfg.planner} does not exist; train one with `planlm train-planner`")
    problems += cfg.optim.problems()
    if cfg.adapters.offset_init not in OFFSET_INITS:
        problems.append(f"adapters.offset_init must be one of {', '.join(OFFSET_INITS)} (got {cfg.adapters.offset_init!r})")
    if cfg.checkpoint_every < 1:
        problems.append(f"checkpoint_every must be positive (got {cfg.checkpoint_every})")
    if Path(out).resolve() == Path(cfg.prepared).resolve():
        problems.append("--out must differ from --prepared")
    raise_if_problems(problems, "finetune")


@writes_artifact()
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
    mtp: MTPConfig = MTPConfig(init="copy"),
    checkpoint_every: int = 200,
    seed: int = 0,
    myopic: bool = False,
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
        planner: planner artifact (`planlm train-planner`); needed by every selection but fixed and uniform. A
            no-NAP planner (``--objective ntp``) brings the adapters it trained with: fine-tuning starts from them.
        out: output folder of the planned LM (written atomically when training finishes).
        recipe: selection, training actions, planner unfreeze schedule, NAP weight, frozen or trained LM.
        optim: learning rate, batch size, epochs, steps.
        windows: window length and stride, data limits.
        adapters: conditioned layers, optional zero gate.
        trainer: devices, strategy (ddp, fsdp), precision, logger.
        mtp: multi-token prediction heads added to the LM (Gloeckle et al. 2024): ``--mtp.n_heads 4`` trains heads
            2..n (blocks initialised as copies of the LM's last block, head 1) on the trunk, frozen with the LM
            unless ``--recipe.train_lm true``; saved as ``mtp_heads.safetensors`` in OUT.
        checkpoint_every: save a resumable checkpoint every this many optimizer steps.
        seed: seed of initialisation, data order and action mixing.
        myopic: myopic training (Wu et al. 2024): the loss at a position sends no gradient into the hidden states of
            earlier positions, so neither the LM nor the adapters can pre-cache for later tokens.
        resume: continue exactly from the last checkpoint in OUT.work/checkpoints.
        force: retrain even if OUT already holds a planned LM trained with this config.

    Returns:
        The output folder.
    """
    from planlm.hub import local_folder

    planner = local_folder(planner, "--planner")  # a Hub id: its cached snapshot
    cfg = FinetuneConfig.from_call(locals())
    out = Path(out)
    validate_finetune(cfg, out)
    from planlm.artifacts import up_to_date

    if up_to_date(out, "finetune", cfg, force):
        return out
    return run_finetune(cfg, out, resume=resume, force=force)


# Everything `planlm finetune` reads; saved in the manifest and in OUT/finetune_config.json. Built directly too
# (``FinetuneConfig(prepared=..., lm=..., seed=...)``: train-planner's fresh adapters, tests).
FinetuneConfig = config_of(finetune, exclude=("out", "resume", "force"), fingerprint=Fingerprint(
    # DataLoader workers change no number: a run reads as before whatever (and however defaulted) they are
    record={"windows": lambda c: {**dataclasses.asdict(c.windows), "num_workers": c.windows.num_workers or 0}},
    # W_A's initialisation counts once it departs from xavier: the runs built before the option are still reused
    absent_unless={"adapters.projection_init": lambda c: c.adapters.projection_init != "xavier"}))


def _flatten(d: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}: the names of the CLI options."""
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_resume_config(cfg: FinetuneConfig, work: Path) -> None:
    """A resumed run must continue the same recipe: a changed lr, batch size or recipe would make the checkpoint's
    state and the manifest's config disagree. Hardware settings (--trainer.*) may change."""
    import json

    saved = work / "config.json"
    if not saved.exists():
        return
    from planlm.artifacts import to_jsonable

    now = json.loads(json.dumps(to_jsonable(cfg)))  # the JSON view on both sides: tuples and lists compare equal
    try:
        before = json.loads(saved.read_text())
    except ValueError:
        raise PlanlmError(f"{saved} is damaged; run without --resume to start afresh") from None
    now.pop("trainer", None), before.pop("trainer", None)
    for side in (now, before):  # DataLoader workers are hardware, like --trainer.*
        (side.get("windows") or {}).pop("num_workers", None)
    flat_now, flat_before = _flatten(now), _flatten(before)
    changed = sorted(k for k in set(flat_now) | set(flat_before) if flat_now.get(k) != flat_before.get(k))
    if changed:
        raise PlanlmError(f"--resume true with another config than the interrupted run ({', '.join(changed)} changed); "
                          f"resume with the same arguments, or run without --resume to start afresh")


WORK_MARKER = ".planlm-work"
WORK_FILES = {"config.json", "checkpoints", "logs", WORK_MARKER}  # everything planlm writes in OUT.work


def check_work_folder(cfg: FinetuneConfig, work: Path, resume: bool, force: bool) -> int | None:
    """Check ``OUT.work`` (the checkpoints of a run while it trains) before any work, writing nothing, and return the
    step to resume from (None for a fresh run). Nothing planlm did not write may be deleted, and neither may a
    resumable checkpoint without ``--force true``: each refusal is one line saying what to do."""
    from planlm.train.resumable import load_checkpoint_safely

    last = work / "checkpoints" / "last.ckpt"
    if work.exists() and not work.is_dir():
        raise PlanlmError(f"{work} is a file, where finetune keeps its checkpoints; move it or choose another --out")
    if work.exists():
        foreign = sorted(p.name for p in work.iterdir() if p.name not in WORK_FILES)
        if foreign:
            raise PlanlmError(f"{work} holds files planlm did not write ({', '.join(foreign[:3])}); "
                              "finetune keeps its checkpoints there: move them or choose another --out")
    if resume:
        if not last.exists():
            raise PlanlmError(f"--resume true but {last} does not exist; run without --resume to start afresh")
        check_resume_config(cfg, work)
        state = load_checkpoint_safely(last)  # refuses a pickle before Lightning sees it
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int) or "planlm" not in state:
            raise PlanlmError(f"{last} is not a finetune checkpoint (no step or planlm state); run without --resume "
                              "--force true to start afresh")
        return int(state["global_step"])
    if last.exists() and not force:
        try:
            step = f" at step {int(load_checkpoint_safely(last)['global_step'])}"
        except (PlanlmError, KeyError, TypeError, ValueError):
            step = ""
        raise PlanlmError(f"found a checkpoint{step} in {last.parent}: --resume true to continue, --force true to "
                          "start over")
    return None


def fresh_work_folder(cfg: FinetuneConfig, work: Path) -> None:
    """A fresh run's ``OUT.work`` (:func:`check_work_folder` found it planlm's own, or absent): emptied, marked and
    holding the run's config, which ``--resume true`` compares against."""
    from planlm.artifacts import write_json_atomic

    if work.exists():
        shutil.rmtree(work)  # planlm's own, and nothing to resume from (or --force): stale state must not leak in
    work.mkdir(parents=True)
    (work / WORK_MARKER).write_text("checkpoints of `planlm finetune` while it trains; removed when it finishes\n")
    write_json_atomic(work / "config.json", dataclasses.asdict(cfg))


def run_finetune(cfg: FinetuneConfig, out: Path, resume: bool = False, force: bool = False) -> Path:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from planlm.artifacts import atomic_dir, secondary_rank, write_json_atomic, write_manifest
    from planlm.data.planner_inputs import PlannerInputs
    from planlm.data.prepared import PreparedCorpus
    from planlm.persist import save_planned_lm
    from planlm.train.loop import LoopData, PlannedLMModule
    from planlm.train.resumable import AtomicCheckpointIO
    from planlm.train.trainer import build_trainer, fit

    t0 = time.time()
    work = out.with_name(out.name + ".work")
    # before any work, writing nothing. A DDP worker (rank > 0) re-running the command leaves OUT.work to rank 0,
    # which checks and writes it: two ranks emptying and re-creating one folder race each other.
    worker = secondary_rank()
    resume_step = check_work_folder(cfg, work, resume, force) if resume or not worker else None
    corpus = PreparedCorpus.load(cfg.prepared)
    model, tokenizer = initial_planned_lm(cfg, corpus)
    lm_model, planner = model.lm, model.planner
    heads = None
    if cfg.mtp.n_heads > 1:
        from planlm.models.mtp import MTPHeads

        heads = MTPHeads(lm_model, cfg.mtp.n_heads, init=cfg.mtp.init)

    w = cfg.windows
    train, val = w.datasets(corpus, tokenizer)
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
                             compile=cfg.trainer.compile, heads=heads, mtp=cfg.mtp)

    ckpt_dir = work / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume_step is None and not worker:
        fresh_work_folder(cfg, work)
    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir), every_n_train_steps=cfg.checkpoint_every, save_last=True, save_top_k=0,
        save_on_train_epoch_end=True,
    )
    from planlm.artifacts import to_jsonable
    from planlm.train.trainer import Experiment
    from planlm.variants import variant_name

    config = to_jsonable(cfg)
    trainer = build_trainer(
        cfg.trainer, work, callbacks=[checkpoint], resume_step=resume_step,
        experiment=Experiment("finetune", variant_name(config), cfg.seed, config),
        find_unused_parameters=module.planner_waits,
        max_epochs=cfg.optim.epochs, max_steps=total_steps, accumulate_grad_batches=cfg.optim.accumulate,
        gradient_clip_val=cfg.optim.grad_clip or None, use_distributed_sampler=False, num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()], check_val_every_n_epoch=1,
    )
    logged = fit(trainer, module, ckpt_path=str(last) if resume else None)
    # the manifest's metric keys, from the logged names
    metrics = {key: logged[name] for key, name in (("train_loss", "train/loss"), ("val_loss", "val/loss"))
               if name in logged}
    if not trainer.is_global_zero:
        return out

    counts = {
        "train_windows": len(train), "val_windows": len(val), "optimizer_steps": int(trainer.global_step),
        "adapter_parameters": model.adapter_parameters(),
        "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),  # + MTP heads
    }
    with atomic_dir(out, force=True) as tmp:
        save_planned_lm(model, tmp)
        if heads is not None:
            from planlm.persist import save_mtp_heads

            save_mtp_heads(heads, tmp)
        tokenizer.save_pretrained(tmp / "tokenizer")
        write_json_atomic(tmp / "finetune_config.json", dataclasses.asdict(cfg))
        if (work / "logs").exists():
            shutil.copytree(work / "logs", tmp / "logs")
        inputs = {"prepared": cfg.prepared, "lm": cfg.lm}
        if cfg.planner:
            inputs["planner"] = cfg.planner
        write_manifest(
            tmp, "finetune", cfg, inputs=inputs, counts=counts, metrics=metrics,
            encoder=corpus.encoder, num_actions=corpus.num_actions, action_space=corpus.action_space,
            seconds=round(time.time() - t0, 1),
            # the adapters started from the no-NAP stage's (trained with that planner), not from the centroids
            **({"start_adapters": str(cfg.planner)} if stage_adapters(cfg.planner) else {}),
        )
    shutil.rmtree(work, ignore_errors=True)
    print(f"planlm finetune: {cfg.recipe.selection} / {cfg.recipe.actions} -> {out} "
          f"({counts['optimizer_steps']} steps, " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + ")")
    return out
