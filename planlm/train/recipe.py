"""The recipe config of fine-tuning (DESIGN.md 1.5-1.6): which paper recipe the ONE loop (planlm/train/loop.py)
trains. Plain dataclasses, no Lightning: the variant registry (planlm/variants.py) and evaluation read recipes
without importing the training loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from planlm.models.selection import SelectionConfig, needs_planner

ActionSource = Literal["predicted", "oracle", "mix", "schedule"]


ACTION_SOURCES: tuple[str, ...] = get_args(ActionSource)


def unfreeze_point(value: str) -> tuple[str, float | None]:
    """Parse ``planner_unfreeze`` (the ONE parser of it): ``("never", None)``, ``("step", N)`` or ``("fraction", f)``
    with f in [0, 1] (``immediate`` = 0, ``halfway`` = 0.5). Raises ValueError on anything else."""
    u = str(value).strip().lower()
    if u == "never":
        return "never", None
    if u == "immediate":
        return "fraction", 0.0
    if u == "halfway":
        return "fraction", 0.5
    if u.startswith("step:"):
        n = int(u[5:])
        if n < 0:
            raise ValueError(value)
        return "step", n
    f = float(u)
    if not 0.0 <= f <= 1.0:
        raise ValueError(value)
    return "fraction", f


@dataclass
class RecipeConfig(SelectionConfig):
    """Which paper recipe to train: selection, where training actions come from, planner schedule, NAP loss.

    The selection fields build the planned LM's config (``PlannedLMConfig``), the one place a model's selection lives
    from then on: the training loop reads the rest of the recipe, never its selection."""

    actions: ActionSource = "predicted"
    """Training actions: predicted (PA) | oracle (OA) | mix (planner-predicted with probability p_predicted) |
    schedule (p rises linearly from 0 to 1 over training: scheduled sampling). Evaluation always uses predicted."""
    p_predicted: float = 0.5
    """Probability of a planner-predicted action per sentence when actions=mix."""
    planner_unfreeze: str = "0.5"
    """When the planner starts training: never | immediate | halfway | step:N | a fraction f of training (0.5 =
    "halfway", the paper's best)."""
    nap_weight: float = 0.0
    """lambda of the next-action-prediction loss on the planner during fine-tuning (0 = off)."""
    train_lm: bool = False
    """Fine-tune the base LM too (paper: frozen)."""

    def unfreeze_step(self, total_steps: int) -> int | None:
        """The optimizer step from which the planner trains, or None for never."""
        kind, value = unfreeze_point(self.planner_unfreeze)
        if kind == "never":
            return None
        if kind == "step":
            return int(value)
        return int(value * total_steps)

    def problems(self) -> list[str]:
        out = self.selection_problems("recipe.")
        if self.actions not in ACTION_SOURCES:
            out.append(f"recipe.actions must be one of {', '.join(ACTION_SOURCES)} (got {self.actions!r})")
        if not 0.0 <= self.p_predicted <= 1.0:
            out.append(f"recipe.p_predicted must be in [0, 1] (got {self.p_predicted})")
        try:
            never = unfreeze_point(self.planner_unfreeze)[0] == "never"
        except ValueError:
            never = False
            out.append(
                f"recipe.planner_unfreeze must be never, immediate, halfway, step:N or a fraction in [0, 1] "
                f"(got {self.planner_unfreeze!r})"
            )
        if self.nap_weight < 0:
            out.append(f"recipe.nap_weight must be >= 0 (got {self.nap_weight})")
        if self.nap_weight > 0 and (not needs_planner(self.selection) or never):
            out.append("recipe.nap_weight > 0 trains the planner: use a planner selection and planner_unfreeze != never")
        if self.selection == "hard" and self.nap_weight == 0 and not never:
            out.append(
                f"recipe.selection=hard with planner_unfreeze={self.planner_unfreeze!r} would train nothing: argmax gives "
                "the planner no gradient; use planner_unfreeze=never, a nap_weight > 0, or soft / straight-through"
            )
        if not needs_planner(self.selection) and self.actions != "predicted":
            out.append(f"recipe.actions={self.actions!r} means nothing for selection {self.selection!r}: leave it predicted")
        if self.plan_samples > 0 and self.actions != "predicted":
            out.append("recipe.plan_samples conditions on sampled plans: use recipe.actions=predicted")
        if self.selection in ("soft", "straight-through") and self.actions == "oracle":
            out.append("oracle training actions are one-hot: use selection=hard with actions=oracle (Cornille OA)")
        return out
