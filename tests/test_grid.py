"""The paper's experiment grid: every registry row trains, the no-NAP stage trains only the planner, the Figure 4
sweep's endpoints are Cornille OA / PA, and the Appendix E split is exact."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from finetune_env import make_env
from planlm.train.start import WindowConfig
from planlm.stages.finetune import finetune
from planlm.train.loop import PlannedLMModule
from planlm.train.recipe import RecipeConfig
from planlm.train.trainer import OptimConfig, TrainerConfig
from planlm.variants import (BIGRAM_PA, MIX_SWEEP, NO_NAP, VARIANT_GROUPS, VARIANTS, expand_variants, training_actions,
                             training_p_predicted, variant_name)

QUIET = TrainerConfig(accelerator="cpu", progress_bar=False, logger="none")
WINDOWS = WindowConfig(context_length=32, stride=31)
NEW_ROWS = ["Straight-through / immediate", *VARIANT_GROUPS["no-nap"], "Hard / mix p=0.25", "Hard / mix p=0.5",
            "Hard / mix p=0.75", "Hard / scheduled sampling"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = make_env(tmp_path_factory.mktemp("grid"), lm_dropout=0.0)
    env["ntp"] = env["root"] / "planner-ntp"
    env["captured"] = []  # (adapters state, LM state, model) of every planned LM built by the spy below
    return env


@pytest.fixture
def spy(env, monkeypatch):
    """Record every planned LM a stage starts from (a copy of its state at the start, and the live object)."""
    import planlm.stages.finetune as ft
    import planlm.train.start as start

    real = start.initial_planned_lm

    def recording(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        env["captured"].append(({k: v.clone() for k, v in model.adapters.state_dict().items()},
                                {k: v.clone() for k, v in model.lm.state_dict().items()}, model))
        return model, tok

    env["captured"].clear()
    monkeypatch.setattr(ft, "initial_planned_lm", recording)
    monkeypatch.setattr(start, "initial_planned_lm", recording)
    return env["captured"]


def ntp_stage(env):
    from planlm.models.planner import PlannerConfig
    from planlm.stages.train_planner import train_planner

    return train_planner(env["prepared"], out=str(env["ntp"]), lm=env["lm"], objective="ntp",
                         planner=PlannerConfig(ff=32, context_sentences=3), seed=0,
                         optim=OptimConfig(lr=1e-2, batch_size=4, max_steps=4), trainer=QUIET)


def test_no_nap_stage_trains_planner_and_adapters_and_finetune_starts_from_both(env, spy):
    from planlm.artifacts import read_manifest
    from planlm.persist import load_planner, load_weights

    metrics = ntp_stage(env)
    assert math.isfinite(metrics["planner"]["lm_loss"])
    (adapters0, lm0, model), = spy
    # The stage trained its fresh planner AND the adapters (the paper's section 4.3: only the LM is frozen).
    assert any(not torch.equal(value, adapters0[name]) for name, value in model.adapters.state_dict().items())
    for name, value in model.lm.state_dict().items():
        assert torch.equal(value, lm0[name]), name
    manifest = read_manifest(env["ntp"], "train-planner")
    planner = load_planner(env["ntp"])
    assert manifest["counts"]["trainable_parameters"] == (sum(p.numel() for p in planner.parameters())
                                                          + model.adapter_parameters())
    assert manifest["config"]["objective"] == "ntp" and "planned_lm" not in manifest["inputs"]
    fresh = torch.from_numpy(env["corpus"].centroids)  # a fresh planner's policy head is the centroids
    assert not torch.allclose(planner.policy_head.weight, fresh)

    # `planlm finetune` from that planner starts from the adapters the stage trained, not the centroids' ones.
    out = finetune(env["prepared"], env["lm"], env["ntp"], env["root"] / "no-nap-never",
                   recipe=VARIANTS[f"{NO_NAP} / never"].recipe, optim=OptimConfig(lr=1e-3, batch_size=4, max_steps=2),
                   windows=WINDOWS, trainer=QUIET)
    adapters_ft, _, _ = spy[1]
    stage = load_weights(env["ntp"] / "adapters.safetensors")
    for name, value in stage.items():
        assert torch.equal(value, adapters_ft[name]), name
    assert read_manifest(out, "finetune")["start_adapters"] == str(env["ntp"])
    assert variant_name(json.loads((out / "finetune_config.json").read_text())) == f"{NO_NAP} / never"
    # ... and a rerun of the stage with the same config is reused, not retrained
    stamp = (env["ntp"] / "manifest.json").stat().st_mtime_ns
    ntp_stage(env)
    assert (env["ntp"] / "manifest.json").stat().st_mtime_ns == stamp


def bigram_stage(env):
    from planlm.models.planner import PlannerConfig
    from planlm.stages.train_planner import train_planner

    env["bigram"] = env["root"] / "planner-bigram"
    return train_planner(env["prepared"], out=str(env["bigram"]), lm=env["lm"],
                         planner=PlannerConfig(context_sentences=3, kind="bigram"), trainer=QUIET)


def test_bigram_pa_trains_and_evaluates_end_to_end_with_the_bigram_s_actions(env):
    """Issue 27 item 7: Bigram PA is Cornille PA with the train action bigram in the planner's place, in training
    and at evaluation (the actions evaluate predicts come from the bigram too)."""
    from planlm.eval.nap import bigram_table, previous_actions
    from planlm.eval.record import MetricsRecord
    from planlm.persist import load_planner
    from planlm.stages.evaluate import evaluate
    from planlm.eval.perplexity import PerplexityConfig

    metrics = bigram_stage(env)
    corpus = env["corpus"]
    assert metrics["planner"]["top1"] == pytest.approx(metrics["bigram"]["top1"], abs=0.02)
    assert sum(p.numel() for p in load_planner(env["bigram"]).parameters()) == 0  # nothing learned
    out = finetune(env["prepared"], env["lm"], env["bigram"], env["root"] / "bigram-pa",
                   recipe=VARIANTS[BIGRAM_PA].recipe, optim=OptimConfig(lr=1e-3, batch_size=4, max_steps=3),
                   windows=WINDOWS, trainer=QUIET)
    assert variant_name(json.loads((out / "finetune_config.json").read_text())) == BIGRAM_PA
    ev = MetricsRecord.load(evaluate(run=out, ppl=PerplexityConfig(protocols=["strided"], context_length=32,
                                                                   stride=16, max_articles=2), device="cpu")
                            / "metrics.json")
    assert ev.variant == BIGRAM_PA and math.isfinite(ev.ppl)
    # the evaluated planner's top-1 is the bigram's argmax after each test sentence's previous action
    ids = np.concatenate([np.arange(*corpus.sentence_range(int(a))) for a in corpus.article_ids("test")[:2]])
    train = np.concatenate([np.arange(*corpus.sentence_range(int(a))) for a in corpus.article_ids("train")])
    argmax = bigram_table(corpus, train).argmax(1)[previous_actions(corpus, ids)]
    assert ev.planner_top1 == pytest.approx(float((argmax == corpus.actions[ids]).mean()), abs=1e-9)


@pytest.mark.parametrize("name", NEW_ROWS)
def test_every_new_registry_row_trains_a_few_steps(env, name):
    from safetensors.torch import load_file

    variant = VARIANTS[name]
    if variant.planner_pretraining == "ntp" and not env["ntp"].exists():
        ntp_stage(env)
    planner = (env["ntp"] if variant.planner_pretraining == "ntp" else env["planner"]) if variant.needs_planner else None
    out = finetune(env["prepared"], env["lm"], planner, env["root"] / name.replace(" ", "").replace("/", "_"),
                   recipe=variant.recipe, optim=OptimConfig(lr=1e-3, batch_size=4, max_steps=3), windows=WINDOWS,
                   trainer=QUIET)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["optimizer_steps"] == 3 and math.isfinite(manifest["metrics"]["val_loss"])
    before = load_file(f"{planner}/planner.safetensors")
    after = load_file(str(out / "planner.safetensors"))
    planner_moved = any(not torch.equal(before[k], after[k]) for k in before)
    assert planner_moved == (variant.recipe.unfreeze_step(3) is not None), name  # hard rows keep their planner
    config = json.loads((out / "finetune_config.json").read_text())
    assert variant_name(config) == name  # the run's own finetune_config.json (and planner) name its row
    if name.startswith("Hard"):
        assert training_actions(config) == variant.recipe.actions


def test_groups_select_the_grid():
    assert expand_variants(["mix-sweep"]) == MIX_SWEEP
    assert [training_p_predicted({"recipe": vars(VARIANTS[n].recipe)}) for n in MIX_SWEEP] == [
        0.0, 0.25, 0.5, 0.75, 1.0, None]
    assert training_actions({"recipe": vars(VARIANTS["Hard / scheduled sampling"].recipe)}) == "schedule"
    assert expand_variants(["Fixed", "no-nap", "Fixed"]) == ["Fixed", *VARIANT_GROUPS["no-nap"]]
    assert VARIANTS[f"{NO_NAP} / immediate"].paper_ppl == 25.80
    assert "Straight-through / immediate" in VARIANT_GROUPS["table1"]
    assert not set(VARIANT_GROUPS["table1"]) & {"Hard / mix p=0.5", "Hard / scheduled sampling"}
    from planlm.errors import PlanlmError
    from planlm.stages.run import validate_run

    validate_run("quick", expand_variants(["table1", "mix-sweep"]), None)
    with pytest.raises(PlanlmError, match="groups"):
        validate_run("quick", ["mix-sweepp"], None)
    from jsonargparse import ArgumentParser

    from planlm.stages.run import run

    parser = ArgumentParser()
    parser.add_function_arguments(run)
    assert parser.parse_args(["--variants", "mix-sweep"]).variants == "mix-sweep"  # one group, no brackets
    assert parser.parse_args(["--variants", "[no-nap, Fixed]"]).variants == ["no-nap", "Fixed"]


def _batch(env):
    from planlm.data.planner_inputs import PlannerInputs
    from planlm.data.windows import WindowDataset
    from planlm.persist import load_lm, load_planner

    lm, tok = load_lm(env["lm"])
    planner = load_planner(env["planner"])
    ds = WindowDataset.from_corpus(env["corpus"], tok, "train", 32, 31)
    collate = ds.collate_fn(PlannerInputs.from_config(env["corpus"], planner.config, tokenizer=tok),
                            pad_token_id=tok.pad_token_id)
    return lm, planner, collate([ds[i] for i in range(6)])


def test_mix_endpoints_are_the_oracle_and_predicted_action_choices(env):
    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig

    lm, planner, batch = _batch(env)
    corpus = env["corpus"]
    torch.manual_seed(0)
    model = PlannedLM(lm, PlannedLMConfig(num_actions=corpus.num_actions, action_dim=corpus.embedding_dim,
                                          selection="hard"), torch.from_numpy(corpus.centroids), planner=planner)

    def module(**recipe):
        return PlannedLMModule(model, RecipeConfig(selection="hard", planner_unfreeze="never", **recipe),
                               OptimConfig(), total_steps=10)

    ids = batch["sentence_ids"]
    for step in (0, 4, 9):
        assert not module(actions="mix", p_predicted=0.0).predicted_mask(ids, step).any()
        assert module(actions="mix", p_predicted=1.0).predicted_mask(ids, step).all()
    with torch.no_grad():
        predicted = planner(**batch["planner_inputs"]).argmax(-1)
    assert (predicted != batch["oracle_actions"]).any()  # the two choices differ somewhere, so the test can fail
    model.eval()  # no dropout: equal action choices give equal losses
    with torch.no_grad():
        loss = {name: module(**r).step_losses(batch, train=True)["loss"] for name, r in (
            ("p0", dict(actions="mix", p_predicted=0.0)), ("p1", dict(actions="mix", p_predicted=1.0)),
            ("oa", dict(actions="oracle")), ("pa", dict(actions="predicted")))}
    assert torch.equal(loss["p0"], loss["oa"]) and torch.equal(loss["p1"], loss["pa"])
    assert not torch.equal(loss["oa"], loss["pa"])


def test_appendix_e_split_adds_up_and_its_right_part_is_the_oracle_restricted_computation(env, tmp_path):
    import torch.nn.functional as F

    from helpers import synthetic_prepared
    from planlm.data.alignment import aligned_articles
    from planlm.eval.perplexity import perplexity, planner_right, split_by_planner_right
    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig

    lm, planner, _ = _batch(env)
    corpus = synthetic_prepared(tmp_path / "short", n_articles=10, sentences_per_article=(3, 5), seed=1)
    torch.manual_seed(0)
    model = PlannedLM(lm, PlannedLMConfig(num_actions=corpus.num_actions, action_dim=corpus.embedding_dim,
                                          selection="hard"), torch.from_numpy(corpus.centroids), planner=planner)
    model.eval()
    from planlm.persist import load_tokenizer

    tok = load_tokenizer(env["lm"])
    test = corpus.article_ids("test")
    ids = np.concatenate([np.arange(*corpus.sentence_range(int(a))) for a in test])
    oracle = corpus.actions[ids].astype(np.int64)
    # planner logits that are right on every other sentence and wrong on the rest
    chosen = np.where(np.arange(len(ids)) % 2 == 0, oracle, (oracle + 1) % corpus.num_actions)
    logits = F.one_hot(torch.from_numpy(chosen), corpus.num_actions).float() * 5.0  # (N, K)
    articles = aligned_articles(corpus, tok, test, progress=False)
    longest = max(len(a.input_ids) for a in articles)
    assert longest <= 256  # one window per article below
    result = perplexity(model, corpus, tok, "test", "predicted", "strided", context_length=longest,
                        planner_logits=(ids, logits), progress=False)
    right = planner_right(len(corpus.sentence_article), ids, logits, corpus.actions)
    split = split_by_planner_right(result, right)
    assert split["right"]["tokens"] + split["wrong"]["tokens"] == result.tokens
    assert split["right"]["nll_sum"] + split["wrong"]["nll_sum"] == pytest.approx(result.nll_sum, rel=1e-9)
    assert split["right"]["tokens"] > 0 and split["wrong"]["tokens"] > 0

    # Independently: each whole article in one forward pass, token t + 1 counted with the sentence whose action
    # position t carries, restricted to the sentences the planner got right.
    row_of = {int(s): i for i, s in enumerate(ids)}
    nll_right, n_right = 0.0, 0
    with torch.no_grad():
        for art in articles:
            table = np.unique(art.action_slot)  # (S,) global sentence ids
            slot = np.searchsorted(table, art.action_slot)  # (T,) rows of the table
            out = model(input_ids=torch.from_numpy(art.input_ids)[None],
                        token_slot=torch.from_numpy(slot)[None],
                        planner_logits=logits[[row_of[int(s)] for s in table]])
            nll = F.cross_entropy(out.logits[0, :-1].float(), torch.from_numpy(art.input_ids[1:]), reduction="none")
            keep = right[art.action_slot[:-1]]
            nll_right += float(nll[torch.from_numpy(keep)].double().sum())
            n_right += int(keep.sum())
    assert split["right"]["tokens"] == n_right
    assert split["right"]["ppl"] == pytest.approx(math.exp(nll_right / n_right), rel=1e-5)

    # A planner that is right everywhere: the right part is all tokens, and predicted actions ARE the oracle ones.
    perfect = F.one_hot(torch.from_numpy(oracle), corpus.num_actions).float() * 5.0
    got = perplexity(model, corpus, tok, "test", "predicted", "strided", context_length=longest,
                     planner_logits=(ids, perfect), progress=False)
    by_oracle = perplexity(model, corpus, tok, "test", "oracle", "strided", context_length=longest, progress=False)
    split = split_by_planner_right(got, planner_right(len(corpus.sentence_article), ids, perfect, corpus.actions))
    assert split["wrong"]["tokens"] == 0 and split["right"]["tokens"] == by_oracle.tokens
    assert split["right"]["ppl"] == pytest.approx(by_oracle.ppl, rel=1e-6)


def test_report_figures(tmp_path):
    from planlm.eval.figures import plot_mixing, plot_planner_correct, planner_correct_rows

    def m(variant, seed, p=None, actions=None, ppl=20.0, right=(18.0, 30), wrong=(25.0, 70)):
        out = {"variant": variant, "seed": seed, "ppl": ppl, "ppl_oracle": ppl - 1,
               "by_planner_correct": {"predicted": {"right": {"ppl": right[0], "tokens": right[1]},
                                                    "wrong": {"ppl": wrong[0], "tokens": wrong[1]}}}}
        if p is not None:
            out["p_predicted"] = p
        if actions is not None:
            out["training_actions"] = actions
        return out

    runs = [m("Cornille OA", 0, 0.0, "oracle"), m("Hard / mix p=0.5", 0, 0.5, "mix"),
            m("Cornille PA", 0, 1.0, "predicted", right=(16.0, 40), wrong=(24.0, 60)),
            m("Cornille PA", 1, 1.0, "predicted", right=(18.0, 20), wrong=(26.0, 80)),
            m("Hard / scheduled sampling", 0, None, "schedule")]
    assert plot_mixing(runs, tmp_path / "mixing.png").stat().st_size > 0
    assert plot_mixing(runs[-1:], tmp_path / "none.png") is None  # fewer than two values of p: no figure
    # runs evaluated with --generation true add Figure 4's plan-matching panel, side by side with the perplexity
    import matplotlib.image

    for r, matching in zip(runs, (0.3, 0.5, 0.6, 0.7, 0.55)):
        r["plan_matching"] = matching
    one = matplotlib.image.imread(tmp_path / "mixing.png")
    two = matplotlib.image.imread(plot_mixing(runs, tmp_path / "mixing-matching.png"))
    assert two.shape[1] == 2 * one.shape[1] and two.shape[0] == one.shape[0]
    rows = {r["variant"]: r for r in planner_correct_rows(runs)}
    assert rows["Cornille PA"]["right"] == (17.0, pytest.approx(math.sqrt(2)))
    assert rows["Cornille PA"]["right_share"] == pytest.approx(0.3)
    assert plot_planner_correct(runs, tmp_path / "e.png").stat().st_size > 0
    assert plot_planner_correct([{"variant": "Fixed", "ppl": 3.0}], tmp_path / "none.png") is None
