"""Every YAML preset (planlm/presets/<stage>/<name>.yaml) still fits its stage: each key is a field of the preset's
dataclass, nested sections are the very configs the stage functions take, and the names a preset refers to exist
(as litgpt's config-hub test checks its YAML files against the functions' signatures)."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest
import yaml

from planlm.errors import PlanlmError
from planlm.presets import PRESETS_DIR, build, load_preset, preset_names
from planlm.train.lm_pretraining import LMPreset
from planlm.stages.pretrain_lm import pretrain_lm


def preset_classes():
    from planlm.stages.prepare import ActionsPreset, prepare
    from planlm.stages.run import RunPreset, run

    return {"prepare": (ActionsPreset, prepare), "pretrain-lm": (LMPreset, pretrain_lm), "run": (RunPreset, run)}


def test_every_preset_folder_belongs_to_a_stage_with_a_preset_argument():
    stages = {p.name for p in PRESETS_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert stages == set(preset_classes())
    for stage, (_, fn) in preset_classes().items():
        assert "preset" in inspect.signature(fn).parameters, stage
        assert inspect.signature(fn).parameters["preset"].default in preset_names(stage)
        # --preset is a Literal of exactly the YAML files, so that --help lists them and a bad name is refused
        assert sorted(typing.get_args(typing.get_type_hints(fn)["preset"])) == preset_names(stage), stage


def test_every_option_naming_a_preset_lists_exactly_its_files():
    from planlm.studies.mtp_compare import mtp_compare
    from planlm.studies.myopia import LMBudget
    from planlm.stages.run import RunPreset

    lm_names = preset_names("pretrain-lm")
    for hint in (typing.get_type_hints(mtp_compare)["preset"], typing.get_type_hints(LMBudget)["preset"],
                 typing.get_type_hints(RunPreset)["lm_preset"]):
        assert sorted(typing.get_args(hint)) == lm_names
    assert sorted(typing.get_args(typing.get_type_hints(RunPreset)["prepare_preset"])) == preset_names("prepare")


@pytest.mark.parametrize("path", sorted(PRESETS_DIR.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_preset_matches_its_dataclass_and_the_stage_signatures(path):
    from planlm.stages.prepare import PRESETS as PREPARE_PRESETS
    from planlm.stages.finetune import finetune
    from planlm.stages.train_planner import train_planner

    stage = path.parent.name
    cls, _ = preset_classes()[stage]
    values = yaml.safe_load(path.read_text()) or {}
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(values) <= fields, f"{path}: {sorted(set(values) - fields)} are not fields of {cls.__name__}"
    preset = load_preset(stage, path.stem, cls)
    if stage == "pretrain-lm":
        # the preset's optim section is the very section the stage takes (and the one every trainer takes)
        assert typing.get_type_hints(cls)["optim"] is typing.get_type_hints(pretrain_lm)["optim"]
        assert typing.get_type_hints(pretrain_lm)["optim"] is typing.get_type_hints(finetune)["optim"]
        assert not preset.optim.problems()
    if stage == "run":
        hints = typing.get_type_hints(cls)
        # the nested sections are the configs the stages take, so a run preset cannot drift from them
        assert hints["finetune"] is typing.get_type_hints(finetune)["optim"]
        assert hints["planner_optim"] is typing.get_type_hints(train_planner)["optim"]
        assert hints["adapters"] is typing.get_type_hints(finetune)["adapters"]
        assert preset.lm_preset in preset_names("pretrain-lm")
        assert preset.prepare_preset in PREPARE_PRESETS
        from planlm.gguf import EMBEDDED_LMS, is_gguf
        from planlm.variants import VARIANTS

        assert preset.lm is None or not is_gguf(preset.lm) or preset.lm in EMBEDDED_LMS or preset.lm.endswith(".gguf")
        assert all(name in VARIANTS for name in preset.variants or []), preset.variants


def test_unknown_fields_and_names_are_refused():
    with pytest.raises(PlanlmError, match="unknown fields"):
        build(LMPreset, {"n_layers": 2})
    with pytest.raises(PlanlmError, match="unknown pretrain-lm preset 'huge'"):
        load_preset("pretrain-lm", "huge", LMPreset)


def test_the_lm_preset_supplies_every_optim_value_the_command_line_leaves_unset(capsys):
    from planlm.cli import main
    from planlm.train.lm_pretraining import PRESETS

    for argv in (["pretrain-lm", "--preset", "tiny", "--optim.lr", "0.5"],
                 ["myopia", "lm", "--budget.optim.lr", "0.5", "--budget.preset=tiny"]):
        with pytest.raises(SystemExit):
            main([*argv, "--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)
        optim = printed["budget"]["optim"] if "budget" in printed else printed["optim"]
        assert optim == {**dataclasses.asdict(PRESETS["tiny"].optim), "lr": 0.5}, argv


def test_precision_auto_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    """The default preset's ``precision: auto``: bf16 autocast on a CPU with native bf16 (AVX512), fp32 on an
    AVX2-only CPU, where bf16 is emulated and 17x slower (bench/precision.py); there the preset's fp32 budget cuts
    steps and windows, unless asked not to."""
    import planlm.stages.run as run_module

    preset = run_module.PRESETS["default"]
    assert preset.precision == "auto"
    budget = preset.fp32_budget
    assert budget.finetune_max_steps < preset.finetune.max_steps and budget.eval_window_step > 1
    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(run_module, "native_bf16", lambda accelerator, native=native: native)
        resolved = preset.resolved("cpu")
        assert resolved.precision == expected and resolved.perplexity(oracle=False).precision == expected
        uncut = preset.resolved("cpu", fp32_budget=False)
        assert uncut.finetune == preset.finetune and uncut.eval_window_step == preset.eval_window_step
        if native:  # bf16: only the precision is decided
            assert resolved == dataclasses.replace(preset, precision="bf16-mixed")
        else:  # fp32: the budget's cuts, and nothing else
            assert resolved.finetune == dataclasses.replace(preset.finetune, max_steps=budget.finetune_max_steps)
            assert resolved.perplexity(oracle=False).window_step == budget.eval_window_step
            assert resolved.finetune_windows().max_val_windows == budget.finetune_val_windows
            cuts = "; ".join(run_module.budget_departures(resolved))  # the results table's header says each cut
            assert f"capped at {budget.finetune_max_steps} optimizer steps" in cuts
            assert f"every {budget.eval_window_step}th test window" in cuts
            assert dataclasses.replace(resolved, finetune=preset.finetune, eval_window_step=preset.eval_window_step,
                                       finetune_val_windows=preset.finetune_val_windows) == uncut
    fixed = dataclasses.replace(preset, precision="32-true")
    assert fixed.resolved("cpu") is fixed  # an explicit precision is kept as it is
    monkeypatch.undo()
    assert isinstance(run_module.native_bf16("cpu"), bool)  # the real check runs on any CPU build


def test_the_results_table_says_the_no_nap_rows_had_twice_the_adapter_training():
    """The no-NAP stage trains the adapters with the planner (issue 27 item 2), and fine-tuning continues from them:
    the header says so wherever a no-NAP row is in the table, with the preset's own step count."""
    import planlm.stages.run as run_module

    preset = dataclasses.replace(run_module.PRESETS["default"], precision="32-true")
    assert run_module.no_nap_note(preset, ["Fixed", "Cornille PA", "Soft / unfreeze halfway"]) is None
    note = run_module.no_nap_note(preset, ["Fixed", "No NAP pretraining / immediate"])
    steps = preset.finetune.max_steps
    assert f"no-NAP stage ({steps} steps" in note and f"again in fine-tuning ({steps} steps)" in note
    epochs = dataclasses.replace(preset, finetune=dataclasses.replace(preset.finetune, max_steps=-1, epochs=2))
    assert "(2 epochs" in run_module.no_nap_note(epochs, ["No NAP pretraining / never"])


class _Captured(Exception):
    pass


def test_planlm_run_trains_the_planner_with_the_options_it_is_given_and_lists_them(tmp_path, monkeypatch):
    """`planlm run --planner.*` (or a preset's ``planner:``) reaches train-planner, with the preset's context mode,
    and each option that departs from the paper is listed above the results table; none by default."""
    import planlm.stages.prepare
    import planlm.stages.run as run_module
    import planlm.stages.train_planner
    from planlm.models.planner import PlannerConfig

    def capture(**kwargs):
        raise _Captured(kwargs["planner"])

    monkeypatch.setattr(planlm.stages.prepare, "prepare", lambda **kwargs: tmp_path / "prepared")
    monkeypatch.setattr(planlm.stages.train_planner, "train_planner", capture)
    option = PlannerConfig(bigram_prior=True, bigram_alpha=64.0, last_sentences=2)
    for given, expected in ((PlannerConfig(), PlannerConfig()), (option, option)):
        with pytest.raises(_Captured) as caught:
            run_module.run(out=tmp_path / "out", lm="tiny-lm", preset="default", variants="Fixed", planner=given)
        assert caught.value.args[0] == dataclasses.replace(expected, context="paper")
    assert run_module.planner_departures(PlannerConfig()) == ""
    assert run_module.planner_departures(PlannerConfig(context="causal", num_actions=8)) == ""  # not options
    preset = dataclasses.replace(run_module.PRESETS["default"], planner=option)
    assert "the planner with bigram_prior True, bigram_alpha 64.0, last_sentences 2 (paper: its architecture " \
           "alone)" in run_module.budget_departures(preset)
    assert not any("planner with" in cut for cut in run_module.budget_departures(run_module.PRESETS["default"]))
