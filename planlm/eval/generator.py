"""Planner-in-the-loop generation, batched, with a KV cache (DESIGN.md 1.7; the paper's Appendix B).

:class:`PlannedGenerator` decodes B texts in parallel. Each text is a :class:`DecodingState` (its tokens, its
sentences with the actions that condition them, its sentence tracker); one decoding step is

1. **feed**: every active text feeds the positions not yet in the cache under their current actions (normally its
   last token; after a sentence end or a retraction, from the finished sentence's last token on) -- one forward pass
   of the planned LM for the whole batch, rows of different lengths left-padded and masked, explicit position ids;
2. **sample** one token per text (temperature, then top-p by Hugging Face's ``TopPLogitsWarper`` rule; one batched
   inverse-CDF draw from one uniform of each text's own seeded generator, so a text does not depend on the batch it
   ran in);
3. **follow the splitter**: the text's sentences are :func:`planlm.data.sentences.split_sentences` of the whole text
   by construction -- a :class:`planlm.data.sentences.SentenceTracker` recomputes the split over the text since the
   last settled reset point only -- and the decoder's own sentence list is compared with it:

   - the splitter ends the open sentence at character ``e``: the sentence is finished, the next action chosen
     (forced plan or planner), and -- because the last token of a sentence and any whitespace tokens after it carry
     the NEXT sentence's action (DESIGN.md 1.4) -- the tokens after the sentence's last token are dropped (they were
     sampled under the old action) and that token is fed again under the new action;
   - the splitter no longer ends a finished sentence where the decoder did (the text after a sentence end can merge
     it back: "scur." + "5an" is one token for spaCy): the sentence is reopened, the tokens after its last token are
     dropped and that token is fed again under its own action. After ``MAX_RETRACTIONS`` retractions at one token
     the decoder keeps the sampled tokens and only re-conditions them, so decoding always moves on.

   So every finished sentence is one of the splitter's sentences of the final text and every position is fed under
   the action of the sentence it carries, exactly as the same text is in training;
4. **re-plan**: the texts that finished a sentence get their next action together: one sentence-encoder call for the
   finished sentences and one planner call (inputs built by :class:`planlm.data.planner_inputs.PlannerInputs`, the
   training context rules) for all of them (:meth:`PlannedGenerator._plan_open_sentences`);
5. **recall**: a re-feed that only undoes an earlier one -- a retraction right after a sentence end (the token fed
   again under its old action) or a sentence end made again after its retraction (the same finished sentences, so
   the same planned action) -- takes that earlier feed back: its cache column (masked, never overwritten) is
   unmasked and its next-token logits sampled at once, within the same step. Same tokens, no forward pass: a text
   loses one step per sentence end, not one per retraction as well.

A text stops at ``max_new_tokens``, at the EOS token, or -- with a forced plan and ``after_plan="stop"`` -- when the
sentence after the last planned one would start; finished texts leave the batch (their cache rows are dropped).
The last sampled token is never fed, so a model with N positions generates up to N - (prompt tokens) + 1 tokens:
1,024 new tokens from BOS on GPT-2. With a ``window`` (the stages default it to the run's fine-tuning context
length: adapters trained on 128-token windows should not condition on 1,024) any length runs on any LM: when a text
would pass ``window`` positions, its context restarts at its last ``window // 2`` tokens (fresh cache columns,
position ids from 0; actions and the planner's sentence context are unchanged: the planner reads the finished
sentences' embeddings, whatever the LM window holds).
"""

from __future__ import annotations

import bisect
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence, get_args

import numpy as np
import torch

from planlm.errors import PlanlmError, check_finite, raise_if_problems
from planlm.models.arch import cache_keyword
from planlm.models.selection import needs_planner

AfterPlan = Literal["stop", "planner"]
AFTER_PLAN: tuple[str, ...] = get_args(AfterPlan)
MAX_RETRACTIONS = 2  # per token: after this many retracted sentence ends there, keep the sampled tokens
RECENT_POSITIONS = 16  # per text: feeds remembered for a possible re-feed (a sentence's last token and what follows)
MEMO_POSITIONS = 4  # per text: re-fed positions whose earlier feeds are kept for a recall


@dataclass
class SamplingConfig:
    """How tokens are drawn."""

    max_new_tokens: int = 128
    """Generate at most this many tokens (the paper's generation metrics use 1024)."""
    temperature: float = 1.0
    """Softmax temperature of token sampling; 0 = greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 = pure sampling)."""
    seed: int = 0
    """Seed of the token sampler (text i of a batch uses seed + i)."""

    def problems(self) -> list[str]:
        out = []
        check_finite(out, temperature=self.temperature, top_p=self.top_p)
        if self.max_new_tokens < 1:
            out.append(f"max_new_tokens must be positive (got {self.max_new_tokens})")
        if self.temperature < 0:
            out.append(f"temperature must be >= 0 (0 = greedy; got {self.temperature})")
        if not 0.0 < self.top_p <= 1.0:
            out.append(f"top_p must be in (0, 1] (got {self.top_p})")
        return out


@dataclass
class Sentence:
    """One sentence of a generation, with the action that conditioned it."""

    text: str
    action: int | None
    """The action id: the forced one, the planner's argmax, the prompt sentence's nearest centroid; None for fixed /
    uniform models (their conditioning is one constant vector)."""
    source: str
    """prompt | plan | planner | constant."""
    probability: float | None = None
    """The planner's probability of ``action`` (planner sentences only)."""
    exemplar: str = ""
    """The action's nearest exemplar sentence from the prepared corpus (exemplars.json)."""
    generated: bool = True
    """False for finished prompt sentences; a continued prompt sentence counts as generated."""
    finished: bool = True
    """False for the last sentence when generation stopped inside it."""
    token_start: int = 0
    """First token of the sentence in ``Generation.token_ids`` (prompt and generated tokens)."""
    token_end: int = 0
    """One past its last token (tokens between sentences belong to the next sentence)."""


@dataclass
class Generation:
    """One generated text."""

    prompt: str
    text: str
    """The generated continuation (without the prompt)."""
    sentences: list[Sentence]
    token_ids: list[int]
    """All tokens: (BOS or prompt) + generated."""
    prompt_tokens: int
    """Leading entries of ``token_ids`` that are the prompt (or the BOS token)."""
    position_actions: list[int | None] = field(default_factory=list)
    """For each position of ``token_ids``: the action id whose row conditioned it when it was last fed."""
    stop_reason: str = ""
    """length | eos | plan."""
    char_ends: list[int] = field(default_factory=list)
    """For each token of ``token_ids``: the end of its text in ``prompt + text`` (the tokens as generated, which a
    re-tokenisation of the text need not give back)."""
    seconds: float = 0.0
    """Wall time of the batch this text was generated in."""

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_tokens

    def offsets(self) -> list[tuple[int, int]] | None:
        """Character offsets ``(start, end)`` in ``text`` of each generated token; None when not recorded."""
        if not self.char_ends or len(self.char_ends) != len(self.token_ids):
            return None
        ends = [e - len(self.prompt) for e in self.char_ends[self.prompt_tokens:]]
        return list(zip([0] + ends[:-1], ends))

    @property
    def plan(self) -> list[int | None]:
        """Actions of the sentences that were generated (continued prompt sentence included)."""
        return [s.action for s in self.sentences if s.generated]

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("position_actions")
        d.pop("char_ends")
        d["new_tokens"] = self.new_tokens
        return d


@dataclass
class Conditioning:
    """What a sentence is conditioned on: the planner's logits (through the model's selection) or one action."""

    logits: torch.Tensor | None
    """``(K,)`` planner logits, or None for a forced / prompt / constant action."""
    action: int
    plan: torch.Tensor | None = None
    """``(H, K)`` plan weights of a planner sentence, when the model reads plans (H > 1 or sampled plans)."""


def same_conditioning(a: Conditioning | None, b: Conditioning | None) -> bool:
    """Whether two conditionings give the LM the same action weights (forced actions compare by id)."""
    if a is None or b is None:
        return False
    return a is b or (a.logits is None and b.logits is None and a.action == b.action)


class DecodingState:
    """The decoding state of one text: tokens, the sentence each position carries, sentences, text, cache columns."""

    def __init__(self, index: int, prompt: str, plan: list[int], seed: int, max_new_tokens: int, tracker,
                 window: int | None = None):
        self.index, self.prompt, self.plan, self.max_new_tokens = index, prompt, plan, max_new_tokens
        self.window = window  # positions the LM sees at most (None: the whole text)
        self.window_start = 0  # first position inside the window; it is fed at position id 0
        self.rng = torch.Generator().manual_seed(seed)
        self.tracker = tracker
        self.ids: list[int] = []
        self.slot: list[int] = []  # per position: the sentence whose action it carries
        self.fed_action: list[int | None] = []  # per position: that action when the position was last fed
        self.char_end: list[int] = []  # per token: end of its text in `self.text`
        self.text = ""
        self.sentences: list[Sentence] = []
        self.conditioning: list[Conditioning | None] = []  # per sentence; None until chosen
        self.ends: list[int] = []  # per finished sentence: its end character (the splitter's)
        self.embeddings: dict[int, np.ndarray] = {}  # per finished sentence: its embedding (the planner's context)
        self.prompt_tokens = 0
        self.planned = 0  # plan entries used
        self.retractions: dict[int, int] = {}
        self.feed_from = 0  # first position whose cache entry is missing or stale
        self.columns: list[int] = []  # per fed position from window_start on: its column in the batch's KV cache
        self.stop_reason = ""
        # Re-feeds that a sentence end or its retraction undoes (see `remember` / `recall`): per recently fed
        # position, (conditioning, cache column, next-token logits) of its last feed, and, per position that was
        # re-fed, the feeds it had before: (token, conditioning, column, logits).
        self.remember = True
        self.recent: dict[int, tuple[Conditioning, int, torch.Tensor]] = {}
        self.memo: dict[int, list[tuple[int, Conditioning, int, torch.Tensor]]] = {}
        self.planned_after: dict[tuple, Conditioning] = {}  # planner conditioning per context (texts, token counts)

    # ---- tokens and text ------------------------------------------------------------------------------------------
    def append(self, token: int, tokenizer) -> None:
        """Add a sampled token to the open sentence; its text is decoded incrementally (a few tokens of context, so
        tokenizers that drop a leading space or split a character across tokens decode as the whole text would)."""
        n = len(self.ids)
        self.ids.append(token)
        self.slot.append(len(self.sentences) - 1)
        self.fed_action.append(None)
        j = max(0 if self.prompt else 1, n - 3)  # never the BOS token
        head, tail = tokenizer.decode(self.ids[j:n]), tokenizer.decode(self.ids[j:])
        if tail.startswith(head) and "\ufffd" not in tail:
            self.text += tail[len(head):]
            self.char_end.append(len(self.text))
        else:  # a character completed across tokens: re-decode the generated text
            self.text = self.prompt + self._decode_generated(tokenizer, len(self.ids))
            self.char_end.append(len(self.text))
            for i in range(max(j, self.prompt_tokens), n):
                self.char_end[i] = min(len(self.prompt + self._decode_generated(tokenizer, i + 1)), len(self.text))

    def _decode_generated(self, tokenizer, stop: int) -> str:
        start = self.prompt_tokens
        if not self.prompt:
            return tokenizer.decode(self.ids[start:stop])
        # one prompt token of context keeps a leading space that a SentencePiece decode would drop
        return tokenizer.decode(self.ids[start - 1 : stop])[len(tokenizer.decode(self.ids[start - 1 : start])):]

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` tokens."""
        del self.ids[n:], self.slot[n:], self.fed_action[n:], self.char_end[n:]
        self.text = self.text[: self.char_end[-1]] if self.char_end else ""

    def refeed_from(self, position: int, valid: torch.Tensor | None, row: int) -> None:
        """Positions from ``position`` on must be fed again: their cache columns no longer count (the feed of
        ``position`` itself is remembered: a retraction or a repeated sentence end may want it back)."""
        if position < self.window_start:  # a retraction behind the window's start: the window restarts there
            self.restart_window(min(position, max(0, len(self.ids) - self.window // 2)), valid, row)
        i = max(min(position - self.window_start, len(self.columns)), 0)
        self._remember(self.window_start + i)
        if valid is not None and len(self.columns) > i:
            valid[row, self.columns[i:]] = False
        del self.columns[i:]
        self.feed_from = min(self.feed_from, self.window_start + i)

    def slide(self, valid: torch.Tensor | None, row: int) -> None:
        """Before a feed: when the positions to feed would pass the window, the window restarts at the last
        ``window // 2`` tokens (a chunked sliding window: the LM never sees more positions than it was trained on,
        and re-encodes half a window once every ``window // 2`` tokens)."""
        if self.window and len(self.ids) - self.window_start > self.window:
            self.restart_window(len(self.ids) - self.window // 2, valid, row)

    def restart_window(self, start: int, valid: torch.Tensor | None, row: int) -> None:
        """The LM's context restarts at position ``start``: no cache column of this text counts any more, and the
        positions from ``start`` on are fed again at position ids 0, 1, ... (their actions are unchanged)."""
        if valid is not None and self.columns:
            valid[row, self.columns] = False
        self.columns, self.recent, self.memo = [], {}, {}
        self.window_start, self.feed_from = start, start

    def fed(self, column: int, logits: torch.Tensor) -> None:
        """The last position was just fed into cache ``column`` and gave next-token ``logits (V,)``."""
        p = len(self.ids) - 1
        self.recent[p] = (self.conditioning[self.slot[p]], column, logits)
        for q in [q for q in self.recent if q < p - RECENT_POSITIONS]:
            del self.recent[q]

    def _remember(self, position: int) -> None:
        """Before ``position`` is re-fed: keep its current feed (its cache column stays in the cache, masked), and
        forget what no longer holds -- feeds after ``position`` (their prefix changes) and recent feeds from it on."""
        for q in [q for q in self.memo if q > position]:
            del self.memo[q]
        rec = self.recent.get(position) if self.remember else None
        i = position - self.window_start
        if rec is not None and 0 <= i < len(self.columns) and self.columns[i] == rec[1]:
            entries = self.memo.setdefault(position, [])
            if all(col != rec[1] for _, _, col, _ in entries):
                entries.append((self.ids[position], rec[0], rec[1], rec[2].clone()))
            for q in sorted(self.memo)[:-MEMO_POSITIONS]:
                del self.memo[q]
        for q in [q for q in self.recent if q >= position]:
            del self.recent[q]

    def recall(self, valid: torch.Tensor, row: int) -> torch.Tensor | None:
        """If the one position left to feed was fed before, exactly so (same token, same conditioning, same prefix),
        take that feed back -- its cache column unmasked, its logits ``(V,)`` returned -- instead of feeding it again.
        This is what a retraction right after a sentence end (the old action back) and a sentence end repeated after
        a retraction (the same planned action again) amount to."""
        p = len(self.ids) - 1
        if self.feed_from != p or self.window_start + len(self.columns) != p or p not in self.memo:
            return None
        cond = self.conditioning[self.slot[p]]
        for token, c, column, logits in self.memo[p]:
            if token == self.ids[p] and same_conditioning(c, cond):
                self.columns.append(column)
                valid[row, column] = True
                self.feed_from = p + 1
                self.fed_action[p] = self.sentences[self.slot[p]].action
                self.recent[p] = (cond, column, logits)
                return logits
        return None

    @property
    def new_tokens(self) -> int:
        return len(self.ids) - self.prompt_tokens

    def last_token_before(self, char: int) -> int:
        """The last token whose text starts before character ``char`` (the last token of a sentence ending there)."""
        return min(bisect.bisect_left(self.char_end, char), len(self.ids) - 1)

    def context(self) -> tuple[np.ndarray, np.ndarray]:
        """The finished sentences' embeddings ``(S, d)`` and LM-token counts ``(S,)`` (the planner's input)."""
        done = range(len(self.ends))
        emb = np.stack([self.embeddings[i] for i in done]) if self.ends else None
        counts = np.array([self.sentences[i].token_end - self.sentences[i].token_start for i in done], np.int64)
        return emb, counts

    def result(self, seconds: float) -> Generation:
        spans = self.tracker.spans(self.text)
        if self.stop_reason != "plan":  # the sentence being written when generation stopped
            cur = self.sentences[-1]
            if len(spans) > len(self.ends):
                s, e = spans[len(self.ends)]
                cur.text, cur.token_end, cur.finished = self.text[s:e], len(self.ids), self.stop_reason == "eos"
            else:
                self.sentences.pop()  # generation stopped right where a new sentence would start
        return Generation(
            prompt=self.prompt, text=self.text[len(self.prompt):], sentences=self.sentences,
            token_ids=[int(i) for i in self.ids], prompt_tokens=self.prompt_tokens,
            position_actions=list(self.fed_action), stop_reason=self.stop_reason, char_ends=list(self.char_end),
            seconds=seconds,
        )


class PlannedGenerator:
    """Planner-in-the-loop generation for one planned LM; build once, call :meth:`generate` (a batch of texts) or
    :meth:`generate_one`."""

    def __init__(self, model, tokenizer, corpus, encoder=None, device: str | torch.device | None = None,
                 window: int | None = None):
        """Prepare the loop.

        Args:
            model: a :class:`planlm.models.planned_lm.PlannedLM`.
            tokenizer: its fast tokenizer.
            corpus: the prepared corpus it was fine-tuned on (centroids, exemplars, splitter settings).
            encoder: an object with ``encode(list[str]) -> (n, d)`` (:func:`planlm.data.encoders.load_encoder`);
                needed unless the model's selection is fixed or uniform.
            device: where the model runs; default: where its parameters are.
            window: the most positions the LM sees (a chunked sliding window: when a text passes it, its context
                restarts at its last ``window // 2`` tokens, so any length runs on any LM); None: the whole text,
                within the LM's own positions. The stages default it to the run's fine-tuning context length
                (:func:`training_context_length`).
        """
        from planlm.data.alignment import check_fast_tokenizer

        check_fast_tokenizer(tokenizer)
        self.model, self.tokenizer, self.corpus, self.encoder = model.eval(), tokenizer, corpus, encoder
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self._cache_keyword = cache_keyword(self.model.lm)  # how the LM takes its KV cache object
        lm_positions = getattr(self.model.lm.config, "max_position_embeddings", None)
        if window is not None and not 2 <= window <= (lm_positions or window):
            raise PlanlmError(f"the generation window must be in [2, {lm_positions}] (the LM's positions; got {window})")
        self.window = window
        self.constant = not needs_planner(model.config.selection)
        if not self.constant and model.planner is None:
            raise PlanlmError(
                f"a {model.config.selection!r} planned LM needs its planner to generate; this one has none"
            )
        if not self.constant and encoder is None:
            raise PlanlmError("planner-in-the-loop generation needs the corpus's sentence encoder (encoder=...)")
        if encoder is not None and getattr(encoder, "dim", corpus.embedding_dim) != corpus.embedding_dim:
            raise PlanlmError(
                f"encoder {getattr(encoder, 'name', '?')} gives {encoder.dim}-d embeddings, {corpus.path} holds "
                f"{corpus.embedding_dim}-d ones; use the corpus's encoder ({corpus.encoder})"
            )
        cfg = (corpus.manifest.get("config") or {}).get("sentences") or {}
        self.min_chars, self.max_chars = int(cfg.get("min_chars", 1)), cfg.get("max_chars")
        self.exemplars = {int(e["action"]): (e.get("exemplars") or [""])[0] for e in corpus.exemplars()}
        self._embedded: dict[str, np.ndarray] = {}  # sentence text -> embedding, within one generate call
        self.plan_generator = torch.Generator(device=self.device).manual_seed(model.config.seed)  # sampled plans

    # ---- text and sentences ---------------------------------------------------------------------------------------
    def split(self, text: str) -> list[tuple[int, int]]:
        from planlm.data.sentences import split_sentences

        return split_sentences([text], n_process=1, min_chars=self.min_chars, max_chars=self.max_chars)[0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Sentence embeddings as the prepared corpus stores them: ``(n, d)`` float16."""
        from planlm.data.encoders import embed_sentences

        return embed_sentences(self.encoder, list(texts), progress=False)

    def nearest_actions(self, embeddings: np.ndarray) -> np.ndarray:
        from planlm.data.actions import assign

        return assign(embeddings, self.corpus.centroids)[0]

    @property
    def max_positions(self) -> int | None:
        """How many positions a prompt and its continuation may take: the LM's own, or no limit with a window."""
        return None if self.window else getattr(self.model.lm.config, "max_position_embeddings", None)

    # ---- the planner on generated sentences -----------------------------------------------------------------------
    @torch.inference_mode()
    def plan_next_batch(
        self, contexts: Sequence[tuple[np.ndarray | None, np.ndarray]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Planner logits ``(R, K)`` for the sentence after each context ``(embeddings (S, d) or None, counts (S,))``,
        and, for a model that reads plans, the plan weights ``(R, H, K)`` of that sentence and the H - 1 after it
        (re-planned at every sentence end), else None.

        The inputs are built by :class:`PlannerInputs` itself, over a corpus of one article per context (its
        finished sentences plus a placeholder row for the target), so the context rules are exactly the training
        ones.
        """
        from planlm.data.planner_inputs import PlannerInputs
        from planlm.data.prepared import PreparedCorpus

        d = self.corpus.embedding_dim
        rows, counts, article, position, targets = [], [], [], [], []
        for a, (emb, cnt) in enumerate(contexts):
            s = 0 if emb is None else len(emb)
            if s:
                rows.append(np.asarray(emb, np.float16).reshape(s, d))
            rows.append(np.zeros((1, d), np.float16))
            counts.append(np.r_[np.asarray(cnt, np.int64).reshape(s), 0])
            article.append(np.full(s + 1, a, np.int64))
            position.append(np.arange(s + 1, dtype=np.int32))
            targets.append(sum(len(x) for x in article) - 1)
        n = sum(len(x) for x in article)
        batch = PreparedCorpus(
            path=Path("<generated>"), manifest={}, titles=[f"generated {a}" for a in range(len(contexts))],
            texts=[""] * len(contexts), article_split=np.asarray(["test"] * len(contexts)),
            sentence_article=np.concatenate(article), sentence_position=np.concatenate(position),
            sentence_start=np.zeros(n, np.int64), sentence_end=np.zeros(n, np.int64), actions=np.zeros(n, np.int32),
            embeddings=np.concatenate(rows), centroids=self.corpus.centroids,
        )
        inputs = PlannerInputs.from_config(batch, self.model.planner.config, np.concatenate(counts))(np.array(targets))
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        plan = self.model.plan(inputs, self.plan_generator)[1].float() if self.model.config.plans else None
        return self.model.planner(**inputs).float(), plan  # (R, K), (R, H, K) or None

    def plan_next(self, embeddings: np.ndarray, token_counts: np.ndarray) -> torch.Tensor:
        """Planner logits ``(K,)`` for the sentence after ``embeddings (S, d)`` (the finished sentences so far)."""
        return self.plan_next_batch([(embeddings if len(embeddings) else None, token_counts)])[0][0]

    # ---- the loop -------------------------------------------------------------------------------------------------
    def generate_one(
        self,
        prompt: str = "",
        plan: Sequence[int] | None = None,
        sampling: SamplingConfig = SamplingConfig(),
        after_plan: str = "stop",
        use_cache: bool = True,
    ) -> Generation:
        """Generate one continuation of ``prompt`` (a batch of one; see :meth:`generate`)."""
        return self.generate([prompt], [plan], sampling, after_plan, use_cache)[0]

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        plans: Sequence[Sequence[int] | None] | None = None,
        sampling: SamplingConfig = SamplingConfig(),
        after_plan: str = "stop",
        use_cache: bool = True,
    ) -> list[Generation]:
        """Generate a continuation of every prompt, all in one batch (see the module docstring for the loop).

        Args:
            prompts: texts to continue ("" = unconditional, from the BOS token).
            plans: per prompt, forced actions of its generated sentences in order (the continued prompt sentence
                first), or None.
            sampling: max_new_tokens, temperature (0 = greedy), top_p; text i is seeded with ``seed + i``.
            after_plan: when a forced plan runs out: ``stop`` or let the ``planner`` take over.
            use_cache: KV-cached decoding; False re-runs every whole sequence at every step (for testing).
        """
        plans = list(plans) if plans is not None else [None] * len(prompts)
        self._check(prompts, plans, sampling, after_plan)
        from planlm.data.sentences import SentenceTracker

        t0 = time.perf_counter()
        states = [DecodingState(i, p, [int(a) for a in (plans[i] or [])], sampling.seed + i,
                                sampling.max_new_tokens, SentenceTracker(self.min_chars, self.max_chars),
                                self.window)
                  for i, p in enumerate(prompts)]
        self._embedded: dict[str, np.ndarray] = {}  # sentence text -> embedding, for this call
        self._start(states)
        active = list(states)
        cache, valid = None, torch.zeros(len(active), 0, dtype=torch.bool, device=self.device)  # (B, L)
        while active:
            if not use_cache:
                cache, valid = None, valid[:, :0]
                for st in active:
                    st.columns, st.feed_from, st.remember = [], st.window_start, False
            for b, st in enumerate(active):
                st.slide(valid, b)
            logits, cache, valid = self._feed(active, cache, valid)  # (B, V)
            rows = list(range(len(active)))
            while rows:  # texts whose next position was fed before (a retraction, a repeated sentence end) go on
                self._step([active[b] for b in rows], rows, logits, valid, sampling, after_plan)
                recalled = [(b, active[b].recall(valid, b)) for b in rows if not active[b].stop_reason]
                rows = [b for b, lg in recalled if lg is not None]
                logits = torch.stack([lg for _, lg in recalled if lg is not None]) if rows else None  # (R, V)
            keep = [b for b, st in enumerate(active) if not st.stop_reason]
            if len(keep) < len(active):  # finished texts leave the batch
                if cache is not None and keep:
                    cache.batch_select_indices(torch.tensor(keep, device=self.device))
                valid = valid[keep]
                active = [active[b] for b in keep]
        seconds = time.perf_counter() - t0
        return [st.result(seconds) for st in states]

    def _step(self, states: list[DecodingState], rows: list[int], logits: torch.Tensor, valid: torch.Tensor,
              sampling: SamplingConfig, after_plan: str) -> None:
        """Sample one token for each text from its ``logits (R, V)``, follow the splitter, choose the new actions."""
        tokens = self._sample(logits, sampling, [st.rng for st in states])
        for st, x, b in zip(states, tokens, rows):
            self._advance(st, x, b, valid, after_plan)
        self._choose_actions([st for st in states if st.conditioning[-1] is None and not st.stop_reason])

    def _check(self, prompts, plans, sampling: SamplingConfig, after_plan: str) -> None:
        problems = list(sampling.problems())
        K = self.model.config.num_actions
        if not prompts:
            problems.append("no prompts to continue (pass [''] for one unconditional text)")
        if len(plans) != len(prompts):
            problems.append(f"{len(plans)} plans for {len(prompts)} prompts")
        for plan in plans:
            if plan:
                if self.constant:
                    problems.append(f"a {self.model.config.selection!r} planned LM has no actions to plan; drop --plan")
                bad = [a for a in plan if not 0 <= int(a) < K]
                if bad:
                    problems.append(f"plan actions {bad} are not action ids in [0, {K})")
        if after_plan not in AFTER_PLAN:
            problems.append(f"after_plan must be one of {', '.join(AFTER_PLAN)} (got {after_plan!r})")
        tok = self.tokenizer
        if any(not p for p in prompts) and tok.bos_token_id is None and tok.eos_token_id is None:
            problems.append("unconditional generation starts from the BOS token, and this tokenizer has none; "
                            "pass --prompt TEXT")
        limit = self.max_positions  # None with a window: every length runs
        if limit is not None and prompts:
            longest = max(len(tok(p, add_special_tokens=False)["input_ids"]) if p else 1 for p in prompts)
            # the last sampled token is never fed, so it needs no position of its own
            if longest + sampling.max_new_tokens - 1 > limit:
                problems.append(
                    f"{longest} prompt tokens + max_new_tokens {sampling.max_new_tokens} - 1 exceed the LM's "
                    f"{limit} positions; shorten the prompt or lower max_new_tokens"
                )
        raise_if_problems(problems, "generate")

    def _start(self, states: list[DecodingState]) -> None:
        """Tokens, sentences and actions of the prompts (one encoder call for all of their finished sentences)."""
        from planlm.data.alignment import align_tokens
        from planlm.data.sentences import sentence_end_chars

        tok, ends_at = self.tokenizer, sentence_end_chars()
        finished_texts, owners = [], []
        for st in states:
            if not st.prompt:
                bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
                st.ids, st.slot, st.fed_action, st.char_end, st.prompt_tokens = [int(bos)], [0], [None], [0], 1
                st.sentences.append(Sentence("", None, "", token_start=1))
                st.conditioning.append(None)
                continue
            enc = tok(st.prompt, add_special_tokens=False, return_offsets_mapping=True)
            spans = self.split(st.prompt)
            if not enc["input_ids"] or not spans:
                raise PlanlmError(f"the prompt {st.prompt!r} holds no sentence; pass some text or an empty prompt")
            st.ids, st.text, st.prompt_tokens = list(enc["input_ids"]), st.prompt, len(enc["input_ids"])
            st.char_end = [int(e) for _, e in enc["offset_mapping"]]
            st.char_end[-1] = len(st.prompt)
            st.tracker.spans(st.prompt)
            starts, ends = np.array([s for s, _ in spans]), np.array([e for _, e in spans])
            token_sentence, _, first_token = align_tokens(np.asarray(enc["offset_mapping"]), starts, ends, 0)
            # A prompt ending in sentence-final punctuation or a line break is complete: a new sentence starts (the
            # splitter confirms or retracts that with the first generated tokens).
            complete = st.prompt[-1] in ends_at or st.prompt.rstrip(" \t")[-1:] in ends_at
            n_done = len(spans) if complete else len(spans) - 1
            # the last token of a finished sentence and any tokens after it carry the next sentence (DESIGN.md 1.4)
            last = [int(first_token[i + 1]) - 1 for i in range(n_done) if i + 1 < len(spans)]
            if complete:
                last.append(st.last_token_before(spans[-1][1]))
            for i, (s, e) in enumerate(spans[:n_done]):
                st.sentences.append(Sentence(st.prompt[s:e], None, "prompt", generated=False,
                                             token_start=int(first_token[i]), token_end=last[i] + 1))
                st.ends.append(e)
                finished_texts.append(st.prompt[s:e])
                owners.append((st, i))
            st.sentences.append(Sentence("", None, "", token_start=last[-1] + 1 if complete else
                                         int(first_token[n_done])))
            st.slot = [int(r) for r in token_sentence[1:]] + [n_done]
            if complete:
                st.slot[last[-1]:] = [n_done] * (len(st.ids) - last[-1])
            st.conditioning = [None] * len(st.sentences)
            st.fed_action = [None] * len(st.ids)
        if finished_texts and not self.constant:
            emb = np.stack(self._embed_cached(finished_texts))
            for (st, i), e, a in zip(owners, emb, self.nearest_actions(emb)):
                st.embeddings[i] = e
                st.conditioning[i] = Conditioning(None, int(a))
                st.sentences[i].action, st.sentences[i].exemplar = int(a), self.exemplars.get(int(a), "")
        for st, i in owners:
            if self.constant:
                st.conditioning[i] = Conditioning(None, 0)
                st.sentences[i].source = "constant"
        self._choose_actions(states)

    def _choose_actions(self, states: list[DecodingState]) -> None:
        """The action of every text's new open sentence: the next plan entry, else the planner (see
        :meth:`_plan_open_sentences`)."""
        ask = []
        missing = [(st, i) for st in states for i in range(len(st.ends)) if i not in st.embeddings]
        if missing and not self.constant:
            for (st, i), e in zip(missing, self._embed_cached([st.sentences[i].text for st, i in missing])):
                st.embeddings[i] = e
        for st in states:
            cur = st.sentences[-1]
            if self.constant:
                st.conditioning[-1], cur.source = Conditioning(None, 0), "constant"
            elif st.planned < len(st.plan):
                a = st.plan[st.planned]
                st.planned += 1
                st.conditioning[-1] = Conditioning(None, a)
                cur.action, cur.source, cur.exemplar = a, "plan", self.exemplars.get(a, "")
            else:
                ask.append(st)
        if ask:
            self._plan_open_sentences(ask)

    def _plan_open_sentences(self, states: list[DecodingState]) -> None:
        """The planner's action for each text's open sentence, from its finished sentences: one planner call for
        all texts. A text that finished the same sentences before (a sentence end retracted, then made again) gets
        the same conditioning object back, so its earlier feed under it can be recalled."""
        ask = []
        for st in states:
            key = tuple((s.text, s.token_end - s.token_start) for s in st.sentences[: len(st.ends)])
            if key in st.planned_after:
                self._set_planned(st, st.planned_after[key])
            else:
                ask.append((st, key))
        if not ask:
            return
        logits, plans = self.plan_next_batch([st.context() for st, _ in ask])  # (R, K), (R, H, K) or None
        for r, ((st, key), lg) in enumerate(zip(ask, logits)):
            st.planned_after[key] = Conditioning(lg, int(lg.argmax()), None if plans is None else plans[r])
            self._set_planned(st, st.planned_after[key])

    def _set_planned(self, st: DecodingState, cond: Conditioning) -> None:
        cur, a = st.sentences[-1], cond.action
        st.conditioning[-1] = cond
        cur.action, cur.source, cur.probability = a, "planner", float(torch.softmax(cond.logits, -1)[a])
        cur.exemplar = self.exemplars.get(a, "")

    def _embed_cached(self, texts: list[str]) -> list[np.ndarray]:
        """Embeddings of sentence texts, each text embedded once per :meth:`generate` call."""
        new = list(dict.fromkeys(t for t in texts if t not in self._embedded))
        if new:
            self._embedded.update(zip(new, self.embed(new)))
        return [self._embedded[t] for t in texts]

    def _feed(self, states: list[DecodingState], cache, valid: torch.Tensor):
        """One forward pass: every text feeds its positions from ``feed_from`` on; logits ``(B, V)`` of the last."""
        lengths = [len(st.ids) - st.feed_from for st in states]
        T = max(lengths)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rows_ids, rows_pos, rows_slot = [], [], []  # built as lists: four tensors per step, not four per text
        table: list[Conditioning] = []
        for st, n in zip(states, lengths):
            f, local, slots = st.feed_from, {}, []
            for p in range(f, len(st.ids)):
                s = st.slot[p]
                if s not in local:
                    local[s] = len(table)
                    table.append(st.conditioning[s])
                slots.append(local[s])
                st.fed_action[p] = st.sentences[s].action
            rows_ids.append([pad] * (T - n) + st.ids[f:])
            rows_pos.append([0] * (T - n) + list(range(f - st.window_start, len(st.ids) - st.window_start)))
            rows_slot.append([0] * (T - n) + slots)
        input_ids = torch.tensor(rows_ids, dtype=torch.long)  # (B, T), left-padded
        position_ids = torch.tensor(rows_pos, dtype=torch.long)  # (B, T)
        token_slot = torch.tensor(rows_slot, dtype=torch.long)  # (B, T) rows of this call's sentence table
        new_valid = torch.arange(T) >= torch.tensor([[T - n] for n in lengths])  # (B, T)
        L = valid.shape[1]
        if cache is None:  # the batch's own cache object, grown in place by every feed
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.lm.config)
        kwargs = {"input_ids": input_ids.to(self.device), "position_ids": position_ids.to(self.device),
                  "attention_mask": torch.cat([valid, new_valid.to(self.device)], 1).long(), "use_cache": True,
                  self._cache_keyword: cache}
        if not self.constant:
            kwargs["token_slot"] = token_slot.to(self.device)
            kwargs.update(self._table_kwargs(table))
        out = self.model(**kwargs)
        if cache.get_seq_length() != L + T:
            raise PlanlmError(f"{type(self.model.lm).__name__} did not fill its KV cache; use use_cache=False")
        logits = out.logits[:, -1].float()  # (B, V)
        for b, (st, n) in enumerate(zip(states, lengths)):
            st.columns.extend(range(L + T - n, L + T))
            st.feed_from = len(st.ids)
            if st.remember:
                st.fed(L + T - 1, logits[b])
        valid = torch.cat([valid, new_valid.to(self.device)], 1)  # (B, L + T)
        return logits, cache, valid

    def _table_kwargs(self, table: list[Conditioning]) -> dict:
        """The sentence table of one forward pass as PlannedLM arguments (planner logits and/or oracle actions)."""
        K = self.model.config.num_actions
        predicted = torch.tensor([c.logits is not None for c in table], device=self.device)  # (N,)
        oracle = torch.tensor([0 if c.logits is not None else c.action for c in table], device=self.device)  # (N,)
        if not predicted.any():
            return {"oracle_actions": oracle}
        logits = torch.stack([c.logits if c.logits is not None else torch.zeros(K, device=self.device)
                              for c in table])  # (N, K)
        if any(c.plan is not None for c in table):  # plans; a forced / prompt sentence: its action at offset 1 only
            plans = torch.zeros(len(table), self.model.config.horizon, K, device=self.device)  # (N, H, K)
            plans[torch.arange(len(table)), 0, oracle] = 1.0
            for i, c in enumerate(table):
                if c.plan is not None:
                    plans[i] = c.plan
            return {"plan_weights": plans}
        if predicted.all():
            return {"planner_logits": logits}
        return {"planner_logits": logits, "oracle_actions": oracle, "predicted_mask": predicted}

    @staticmethod
    def _sample(logits: torch.Tensor, sampling: SamplingConfig, rngs: list) -> list[int]:
        """One token per row of ``logits (B, V)``: temperature, then nucleus sampling by Hugging Face's
        ``TopPLogitsWarper`` rule (the most probable tokens until their mass reaches top_p, at least one), drawn by
        inverse CDF from ONE uniform of each row's own seeded generator (so a text does not depend on its batch;
        one batched draw instead of a multinomial call per row)."""
        if sampling.temperature == 0:
            return logits.argmax(-1).tolist()
        scores = logits / sampling.temperature if sampling.temperature != 1.0 else logits
        probs, order = torch.softmax(scores, -1), None  # (B, V)
        if sampling.top_p < 1.0:
            probs, order = probs.sort(-1, descending=True)  # (B, V) most probable first
        cum = probs.cumsum(-1)  # (B, V)
        if order is not None:  # the nucleus: the tokens whose preceding mass is below top_p (the first always)
            total = cum.gather(1, (cum - probs < sampling.top_p).sum(-1, keepdim=True) - 1)  # (B, 1) its mass
        else:
            total = cum[:, -1:]  # (B, 1)
        u = torch.cat([torch.rand(1, generator=g) for g in rngs]).to(cum.device).unsqueeze(1)  # (B, 1)
        # target < total, so the first token with cum > target has probability > 0 and lies in the nucleus
        target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # (B, 1)
        idx = torch.searchsorted(cum, target, right=True)  # (B, 1)
        if order is not None:
            idx = order.gather(1, idx)
        return idx.squeeze(1).tolist()

    def _advance(self, st: DecodingState, x: int, row: int, valid: torch.Tensor, after_plan: str) -> None:
        """Take the sampled token ``x`` of one text and bring its sentences in line with the splitter."""
        tok = self.tokenizer
        if tok.eos_token_id is not None and x == tok.eos_token_id:
            st.stop_reason = "eos"
            return
        st.append(x, tok)
        spans = st.tracker.spans(st.text)
        m = len(st.ends)  # finished sentences; sentence m is open
        wrong = next((i for i in range(m) if i >= len(spans) or spans[i][1] != st.ends[i]), None)
        if wrong is not None:
            self._retract(st, wrong, row, valid)
        elif len(spans) > m + 1:
            self._finish(st, spans[m], row, valid, after_plan)
        if not st.stop_reason and st.new_tokens >= st.max_new_tokens:
            st.stop_reason = "length"

    def _finish(self, st: DecodingState, span: tuple[int, int], row: int, valid, after_plan: str) -> None:
        """The splitter ends the open sentence at ``span``: finish it; the next sentence's action conditions its
        last token on (DESIGN.md 1.4), so the tokens sampled after it under the old action are dropped."""
        m = len(st.ends)
        cur = st.sentences[m]
        last = max(st.last_token_before(span[1]), cur.token_start)
        keep = st.retractions.get(last, 0) >= MAX_RETRACTIONS
        if not keep or (st.plan and st.planned >= len(st.plan) and after_plan == "stop"):
            st.truncate(max(last + 1, st.prompt_tokens))
        cur.text, cur.token_end, cur.finished = st.text[span[0]:span[1]], last + 1, True
        st.ends.append(span[1])
        if st.plan and st.planned >= len(st.plan) and after_plan == "stop":
            st.stop_reason = "plan"
            return
        st.sentences.append(Sentence("", None, "", token_start=last + 1))
        st.conditioning.append(None)  # chosen for all texts at once after this step
        for p in range(last, len(st.ids)):
            st.slot[p] = m + 1
        st.refeed_from(last, valid, row)

    def _retract(self, st: DecodingState, i: int, row: int, valid) -> None:
        """The splitter no longer ends sentence ``i`` where it was finished: reopen it, drop the later sentences and
        the tokens sampled under their actions (or, after MAX_RETRACTIONS at that token, re-condition them)."""
        last = st.sentences[i].token_end - 1
        st.retractions[last] = st.retractions.get(last, 0) + 1
        dropped = st.sentences[i + 1:]
        st.planned -= sum(s.source == "plan" for s in dropped)
        del st.sentences[i + 1:], st.conditioning[i + 1:], st.ends[i:]
        for j in [j for j in st.embeddings if j >= i]:
            del st.embeddings[j]
        if st.retractions[last] <= MAX_RETRACTIONS:
            st.truncate(max(last + 1, st.prompt_tokens))
        cur = st.sentences[i]
        cur.text, cur.token_end, cur.finished, cur.generated = "", 0, False, True
        for p in range(last, len(st.ids)):
            st.slot[p] = i
        st.refeed_from(last, valid, row)


def training_context_length(config: dict) -> int | None:
    """The context length a planned LM was fine-tuned (or planned-pretrained) on, from its recorded config
    (``finetune_config.json`` / the manifest's ``config``): the default generation window. None when not recorded."""
    windows = config.get("windows") or {}
    n = windows.get("context_length") or config.get("block_size")
    return int(n) if n else None


def resolve_window(window: int | None, config: dict) -> int | None:
    """A stage's ``window`` option: None = the run's training context length, 0 = no window (the whole text, within
    the LM's positions), N = N positions."""
    if window is None:
        return training_context_length(config)
    return window or None
