"""Generation metrics end to end (DESIGN.md 1.7; the paper's Appendix B), on top of :mod:`planlm.eval.metrics`,
:mod:`planlm.eval.latent` and planner-in-the-loop generation (:mod:`planlm.eval.generate`).

Protocol:

1. **Samples.** ``unconditional`` texts generated from the BOS token, and ``continuations`` of real prefixes: the
   first ``prefix_tokens`` tokens of test articles (the first test articles long enough, in article order), each
   continued for ``max_new_tokens`` tokens with the planner in the loop. The true continuation is the article's next
   ``max_new_tokens`` tokens (shorter when the article ends). Paper: 1024-token continuations; the CPU defaults are
   small. Prefix + continuation must fit the LM's positions (GPT-2: 1024).
2. **MAUVE** (mauve-text) of the generated continuations against the true ones (``mauve``) and, when there are
   unconditional samples, of those against the true article beginnings of the same length (``mauve_unconditional``).
   Features: the LM's last hidden state (``featurizer="lm"``, the planned LM's base LM without adapters) or the
   corpus's sentence encoder (``"encoder"``); texts cut at 256 LM tokens either way.
3. **ROUGE-2 F1** of each generated continuation against the true continuation of its prefix (mean).
4. **Action sequences.** Every text (generated or true) is split into sentences with the corpus's splitter, each
   sentence embedded with the corpus's encoder and given its nearest centroid -- the same procedure for both sides,
   so the comparison does not depend on the planner's own choices. Sentence ends are counted in LM tokens of the
   continuation. Edit distance (rapidfuzz Levenshtein) at 128/256/512/1024 tokens, normalised per 128 tokens.
5. **Latent perplexity**: a bigram critic (or an HMM, ``critic="hmm"``) fitted on the oracle action sequences of the
   train articles, delta chosen on the val articles, scoring the action sequences of all generated texts
   (continuations and unconditional samples); the true continuations are scored too (``latent_ppl_real``: what a
   perfect generator would get).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from planlm.errors import PlanlmError, raise_if_problems
from planlm.eval.metrics import EDIT_DISTANCE_LENGTHS, MAUVE_MAX_TOKENS, ActionTrace

FEATURIZERS = ("lm", "encoder")


@dataclass
class GenerationMetricsConfig:
    """What to generate and how to score it (the paper's Appendix B; small CPU defaults)."""

    continuations: int = 8
    """Test-article prefixes to continue."""
    unconditional: int = 8
    """Texts generated from the BOS token (0 = none)."""
    prefix_tokens: int = 64
    """Tokens of each real prefix."""
    max_new_tokens: int = 256
    """Tokens per generated text and per true continuation (paper: 1024)."""
    temperature: float = 1.0
    """Token sampling temperature (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 = pure sampling)."""
    seed: int = 0
    """Seed of sample i is seed + i."""
    featurizer: Literal["lm", "encoder"] = "lm"
    """MAUVE features: lm (the LM's last hidden state) | encoder (the corpus's sentence encoder)."""
    mauve_max_tokens: int = MAUVE_MAX_TOKENS
    """Texts are cut at this many LM tokens before featurizing (paper: 256)."""
    edit_lengths: list[int] = field(default_factory=lambda: list(EDIT_DISTANCE_LENGTHS))
    """Prefix lengths in tokens for the action edit distance (paper: 128, 256, 512, 1024)."""
    critic: Literal["bigram", "hmm"] = "bigram"
    """Latent-perplexity critic: bigram (paper) | hmm."""

    def problems(self) -> list[str]:
        out = []
        if self.continuations < 2:
            out.append(f"continuations must be at least 2 (MAUVE compares sets; got {self.continuations})")
        if self.unconditional < 0 or self.unconditional == 1:
            out.append(f"unconditional must be 0 or at least 2 (got {self.unconditional})")
        if self.prefix_tokens < 1:
            out.append(f"prefix_tokens must be positive (got {self.prefix_tokens})")
        if self.max_new_tokens < 1:
            out.append(f"max_new_tokens must be positive (got {self.max_new_tokens})")
        if self.featurizer not in FEATURIZERS:
            out.append(f"featurizer must be one of {', '.join(FEATURIZERS)} (got {self.featurizer!r})")
        if self.critic not in ("bigram", "hmm"):
            out.append(f"critic must be bigram or hmm (got {self.critic!r})")
        if not self.edit_lengths or any(n < 1 for n in self.edit_lengths):
            out.append(f"edit_lengths must be positive token counts (got {self.edit_lengths})")
        return out


@dataclass
class GenerationMetrics:
    """The numbers (the keys ``metrics.json`` stores) and the texts they were computed on."""

    mauve: float
    rouge2: float
    edit_distance: dict[str, float]
    edit_distance_pairs: dict[str, int]
    latent_ppl: float
    latent_delta: float
    latent_ppl_real: float | None
    mauve_unconditional: float | None = None
    samples: list[dict] = field(default_factory=list, repr=False)
    """One dict per text: kind (continuation | unconditional), prefix, generated, true, actions, true_actions."""

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("samples")
        return d


def action_trace(text: str, generator) -> ActionTrace:
    """Sentences of ``text`` -> their nearest-centroid actions and token ends (LM tokens of ``text``)."""
    from planlm.data.alignment import align_tokens

    spans = generator.split(text)
    if not spans:
        return ActionTrace([], [])
    enc = generator.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    n_tokens = len(enc["input_ids"])
    if n_tokens == 0:
        return ActionTrace([], [])
    starts, ends = np.array([s for s, _ in spans]), np.array([e for _, e in spans])
    _, _, first_token = align_tokens(np.asarray(enc["offset_mapping"]), starts, ends, 0)
    token_ends = np.r_[first_token[1:], n_tokens]  # tokens up to and including sentence j
    actions = generator.nearest_actions(generator.embed([text[s:e] for s, e in spans]))
    keep = np.r_[True, np.diff(token_ends) > 0] & (token_ends > 0)  # a sentence without tokens of its own
    return ActionTrace([int(a) for a in actions[keep]], [int(e) for e in token_ends[keep]])


def real_prefixes(corpus, tokenizer, count: int, prefix_tokens: int, new_tokens: int) -> list[tuple[str, str]]:
    """``(prefix, true continuation)`` texts of the first ``count`` test articles longer than ``prefix_tokens``."""
    out = []
    for a in corpus.article_ids("test"):
        text = corpus.texts[int(a)]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= prefix_tokens:
            continue
        cut = offsets[prefix_tokens][0]  # the prefix ends where its next token starts (GPT-2: before its space)
        end = offsets[min(prefix_tokens + new_tokens, len(offsets)) - 1][1]
        out.append((text[:cut], text[cut:end]))
        if len(out) == count:
            break
    return out


def article_action_sequences(corpus, split: str) -> list[list[int]]:
    """Oracle action sequence of every article of a split (the critic's real data)."""
    seqs = []
    for a in corpus.article_ids(split):
        lo, hi = corpus.sentence_range(int(a))
        if hi > lo:
            seqs.append([int(x) for x in corpus.actions[lo:hi]])
    return seqs


def featurize(texts: list[str], generator, featurizer: str, max_tokens: int, progress: bool) -> np.ndarray:
    from planlm.eval.metrics import cut_to_tokens, lm_features

    if featurizer == "lm":
        # The base LM's own states: outside `adapters.conditioned(...)` the hooks add nothing.
        return lm_features(generator.model.lm, generator.tokenizer, texts, max_tokens=max_tokens, progress=progress)
    return generator.encoder.encode(cut_to_tokens(texts, generator.tokenizer, max_tokens))


def generation_metrics(generator, config: GenerationMetricsConfig = GenerationMetricsConfig(),
                       progress: bool = True) -> GenerationMetrics:
    """Generate and score (see the module docstring).

    Args:
        generator: a :class:`planlm.eval.generate.PlannedGenerator` (model, tokenizer, corpus, encoder).
        config: counts, lengths, sampling, featurizer, critic.
        progress: show progress bars.
    """
    from tqdm.auto import tqdm

    from planlm.eval.generate import SamplingConfig
    from planlm.eval.latent import latent_perplexity
    from planlm.eval.metrics import edit_distances, mauve_score, rouge2_f1

    raise_if_problems(config.problems(), "generation metrics")
    if generator.encoder is None:
        raise PlanlmError("generation metrics assign actions with the corpus's sentence encoder; pass one (--encoder)")
    corpus, tok = generator.corpus, generator.tokenizer
    pairs = real_prefixes(corpus, tok, config.continuations, config.prefix_tokens, config.max_new_tokens)
    if len(pairs) < 2:
        raise PlanlmError(
            f"only {len(pairs)} test articles of {corpus.path} are longer than prefix_tokens={config.prefix_tokens}; "
            "lower --gen.prefix_tokens or prepare more test articles"
        )

    def sampling(i: int) -> SamplingConfig:
        return SamplingConfig(config.max_new_tokens, config.temperature, config.top_p, config.seed + i)

    samples = []
    for i, (prefix, true) in enumerate(tqdm(pairs, desc="continuations", disable=not progress)):
        g = generator.generate_one(prefix, sampling=sampling(i))
        samples.append({"kind": "continuation", "prefix": prefix, "generated": g.text, "true": true})
    for i in tqdm(range(config.unconditional), desc="unconditional", disable=not progress):
        g = generator.generate_one("", sampling=sampling(len(pairs) + i))
        samples.append({"kind": "unconditional", "prefix": "", "generated": g.text, "true": None})
    for s in tqdm(samples, desc="action sequences", disable=not progress):
        s["actions"] = asdict(action_trace(s["generated"], generator))
        if s["true"] is not None:
            s["true_actions"] = asdict(action_trace(s["true"], generator))

    conts = [s for s in samples if s["kind"] == "continuation"]
    gen_texts, true_texts = [s["generated"] for s in conts], [s["true"] for s in conts]
    mauve = mauve_score(
        featurize(true_texts, generator, config.featurizer, config.mauve_max_tokens, progress),
        featurize(gen_texts, generator, config.featurizer, config.mauve_max_tokens, progress),
    ).mauve
    mauve_unconditional = None
    uncond = [s["generated"] for s in samples if s["kind"] == "unconditional"]
    if uncond:
        # Real counterpart: the beginnings of test articles, as long as the samples (cut to 256 tokens anyway).
        starts = [p + t for p, t in real_prefixes(corpus, tok, len(uncond), 1, config.max_new_tokens - 1)]
        if len(starts) >= 2:
            mauve_unconditional = mauve_score(
                featurize(starts, generator, config.featurizer, config.mauve_max_tokens, progress),
                featurize(uncond, generator, config.featurizer, config.mauve_max_tokens, progress),
            ).mauve
    rouge2 = rouge2_f1(gen_texts, true_texts)
    edits = edit_distances([ActionTrace(**s["actions"]) for s in conts],
                           [ActionTrace(**s["true_actions"]) for s in conts], config.edit_lengths)
    generated_seqs = [s["actions"]["actions"] for s in samples if s["actions"]["actions"]]
    true_seqs = [s["true_actions"]["actions"] for s in conts if s["true_actions"]["actions"]]
    if not generated_seqs:
        raise PlanlmError("no generated text holds a sentence; raise --gen.max_new_tokens")
    latent = latent_perplexity(
        article_action_sequences(corpus, "train"), article_action_sequences(corpus, "val"), generated_seqs,
        corpus.num_actions, critic=config.critic, real_test=true_seqs or None, seed=config.seed,
    )
    return GenerationMetrics(
        mauve=float(mauve), rouge2=float(rouge2), edit_distance=edits.mean, edit_distance_pairs=edits.pairs,
        latent_ppl=latent.latent_ppl, latent_delta=latent.delta, latent_ppl_real=latent.real_test_ppl,
        mauve_unconditional=mauve_unconditional, samples=samples,
    )
