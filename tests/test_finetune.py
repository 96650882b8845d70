"""The one training loop: every recipe trains what it should, bad recipes fail early, the CLI runs it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from finetune_env import cli_args, make_env
from planlm.cli import main
from planlm.errors import PlanlmError
from planlm.train.loop import PlannedLMModule
from planlm.train.recipe import RecipeConfig


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_env(tmp_path_factory.mktemp("ft"))


def run(env, name, *extra):
    out = env["root"] / name
    assert main(cli_args(env, out, "--optim.max_steps", "6", *extra)) == 0
    return out


def tensors(path):
    return load_file(str(path))


def changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_cornille_pa_trains_adapters_not_planner(env):
    out = run(env, "pa", "--recipe.selection", "hard", "--recipe.actions", "predicted", "--recipe.planner_unfreeze", "never")
    before = tensors(f"{env['planner']}/planner.safetensors")
    assert not changed(before, tensors(out / "planner.safetensors"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "finetune" and manifest["counts"]["optimizer_steps"] == 6
    assert manifest["config"]["recipe"]["selection"] == "hard"
    assert (out / "logs" / "metrics.csv").exists()


def test_soft_unfreeze_immediate_trains_the_planner(env):
    out = run(env, "soft", "--recipe.selection", "soft", "--recipe.planner_unfreeze", "immediate")
    assert changed(tensors(f"{env['planner']}/planner.safetensors"), tensors(out / "planner.safetensors"))


def test_planner_lr_is_the_planners_own_rate(env):
    def planner_step(name, *extra):  # largest change of any planner weight over the 6 steps
        out = run(env, name, "--recipe.selection", "soft", "--recipe.planner_unfreeze", "immediate", *extra)
        after = tensors(out / "planner.safetensors")
        return max((after[k] - v).abs().max().item() for k, v in pretrained.items())

    pretrained = tensors(f"{env['planner']}/planner.safetensors")
    still = planner_step("soft-planner-lr0", "--optim.planner_lr", "0")
    slow = planner_step("soft-planner-lr1e-6", "--optim.planner_lr", "1e-6")
    same = planner_step("soft-planner-lr-default")  # planner_lr unset: optim.lr (1e-3) for everything
    assert still == 0.0
    assert 0.0 < slow <= 6 * 1e-6 * 1.01  # Adam moves a weight by at most about lr per step
    assert same > 100 * slow


def test_planner_lr_puts_exactly_the_planner_in_its_own_group(env):
    from transformers import AutoModelForCausalLM

    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
    from planlm.persist import load_planner
    from planlm.train.trainer import OptimConfig

    corpus = env["corpus"]
    model = PlannedLM(AutoModelForCausalLM.from_pretrained(env["lm"]),
                      PlannedLMConfig(num_actions=corpus.num_actions, action_dim=corpus.embedding_dim, selection="soft"),
                      planner=load_planner(env["planner"]))
    recipe = RecipeConfig(selection="soft", planner_unfreeze="0.5")
    groups = PlannedLMModule(model, recipe, OptimConfig(lr=1e-3, planner_lr=1e-5), total_steps=10)\
        .configure_optimizers().param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-5]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.planner.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.adapters.parameters()}  # LM frozen
    one = PlannedLMModule(model, recipe, OptimConfig(lr=1e-3), total_steps=10).configure_optimizers().param_groups
    assert [g["lr"] for g in one] == [1e-3, 1e-3]  # unset: one rate for everything, as in the paper


def test_fixed_needs_no_planner_and_saves_none(env):
    args = cli_args(env, env["root"] / "fixed", "--optim.max_steps", "3", "--recipe.selection", "fixed")
    i = args.index("--planner")
    del args[i : i + 2]
    assert main(args) == 0
    assert not (env["root"] / "fixed" / "planner.safetensors").exists()


def test_unfreeze_schedules():
    r = RecipeConfig
    assert r(planner_unfreeze="never").unfreeze_step(100) is None
    assert r(planner_unfreeze="immediate").unfreeze_step(100) == 0
    assert r(planner_unfreeze="0.5").unfreeze_step(100) == 50
    assert r(planner_unfreeze="halfway").unfreeze_step(101) == 50
    assert r(planner_unfreeze="step:7").unfreeze_step(100) == 7


class _Refuse(torch.nn.Module):
    config = None

    def forward(self, **kw):
        raise AssertionError("the planner must not run in oracle-action training")


def test_oracle_training_never_calls_the_planner(env):
    from transformers import AutoModelForCausalLM

    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
    from planlm.train.trainer import OptimConfig

    corpus = env["corpus"]
    lm = AutoModelForCausalLM.from_pretrained(env["lm"])
    model = PlannedLM(lm, PlannedLMConfig(num_actions=corpus.num_actions, action_dim=corpus.embedding_dim,
                                          selection="hard"), planner=_Refuse())
    module = PlannedLMModule(model, RecipeConfig(selection="hard", actions="oracle", planner_unfreeze="never"),
                             OptimConfig(), total_steps=10)
    batch = {
        "input_ids": torch.randint(0, 50, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long),
        "labels": torch.randint(0, 50, (2, 8)), "token_slot": torch.zeros(2, 8, dtype=torch.long),
        "oracle_actions": torch.tensor([3]), "planner_inputs": {},
    }
    losses = module.step_losses(batch, train=True)
    assert torch.isfinite(losses["loss"])
    with pytest.raises(AssertionError, match="must not run"):
        module.step_losses(batch, train=False)  # evaluation always uses the planner's actions


def test_mixing_schedules(env):
    class M(PlannedLMModule):
        def __init__(self, recipe):  # only the schedule logic, no model needed
            torch.nn.Module.__init__(self)
            self.recipe, self.total_steps, self.seed = recipe, 11, 0

    assert M(RecipeConfig(actions="predicted")).p_predicted(3) == 1.0
    assert M(RecipeConfig(actions="oracle")).p_predicted(3) == 0.0
    assert M(RecipeConfig(actions="mix", p_predicted=0.25)).p_predicted(3) == 0.25
    sched = M(RecipeConfig(actions="schedule"))
    assert [sched.p_predicted(s) for s in (0, 5, 10)] == [0.0, 0.5, 1.0]
    m = M(RecipeConfig(actions="mix", p_predicted=0.3))
    ids = torch.arange(2000)
    masks = torch.stack([m.predicted_mask(ids, s) for s in range(3)])
    assert abs(masks.float().mean().item() - 0.3) < 0.03
    assert not torch.equal(masks[0], masks[1])  # a new draw every step
    assert torch.equal(m.predicted_mask(ids[:50], 1), m.predicted_mask(ids[:50], 1))  # same step, same mask
    # keyed by global sentence id: a sentence draws the same wherever it sits in the batch (DDP slices)
    assert torch.equal(m.predicted_mask(ids[10:20].flip(0), 2), masks[2, 10:20].flip(0))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--recipe.selection", "soft", "--recipe.actions", "oracle"], "oracle training actions are one-hot"),
        (["--recipe.planner_unfreeze", "sometimes"], "planner_unfreeze must be"),
        (["--recipe.nap_weight", "1", "--recipe.planner_unfreeze", "never"], "nap_weight > 0 trains the planner"),
        (["--optim.batch_size", "6", "--optim.accumulate", "4"], "not divisible"),
        (["--optim.planner_lr", "-1"], "planner_lr must be non-negative"),
    ],
)
def test_bad_recipes_fail_before_any_work(env, capsys, extra, message):
    out = env["root"] / "bad"
    assert main(cli_args(env, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_soft_without_planner_is_a_clear_error(env):
    from planlm.stages.finetune import finetune

    with pytest.raises(PlanlmError, match="needs a planner"):
        finetune(prepared=env["prepared"], lm=env["lm"], out=env["root"] / "x", recipe=RecipeConfig(selection="soft"))


def test_finetune_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--recipe.selection" in text and "--recipe.planner_unfreeze" in text and "--resume" in text


def test_tensorboard_logger_option(env):
    out = run(env, "tb", "--recipe.selection", "uniform", "--recipe.planner_unfreeze", "never", "--trainer.logger", "tensorboard")
    assert list((out / "logs").glob("events.out.tfevents.*")), "TensorBoard event file expected in OUT/logs"
