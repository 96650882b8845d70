"""The planner model and its inputs: causality, batched == per-sentence, centroid initialisation, start vector."""

import dataclasses

import numpy as np
import pytest
import torch

from planlm.data.planner_inputs import PlannerInputs
from planlm.errors import PlanlmError
from planlm.models.planner import Planner, PlannerConfig


def make_planner(corpus, **overrides) -> Planner:
    torch.manual_seed(0)
    cfg = PlannerConfig(num_actions=corpus.num_actions, encoder_dim=corpus.embedding_dim, ff=32, **overrides)
    return Planner(cfg, torch.from_numpy(corpus.centroids)).eval()


def token_counts(corpus, seed=0):
    return np.random.default_rng(seed).integers(1, 12, size=len(corpus.actions))


MODES = [
    pytest.param({"context": "paper", "context_sentences": 3}, False, id="paper-sentences"),
    pytest.param({"context": "paper", "context_tokens": 20}, True, id="paper-tokens"),
    pytest.param({"context": "causal"}, False, id="causal"),
]


@pytest.mark.parametrize("overrides,needs_counts", MODES)
def test_changing_sentence_k_changes_no_prediction_up_to_k(synthetic_corpus, overrides, needs_counts):
    corpus = synthetic_corpus
    planner = make_planner(corpus, **overrides)
    build = PlannerInputs.from_config(corpus, planner.config, token_counts(corpus) if needs_counts else None)
    lo, hi = corpus.sentence_range(int(corpus.article_ids("train")[0]))
    ids = np.arange(len(corpus.actions))  # every sentence of every article in one call
    with torch.no_grad():
        before = planner(**build(ids))
        k = lo + 2
        build.embeddings = np.array(build.embeddings)  # a writable copy of the read-only memory map
        build.embeddings[k] += 3.0  # change sentence k's stored embedding
        after = planner(**build(ids))
    same = torch.isclose(before, after, atol=1e-6).all(1)
    article = (ids >= lo) & (ids < hi)
    assert same[torch.from_numpy(ids <= k)].all(), "a prediction for j <= k read sentence k"
    assert same[torch.from_numpy(~article)].all(), "another article's prediction changed"
    assert not same[k + 1], "the sentence right after k must see k"


@pytest.mark.parametrize("overrides,needs_counts", MODES)
def test_batched_call_equals_per_sentence_loop(synthetic_corpus, overrides, needs_counts):
    corpus = synthetic_corpus
    planner = make_planner(corpus, **overrides)
    counts = token_counts(corpus) if needs_counts else None
    build = PlannerInputs.from_config(corpus, planner.config, counts)
    ids = np.random.default_rng(1).permutation(len(corpus.actions))[:60]  # shuffled, across articles
    with torch.no_grad():
        batched = planner(**build(ids))
        looped = torch.cat([planner(**build(np.array([j]))) for j in ids])
        if planner.config.context == "paper":
            # Reference without any padding or builder: the raw context rows of the embedding table.
            emb = torch.from_numpy(np.asarray(corpus.embeddings, dtype=np.float32))
            starts = build.context_start(ids)
            manual = torch.cat([
                planner(context_embeddings=emb[s:j][None], context_mask=torch.ones(1, j - s, dtype=torch.bool))
                for s, j in zip(starts, ids)
            ])
            torch.testing.assert_close(batched, manual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-5)


def test_token_context_matches_a_walk_back_over_token_counts(synthetic_corpus):
    corpus = synthetic_corpus
    counts = token_counts(corpus, seed=3)
    budget = 17
    build = PlannerInputs(corpus, "paper", context_tokens=budget, token_counts=counts)
    ids = np.arange(len(corpus.actions))
    got = build.context_start(ids)
    for j in ids:
        first = corpus.sentence_range(int(corpus.sentence_article[j]))[0]
        s, covered = j, 0
        while s > first and covered < budget:  # add preceding sentences until the budget is covered
            s -= 1
            covered += counts[s]
        assert got[j] == s, f"sentence {j}: context starts at {got[j]}, expected {s}"


def test_first_sentence_uses_the_learned_start_vector(synthetic_corpus):
    corpus = synthetic_corpus
    for mode in ("paper", "causal"):
        planner = make_planner(corpus, context=mode, context_sentences=2)
        first = corpus.article_offsets[:-1][:3]  # first sentences of three articles
        inputs = PlannerInputs.from_config(corpus, planner.config)(first)
        if mode == "paper":
            assert inputs["context_mask"].sum() == 0
        with torch.no_grad():
            logits = planner(**inputs)
            if mode == "paper":  # the start vector replaces the pooled context
                torch.testing.assert_close(logits, planner.policy_head(planner.start).expand(3, -1))
            else:  # the start vector is the whole (one-slot) causal input: every article predicts alike
                torch.testing.assert_close(logits, logits[:1].expand(3, -1))
                planner.start += 1.0
                assert not torch.allclose(planner(**inputs), logits)


def test_policy_head_starts_at_the_centroids(synthetic_corpus):
    corpus = synthetic_corpus
    centroids = torch.from_numpy(corpus.centroids)
    planner = make_planner(corpus, context_sentences=2)  # d = d_enc: the paper's case
    assert torch.equal(planner.policy_head.weight, centroids)
    assert torch.count_nonzero(planner.policy_head.bias) == 0
    # d != d_enc: the centroids go through the input projection into model space.
    wide = make_planner(corpus, d_model=24, context_sentences=2)
    torch.testing.assert_close(wide.policy_head.weight, centroids @ wide.input_proj.weight.T)
    with pytest.raises(ValueError, match="centroids have shape"):
        Planner(wide.config, centroids[:, :5])


def test_paper_defaults_and_parameter_count():
    cfg = PlannerConfig(num_actions=1024, encoder_dim=768)
    assert (cfg.width, cfg.n_layers, cfg.n_heads, cfg.ff, cfg.dropout, cfg.context, cfg.context_tokens) == (
        768, 1, 2, 2048, 0.0, "paper", 128)
    n = sum(p.numel() for p in Planner(cfg).parameters())
    assert 6.8e6 < n < 7.0e6  # DESIGN.md 1.2: about 6.9 M trainable parameters


def test_gradients_reach_every_parameter(synthetic_corpus):
    corpus = synthetic_corpus
    for mode in ("paper", "causal"):
        planner = make_planner(corpus, context=mode, context_sentences=3).train()
        ids = np.arange(len(corpus.actions))
        loss = torch.nn.functional.cross_entropy(planner(**PlannerInputs.from_config(corpus, planner.config)(ids)),
                                                 torch.from_numpy(corpus.actions[ids].astype(np.int64)))
        loss.backward()
        missing = [n for n, p in planner.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{mode}: no gradient for {missing}"


def test_bad_configs_and_inputs_are_refused(synthetic_corpus):
    with pytest.raises(ValueError, match="not divisible"):
        Planner(PlannerConfig(num_actions=4, encoder_dim=15, n_heads=2))
    with pytest.raises(ValueError, match="context must be one of"):
        Planner(PlannerConfig(num_actions=4, encoder_dim=16, context="bidirectional"))
    planner = make_planner(synthetic_corpus, context_sentences=2)
    with pytest.raises(ValueError, match="paper-context planner needs"):
        planner(article_embeddings=torch.zeros(1, 2, 16), target_index=torch.zeros(1, dtype=torch.long))
    with pytest.raises(PlanlmError, match="--lm"):
        PlannerInputs(synthetic_corpus, "paper")  # token budget without token counts
    cfg = dataclasses.replace(planner.config, context_sentences=None)
    with pytest.raises(PlanlmError, match="entries"):
        PlannerInputs.from_config(synthetic_corpus, cfg, np.ones(3))


# ---- the previous sentence's action (issue 27): the Bigram PA planner and the bigram_prior option ------------------
def fitted(corpus, **overrides) -> Planner:
    """A planner (``overrides``) with the train split's bigram and the corpus's centroids set, as train-planner sets
    them."""
    from planlm.eval.nap import bigram_table

    planner = make_planner(corpus, **overrides)
    train = np.concatenate([np.arange(*corpus.sentence_range(int(a))) for a in corpus.article_ids("train")])
    planner.set_bigram(torch.from_numpy(corpus.centroids), torch.from_numpy(bigram_table(corpus, train)))
    return planner


@pytest.mark.parametrize("context", ["paper", "causal"])
def test_the_previous_action_is_the_last_context_sentence_s_nearest_centroid(synthetic_corpus, context):
    from planlm.data.actions import assign
    from planlm.eval.nap import previous_actions

    corpus = synthetic_corpus
    planner = fitted(corpus, kind="bigram", context=context, context_sentences=3 if context == "paper" else None)
    ids = np.arange(len(corpus.actions))
    got = planner.previous_actions(**PlannerInputs.from_config(corpus, planner.config)(ids))  # (N,)
    # `planlm prepare` assigns actions to the stored float16 embeddings, so there this is the previous oracle action;
    # this hand-made corpus took its actions from float32 ones, hence the stored embeddings' own assignment here
    stored = dataclasses.replace(corpus, actions=assign(corpus.embeddings, corpus.centroids)[0])
    assert torch.equal(got, torch.from_numpy(previous_actions(stored, ids)))  # K for an article's first sentence
    assert (got.numpy() == previous_actions(corpus, ids)).mean() > 0.95


def test_the_bigram_planner_has_no_parameters_and_its_logits_are_the_bigram_s(synthetic_corpus, tmp_path):
    from planlm.eval.nap import bigram_table, previous_actions
    from planlm.persist import load_planner, save_planner

    corpus = synthetic_corpus
    planner = fitted(corpus, kind="bigram", context_sentences=3)
    assert sum(p.numel() for p in planner.parameters()) == 0
    ids = np.arange(len(corpus.actions))
    train = np.concatenate([np.arange(*corpus.sentence_range(int(a))) for a in corpus.article_ids("train")])
    from planlm.data.actions import assign

    stored = dataclasses.replace(corpus, actions=assign(corpus.embeddings, corpus.centroids)[0])  # as prepare does
    expected = np.log(bigram_table(corpus, train))[previous_actions(stored, ids)]  # (N, K)
    inputs = PlannerInputs.from_config(corpus, planner.config)(ids)
    torch.testing.assert_close(planner(**inputs), torch.from_numpy(expected).float())
    save_planner(planner, tmp_path / "bigram")  # the table and centroids are buffers: saved with the "weights"
    torch.testing.assert_close(load_planner(tmp_path / "bigram")(**inputs), planner(**inputs))
    with pytest.raises(ValueError, match="bigram alone"):
        make_planner(corpus, kind="bigram", bigram_prior=True)


@pytest.mark.parametrize("context", ["paper", "causal"])
def test_bigram_prior_adds_the_bigram_to_the_transformer_s_logits_and_gradients_still_flow(synthetic_corpus, context):
    corpus = synthetic_corpus
    kwargs = {"context": context, "context_sentences": 3 if context == "paper" else None}
    plain = make_planner(corpus, **kwargs).train()
    prior = fitted(corpus, bigram_prior=True, **kwargs).train()
    prior.load_state_dict({**plain.state_dict(), "action_centroids": prior.action_centroids,
                           "bigram_log_probs": prior.bigram_log_probs})  # the same transformer
    ids = np.arange(len(corpus.actions))
    inputs = PlannerInputs.from_config(corpus, plain.config)(ids)
    logits = prior(**inputs)
    assert logits.shape == (len(ids), corpus.num_actions)
    torch.testing.assert_close(logits, plain(**inputs) + prior.bigram_logits(**inputs))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(corpus.actions[ids].astype(np.int64)))
    loss.backward()
    missing = [n for n, p in prior.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert set(dict(prior.named_buffers())) == {"action_centroids", "bigram_log_probs"}  # fixed, not trained
    assert "bigram_log_probs" not in plain.state_dict()  # the paper planner's state dict is unchanged


# ---- last_sentences (issue 27 item 7): the last context sentences reach the logits on their own ----------------------
@pytest.mark.parametrize("context", ["paper", "causal"])
def test_last_context_is_the_sentences_right_before_each_target_nearest_first(synthetic_corpus, context):
    corpus = synthetic_corpus
    planner = make_planner(corpus, context=context, context_sentences=3 if context == "paper" else None,
                           last_sentences=2)
    ids = np.arange(len(corpus.actions))
    got = planner.last_context(2, **PlannerInputs.from_config(corpus, planner.config)(ids)).numpy()  # (N, 2, d)
    emb = np.asarray(corpus.embeddings, dtype=np.float32)
    position = corpus.sentence_position[ids]
    for back in (1, 2):  # slot back - 1 holds sentence i - back of the same article, zeros before the article starts
        expected = np.where((position >= back)[:, None], emb[np.maximum(ids - back, 0)], 0.0)
        np.testing.assert_allclose(got[:, back - 1], expected, atol=1e-3)


@pytest.mark.parametrize("context", ["paper", "causal"])
def test_last_sentences_starts_as_the_paper_planner_and_its_head_learns(synthetic_corpus, context):
    corpus = synthetic_corpus
    kwargs = {"context": context, "context_sentences": 3 if context == "paper" else None}
    plain = make_planner(corpus, **kwargs)
    last = make_planner(corpus, last_sentences=2, **kwargs)  # same seed: the same paper-planner weights
    ids = np.arange(len(corpus.actions))
    inputs = PlannerInputs.from_config(corpus, plain.config)(ids)
    torch.testing.assert_close(last(**inputs), plain(**inputs))  # zero-initialised: the paper planner at step 0
    assert set(last.state_dict()) - set(plain.state_dict()) == {"last_head.weight", "last_head.bias"}
    target = torch.from_numpy(corpus.actions[ids].astype(np.int64))
    loss = torch.nn.functional.cross_entropy(last.train()(**inputs), target)
    loss.backward()
    assert last.last_head.weight.grad.abs().sum() > 0  # the previous sentences' embeddings move the logits
    with pytest.raises(ValueError, match="last_sentences"):
        make_planner(corpus, kind="bigram", last_sentences=1)
    with pytest.raises(ValueError, match="last_sentences"):
        make_planner(corpus, horizon=2, last_sentences=1)


def test_bigram_alpha_shrinks_the_bigram_towards_the_unigram(synthetic_corpus):
    from planlm.eval.nap import bigram_table

    corpus = synthetic_corpus
    train = np.concatenate([np.arange(*corpus.sentence_range(int(a))) for a in corpus.article_ids("train")])
    sharp, smooth, flat = (bigram_table(corpus, train, alpha=a) for a in (1.0, 64.0, 1e9))
    for table in (sharp, smooth, flat):
        np.testing.assert_allclose(table.sum(1), 1.0)
    counts = np.bincount(corpus.actions[train], minlength=corpus.num_actions) + 1.0
    np.testing.assert_allclose(flat, np.tile(counts / counts.sum(), (len(flat), 1)), atol=1e-6)  # all unigram
    seen = sharp.max(1) > flat.max(1)  # rows the train bigram has evidence for
    assert seen.any() and (smooth.max(1)[seen] < sharp.max(1)[seen]).all()  # less sure, towards the unigram
    planner = fitted(corpus, bigram_prior=True, bigram_alpha=64.0)
    assert planner.config.bigram_alpha == 64.0
    assert "bigram_alpha" in PlannerConfig(num_actions=4, encoder_dim=8, bigram_alpha=0.0).problems()[0]
