"""Generation metrics over texts and action sequences (DESIGN.md section 1.7; the paper's Appendix B).

Pure functions: they take texts, features or action ids and return numbers. Producing the generations (planner in the
loop) and assigning actions to generated sentences is the generation stage's job; these functions only score.

- MAUVE (mauve-text) on *precomputed* features, so any featurizer works offline: :func:`lm_features` (a Hugging Face
  causal LM's last hidden state) or a sentence encoder's ``encode(texts)``. Texts are cut at 256 tokens first
  (:func:`cut_to_tokens`): planlm's choice, the paper's text gives no cut.
- ROUGE-2 F1 (rouge-score) of generated continuations against the true continuations of the same prefixes.
- Levenshtein distance (rapidfuzz) between the action sequences of generated and true continuations within their
  first 128 / 256 / 512 / 1024 tokens, normalised per 128 tokens: ``distance * 128 / n_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from planlm.errors import PlanlmError, raise_if_problems

EDIT_DISTANCE_LENGTHS = (128, 256, 512, 1024)
EDIT_DISTANCE_UNIT = 128  # tokens; the paper reports edit distance per 128 tokens
MAUVE_MAX_TOKENS = 256  # planlm's cut before featurizing for MAUVE (the paper's text gives none; mauve-text's: 1,024)


# --------------------------------------------------------------------------------------------------------- MAUVE


@dataclass
class MauveResult:
    mauve: float
    """Area under the divergence curve of P (real) vs Q (generated); 1 = indistinguishable."""
    num_buckets: int
    """k-means buckets that quantised the joint feature set (mauve-text's ``'auto'`` is n / 10)."""
    frontier_integral: float


def mauve_score(
    p_features: np.ndarray,
    q_features: np.ndarray,
    num_buckets: int | Literal["auto"] = "auto",
    scaling_factor: float = 5.0,
    seed: int = 25,
) -> MauveResult:
    """MAUVE between real-text features ``p_features (n, h)`` and generated-text features ``q_features (m, h)``.

    Args:
        p_features: features of the real texts, one row per text.
        q_features: features of the generated texts, same width.
        num_buckets: histogram size for the quantisation; ``"auto"`` is mauve-text's default (n / 10).
        scaling_factor: mauve-text's ``mauve_scaling_factor`` (its default 5).
        seed: seed of mauve-text's PCA + k-means quantisation.
    """
    import mauve

    p = np.asarray(p_features, dtype=np.float32)
    q = np.asarray(q_features, dtype=np.float32)
    problems = []
    for name, x in (("p_features", p), ("q_features", q)):
        if x.ndim != 2:
            problems.append(f"{name} must be 2-d (texts, features), got shape {x.shape}")
        elif len(x) < 2:
            problems.append(f"{name} needs at least 2 texts, got {len(x)}")
        elif not np.isfinite(x).all():
            problems.append(f"{name} holds NaN or inf values")
    if not problems and p.shape[1] != q.shape[1]:
        problems.append(f"feature widths differ: p {p.shape[1]} vs q {q.shape[1]}; featurize both with the same model")
    raise_if_problems(problems, "MAUVE")
    out = mauve.compute_mauve(
        p_features=p, q_features=q, num_buckets=num_buckets, mauve_scaling_factor=scaling_factor,
        seed=seed, verbose=False,
    )
    # min: for (near-)identical distributions mauve-text's area can round to 1 + 2e-16; MAUVE lies in [0, 1]
    return MauveResult(mauve=min(1.0, float(out.mauve)), num_buckets=int(out.num_buckets),
                       frontier_integral=float(out.frontier_integral))


def cut_to_tokens(texts: Sequence[str], tokenizer, max_tokens: int = MAUVE_MAX_TOKENS) -> list[str]:
    """Each text cut to its first ``max_tokens`` tokens of ``tokenizer`` (decoded back to text).

    Use it before a featurizer that tokenises differently (the sentence encoder), so that MAUVE compares the same
    amount of text the paper does.
    """
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens]))
    return out


def lm_features(
    model,
    tokenizer,
    texts: Sequence[str],
    max_tokens: int = MAUVE_MAX_TOKENS,
    pooling: Literal["last", "mean"] = "last",
    batch_size: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """Features ``(len(texts), hidden)`` float32 from a Hugging Face causal LM's last hidden state.

    ``pooling="last"`` takes the hidden state at the last (non-pad) token, which is what mauve-text's own featurizer
    does with GPT-2 large; ``"mean"`` averages over the text's tokens. Each text is truncated to its first
    ``max_tokens`` tokens. Padding is done here (right side, masked), so tokenizers without a pad token work.

    Args:
        model: a ``transformers`` causal LM (anything that accepts ``output_hidden_states=True``).
        tokenizer: its tokenizer.
        texts: the texts; an empty text gets the features of the tokenizer's BOS/EOS token.
        max_tokens: truncation length in tokens.
        pooling: ``"last"`` or ``"mean"``.
        batch_size: texts per forward pass.
        progress: show a progress bar.
    """
    import torch
    from tqdm.auto import tqdm

    if pooling not in ("last", "mean"):
        raise PlanlmError(f"pooling must be 'last' or 'mean', got {pooling!r}")
    fallback = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        encoded.append(ids if ids else [fallback if fallback is not None else 0])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats = []
    try:
        with torch.no_grad():
            for i in tqdm(range(0, len(encoded), batch_size), desc="featurize", disable=not progress):
                chunk = encoded[i : i + batch_size]
                width = max(len(ids) for ids in chunk)
                input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
                mask = torch.zeros(len(chunk), width, dtype=torch.long)
                for row, ids in enumerate(chunk):
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    mask[row, : len(ids)] = 1
                input_ids, mask = input_ids.to(device), mask.to(device)
                out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
                h = out.hidden_states[-1].float()  # (B, T, H)
                if pooling == "last":
                    last = mask.sum(1) - 1  # (B,)
                    pooled = h[torch.arange(len(chunk), device=device), last]  # (B, H)
                else:
                    m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
                    pooled = (h * m).sum(1) / m.sum(1)  # (B, H)
                feats.append(pooled.cpu().numpy())
    finally:
        model.train(was_training)
    if not feats:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return np.concatenate(feats).astype(np.float32)


# ------------------------------------------------------------------------------------------------------- ROUGE-2


def rouge2_f1(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = False) -> float:
    """Mean ROUGE-2 F1 (rouge-score) of each generated continuation against the true continuation of its prefix.

    Args:
        predictions: generated continuations.
        references: the true continuations, same order and count.
        use_stemmer: Porter-stem words before matching bigrams (rouge-score's option; off by default).
    """
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise PlanlmError(f"ROUGE-2: {len(predictions)} predictions but {len(references)} references; pair each "
                          "generated continuation with the true continuation of the same prefix")
    if not predictions:
        raise PlanlmError("ROUGE-2: no continuations to score")
    scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=use_stemmer)
    return float(np.mean([scorer.score(ref, pred)["rouge2"].fmeasure for pred, ref in zip(predictions, references)]))


# ------------------------------------------------------------------------------------------ action edit distance


@dataclass
class ActionTrace:
    """The writing actions of one continuation and where its sentences end, in LM tokens.

    ``sentence_ends[j]`` is the number of continuation tokens up to and including sentence j (an exclusive end
    index); ends are increasing and the last one is the continuation's length (a continuation cut mid-sentence ends
    its last sentence at the cut).
    """

    actions: list[int]
    sentence_ends: list[int]

    def __post_init__(self):
        self.actions = [int(a) for a in self.actions]
        self.sentence_ends = [int(e) for e in self.sentence_ends]
        if len(self.actions) != len(self.sentence_ends):
            raise PlanlmError(f"ActionTrace: {len(self.actions)} actions but {len(self.sentence_ends)} sentence ends; "
                              "give one end per sentence")
        if any(b <= a for a, b in zip([0] + self.sentence_ends, self.sentence_ends)):
            raise PlanlmError(f"ActionTrace: sentence ends must be positive and increasing, got {self.sentence_ends}")

    @property
    def num_tokens(self) -> int:
        return self.sentence_ends[-1] if self.sentence_ends else 0

    def actions_within(self, n_tokens: int) -> list[int]:
        """Actions of the sentences that START within the first ``n_tokens`` tokens.

        A sentence cut by the boundary counts: its action was chosen (generated text) or is the true sentence's
        (reference) before the boundary, and dropping it would hide a wrong plan step at the end.
        """
        starts = [0] + self.sentence_ends[:-1]
        return [a for a, s in zip(self.actions, starts) if s < n_tokens]


def action_edit_distance(generated: ActionTrace, true: ActionTrace, n_tokens: int) -> float:
    """Levenshtein distance between the action sequences within the first ``n_tokens`` tokens, per 128 tokens.

    The normalisation is exactly ``distance * 128 / n_tokens`` (``n_tokens`` is the prefix length, not the number of
    sentences), so values at different lengths are comparable: a distance of 3 within 256 tokens is 1.5.
    """
    from rapidfuzz.distance import Levenshtein

    distance = Levenshtein.distance(generated.actions_within(n_tokens), true.actions_within(n_tokens))
    return distance * EDIT_DISTANCE_UNIT / n_tokens


@dataclass
class EditDistances:
    mean: dict[str, float] = field(default_factory=dict)
    """Mean normalised edit distance per prefix length ("128": ..., ...), the value ``metrics.json`` stores."""
    pairs: dict[str, int] = field(default_factory=dict)
    """Pairs that entered each mean: both continuations at least that many tokens long."""


def edit_distances(
    generated: Sequence[ActionTrace],
    true: Sequence[ActionTrace],
    lengths: Sequence[int] = EDIT_DISTANCE_LENGTHS,
) -> EditDistances:
    """Mean per-128-token action edit distance between paired generated and true continuations, per length.

    A pair enters the mean at length n only when BOTH continuations have at least n tokens (a true article that ends
    after 300 tokens says nothing about 512); lengths no pair reaches are left out of the result.

    Args:
        generated: action traces of the generated continuations.
        true: action traces of the true continuations of the same prefixes, same order.
        lengths: prefix lengths in tokens (paper: 128, 256, 512, 1024).
    """
    if len(generated) != len(true):
        raise PlanlmError(f"edit distance: {len(generated)} generated but {len(true)} true continuations; pair them")
    if any(int(n) <= 0 for n in lengths):
        raise PlanlmError(f"edit distance: lengths must be positive, got {list(lengths)}")
    out = EditDistances()
    for n in lengths:
        values = [action_edit_distance(g, t, n) for g, t in zip(generated, true)
                  if g.num_tokens >= n and t.num_tokens >= n]
        if values:
            out.mean[str(n)] = float(np.mean(values))
            out.pairs[str(n)] = len(values)
    return out
