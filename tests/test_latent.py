"""Latent perplexity: a bigram critic over action ids, checked against a hand computation; delta chosen on val."""

import math

import pytest

from planlm.errors import PlanlmError
from planlm.eval.latent import BigramCritic, latent_perplexity


def test_bigram_perplexity_of_known_sequence():
    # K = 2; train transitions: <bos>->0 (x2), 0->1, 1-><eos>, 0-><eos>
    critic = BigramCritic.fit([[0, 1], [0]], num_actions=2, delta=1.0)
    # with delta 1 over the original code's vocabulary of K + 2 = 4 symbols (the actions, <bos>, <eos>):
    # P(0|<bos>) = (2+1)/(2+4), P(1|0) = (1+1)/(2+4), P(<eos>|1) = (1+1)/(1+4)
    expected = (3 / 6) * (2 / 6) * (2 / 5)
    assert critic.log_prob([0, 1]) == (pytest.approx(math.log(expected)), 3)
    assert critic.perplexity([[0, 1]]) == pytest.approx(expected ** (-1 / 3))  # 2 actions + <eos>
    # an unseen transition is smoothed, not infinite: P(1|<bos>) = 1/6, P(<eos>|1) = 2/5
    assert critic.perplexity([[1]]) == pytest.approx(((1 / 6) * (2 / 5)) ** (-1 / 2))
    # per-symbol perplexity pools log-probs over sequences
    both = critic.perplexity([[0, 1], [1]])
    assert both == pytest.approx((expected * (1 / 6) * (2 / 5)) ** (-1 / 5))


def test_bos_and_eos_only_at_real_boundaries():
    critic = BigramCritic.fit([[0, 1], [0]], num_actions=2, delta=1.0)
    # a sample cut at a length: <bos> a_1 a_2, no <eos>
    assert critic.log_prob([0, 1], eos=False) == (pytest.approx(math.log((3 / 6) * (2 / 6))), 2)
    # a text that starts mid-article but ends one: a_1 a_2 <eos>
    assert critic.log_prob([0, 1], bos=False) == (pytest.approx(math.log((2 / 6) * (2 / 5))), 2)
    assert critic.perplexity([[0, 1], [1]], eos=[False, True]) == pytest.approx(
        ((3 / 6) * (2 / 6) * (1 / 6) * (2 / 5)) ** (-1 / 4))


def test_small_delta_on_deterministic_chain():
    critic = BigramCritic.fit([[0, 1, 2]] * 10, num_actions=3, delta=1e-6)
    assert critic.perplexity([[0, 1, 2]]) == pytest.approx(1.0, abs=1e-4)


def test_delta_chosen_on_val_and_generated_scored():
    train = [[0, 1, 2, 3]] * 20 + [[0, 2, 1, 3]] * 5
    val = [[0, 1, 2, 3]] * 4 + [[0, 2, 1, 3]]
    like_real = [[0, 1, 2, 3]] * 5
    scrambled = [[3, 1, 0, 2]] * 5
    good = latent_perplexity(train, val, like_real, num_actions=4, real_test=val)
    bad = latent_perplexity(train, val, scrambled, num_actions=4)
    assert good.delta == bad.delta  # the choice depends on train and val only
    assert float(min(good.val_ppl, key=good.val_ppl.get)) == good.delta
    assert good.latent_ppl < good.real_test_ppl < bad.latent_ppl
    # val with an unseen transition pushes delta up from the smallest value
    noisy = latent_perplexity(train, val + [[3, 0]], like_real, num_actions=4)
    assert noisy.delta > 1e-4


def test_hmm_critic_prefers_real_like_sequences():
    train = [[0, 1, 2, 3] * 3] * 30
    val = [[0, 1, 2, 3] * 3] * 5
    good = latent_perplexity(train, val, [[0, 1, 2, 3] * 3] * 5, num_actions=5, critic="hmm", hmm_states=4)
    bad = latent_perplexity(train, val, [[3, 2, 4, 0] * 3] * 5, num_actions=5, critic="hmm", hmm_states=4)
    assert good.critic == "hmm" and math.isfinite(bad.latent_ppl)  # action 4 never seen: smoothed, still finite
    assert good.latent_ppl < bad.latent_ppl


def test_bad_input_lists_every_problem():
    with pytest.raises(PlanlmError) as e:
        latent_perplexity([[0, 7]], [], [[0]], num_actions=4, deltas=[0.0], critic="trigram")
    msg = str(e.value)
    for part in ("critic must be", "deltas must be", "no val action sequences", "train action ids must lie in 0..3"):
        assert part in msg
