"""The paper's variants in one registry: name, recipe, and the paper's reference numbers (DESIGN.md section 1).

Every place that names a variant reads it here: `planlm run` trains them by name, `planlm evaluate` names a run's
recipe (:func:`variant_name`), `planlm report` and the run's results table show the paper's perplexity next to the
measured one, and ``bench/overhead.py`` times the variants of the paper's overhead table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from planlm.models.selection import needs_planner
from planlm.train.recipe import RecipeConfig, unfreeze_point


@dataclass(frozen=True)
class Variant:
    """One row of the paper's results: a fine-tuning recipe and what the paper measured for it."""

    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    """The `planlm finetune --recipe.*` fields of this variant."""
    paper_ppl: float | None = None
    """The paper's Table 1 perplexity with GPT-2 small as the base LM (Wikipedia)."""
    paper_ppl_olmo: float | None = None
    """The paper's Table 1 perplexity with OLMo-1B as the base LM (Wikipedia). None for every row so far: planlm has
    not had a copy of that column to read the numbers from, and no number goes in that is not the paper's."""
    overhead_name: str | None = None
    """The variant's name in the paper's training-overhead comparison (timed by bench/overhead.py)."""
    paper_overhead: float | None = None
    """The paper's training-step time relative to Fixed (its code re-encoded every context sentence per batch)."""
    overhead_goal: float | None = None
    """planlm's ceiling for that ratio (bench/overhead.py prints it next to the measurement)."""
    planner_pretraining: Literal["nap", "ntp", "bigram"] = "nap"
    """How the planner that fine-tuning starts from was pretrained: nap (next-action prediction, the paper's), ntp
    (the paper's "no NAP pretraining": a fresh planner and the adapters trained by next-token prediction through the
    frozen LM, `planlm train-planner --objective ntp`, which `planlm run` builds once into OUT/planner-ntp) or bigram
    (no planner learning at all: the train split's action bigram, `planlm train-planner --planner.kind bigram`,
    built once into OUT/planner-bigram)."""

    @property
    def needs_planner(self) -> bool:
        return needs_planner(self.recipe.selection)


NO_NAP = "No NAP pretraining"
BIGRAM_PA = "Bigram PA"

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
                                            25.94, overhead_name="Straight-through/Unfreeze"),
    "NAP during fine-tuning": Variant(RecipeConfig(selection="soft", planner_unfreeze="immediate", nap_weight=1.0),
                                      25.24),
    # Section 4.3: the planner without NAP pretraining (trained from scratch by next-token prediction through the
    # frozen LM and adapters first), then the paper's soft fine-tuning with each unfreeze schedule.
    **{f"{NO_NAP} / {when}": Variant(RecipeConfig(selection="soft", planner_unfreeze=when), ppl,
                                     planner_pretraining="ntp")
       for when, ppl in (("never", 26.15), ("immediate", 25.80), ("halfway", 25.82))},
    # Figure 4: hard selection trained on planner-predicted actions with probability p (p = 0 is Cornille OA, p = 1
    # Cornille PA), and scheduled sampling (p rising linearly from 0 to 1 over training).
    **{f"Hard / mix p={p}": Variant(RecipeConfig(selection="hard", actions="mix", p_predicted=p,
                                                 planner_unfreeze="never")) for p in (0.25, 0.5, 0.75)},
    "Hard / scheduled sampling": Variant(RecipeConfig(selection="hard", actions="schedule", planner_unfreeze="never")),
    # Issue 27: Cornille PA with the action bigram in place of the learned planner (the previous sentence's action
    # -> its most frequent successor): does the learned planner add anything beyond the previous action?
    BIGRAM_PA: Variant(RecipeConfig(selection="hard", actions="predicted", planner_unfreeze="never"),
                       planner_pretraining="bigram"),
}
DEFAULT_VARIANTS = ["Fixed", "Uniform", "Cornille OA", "Cornille PA", "Soft / unfreeze halfway"]
PAPER_PPL = {name: v.paper_ppl for name, v in VARIANTS.items() if v.paper_ppl is not None}
PAPER_PPL_OLMO = {name: v.paper_ppl_olmo for name, v in VARIANTS.items() if v.paper_ppl_olmo is not None}
PAPER_LMS = {"gpt2": "GPT-2", "olmo": "OLMo-1B"}
"""The base LMs of the paper's Table 1 columns, by the key :func:`paper_lm` returns."""
OLMO_MODEL_TYPES = ("olmo", "olmo2", "hf_olmo")
"""``config.model_type`` of the OLMo family (hf_olmo: the pre-transformers ``ai2-olmo`` checkpoints)."""


def paper_lm(model_types) -> str:
    """Which of the paper's Table 1 columns results on these base LMs compare with (their ``config.model_type``,
    None where unknown): ``olmo`` when one is OLMo-like, else ``gpt2``, the paper's main column."""
    return "olmo" if any(str(t).lower() in OLMO_MODEL_TYPES for t in model_types if t) else "gpt2"


def paper_ppl(name: str, lm: str = "gpt2") -> float | None:
    """The paper's Table 1 perplexity of variant ``name`` in column ``lm`` (a key of :data:`PAPER_LMS`), None
    where the paper gives none (or planlm does not have it: the OLMo-1B column)."""
    return (PAPER_PPL_OLMO if lm == "olmo" else PAPER_PPL).get(name)
MIX_SWEEP = ["Cornille OA", "Hard / mix p=0.25", "Hard / mix p=0.5", "Hard / mix p=0.75", "Cornille PA",
             "Hard / scheduled sampling"]
VARIANT_GROUPS: dict[str, list[str]] = {
    "default": DEFAULT_VARIANTS,
    "table1": [name for name in VARIANTS if (name not in MIX_SWEEP or name.startswith("Cornille"))
               and name != BIGRAM_PA],
    "no-nap": [name for name in VARIANTS if name.startswith(NO_NAP)],
    "mix-sweep": MIX_SWEEP,
    "planner-baselines": ["Cornille PA", BIGRAM_PA],
    "all": list(VARIANTS),
}
"""Names `planlm run --variants` accepts for several rows at once: the paper's Table 1, the three no-NAP rows, the
Figure 4 sweep (p in {0, 0.25, 0.5, 0.75, 1} + scheduled sampling; p = 0 and 1 are Cornille OA and PA), Cornille PA
next to Bigram PA (issue 27)."""


def expand_variants(names: list[str]) -> list[str]:
    """Variant names with every group of :data:`VARIANT_GROUPS` replaced by its members, each name once, in order
    (unknown names are kept for the caller's validation to report)."""
    out = [member for name in names for member in VARIANT_GROUPS.get(name, [name])]
    return list(dict.fromkeys(out))


def recipe_of(recipe: dict | RecipeConfig) -> RecipeConfig:
    """A recipe from its dict form (``finetune_config.json``'s ``recipe``: every field, or only some of them, the rest
    at their defaults; keys of no field are left out)."""
    if isinstance(recipe, RecipeConfig):
        return recipe
    names = {f.name for f in fields(RecipeConfig)}
    return RecipeConfig(**{k: v for k, v in (recipe or {}).items() if k in names})


def recipe_key(recipe: dict | RecipeConfig) -> dict:
    """What a recipe trains, field by field, with the fields that change nothing for it left out: two recipes with
    the same key are the same experiment. ``planner_unfreeze`` is compared by :func:`unfreeze_point` ("0.5" is
    "halfway"), and only where the planner can learn (soft / straight-through selection, or a NAP loss: argmax gives
    it no gradient); the actions, p, lambda only where there is a planner; the temperature only where a softmax
    reads it. Fixed is Fixed whatever its action id (the paper's baseline is "always the same action embedding", not
    one particular action). Plans (``plan_samples``: `planlm evaluate` names them) and
    ``train_lm`` (the `` + LM`` of :func:`variant_name`) are not part of it."""
    r = recipe_of(recipe)
    key: dict = {"selection": r.selection}
    if r.selection in ("soft", "straight-through"):
        key["temperature"] = float(r.temperature)
    if needs_planner(r.selection):
        key["actions"] = r.actions
        if r.actions == "mix":
            key["p_predicted"] = float(r.p_predicted)
        key["nap_weight"] = float(r.nap_weight)
        if r.selection != "hard" or r.nap_weight > 0:
            try:
                key["planner_unfreeze"] = unfreeze_point(r.planner_unfreeze)
            except ValueError:
                key["planner_unfreeze"] = str(r.planner_unfreeze)
    return key


def registered_variant(recipe: dict | RecipeConfig, planner_pretraining: str | None = "nap") -> str | None:
    """The name of the :data:`VARIANTS` row that trains ``recipe`` from a planner pretrained by
    ``planner_pretraining`` (nap / ntp; None = cannot be told, read as the paper's nap), or None when no row does."""
    key, pretraining = recipe_key(recipe), planner_pretraining or "nap"
    for name, variant in VARIANTS.items():
        same_planner = not variant.needs_planner or variant.planner_pretraining == pretraining
        if same_planner and recipe_key(variant.recipe) == key:
            return name
    return None


def variant_name(config: dict) -> str:
    """The registry's name of a finetune run (:data:`VARIANTS`), from ``finetune_config.json`` (its ``recipe``, and
    its ``planner`` folder for how that planner was pretrained: :func:`planner_objective`).

    A recipe no row trains is named as such, with what it sets: ``Unregistered recipe (selection=hard,
    actions=mix, p_predicted=0.3)``, never as another row (whose paper number would then stand next to it). A run
    that fine-tuned the LM too (``train_lm``; the paper's LM is frozen) is its recipe's name + `` + LM``."""
    recipe = recipe_of(config.get("recipe"))
    objective = planner_objective(config.get("planner")) if needs_planner(recipe.selection) else None
    name = registered_variant(recipe, objective)
    if name is None:
        defaults = RecipeConfig()
        shown = [f"{k}={getattr(recipe, k)}" for k in recipe_key(recipe)
                 if k in ("selection", "actions", "p_predicted", "planner_unfreeze")
                 or getattr(recipe, k) != getattr(defaults, k)]
        shown += [f"planner_pretraining={objective}"] if objective not in (None, "nap") else []
        name = f"Unregistered recipe ({', '.join(shown)})"
    return name + (" + LM" if recipe.train_lm else "")


def planner_objective(planner_dir: str | None) -> str | None:
    """How the planner a run started from was pretrained ("nap" / "ntp" / "bigram", from its train-planner
    manifest), or None when it cannot be told (no planner, a folder that moved, a planned-LM folder's planner)."""
    from planlm.artifacts import read_manifest
    from planlm.errors import PlanlmError

    if not planner_dir:
        return None
    try:
        config = read_manifest(planner_dir, "train-planner").get("config") or {}
    except (PlanlmError, OSError, ValueError):
        return None
    if (config.get("planner") or {}).get("kind") == "bigram":
        return "bigram"
    return config.get("objective")


def training_p_predicted(config: dict) -> float | None:
    """Probability of planner-predicted actions during training, for hard-selection runs (the mixing plot)."""
    r = config.get("recipe") or {}
    if r.get("selection") != "hard":
        return None
    return {"predicted": 1.0, "oracle": 0.0, "mix": r.get("p_predicted")}.get(r.get("actions"))


def training_actions(config: dict) -> str | None:
    """Where a hard-selection run's training actions came from (predicted | oracle | mix | schedule; Figure 4 draws
    ``schedule``, scheduled sampling, apart from the constant p), None for other selections."""
    r = config.get("recipe") or {}
    return r.get("actions", "predicted") if r.get("selection") == "hard" else None
