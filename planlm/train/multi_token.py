"""The multi-token loss of a training step (Gloeckle et al. 2024), shared by every trainer with MTP heads: the
LM-pretraining module (planlm/train/lm_pretraining.py) and the ONE planned-LM loop (planlm/train/loop.py).

:meth:`planlm.models.mtp.MTPHeads.losses` computes the heads' losses; this decides which of its backwards a step
runs and what it hands to Lightning's backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


@dataclass
class MultiTokenLoss:
    """One step's multi-token loss."""

    objective: torch.Tensor
    """Sum over heads of the CE of token t + i (the paper's objective; detached after the sequential backward)."""
    lm_loss: torch.Tensor
    """Head 1's CE: the next-token loss of the LM itself."""
    backward: torch.Tensor | None
    """What the training step returns for Lightning's backward: the objective itself (naive), or the sequential
    backward's surrogate, whose backward applies the gradients the heads' backwards collected and runs the one trunk
    backward (its value is meaningless: log ``objective``)."""


def multi_token_loss(heads, run_lm: Callable[[], torch.Tensor], labels: torch.Tensor, backward: str, train: bool,
                     params: Iterable[torch.Tensor] | None = None) -> MultiTokenLoss:
    """The multi-token loss of ``heads`` on one batch.

    Args:
        heads: :class:`planlm.models.mtp.MTPHeads` on the LM that ``run_lm`` runs.
        run_lm: runs the LM (plain or planned) on the batch and returns head 1's logits ``(B, T, V)``.
        labels: ``(B, T)`` token ids, -100 where not scored (unshifted).
        backward: ``MTPConfig.backward``: "naive" or "sequential" (the heads' backwards run inside the step, one head
            at a time: memory flat in the number of heads). Validation (``train`` False) always computes it naively.
        train: a training step (gradients wanted) or a validation one.
        params: the sequential backward's trainable tensors (default: the LM's and the heads'); pass every trained
            parameter a head's loss reaches (a planner feeding adapters, say).
    """
    sequential = train and backward == "sequential"
    out = heads.losses(run_lm, labels, "sequential" if sequential else "naive", params=params)
    return MultiTokenLoss(objective=out.loss, lm_loss=out.head_losses[0],
                          backward=out.trunk_loss if sequential else out.loss)
