"""Selection modes: how planner logits (or oracle actions) become weights over the K actions (DESIGN.md 1.5).

Every mode is expressed as a weight matrix ``(N, K)``, one row per sentence of the batch's sentence table, so that an
adapter computes ``r = W_A(weights @ E_A)`` once per sentence and never a K x d product per token:

- ``fixed``: onehot(fixed_action) for every sentence (baseline "Fixed"; no planner).
- ``uniform``: 1/K for every action (baseline "Uniform"; no planner).
- ``hard``: onehot(argmax logits) (Cornille et al. 2024), or onehot(oracle action).
- ``straight-through``: forward onehot(argmax logits), backward through softmax(logits / T).
- ``soft``: softmax(logits / T), the paper's method; exact gradient into the planner.

For the planner modes, a sentence uses its predicted action where ``predicted_mask`` is True and its oracle action
elsewhere (oracle actions = "OA", predicted = "PA", a random mask with probability p = scheduled sampling).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from planlm.errors import PlanlmError

Selection = Literal["fixed", "uniform", "hard", "straight-through", "soft"]
SELECTIONS: tuple[str, ...] = get_args(Selection)


def needs_planner(selection: str) -> bool:
    """Whether a selection reads planner logits (or oracle actions) per sentence. ``fixed`` and ``uniform`` add one
    constant vector per layer: no planner, no sentence table."""
    return selection not in ("fixed", "uniform")


@dataclass
class SelectionConfig:
    """How planner logits (or oracle actions) become action weights; shared by the model and training recipe configs
    (``PlannedLMConfig``, ``RecipeConfig``), which extend it."""

    selection: Selection = "soft"
    """fixed | uniform | hard | straight-through | soft (the paper's method)."""
    temperature: float = 1.0
    """Softmax temperature of soft selection (and of straight-through's backward pass)."""
    fixed_action: int = 0
    """The action id of ``fixed`` selection."""

    def selection_fields(self) -> dict:
        """This config's selection fields alone, to build another config that extends :class:`SelectionConfig`."""
        return {f.name: getattr(self, f.name) for f in fields(SelectionConfig)}

    def selection_problems(self, prefix: str = "") -> list[str]:
        out = []
        if self.selection not in SELECTIONS:
            out.append(f"{prefix}selection must be one of {', '.join(SELECTIONS)} (got {self.selection!r})")
        if self.temperature <= 0:
            out.append(f"{prefix}temperature must be positive (got {self.temperature})")
        return out


def check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise PlanlmError(f"unknown selection {selection!r}; use one of {', '.join(SELECTIONS)}")


def draw_predicted_mask(
    num_sentences: int, p_predicted: float, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """A per-sentence mask, True with probability ``p_predicted``: that sentence uses the planner's action.

    Drawn on the CPU with ``generator`` (seeded by the caller for reproducibility) and moved to ``device``.
    """
    if p_predicted >= 1.0:
        return torch.ones(num_sentences, dtype=torch.bool, device=device)
    if p_predicted <= 0.0:
        return torch.zeros(num_sentences, dtype=torch.bool, device=device)
    return (torch.rand(num_sentences, generator=generator) < p_predicted).to(device)



def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) of int64 values in [0, 2**32), elementwise; every
    intermediate stays below 2**59, so int64 never overflows."""
    x = (x * 2654435761) % 2**32
    x = (((x >> 16) ^ x) * 0x45D9F3B) % 2**32
    x = (((x >> 16) ^ x) * 0x45D9F3B) % 2**32
    return (x >> 16) ^ x


def keyed_predicted_mask(sentence_ids: torch.Tensor, p_predicted: float, key: int) -> torch.Tensor:
    """``(N,)`` bool, True with probability ``p_predicted``, a hash of (``key``, global sentence id) rather than a
    running generator: the same sentence draws the same under the same key on any DDP rank and after a resume.
    Integer ops on ``sentence_ids``' device only, so no host-device copy or sync (the training loop's mask)."""
    k = _mix32(torch.tensor(key % 2**32, dtype=torch.int64, device=sentence_ids.device))
    u = _mix32((sentence_ids.long() + k) % 2**32).double() / 2**32  # (N,) uniform in [0, 1)
    return u < p_predicted


class _StraightThrough(torch.autograd.Function):
    """Forward: onehot(argmax) of the soft weights, exactly; backward: the gradient passes to the soft weights."""

    @staticmethod
    def forward(ctx, soft: torch.Tensor) -> torch.Tensor:
        return F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)  # (N, K)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def predicted_weights(selection: str, planner_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Weights ``(N, K)`` from planner logits ``(N, K)`` for hard / straight-through / soft."""
    if selection == "hard":
        # argmax has no gradient: the planner is not trained through the LM in hard mode (Cornille et al. 2024)
        return F.one_hot(planner_logits.argmax(-1), planner_logits.shape[-1]).to(planner_logits.dtype)
    soft = torch.softmax(planner_logits / temperature, dim=-1)  # (N, K)
    if selection == "soft":
        return soft
    if selection == "straight-through":
        return _StraightThrough.apply(soft)
    raise PlanlmError(f"selection {selection!r} takes no planner logits; use one of hard, straight-through, soft")


def action_weights(
    selection: str,
    num_actions: int,
    planner_logits: torch.Tensor | None = None,
    oracle_actions: torch.Tensor | None = None,
    predicted_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    fixed_action: int = 0,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """Per-sentence weights over the actions for one selection mode.

    Args:
        selection: one of ``fixed``, ``uniform``, ``hard``, ``straight-through``, ``soft``.
        num_actions: K.
        planner_logits: ``(N, K)`` planner logits; needed by the planner modes unless every sentence is oracle.
        oracle_actions: ``(N,)`` oracle action ids.
        predicted_mask: ``(N,)`` bool, True where a sentence uses the planner's prediction. When both logits and
            oracle actions are given and no mask is, every sentence uses the prediction.
        temperature: softmax temperature of ``soft`` and of the backward pass of ``straight-through``.
        fixed_action: the action id of ``fixed``.
        dtype: dtype of onehot rows and of the constant modes.
        device: device of the constant modes (defaults to the inputs').

    Returns:
        ``(N, K)`` weights, rows summing to 1; ``(1, K)`` for ``fixed`` and ``uniform`` (the same for every token).
    """
    check_selection(selection)
    if selection == "fixed":
        if not 0 <= fixed_action < num_actions:
            raise PlanlmError(f"fixed_action={fixed_action} is not an action id in [0, {num_actions})")
        w = torch.zeros(1, num_actions, dtype=dtype, device=device)
        w[0, fixed_action] = 1.0
        return w
    if selection == "uniform":
        return torch.full((1, num_actions), 1.0 / num_actions, dtype=dtype, device=device)

    if planner_logits is None and oracle_actions is None:
        raise PlanlmError(f"selection {selection!r} needs planner logits (or planner inputs) or oracle actions")
    if planner_logits is not None and planner_logits.shape[-1] != num_actions:
        raise PlanlmError(f"planner logits have {planner_logits.shape[-1]} actions, the adapters {num_actions}")
    oracle = None
    if oracle_actions is not None:
        oracle = F.one_hot(oracle_actions.long(), num_actions)
        oracle = oracle.to(planner_logits.dtype if planner_logits is not None else dtype)  # (N, K)
    if planner_logits is None:
        return oracle  # "OA": every sentence conditioned on its true action
    predicted = predicted_weights(selection, planner_logits, temperature)  # (N, K)
    if oracle is None or predicted_mask is None:
        return predicted
    return torch.where(predicted_mask.to(predicted.device)[:, None], predicted, oracle)
