"""The Lightning Trainer every training stage builds: devices, strategy, precision, logging, checkpoints.

Distributed training (DDP, FSDP), mixed precision and multi-node runs come from Lightning, nothing home-made
(DESIGN.md section 3). Stages embed :class:`TrainerConfig` in their own config and call :func:`build_trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from pathlib import Path


@dataclass
class OptimConfig:
    """Optimisation, the same section in every training stage (finetune, train-planner). Defaults: the paper's
    fine-tuning (Adam, lr 1e-4, batch 32, one epoch); train-planner's differ only in weight_decay (1e-4)."""

    lr: float = 1e-4
    """Learning rate of Adam."""
    planner_lr: float | None = None
    """Learning rate of the planner's parameters once they train (None = lr, one rate for everything, as in the
    paper). A departure for fine-tuning at a high lr: a lower planner_lr keeps the NAP-pretrained planner from
    drifting away from its actions after it is unfrozen."""
    weight_decay: float = 0.0
    """Weight decay (paper: none for fine-tuning)."""
    batch_size: int = 32
    """Windows per optimizer step, over all devices (paper: 32)."""
    accumulate: int = 1
    """Gradient accumulation: micro-batches per optimizer step (batch_size is split into this many)."""
    epochs: int = 1
    """Passes over the training windows (paper: 1)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1 = the full epochs)."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0 = off)."""

    def problems(self) -> list[str]:
        """Everything wrong with these settings, as one-line messages."""
        out = []
        if self.lr <= 0 or self.weight_decay < 0:
            out.append(f"optim.lr must be positive and optim.weight_decay non-negative (got {self.lr}, "
                       f"{self.weight_decay})")
        if self.batch_size < 1 or self.accumulate < 1 or self.epochs < 1:
            out.append("optim.batch_size, optim.accumulate and optim.epochs must be positive")
        elif self.batch_size % self.accumulate:
            out.append(f"optim.batch_size {self.batch_size} is not divisible by optim.accumulate {self.accumulate}")
        if self.planner_lr is not None and self.planner_lr < 0:
            out.append(f"optim.planner_lr must be non-negative, or unset to use optim.lr (got {self.planner_lr})")
        return out



@dataclass
class TrainerConfig:
    """Hardware, logging and checkpointing settings shared by every training stage."""

    accelerator: str = "auto"
    """"cpu", "gpu", "auto" (a GPU when one is visible)."""
    devices: int | str = 1
    """Number of devices per node, or "auto"."""
    num_nodes: int = 1
    """Number of nodes."""
    strategy: str = "auto"
    """Lightning strategy: "auto", "ddp", "ddp_spawn", "fsdp", "deepspeed" ... (gloo backend on CPU)."""
    precision: str = "32-true"
    """"32-true", "bf16-mixed" (GPU), "16-mixed"."""
    logger: Literal["csv", "tensorboard", "none"] = "csv"
    """"csv" (default), "tensorboard" or "none"."""
    log_every_n_steps: int = 10
    """How often to log training metrics."""
    progress_bar: bool = True
    """Show a progress bar with loss and tokens/s."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms (needed for bit-exact resume checks)."""
    compile: bool = False
    """``torch.compile`` the models a stage trains (finetune: the LM with its adapter hooks, and the planner)."""


def build_logger(cfg: TrainerConfig, out_dir: Path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if cfg.logger == "csv":
        return CSVLogger(save_dir=str(out_dir), name="logs", version="")
    if cfg.logger == "tensorboard":
        return TensorBoardLogger(save_dir=str(out_dir), name="logs", version="")
    return False


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (accelerator lines, tips) out of the CLI's output; warnings still show."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


# DDP strategies with a registered "<name>_find_unused_parameters_true" twin in Lightning.
DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def strategy_problems(cfg: TrainerConfig) -> list[str]:
    """Strategies Lightning refuses on the chosen accelerator, as one-line problems (checked before any work)."""
    if str(cfg.strategy).startswith("fsdp") and cfg.accelerator == "cpu":
        # Lightning's FSDPStrategy runs on CUDA devices only (its CPU check fails deep inside Trainer start-up).
        return [f"trainer.strategy={cfg.strategy!r} needs GPUs (Lightning's FSDP has no CPU support); use ddp on CPU"]
    return []


def build_trainer(
    cfg: TrainerConfig,
    out_dir: str | Path,
    callbacks: list | None = None,
    find_unused_parameters: bool = False,
    **kwargs,
):
    """A ``lightning.Trainer`` for ``cfg`` writing logs under ``out_dir``; ``kwargs`` go to the Trainer as they are.

    ``find_unused_parameters``: some trainable parameters get no gradient in some steps (a planner that is still
    frozen); DDP must then look for them after every forward instead of waiting for their gradients forever.
    """
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    from planlm.errors import raise_if_problems

    raise_if_problems(strategy_problems(cfg), "trainer")
    quiet_lightning()
    out_dir = Path(out_dir)
    callbacks = list(callbacks or [])
    if cfg.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, cfg.log_every_n_steps // 2)))
    strategy = cfg.strategy
    if find_unused_parameters and strategy in DDP_STRATEGIES:
        strategy = f"{strategy}_find_unused_parameters_true"
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        precision=cfg.precision,
        logger=build_logger(cfg, out_dir),
        log_every_n_steps=cfg.log_every_n_steps,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        deterministic=cfg.deterministic,
        default_root_dir=str(out_dir),
        callbacks=callbacks,
        **kwargs,
    )
