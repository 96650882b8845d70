"""The ONE training loop of planlm fine-tuning: every recipe of the paper is a combination of config fields
(DESIGN.md 1.5-1.6), never a copy of this loop.

| paper recipe                  | selection          | actions   | planner_unfreeze | nap_weight |
|-------------------------------|--------------------|-----------|------------------|------------|
| Fixed / Uniform               | fixed / uniform    | -         | -                | 0          |
| Cornille OA                   | hard               | oracle    | never            | 0          |
| Cornille PA                   | hard               | predicted | never            | 0          |
| mix p (Figure 4)              | hard               | mix       | never            | 0          |
| scheduled sampling            | hard               | schedule  | never            | 0          |
| soft / unfreeze halfway (best)| soft               | predicted | 0.5              | 0          |
| straight-through / halfway    | straight-through   | predicted | 0.5              | 0          |
| NAP during fine-tuning        | soft               | predicted | immediate        | lambda     |
| no NAP pretraining / never, immediate, halfway: the soft rows from a planner that `planlm train-planner   |
| --objective ntp` trained from scratch through this loop with only the planner trainable (section 4.3)     |

The planner runs once per step for all target sentences of the batch (the collate built its inputs from stored
embeddings); while it is frozen it runs without autograd. Fixed and uniform run no planner at all. The selection is
the model's (``PlannedLM.config``, built from the recipe's selection fields): the loop decides where training actions
come from and whether the planner trains this step, and ``PlannedLM.select`` what the selection makes of them.

Logged names (slash style, grouped by TensorBoard): ``train/loss`` (the objective; with MTP heads their summed loss),
``train/lm_loss`` (MTP: head 1's), ``train/nap_loss``, ``train/planner_trainable``, ``train/tok_s``, ``val/loss``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from planlm.errors import PlanlmError
from planlm.models.mtp import MTPConfig
from planlm.models.planned_lm import PlannedLM
from planlm.models.selection import keyed_predicted_mask
from planlm.train.multi_token import multi_token_loss
from planlm.train.recipe import RecipeConfig
from planlm.train.resumable import ResumableBatchSampler, rng_states, set_rng_states
from planlm.train.trainer import OptimConfig, adam


def _own_generator() -> torch.Generator:
    # A DataLoader draws its workers' base seed when an iterator starts; from its own generator, that draw leaves
    # the global RNG (LM dropout) untouched, so where an iterator starts cannot shift a resumed run's dropout masks.
    return torch.Generator().manual_seed(0)


@dataclass
class LoopData:
    """The windows a run trains and validates on, and how they become batches."""

    train: Dataset
    val: Dataset | None
    collate: object
    batch_size: int = 32
    accumulate: int = 1
    num_workers: int | None = None

    def loader_settings(self, device) -> dict:
        """DataLoader workers and pinned memory on ``device``: ``num_workers`` when given; by default none on a CPU
        (unchanged behaviour) and, on a GPU, up to 4 workers (half the cores) building batches and planner inputs,
        with pinned memory for the host-to-device copies."""
        import os

        gpu = getattr(device, "type", str(device)) == "cuda"
        workers = self.num_workers
        if workers is None:
            workers = min(4, max(1, (os.cpu_count() or 2) // 2)) if gpu else 0
        return {"num_workers": workers, "pin_memory": gpu}

    def micro_batch_size(self, world_size: int) -> int:
        """Windows per device per forward pass: the global batch split over devices and accumulation steps, exactly
        (an uneven split is refused, so every optimizer step takes ``batch_size`` windows on any device count)."""
        from planlm.errors import raise_if_problems
        from planlm.train.trainer import global_batch_problems

        raise_if_problems(global_batch_problems(self.batch_size, self.accumulate, world_size), "training")
        return self.batch_size // (world_size * self.accumulate)


class PlannedLMModule(L.LightningModule):
    """Trains a :class:`PlannedLM` under a :class:`RecipeConfig`; saves RNG and data position for exact resume."""

    def __init__(
        self,
        model: PlannedLM,
        recipe: RecipeConfig,
        optim: OptimConfig,
        total_steps: int,
        seed: int = 0,
        data: "LoopData | None" = None,
        compile: bool = False,
        heads: torch.nn.Module | None = None,
        mtp: MTPConfig = MTPConfig(),
    ):
        super().__init__()
        self.data = data
        # Multi-token heads 2..n on the planned LM's trunk (planlm.models.mtp), or None; trained even while the LM
        # (trunk and head 1) is frozen.
        self.heads, self.mtp = heads, mtp
        if heads is not None:
            heads.train()
        if model.uses_planner and model.planner is None:
            raise PlanlmError(f"selection {model.config.selection!r} needs a planner: pass --planner DIR "
                              "(planlm train-planner)")
        self.model, self.recipe, self.optim = model, recipe, optim
        self.total_steps, self.seed = max(1, total_steps), seed
        self.unfreeze_at = recipe.unfreeze_step(self.total_steps) if model.uses_planner else None
        # Whether training steps call the planner at all: oracle-action training (Cornille OA) never does.
        self.planner_called = model.uses_planner and recipe.actions != "oracle"
        self.batches_this_epoch = 0
        self._resume_skip = 0
        self._t_last = None
        model.set_train_lm(recipe.train_lm)
        # Hugging Face models load in eval mode and Lightning keeps each module's mode: train as the paper's HF-based
        # code did, with the LM's own dropout active even while its weights are frozen.
        model.train()
        if model.planner is not None:
            # A planner that ever trains keeps requires_grad from the start (DDP registers parameters once, when it
            # wraps the model); while "frozen" it simply runs without autograd and so gets no gradient or update.
            model.planner.requires_grad_(self.unfreeze_at is not None and self.planner_called)
        self.planner_trainable = self.unfreeze_at == 0  # the unfreeze schedule's state, saved in checkpoints
        if compile:
            # In place (nn.Module.compile): parameter names, state dicts and checkpoints stay those of eager mode.
            # The adapters' pre-hooks run inside the LM's forward, so the LM's graph holds them too.
            model.lm.compile()
            if model.planner is not None:
                model.planner.compile()

    @property
    def planner_waits(self) -> bool:
        """Whether the planner holds trainable parameters that get no gradient in some steps (frozen until a later
        step): DDP must then search for unused parameters (Lightning's ``ddp_find_unused_parameters_true``). Those
        parameters keep ``grad = None``, so Adam (weight decay included) leaves them exactly as they are."""
        return bool(self.unfreeze_at) and self.planner_called

    # ---- recipe state ----------------------------------------------------------------------------------------
    def p_predicted(self, step: int) -> float:
        """Probability that a training sentence is conditioned on the planner's action at optimizer step ``step``."""
        if self.recipe.actions == "predicted":
            return 1.0
        if self.recipe.actions == "oracle":
            return 0.0
        if self.recipe.actions == "mix":
            return self.recipe.p_predicted
        return min(1.0, step / max(1, self.total_steps - 1))  # schedule: linear 0 -> 1

    def predicted_mask(self, sentence_ids: torch.Tensor, step: int) -> torch.Tensor:
        """``(N,)`` bool, True where table sentence i uses the planner's action at optimizer step ``step``.

        A hash of (seed, step, global sentence id), not a running generator: the mask of step k is the same after a
        resume, and a sentence's draw does not depend on which rank's slice of the batch holds it (DDP matches one
        process). Computed on the batch's device with integer ops only: no host-device copy or sync in the step.
        """
        return keyed_predicted_mask(sentence_ids, self.p_predicted(step), key=self.seed * 1_000_003 + step)

    # ---- one step ----------------------------------------------------------------------------------------------
    def select(self, batch: dict, train: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(planner logits (N, K) or None, action weights)`` of a batch: the recipe decides where the actions come
        from and whether the planner trains now; the model's selection decides what becomes of them."""
        if train and self.recipe.actions == "oracle":  # Cornille OA: oracle actions only, the planner is not called
            return self.model.select(oracle_actions=batch["oracle_actions"], device=batch["input_ids"].device)
        mixed = train and self.recipe.actions != "predicted"  # mix / schedule: oracle where the mask is False
        return self.model.select(
            planner_inputs=batch.get("planner_inputs"),
            oracle_actions=batch["oracle_actions"] if mixed else None,
            predicted_mask=self.predicted_mask(batch["sentence_ids"], self.global_step) if mixed else None,
            planner_trains=train and self.planner_trainable,
            generator=None,  # sampled plans draw from the global RNG, which checkpoints save and resume restores
            device=batch["input_ids"].device,
        )

    def step_losses(self, batch: dict, train: bool) -> dict[str, torch.Tensor]:
        r = self.recipe
        logits, weights = self.select(batch, train)
        kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_slot=batch.get("token_slot"), action_weights=weights)
        nap = F.cross_entropy(logits.float(), batch["oracle_actions"]) if logits is not None and r.nap_weight > 0 else None
        if self.heads is not None:
            mt = multi_token_loss(self.heads, lambda: self.model(**kwargs, use_cache=False).logits, batch["labels"],
                                  self.mtp.backward, train, params=self.parameters())
            losses = {"lm_loss": mt.lm_loss, "mtp_loss": mt.objective, "loss": mt.backward}
        else:
            out = self.model(**kwargs, labels=batch["labels"])
            losses = {"lm_loss": out.loss, "loss": out.loss}
        if nap is not None:
            losses["nap_loss"] = nap
        losses["loss"] = losses["loss"] + (r.nap_weight * nap if nap is not None and train else 0.0)
        return losses

    def on_before_batch_transfer(self, batch, dataloader_idx):
        # Counted while the batch is still on the host: an int(...) of a device tensor inside the step would make the
        # CPU wait for the GPU (a host-device sync) every step.
        batch["num_tokens"] = int(batch["attention_mask"].sum())
        batch["num_scored"] = int((batch["labels"][:, 1:] != -100).sum())
        return batch

    def training_step(self, batch, batch_idx):
        losses = self.step_losses(batch, train=True)
        tokens = batch["num_tokens"]
        now = time.perf_counter()
        if self._t_last is not None:
            self.log("train/tok_s", tokens / max(now - self._t_last, 1e-9), prog_bar=True, on_step=True, batch_size=1)
        self._t_last = now
        bs = batch["input_ids"].shape[0]
        # with the MTP sequential backward "loss" is only the backward's surrogate: log the objective itself
        shown = losses["loss"] if "mtp_loss" not in losses else losses["mtp_loss"]
        self.log("train/loss", shown, prog_bar=True, on_step=True, batch_size=bs)
        if "mtp_loss" in losses:
            self.log("train/lm_loss", losses["lm_loss"], on_step=True, batch_size=bs)
        if "nap_loss" in losses:
            self.log("train/nap_loss", losses["nap_loss"], on_step=True, batch_size=bs)
        self.log("train/planner_trainable", float(self.planner_trainable), on_step=True, batch_size=bs)
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        losses = self.step_losses(batch, train=False)
        n = batch["num_scored"]
        self.log("val/loss", losses["lm_loss"], prog_bar=True, batch_size=max(n, 1), sync_dist=True)

    # ---- schedule hooks ----------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx):
        if self.unfreeze_at is not None and not self.planner_trainable and self.global_step >= self.unfreeze_at:
            self.planner_trainable = True
        # Counted here, not in on_train_batch_end: ModelCheckpoint saves in its own on_train_batch_end, which
        # Lightning calls before the module's, and the saved count must include the batch just trained on.
        self.batches_this_epoch += 1

    def on_train_epoch_start(self):
        self.batches_this_epoch, self._resume_skip = self._resume_skip, 0

    # ---- data --------------------------------------------------------------------------------------------------
    def train_dataloader(self):
        # Built after a checkpoint's on_load_checkpoint, so the sampler starts exactly where the killed run stopped.
        d = self.data
        micro = d.micro_batch_size(self.trainer.world_size)
        sampler = ResumableBatchSampler(
            len(d.train), micro, seed=self.seed, rank=self.trainer.global_rank, world_size=self.trainer.world_size
        )
        epoch = self.current_epoch
        if self._resume_skip >= len(sampler):
            # Saved on the last batch of an epoch: Lightning goes on with the next epoch without asking for a new
            # iterator, so this one must already be the next epoch's.
            epoch, self._resume_skip = epoch + 1, 0
        sampler.epoch, sampler.skip = epoch, self._resume_skip
        return DataLoader(
            d.train, batch_sampler=sampler, collate_fn=d.collate, generator=_own_generator(),
            **d.loader_settings(self.device)
        )

    def val_dataloader(self):
        d = self.data
        if d.val is None or len(d.val) == 0:
            return []
        return DataLoader(
            d.val, batch_size=d.micro_batch_size(1), shuffle=False, collate_fn=d.collate, generator=_own_generator(),
            **d.loader_settings(self.device)
        )

    def configure_optimizers(self):
        # The planner's parameters are in the optimizer from the start; while frozen they get no gradient, no update.
        planner = {id(p) for p in self.model.planner.parameters()} if self.model.planner is not None else set()
        trained = [p for p in self.parameters() if p.requires_grad]  # the planned LM's and the MTP heads'
        planner_lr = self.optim.lr if self.optim.planner_lr is None else self.optim.planner_lr
        groups = [
            {"params": [p for p in trained if id(p) not in planner]},
            {"params": [p for p in trained if id(p) in planner], "lr": planner_lr},
        ]
        return adam([g for g in groups if g["params"]], self.optim.lr, weight_decay=self.optim.weight_decay,
                    trainer=self._trainer)

    # ---- exact resume ------------------------------------------------------------------------------------------
    FROZEN_LM = "model.lm."  # state-dict prefix of the base LM

    def frozen_lm_hash(self) -> str:
        """Content hash of the frozen base LM's state (computed once): what a checkpoint records instead of it."""
        if getattr(self, "_frozen_lm_hash", None) is None:
            h = hashlib.sha256()
            for name, t in sorted(self.model.lm.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._frozen_lm_hash = h.hexdigest()[:16]
        return self._frozen_lm_hash

    def on_save_checkpoint(self, checkpoint):
        # A checkpoint holds the trainable state only (adapters, planner, heads, optimizer, RNG, data position): the
        # frozen base LM is rebuilt from the run's --lm, and recorded by its content hash (DESIGN.md: hundreds of
        # checkpoints an epoch must not each copy a 0.5-5 GB LM).
        frozen = not self.recipe.train_lm
        if frozen:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                        if not k.startswith(self.FROZEN_LM)}
        checkpoint["planlm"] = {
            "batches_this_epoch": self.batches_this_epoch,
            "planner_trainable": self.planner_trainable,
            "rng": rng_states(),
            "frozen_lm": self.frozen_lm_hash() if frozen else None,
            "base_lm": getattr(self.model.config, "base_lm", None),
        }

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint["planlm"]
        if state.get("frozen_lm") is not None:
            # Lightning loads the state dict strictly right after this hook: put the frozen LM back, once it is
            # known to be the LM the checkpoint was trained on.
            if state["frozen_lm"] != self.frozen_lm_hash():
                raise PlanlmError(f"the checkpoint was trained on the base LM {state.get('base_lm')} with content hash "
                                  f"{state['frozen_lm']}, and this --lm has {self.frozen_lm_hash()}; resume with the "
                                  "same LM, or run without --resume to start afresh")
            sd = checkpoint["state_dict"]
            sd.update({k: v for k, v in self.state_dict().items() if k.startswith(self.FROZEN_LM)})
        self._resume_skip = state["batches_this_epoch"]
        self.planner_trainable = bool(state["planner_trainable"])
        set_rng_states(state["rng"])
