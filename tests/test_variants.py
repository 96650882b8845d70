"""A run's name comes from the registry: every row's recipe is named by its own name, a recipe no row trains is named
as unregistered, and equal recipes written differently get one name."""

from __future__ import annotations

import dataclasses
import json

import pytest

from planlm.artifacts import to_jsonable
from planlm.stages.finetune import FinetuneConfig
from planlm.train.recipe import RecipeConfig
from planlm.variants import (
    PAPER_PPL,
    PAPER_PPL_OLMO,
    VARIANTS,
    paper_lm,
    paper_ppl,
    recipe_key,
    registered_variant,
    variant_name,
)


@pytest.fixture
def planners(tmp_path):
    """Planner folders as `planlm train-planner` leaves them, as far as naming reads them: NAP, NTP and the action
    bigram (``--planner.kind bigram``)."""
    out = {}
    for objective, config in (("nap", {"objective": "nap"}), ("ntp", {"objective": "ntp"}),
                              ("bigram", {"objective": "nap", "planner": {"kind": "bigram"}})):
        folder = tmp_path / f"planner-{objective}"
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"stage": "train-planner", "config": config}))
        out[objective] = folder
    return out


def saved(recipe: RecipeConfig, planner=None) -> dict:
    """``finetune_config.json`` of a run of ``recipe``, as finetune writes it and evaluate reads it back."""
    return json.loads(json.dumps(to_jsonable(dataclasses.asdict(FinetuneConfig(recipe=recipe, planner=planner)))))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_registry_row_is_named_by_its_own_name(name, planners):
    variant = VARIANTS[name]
    planner = planners[variant.planner_pretraining] if variant.needs_planner else None
    assert variant_name(saved(variant.recipe, planner)) == name
    assert variant_name({"recipe": dataclasses.asdict(variant.recipe), "planner": planner}) == name


def test_rows_are_distinct_experiments():
    keys = [(json.dumps(recipe_key(v.recipe), sort_keys=True), v.planner_pretraining if v.needs_planner else None)
            for v in VARIANTS.values()]
    assert len(set(keys)) == len(keys)


def test_the_old_mislabels_are_the_registry_rows(planners):
    def name(planner="nap", **recipe):
        return variant_name(saved(RecipeConfig(**recipe), planners[planner]))

    assert name(selection="soft", planner_unfreeze="never") == "Soft / never"  # was "Soft / unfreeze never"
    assert name(selection="straight-through", planner_unfreeze="0.5") == "Straight-through / halfway"
    assert name(selection="soft", planner_unfreeze="immediate", nap_weight=1.0) == "NAP during fine-tuning"
    assert name("ntp", selection="soft", planner_unfreeze="never") == "No NAP pretraining / never"
    assert name("bigram", selection="hard", planner_unfreeze="never") == "Bigram PA"
    assert name("nap", selection="hard", planner_unfreeze="never") == "Cornille PA"
    for got in ("Soft / never", "Straight-through / halfway", "NAP during fine-tuning"):
        assert got in PAPER_PPL  # so the report shows the paper's number next to them


def test_a_recipe_no_row_trains_is_named_unregistered(planners):
    def name(planner="nap", **recipe):
        return variant_name(saved(RecipeConfig(**recipe), planners[planner]))

    # straight-through / never used to be named as a straight-through row; the registry has none
    assert name(selection="straight-through", planner_unfreeze="never") == (
        "Unregistered recipe (selection=straight-through, actions=predicted, planner_unfreeze=never)")
    assert name(selection="hard", actions="mix", p_predicted=0.3, planner_unfreeze="never") == (
        "Unregistered recipe (selection=hard, actions=mix, p_predicted=0.3)")
    assert name(selection="soft", planner_unfreeze="step:10") == (
        "Unregistered recipe (selection=soft, actions=predicted, planner_unfreeze=step:10)")
    assert name(selection="soft", planner_unfreeze="0.5", nap_weight=0.5) == (
        "Unregistered recipe (selection=soft, actions=predicted, nap_weight=0.5, planner_unfreeze=0.5)")
    assert name(selection="soft", planner_unfreeze="0.5", temperature=2.0).startswith(
        "Unregistered recipe (selection=soft, temperature=2.0,")
    # the no-NAP rows are soft only
    assert name("ntp", selection="straight-through", planner_unfreeze="0.5").endswith("planner_pretraining=ntp)")
    for unknown in (RecipeConfig(selection="straight-through", planner_unfreeze="never"),):
        assert registered_variant(unknown) is None
        assert variant_name(saved(unknown)) not in VARIANTS
    # Fixed is the paper's baseline whatever its one action is
    assert registered_variant(RecipeConfig(selection="fixed", fixed_action=3)) == "Fixed"


def test_equal_recipes_written_differently_get_one_name(planners):
    nap = planners["nap"]
    for unfreeze in ("0.5", "halfway", " Halfway ", "0.50"):
        assert variant_name({"recipe": {"selection": "soft", "planner_unfreeze": unfreeze}, "planner": nap}) == \
            "Soft / unfreeze halfway"
    assert variant_name({"recipe": {"selection": "soft", "planner_unfreeze": "0"}, "planner": nap}) == \
        "Soft / immediate"
    # fields at their defaults, given or not; fields that change nothing for a recipe
    assert variant_name({"recipe": {"selection": "fixed"}}) == "Fixed"  # planner_unfreeze 0.5: no planner to unfreeze
    assert variant_name({"recipe": {"selection": "uniform", "temperature": 3.0}}) == "Uniform"
    assert variant_name({"recipe": {"selection": "hard", "actions": "oracle"}}) == "Cornille OA"  # argmax: no gradient
    assert variant_name({"recipe": {"selection": "hard", "actions": "predicted", "p_predicted": 0.9,
                                    "planner_unfreeze": "never", "nap_weight": 0}}) == "Cornille PA"
    assert variant_name({"recipe": {"selection": "hard", "actions": "mix", "p_predicted": 0.25,
                                    "planner_unfreeze": "never"}}) == "Hard / mix p=0.25"
    # sampled plans are named by evaluate (" + plans H= M="), the LM fine-tuned too by " + LM"
    assert variant_name({"recipe": {"selection": "soft", "plan_samples": 4}, "planner": nap}) == \
        "Soft / unfreeze halfway"
    assert variant_name({"recipe": {"selection": "fixed", "train_lm": True}}) == "Fixed + LM"
    assert "Fixed + LM" not in PAPER_PPL


def test_the_paper_columns():
    # the paper's Table 1, GPT-2 small on Wikipedia: every number it gives, and no other
    assert PAPER_PPL == {
        "Fixed": 26.69, "Uniform": 26.69, "Cornille OA": 26.94, "Cornille PA": 25.55,
        "Soft / unfreeze halfway": 25.23, "Soft / never": 25.32, "Soft / immediate": 25.42,
        "Straight-through / halfway": 25.66, "Straight-through / immediate": 25.94, "NAP during fine-tuning": 25.24,
        "No NAP pretraining / never": 26.15, "No NAP pretraining / immediate": 25.80,
        "No NAP pretraining / halfway": 25.82,
    }
    assert PAPER_PPL_OLMO == {}  # the OLMo-1B column: not read from the paper yet, so not invented
    assert paper_lm(["gpt2"]) == paper_lm([None]) == paper_lm([]) == "gpt2"
    assert paper_lm(["llama", "OLMo2"]) == paper_lm(["olmo"]) == "olmo"
    assert paper_ppl("Cornille PA") == 25.55 and paper_ppl("Cornille PA", "olmo") is None
    assert paper_ppl("Hard / mix p=0.5") is None
