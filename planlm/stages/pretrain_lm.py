"""`planlm pretrain-lm`: a byte-level BPE tokenizer and a GPT-2 trained from scratch, for offline use (DESIGN.md 4).

The stage's frame (validate -> reuse or refuse -> build -> fit -> write). The output is an ordinary Hugging Face
folder that every ``--lm`` option accepts; what it holds and how it is trained (tokenizer, blocks, AdamW + cosine,
multi-token heads, planned pretraining) is planlm/train/lm_pretraining.py.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from planlm.artifacts import (
    atomic_dir,
    read_manifest,
    up_to_date,
    write_manifest,
    writes_artifact,
)
from planlm.data.prepared import PreparedCorpus
from planlm.errors import PlanlmError, raise_if_problems
from planlm.models.mtp import MTPConfig
from planlm.stage_config import Fingerprint, config_of
from planlm.train.lm_pretraining import (
    PRESET_OPTIM,
    PRESETS,
    LMPreset,
    LMPresetName,
    PlannedPretraining,
    PretrainModule,
    blocks,
    fold_constant_actions,
    lm_module,
    new_gpt2,
    resolve_optim,
    token_stream,
    train_tokenizer,
)
from planlm.train.trainer import OptimConfig, TrainerConfig, global_batch_problems, mtp_problems, world_size

STAGE = "pretrain-lm"


def validate_pretrain_lm(prepared: str, out: str, preset: str, vocab_size: int, block_size: int | None,
                         optim: OptimConfig, mtp: MTPConfig = MTPConfig(),
                         trainer: TrainerConfig = TrainerConfig(), planned: PlannedPretraining = PlannedPretraining(),
                         myopic: bool = False) -> None:
    """Raise one error listing every problem with the arguments of :func:`pretrain_lm`."""
    problems = mtp_problems(mtp, trainer) + planned.problems()
    if preset in PRESETS:
        run_optim = resolve_optim(preset, optim)
        problems += global_batch_problems(run_optim.batch_size, run_optim.accumulate, world_size(trainer))
    if planned.actions is not None and (mtp.n_heads > 1 or myopic):
        problems.append("planned pretraining trains next-token prediction: drop --mtp.n_heads / --myopic")
    try:
        read_manifest(prepared, "prepare")
    except PlanlmError as e:
        problems.append(str(e))
    if preset not in PRESETS:
        problems.append(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    if vocab_size < 259:
        problems.append(f"vocab_size {vocab_size} is below the 256 bytes + special tokens; use at least 259")
    if block_size is not None and block_size < 2:
        problems.append(f"block_size must be at least 2 (got {block_size})")
    problems += optim.problems()
    if optim.planner_lr is not None:
        problems.append("optim.planner_lr belongs to finetune; pretrain-lm trains everything at optim.lr")
    if Path(out).resolve() == Path(prepared).resolve():
        problems.append("--out must differ from the prepared corpus directory")
    raise_if_problems(problems, STAGE)


@writes_artifact()
def pretrain_lm(
    prepared: str = "runs/prepared",
    out: str = "runs/lm",
    preset: LMPresetName = "small-cpu",
    vocab_size: int = 8192,
    block_size: int | None = None,
    optim: OptimConfig = PRESET_OPTIM,
    seed: int = 0,
    myopic: bool = False,
    trainer: TrainerConfig = TrainerConfig(),
    mtp: MTPConfig = MTPConfig(),
    planned: PlannedPretraining = PlannedPretraining(),
    force: bool = False,
) -> dict:
    """Train a byte-level BPE tokenizer and a GPT-2 from scratch on the train split (offline, no pretrained LM).

    The output folder loads with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` and
    is accepted by every ``--lm`` option of planlm.

    Args:
        prepared: a `planlm prepare` output directory.
        out: the folder to write (HF model + tokenizer files + manifest.json).
        preset: "tiny" (tests), "small-cpu" (a CPU in minutes), "gpt2" (GPT-2 small shape, for GPUs).
        vocab_size: BPE vocabulary size (the tokenizer may stop short on a small corpus).
        block_size: training sequence length (default: the preset's).
        optim: AdamW (weight decay on matrices only, cosine schedule): lr (peak), weight_decay, batch_size (blocks
            per step), accumulate, epochs (passes over the train tokens), max_steps (-1: no limit; the cosine
            schedule spans them), grad_clip. Every value left unset is the preset's (the default: the preset's
            section; from Python, ``lm_optim(preset, epochs=8)``).
        seed: seed of initialisation and shuffling.
        myopic: myopic training (Wu et al. 2024): the loss at a position sends no gradient into earlier positions'
            hidden states, so the LM cannot learn to pre-cache (planlm/models/myopic.py). The saved LM is ordinary.
        trainer: devices, precision, logging.
        mtp: multi-token prediction (Gloeckle et al. 2024): ``--mtp.n_heads 4`` trains heads 2..n (one block each,
            after the LM's own last block, head 1) on the sum of their losses; saved next to the LM
            (``mtp_heads.safetensors``). The LM folder itself stays an ordinary next-token LM (head 1).
        planned: planned pretraining (beyond the paper): ``--planned.actions oracle|predicted|soft`` trains the LM
            from scratch WITH action adapters (and a NAP-pretrained ``--planned.planner``), so that it relies on
            writing actions from its first step; ``fixed`` is the same architecture on one constant action (the
            fair baseline). OUT is then a planned-LM folder (planlm.persist; ``planlm evaluate`` measures it with
            predicted and oracle actions) whose ``lm/`` subfolder is the trained LM alone.
        force: rebuild ``out`` even when it exists.

    Returns:
        ``{"val_loss", "val_perplexity", "val_loss_initial", "tokens_per_second", ...}``.
    """
    validate_pretrain_lm(prepared, out, preset, vocab_size, block_size, optim, mtp, trainer, planned, myopic)
    p = PRESETS[preset]
    block_size, optim = block_size or p.block_size, resolve_optim(preset, optim)
    config = PretrainLMConfig.from_call(locals()).fingerprint()  # block_size and optim as resolved
    if up_to_date(out, STAGE, config, force):
        return read_manifest(out, STAGE).get("metrics", {})

    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from planlm.train.trainer import build_trainer, fit

    corpus = PreparedCorpus.load(prepared)
    texts = {s: [corpus.texts[a] for a in corpus.article_ids(s)] for s in ("train", "val")}
    for split, t in texts.items():
        if not t:
            raise PlanlmError(f"{prepared} has no {split} articles; prepare it with a non-empty {split} split")
    tokenizer = train_tokenizer(texts["train"], vocab_size)
    if planned.actions is not None:
        return _planned_pretrain(corpus, tokenizer, config, planned, p, block_size, optim, seed, trainer, Path(out))
    train_blocks = blocks(token_stream(tokenizer, texts["train"]), block_size, keep_tail=False)
    val_blocks = blocks(token_stream(tokenizer, texts["val"]), block_size, keep_tail=True)
    if not train_blocks:
        raise PlanlmError(f"the train split has fewer than {block_size} tokens; pass a smaller --block_size")

    L.seed_everything(seed, verbose=False)
    model = new_gpt2(p, tokenizer, block_size)
    heads = None
    if mtp.n_heads > 1:
        from planlm.models.mtp import MTPHeads

        heads = MTPHeads(model, mtp.n_heads, init=mtp.init)
    myopia = None
    if myopic:
        from planlm.models.myopic import make_myopic

        myopia = make_myopic(model)
    if trainer.compile:  # in place (nn.Module.compile): the saved state dict keeps eager names
        model.compile()
    module = lm_module(model, optim, p.warmup_fraction, heads, mtp)
    to_tensor = lambda rows: torch.from_numpy(np.stack(rows))  # noqa: E731  (B, T)
    gen = torch.Generator().manual_seed(seed)

    out = Path(out)
    with atomic_dir(out, force=True) as tmp:
        from planlm.train.trainer import Experiment

        trainer = build_trainer(trainer, tmp, experiment=Experiment("pretrain-lm", f"LM ({preset})", seed, config),
                                max_epochs=optim.epochs, max_steps=optim.max_steps,
                                accumulate_grad_batches=optim.accumulate, gradient_clip_val=optim.grad_clip or None,
                                num_sanity_val_steps=0, enable_checkpointing=False)
        # Blocks per micro-batch per process: the global batch of an optimizer step is exactly optim.batch_size
        # (Lightning's distributed sampler gives each process its own share of the blocks).
        raise_if_problems(global_batch_problems(optim.batch_size, optim.accumulate, trainer.world_size), STAGE)
        batch_size = optim.batch_size // (optim.accumulate * trainer.world_size)
        train_loader = DataLoader(train_blocks, batch_size=batch_size, shuffle=True, generator=gen,
                                  collate_fn=to_tensor)
        # Ready-made val batches: full blocks a micro-batch at a time, the shorter tail block as its own batch.
        full = [b for b in val_blocks if len(b) == block_size]
        val_batches = [to_tensor(full[i:i + batch_size]) for i in range(0, len(full), batch_size)]
        val_batches += [to_tensor([b]) for b in val_blocks if len(b) != block_size]
        val_loader = DataLoader(val_batches, batch_size=None)
        initial = trainer.validate(module, val_loader, verbose=False)[0]["val/loss"]
        val_loss = fit(trainer, module, train_loader, val_loader)["val/loss"]
        metrics = {
            "val_loss_initial": float(initial),
            "val_loss": val_loss,
            "val_perplexity": math.exp(val_loss),
            "tokens_per_second": module.train_tokens / max(module.train_seconds, 1e-9),
            "train_seconds": module.train_seconds,
        }
        if myopia is not None:
            myopia.remove()  # the saved folder is a plain GPT-2 (myopia shapes training only; the forward is the same)
        if trainer.is_global_zero:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if heads is not None:
                from planlm.persist import save_mtp_heads

                save_mtp_heads(heads, tmp)
            write_manifest(
                tmp, STAGE, config, inputs={"prepared": prepared},
                counts={"train_tokens": int(sum(len(b) for b in train_blocks)),
                        "val_tokens": int(sum(len(b) for b in val_blocks)),
                        "trained_tokens": module.train_tokens, "steps": trainer.global_step,
                        "parameters": sum(q.numel() for q in module.parameters()), "vocab_size": len(tokenizer),
                        "mtp_heads": mtp.n_heads},
                metrics=metrics,
            )
    print(f"pretrain-lm {preset}{' (myopic)' if myopic else ''}: val perplexity {metrics['val_perplexity']:.2f} "
          f"(initial {math.exp(metrics['val_loss_initial']):.1f}), {metrics['tokens_per_second']:.0f} tokens/s")
    return metrics


def _derived(cfg) -> dict:
    """The preset's model shape (its optim section is recorded, as run, in "optim"), the prepared corpus's id and,
    for planned pretraining, the recipe (what evaluate's variant_name reads)."""
    shape = {k: v for k, v in dataclasses.asdict(PRESETS[cfg.preset]).items() if k != "optim"}
    out = {"shape": shape, "prepared_id": read_manifest(cfg.prepared, "prepare").get("id")}
    return out | ({"recipe": cfg.planned.recipe()} if cfg.planned.actions is not None else {})


# Everything `planlm pretrain-lm` reads. Its fingerprint (the manifest's config) decides reuse: no hardware settings;
# mtp, myopic and planned only when used (n > 1, true, planned.actions set), so that plain next-token configs (and
# their reusable artifacts) keep the fingerprint they had before these options existed.
PretrainLMConfig = config_of(pretrain_lm, exclude=("out", "force"), name="PretrainLMConfig", fingerprint=Fingerprint(
    ignore=("trainer",),
    absent_unless={"mtp": lambda c: c.mtp.n_heads > 1, "myopic": lambda c: c.myopic,
                   "planned": lambda c: c.planned.actions is not None,
                   "planned.adapters.projection_init": lambda c: c.planned.adapters.projection_init != "xavier"},
    extra=_derived,
))


# ---- planned pretraining ------------------------------------------------------------------------------------------
def check_planner_for_pretraining(planner_dir: str, corpus: PreparedCorpus, tokenizer) -> None:
    """The planner must come from this prepared corpus and, when its context counts LM tokens, from an LM with the
    tokenizer this run trained (see :class:`PlannedPretraining` on the order of stages)."""
    from planlm.artifacts import check_input_id
    from planlm.data.planner_inputs import needs_token_counts
    from planlm.persist import load_tokenizer

    m = read_manifest(planner_dir, "train-planner")
    fix = "train the planner on this prepared corpus (`planlm train-planner --prepared ...`)"
    check_input_id(planner_dir, m, "prepared", corpus.path, corpus.id, fix)
    pcfg = m.get("planner_config") or {}
    if not needs_token_counts(_recorded_context(pcfg)):
        return
    recorded = m.get("context_tokenizer")
    if not recorded or load_tokenizer(str(recorded)).get_vocab() != tokenizer.get_vocab():
        raise PlanlmError(
            f"{planner_dir} counted its context in tokens of {recorded}, whose vocabulary differs from the tokenizer "
            "pretrain-lm trains here; train the planner with `--lm` a plain `pretrain-lm` folder of this corpus and "
            "--vocab_size, or with --planner.context_sentences N (or --planner.context causal)")


def _recorded_context(d: dict):
    """A recorded planner config (dict) as the object :func:`needs_token_counts` reads."""
    import types

    return types.SimpleNamespace(**{"context": "paper", "context_sentences": None, **d})


def _planned_pretrain(corpus: PreparedCorpus, tokenizer, config: dict, planned: PlannedPretraining, p: LMPreset,
                      block_size: int, optim: OptimConfig, seed: int, trainer_cfg: TrainerConfig, out: Path) -> dict:
    """Planned pretraining: a fresh GPT-2 + action adapters (+ a frozen or later-trained planner), trained by the ONE
    planned-LM loop on article windows, written as a planned-LM folder (planlm.persist)."""
    import lightning as L
    import torch

    from planlm.data.planner_inputs import PlannerInputs
    from planlm.data.windows import WindowDataset
    from planlm.persist import load_planner, save_planned_lm
    from planlm.train.loop import LoopData
    from planlm.train.start import check_planner_fits
    from planlm.train.trainer import build_trainer, fit

    recipe = planned.recipe()
    planner = None
    if planned.planner is not None:
        check_planner_for_pretraining(planned.planner, corpus, tokenizer)
        planner = load_planner(planned.planner)
        check_planner_fits(planner, corpus, planned.planner)
    train = WindowDataset.from_corpus(corpus, tokenizer, "train", block_size, block_size - 1)
    val = WindowDataset.from_corpus(corpus, tokenizer, "val", block_size, block_size - 1)
    if len(train) == 0:
        raise PlanlmError(f"{corpus.path} has no training windows; prepare a corpus with train articles")
    planner_fn = PlannerInputs.from_config(corpus, planner.config, tokenizer=tokenizer) if planner is not None else None
    data = LoopData(train, val, train.collate_fn(planner_fn, pad_token_id=tokenizer.pad_token_id), optim.batch_size,
                    optim.accumulate)
    total = math.ceil(len(train) / optim.batch_size) * optim.epochs
    total = min(total, optim.max_steps) if optim.max_steps > 0 else total

    L.seed_everything(seed, verbose=False)
    lm = new_gpt2(p, tokenizer, block_size)
    # the same PlannedLM finetune builds, with the LM trained and no base LM to rebuild from (saved in lm/)
    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig

    model = PlannedLM(lm, PlannedLMConfig(
        num_actions=corpus.num_actions, action_dim=corpus.embedding_dim, layers=planned.adapters.layers,
        gate=planned.adapters.gate, projection_init=planned.adapters.projection_init, **recipe.selection_fields(),
        train_lm=True, seed=seed,
    ), centroids=torch.from_numpy(corpus.centroids), planner=planner)
    module = PretrainModule(model, recipe, optim, total, seed=seed, data=data)
    module.warmup_fraction, module.snapshot_every = p.warmup_fraction, planned.snapshot_every

    with atomic_dir(out, force=True) as tmp:
        module.snapshot_dir = tmp / "snapshots"
        from planlm.train.trainer import Experiment

        trainer = build_trainer(trainer_cfg, tmp, experiment=Experiment("pretrain-lm", "planned LM", seed, config),
                                max_epochs=optim.epochs, max_steps=total,
                                accumulate_grad_batches=optim.accumulate, gradient_clip_val=optim.grad_clip or None,
                                num_sanity_val_steps=0, enable_checkpointing=False, use_distributed_sampler=False)
        initial = float(trainer.validate(module, verbose=False)[0]["val/loss"])
        val_loss = fit(trainer, module)["val/loss"]
        metrics = {"val_loss_initial": initial, "val_loss": val_loss, "val_perplexity": math.exp(val_loss),
                   "tokens_per_second": module.train_tokens / max(module.train_seconds, 1e-9),
                   "train_seconds": module.train_seconds}
        if trainer.is_global_zero:
            save_planned_lm(model, tmp, save_lm=True)
            tokenizer.save_pretrained(tmp / "tokenizer")  # where planlm.persist.load_run reads it
            tokenizer.save_pretrained(tmp / "lm")  # lm/ is a complete Hugging Face LM folder too
            if planned.actions == "fixed":  # one constant action: OUT itself is the same LM as a plain HF folder
                fold_constant_actions(model).save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            inputs = {"prepared": corpus.path, **({"planner": planned.planner} if planned.planner else {})}
            write_manifest(
                tmp, STAGE, config, inputs=inputs,
                counts={"train_windows": len(train), "val_windows": len(val), "trained_tokens": module.train_tokens,
                        "steps": trainer.global_step, "snapshots": module.snapshots,
                        "parameters": sum(q.numel() for q in model.parameters()),
                        "adapter_parameters": model.adapter_parameters(), "vocab_size": len(tokenizer)},
                metrics=metrics, planned=True, encoder=corpus.encoder, num_actions=corpus.num_actions,
            )
    print(f"pretrain-lm {config['preset']} planned ({planned.actions}): val perplexity {metrics['val_perplexity']:.2f} "
          f"(initial {math.exp(initial):.1f}), {metrics['tokens_per_second']:.0f} tokens/s")
    return metrics


