"""Generation metrics as the paper's Appendix B defines them (DESIGN.md 1.7), on top of :mod:`planlm.eval.metrics`,
:mod:`planlm.eval.latent` and the batched planner-in-the-loop generator (:mod:`planlm.eval.generator`).

Protocol (every setting is recorded next to the numbers it produced, ``*_protocol`` in ``metrics.json``):

1. **Unconditional samples** -- ``unconditional`` texts of ``unconditional_tokens`` tokens generated from the BOS
   token with the planner in the loop (``preset: paper``: 5,000 of 1,024 tokens, planlm's choice after MAUVE's own
   protocol, Pillutla et al. 2021; the paper's text gives no count).
2. **MAUVE** (``mauve``) of those samples against real test articles cut to the same number of tokens, both
   featurised by ONE fixed model (``featurizer``): a local Hugging Face causal LM (name or path, e.g. gpt2-large,
   mauve-text's own default featurizer; the paper's text names none), ``base`` = the run's base LM as it was before
   fine-tuning (the same model for every variant fine-tuned from it; never the evaluated, adapted model), or
   ``encoder`` = the corpus's sentence encoder. Texts are cut at ``mauve_max_tokens`` (256) tokens before
   featurising (planlm's choice; the paper's text gives no cut, mauve-text's default is 1,024).
   ``mauve_continuation`` (an extra column, not the paper's) compares the longest continuations with their true ones.
3. **Latent perplexity** (``latent_ppl``) of the unconditional samples only: every text (generated or real) is split
   into sentences with the corpus's splitter and each sentence embedded with the corpus's encoder and given its
   nearest centroid -- one procedure for both sides. The critic (``critic``: ``bigram``, DESIGN.md 1.7's, default;
   ``hmm``, the one the paper's text describes) is fitted on the train articles' oracle action sequences, delta
   chosen on val. <bos> / <eos> only at real article boundaries: a sample starts one (<bos>) and ends one only when
   it stopped at the EOS token.
   ``latent_ppl_real`` scores real test articles cut to the same length the same way.
   Every protocol records its ``sampling`` settings, the generation ``window`` among them (None: the whole text).
4. **ROUGE-2 and action edit distance** of continuations of real prefixes t_1..t_i that end at a sentence boundary
   (an article's first sentences, as many as fit in ``prefix_tokens`` tokens), continued for each of ``lengths``
   tokens (paper: 128, 256, 512, 1,024) and compared with the article's true next tokens. For each length the
   prefixes come from articles that HAVE that many tokens after the prefix (the prefix is shortened, down to one
   sentence, to make the room): test articles first, topped up with val articles when too few test articles are
   long enough (a departure: the paper's test set has enough long articles; recorded per length in the protocol,
   ``from_split``); a length that no test or val article can supply is skipped, with the reason (``skipped``).
   Edit distance per 128 tokens, the generated side counted in the tokens as generated (a re-tokenisation of a
   sampled text can be shorter); Table 1's ``rouge2`` and ``edit_distance_mean`` are the means over the lengths
   scored.
5. **Appendix E**: the same two numbers split by whether the planner's action for the first generated sentence was
   the oracle one (the action of the article's true next sentence).
6. **Plan matching** (``plan_matching``, the paper's Figure 4): how often a generated sentence's own writing action
   (the sentence embedded with the corpus's encoder, its nearest centroid: the assignment of step 3) equals the
   action the LM was conditioned on while writing it (the planner's argmax; under soft selection the argmax of the
   weights it read). Every finished generated sentence of the unconditional samples and the continuations counts;
   the sentence a text stopped inside does not (a cut sentence is not the one that was planned). None for fixed /
   uniform models, which condition on no per-sentence action.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from planlm.errors import PlanlmError, raise_if_problems
from planlm.eval.metrics import EDIT_DISTANCE_LENGTHS, MAUVE_MAX_TOKENS, ActionTrace

CRITICS = ("bigram", "hmm")
PRESETS = {
    # The paper's continuation lengths. Its text gives no sample or prefix counts: 5,000 unconditional samples of
    # 1,024 tokens follow MAUVE's own protocol (Pillutla et al. 2021), 1,000 prefixes = the paper's test articles;
    # both planlm's choice.
    "paper": {"unconditional": 5000, "unconditional_tokens": 1024, "continuations": 1000,
              "lengths": list(EDIT_DISTANCE_LENGTHS)},
}


@dataclass
class GenerationMetricsConfig:
    """What to generate and how to score it (the paper's Appendix B; small CPU defaults, ``preset: paper``)."""

    preset: Literal["paper"] | None = None
    """paper: the paper's continuation lengths 128/256/512/1,024 tokens, with planlm's counts at that scale: 5,000
    unconditional samples of 1,024 tokens (MAUVE's own protocol), 1,000 continuations (sets unconditional,
    unconditional_tokens, continuations, lengths)."""
    unconditional: int = 16
    """Texts generated from the BOS token (MAUVE, latent perplexity; preset paper: 5,000, planlm's choice)."""
    unconditional_tokens: int = 128
    """Tokens per unconditional sample and per real text they are compared with (preset paper: 1,024)."""
    continuations: int = 8
    """Real prefixes to continue (ROUGE-2, edit distance)."""
    lengths: list[int] = field(default_factory=lambda: [32, 64])
    """Continuation lengths in tokens (paper: 128, 256, 512, 1,024)."""
    prefix_tokens: int = 64
    """A prefix is its article's first sentences, as many as fit in this many tokens (at least one)."""
    temperature: float = 1.0
    """Token sampling temperature (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 = pure sampling)."""
    seed: int = 0
    """Seed of text i of a set is seed + i."""
    batch_size: int = 8
    """Texts generated in parallel."""
    featurizer: str = "base"
    """MAUVE features: base (the run's base LM before fine-tuning) | encoder | a local HF causal LM name or path."""
    mauve_max_tokens: int = MAUVE_MAX_TOKENS
    """Texts are cut at this many tokens before featurizing (planlm's choice; the paper's text gives no cut)."""
    critic: Literal["bigram", "hmm"] = "bigram"
    """Latent-perplexity critic: bigram (DESIGN.md 1.7's; default) | hmm (the one the paper's text describes)."""
    window: int | None = None
    """Generation context window in positions (a chunked sliding window, so every length runs on any LM): None = the
    run's fine-tuning context length (the adapters' training windows), 0 = none (the whole text, within the LM's
    positions)."""

    def resolved(self) -> "GenerationMetricsConfig":
        """The config with its preset's values filled in."""
        if self.preset is None or self.preset not in PRESETS:
            return self
        return GenerationMetricsConfig(**{**asdict(self), **PRESETS[self.preset]})

    def problems(self) -> list[str]:
        out = []
        if self.preset is not None and self.preset not in PRESETS:
            out.append(f"preset must be one of {', '.join(PRESETS)} or null (got {self.preset!r})")
        if self.unconditional < 2:
            out.append(f"unconditional must be at least 2 (MAUVE compares sets; got {self.unconditional})")
        if self.continuations < 1:
            out.append(f"continuations must be positive (got {self.continuations})")
        for name in ("unconditional_tokens", "prefix_tokens", "batch_size", "mauve_max_tokens"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be positive (got {getattr(self, name)})")
        if not self.lengths or any(n < 1 for n in self.lengths):
            out.append(f"lengths must be positive token counts (got {self.lengths})")
        if not self.featurizer:
            out.append("featurizer must be base, encoder or a local causal LM name or path")
        if self.window is not None and (self.window < 0 or self.window == 1):
            out.append(f"window must be 0 (none), null (the run's training context) or >= 2 (got {self.window})")
        if self.critic not in CRITICS:
            out.append(f"critic must be one of {', '.join(CRITICS)} (got {self.critic!r})")
        return out


@dataclass
class GenerationMetrics:
    """The numbers (the keys ``metrics.json`` stores), each with its protocol, and the texts they came from."""

    mauve: float
    latent_ppl: float
    latent_delta: float
    latent_ppl_real: float | None
    rouge2: float | None
    rouge2_by_length: dict[str, float]
    edit_distance: dict[str, float]
    edit_distance_mean: float | None
    edit_distance_pairs: dict[str, int]
    mauve_continuation: float | None
    by_first_action: dict
    plan_matching: float | None = None
    mauve_protocol: dict = field(default_factory=dict)
    latent_ppl_protocol: dict = field(default_factory=dict)
    rouge2_protocol: dict = field(default_factory=dict)
    edit_distance_protocol: dict = field(default_factory=dict)
    plan_matching_protocol: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list, repr=False)
    """One dict per text: kind (unconditional | continuation), length, prefix, generated, true, actions, ..."""

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("samples")
        return d


def action_trace(text: str, generator, offsets: list[tuple[int, int]] | None = None) -> ActionTrace:
    """Sentences of ``text`` -> their nearest-centroid actions and token ends (LM tokens of ``text``: ``offsets``,
    the character span of each token, for a generated text's own tokens; else ``text`` tokenized)."""
    from planlm.data.alignment import align_tokens

    spans = generator.split(text)
    if not spans:
        return ActionTrace([], [])
    if offsets is None:
        offsets = generator.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    n_tokens = len(offsets)
    if n_tokens == 0:
        return ActionTrace([], [])
    starts, ends = np.array([s for s, _ in spans]), np.array([e for _, e in spans])
    _, _, first_token = align_tokens(np.asarray(offsets), starts, ends, 0)
    token_ends = np.r_[first_token[1:], n_tokens]  # tokens up to and including sentence j
    actions = generator.nearest_actions(generator.embed([text[s:e] for s, e in spans]))
    keep = np.r_[True, np.diff(token_ends) > 0] & (token_ends > 0)  # a sentence without tokens of its own
    return ActionTrace([int(a) for a in actions[keep]], [int(e) for e in token_ends[keep]])


def plan_matching(generations: dict[str, list], generator) -> tuple[float | None, dict]:
    """Figure 4's plan-matching accuracy of ``generations`` (kind -> :class:`planlm.eval.generator.Generation` list):
    ``(accuracy or None, counts)``. A sentence counts when it was generated, finished, and conditioned on an action
    (planner or forced plan); its written action is the nearest centroid of its embedding, as every generated
    sentence's action is assigned (:func:`action_trace`)."""
    rows = [(kind, s.text, s.action) for kind, gens in generations.items() for g in gens for s in g.sentences
            if s.generated and s.finished and s.action is not None and s.source in ("planner", "plan")
            and s.text.strip()]
    counts = {kind: sum(k == kind for k, _, _ in rows) for kind in generations}
    if not rows:
        return None, counts
    written = generator.nearest_actions(generator.embed([t for _, t, _ in rows]))  # (n,)
    hits = written == np.array([a for _, _, a in rows])  # (n,)
    by_kind = {kind: float(hits[[k == kind for k, _, _ in rows]].mean()) for kind in generations if counts[kind]}
    return float(hits.mean()), {**counts, "accuracy_by_kind": by_kind}


def sentence_prefixes(corpus, tokenizer, count: int, prefix_tokens: int, new_tokens: int,
                      max_positions: int | None = None) -> list[dict]:
    """Real prefixes ending at a sentence boundary, each followed in its article by at least ``new_tokens`` tokens.

    Of each article (test articles first; val articles top the set up when fewer than ``count`` test articles are
    long enough -- ``split`` says which): its first sentences t_1..t_i, the most that fit in ``prefix_tokens``
    tokens (at least one), fewer when the article needs the room for ``new_tokens`` more tokens (or the LM's
    ``max_positions`` for prefix + continuation); the true next ``new_tokens`` tokens; the oracle action of
    sentence i + 1. An article too short even after its first sentence is passed over.
    """
    out = []
    for split in ("test", "val"):
        for a in corpus.article_ids(split):
            if len(out) == count:
                return out
            p = _prefix(corpus, tokenizer, int(a), prefix_tokens, new_tokens, max_positions)
            if p is not None:
                out.append({**p, "split": split})
    return out


def _prefix(corpus, tokenizer, a: int, prefix_tokens: int, new_tokens: int, max_positions: int | None) -> dict | None:
    lo, hi = corpus.sentence_range(a)
    if hi - lo < 2:
        return None
    text = corpus.texts[a]

    def n_tokens(cut: int) -> int:
        return len(tokenizer(text[:cut], add_special_tokens=False)["input_ids"])

    i = 1
    while lo + i + 1 < hi and n_tokens(int(corpus.sentence_end[lo + i])) <= prefix_tokens:
        i += 1
    for i in range(i, 0, -1):  # the longest prefix that leaves room for the continuation
        cut = int(corpus.sentence_end[lo + i - 1])
        rest = tokenizer(text[cut:], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        fits = max_positions is None or n_tokens(cut) + new_tokens - 1 <= max_positions
        if len(rest) >= new_tokens and fits:
            nxt = text[int(corpus.sentence_start[lo + i]) : int(corpus.sentence_end[lo + i])]
            return {"prefix": text[:cut], "true": text[cut : cut + rest[new_tokens - 1][1]],
                    "oracle_action": int(corpus.actions[lo + i]), "true_sentence": nxt}
    return None


def real_beginnings(corpus, tokenizer, count: int, n_tokens: int) -> list[tuple[str, bool, str]]:
    """The first ``count`` test articles cut to their first ``n_tokens`` tokens, with whether the whole article fit
    and its split; a corpus with fewer test articles is topped up with val articles (recorded in the protocol)."""
    out = []
    for split in ("test", "val"):
        for a in corpus.article_ids(split)[: count - len(out)]:
            text = corpus.texts[int(a)]
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            if offsets:
                out.append((text[: offsets[min(n_tokens, len(offsets)) - 1][1]], len(offsets) <= n_tokens, split))
    return out


def article_action_sequences(corpus, split: str) -> list[list[int]]:
    """Oracle action sequence of every article of a split (the critic's real data)."""
    seqs = []
    for a in corpus.article_ids(split):
        lo, hi = corpus.sentence_range(int(a))
        if hi > lo:
            seqs.append([int(x) for x in corpus.actions[lo:hi]])
    return seqs


def featurizer_model(generator, featurizer: str, device=None):
    """The ONE model MAUVE features come from, and the name recorded with the number: ``(model, tokenizer, name)``;
    model None for the sentence encoder."""
    from planlm.persist import load_lm

    if featurizer == "encoder":
        return None, generator.tokenizer, f"encoder:{generator.encoder.name}"
    name = generator.model.config.base_lm if featurizer == "base" else featurizer
    if not name:
        raise PlanlmError("this planned LM records no base LM; pass --gen.featurizer MODEL (a local causal LM) or encoder")
    lm, tokenizer = load_lm(name)
    return lm.to(generator.device).eval(), tokenizer, str(name)


def featurize(texts: list[str], feat, generator, max_tokens: int, progress: bool) -> np.ndarray:
    from planlm.eval.metrics import cut_to_tokens, lm_features

    model, tokenizer, _ = feat
    if model is not None:
        return lm_features(model, tokenizer, texts, max_tokens=max_tokens, progress=progress)
    return generator.encoder.encode(cut_to_tokens(texts, generator.tokenizer, max_tokens))


def _generate(generator, prompts: list[str], tokens: int, config: GenerationMetricsConfig, seed: int, progress: bool,
              desc: str):
    from tqdm.auto import tqdm

    from planlm.eval.generator import SamplingConfig

    out = []
    for first in tqdm(range(0, len(prompts), config.batch_size), desc=desc, disable=not progress):
        s = SamplingConfig(tokens, config.temperature, config.top_p, seed + first)
        out += generator.generate(prompts[first : first + config.batch_size], None, s, after_plan="planner")
    return out


def generation_metrics(generator, config: GenerationMetricsConfig = GenerationMetricsConfig(),
                       progress: bool = True) -> GenerationMetrics:
    """Generate and score (see the module docstring).

    Args:
        generator: a :class:`planlm.eval.generator.PlannedGenerator` (model, tokenizer, corpus, encoder).
        config: counts, lengths, sampling, featurizer, critic (``preset: paper`` for the paper's sizes).
        progress: show progress bars.
    """
    from planlm.eval.latent import DELTA_GRID, latent_perplexity
    from planlm.eval.metrics import edit_distances, mauve_score, rouge2_f1

    raise_if_problems(config.problems(), "generation metrics")
    config = config.resolved()
    if generator.encoder is None:
        raise PlanlmError("generation metrics assign actions with the corpus's sentence encoder; pass one (--encoder)")
    corpus, tok = generator.corpus, generator.tokenizer
    prefixes = {n: sentence_prefixes(corpus, tok, config.continuations, config.prefix_tokens, n,
                                     generator.max_positions) for n in config.lengths}
    real = real_beginnings(corpus, tok, config.unconditional, config.unconditional_tokens)
    if len(real) < 2:
        raise PlanlmError(
            f"{corpus.path} has {len(real)} test and val articles (2 needed for MAUVE); prepare more test articles"
        )
    skipped = {str(n): f"no test or val article has {n} tokens after its first sentence"
                       + (f" within the LM's {generator.max_positions} positions" if generator.max_positions else "")
               for n, ps in prefixes.items() if not ps}
    sampling = {"temperature": config.temperature, "top_p": config.top_p, "seed": config.seed,
                "window": generator.window}

    # 1-3: unconditional samples, MAUVE against real beginnings, latent perplexity
    uncond = _generate(generator, [""] * config.unconditional, config.unconditional_tokens, config, config.seed,
                       progress, "unconditional")
    samples = [{"kind": "unconditional", "length": config.unconditional_tokens, "prefix": "", "generated": g.text,
                "true": None, "stop": g.stop_reason, "actions": asdict(action_trace(g.text, generator))}
               for g in uncond]
    feat = featurizer_model(generator, config.featurizer)
    mauve = mauve_score(featurize([t for t, _, _ in real], feat, generator, config.mauve_max_tokens, progress),
                        featurize([g.text for g in uncond], feat, generator, config.mauve_max_tokens, progress)).mauve
    generated_seqs = [s["actions"]["actions"] for s in samples]
    keep = [i for i, q in enumerate(generated_seqs) if q]
    if not keep:
        raise PlanlmError("no unconditional sample holds a sentence; raise --gen.unconditional_tokens")
    real_traces = [action_trace(t, generator).actions for t, _, _ in real]
    real_keep = [i for i, q in enumerate(real_traces) if q]
    latent = latent_perplexity(
        article_action_sequences(corpus, "train"), article_action_sequences(corpus, "val"),
        [generated_seqs[i] for i in keep], corpus.num_actions, critic=config.critic,
        real_test=[real_traces[i] for i in real_keep] or None, seed=config.seed,
        generated_eos=[uncond[i].stop_reason == "eos" for i in keep], real_eos=[real[i][1] for i in real_keep],
    )

    # 4-5: continuations of real prefixes at every length that articles can supply
    rouge, edits, pairs_at, by_first = {}, {}, {}, {"right": [], "wrong": []}
    continued = []  # every continuation's Generation, for plan matching
    mauve_cont, mauve_cont_at = None, None
    for n, pairs in prefixes.items():
        if not pairs:
            continue
        gens = _generate(generator, [p["prefix"] for p in pairs], n, config, config.seed + config.unconditional,
                         progress, f"continuations of {n} tokens")
        continued += gens
        trues = [_cut(p["true"], tok, n) for p in pairs]
        gen_traces = [action_trace(g.text, generator, g.offsets()) for g in gens]
        true_traces = [action_trace(t, generator) for t in trues]
        rouge[str(n)] = rouge2_f1([g.text for g in gens], trues)
        e = edit_distances(gen_traces, true_traces, [n])
        edits.update(e.mean)
        pairs_at.update(e.pairs)
        if str(n) not in e.mean:
            skipped[str(n)] = f"no pair has {n} tokens on both sides (the generated continuations stopped at EOS)"
        for p, g, t, gt, tt in zip(pairs, gens, trues, gen_traces, true_traces):
            first = next((s for s in g.sentences if s.generated), None)
            right = first is not None and first.action == p["oracle_action"]
            by_first["right" if right else "wrong"].append(
                (rouge2_f1([g.text], [t]), edit_distances([gt], [tt], [n]).mean.get(str(n)),
                 rouge2_f1([first.text if first else ""], [p["true_sentence"]])))
            samples.append({"kind": "continuation", "length": n, "prefix": p["prefix"], "split": p["split"],
                            "generated": g.text, "true": t, "first_action": None if first is None else first.action,
                            "oracle_action": p["oracle_action"], "actions": asdict(gt), "true_actions": asdict(tt)})
        if len(gens) >= 2 and (mauve_cont_at is None or n > mauve_cont_at):
            mauve_cont_at = n
            mauve_cont = mauve_score(featurize(trues, feat, generator, config.mauve_max_tokens, progress),
                                     featurize([g.text for g in gens], feat, generator, config.mauve_max_tokens,
                                               progress)).mauve

    def split(rows):
        edit = [e for _, e, _ in rows if e is not None]
        return {"texts": len(rows), "rouge2": float(np.mean([r for r, _, _ in rows])) if rows else None,
                "edit_distance": float(np.mean(edit)) if edit else None,
                "rouge2_first_sentence": float(np.mean([f for _, _, f in rows])) if rows else None}

    matching, matched = plan_matching({"unconditional": uncond, "continuation": continued}, generator)
    common = {"featurizer": feat[2], "sampling": sampling}
    continuations = {
        "continuations": {str(n): len(ps) for n, ps in prefixes.items() if ps},
        "from_split": {str(n): {sp: sum(p["split"] == sp for p in ps) for sp in ("test", "val")}
                       for n, ps in prefixes.items() if ps},
        "lengths": [n for n, ps in prefixes.items() if ps], "skipped": skipped,
        "prefix_tokens": config.prefix_tokens,
        "prefix": "the article's first sentences, ending at a sentence boundary (fewer when the article needs the "
                  "room for the continuation); test articles first, topped up with val articles",
    }
    return GenerationMetrics(
        mauve=float(mauve), latent_ppl=latent.latent_ppl, latent_delta=latent.delta,
        latent_ppl_real=latent.real_test_ppl, rouge2=float(np.mean(list(rouge.values()))) if rouge else None,
        rouge2_by_length=rouge,
        edit_distance=edits, edit_distance_mean=float(np.mean(list(edits.values()))) if edits else None,
        edit_distance_pairs=pairs_at, mauve_continuation=mauve_cont,
        by_first_action={"right": split(by_first["right"]), "wrong": split(by_first["wrong"])},
        plan_matching=matching,
        mauve_protocol={**common, "generated": len(uncond), "tokens": config.unconditional_tokens,
                        "real": {sp: sum(r[2] == sp for r in real) for sp in ("test", "val")},
                        "max_tokens": config.mauve_max_tokens, "real_texts": "article beginnings, same length",
                        "continuation_column_length": mauve_cont_at},
        latent_ppl_protocol={"sampling": sampling, "critic": config.critic, "delta_grid": list(DELTA_GRID), "scored": len(keep),
                             "tokens": config.unconditional_tokens, "fitted_on": "train oracle actions",
                             "delta_chosen_on": "val", "bos_eos": "real article boundaries only"},
        rouge2_protocol={**continuations, "table": "rouge2 = mean over the lengths", "sampling": sampling},
        edit_distance_protocol={**continuations, "sampling": sampling, "pairs": pairs_at, "per_tokens": 128,
                                "table": "edit_distance_mean = mean over the lengths",
                                "actions": "nearest centroid of the splitter's sentences, both sides",
                                "tokens": "generated side: the tokens as generated; true side: the text tokenized"},
        plan_matching_protocol={"sampling": sampling, "sentences": matched,
                                "counted": "finished generated sentences conditioned on a planner (or plan) action, "
                                           "unconditional samples and continuations",
                                "written_action": "nearest centroid of the sentence's embedding (corpus encoder)",
                                "conditioned_action": "the planner's argmax (soft selection: of the weights read)"},
        samples=samples,
    )


def _cut(text: str, tokenizer, n_tokens: int) -> str:
    """``text`` cut to its first ``n_tokens`` tokens (on the text's own offsets, so nothing is re-decoded)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text if len(offsets) <= n_tokens else text[: offsets[n_tokens - 1][1]]
