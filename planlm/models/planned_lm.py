"""PlannedLM: a Hugging Face causal LM + action adapters + an optional planner (DESIGN.md 1.3-1.5).

One forward pass: the planner (if given inputs) predicts logits ``(N, K)`` for the batch's sentence table, the
selection mode turns logits and/or oracle actions into per-sentence weights ``(N, K)``, and every conditioned layer
adds ``r^l = W_A^l(weights @ E_A^l)`` (gathered to tokens by ``token_slot``) to the input of its attention output
projection. ``fixed`` and ``uniform`` need neither planner nor sentence table.

The model's config is the one place its selection lives, and :meth:`PlannedLM.select` the one place it is applied:
``forward`` calls it, and a training loop calls it itself (saying whether the planner trains this step) when it needs
the planner's logits too, then hands the weights to ``forward(action_weights=...)``.

Plans (``horizon`` H > 1, or ``plan_samples`` M >= 1): the planner's plan for each table sentence (its action and
the H - 1 after it, sampled M times or greedy) becomes per-offset weights ``(N, H, K)`` (:meth:`PlannedLM.plan`,
:func:`planlm.models.selection.plan_weights`) that the adapters read; ``plan_weights`` passes precomputed ones (the
evaluation computes them once per sentence). H = 1 with M = 0 is the paper's model, unchanged.

Saving and loading live in :mod:`planlm.persist` (``save_planned_lm`` / ``load_planned_lm``): ``models/`` does no I/O.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from planlm.errors import PlanlmError, raise_if_problems
from planlm.models.adapters import OFFSET_INITS, ActionAdapters, OffsetInit, ProjectionInit, projection_problem
from planlm.models.arch import cache_keyword
from planlm.models.selection import (
    SelectionConfig, action_weights, draw_predicted_mask, needs_planner, plan_weights,
)


@dataclass
class PlannedLMConfig(SelectionConfig):
    """Adapters and selection of a planned LM. Defaults are the paper's (soft selection, frozen LM)."""

    num_actions: int = 1024
    """K, the number of writing actions (paper: 1024)."""
    action_dim: int = 768
    """Width of the action embeddings E_A^l (the sentence encoder's, as they start from the k-means centroids)."""
    layers: list[int] | None = None
    """Conditioned layers; None = every layer but the first two (paper)."""
    gate: bool = False
    """Multiply each adapter's output by a zero-initialised scalar, so training starts from the exact base LM
    (a departure from the paper, which has no gate)."""
    projection_init: ProjectionInit = "xavier"
    """How every adapter's W_A starts: "xavier" (xavier-normal: planlm's choice, the paper gives none) or "zeros"
    (a departure: the planned LM starts as the base LM without a gate; needs ``gate`` false)."""
    p_predicted: float = 1.0
    """When both planner logits and oracle actions are given: probability that a sentence uses the planner's action
    (1 = "PA", 0 = "OA"; the training loop may schedule it)."""
    train_lm: bool = False
    """Fine-tune the base LM's weights too (paper: frozen)."""
    base_lm: str = ""
    """Hub name or local path of the base LM, recorded by ``planlm.persist.save_planned_lm`` so that loading can rebuild it."""
    seed: int = 0
    """Seed of the generator that draws the oracle / predicted mask when the caller gives none."""
    horizon: int = 1
    """H, the sentences of a plan each token is conditioned on: its own and the H - 1 after it (1 = the paper's;
    the planner's horizon)."""
    offset_init: OffsetInit = "zeros"
    """How the action embeddings of offsets 2..H start: "zeros" (the model starts as the H = 1 model) or
    "centroids" (like offset 1's)."""

    @property
    def plans(self) -> bool:
        """Whether the adapters read a plan (H > 1 or sampled plans) rather than one selection of the logits."""
        return needs_planner(self.selection) and (self.horizon > 1 or self.plan_samples > 0)

    def problems(self) -> list[str]:
        """Everything wrong with this config, as one-line messages (empty when it is usable)."""
        out = self.selection_problems()
        if self.num_actions < 1:
            out.append(f"num_actions must be positive (got {self.num_actions})")
        if self.action_dim < 1:
            out.append(f"action_dim must be positive (got {self.action_dim})")
        if not 0 <= self.fixed_action < max(self.num_actions, 1):
            out.append(f"fixed_action {self.fixed_action} is not an action id in [0, {self.num_actions})")
        if not 0.0 <= self.p_predicted <= 1.0:
            out.append(f"p_predicted must be in [0, 1] (got {self.p_predicted})")
        if self.horizon < 1:
            out.append(f"horizon must be at least 1 (got {self.horizon})")
        if self.offset_init not in OFFSET_INITS:
            out.append(f"offset_init must be one of {', '.join(OFFSET_INITS)} (got {self.offset_init!r})")
        if problem := projection_problem(self.projection_init, self.gate):
            out.append(problem)
        return out


@dataclass
class PlannedLMOutput:
    """What :meth:`PlannedLM.forward` returns."""

    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None  # next-token cross-entropy when labels are given
    planner_logits: torch.Tensor | None = None  # (N, K), when the planner ran or logits were given
    action_weights: torch.Tensor | None = None  # (N, K), (1, K) or a plan's (N, H, K): what the adapters read
    past_key_values: Any = None


class PlannedLM(nn.Module):
    """A causal LM conditioned on writing actions through :class:`ActionAdapters`, with an optional planner."""

    def __init__(
        self,
        lm: nn.Module,
        config: PlannedLMConfig,
        centroids: torch.Tensor | None = None,
        planner: nn.Module | None = None,
    ):
        """Attach adapters to ``lm``.

        Args:
            lm: a Hugging Face causal LM (``AutoModelForCausalLM``) of a supported architecture.
            config: adapters and selection.
            centroids: ``(K, action_dim)`` k-means centroids initialising every layer's action embeddings.
            planner: any module called as ``planner(**planner_inputs) -> (N, K)`` logits
                (normally :class:`planlm.models.planner.Planner`).
        """
        super().__init__()
        raise_if_problems(config.problems(), "planned LM config")
        self.config = config
        self.lm = lm
        self._cache_keyword = cache_keyword(lm)
        self.adapters = ActionAdapters.for_lm(
            lm, config.num_actions, config.action_dim, layers=config.layers, gate=config.gate, centroids=centroids,
            horizon=config.horizon, offset_init=config.offset_init, projection_init=config.projection_init,
        )
        self.planner = planner
        self.set_train_lm(config.train_lm)
        self._generator = torch.Generator().manual_seed(config.seed)
        if config.plans and planner is not None and getattr(planner.config, "horizon", 1) < config.horizon:
            raise PlanlmError(f"the adapters read plans of {config.horizon} sentences, the planner plans "
                              f"{planner.config.horizon}; train the planner with --planner.horizon {config.horizon}")

    def plan(
        self, planner_inputs: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The planner's plan for N table sentences: ``(offset-1 logits (N, K), weights (N, H, K))`` by the
        config's sampling (``plan_samples``, ``plan_temperature``, ``plan_average``; noise from ``generator`` or
        the global RNG)."""
        if self.planner is None:
            raise PlanlmError("planning needs a planner; attach one (planlm train-planner)")
        logits, weights = plan_weights(self.planner, planner_inputs, self.config, generator)
        return logits, weights[:, : self.config.horizon]

    @property
    def uses_planner(self) -> bool:
        """Whether the selection reads planner logits or oracle actions per sentence (all but fixed and uniform,
        which add one constant vector per layer)."""
        return needs_planner(self.config.selection)

    def select(
        self,
        planner_inputs: dict[str, torch.Tensor] | None = None,
        planner_logits: torch.Tensor | None = None,
        oracle_actions: torch.Tensor | None = None,
        predicted_mask: torch.Tensor | None = None,
        planner_trains: bool | None = None,
        generator: torch.Generator | None = None,
        device=None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The config's selection applied to one batch's sentence table: ``(planner logits (N, K) or None, weights)``,
        weights ``(N, K)``, a plan's ``(N, H, K)``, or ``(1, K)`` for fixed / uniform (what the adapters read).

        Args:
            planner_inputs: the planner's keyword inputs for the N table sentences; the planner runs on them once
                (or plans H sentences, when the config plans) unless ``planner_logits`` are given.
            planner_logits: ``(N, K)`` precomputed logits.
            oracle_actions: ``(N,)`` oracle actions: alone, every sentence takes its own ("OA"); with logits, the
                sentences where ``predicted_mask`` is False.
            predicted_mask: ``(N,)`` bool, True where a sentence takes the planner's action; drawn with probability
                ``config.p_predicted`` from ``generator`` when logits and oracle actions are given without one.
            planner_trains: whether the planner's call records autograd (a training loop decides it: the planner's
                unfreeze schedule); None leaves autograd as the caller has it.
            generator: noise of sampled plans and of a drawn mask (None: the global RNG).
            device: device of the constant weights of fixed / uniform.
        """
        cfg = self.config
        if not self.uses_planner:
            return None, action_weights(cfg.selection, cfg.num_actions, fixed_action=cfg.fixed_action, device=device)
        if planner_inputs is not None and planner_logits is None:
            if cfg.plans:
                with _autograd(planner_trains):
                    return self.plan(planner_inputs, generator)  # (N, K), (N, H, K)
            if self.planner is not None:
                with _autograd(planner_trains):
                    planner_logits = self.planner(**planner_inputs)  # (N, K), once for the whole batch
            elif oracle_actions is None:
                raise PlanlmError(
                    "planner_inputs were given but this planned LM has no planner; attach one or pass oracle_actions"
                )
            # no planner but oracle actions: the oracle-action ("OA") model simply ignores the planner inputs
        if planner_logits is not None and oracle_actions is not None and predicted_mask is None:
            predicted_mask = draw_predicted_mask(planner_logits.shape[0], cfg.p_predicted, generator,
                                                 planner_logits.device)
        weights = action_weights(
            cfg.selection,
            cfg.num_actions,
            planner_logits=planner_logits,
            oracle_actions=oracle_actions,
            predicted_mask=predicted_mask,
            temperature=cfg.temperature,
        )  # (N, K)
        return planner_logits, weights

    def set_train_lm(self, train_lm: bool) -> None:
        """Freeze (paper) or unfreeze the base LM's weights."""
        self.config.train_lm = bool(train_lm)
        self.lm.requires_grad_(self.config.train_lm)

    def adapter_parameters(self) -> int:
        """Number of adapter parameters (GPT-2 small, K=1024, 10 layers: 13,770,240 in the paper)."""
        return sum(p.numel() for p in self.adapters.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_slot: torch.Tensor | None = None,
        oracle_actions: torch.Tensor | None = None,
        planner_logits: torch.Tensor | None = None,
        planner_inputs: dict[str, torch.Tensor] | None = None,
        predicted_mask: torch.Tensor | None = None,
        plan_weights: torch.Tensor | None = None,
        action_weights: torch.Tensor | None = None,
        **lm_kwargs,
    ) -> PlannedLMOutput:
        """Run the conditioned LM.

        Args:
            input_ids: ``(B, T)`` token ids.
            attention_mask: ``(B, T)``, 1 for real tokens.
            labels: ``(B, T)`` (-100 = not scored), Hugging Face convention (the LM shifts them).
            token_slot: ``(B, T)`` row of the sentence table whose action each token carries (not needed by fixed /
                uniform).
            oracle_actions: ``(N,)`` oracle action of each table sentence.
            planner_logits: ``(N, K)`` precomputed planner logits (otherwise the planner runs on ``planner_inputs``).
            planner_inputs: the planner's keyword inputs for the table's N sentences.
            predicted_mask: ``(N,)`` bool, True where a sentence uses the planner's action instead of the oracle one;
                drawn with probability ``config.p_predicted`` when both are available and this is None.
            plan_weights: ``(N, H, K)`` precomputed plan weights (:meth:`plan`); the adapters read them as they are.
            action_weights: precomputed weights of :meth:`select`, any of its shapes; read as they are.
            **lm_kwargs: passed to the LM (its KV cache under ``planlm.models.arch.cache_keyword(lm)``,
                ``use_cache``, ``position_ids`` ...).

        Without precomputed weights, :meth:`select` makes them (its noise: the model's generator, seeded by
        ``config.seed``).
        """
        if self.training and _is_checkpointing(self.lm):
            # checkpointed layers are recomputed during backward, outside `conditioned`, i.e. without the adapters
            raise PlanlmError("gradient checkpointing of the base LM is not supported with action adapters; disable it")
        weights = action_weights if action_weights is not None else plan_weights
        if not self.uses_planner:
            weights = self.select(device=input_ids.device)[1]  # (1, K)
            token_slot = None  # one vector per layer for every token: no planner, no per-sentence work
        elif token_slot is None:
            raise PlanlmError(f"selection {self.config.selection!r} needs token_slot (which sentence each token carries)")
        elif weights is None:
            planner_logits, weights = self.select(planner_inputs, planner_logits, oracle_actions, predicted_mask,
                                                  generator=self._generator)
        with self.adapters.conditioned(weights, token_slot):
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **lm_kwargs)
        return PlannedLMOutput(
            logits=out.logits,
            loss=out.loss,
            planner_logits=planner_logits,
            action_weights=weights,
            past_key_values=out.get(self._cache_keyword),  # the LM's output field is named like its argument
        )

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)


def _autograd(enabled: bool | None):
    """``torch.set_grad_enabled(enabled)``, or nothing for None."""
    return contextlib.nullcontext() if enabled is None else torch.set_grad_enabled(enabled)


def _is_checkpointing(lm: nn.Module) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing
    if hasattr(type(lm), "is_activation_checkpointing"):
        return bool(lm.is_activation_checkpointing)
    return bool(getattr(lm, "is_gradient_checkpointing", False))
