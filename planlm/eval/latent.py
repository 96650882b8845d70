"""Latent perplexity: how plausible generated plans are, as judged by a model of real text's action sequences.

DESIGN.md section 1.7 / the paper's Appendix B. A critic is fitted on the action sequences of real (train) articles,
its smoothing is chosen on real val sequences, and it scores the action sequences of generated texts. Lower is
better: generated text whose writing actions follow each other as in real text.

- ``bigram`` (default; the critic of DESIGN.md 1.7 and, as planlm has it, of the authors' code; neither the paper's
  text nor planlm says which critic produced the paper's numbers): P(a_j | a_{j-1}) over a
  vocabulary of K + 2 symbols, the K actions plus <bos> and <eos>, with add-delta smoothing over that vocabulary:
  ``P(b | a) = (c(a, b) + delta) / (c(a) + delta * (K + 2))``. <bos> / <eos> mark real article boundaries only: a
  sequence that does not start (end) at an article's start (end) gets none (``bos`` / ``eos`` flags). Perplexity per
  predicted symbol: ``exp(-sum log P / number of predictions)``. delta is chosen on val from ``DELTA_GRID`` and
  reported.
- ``hmm`` (option; the paper's text describes an HMM critic, Deng et al. 2022): an hmmlearn ``CategoricalHMM`` over
  the K actions plus <eos>, its emission probabilities smoothed by add-delta (delta chosen on val the same way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from planlm.errors import raise_if_problems

# The original code's grid is not published with it; this is planlm's, log-spaced over four decades plus 0.05 / 0.5.
DELTA_GRID = (1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0)


@dataclass
class BigramCritic:
    """Bigram counts over actions; row K is <bos> (previous symbol), column K is <eos> (next symbol)."""

    num_actions: int
    counts: np.ndarray  # (K + 1, K + 1) float64
    delta: float = 1.0

    @classmethod
    def fit(cls, sequences: Sequence[Sequence[int]], num_actions: int, delta: float = 1.0) -> "BigramCritic":
        k = num_actions
        prev = [np.r_[k, np.asarray(seq, dtype=np.int64)] for seq in sequences]  # <bos> a_1 ... a_n
        nxt = [np.r_[np.asarray(seq, dtype=np.int64), k] for seq in sequences]  # a_1 ... a_n <eos>
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
        return cls.fit_pairs(cat(prev), cat(nxt), k, delta)

    @classmethod
    def fit_pairs(cls, prev: np.ndarray, nxt: np.ndarray, num_actions: int, delta: float = 1.0) -> "BigramCritic":
        """Counts of (previous symbol, next symbol) pairs; symbol K is <bos> as ``prev`` and <eos> as ``nxt``."""
        k = num_actions
        counts = np.zeros((k + 1, k + 1), dtype=np.float64)
        np.add.at(counts, (np.asarray(prev, np.int64), np.asarray(nxt, np.int64)), 1.0)
        return cls(num_actions=k, counts=counts, delta=delta)

    def next_action_probs(self, alpha: float = 1.0) -> np.ndarray:
        """P(next action | previous symbol) ``(K + 1, K)`` (row K = <bos>: an article's first sentence), shrunk
        towards the add-one unigram ``p`` of the next actions: ``(c(a, b) + alpha * p(b)) / (c(a) + alpha)``, which
        is the unigram for a previous action never seen (the next-action-prediction baseline; <eos> left out)."""
        k = self.num_actions
        c = self.counts[:, :k]  # (K + 1, K)
        uni = (c.sum(0) + 1.0) / (c.sum() + k)  # (K,)
        return (c + alpha * uni[None]) / (c.sum(1, keepdims=True) + alpha)

    def log_prob(self, sequence: Sequence[int], bos: bool = True, eos: bool = True) -> tuple[float, int]:
        """Natural-log probability of ``[<bos>] sequence [<eos>]`` and the number of predicted symbols."""
        k, d = self.num_actions, self.delta
        symbols = np.asarray(sequence, dtype=np.int64)
        prev, nxt = (np.r_[k, symbols], np.r_[symbols, k]) if bos else (symbols[:-1], symbols[1:])
        if bos and not eos:
            prev, nxt = prev[:-1], nxt[:-1]
        elif eos and not bos:
            prev, nxt = np.r_[prev, symbols[-1:]], np.r_[nxt, k]
        totals = self.counts.sum(1)  # (K + 1,)
        p = (self.counts[prev, nxt] + d) / (totals[prev] + d * (k + 2))  # vocabulary: K actions, <bos>, <eos>
        return float(np.log(p).sum()), len(nxt)

    def perplexity(self, sequences: Sequence[Sequence[int]], bos: bool = True, eos: bool | Sequence[bool] = True) -> float:
        """Perplexity per predicted symbol over all ``sequences`` together (``eos``: one flag, or one per sequence)."""
        ends = [eos] * len(sequences) if isinstance(eos, bool) else list(eos)
        scored = [self.log_prob(s, bos, e) for s, e in zip(sequences, ends) if len(s)]
        return math.exp(-sum(lp for lp, _ in scored) / max(1, sum(n for _, n in scored)))


@dataclass
class HMMCritic:
    """An hmmlearn ``CategoricalHMM`` over K actions + <eos> (symbol K); emissions smoothed by add-delta."""

    num_actions: int
    model: object
    delta: float = 1e-3

    @classmethod
    def fit(cls, sequences: Sequence[Sequence[int]], num_actions: int, num_states: int = 16, seed: int = 0,
            n_iter: int = 50) -> "HMMCritic":
        from hmmlearn.hmm import CategoricalHMM

        x, lengths = _with_eos(sequences, num_actions)
        model = CategoricalHMM(n_components=num_states, n_features=num_actions + 1, n_iter=n_iter,
                               random_state=seed)
        model.fit(x, lengths)
        return cls(num_actions=num_actions, model=model)

    def _smoothed(self):
        import copy

        model = copy.copy(self.model)
        e = self.model.emissionprob_  # (states, K + 1)
        # Without smoothing an action never seen in train has probability 0 and the perplexity is infinite.
        model.emissionprob_ = (e + self.delta) / (1.0 + self.delta * e.shape[1])
        return model

    def perplexity(self, sequences: Sequence[Sequence[int]]) -> float:
        x, lengths = _with_eos(sequences, self.num_actions)
        return math.exp(-self._smoothed().score(x, lengths) / len(x))


def _with_eos(sequences: Sequence[Sequence[int]], num_actions: int) -> tuple[np.ndarray, list[int]]:
    x = np.concatenate([np.r_[np.asarray(s, dtype=np.int64), num_actions] for s in sequences])
    return x.reshape(-1, 1), [len(s) + 1 for s in sequences]


@dataclass
class LatentPerplexity:
    latent_ppl: float
    """Perplexity per action (incl. <eos>) of the generated action sequences under the critic."""
    delta: float
    """Smoothing chosen on val (the one with the lowest val perplexity)."""
    critic: str
    val_ppl: dict[str, float] = field(default_factory=dict)
    """Val perplexity for every delta of the grid (keys are the deltas as strings)."""
    real_test_ppl: float | None = None
    """The same critic on real held-out sequences, when given: the value a perfect generator would get."""


def validate_latent(train, val, generated, num_actions: int, deltas: Sequence[float], critic: str) -> None:
    problems = []
    if critic not in ("bigram", "hmm"):
        problems.append(f"critic must be 'bigram' or 'hmm', got {critic!r}")
    if num_actions < 1:
        problems.append(f"num_actions must be >= 1, got {num_actions}")
    if not deltas or any(d <= 0 for d in deltas):
        problems.append(f"deltas must be a non-empty list of positive numbers, got {list(deltas)}")
    for name, seqs in (("train", train), ("val", val), ("generated", generated)):
        if not seqs:
            problems.append(f"no {name} action sequences")
            continue
        flat = [a for s in seqs for a in s]
        if flat and (min(flat) < 0 or max(flat) >= num_actions):
            problems.append(f"{name} action ids must lie in 0..{num_actions - 1}, got {min(flat)}..{max(flat)}")
    raise_if_problems(problems, "latent perplexity")


def latent_perplexity(
    train: Sequence[Sequence[int]],
    val: Sequence[Sequence[int]],
    generated: Sequence[Sequence[int]],
    num_actions: int,
    deltas: Sequence[float] = DELTA_GRID,
    critic: Literal["bigram", "hmm"] = "bigram",
    hmm_states: int = 16,
    real_test: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    generated_eos: bool | Sequence[bool] = True,
    real_eos: bool | Sequence[bool] = True,
) -> LatentPerplexity:
    """Fit a critic on real ``train`` action sequences, choose delta on ``val``, score ``generated``.

    Args:
        train: action sequences of real train articles (one list of action ids per article or continuation).
        val: action sequences of real val articles, for choosing delta.
        generated: action sequences of the generated texts to score.
        num_actions: K, the number of writing actions.
        deltas: the add-delta grid.
        critic: ``"bigram"`` (DESIGN.md 1.7's) or ``"hmm"`` (hmmlearn CategoricalHMM; the paper's text).
        hmm_states: hidden states of the HMM critic.
        real_test: optional real sequences scored by the same critic, as a reference point.
        seed: HMM initialisation seed.
        generated_eos: whether each generated sequence ends its text (EOS): False for samples cut at a length, which
            get no <eos> (bigram critic only; the HMM always scores <eos>).
        real_eos: the same for ``real_test``.
    """
    validate_latent(train, val, generated, num_actions, deltas, critic)
    if critic == "bigram":
        model = BigramCritic.fit(train, num_actions)
    else:
        model = HMMCritic.fit(train, num_actions, num_states=hmm_states, seed=seed)
    val_ppl = {}
    for d in deltas:
        model.delta = float(d)
        val_ppl[str(d)] = model.perplexity(val)
    best = min(deltas, key=lambda d: val_ppl[str(d)])
    model.delta = float(best)
    return LatentPerplexity(
        latent_ppl=model.perplexity(generated, eos=generated_eos) if critic == "bigram" else model.perplexity(generated),
        delta=float(best), critic=critic, val_ppl=val_ppl,
        real_test_ppl=(model.perplexity(real_test, eos=real_eos) if critic == "bigram" else model.perplexity(real_test))
        if real_test else None,
    )
