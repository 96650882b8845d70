"""LM pretraining from scratch (the library of `planlm pretrain-lm`, planlm/stages/pretrain_lm.py): presets, the BPE
tokenizer, token blocks, the plain / multi-token LM module and the planned-pretraining module (DESIGN.md 4).

A pretrained LM may be out of reach offline or fit no corpus, so `planlm pretrain-lm` makes one from the train split
of a prepared corpus. The result
is an ordinary Hugging Face folder (``save_pretrained``): every ``--lm`` option of planlm accepts it exactly as it
accepts a Hub name such as ``gpt2``, and ``AutoModelForCausalLM`` / ``AutoTokenizer`` load it.

Tokenizer: byte-level BPE (HF ``tokenizers``, GPT-2's pre-tokenisation, so every string is encodable), with
``<|endoftext|>`` as bos/eos (as GPT-2) and a separate ``<|pad|>`` so that padding never masks a real end of text.
Training data: the train articles, each followed by ``<|endoftext|>``, concatenated and cut into blocks. AdamW
(weight decay on matrices only), cosine schedule with linear warmup.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from planlm.errors import PlanlmError
from planlm.models.mtp import MTPConfig
from planlm.presets import load_presets
from planlm.train.loop import PlannedLMModule
from planlm.train.multi_token import multi_token_loss
from planlm.train.recipe import RecipeConfig
from planlm.train.start import AdapterConfig
from planlm.train.trainer import OptimConfig, StepTimer, adam

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
PRESETS: dict[str, LMPreset] = load_presets("pretrain-lm", LMPreset)


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


PlannedActions = Literal["fixed", "oracle", "predicted", "soft"]
PLANNED_ACTIONS: tuple[str, ...] = get_args(PlannedActions)


@dataclass
class PlannedPretraining:
    """Planned pretraining (beyond the paper): the LM is trained from scratch WITH action adapters, conditioned on
    writing actions from its first step, as concept-conditioned pretraining does (CoCoMix, Tack et al. 2025).

    It is a recipe of the ONE planned-LM loop (planlm/train/loop.py) on finetune's data path (article windows of
    ``block_size`` tokens, stride ``block_size - 1``, planner inputs from the stored embeddings), with the LM, the
    adapters (and, for soft, optionally the planner) trained by pretrain-lm's AdamW + cosine schedule.

    Tokenizer and planner order: the planner's ``paper`` context counts LM tokens, and pretrain-lm trains its
    tokenizer itself. BPE training is deterministic, so the same prepared corpus and ``--vocab_size`` give the same
    tokenizer: train a plain LM first (``pretrain-lm``, also the baseline), the planner with ``train-planner --lm``
    that folder, then planned pretraining; the stage checks that the planner's recorded LM has this very vocabulary.
    A planner whose context counts sentences (``--planner.context_sentences``) or is ``causal`` needs no LM at all.
    """

    actions: PlannedActions | None = None
    """None: plain next-token pretraining (the default). fixed: adapters with one constant action (the paper's
    Fixed, the baseline of the same architecture and data); oracle: hard selection of each sentence's oracle action
    (Cornille OA); predicted: hard selection of the planner's action (Cornille PA); soft: softmax of the planner's
    logits (the paper's selection)."""
    planner: str | None = None
    """A NAP-pretrained planner (`planlm train-planner`) of the same prepared corpus; needed by oracle (for
    evaluation with predicted actions), predicted and soft."""
    planner_unfreeze: str = "never"
    """soft: when the planner starts training with the LM (never | immediate | halfway | step:N | a fraction);
    never keeps the NAP planner intact while the LM is still random."""
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    """Conditioned layers and optional zero gate, as finetune's ``--adapters``."""
    snapshot_every: int = 0
    """Save the planned LM every this many optimizer steps into OUT/snapshots/step-NNNNNN (0 = never): learning
    curves (bench/planned_pretraining.py) without retraining."""

    def recipe(self) -> RecipeConfig:
        """The loop's recipe for these actions; the LM always trains (it starts from scratch)."""
        selection = {"fixed": "fixed", "oracle": "hard", "predicted": "hard", "soft": "soft"}[self.actions]
        return RecipeConfig(selection=selection, actions="oracle" if self.actions == "oracle" else "predicted",
                            planner_unfreeze=self.planner_unfreeze if self.actions == "soft" else "never",
                            train_lm=True)

    def problems(self) -> list[str]:
        if self.actions is None:
            changed = [f"planned.{f.name}" for f in dataclasses.fields(self)
                       if f.name != "actions" and getattr(self, f.name) != getattr(PlannedPretraining(), f.name)]
            return [f"{', '.join(changed)} set without --planned.actions"] if changed else []
        if self.actions not in PLANNED_ACTIONS:
            return [f"planned.actions must be one of {', '.join(PLANNED_ACTIONS)} (got {self.actions!r})"]
        out = [p.replace("recipe.", "planned.") for p in self.recipe().problems()]
        if self.actions != "fixed" and self.planner is None:
            out.append(f"planned.actions={self.actions} needs a NAP-pretrained planner: pass --planned.planner DIR "
                       "(`planlm train-planner`)")
        if self.actions == "fixed" and self.planner is not None:
            out.append("planned.actions=fixed uses no planner: drop --planned.planner")
        if self.actions != "soft" and self.planner_unfreeze != "never":
            out.append(f"planned.planner_unfreeze trains the planner through soft selection only (got actions="
                       f"{self.actions})")
        if self.planner is not None and not Path(self.planner).is_dir():
            out.append(f"--planned.planner {self.planner} does not exist; train one with `planlm train-planner`")
        if self.snapshot_every < 0:
            out.append(f"planned.snapshot_every must be >= 0 (got {self.snapshot_every})")
        return out


def train_tokenizer(texts: list[str], vocab_size: int = 8192, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer on ``texts``; returns a fast HF tokenizer with bos/eos and pad tokens."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
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


def lm_module(model, optim: OptimConfig, warmup_fraction: float, heads=None, mtp: MTPConfig = MTPConfig()):
    import lightning as L
    import torch

    class LMModule(L.LightningModule):
        """Next-token loss; validation sums token-weighted loss so val perplexity is per token. Logged: ``train/loss``
        (the objective: with MTP heads their summed loss), ``train/lm_loss`` (MTP: head 1's), ``val/loss``,
        ``val/perplexity``."""

        def __init__(self):
            super().__init__()
            self.model = model
            self.heads = heads  # multi-token heads 2..n (planlm.models.mtp), or None: next-token prediction
            self.train_tokens = 0
            self.timer = StepTimer()
            self._val = None

        def training_step(self, batch, batch_idx):
            self.train_tokens += batch.numel()
            if self.heads is None:
                loss = self.model(input_ids=batch, labels=batch).loss
                self.log("train/loss", loss, prog_bar=True)
                return loss
            # Multi-token prediction: sum over heads of CE(token t + i); head 1's term is the next-token loss.
            mt = multi_token_loss(self.heads, lambda: self.model(input_ids=batch, use_cache=False).logits, batch,
                                  mtp.backward, train=True)
            self.log("train/loss", mt.objective, prog_bar=True)
            self.log("train/lm_loss", mt.lm_loss)
            return mt.backward

        @property
        def train_seconds(self) -> float:
            return self.timer.seconds  # forward + backward + optimizer step, summed (CUDA events: no per-step sync)

        def on_train_batch_start(self, batch, batch_idx):
            self.timer.start(self.device)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.timer.stop(self.device)

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

        def configure_optimizers(self):
            return adamw_cosine(list(self.parameters()), optim, warmup_fraction,
                                int(self.trainer.estimated_stepping_batches), self.trainer)

    return LMModule()


def adamw_cosine(params: list, optim: OptimConfig, warmup_fraction: float, total_steps: int, trainer=None) -> dict:
    """pretrain-lm's optimizer (plain and planned): AdamW with weight decay on matrices only (not biases, norms),
    betas (0.9, 0.95), cosine schedule with linear warmup over ``total_steps``; as Lightning's configure_optimizers
    returns it (``trainer``: the one that will step it, for :func:`planlm.train.trainer.adam`)."""
    from transformers import get_cosine_schedule_with_warmup

    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    opt = adam([{"params": decay, "weight_decay": optim.weight_decay}, {"params": rest, "weight_decay": 0.0}],
               optim.lr, decoupled=True, betas=(0.9, 0.95), trainer=trainer)
    sched = get_cosine_schedule_with_warmup(opt, max(1, int(warmup_fraction * total_steps)), total_steps)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def new_gpt2(p: LMPreset, tokenizer, block_size: int):
    """A randomly initialised GPT-2 of preset ``p`` for ``tokenizer`` (call after seeding)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(
        # GPT-2's 1024 positions at least, so that generation and longer evaluation windows run (positions past
        # block_size are untrained: train with the longest window you will use).
        vocab_size=len(tokenizer), n_positions=max(block_size, 1024),
        n_embd=p.n_embd, n_layer=p.n_layer, n_head=p.n_head,
        resid_pdrop=p.dropout, embd_pdrop=p.dropout, attn_pdrop=p.dropout,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def fold_constant_actions(model):
    """A copy of a fixed- or uniform-selection planned LM's base LM with the adapters folded in: a plain LM that
    computes the same logits.

    Those selections add the same vector r^l to every token at the input of layer l's attention output projection,
    and a projection is affine: (x + r) W + b = x W + (r W + b). So r^l W becomes part of the projection's bias.
    """
    import copy

    import torch

    from planlm.models.selection import action_weights

    cfg = model.config
    if cfg.selection not in ("fixed", "uniform"):
        raise PlanlmError(f"only fixed and uniform selections add a constant vector; {cfg.selection!r} does not")
    lm = copy.deepcopy(model.lm)
    for handle_owner in lm.modules():  # the copy carries the adapters' hooks: a plain LM has none
        handle_owner._forward_pre_hooks.clear()
    weights = action_weights(cfg.selection, cfg.num_actions, fixed_action=cfg.fixed_action)  # (1, K)
    with torch.no_grad():
        for layer in model.adapters.layers:
            r = model.adapters.adapters[str(layer)](weights.to(model.lm.device))[0]  # (H,)
            path = model.adapters.arch.projection_path(layer)
            proj = lm.get_submodule(path)
            if getattr(proj, "bias", None) is None:
                raise PlanlmError(f"{path} has no bias to fold the action into")
            # GPT-2's Conv1D computes x @ weight (H, H_out); nn.Linear computes x @ weight.T
            w = proj.weight if not isinstance(proj, torch.nn.Linear) else proj.weight.T
            proj.bias += r.to(w.dtype) @ w
    return lm


class PretrainModule(PlannedLMModule):
    """The ONE planned-LM loop with pretrain-lm's optimizer (AdamW, cosine schedule), token counts and snapshots."""

    warmup_fraction = 0.05
    snapshot_every = 0
    snapshot_dir: Path | None = None

    def on_fit_start(self):
        self.train_tokens, self.timer = 0, StepTimer()
        self.snapshots: list[dict] = []  # {"step", "tokens"} of every snapshot written

    def on_train_batch_start(self, batch, batch_idx):
        super().on_train_batch_start(batch, batch_idx)
        self.timer.start(self.device)

    @property
    def train_seconds(self) -> float:
        return self.timer.seconds  # forward + backward + optimizer step (CUDA events: no per-step sync)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.timer.stop(self.device)
        self.train_tokens += batch["num_tokens"]  # real (unpadded) tokens, counted on the host
        step = self.global_step  # optimizer steps done; with accumulation the first micro-batch after one saves
        if (self.snapshot_every and step % self.snapshot_every == 0 and self.trainer.is_global_zero
                and step not in {s["step"] for s in self.snapshots}):
            from planlm.persist import save_planned_lm

            save_planned_lm(self.model, self.snapshot_dir / f"step-{step:06d}", save_lm=True)
            self.snapshots.append({"step": step, "tokens": self.train_tokens})

    def configure_optimizers(self):
        trained = [q for q in self.parameters() if q.requires_grad]  # LM, adapters (+ the planner once it trains)
        return adamw_cosine(trained, self.optim, self.warmup_fraction, int(self.trainer.estimated_stepping_batches),
                            self.trainer)
