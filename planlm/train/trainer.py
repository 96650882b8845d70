"""The Lightning Trainer every training stage builds: devices, strategy, precision, logging, checkpoints.

Distributed training (DDP, FSDP), mixed precision and multi-node runs come from Lightning, nothing home-made
(DESIGN.md section 3). Stages embed :class:`TrainerConfig` in their own config and call :func:`build_trainer`.
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from planlm.errors import check_finite, check_max_steps
from planlm.models.mtp import MTPConfig


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
        check_finite(out, **{"optim.lr": self.lr, "optim.planner_lr": self.planner_lr,
                             "optim.weight_decay": self.weight_decay, "optim.grad_clip": self.grad_clip})
        check_max_steps(out, self.max_steps, "optim.max_steps")
        if self.lr <= 0 or self.weight_decay < 0:
            out.append(f"optim.lr must be positive and optim.weight_decay non-negative (got {self.lr}, "
                       f"{self.weight_decay})")
        if self.batch_size < 1 or self.accumulate < 1 or self.epochs < 1:
            out.append("optim.batch_size, optim.accumulate and optim.epochs must be positive")
        elif self.batch_size % self.accumulate:
            out.append(f"optim.batch_size {self.batch_size} is not divisible by optim.accumulate {self.accumulate}")
        if self.grad_clip < 0:
            out.append(f"optim.grad_clip must be >= 0 (0 = no clipping; got {self.grad_clip})")
        if self.planner_lr is not None and self.planner_lr < 0:
            out.append(f"optim.planner_lr must be non-negative, or unset to use optim.lr (got {self.planner_lr})")
        return out



FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")
"""Devices on which torch's fused Adam kernel runs."""


def adam(params, lr: float, *, weight_decay: float = 0.0, decoupled: bool = False, betas=(0.9, 0.999),
         trainer: pl.Trainer | None = None) -> torch.optim.Optimizer:
    """Every stage's Adam (AdamW when ``decoupled``), on torch's fused kernel where it applies: one kernel over all
    parameters instead of a loop of per-tensor operations, the same update (bench/adam.py: 2.3-2.7x faster a step over
    the adapters and planner of the frozen SmolLM2 on a CPU; docs/performance.md). ``params``: tensors or param
    groups. Not fused for parameters on another device or of an integer dtype, nor when ``trainer`` clips gradients
    under mixed precision (Lightning cannot clip for an optimizer that unscales its own gradients)."""
    groups = list(params)
    tensors = [t for g in groups for t in (g["params"] if isinstance(g, dict) else [g])]
    clips = trainer is not None and bool(trainer.gradient_clip_val) and str(trainer.precision).endswith("-mixed")
    fused = bool(tensors) and not clips and all(
        t.is_floating_point() and t.device.type in FUSED_DEVICES for t in tensors)
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    return kind(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)


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
    logger: Literal["csv", "tensorboard", "wandb", "none"] = "csv"
    """"csv" (default, OUT/logs/metrics.csv), "tensorboard", "wandb" (Weights & Biases: pip install
    'planlm[wandb]'; project $WANDB_PROJECT or planlm, group = the variant, name = variant / seed, config = the
    stage's resolved config; WANDB_MODE=offline keeps the run in OUT/logs/wandb/) or "none"."""
    log_every_n_steps: int = 10
    """How often to log training metrics."""
    progress_bar: bool = True
    """Show progress with loss and tokens/s: a bar on a terminal, else (a log file, CI) one line every
    log_every_n_steps steps."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms (needed for bit-exact resume checks)."""
    compile: bool = False
    """``torch.compile`` the models a stage trains (finetune: the LM with its adapter hooks, and the planner)."""


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; on resume, keep its rows (and its
    header) and append, dropping rows of steps that the resumed run will log again."""

    resume_step: int | None = None

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self.resume_step is None or not path.is_file():
            return super()._check_log_dir_exists()
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), list(reader)
        # rows logged after the checkpoint the run resumes from, by the killed process: logged again now
        rows = [r for r in rows if not r.get("step") or int(float(r["step"])) < self.resume_step]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = keys


class ResumableCSVLogger(CSVLogger):
    """A CSVLogger whose metrics.csv survives a resume: ``resume_step`` is the resumed checkpoint's global step."""

    def __init__(self, *args, resume_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            writer = _KeepingWriter.__new__(_KeepingWriter)
            writer.resume_step = self._resume_step
            writer.__init__(log_dir=self.log_dir)
            self._experiment = writer
        return self._experiment


@dataclass
class Experiment:
    """What an experiment tracker (``--trainer.logger wandb``) records of a training run, given by its stage."""

    stage: str
    """The stage: finetune, train-planner, pretrain-lm."""
    group: str
    """The variant (finetune: its row name), the planner objective, the LM preset: runs that differ by seed only."""
    seed: int
    config: dict
    """The stage's resolved config (what its manifest records)."""

    @property
    def name(self) -> str:
        return f"{self.group} / seed {self.seed}"


WANDB_EXTRA = "wandb"  # pip install 'planlm[wandb]'


def logger_problems(cfg: TrainerConfig) -> list[str]:
    """A logger whose package is missing, as a one-line problem naming the extra that installs it."""
    if cfg.logger == "wandb":
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            return [f"trainer.logger=wandb needs Weights & Biases: pip install 'planlm[{WANDB_EXTRA}]'"]
    return []


def build_logger(cfg: TrainerConfig, out_dir: Path, resume_step: int | None = None,
                 experiment: Experiment | None = None):
    from lightning.pytorch.loggers import TensorBoardLogger

    if cfg.logger == "csv":
        # flushed at every logged step (already every log_every_n_steps): a killed run keeps the rows it logged
        return ResumableCSVLogger(save_dir=str(out_dir), name="logs", version="", resume_step=resume_step,
                                  flush_logs_every_n_steps=1)
    if cfg.logger == "tensorboard":
        return TensorBoardLogger(save_dir=str(out_dir), name="logs", version="")
    if cfg.logger == "wandb":
        import os

        from lightning.pytorch.loggers import WandbLogger

        info = experiment or Experiment(stage="train", group=Path(out_dir).name, seed=0, config={})
        # OUT/logs/wandb/ (offline runs stay there, next to metrics.csv's place); it must exist before wandb starts
        (Path(out_dir) / "logs").mkdir(parents=True, exist_ok=True)
        return WandbLogger(project=os.environ.get("WANDB_PROJECT", "planlm"), name=info.name, group=info.group,
                           tags=[info.stage, info.group], config={"stage": info.stage, **info.config},
                           save_dir=str(Path(out_dir) / "logs"), log_model=False)
    return False


class ValidatedAt(Callback):
    """The global step of the last validation (in a fit or a ``trainer.validate`` call; sanity checks aside). Every
    trainer of :func:`build_trainer` has one: :func:`fit` reads it to tell a stale validation from a fresh one."""

    step: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.step = trainer.global_step


class StepTimer:
    """Seconds spent in training steps (forward + backward + optimizer step), without a host-device sync per step:
    on a GPU each step is bracketed by CUDA events, read (one sync) only when :attr:`seconds` is asked for."""

    def __init__(self):
        self._seconds, self._t0, self._events = 0.0, 0.0, []

    def start(self, device) -> None:
        if device.type == "cuda":
            self._events.append([torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)])
            self._events[-1][0].record()
        else:
            self._t0 = time.perf_counter()

    def stop(self, device) -> None:
        if device.type == "cuda":
            self._events[-1][1].record()
        else:
            self._seconds += time.perf_counter() - self._t0

    @property
    def seconds(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()
            self._seconds += sum(a.elapsed_time(b) for a, b in self._events) / 1000.0
            self._events = []
        return self._seconds


def fit(trainer: pl.Trainer, module: pl.LightningModule, train_dataloaders=None, val_dataloaders=None,
        ckpt_path: str | None = None) -> dict[str, float]:
    """Train ``module`` and return the final logged metrics (``trainer.callback_metrics``, as floats): the ONE fit of
    every training stage.

    When the last validation is stale (``max_steps`` stopped the run mid-epoch, or a resumed run ended before its next
    validation), the final model is validated once more, so the ``val/*`` metrics returned are always those of the
    model the stage saves; the ``train/*`` ones are the last logged.
    """
    try:
        trainer.fit(module, train_dataloaders, val_dataloaders, ckpt_path=ckpt_path)
    except SystemExit:
        if trainer.interrupted:  # Lightning answers Ctrl-C with its own exit(1): planlm's is "interrupted", 130
            raise KeyboardInterrupt from None
        raise
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    try:
        return _validated_metrics(trainer, module, val_dataloaders, metrics)
    finally:
        finish_trackers(trainer)


def finish_trackers(trainer: pl.Trainer) -> None:
    """End the Weights & Biases run of a fit (Lightning leaves it open), so that its files are complete."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            logger.experiment.finish()


def _validated_metrics(trainer: pl.Trainer, module, val_dataloaders, metrics: dict[str, float]) -> dict[str, float]:
    validated = next((c for c in trainer.callbacks if isinstance(c, ValidatedAt)), None)
    # num_val_batches is set up when the fit starts; [] (not set up) validates rather than risk a stale number
    has_val = not trainer.num_val_batches or sum(trainer.num_val_batches) > 0
    if has_val and (validated is None or validated.step != trainer.global_step):
        trainer.validate(module, val_dataloaders, verbose=False)  # resets callback_metrics to the new val/*
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    return metrics


class LineProgress(ProgressBar):
    """Progress for logs (not a terminal): one line every ``every`` steps with the figures the bar shows (step,
    epoch, loss, tokens/s, ...), and one after each validation, so `planlm run > log` reads as a log."""

    def __init__(self, every: int):
        super().__init__()
        self.every = max(1, every)
        self._enabled = True
        self._t0 = time.perf_counter()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _figures(self, trainer) -> str:
        items = self.get_metrics(trainer, trainer.lightning_module)
        items.pop("v_num", None)
        return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in items.items())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = batch_idx + 1
        if not self._enabled or not trainer.is_global_zero or (n % self.every and n != self.total_train_batches):
            return
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        steps = f"step {trainer.global_step}" + (f"/{total}" if total else "")
        print(f"epoch {trainer.current_epoch} batch {n}/{self.total_train_batches} {steps} {self._figures(trainer)} "
              f"({time.perf_counter() - self._t0:.0f} s)", flush=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._enabled and trainer.is_global_zero and not trainer.sanity_checking:
            print(f"validation at step {trainer.global_step}: {self._figures(trainer)}", flush=True)


def on_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_callback(cfg: TrainerConfig):
    """Lightning's bar on a terminal, :class:`LineProgress` elsewhere (pipes, files, CI)."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    if on_terminal():
        return TQDMProgressBar(refresh_rate=max(1, cfg.log_every_n_steps // 2))
    return LineProgress(every=cfg.log_every_n_steps)


class _LineStream:
    """stderr for tqdm off a terminal: each carriage-return refresh becomes its own line (tqdm refreshes at most
    every TQDM_MININTERVAL seconds there), instead of megabytes of ``\r`` in one line."""

    def __init__(self, stream):
        self._stream, self._at_line_start = stream, True

    def write(self, s: str) -> int:
        if "\r" in s:
            s = "\n".join(part for part in s.split("\r") if part.strip())
            if s and not s.endswith("\n"):
                s += "\n"
        if s == "\n" and self._at_line_start:
            return 1
        if s:
            self._stream.write(s)
            self._at_line_start = s.endswith("\n")
        return len(s)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def configure_progress_output(interval_s: float = 30.0) -> None:
    """Off a terminal, make every tqdm bar (ours, sentence-transformers', Hugging Face's) print one line per
    ``interval_s`` seconds instead of carriage-return refreshes. Called once by the CLI."""
    import os

    if on_terminal() or isinstance(sys.stderr, _LineStream):
        return
    os.environ.setdefault("TQDM_MININTERVAL", str(interval_s))  # read by tqdm >= 4.66 as its default
    sys.stderr = _LineStream(sys.stderr)


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (accelerator lines, tips) out of the CLI's output; warnings still show."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


# DDP strategies with a registered "<name>_find_unused_parameters_true" twin in Lightning.
DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def world_size(cfg: TrainerConfig) -> int | None:
    """Processes a trainer config asks for (devices x nodes), or None while "auto" leaves it to Lightning."""
    try:
        return int(cfg.devices) * int(cfg.num_nodes)
    except (TypeError, ValueError):
        return None


def global_batch_problems(batch_size: int, accumulate: int, world: int | None, what: str = "optim.batch_size"
                          ) -> list[str]:
    """The global batch of an optimizer step must be exactly ``batch_size`` windows: split evenly over ``world``
    processes and ``accumulate`` micro-batches (a remainder would shrink every step's batch, leave part of each
    epoch unseen and shift every schedule counted in optimizer steps). One line saying which counts work."""
    if world is None or batch_size < 1 or accumulate < 1:
        return []
    parts = world * accumulate
    if batch_size % parts == 0:
        return []
    ok = [d for d in range(1, batch_size + 1) if batch_size % (d * accumulate) == 0]
    return [f"{what} {batch_size} does not split evenly over {world} process(es) x {accumulate} accumulation "
            f"step(s); with accumulate {accumulate}, devices x nodes may be {', '.join(map(str, ok)) or 'none'} "
            f"(or make the batch a multiple of {parts})"]


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
    resume_step: int | None = None,
    find_unused_parameters: bool = False,
    experiment: Experiment | None = None,
    **kwargs,
):
    """A ``lightning.Trainer`` for ``cfg`` writing logs under ``out_dir``; ``kwargs`` go to the Trainer as they are.

    ``resume_step``: the global step of the checkpoint the run resumes from (its logged rows before it are kept).
    ``find_unused_parameters``: some trainable parameters get no gradient in some steps (a planner that is still
    frozen); DDP must then look for them after every forward instead of waiting for their gradients forever.
    ``experiment``: what the stage tells an experiment tracker (``--trainer.logger wandb``) about the run.
    """
    from planlm.errors import raise_if_problems

    raise_if_problems(strategy_problems(cfg) + logger_problems(cfg), "trainer")
    quiet_lightning()
    out_dir = Path(out_dir)
    callbacks = list(callbacks or [])
    if not any(isinstance(c, ValidatedAt) for c in callbacks):
        callbacks.append(ValidatedAt())  # read by fit()
    if cfg.progress_bar:
        callbacks.append(progress_callback(cfg))
    strategy = cfg.strategy
    if find_unused_parameters and strategy in DDP_STRATEGIES:
        strategy = f"{strategy}_find_unused_parameters_true"
    return pl.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        precision=cfg.precision,
        logger=build_logger(cfg, out_dir, resume_step, experiment),
        log_every_n_steps=cfg.log_every_n_steps,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        deterministic=cfg.deterministic,
        default_root_dir=str(out_dir),
        callbacks=callbacks,
        **kwargs,
    )


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
