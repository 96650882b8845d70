"""The paper's variants in one registry: name, recipe, and the paper's reference numbers (DESIGN.md section 1).

Every place that names a variant reads it here: `planlm run` trains them by name, `planlm evaluate` names a run's
recipe (:func:`variant_name`), `planlm report` and the run's results table show the paper's perplexity next to the
measured one, and ``bench/overhead.py`` times the variants of the paper's overhead table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planlm.models.selection import needs_planner
from planlm.train.loop import RecipeConfig, unfreeze_point


@dataclass(frozen=True)
class Variant:
    """One row of the paper's results: a fine-tuning recipe and what the paper measured for it."""

    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    """The `planlm finetune --recipe.*` fields of this variant."""
    paper_ppl: float | None = None
    """The paper's Table 1 perplexity (GPT-2 small, Wikipedia)."""
    overhead_name: str | None = None
    """The variant's name in the paper's training-overhead comparison (timed by bench/overhead.py)."""
    paper_overhead: float | None = None
    """The paper's training-step time relative to Fixed (its code re-encoded every context sentence per batch)."""
    overhead_goal: float | None = None
    """planlm's ceiling for that ratio (bench/overhead.py prints it next to the measurement)."""

    @property
    def needs_planner(self) -> bool:
        return needs_planner(self.recipe.selection)


VARIANTS: dict[str, Variant] = {
    "Fixed": Variant(RecipeConfig(selection="fixed", planner_unfreeze="never"), 26.69, overhead_name="Fixed"),
    "Uniform": Variant(RecipeConfig(selection="uniform", planner_unfreeze="never"), 26.69,
                       overhead_name="Uniform", paper_overhead=1.9, overhead_goal=1.05),
    "Cornille OA": Variant(RecipeConfig(selection="hard", actions="oracle", planner_unfreeze="never"), 26.94),
    "Cornille PA": Variant(RecipeConfig(selection="hard", actions="predicted", planner_unfreeze="never"), 25.55,
                           overhead_name="Hard/Freeze", paper_overhead=3.9, overhead_goal=1.10),
    "Soft / unfreeze halfway": Variant(RecipeConfig(selection="soft", planner_unfreeze="0.5"), 25.23),
    "Soft / never": Variant(RecipeConfig(selection="soft", planner_unfreeze="never"), 25.32),
    "Soft / immediate": Variant(RecipeConfig(selection="soft", planner_unfreeze="immediate"), 25.42,
                                overhead_name="Soft/Unfreeze", paper_overhead=7.2, overhead_goal=1.10),
    "Straight-through / halfway": Variant(RecipeConfig(selection="straight-through", planner_unfreeze="0.5"), 25.66),
    "Straight-through / immediate": Variant(RecipeConfig(selection="straight-through", planner_unfreeze="immediate"),
                                            overhead_name="Straight-through/Unfreeze"),
    "NAP during fine-tuning": Variant(RecipeConfig(selection="soft", planner_unfreeze="immediate", nap_weight=1.0),
                                      25.24),
}
DEFAULT_VARIANTS = ["Fixed", "Uniform", "Cornille OA", "Cornille PA", "Soft / unfreeze halfway"]
PAPER_PPL = {name: v.paper_ppl for name, v in VARIANTS.items() if v.paper_ppl is not None}


def variant_name(config: dict) -> str:
    """The paper's name of a finetune recipe (Table 1 rows), from ``finetune_config.json``'s ``recipe``."""
    r = config.get("recipe") or {}
    sel, actions = r.get("selection", "soft"), r.get("actions", "predicted")
    unfreeze = str(r.get("planner_unfreeze", "0.5")).strip().lower()
    try:
        when = "halfway" if unfreeze_point(unfreeze) == ("fraction", 0.5) else unfreeze
    except ValueError:
        when = unfreeze
    if sel == "fixed":
        name = "Fixed"
    elif sel == "uniform":
        name = "Uniform"
    elif sel == "hard":
        name = {"oracle": "Cornille OA", "predicted": "Cornille PA", "schedule": "Hard / scheduled sampling"}.get(
            actions, f"Hard / mix p={r.get('p_predicted')}"
        )
    else:
        name = f"{'Soft' if sel == 'soft' else 'Straight-through'} / unfreeze {when}"
    if float(r.get("nap_weight", 0) or 0) > 0:
        name += " + NAP"
    if r.get("train_lm"):
        name += " + LM"
    return name


def training_p_predicted(config: dict) -> float | None:
    """Probability of planner-predicted actions during training, for hard-selection runs (the mixing plot)."""
    r = config.get("recipe") or {}
    if r.get("selection") != "hard":
        return None
    return {"predicted": 1.0, "oracle": 0.0, "mix": r.get("p_predicted")}.get(r.get("actions"))
