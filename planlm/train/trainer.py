"""The Lightning Trainer every training stage builds: devices, strategy, precision, logging, checkpoints.

Distributed training (DDP, FSDP), mixed precision and multi-node runs come from Lightning, nothing home-made
(DESIGN.md section 3). Stages embed :class:`TrainerConfig` in their own config and call :func:`build_trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    logger: str = "csv"
    """"csv" (default), "tensorboard" or "none"."""
    log_every_n_steps: int = 10
    """How often to log training metrics."""
    progress_bar: bool = True
    """Show a progress bar with loss and tokens/s."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms (needed for bit-exact resume checks)."""


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


def build_trainer(cfg: TrainerConfig, out_dir: str | Path, callbacks: list | None = None, **kwargs):
    """A ``lightning.Trainer`` for ``cfg`` writing logs under ``out_dir``; ``kwargs`` go to the Trainer as they are."""
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    quiet_lightning()
    out_dir = Path(out_dir)
    callbacks = list(callbacks or [])
    if cfg.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, cfg.log_every_n_steps // 2)))
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
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
