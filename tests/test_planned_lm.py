"""PlannedLM end to end on a prepared corpus: forward/backward, no future leak, save/load (three architectures)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import ARCHS, corpus_batch, handmade_prepared, model_inputs, random_lm, spans_of, tiny_tokenizer

from planlm.data.alignment import sentence_token_counts
from planlm.data.planner_inputs import PlannerInputs
from planlm.data.windows import WindowDataset, collate_windows
from planlm.errors import PlanlmError
from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
from planlm.models.planner import Planner, PlannerConfig
from planlm.persist import LM_SUBDIR, load_planned_lm, save_planned_lm


def make_planner(corpus, seed: int = 0) -> Planner:
    torch.manual_seed(seed)
    cfg = PlannerConfig(num_actions=corpus.num_actions, encoder_dim=corpus.embedding_dim, d_model=16, n_heads=2,
                        ff=32, context="paper", context_tokens=32)
    return Planner(cfg, centroids=torch.from_numpy(corpus.centroids)).eval()


def make_model(arch, corpus, planner=True, **cfg) -> PlannedLM:
    config = PlannedLMConfig(num_actions=corpus.num_actions, action_dim=corpus.embedding_dim, **cfg)
    return PlannedLM(random_lm(arch), config, centroids=torch.from_numpy(corpus.centroids),
                     planner=make_planner(corpus) if planner else None)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_trains_adapters_and_planner_not_the_lm(arch, synthetic_corpus):
    batch = corpus_batch(synthetic_corpus)
    model = make_model(arch, synthetic_corpus).train()
    out = model(**model_inputs(batch))
    N = len(batch["sentence_ids"])
    assert out.logits.shape == (*batch["input_ids"].shape, 300) and out.planner_logits.shape == (N, 8)
    assert out.action_weights.shape == (N, 8) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in model.lm.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapters.parameters())
    # soft selection: the LM loss trains the planner too (exact gradient)
    assert model.planner.policy_head.weight.grad.abs().sum() > 0
    H = 48 if arch == "llama" else 32
    expected = 2 * (8 * 16 + 16 * H + H)  # 2 conditioned layers x (E_A: K x d, W_A: d x H, bias H)
    assert model.adapter_parameters() == expected

    model.zero_grad()
    model.set_train_lm(True)
    model(**model_inputs(batch)).loss.backward()
    assert all(p.grad is not None for p in model.lm.parameters() if p.requires_grad)


def test_fixed_needs_no_planner_and_errors_are_clear(synthetic_corpus):
    batch = corpus_batch(synthetic_corpus, n=2)
    model = make_model("gpt2", synthetic_corpus, planner=False, selection="fixed", fixed_action=2)
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert out.planner_logits is None and out.action_weights.shape == (1, 8)
    model.config.selection = "soft"
    with pytest.raises(PlanlmError, match="token_slot"):
        model(batch["input_ids"])
    with pytest.raises(PlanlmError, match="no planner"):
        model(batch["input_ids"], token_slot=batch["token_slot"], planner_inputs=batch["planner_inputs"])
    model.lm.gradient_checkpointing_enable()
    with pytest.raises(PlanlmError, match="gradient checkpointing"):
        model.train()(batch["input_ids"], token_slot=batch["token_slot"], oracle_actions=batch["oracle_actions"])


# ---- no leak of future sentences -----------------------------------------------------------------------------------
SENTS = [
    "The Moon is Earth's only natural satellite.",
    "It orbits at an average distance of 384,400 km.",
    "Its surface is covered in lunar dust and marked by craters.",
    "Apollo 11 landed the first humans on the Moon in 1969.",
    "Water ice has been found in permanently shadowed craters.",
]
CHANGED = "Twelve astronauts walked on its surface between 1969 and 1972, and left."


class LeakyPlanner(torch.nn.Module):
    """A deliberately wrong planner that reads the target sentence itself: the leak test must catch it."""

    def __init__(self, dim, k):
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(dim, k)

    def forward(self, target_embeddings):
        return self.head(target_embeddings) * 10


def two_versions(tmp_path):
    """The same article with sentence 3 replaced (text and embedding)."""
    out = []
    for v, s3 in enumerate((SENTS[3], CHANGED)):
        sents = SENTS[:3] + [s3] + SENTS[4:]
        text = " ".join(sents)
        c = handmade_prepared(tmp_path / f"v{v}", [(text, spans_of(text, sents))], num_actions=4)
        emb = np.array(c.embeddings, dtype=np.float32)
        emb = np.random.default_rng(1).standard_normal(emb.shape).astype(np.float32)
        if v:
            emb[3] = np.random.default_rng(2).standard_normal(emb.shape[1])
        c.embeddings = emb
        out.append(c)
    return out


def conditioned_logits(corpus, model, planner_inputs_fn):
    tok = tiny_tokenizer()
    ds = WindowDataset.from_corpus(corpus, tok, "train", context_length=256, stride=255)
    assert len(ds) == 1
    batch = collate_windows([ds[0]], planner_inputs_fn)
    with torch.no_grad():
        out = model(batch["input_ids"], token_slot=batch["token_slot"], planner_inputs=batch["planner_inputs"])
    token_sentence = ds.articles[0].token_sentence
    return out.logits[0], token_sentence


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("context", ["paper", "causal"])
def test_no_leak_of_future_sentences(arch, context, tmp_path):
    versions = two_versions(tmp_path)
    torch.manual_seed(0)
    planner = Planner(PlannerConfig(num_actions=4, encoder_dim=8, d_model=8, n_heads=2, ff=16, context=context,
                                    context_tokens=16)).eval()
    model = PlannedLM(random_lm(arch), PlannedLMConfig(num_actions=4, action_dim=8, selection="soft"), planner=planner)
    results = []
    for c in versions:
        counts = sentence_token_counts(c, tiny_tokenizer(), progress=False)
        results.append(conditioned_logits(c, model, PlannerInputs(c, context, 16, token_counts=counts)))
    (a, sa), (b, sb) = results
    upto = int((sa <= 2).sum())  # tokens of sentences 0..2, identical in both versions
    assert np.array_equal(sa[:upto], sb[:upto])
    assert torch.equal(a[:upto], b[:upto])  # the last token of sentence 2 carries action 3, predicted from 0..2
    n = min(len(a), len(b))
    assert not torch.allclose(a[upto:n], b[upto:n])  # sentence 3's own tokens did change

    # A planner that reads the target sentence leaks: the test above would catch it.
    leaky = PlannedLM(random_lm(arch), PlannedLMConfig(num_actions=4, action_dim=8), planner=LeakyPlanner(8, 4))
    leaked = [
        conditioned_logits(c, leaky, lambda ids, c=c: {"target_embeddings": torch.from_numpy(c.embeddings[ids])})[0]
        for c in versions
    ]
    assert torch.equal(leaked[0][: upto - 1], leaked[1][: upto - 1])
    assert not torch.allclose(leaked[0][upto - 1], leaked[1][upto - 1])


# ---- save / load ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(arch, synthetic_corpus, tmp_path):
    batch = corpus_batch(synthetic_corpus, n=2)
    base_dir = tmp_path / "base"
    model = make_model(arch, synthetic_corpus, base_lm=str(base_dir), gate=True)
    model.lm.save_pretrained(base_dir)
    with torch.no_grad():  # move off the zero gate and the initial values so that the round trip is not trivial
        for p in model.adapters.parameters():
            p.add_(0.1 * torch.randn_like(p))
        want = model(**model_inputs(batch)).logits
    save_planned_lm(model, tmp_path / "planned")
    assert not (tmp_path / "planned" / LM_SUBDIR).exists()  # frozen LM: only a reference to it
    loaded = load_planned_lm(tmp_path / "planned")
    assert loaded.config == model.config and isinstance(loaded.planner, Planner)
    with torch.no_grad():
        got = loaded(**model_inputs(batch)).logits
    assert torch.equal(got, want)


def test_trained_lm_is_saved_in_the_folder(synthetic_corpus, tmp_path):
    batch = corpus_batch(synthetic_corpus, n=2)
    model = make_model("gpt2", synthetic_corpus, planner=False, train_lm=True, base_lm="gpt2", selection="hard")
    with torch.no_grad():
        model.lm.transformer.wte.weight.add_(1.0)  # "trained" LM weights that the hub's gpt2 would not have
        want = model(**model_inputs(batch)).logits
    save_planned_lm(model, tmp_path / "planned")
    assert (tmp_path / "planned" / LM_SUBDIR / "config.json").exists()
    loaded = load_planned_lm(tmp_path / "planned")
    assert loaded.planner is None and loaded.config.train_lm
    assert torch.equal(loaded(**model_inputs(batch)).logits, want)


def test_load_errors(synthetic_corpus, tmp_path):
    with pytest.raises(PlanlmError, match="holds no planned LM"):
        load_planned_lm(tmp_path)
    model = make_model("gpt2", synthetic_corpus, planner=False, base_lm=str(tmp_path / "missing-lm"))
    save_planned_lm(model, tmp_path / "p")
    with pytest.raises(PlanlmError, match="cannot load the base LM"):
        load_planned_lm(tmp_path / "p")
    with pytest.raises(PlanlmError, match="trained on a 'gpt2' LM"):
        load_planned_lm(tmp_path / "p", lm=random_lm("llama"))
    # the recorded LM can be given as an object
    assert load_planned_lm(tmp_path / "p", lm=random_lm("gpt2")).adapters.layers == [2, 3]
