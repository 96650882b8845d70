"""Myopic attention (Wu et al. 2024): no gradient from the loss at j into earlier positions' hidden states, the same
forward as the vanilla model, and weights trained from every position; then the D_p task and the `myopia` stage."""

import pytest
import torch

from helpers import ARCHS, VOCAB, random_lm
from planlm.models.myopic import MYOPIC, make_myopic

T, J = 12, 9  # sequence length; the position whose loss is differentiated


def _grads_into_hidden_states(lm, ids, j=J):
    """d(loss at position j) / d(input hidden states of every layer): a list of ``(B, T, H)``."""
    out = lm(ids, output_hidden_states=True)
    loss_j = torch.nn.functional.cross_entropy(out.logits[:, j], ids[:, j + 1])
    layer_inputs = out.hidden_states[:-1]  # the last entry is the final norm's output, per position anyway
    return torch.autograd.grad(loss_j, layer_inputs)


@pytest.mark.parametrize("arch", ARCHS)
def test_no_gradient_reaches_earlier_positions(arch):
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    lm = random_lm(arch, n_layer=2)
    vanilla = _grads_into_hidden_states(lm, ids)
    make_myopic(lm)
    myopic = _grads_into_hidden_states(lm, ids)
    for layer, (g_vanilla, g_myopic) in enumerate(zip(vanilla, myopic)):
        assert torch.all(g_myopic[:, :J] == 0), f"layer {layer}: gradient leaks into positions before {J}"
        assert g_myopic[:, J].abs().max() > 0, f"layer {layer}: no gradient at the loss's own position"
        assert torch.all(g_myopic[:, J + 1:] == 0)  # causal, as in the vanilla model
        assert g_vanilla[:, :J].abs().max() > 1e-6, f"layer {layer}: the vanilla model should pre-cache"


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_equals_vanilla_and_remove_restores_it(arch):
    ids = torch.randint(0, VOCAB, (3, T), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0  # right padding on one row
    lm = random_lm(arch, n_layer=2)
    previous = lm.config._attn_implementation
    with torch.no_grad():
        reference = lm(ids, attention_mask=mask).logits
    myopia = make_myopic(lm)
    logits = lm(ids, attention_mask=mask).logits  # autograd on: the myopic path
    assert lm.config._attn_implementation == MYOPIC
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # evaluation and generation: plain attention
        torch.testing.assert_close(lm(ids, attention_mask=mask).logits, reference, atol=1e-5, rtol=1e-5)
    myopia.remove()
    assert lm.config._attn_implementation == previous
    assert not any(hasattr(m, "_myopic_state") for m in lm.modules())
    assert _grads_into_hidden_states(lm, ids)[0][:, :J].abs().max() > 0  # vanilla again


@pytest.mark.parametrize("arch", ARCHS)
def test_the_live_pass_alone_writes_a_given_kv_cache(arch):
    """An (empty) cache object passed with gradients on holds T positions afterwards: the detached pass wrote none."""
    from transformers import DynamicCache

    from planlm.models.arch import cache_keyword

    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(4))
    lm = random_lm(arch, n_layer=2)
    with torch.no_grad():
        reference = lm(ids).logits
    make_myopic(lm)
    cache = DynamicCache()
    logits = lm(ids, use_cache=True, **{cache_keyword(lm): cache}).logits  # autograd on: the myopic path
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == T


@pytest.mark.parametrize("arch", ARCHS)
def test_weights_receive_gradient_from_every_position(arch):
    """The last layer's weights see no earlier layer, so their gradient is the vanilla one exactly: the detached
    off-diagonal keys/values still train W_K / W_V. Every parameter of the model gets some gradient."""
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(3))
    lm = random_lm(arch, n_layer=2)

    def grads():
        lm.zero_grad()
        out = lm(ids)
        torch.nn.functional.cross_entropy(out.logits[:, J], ids[:, J + 1]).backward()
        return {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}

    vanilla = grads()
    make_myopic(lm)
    myopic = grads()
    last = f".{lm.config.num_hidden_layers - 1}."
    key_value = ("c_attn", "query_key_value", "k_proj", "v_proj")
    attention = [n for n in myopic if last in n and any(k in n for k in key_value)]
    assert attention
    for n in attention:
        torch.testing.assert_close(myopic[n], vanilla[n], atol=1e-6, rtol=1e-5)
        assert myopic[n].abs().max() > 0
    first = [n for n in myopic if ".0." in n and "weight" in n]
    assert first and all(myopic[n].abs().max() > 0 for n in first)
    # ...and the first layer's differ from vanilla: the paths through later positions are gone
    assert any(not torch.allclose(myopic[n], vanilla[n]) for n in first)


def test_unsupported_architecture_is_one_clear_error():
    from transformers import BertConfig, BertModel

    from planlm.errors import PlanlmError

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(PlanlmError, match="planlm.models.arch.ARCHITECTURES"):
        make_myopic(bert)


# ---------------------------------------------------------------------------------------------- D_p and the stage


def test_dp_targets_follow_the_definition():
    from planlm.data.synthetic import dp_batch

    b = dp_batch(3, p=0.5, length=20, generator=torch.Generator().manual_seed(0))
    x, z = b.inputs[..., 0], b.inputs[..., 1].bool()
    assert torch.equal(z, b.z) and b.inputs.shape == (3, 20, 2)
    for t in range(20):
        window = sum(torch.sin(10 * x[:, t - i]) for i in range(1, 11) if t - i >= 0) if t else torch.zeros(3)
        torch.testing.assert_close(b.targets[:, t], torch.where(z[:, t], window, x[:, t]))
    assert 0 < z.float().mean() < 1
    assert dp_batch(64, p=0.0).z.sum() == 0 and dp_batch(64, p=1.0).z.all()


def test_gap_statistics_recovers_a_known_gap():
    import numpy as np

    from planlm.studies.myopia import gap_statistics

    rng = np.random.default_rng(0)
    vanilla = rng.normal(3.0, 0.5, (2, 30, 16))  # (S, W, P)
    vanilla[:, -1, 10:] = np.nan  # a short last window
    gap = 0.1 + 0.01 * np.arange(16)  # grows with position
    myopic = vanilla + gap + rng.normal(0, 0.05, vanilla.shape)
    stats = gap_statistics(vanilla, myopic, articles=np.repeat(np.arange(10), 3), n_boot=300)
    assert stats["gap_ci"][0] <= stats["gap"] <= stats["gap_ci"][1]
    assert abs(stats["gap"] - np.nanmean(myopic - vanilla)) < 0.01
    assert stats["slope_ci"][0] > 0.005 and abs(stats["slope"] - 0.01) < 0.003
    assert stats["articles"] == 10 and stats["tokens"] == 30 * 16 - 6
    np.testing.assert_allclose(stats["per_position"], gap, atol=0.03)


def test_myopia_dp_writes_table_plot_and_manifest(tmp_path):
    from planlm.artifacts import read_manifest
    from planlm.studies.myopia import DpConfig, myopia_dp

    dp = DpConfig(length=16, n_layer=1, n_head=2, n_embd=16, steps=6, batch_size=4, eval_sequences=8, eval_every=3)
    result = myopia_dp(out=str(tmp_path / "dp"), dp=dp, seeds=[0, 1])
    assert [(r["kind"], r["seed"]) for r in result["runs"]] == [("vanilla", 0), ("myopic", 0), ("vanilla", 1),
                                                                ("myopic", 1)]
    assert result["gap"] == pytest.approx(result["myopic_loss"] - result["vanilla_loss"])
    assert len(result["runs"][0]["curve"]) == 2 and len(result["runs"][0]["per_position"]) == 16
    for name in ("myopia.json", "myopia.md", "myopia.png"):
        assert (tmp_path / "dp" / name).stat().st_size > 0
    assert read_manifest(tmp_path / "dp", "myopia")["metrics"]["gap"] == pytest.approx(result["gap"])


def test_myopia_lm_on_a_prepared_corpus(tmp_path):
    from helpers import synthetic_prepared
    from planlm.studies.myopia import LMBudget, MyopiaProbeConfig, myopia_lm
    from planlm.train.lm_pretraining import lm_optim
    from planlm.train.trainer import TrainerConfig

    synthetic_prepared(tmp_path / "prepared", n_articles=20)
    result = myopia_lm(
        prepared=str(tmp_path / "prepared"), out=str(tmp_path / "lm"),
        budget=LMBudget(preset="tiny", vocab_size=300, block_size=32, optim=lm_optim("tiny", max_steps=4)),
        seeds=[0, 1],
        probes=MyopiaProbeConfig(distances=[1, 2], max_windows=8, max_iter=5), bootstrap=200,
        trainer=TrainerConfig(accelerator="cpu", progress_bar=False, logger="none"),
    )
    assert {(r["kind"], r["seed"]) for r in result["runs"]} == {(k, s) for k in ("vanilla", "myopic") for s in (0, 1)}
    assert all(r["steps"] == 4 for r in result["runs"])  # the same budget for both
    by = {(r["kind"], r["seed"]): r["eval_loss"] for r in result["runs"]}
    assert result["gap"] == pytest.approx(sum(by["myopic", s] - by["vanilla", s] for s in (0, 1)) / 2)
    assert result["gap_ci"][0] <= result["gap"] <= result["gap_ci"][1] and len(result["per_position"]) == 31
    assert {p["distance"] for p in result["probes"]["myopic"]} == {1, 2}
    out = tmp_path / "lm"
    assert (out / "myopia.png").exists() and "Myopia gap" in (out / "myopia.md").read_text()
    # the saved LMs are plain HF folders: no myopic attention left in their configs
    assert "myopic" not in (out / "lm" / "myopic-seed0" / "config.json").read_text()


def test_myopia_lm_bad_arguments_fail_before_any_work(tmp_path):
    from planlm.errors import PlanlmError
    from planlm.studies.myopia import LMBudget, myopia_lm

    with pytest.raises(PlanlmError) as e:
        myopia_lm(prepared=str(tmp_path / "missing"), out=str(tmp_path / "o"), budget=LMBudget(preset="huge"),
                  seeds=[1, 1], split="train")
    message = str(e.value)
    for part in ("planlm prepare", "huge", "distinct", "split"):
        assert part in message
    assert not (tmp_path / "o").exists()


def test_finetune_myopic_changes_training_not_the_recipe(tmp_path):
    """`finetune --myopic true` trains the same recipe with myopic gradients: same start, different weights."""
    from safetensors.torch import load_file

    from finetune_env import cli_args
    from helpers import synthetic_prepared, tiny_lm
    from planlm.artifacts import read_manifest
    from planlm.cli import main

    corpus = synthetic_prepared(tmp_path / "prep", n_articles=10)
    env = {"prepared": str(tmp_path / "prep"), "lm": tiny_lm(tmp_path / "lm", corpus.texts, dropout=0.0),
           "planner": ""}
    weights = {}
    for name, extra in (("vanilla", []), ("myopic", ["--myopic", "true"])):
        args = cli_args(env, tmp_path / name, "--optim.max_steps", "3", "--recipe.selection", "fixed",
                        "--recipe.train_lm", "true", *extra)
        i = args.index("--planner")
        del args[i: i + 2]
        assert main(args) == 0
        files = sorted((tmp_path / name).rglob("*.safetensors"))
        weights[name] = {k: v for f in files for k, v in load_file(f).items()}
    assert read_manifest(tmp_path / "myopic", "finetune")["config"]["myopic"] is True
    assert weights["vanilla"].keys() == weights["myopic"].keys()
    assert any(not torch.allclose(weights["vanilla"][k], weights["myopic"][k]) for k in weights["vanilla"])


def test_myopia_planned_gaps_and_their_difference(tmp_path):
    """Four fine-tunes per seed from one LM; the reported gaps are the losses' differences, their difference the
    difference of the gaps, each inside its interval; the runs are reused on a second call."""
    import math

    from helpers import synthetic_prepared, tiny_lm, tiny_planner
    from planlm.studies.myopia import myopia_planned
    from planlm.train.trainer import OptimConfig, TrainerConfig

    corpus = synthetic_prepared(tmp_path / "prep", n_articles=20)
    lm = tiny_lm(tmp_path / "lm", corpus.texts, dropout=0.0)
    planner = tiny_planner(tmp_path / "planner", corpus)
    kwargs = dict(prepared=str(tmp_path / "prep"), lm=lm, planner=planner, out=str(tmp_path / "gap"),
                  seeds=[0, 1], optim=OptimConfig(lr=1e-3, batch_size=4, max_steps=3), context_length=32,
                  eval_stride=16, bootstrap=200, trainer=TrainerConfig(accelerator="cpu", progress_bar=False,
                                                                       logger="none"))
    result = myopia_planned(**kwargs)
    loss = {(x["seed"], x["model"]): x["loss"] for x in result["losses"]}
    assert len(loss) == 2 * 6  # four models, and oracle actions for the two planned ones
    gap = {m: sum(loss[s, f"{m}-myopic"] - loss[s, f"{m}-vanilla"] for s in (0, 1)) / 2 for m in ("fixed", "planned")}
    assert result["gap_fixed"]["estimate"] == pytest.approx(gap["fixed"], abs=1e-9)
    assert result["gap_planned"]["estimate"] == pytest.approx(gap["planned"], abs=1e-9)
    assert result["gap_difference"]["estimate"] == pytest.approx(gap["planned"] - gap["fixed"], abs=1e-9)
    assert not math.isclose(gap["fixed"], 0.0, abs_tol=1e-9)  # myopia changed the training
    for key in ("gap_fixed", "gap_planned", "gap_planned_oracle", "gap_difference", "gap_difference_oracle"):
        r = result[key]
        assert r["low"] <= r["estimate"] <= r["high"] and r["resampled"] == "seeds and articles"
    out = tmp_path / "gap"
    assert (out / "myopia.png").stat().st_size > 0 and "Cornille PA - Fixed" in (out / "myopia.md").read_text()
    runs = sorted(p.name for p in (tmp_path / "gap-runs").iterdir())
    assert runs == sorted(f"{v}-{k}-seed{s}" for v in ("fixed", "cornille-pa") for k in ("vanilla", "myopic")
                          for s in (0, 1))
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "gap-runs").rglob("metrics.json")}
    again = myopia_planned(**{**kwargs, "out": str(tmp_path / "gap2")})  # another summary, the same runs reused
    assert again["gap_difference"] == result["gap_difference"]
    assert stamp == {p: p.stat().st_mtime_ns for p in (tmp_path / "gap-runs").rglob("metrics.json")}


def test_myopia_planned_bad_arguments_fail_before_any_work(tmp_path):
    from planlm.errors import PlanlmError
    from planlm.studies.myopia import myopia_planned

    with pytest.raises(PlanlmError) as e:
        myopia_planned(prepared=str(tmp_path / "p"), lm=str(tmp_path / "lm"), planner=str(tmp_path / "pl"),
                       out=str(tmp_path / "o"), variant="Fixed", seeds=[0, 0])
    message = str(e.value)
    for part in ("planlm prepare", "planlm train-planner", "--lm", "reads no plan", "distinct"):
        assert part in message
    assert not (tmp_path / "o").exists() and not (tmp_path / "o-runs").exists()
