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

Sampled-plan conditioning (``plan_samples`` M >= 1; Mai, Cornille, Moens 2024): M plans of H actions are sampled
from the planner (:meth:`planlm.models.planner.Planner.sample_plans`, at ``plan_temperature``) and the adapters read,
per sentence and offset, the average over the M plans (:func:`sampled_plan_weights`), weights ``(N, H, K)``:

- ``plan_average="samples"`` (default): the empirical distribution of the sampled actions, (1/M) sum_m
  onehot(a_m,h), a Monte-Carlo estimate of the marginal of the plan at offset h. At offset 1 it tends to
  softmax(logits / plan_temperature), the soft weights, as M grows; M = 1 at temperature 0 is hard selection. For
  soft and straight-through its gradient is the straight-through one: it flows through the average of the per-step
  distributions softmax(logits_m,h / temperature); hard sends none.
- ``plan_average="probs"``: the average of those per-step distributions themselves (a Rao-Blackwellised estimate:
  exact at offset 1 for any M, lower variance at later offsets, exact gradient given the sampled prefixes).

``plan_samples=0`` (default) samples nothing: H = 1 is the selection above, unchanged; H > 1 follows the greedy plan
(the argmax at every offset) and passes each offset's logits through the selection.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from planlm.errors import PlanlmError

Selection = Literal["fixed", "uniform", "hard", "straight-through", "soft"]
SELECTIONS: tuple[str, ...] = get_args(Selection)
PlanAverage = Literal["samples", "probs"]
PLAN_AVERAGES: tuple[str, ...] = get_args(PlanAverage)


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
    plan_samples: int = 0
    """M, plans sampled from the planner per sentence, averaged into the weights the adapters read (0 = no sampling:
    the selection of the planner's logits, the paper's; with a planner horizon H > 1, its greedy plan)."""
    plan_temperature: float = 1.0
    """Temperature of plan sampling (0 = argmax: M = 1 is then hard selection)."""
    plan_average: PlanAverage = "samples"
    """What the M plans average: "samples" (their sampled actions, one-hot) or "probs" (the planner's per-step
    distributions along each sampled plan)."""

    def selection_fields(self) -> dict:
        """This config's selection fields alone, to build another config that extends :class:`SelectionConfig`."""
        return {f.name: getattr(self, f.name) for f in fields(SelectionConfig)}

    def selection_problems(self, prefix: str = "") -> list[str]:
        out = []
        if self.selection not in SELECTIONS:
            out.append(f"{prefix}selection must be one of {', '.join(SELECTIONS)} (got {self.selection!r})")
        if self.temperature <= 0:
            out.append(f"{prefix}temperature must be positive (got {self.temperature})")
        if self.plan_samples < 0:
            out.append(f"{prefix}plan_samples must be >= 0 (got {self.plan_samples})")
        if self.plan_temperature < 0:
            out.append(f"{prefix}plan_temperature must be >= 0 (got {self.plan_temperature})")
        if self.plan_average not in PLAN_AVERAGES:
            out.append(f"{prefix}plan_average must be one of {', '.join(PLAN_AVERAGES)} (got {self.plan_average!r})")
        if self.plan_samples > 0 and not needs_planner(self.selection):
            out.append(f"{prefix}plan_samples samples the planner: selection {self.selection!r} has none")
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


def sampled_plan_weights(
    selection: str,
    actions: torch.Tensor,
    logits: torch.Tensor,
    temperature: float = 1.0,
    average: str = "samples",
) -> torch.Tensor:
    """Per-offset weights ``(N, H, K)`` averaged over M sampled plans (module docstring).

    Args:
        selection: hard (no gradient), straight-through or soft.
        actions: ``(N, M, H)`` the sampled plans.
        logits: ``(N, M, H, K)`` the planner's logits at each offset of each plan.
        temperature: softmax temperature of the per-step distributions (the selection's).
        average: "samples" (one-hot actions) or "probs" (per-step distributions).
    """
    probs = torch.softmax(logits / temperature, dim=-1).mean(1)  # (N, H, K)
    if average == "probs":
        return probs.detach() if selection == "hard" else probs
    counts = F.one_hot(actions, logits.shape[-1]).to(probs.dtype).mean(1)  # (N, H, K)
    if selection == "hard":
        return counts
    return counts + (probs - probs.detach())  # forward: the sample average; backward: through the distributions


def greedy_plan_weights(selection: str, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-offset weights ``(N, H, K)`` of a greedy plan's logits ``(N, H, K)`` through the selection."""
    n, h, k = logits.shape
    return predicted_weights(selection, logits.reshape(n * h, k), temperature).view(n, h, k)


def plan_weights(
    planner, planner_inputs: dict[str, torch.Tensor], config: SelectionConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan a planner of horizon H gives N target sentences: ``(offset-1 logits (N, K), weights (N, H, K))``.

    ``config.plan_samples`` M >= 1: M plans sampled at ``plan_temperature`` (noise from ``generator``, or the global
    RNG), averaged by :func:`sampled_plan_weights`; 0: the greedy plan through the selection
    (:func:`greedy_plan_weights`). Every offset of every sample is batched: H planner calls in all.
    """
    if config.plan_samples == 0:
        _, logits = planner.sample_plans(planner_inputs, 1, 0.0)  # (N, 1, H, K)
        logits = logits[:, 0]  # (N, H, K)
        return logits[:, 0], greedy_plan_weights(config.selection, logits, config.temperature)
    actions, logits = planner.sample_plans(planner_inputs, config.plan_samples, config.plan_temperature, generator)
    weights = sampled_plan_weights(config.selection, actions, logits, config.temperature, config.plan_average)
    return logits[:, 0, 0], weights
