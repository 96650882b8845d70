"""Perplexity: hand computation from logits, the paper protocol against independent windows, strided = val loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import synthetic_prepared, tiny_lm, tiny_planner
from planlm.data.alignment import tokenize_articles
from planlm.data.planner_inputs import PlannerInputs
from planlm.data.windows import WindowDataset
from planlm.errors import PlanlmError
from planlm.eval.perplexity import perplexity
from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
from planlm.persist import load_planner

L = 16  # window length of these tests: articles span several windows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("ppl")
    corpus = synthetic_prepared(root / "prep", n_articles=10)
    lm_dir = tiny_lm(root / "lm", corpus.texts)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    planner = load_planner(tiny_planner(root / "planner", corpus)).eval()

    def build(selection="soft", with_planner=True, seed=0):
        torch.manual_seed(seed)
        cfg = PlannedLMConfig(num_actions=corpus.num_actions, action_dim=corpus.embedding_dim, selection=selection)
        lm = AutoModelForCausalLM.from_pretrained(lm_dir)
        return PlannedLM(lm, cfg, centroids=torch.from_numpy(corpus.centroids),
                         planner=planner if with_planner else None).eval()

    return {"corpus": corpus, "tokenizer": tokenizer, "build": build, "planner": planner}


def token_nlls_by_hand(model, input_ids, token_slot_sentences, weights_of) -> torch.Tensor:
    """NLL of tokens 1..T-1 of ONE window, from the full logits: -log softmax(logits[t-1])[token t]."""
    sentences = np.unique(token_slot_sentences)
    slot = torch.from_numpy(np.searchsorted(sentences, token_slot_sentences))[None]  # (1, T)
    with torch.no_grad(), model.adapters.conditioned(weights_of(sentences), slot):
        logits = model.lm(input_ids=torch.as_tensor(input_ids)[None]).logits[0]  # (T, V)
    logp = torch.log_softmax(logits.double(), dim=-1)  # (T, V)
    ids = torch.as_tensor(input_ids)
    return -logp[torch.arange(len(ids) - 1), ids[1:]]  # (T - 1,)


def planner_weights(setup, model):
    corpus = setup["corpus"]
    fn = PlannerInputs.from_config(corpus, setup["planner"].config)

    cache = {}

    def weights_of(sentences):
        missing = [s for s in sentences if s not in cache]
        if missing:
            with torch.no_grad():
                logits = model.planner(**fn(np.asarray(missing)))  # (n, K), one sentence at a time
            cache.update(zip(missing, torch.softmax(logits / model.config.temperature, dim=-1)))  # soft (DESIGN 1.5)
        return torch.stack([cache[s] for s in sentences])  # (N, K)

    return weights_of


def test_short_article_equals_hand_computation(setup):
    """One article shorter than the window: every token after the first scored once, from plain logits."""
    corpus, tok = setup["corpus"], setup["tokenizer"]
    model = setup["build"]()
    test_ids = corpus.article_ids("test")
    art = tokenize_articles(corpus, tok, test_ids[:1])[0]
    long_window = art.num_tokens + 8
    got = perplexity(model, corpus, tok, "test", "predicted", "strided", context_length=long_window,
                     max_articles=1, progress=False)
    nll = token_nlls_by_hand(model, art.input_ids, art.action_slot, planner_weights(setup, model))
    assert got.tokens == art.num_tokens - 1 == len(got.token_nll)
    assert got.nll_sum == pytest.approx(float(nll.sum()), rel=1e-5)
    assert got.ppl == pytest.approx(math.exp(float(nll.mean())), rel=1e-5)
    np.testing.assert_allclose(got.token_nll, nll.numpy(), rtol=1e-4, atol=1e-5)
    # each scored token is attributed to its own sentence
    np.testing.assert_array_equal(got.token_sentence, art.token_sentence[1:])


def test_paper_protocol_equals_independent_windows(setup):
    """Stride 1, last token of each window: every token t >= 1 scored from tokens max(0, t-L+1)..t-1."""
    corpus, tok = setup["corpus"], setup["tokenizer"]
    model = setup["build"]()
    weights_of = planner_weights(setup, model)
    arts = tokenize_articles(corpus, tok, corpus.article_ids("test")[:2])
    last = [arts[0].num_tokens, 2 * L + 1]  # all of the first article, the start of the second (max_tokens cut)
    got = perplexity(model, corpus, tok, "test", "predicted", "paper", context_length=L, max_articles=2,
                     max_tokens=sum(last) - 2, batch_size=7, progress=False)
    expected, sentences = [], []
    for art, end in zip(arts, last):
        assert art.num_tokens > 2 * L  # the protocol's both regimes are exercised
        for t in range(1, end):
            lo = max(0, t - L + 1)
            nll = token_nlls_by_hand(model, art.input_ids[lo : t + 1], art.action_slot[lo : t + 1], weights_of)
            expected.append(float(nll[-1]))
            sentences.append(art.token_sentence[t])
    assert got.tokens == len(expected) and got.protocol == "paper" and got.stride == 1
    np.testing.assert_allclose(got.token_nll, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got.token_sentence, sentences)
    assert got.nll_sum == pytest.approx(sum(expected), rel=1e-5)


def test_strided_matches_finetune_validation_scoring(setup):
    """stride = context - 1 scores exactly what the training loop's val_loss scores (same windows, same planner)."""
    from planlm.train.loop import PlannedLMModule
    from planlm.train.trainer import OptimConfig
    from planlm.train.recipe import RecipeConfig

    corpus, tok = setup["corpus"], setup["tokenizer"]
    model = setup["build"]()
    got = perplexity(model, corpus, tok, "val", "predicted", "strided", context_length=L, batch_size=4,
                     progress=False)
    module = PlannedLMModule(model, RecipeConfig(), OptimConfig(), total_steps=1).eval()  # as Lightning validates
    ds = WindowDataset.from_corpus(corpus, tok, "val", L, L - 1)
    fn = PlannerInputs.from_config(corpus, setup["planner"].config)
    collate = ds.collate_fn(fn, pad_token_id=tok.pad_token_id)
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ds), 3):
            batch = collate([ds[j] for j in range(i, min(i + 3, len(ds)))])
            k = int((batch["labels"][:, 1:] != -100).sum())
            total += float(module.step_losses(batch, train=False)["lm_loss"]) * k
            n += k
    assert got.tokens == n and got.stride == L - 1
    assert got.nll_sum == pytest.approx(total, rel=1e-5)
    paper = perplexity(model, corpus, tok, "val", "predicted", "paper", context_length=L, max_articles=1,
                       progress=False)
    first = perplexity(model, corpus, tok, "val", "predicted", "strided", context_length=L, max_articles=1,
                       progress=False)
    assert paper.tokens == first.tokens  # both score every token but the article's first
    np.testing.assert_allclose(paper.token_nll[: L - 1], first.token_nll[: L - 1], rtol=1e-5)  # same first window


def test_action_sources_and_caps(setup):
    corpus, tok = setup["corpus"], setup["tokenizer"]
    model = setup["build"](selection="hard")
    kw = dict(split="test", protocol="strided", context_length=L, progress=False)
    pred = perplexity(model, corpus, tok, actions="predicted", **kw)
    oracle = perplexity(model, corpus, tok, actions="oracle", **kw)
    fixed3 = perplexity(model, corpus, tok, actions="fixed", fixed_action=3, **kw)
    assert pred.tokens == oracle.tokens == fixed3.tokens
    assert len({round(pred.ppl, 6), round(oracle.ppl, 6), round(fixed3.ppl, 6)}) == 3
    # fixed = the oracle path with every sentence's action replaced: a hard model whose planner always says 3
    ids = np.arange(len(corpus.sentence_article))
    logits = torch.full((len(ids), corpus.num_actions), -1.0)
    logits[:, 3] = 1.0
    via_logits = perplexity(model, corpus, tok, actions="predicted", planner_logits=(ids, logits), **kw)
    assert via_logits.nll_sum == pytest.approx(fixed3.nll_sum, rel=1e-6)

    capped = perplexity(model, corpus, tok, actions="oracle", max_tokens=37, **kw)
    assert capped.tokens == 37
    np.testing.assert_allclose(capped.token_nll, oracle.token_nll[:37], rtol=1e-5)
    one = perplexity(model, corpus, tok, actions="oracle", max_articles=1, **kw)
    assert one.articles == 1 and one.tokens < oracle.tokens


def test_window_step_scores_every_nth_window_of_each_article(setup):
    """window_step N runs windows 0, N, 2N, ... of each article: the same per-token NLLs as the full run's on those
    windows, every article still present, and a step of 1 the full run itself."""
    from planlm.eval.perplexity import window_ordinals

    corpus, tok = setup["corpus"], setup["tokenizer"]
    model = setup["build"](selection="hard")
    kw = dict(split="test", actions="oracle", protocol="strided", context_length=L, progress=False)
    full = perplexity(model, corpus, tok, **kw)
    assert perplexity(model, corpus, tok, window_step=1, **kw).nll_sum == full.nll_sum
    ds = WindowDataset.from_corpus(corpus, tok, "test", L, L - 1, "new")
    counts = [int((ds[i]["labels"][1:] != -100).sum()) for i in range(len(ds))]
    per_window = np.split(full.token_nll, np.cumsum(counts)[:-1])
    for step in (2, 3):
        cut = perplexity(model, corpus, tok, window_step=step, **kw)
        kept = window_ordinals(ds.index[:, 0]) % step == 0
        assert cut.windows == int(kept.sum()) < full.windows and cut.articles == full.articles
        np.testing.assert_allclose(cut.token_nll, np.concatenate([w for w, k in zip(per_window, kept) if k]),
                                   rtol=1e-5)
    with pytest.raises(PlanlmError, match="window_step"):
        perplexity(model, corpus, tok, window_step=0, **kw)


def test_constant_selection_ignores_actions(setup):
    corpus, tok = setup["corpus"], setup["tokenizer"]
    model = setup["build"](selection="uniform", with_planner=False)
    kw = dict(split="test", protocol="strided", context_length=L, progress=False)
    a = perplexity(model, corpus, tok, actions="predicted", **kw)
    b = perplexity(model, corpus, tok, actions="oracle", **kw)
    assert a.nll_sum == b.nll_sum and math.isfinite(a.ppl)


def test_bad_arguments_are_listed_together(setup):
    corpus, tok = setup["corpus"], setup["tokenizer"]
    model = setup["build"](with_planner=False)
    with pytest.raises(PlanlmError) as e:
        perplexity(model, corpus, tok, split="dev", actions="best", protocol="paper", stride=4, max_tokens=0,
                   progress=False)
    msg = str(e.value)
    assert "split" in msg and "actions must be one of" in msg and "stride 1" in msg and "max_tokens" in msg
    with pytest.raises(PlanlmError, match="needs a planner"):
        perplexity(model, corpus, tok, actions="predicted", progress=False)


def test_bf16_autocast_scores_the_same_tokens_close_to_fp32(setup):
    """precision="bf16-mixed" runs the forward under bfloat16 autocast: the same tokens, each NLL within bf16's
    rounding of the fp32 one, and not bit-identical (the autocast took effect); the PerplexityConfig refuses others."""
    from planlm.eval.perplexity import PerplexityConfig

    corpus, tok = setup["corpus"], setup["tokenizer"]
    model = setup["build"](selection="soft")
    kw = dict(split="test", protocol="strided", context_length=L, progress=False, actions="predicted")
    fp32 = perplexity(model, corpus, tok, **kw)
    bf16 = perplexity(model, corpus, tok, precision="bf16-mixed", **kw)
    assert bf16.tokens == fp32.tokens
    np.testing.assert_array_equal(bf16.token_sentence, fp32.token_sentence)
    assert not np.array_equal(bf16.token_nll, fp32.token_nll)
    np.testing.assert_allclose(bf16.token_nll, fp32.token_nll, rtol=0.05, atol=0.05)
    assert bf16.ppl == pytest.approx(fp32.ppl, rel=0.01)
    assert any("ppl.precision must be one of 32-true, bf16-mixed" in p
               for p in PerplexityConfig(precision="fp8").problems())
