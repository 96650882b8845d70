"""Generation metrics end to end on a tiny setup, and a perfect generator scoring perfectly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from generate_env import ENCODER, build_env
from planlm.data.encoders import load_encoder
from planlm.errors import PlanlmError
from planlm.eval.generate import Generation, PlannedGenerator
from planlm.eval.generation_metrics import GenerationMetricsConfig, action_trace, generation_metrics, real_prefixes

SMALL = dict(continuations=3, unconditional=2, prefix_tokens=16, max_new_tokens=40, edit_lengths=[8, 16, 32])


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    env = build_env(tmp_path_factory.mktemp("genm"), n_articles=20)  # 4 test articles
    return PlannedGenerator(env["model"], env["tokenizer"], env["corpus"], load_encoder(ENCODER))


class Parrot(PlannedGenerator):
    """A perfect generator: continues each real prefix with its true continuation."""

    def __init__(self, base: PlannedGenerator, truth: dict[str, str]):
        self.__dict__.update(base.__dict__)
        self.truth = truth

    def generate_one(self, prompt="", plan=None, sampling=None, after_plan="stop", use_cache=True) -> Generation:
        return Generation(prompt=prompt, text=self.truth[prompt], sentences=[], token_ids=[], prompt_tokens=0)


def test_end_to_end_on_a_tiny_setup(generator):
    m = generation_metrics(generator, GenerationMetricsConfig(**SMALL), progress=False)
    assert 0.0 <= m.mauve <= 1.0 and m.mauve_unconditional is not None and 0.0 <= m.rouge2 <= 1.0
    assert set(m.edit_distance) <= {"8", "16", "32"} and "8" in m.edit_distance
    assert all(v >= 0 for v in m.edit_distance.values()) and m.edit_distance_pairs["8"] == 3
    assert math.isfinite(m.latent_ppl) and m.latent_ppl > 1 and m.latent_delta > 0
    kinds = [s["kind"] for s in m.samples]
    assert kinds == ["continuation"] * 3 + ["unconditional"] * 2
    for s in m.samples:
        assert len(s["actions"]["actions"]) == len(s["actions"]["sentence_ends"])
        assert all(0 <= a < generator.corpus.num_actions for a in s["actions"]["actions"])
    # continuations are of real prefixes of test articles, the true text is what follows them
    test_texts = [generator.corpus.texts[a] for a in generator.corpus.article_ids("test")]
    for s in m.samples[:3]:
        assert any(t.startswith(s["prefix"] + s["true"]) for t in test_texts)


def test_a_perfect_generator_scores_perfectly(generator):
    cfg = GenerationMetricsConfig(**{**SMALL, "unconditional": 0, "featurizer": "encoder"})
    pairs = real_prefixes(generator.corpus, generator.tokenizer, 3, cfg.prefix_tokens, cfg.max_new_tokens)
    m = generation_metrics(Parrot(generator, dict(pairs)), cfg, progress=False)
    # (MAUVE is not asserted: mauve-text gives identical sets of 3 texts 0.75 or 1 depending on its quantisation)
    assert m.rouge2 == pytest.approx(1.0)
    assert all(v == 0.0 for v in m.edit_distance.values())
    assert m.latent_ppl == pytest.approx(m.latent_ppl_real)  # scored exactly like real text


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
    bad = GenerationMetricsConfig(continuations=1, unconditional=1, featurizer="gpt", critic="lstm", edit_lengths=[])
    with pytest.raises(PlanlmError) as e:
        generation_metrics(generator, bad, progress=False)
    msg = str(e.value)
    for word in ("continuations", "unconditional", "featurizer", "critic", "edit_lengths"):
        assert word in msg
    with pytest.raises(PlanlmError, match="prefix_tokens"):
        generation_metrics(generator, GenerationMetricsConfig(**{**SMALL, "prefix_tokens": 10_000}), progress=False)
    assert torch.get_num_threads() == 1
