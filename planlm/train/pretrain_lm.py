"""`planlm pretrain-lm`: a byte-level BPE tokenizer and a GPT-2 trained from scratch, for offline use (DESIGN.md 4).

No pretrained LM is packaged offline, so this stage makes one from the train split of a prepared corpus. The result
is an ordinary Hugging Face folder (``save_pretrained``): every ``--lm`` option of planlm accepts it exactly as it
accepts a Hub name such as ``gpt2``, and ``AutoModelForCausalLM`` / ``AutoTokenizer`` load it.

Tokenizer: byte-level BPE (HF ``tokenizers``, GPT-2's pre-tokenisation, so every string is encodable), with
``<|endoftext|>`` as bos/eos (as GPT-2) and a separate ``<|pad|>`` so that padding never masks a real end of text.
Training data: the train articles, each followed by ``<|endoftext|>``, concatenated and cut into blocks. AdamW
(weight decay on matrices only), cosine schedule with linear warmup.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from planlm.artifacts import atomic_dir, read_manifest, up_to_date, write_manifest, writes_artifact
from planlm.data.prepared import PreparedCorpus
from planlm.errors import PlanlmError, raise_if_problems
from planlm.models.mtp import MTPConfig
from planlm.presets import load_presets
from planlm.train.trainer import OptimConfig, TrainerConfig

STAGE = "pretrain-lm"
LMPresetName = Literal["gpt2", "small-cpu", "tiny"]  # planlm/presets/pretrain-lm/*.yaml (tests/test_presets.py)
EOS = "<|endoftext|>"
PAD = "<|pad|>"


@dataclass(frozen=True)
class LMPreset:
    """GPT-2 shape and training recipe of one preset; ``optim`` is the stage's ``--optim`` section as the preset sets
    it (the defaults of every ``--optim.*`` value the user leaves unset)."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    warmup_fraction: float
    dropout: float
    optim: OptimConfig


# planlm/presets/pretrain-lm/*.yaml: tiny (tests: seconds on a CPU), small-cpu (the embedded corpus on a CPU in
# minutes), gpt2 (GPT-2 small's shape, for GPUs)
PRESETS: dict[str, LMPreset] = load_presets(STAGE, LMPreset)


PRESET_OPTIM = OptimConfig()
"""The default ``optim`` of pretrain-lm (and of the stages that run it): it stands for the preset's section (told
apart by identity; an OptimConfig passed explicitly is used as it is). A real dataclass default, so that ``--help``
lists every ``--optim.*`` option; the command line reads the preset's section before the user's flags (cli.py)."""


def resolve_optim(preset: str, optim: OptimConfig) -> OptimConfig:
    """The section a run trains with: the preset's for :data:`PRESET_OPTIM`, else ``optim`` itself."""
    return PRESETS[preset].optim if optim is PRESET_OPTIM else optim


def lm_optim(preset: str, **overrides) -> OptimConfig:
    """The ``optim`` section of a preset with ``overrides`` (``lm_optim("tiny", max_steps=6)``): what the command line
    gives for ``--preset tiny --optim.max_steps 6`` (planlm/cli.py reads the preset's section before the user's flags)."""
    return dataclasses.replace(PRESETS[preset].optim, **overrides)


def train_tokenizer(texts: list[str], vocab_size: int = 8192, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer on ``texts``; returns a fast HF tokenizer with bos/eos and pad tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # GPT-2's setting: offsets keep the leading space, so a token's span starts in the gap before its word.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD)


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """All texts tokenised, each followed by eos, concatenated: ``(T,)`` int64."""
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=np.int64)


def blocks(stream: np.ndarray, block_size: int, keep_tail: bool) -> list[np.ndarray]:
    """Cut a token stream into ``block_size`` blocks; the shorter tail is kept for evaluation only."""
    n = len(stream) // block_size
    out = list(stream[: n * block_size].reshape(n, block_size))
    if keep_tail and len(stream) - n * block_size >= 2:
        out.append(stream[n * block_size:])
    return out


def _lm_module(model, optim: OptimConfig, warmup_fraction: float, heads=None, mtp: MTPConfig = MTPConfig()):
    import lightning as L
    import torch

    class LMModule(L.LightningModule):
        """Next-token loss; validation sums token-weighted loss so val perplexity is per token."""

        def __init__(self):
            super().__init__()
            self.model = model
            self.heads = heads  # multi-token heads 2..n (planlm.models.mtp), or None: next-token prediction
            self.train_tokens = 0
            self.train_seconds = 0.0
            self._t0 = 0.0
            self._val = None
            self.validated_at_step = -1

        def training_step(self, batch, batch_idx):
            self.train_tokens += batch.numel()
            if self.heads is None:
                loss = self.model(input_ids=batch, labels=batch).loss
                self.log("train/loss", loss, prog_bar=True)
                return loss
            # Multi-token prediction: sum over heads of CE(token t + i); head 1's term is the next-token loss.
            out = self.heads.losses(lambda: self.model(input_ids=batch, use_cache=False).logits, batch, mtp.backward)
            self.log("train/loss", out.head_losses[0], prog_bar=True)
            self.log("train/mtp_loss", out.loss)
            # sequential: the heads' backwards already ran; Lightning's backward of trunk_loss applies their
            # gradients and runs the one trunk backward
            return out.trunk_loss if mtp.backward == "sequential" else out.loss

        def _clock(self) -> float:
            # CUDA kernels run asynchronously: without a sync the clock reads when the step was queued, not done.
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return time.perf_counter()

        def on_train_batch_start(self, batch, batch_idx):
            self._t0 = self._clock()

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.train_seconds += self._clock() - self._t0  # forward + backward + optimizer step

        def on_validation_epoch_start(self):
            self._val = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, predicted tokens

        def validation_step(self, batch, batch_idx):
            predicted = batch.shape[0] * (batch.shape[1] - 1)  # HF shifts labels: T - 1 predictions per row
            loss = self.model(input_ids=batch, labels=batch).loss
            self._val += torch.stack([loss.double() * predicted,
                                      torch.tensor(float(predicted), dtype=torch.float64, device=self.device)])

        def on_validation_epoch_end(self):
            total = self.all_gather(self._val)
            total = total.reshape(-1, 2).sum(0) if total.dim() > 1 else total
            loss = total[0] / total[1].clamp_min(1)
            self.log_dict({"val/loss": loss.float(), "val/perplexity": loss.exp().float()}, prog_bar=True)
            self.validated_at_step = self.global_step

        def configure_optimizers(self):
            from transformers import get_cosine_schedule_with_warmup

            decay = [p for p in self.parameters() if p.dim() >= 2]  # matrices; not biases, norms (heads' too)
            rest = [p for p in self.parameters() if p.dim() < 2]
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                                     {"params": rest, "weight_decay": 0.0}], lr=optim.lr, betas=(0.9, 0.95))
            total = int(self.trainer.estimated_stepping_batches)
            sched = get_cosine_schedule_with_warmup(opt, max(1, int(warmup_fraction * total)), total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return LMModule()


def validate_pretrain_lm(prepared: str, out: str, preset: str, vocab_size: int, block_size: int | None,
                         optim: OptimConfig, mtp: MTPConfig = MTPConfig(),
                         trainer: TrainerConfig = TrainerConfig()) -> None:
    """Raise one error listing every problem with the arguments of :func:`pretrain_lm`."""
    problems = mtp_problems(mtp, trainer)
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
        problems.append("optim.planner_lr belongs to finetune; pretrain-lm trains no planner")
    if Path(out).resolve() == Path(prepared).resolve():
        problems.append("--out must differ from the prepared corpus directory")
    raise_if_problems(problems, STAGE)


def mtp_problems(mtp: MTPConfig, trainer: TrainerConfig) -> list[str]:
    """Problems of an MTP config under a trainer config (shared by pretrain-lm and finetune)."""
    problems = mtp.problems()
    if mtp.n_heads > 1 and mtp.backward == "sequential":
        # The heads' backwards run inside the training step, before a loss scaler scales anything, and the
        # surrogate backward that applies their gradients is not tried under DDP's gradient reduction.
        if trainer.precision.startswith("16"):
            problems.append("mtp.backward=sequential does not support fp16 loss scaling: use --trainer.precision "
                            "bf16-mixed or 32-true, or --mtp.backward naive")
        if str(trainer.devices) not in ("1", "auto") or trainer.num_nodes != 1 or trainer.strategy not in ("auto",):
            problems.append("mtp.backward=sequential runs on one device: use --mtp.backward naive for multi-device "
                            "training")
    return problems


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
        force: rebuild ``out`` even when it exists.

    Returns:
        ``{"val_loss", "val_perplexity", "val_loss_initial", "tokens_per_second", ...}``.
    """
    validate_pretrain_lm(prepared, out, preset, vocab_size, block_size, optim, mtp, trainer)
    p = PRESETS[preset]
    block_size, optim = block_size or p.block_size, resolve_optim(preset, optim)
    shape = {k: v for k, v in dataclasses.asdict(p).items() if k != "optim"}  # the optim run is recorded as "optim"
    config = {"prepared": str(prepared), "preset": preset, "shape": shape, "vocab_size": vocab_size,
              "block_size": block_size, "optim": optim, "seed": seed,
              "prepared_id": read_manifest(prepared, "prepare").get("id")}
    if mtp.n_heads > 1:  # n = 1 keeps the config (and so the reuse fingerprint) of plain next-token runs
        config["mtp"] = mtp
    if myopic:  # only when set, so that vanilla configs (and their reusable artifacts) are unchanged
        config["myopic"] = True
    if up_to_date(out, STAGE, config, force):
        return read_manifest(out, STAGE).get("metrics", {})

    import lightning as L
    import torch
    from torch.utils.data import DataLoader
    from transformers import GPT2Config, GPT2LMHeadModel

    from planlm.train.trainer import build_trainer

    corpus = PreparedCorpus.load(prepared)
    texts = {s: [corpus.texts[a] for a in corpus.article_ids(s)] for s in ("train", "val")}
    for split, t in texts.items():
        if not t:
            raise PlanlmError(f"{prepared} has no {split} articles; prepare it with a non-empty {split} split")
    tokenizer = train_tokenizer(texts["train"], vocab_size)
    train_blocks = blocks(token_stream(tokenizer, texts["train"]), block_size, keep_tail=False)
    val_blocks = blocks(token_stream(tokenizer, texts["val"]), block_size, keep_tail=True)
    if not train_blocks:
        raise PlanlmError(f"the train split has fewer than {block_size} tokens; pass a smaller --block_size")

    L.seed_everything(seed, verbose=False)
    model = GPT2LMHeadModel(GPT2Config(
        # GPT-2's 1024 positions at least, so that generation and longer evaluation windows run (positions past
        # block_size are untrained: train with the longest window you will use).
        vocab_size=len(tokenizer), n_positions=max(block_size, 1024),
        n_embd=p.n_embd, n_layer=p.n_layer, n_head=p.n_head,
        resid_pdrop=p.dropout, embd_pdrop=p.dropout, attn_pdrop=p.dropout,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    heads = None
    if mtp.n_heads > 1:
        from planlm.models.mtp import MTPHeads

        heads = MTPHeads(model, mtp.n_heads, init=mtp.init)
    myopia = None
    if myopic:
        from planlm.models.myopic import make_myopic

        myopia = make_myopic(model)
    module = _lm_module(model, optim, p.warmup_fraction, heads, mtp)
    batch_size = optim.batch_size // optim.accumulate  # blocks per micro-batch
    to_tensor = lambda rows: torch.from_numpy(np.stack(rows))  # noqa: E731  (B, T)
    gen = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_blocks, batch_size=batch_size, shuffle=True, generator=gen, collate_fn=to_tensor)
    # Ready-made val batches: full blocks a micro-batch at a time, the shorter tail block as its own batch.
    full = [b for b in val_blocks if len(b) == block_size]
    val_batches = [to_tensor(full[i:i + batch_size]) for i in range(0, len(full), batch_size)]
    val_batches += [to_tensor([b]) for b in val_blocks if len(b) != block_size]
    val_loader = DataLoader(val_batches, batch_size=None)

    out = Path(out)
    with atomic_dir(out, force=True) as tmp:
        trainer = build_trainer(trainer, tmp, max_epochs=optim.epochs, max_steps=optim.max_steps,
                                accumulate_grad_batches=optim.accumulate, gradient_clip_val=optim.grad_clip or None,
                                num_sanity_val_steps=0, enable_checkpointing=False)
        initial = trainer.validate(module, val_loader, verbose=False)[0]["val/loss"]
        trainer.fit(module, train_loader, val_loader)
        if module.validated_at_step != trainer.global_step:  # max_steps stopped it before the epoch's validation
            trainer.validate(module, val_loader, verbose=False)
        val_loss = float(trainer.callback_metrics["val/loss"])
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
