"""Generation metrics end to end on a tiny setup, and a perfect generator scoring perfectly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from generate_env import ENCODER, build_env
from planlm.data.encoders import load_encoder
from planlm.errors import PlanlmError
from planlm.eval.generator import Generation, PlannedGenerator
from planlm.eval.generation_metrics import (
    GenerationMetricsConfig,
    action_trace,
    generation_metrics,
    plan_matching,
    sentence_prefixes,
)

SMALL = dict(continuations=3, unconditional=3, unconditional_tokens=40, prefix_tokens=16, lengths=[8, 16, 32])


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    env = build_env(tmp_path_factory.mktemp("genm"), n_articles=20)  # 4 test articles
    return PlannedGenerator(env["model"], env["tokenizer"], env["corpus"], load_encoder(ENCODER))


class Parrot(PlannedGenerator):
    """A perfect generator: continues each real prefix with its true continuation (cut to the asked length)."""

    def __init__(self, base: PlannedGenerator, truth: dict[str, str]):
        self.__dict__.update(base.__dict__)
        self.truth = truth

    def generate(self, prompts, plans=None, sampling=None, after_plan="stop", use_cache=True) -> list[Generation]:
        from planlm.eval.generation_metrics import _cut

        return [Generation(prompt=p, text=_cut(self.truth.get(p, "The Moon."), self.tokenizer, sampling.max_new_tokens),
                           sentences=[], token_ids=[], prompt_tokens=0, stop_reason="length") for p in prompts]


def test_end_to_end_on_a_tiny_setup(generator):
    m = generation_metrics(generator, GenerationMetricsConfig(**SMALL), progress=False)
    assert 0.0 <= m.mauve <= 1.0 and 0.0 <= m.rouge2 <= 1.0
    assert m.rouge2 == pytest.approx(np.mean(list(m.rouge2_by_length.values())))
    assert set(m.edit_distance) <= {"8", "16", "32"} and "8" in m.edit_distance
    assert m.edit_distance_mean == pytest.approx(np.mean(list(m.edit_distance.values())))
    assert all(v >= 0 for v in m.edit_distance.values()) and 1 <= m.edit_distance_pairs["8"] <= 3
    assert math.isfinite(m.latent_ppl) and m.latent_ppl > 1 and m.latent_delta > 0
    assert m.mauve_protocol["featurizer"] == str(generator.model.config.base_lm)  # a fixed model, not the planned LM
    assert m.mauve_protocol["generated"] == 3 and m.latent_ppl_protocol["critic"] == "bigram"
    assert m.rouge2_protocol["lengths"] == [8, 16, 32]
    assert m.by_first_action["right"]["texts"] + m.by_first_action["wrong"]["texts"] == 3 * 3
    # Figure 4's plan matching: over the finished generated sentences of both kinds of text
    counted = m.plan_matching_protocol["sentences"]
    assert set(counted) >= {"unconditional", "continuation"}
    assert (m.plan_matching is None) == (counted["unconditional"] + counted["continuation"] == 0)
    assert m.plan_matching is None or 0.0 <= m.plan_matching <= 1.0
    kinds = [s["kind"] for s in m.samples]
    assert kinds == ["unconditional"] * 3 + ["continuation"] * 9
    for s in m.samples:
        assert len(s["actions"]["actions"]) == len(s["actions"]["sentence_ends"])
        assert all(0 <= a < generator.corpus.num_actions for a in s["actions"]["actions"])
    # prefixes are real test articles' first sentences; the true text is what follows them
    test_texts = [generator.corpus.texts[a] for a in generator.corpus.article_ids("test")]
    spans = [generator.corpus.sentence_end[slice(*generator.corpus.sentence_range(int(a)))]
             for a in generator.corpus.article_ids("test")]
    for s in m.samples[3:]:
        i = next(i for i, t in enumerate(test_texts) if t.startswith(s["prefix"] + s["true"]))
        assert len(s["prefix"]) in spans[i]  # the prefix ends where a sentence ends


def test_plan_matching_compares_each_sentence_s_written_action_with_its_conditioning_action(generator):
    from planlm.eval.generator import Sentence

    texts = ["The Moon is Earth's only natural satellite.", "Apollo 11 landed the first humans on the Moon in 1969.",
             "Water ice has been found in permanently shadowed craters."]
    written = [int(a) for a in generator.nearest_actions(generator.embed(texts))]
    other = [(a + 1) % generator.corpus.num_actions for a in written]

    def text_with(actions, **last):
        sentences = [Sentence(t, a, "planner") for t, a in zip(texts, actions)]
        sentences[-1].__dict__.update(last)
        return Generation(prompt="", text=" ".join(texts), sentences=sentences, token_ids=[], prompt_tokens=0)

    right, _ = plan_matching({"unconditional": [text_with(written)]}, generator)
    assert right == 1.0
    half, counts = plan_matching({"unconditional": [text_with(written)], "continuation": [text_with(other)]},
                                 generator)
    assert half == 0.5 and counts["unconditional"] == counts["continuation"] == 3
    assert counts["accuracy_by_kind"] == {"unconditional": 1.0, "continuation": 0.0}
    # the sentence a text stopped inside, a prompt sentence and a constant model's sentences do not count
    _, counts = plan_matching({"unconditional": [text_with(written, finished=False)]}, generator)
    assert counts["unconditional"] == 2
    _, counts = plan_matching({"unconditional": [text_with(written, generated=False, source="prompt")]}, generator)
    assert counts["unconditional"] == 2
    none, counts = plan_matching({"unconditional": [text_with([None] * 3)]}, generator)
    assert none is None and counts["unconditional"] == 0


def test_a_perfect_generator_scores_perfectly(generator):
    cfg = GenerationMetricsConfig(**{**SMALL, "featurizer": "encoder"})
    pairs = sentence_prefixes(generator.corpus, generator.tokenizer, 3, cfg.prefix_tokens, max(cfg.lengths))
    m = generation_metrics(Parrot(generator, {p["prefix"]: p["true"] for p in pairs}), cfg, progress=False)
    # (MAUVE is not asserted: mauve-text gives identical sets of 3 texts 0.75 or 1 depending on its quantisation)
    assert m.rouge2 == pytest.approx(1.0)
    assert all(v == 0.0 for v in m.edit_distance.values())


def test_action_trace_of_a_known_text(generator):
    text = "The Moon is Earth's only natural satellite. Its gravitational influence produces the ocean tides."
    trace = action_trace(text, generator)
    ids = generator.tokenizer(text, add_special_tokens=False)["input_ids"]
    first = generator.tokenizer("The Moon is Earth's only natural satellite.", add_special_tokens=False)["input_ids"]
    assert trace.sentence_ends == [len(first), len(ids)]
    emb = load_encoder(ENCODER).encode([text[:43], text[44:]]).astype(np.float16).astype(np.float32)
    nearest = ((emb[:, None] - generator.corpus.centroids[None]) ** 2).sum(-1).argmin(1)
    assert trace.actions == [int(a) for a in nearest]


def test_bad_config_is_listed(generator):
    bad = GenerationMetricsConfig(continuations=0, unconditional=1, featurizer="", critic="lstm", lengths=[],
                                  preset="huge")
    with pytest.raises(PlanlmError) as e:
        generation_metrics(generator, bad, progress=False)
    msg = str(e.value)
    for word in ("continuations", "unconditional", "featurizer", "critic", "lengths", "preset"):
        assert word in msg
    paper = GenerationMetricsConfig(preset="paper").resolved()
    assert (paper.unconditional, paper.unconditional_tokens, paper.lengths) == (5000, 1024, [128, 256, 512, 1024])
    assert torch.get_num_threads() == 1


def test_a_test_split_too_short_is_topped_up_from_val(generator):
    """The only test article is too short for the continuation length: val articles supply its prefixes (recorded
    per length), and a length no article can supply within the LM's positions is skipped with the reason."""
    import copy
    import dataclasses

    corpus, tok = generator.corpus, generator.tokenizer
    n_tok = np.array([len(tok(t, add_special_tokens=False)["input_ids"]) for t in corpus.texts])
    order = np.argsort(n_tok)
    split = np.full(len(n_tok), "train", dtype=object)
    split[order[0]], split[order[-2:]] = "test", "val"  # the shortest article is the whole test split
    short = copy.copy(generator)
    short.corpus = dataclasses.replace(corpus, article_split=split.astype(str))
    lo, _ = corpus.sentence_range(int(order[0]))
    n = int(n_tok[order[0]]) - len(tok(corpus.texts[order[0]][: int(corpus.sentence_end[lo])],
                                         add_special_tokens=False)["input_ids"]) + 1  # one more than it has left
    too_long = generator.max_positions + 1
    cfg = GenerationMetricsConfig(continuations=2, unconditional=2, unconditional_tokens=16, prefix_tokens=8,
                                  lengths=[n, too_long])
    m = generation_metrics(short, cfg, progress=False)
    for protocol in (m.rouge2_protocol, m.edit_distance_protocol):
        assert protocol["lengths"] == [n] and protocol["from_split"] == {str(n): {"test": 0, "val": 2}}
        assert "positions" in protocol["skipped"][str(too_long)]
    assert m.rouge2 is not None and set(m.rouge2_by_length) == {str(n)}
    assert set(m.edit_distance) == {str(n)} and m.edit_distance_mean == m.edit_distance[str(n)]
    val_texts = [corpus.texts[i] for i in order[-2:]]
    continued = [s for s in m.samples if s["kind"] == "continuation"]
    assert len(continued) == 2 and all(s["split"] == "val" for s in continued)
    assert all(any(t.startswith(s["prefix"] + s["true"]) for t in val_texts) for s in continued)
