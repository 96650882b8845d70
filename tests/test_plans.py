"""Multi-sentence plans (planner horizon H) and sampled-plan conditioning (M plans): the batched rollout, NAP on every
offset, adapters reading H offsets (H = 1 is exactly the paper's model), sampling statistics, and the stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune_env import cli_args, make_env
from helpers import NAP, QUIET, corpus_batch, model_inputs, patterned_prepared, synthetic_prepared
from planlm.cli import main
from planlm.errors import PlanlmError
from planlm.eval.nap import next_actions, offset_name
from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
from planlm.models.planner import Planner, PlannerConfig
from planlm.models.selection import SelectionConfig, action_weights, plan_weights, sampled_plan_weights
from planlm.persist import load_planned_lm, load_planner, save_planned_lm

NEW_FIELDS = ("horizon", "offset_init", "plan_samples", "plan_temperature", "plan_average")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthetic_prepared(tmp_path_factory.mktemp("plans") / "prep")


def make_planner(corpus, horizon: int, seed: int = 0, rollout: str = "context") -> Planner:
    torch.manual_seed(seed)
    cfg = PlannerConfig(num_actions=corpus.num_actions, encoder_dim=corpus.embedding_dim, d_model=16, n_heads=2,
                        ff=32, context="paper", context_tokens=32, horizon=horizon, rollout=rollout)
    return Planner(cfg, centroids=torch.from_numpy(corpus.centroids)).eval()


def make_model(corpus, horizon=1, seed=0, **cfg) -> PlannedLM:
    from helpers import random_lm

    torch.manual_seed(seed)
    lm = random_lm("gpt2")
    config = PlannedLMConfig(num_actions=corpus.num_actions, action_dim=corpus.embedding_dim, horizon=horizon, **cfg)
    return PlannedLM(lm, config, centroids=torch.from_numpy(corpus.centroids),
                     planner=make_planner(corpus, max(horizon, 1))).eval()


# ---- the planner's rollout -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rollout", ["context", "decoder"])
def test_horizon_one_is_the_paper_planner_and_offset_one_ignores_the_rollout(corpus, rollout):
    inputs = corpus_batch(corpus)["planner_inputs"]
    one, three = make_planner(corpus, 1), make_planner(corpus, 3, rollout=rollout)
    assert "plan_embeddings" not in one.state_dict() and three.state_dict()["plan_embeddings"].shape == (8, 16)
    # the plan slots start as the centroids: a planned sentence looks like the mean sentence of its action
    assert torch.equal(three.plan_embeddings, torch.from_numpy(corpus.centroids))
    missing, unexpected = three.load_state_dict(one.state_dict(), strict=False)
    assert missing[0] == "plan_embeddings" and not unexpected
    assert (len(missing) > 1) == (rollout == "decoder")
    assert all(k.startswith(("plan_decoder.", "offset_queries")) for k in missing[1:])
    with torch.no_grad():
        future = torch.from_numpy(next_actions(corpus, corpus_batch(corpus)["sentence_ids"].numpy(), 3))
        forced = three.teacher_forced_logits(inputs, future)  # (N, 3, K)
        assert torch.equal(three(**inputs), one(**inputs))
        torch.testing.assert_close(forced[:, 0], one(**inputs), rtol=0, atol=1e-6)
        # offset 2 reads the offset-1 action: another action there gives other logits
        other = future.clone()
        other[:, 0] = (other[:, 0].clamp_min(0) + 1) % 8
        assert not torch.allclose(three.teacher_forced_logits(inputs, other)[:, 1], forced[:, 1])
        torch.testing.assert_close(three.teacher_forced_logits(inputs, other)[:, 0], forced[:, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("rollout", ["context", "decoder"])
def test_batched_rollout_is_each_plan_rolled_out_alone(corpus, rollout):
    planner = make_planner(corpus, 3, rollout=rollout)
    inputs = corpus_batch(corpus)["planner_inputs"]
    with torch.no_grad():
        actions, logits = planner.sample_plans(inputs, 4, 1.0, torch.Generator().manual_seed(0))  # (N, 4, 3), (N, 4, 3, K)
        n = actions.shape[0]
        assert logits.shape == (n, 4, 3, 8) and actions.unique().numel() > 1
        for i in range(n):
            one = {k: v[i : i + 1] for k, v in inputs.items()}
            for m in range(4):
                alone = planner.teacher_forced_logits(one, actions[i : i + 1, m])  # (1, 3, K), the same prefix
                torch.testing.assert_close(alone[0], logits[i, m], rtol=0, atol=1e-5)
        # temperature 0: one greedy plan, each action the argmax of its offset's logits
        greedy, glogits = planner.sample_plans(inputs, 1, 0.0)
        assert torch.equal(greedy, glogits.argmax(-1))


def test_horizon_needs_the_paper_context():
    cfg = PlannerConfig(num_actions=4, encoder_dim=8, context="causal", horizon=2)
    assert any("horizon" in p for p in cfg.problems())
    assert any("horizon" in p for p in PlannerConfig(num_actions=4, encoder_dim=8, horizon=0).problems())


def test_next_actions_stop_at_the_article_end(corpus):
    first, end = corpus.sentence_range(int(corpus.article_ids("train")[0]))
    ids = np.array([first, end - 1])
    out = next_actions(corpus, ids, 3)
    assert out[0].tolist() == corpus.actions[first : first + 3].tolist()
    assert out[1].tolist() == [int(corpus.actions[end - 1]), -100, -100]


# ---- NAP on every offset -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rollout", ["context", "decoder"])
def test_nap_trains_every_offset_and_reports_each(tmp_path, rollout):
    patterned = patterned_prepared(tmp_path / "patterned")  # a_j = a_{j-1} + 1 mod 6: every offset is learnable
    out = tmp_path / "planner"
    cfg = PlannerConfig(ff=32, context_sentences=2, horizon=3, rollout=rollout)
    metrics = train_planner(patterned, out, cfg)
    assert list(metrics)[:3] == [offset_name(1), offset_name(2), offset_name(3)] == \
        ["planner", "planner offset 2", "planner offset 3"]
    for h in (1, 2, 3):
        m = metrics[offset_name(h)]
        assert m["top1"] > metrics["unigram"]["top1"] + 0.3 and m["top5"] >= m["top1"], (h, metrics)
    logged = (out / "logs" / "metrics.csv").read_text()
    assert "val/offset3_top1" in logged and "val/offset2_loss" in logged
    planner = load_planner(out)
    assert planner.config.horizon == 3 and planner.plan_embeddings is not None


def train_planner(patterned, out, cfg):
    from planlm.stages.train_planner import train_planner as stage

    return stage(str(patterned.path), out=str(out), planner=cfg, optim=NAP(lr=5e-3, epochs=8), trainer=QUIET)


# ---- the adapters read H offsets ------------------------------------------------------------------------------------
def test_horizon_one_is_exactly_todays_model_and_old_folders_load(corpus, tmp_path):
    batch = corpus_batch(corpus)
    model = make_model(corpus)
    names = set(model.adapters.state_dict())
    assert names == {f"adapters.{l}.{p}" for l in model.adapters.layers
                     for p in ("action_embeddings", "proj.weight", "proj.bias")}
    with torch.no_grad():
        out = model(**model_inputs(batch))
        logits = model.planner(**batch["planner_inputs"])
        soft = action_weights("soft", 8, planner_logits=logits)  # (N, K): the paper's soft selection
        as_plan = model(**{**model_inputs(batch), "plan_weights": soft[:, None]})  # the same weights as a 1-plan
    assert out.action_weights.shape == soft.shape and torch.equal(out.action_weights, soft)
    assert torch.equal(as_plan.logits, out.logits)
    # a folder saved before plans existed (its config has none of the new fields) loads into the same model
    save_planned_lm(model, tmp_path / "old")
    path = tmp_path / "old" / "planned_lm_config.json"
    meta = json.loads(path.read_text())
    assert all(f in meta["planned_lm"] for f in NEW_FIELDS)
    meta["planned_lm"] = {k: v for k, v in meta["planned_lm"].items() if k not in NEW_FIELDS}
    path.write_text(json.dumps(meta))
    loaded = load_planned_lm(tmp_path / "old", lm=make_model(corpus, seed=1).lm).eval()
    loaded.lm.load_state_dict(model.lm.state_dict())
    with torch.no_grad():
        assert torch.equal(loaded(**model_inputs(batch)).logits, out.logits)


def test_plan_adapters_extend_todays_and_read_the_later_offsets(corpus):
    batch = corpus_batch(corpus)
    one, three = make_model(corpus, 1), make_model(corpus, 3, plan_samples=2)
    three.adapters.load_state_dict(one.adapters.state_dict(), strict=False)  # offset embeddings stay zero
    three.lm.load_state_dict(one.lm.state_dict())
    n = len(batch["sentence_ids"])
    w = torch.softmax(torch.randn(n, 3, 8, generator=torch.Generator().manual_seed(0)), -1)  # (N, 3, K)
    inputs = model_inputs(batch)
    with torch.no_grad():
        ref = one(**{**inputs, "plan_weights": w[:, :1]}).logits
        assert torch.equal(three(**{**inputs, "plan_weights": w}).logits, ref)  # zero offsets: the H = 1 model
        for a in three.adapters.adapters.values():
            a.offset_embeddings.normal_()
        moved = three(**{**inputs, "plan_weights": w}).logits
        assert not torch.allclose(moved, ref)
        w2 = w.clone()
        w2[:, 2] = w[:, 2].roll(1, -1)
        assert not torch.allclose(three(**{**inputs, "plan_weights": w2}).logits, moved)  # offset 3 is read
    # trained end to end: gradients reach the offset embeddings and, through the sampled plans, the planner
    three.train()
    out = three(**inputs)
    assert out.action_weights.shape == (n, 3, 8)
    out.loss.backward()
    assert all(a.offset_embeddings.grad.abs().sum() > 0 for a in three.adapters.adapters.values())
    assert three.planner.policy_head.weight.grad.abs().sum() > 0
    assert three.planner.plan_embeddings.grad.abs().sum() > 0


def test_a_planner_shorter_than_the_plan_is_refused(corpus):
    from helpers import random_lm

    cfg = PlannedLMConfig(num_actions=8, action_dim=16, horizon=3)
    with pytest.raises(PlanlmError, match="--planner.horizon 3"):
        PlannedLM(random_lm("gpt2"), cfg, planner=make_planner(corpus, 2))


# ---- sampled plans ----------------------------------------------------------------------------------------------------
def test_one_argmax_sample_is_hard_selection(corpus):
    batch = corpus_batch(corpus)
    hard = make_model(corpus, 1, selection="hard")
    sampled = make_model(corpus, 1, selection="hard", plan_samples=1, plan_temperature=0.0)
    with torch.no_grad():
        a, b = hard(**model_inputs(batch)), sampled(**model_inputs(batch))
    assert b.action_weights.shape == (*a.action_weights.shape[:1], 1, 8)
    assert torch.equal(b.action_weights[:, 0], a.action_weights) and torch.equal(a.logits, b.logits)


def sampled_offset_one(planner, inputs, m: int, temperature: float = 1.0, average: str = "samples", seed: int = 0):
    cfg = SelectionConfig(selection="soft", plan_samples=m, plan_temperature=temperature, plan_average=average)
    with torch.no_grad():
        logits, weights = plan_weights(planner, inputs, cfg, torch.Generator().manual_seed(seed))
    return logits, weights[:, 0]  # (N, K), (N, K)


def test_sampled_plans_recover_the_soft_weights_as_m_grows(corpus):
    planner = make_planner(corpus, 2)
    inputs = corpus_batch(corpus, n=8)["planner_inputs"]
    errors = {}
    for m in (16, 256, 4096):
        logits, w = sampled_offset_one(planner, inputs, m)
        soft = torch.softmax(logits, -1)  # (N, K): the exact soft weights (temperature 1)
        assert torch.allclose(w.sum(-1), torch.ones(len(w))) and ((w * m) - (w * m).round()).abs().max() < 1e-3
        # each entry is a mean of M Bernoulli(p) draws: standard deviation <= 0.5 / sqrt(M); 5 sigma
        tolerance = 5 * 0.5 / m**0.5
        errors[m] = float((w - soft).abs().max())
        assert errors[m] < tolerance, (m, errors[m], tolerance)
    assert errors[4096] < errors[16]
    # the test can fail: plans sampled at another temperature miss the soft weights by more than the tolerance
    logits, hot = sampled_offset_one(planner, inputs, 4096, temperature=3.0)
    assert float((hot - torch.softmax(logits, -1)).abs().max()) > 5 * 0.5 / 4096**0.5
    # averaging the per-step distributions instead is exact at offset 1 for any M
    logits, probs = sampled_offset_one(planner, inputs, 2, average="probs")
    torch.testing.assert_close(probs, torch.softmax(logits, -1))


def test_sample_gradients_follow_the_selection():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 2, 5, requires_grad=True)  # (N, M, H, K)
    actions = logits.detach().argmax(-1)
    for selection, grad in (("soft", True), ("straight-through", True), ("hard", False)):
        w = sampled_plan_weights(selection, actions, logits)
        assert torch.equal(w.detach(), torch.nn.functional.one_hot(actions, 5).float().mean(1))
        assert w.requires_grad == grad


def test_plan_fields_are_checked():
    assert any("plan_samples" in p for p in SelectionConfig(plan_samples=-1).selection_problems())
    assert any("plan_temperature" in p for p in SelectionConfig(plan_temperature=-1).selection_problems())
    assert any("plan_average" in p for p in SelectionConfig(plan_average="mode").selection_problems())
    assert any("has none" in p for p in SelectionConfig(selection="fixed", plan_samples=2).selection_problems())


# ---- the stages --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage_env(tmp_path_factory):
    env = make_env(tmp_path_factory.mktemp("plan-stages"), n_articles=14)
    planner = env["root"] / "planner-h2"
    assert main(["train-planner", "--prepared", env["prepared"], "--out", str(planner), "--planner.horizon", "2",
                 "--planner.ff", "32", "--planner.context_sentences", "3", "--optim.max_steps", "4",
                 "--trainer.accelerator", "cpu", "--trainer.progress_bar", "false"]) == 0
    env["planner"] = str(planner)
    return env


def test_finetune_evaluate_with_sampled_plans(stage_env):
    env = stage_env
    out = env["root"] / "ft"
    assert main(cli_args(env, out, "--optim.max_steps", "3", "--recipe.plan_samples", "3",
                         "--recipe.planner_unfreeze", "immediate", "--adapters.offset_init", "centroids")) == 0
    model = load_planned_lm(out)
    assert model.config.horizon == 2 and model.config.plan_samples == 3 and model.config.offset_init == "centroids"
    assert model.adapters.adapters[str(model.adapters.layers[0])].offset_embeddings.shape == (1, 8, 16)
    ev = env["root"] / "ev"
    assert main(["evaluate", "--run", str(out), "--out", str(ev), "--ppl.context_length", "24",
                 "--ppl.max_tokens", "150", "--ppl.batch_size", "16"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert np.isfinite(metrics["ppl"]) and metrics["planner"]["top1"] >= 0
    offsets = metrics["planner_offsets"]  # NAP per offset, teacher-forced; offset 1 is the planner's accuracy
    assert len(offsets) == 2 and offsets[0]["top1"] == pytest.approx(metrics["planner"]["top1"])
    assert "planner offset 2 top-1" in (ev / "metrics.md").read_text()
    # reproducible: the plans of an evaluation are drawn from a seeded generator
    ev2 = env["root"] / "ev2"
    assert main(["evaluate", "--run", str(out), "--out", str(ev2), "--ppl.context_length", "24",
                 "--ppl.max_tokens", "150", "--ppl.batch_size", "16"]) == 0
    assert json.loads((ev2 / "metrics.json").read_text())["ppl"] == metrics["ppl"]


def test_plans_need_predicted_training_actions(stage_env, capsys):
    env = stage_env
    assert main(cli_args(env, env["root"] / "bad", "--recipe.plan_samples", "2", "--recipe.actions", "mix")) == 2
    assert "plan_samples" in capsys.readouterr().err
    assert main(cli_args(env, env["root"] / "bad2", "--recipe.selection", "hard", "--recipe.actions", "oracle",
                         "--recipe.planner_unfreeze", "never")) == 2
    assert "plans 2 sentences" in capsys.readouterr().err


def test_generation_replans_h_sentences_at_every_sentence_end(tmp_path):
    from generate_env import ENCODER, build_env, first_generation, planner_context
    from planlm.data.encoders import load_encoder
    from planlm.eval.generator import PlannedGenerator, SamplingConfig

    env = build_env(tmp_path, n_articles=10)
    base = env["model"]
    cfg = PlannerConfig(**{**base.planner.config.__dict__, "horizon": 2})
    planner = Planner(cfg, centroids=torch.from_numpy(env["corpus"].centroids))
    planner.load_state_dict({**base.planner.state_dict(), "plan_embeddings": planner.plan_embeddings}, strict=True)
    config = PlannedLMConfig(**{**base.config.__dict__, "horizon": 2, "plan_samples": 1, "plan_temperature": 0.0})
    model = PlannedLM(base.lm, config, planner=planner.eval()).eval()
    model.adapters.load_state_dict(base.adapters.state_dict(), strict=False)
    seen = []  # the plan weights of every forward pass
    handle = model.lm.register_forward_pre_hook(lambda m, a, k: seen.append(model.adapters._weights), with_kwargs=True)
    generator = PlannedGenerator(model, env["tokenizer"], env["corpus"], load_encoder(ENCODER))

    def generate(seed):
        seen.clear()
        return generator.generate_one("The Moon is big.", [2], SamplingConfig(max_new_tokens=240, temperature=0.7,
                                                                              seed=seed), after_plan="planner")

    # the tiny LM writes long sentences: a seed whose text ends several
    g = first_generation(generate, lambda g: sum(s.source == "planner" for s in g.sentences) >= 2, seeds=range(5, 25))
    handle.remove()
    planned = [w for w in seen if w.dim() == 3]  # feeds before the planner takes over carry forced actions only
    assert planned and all(w.shape[1:] == (2, 8) for w in planned)
    rows = {tuple(r.flatten().tolist()) for w in planned for r in w}
    enc = load_encoder(ENCODER)
    n_ctx = planner.config.context_sentences
    for j, s in enumerate(g.sentences):
        if s.source != "planner":
            continue
        with torch.no_grad():
            _, plan = model.plan(planner_context(enc, g.sentences, j, n_ctx))
        assert int(plan[0, 0].argmax()) == s.action  # greedy: offset 1 is the planner's argmax
        assert tuple(plan[0].flatten().tolist()) in rows  # this sentence's plan of 2 conditioned its tokens
