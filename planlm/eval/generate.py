"""`planlm generate`: planner-in-the-loop generation with KV-cached decoding (DESIGN.md 1.7; the paper's Appendix B).

The loop, for one text:

1. The prompt is split into sentences with the corpus's splitter (:func:`planlm.data.sentences.split_sentences`,
   the settings `planlm prepare` used). Its finished sentences are embedded with the corpus's sentence encoder and
   get their nearest-centroid action (what `prepare` would have assigned them). A prompt whose last character is
   sentence-final punctuation or a line break is complete and generation starts a new sentence; otherwise its last
   sentence is continued. An empty prompt starts from the tokenizer's BOS token (not part of any sentence).
2. The action of the sentence being written comes from the forced plan (``--plan 17,4,903``), else from the planner,
   which reads the finished sentences before it with the SAME context rules as in training
   (:class:`planlm.data.planner_inputs.PlannerInputs` over the new embeddings: the sentences in the
   ``context_tokens`` LM tokens before it, or the last ``context_sentences``, or the whole text in causal mode). The
   planner's logits go through the model's selection (soft: softmax(logits / T), hard: onehot(argmax)).
3. Tokens are sampled (temperature, top-p; Hugging Face's logits warpers) with the Hugging Face KV cache passed
   through :meth:`PlannedLM.forward` (``past_key_values``, ``use_cache``); each new position carries the current
   sentence's action row (``token_slot``).
4. After every sampled token the text of the current sentence plus that token is split again (only once the
   sentence holds sentence-final punctuation or a line break: the splitter cannot cut elsewhere). When it splits in
   two, the current sentence is finished: it is embedded, the next action is chosen, and -- because the last token
   of a sentence (and the whitespace tokens after it) carry the NEXT sentence's action (DESIGN.md 1.4) -- the cache
   is cropped back to that token, those positions are fed again under the new action and the token after them is
   sampled anew. So every generated position is conditioned exactly as the same text would be in training.
   (The discarded token was sampled under the old action; keeping it would condition a sentence's first token on
   the previous sentence's plan.)
5. Generation stops at ``max_new_tokens``, at the EOS token, or -- with a forced plan and ``after_plan="stop"``
   (the default) -- when the sentence after the last planned one would start; with ``after_plan="planner"`` the
   planner takes over after the plan.

Generation is one text at a time (batch 1): KV-cached decoding with per-sentence re-planning; throughput against
plain Hugging Face ``generate`` is measured by ``bench/generate.py``.
"""

from __future__ import annotations

import functools
import json as jsonlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from planlm.errors import PlanlmError, raise_if_problems
from planlm.models.selection import needs_planner
from planlm.persist import load_run

AFTER_PLAN = ("stop", "planner")


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
    """Seed of the token sampler."""

    def problems(self) -> list[str]:
        out = []
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
    """What :func:`generate_one` returns."""

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
    seconds: float = 0.0

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_tokens

    @property
    def plan(self) -> list[int | None]:
        """Actions of the sentences that were generated (continued prompt sentence included)."""
        return [s.action for s in self.sentences if s.generated]

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("position_actions")
        d["new_tokens"] = self.new_tokens
        return d


@functools.lru_cache(maxsize=1)
def _sentence_punctuation() -> frozenset[str]:
    from spacy.pipeline.sentencizer import Sentencizer

    return frozenset(Sentencizer.default_punct_chars) | {"\n"}


class PlannedGenerator:
    """Planner-in-the-loop generation for one planned LM; build once, call :meth:`generate_one` per text."""

    def __init__(self, model, tokenizer, corpus, encoder=None, device: str | torch.device | None = None):
        """Prepare the loop.

        Args:
            model: a :class:`planlm.models.planned_lm.PlannedLM`.
            tokenizer: its fast tokenizer.
            corpus: the prepared corpus it was fine-tuned on (centroids, exemplars, splitter settings).
            encoder: an object with ``encode(list[str]) -> (n, d)`` (:func:`planlm.data.encoders.load_encoder`);
                needed unless the model's selection is fixed or uniform.
            device: where the model runs; default: where its parameters are.
        """
        from planlm.data.alignment import check_fast_tokenizer

        check_fast_tokenizer(tokenizer)
        self.model, self.tokenizer, self.corpus, self.encoder = model.eval(), tokenizer, corpus, encoder
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
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

    # ---- the planner on generated sentences -----------------------------------------------------------------------
    @torch.inference_mode()
    def plan_next(self, embeddings: np.ndarray, token_counts: np.ndarray) -> torch.Tensor:
        """Planner logits ``(K,)`` for the sentence after ``embeddings (S, d)`` (the finished sentences so far).

        The inputs are built by :class:`PlannerInputs` itself, over a one-article corpus made of the finished
        sentences plus a placeholder row for the target, so the context rules are exactly the training ones.
        """
        from planlm.data.planner_inputs import PlannerInputs
        from planlm.data.prepared import PreparedCorpus

        s, d = len(embeddings), self.corpus.embedding_dim
        rows = np.concatenate([np.asarray(embeddings, np.float16).reshape(s, d), np.zeros((1, d), np.float16)])
        n = s + 1
        article = PreparedCorpus(
            path=Path("<generated>"), manifest={}, titles=["generated"], texts=[""],
            article_split=np.asarray(["test"]), sentence_article=np.zeros(n, np.int64),
            sentence_position=np.arange(n, dtype=np.int32), sentence_start=np.zeros(n, np.int64),
            sentence_end=np.zeros(n, np.int64), actions=np.zeros(n, np.int32), embeddings=rows,
            centroids=self.corpus.centroids,
        )
        counts = np.r_[np.asarray(token_counts, np.int64).reshape(s), 0]
        inputs = PlannerInputs.from_config(article, self.model.planner.config, counts)(np.array([s]))
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return self.model.planner(**inputs)[0].float()  # (K,)

    # ---- the LM ---------------------------------------------------------------------------------------------------
    def _forward(self, ids: list[int], rows: list[int], table: list[dict], start: int, cache, use_cache: bool):
        """Feed positions ``start..`` (``cache`` holds positions ``0..start-1``; None with ``start`` 0)."""
        m = self.model
        kwargs = {"input_ids": torch.tensor([ids[start:]], device=self.device), "use_cache": use_cache}
        if cache is not None:
            kwargs["past_key_values"] = cache
        if not self.constant:
            used = sorted(set(rows[start:]))  # the sentence table of this call: only the rows its tokens carry
            local = {r: i for i, r in enumerate(used)}
            kwargs["token_slot"] = torch.tensor([[local[r] for r in rows[start:]]], device=self.device)  # (1, T)
            entries = [table[r] for r in used]
            predicted = torch.tensor([e["logits"] is not None for e in entries], device=self.device)  # (N,)
            oracle = torch.tensor([e["forced"] if e["logits"] is None else 0 for e in entries], device=self.device)
            K = m.config.num_actions
            logits = torch.stack([e["logits"] if e["logits"] is not None else torch.zeros(K, device=self.device)
                                  for e in entries])  # (N, K)
            if predicted.all():
                kwargs["planner_logits"] = logits
            elif not predicted.any():
                kwargs["oracle_actions"] = oracle
            else:
                kwargs.update(planner_logits=logits, oracle_actions=oracle, predicted_mask=predicted)
        out = m(**kwargs)
        return out.logits[0, -1].float(), out.past_key_values  # (V,)

    def _sampler(self, sampling: SamplingConfig) -> Callable[[torch.Tensor], int]:
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

        generator = torch.Generator().manual_seed(sampling.seed)
        warpers = []
        if sampling.temperature > 0:
            if sampling.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_p < 1.0:
                warpers.append(TopPLogitsWarper(sampling.top_p))

        def sample(logits: torch.Tensor) -> int:  # logits (V,)
            if sampling.temperature == 0:
                return int(logits.argmax())
            scores = logits[None].cpu()  # (1, V)
            for w in warpers:
                scores = w(None, scores)
            return int(torch.multinomial(torch.softmax(scores, -1)[0], 1, generator=generator))

        return sample

    # ---- the loop -------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate_one(
        self,
        prompt: str = "",
        plan: Sequence[int] | None = None,
        sampling: SamplingConfig = SamplingConfig(),
        after_plan: str = "stop",
        use_cache: bool = True,
    ) -> Generation:
        """Generate one continuation of ``prompt`` (see the module docstring for the loop).

        Args:
            prompt: text to continue ("" = unconditional, from the BOS token).
            plan: forced actions of the generated sentences, in order (the continued prompt sentence first).
            sampling: max_new_tokens, temperature (0 = greedy), top_p, seed.
            after_plan: when a forced plan runs out: ``stop`` or let the ``planner`` take over.
            use_cache: KV-cached decoding; False re-runs the whole sequence for every token (for testing).
        """
        self._check(plan, sampling, after_plan)
        t0 = time.perf_counter()
        tok = self.tokenizer
        sample = self._sampler(sampling)
        plan = [int(a) for a in plan] if plan else []
        punct = _sentence_punctuation()

        # Per-sentence state, in text order. `table[i]` is sentence i's conditioning: its planner logits or its forced
        # (prompt: nearest-centroid) action; `rows[p]` is the sentence whose action position p carries.
        sentences: list[Sentence] = []
        table: list[dict] = []
        finished_emb: list[np.ndarray] = []
        finished_counts: list[int] = []

        def choose(source_index: int) -> tuple[dict, Sentence]:
            """The conditioning of the next sentence: forced plan, the planner, or the constant vector."""
            if self.constant:
                return {"logits": None, "forced": 0}, Sentence("", None, "constant")
            if source_index < len(plan):
                a = plan[source_index]
                return {"logits": None, "forced": a}, Sentence("", a, "plan", exemplar=self.exemplars.get(a, ""))
            emb = np.stack(finished_emb) if finished_emb else np.zeros((0, self.corpus.embedding_dim), np.float16)
            logits = self.plan_next(emb, np.asarray(finished_counts, np.int64))  # (K,)
            a = int(logits.argmax())
            p = float(torch.softmax(logits, -1)[a])
            return {"logits": logits, "forced": a}, Sentence("", a, "planner", p, self.exemplars.get(a, ""))

        # 1. the prompt
        if prompt:
            enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            spans = self.split(prompt)
            complete = prompt[-1] in punct or prompt.rstrip(" \t")[-1:] in punct
            if not ids or not spans:
                raise PlanlmError(f"the prompt {prompt!r} holds no sentence; pass some text or an empty prompt")
            from planlm.data.alignment import align_tokens

            starts, ends = np.array([s for s, _ in spans]), np.array([e for _, e in spans])
            token_sentence, _, sentence_token_start = align_tokens(np.asarray(enc["offset_mapping"]), starts, ends, 0)
            n_done = len(spans) if complete else len(spans) - 1
            texts = [prompt[s:e] for s, e in spans]
            counts = np.bincount(token_sentence, minlength=len(spans))
            if n_done and not self.constant:
                emb = self.embed(texts[:n_done])
                finished_emb.extend(emb)
                finished_counts.extend(int(c) for c in counts[:n_done])
                for i, a in enumerate(self.nearest_actions(emb)):
                    a = int(a)
                    table.append({"logits": None, "forced": a})
                    sentences.append(Sentence(texts[i], a, "prompt", exemplar=self.exemplars.get(a, ""),
                                              generated=False))
            elif n_done:
                for i in range(n_done):
                    table.append({"logits": None, "forced": 0})
                    sentences.append(Sentence(texts[i], None, "constant", generated=False))
            for i in range(n_done):
                sentences[i].token_start = int(sentence_token_start[i])
                sentences[i].token_end = int(sentence_token_start[i + 1]) if i + 1 < len(spans) else len(ids)
            entry, current = choose(0)
            table.append(entry)
            sentences.append(current)
            current.token_start = int(sentence_token_start[n_done]) if n_done < len(spans) else len(ids)
            # DESIGN.md 1.4: a token carries the action of the sentence of the NEXT token; the last prompt token
            # carries the sentence being written.
            rows = [int(r) for r in token_sentence[1:]] + [n_done]
        else:
            bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            if bos is None:
                raise PlanlmError("unconditional generation starts from the BOS token, and this tokenizer has none; "
                                  "pass --prompt TEXT")
            ids, rows = [int(bos)], [0]
            entry, current = choose(0)
            table.append(entry)
            sentences.append(current)
            current.token_start = 1
        prompt_tokens = len(ids)
        limit = getattr(self.model.lm.config, "max_position_embeddings", None)
        if limit is not None and prompt_tokens + sampling.max_new_tokens > limit:
            raise PlanlmError(
                f"{prompt_tokens} prompt tokens + max_new_tokens {sampling.max_new_tokens} exceed the LM's "
                f"{limit} positions; shorten the prompt or lower max_new_tokens"
            )
        position_actions: list[int | None] = [None] * len(ids)

        cache = None

        def feed(start: int) -> torch.Tensor:
            """Feed positions ``start..`` (all of them without the cache); logits ``(V,)`` of the last one."""
            nonlocal cache
            if not use_cache:
                start = 0
            for p in range(start, len(ids)):
                position_actions[p] = sentences[rows[p]].action
            if cache is not None and cache.get_seq_length() > start:
                # positions from `start` on are recomputed under their current actions (transformers 5: crop(-n)
                # removes the last n positions)
                cache.crop(start - cache.get_seq_length())
            logits, new_cache = self._forward(ids, rows, table, start, cache, use_cache)
            if use_cache and new_cache is None:
                raise PlanlmError(f"{type(self.model.lm).__name__} returned no KV cache; use use_cache=False")
            cache = new_cache if use_cache else None
            return logits

        logits = feed(0)
        planned = sum(1 for s in sentences if s.source == "plan")
        stop_reason = "length"
        # Whether the current sentence holds a character the splitter can cut after (else no split is tried).
        may_end = any(c in punct for c in tok.decode(ids[sentences[-1].token_start :]))
        x = sample(logits)
        while True:
            if tok.eos_token_id is not None and x == tok.eos_token_id:
                stop_reason = "eos"
                break
            cur = sentences[-1]
            tail = ids[cur.token_start:]
            boundary = None
            if may_end:
                text = tok.decode(tail + [x])
                spans = self.split(text)
                if len(spans) >= 2:
                    boundary = (text, spans[0])
            if boundary is not None:
                text, (s0, e0) = boundary
                # The last tail token whose text starts before the sentence's end is its last token.
                starts = [len(tok.decode(tail[:i])) for i in range(len(tail) + 1)]
                k = max(i for i in range(len(tail)) if starts[i] < e0) if tail else 0
                last = cur.token_start + k  # absolute position of the finished sentence's last token
                cur.text, cur.token_end = text[s0:e0], last + 1
                if not self.constant:
                    finished_emb.append(self.embed([cur.text])[0])
                    finished_counts.append(cur.token_end - cur.token_start)
                if plan and planned >= len(plan) and after_plan == "stop":
                    del ids[last + 1 :], rows[last + 1 :], position_actions[last + 1 :]
                    stop_reason = "plan"
                    cur.finished = True
                    break
                entry, nxt = choose(planned)
                planned += nxt.source == "plan"
                table.append(entry)
                sentences.append(nxt)
                nxt.token_start = last + 1
                for p in range(last, len(ids)):  # the finished sentence's last token and any gap tokens
                    rows[p] = len(sentences) - 1
                may_end = any(c in punct for c in tok.decode(ids[last + 1 :]))
                logits = feed(last)  # x is dropped: it was sampled under the old action
                x = sample(logits)
                continue
            ids.append(x)
            rows.append(len(sentences) - 1)
            position_actions.append(None)
            may_end = may_end or any(c in punct for c in tok.decode([x]))
            if len(ids) - prompt_tokens >= sampling.max_new_tokens:
                position_actions[-1] = cur.action  # conditions nothing yet; recorded for completeness
                break
            logits = feed(len(ids) - 1)
            x = sample(logits)

        if stop_reason != "plan":  # the sentence being written when generation stopped
            cur = sentences[-1]
            cur.token_end = len(ids)
            cur.text = tok.decode(ids[cur.token_start :]).strip()
            cur.finished = stop_reason == "eos"
            if not cur.text:
                sentences.pop()  # generation stopped right where a new sentence would start
        start = prompt_tokens
        return Generation(
            prompt=prompt, text=tok.decode(ids[start:]), sentences=sentences, token_ids=[int(i) for i in ids],
            prompt_tokens=prompt_tokens, position_actions=position_actions, stop_reason=stop_reason,
            seconds=time.perf_counter() - t0,
        )

    def _check(self, plan, sampling: SamplingConfig, after_plan: str) -> None:
        problems = list(sampling.problems())
        K = self.model.config.num_actions
        if plan:
            if self.constant:
                problems.append(f"a {self.model.config.selection!r} planned LM has no actions to plan; drop --plan")
            bad = [a for a in plan if not 0 <= int(a) < K]
            if bad:
                problems.append(f"plan actions {bad} are not action ids in [0, {K})")
        if after_plan not in AFTER_PLAN:
            problems.append(f"after_plan must be one of {', '.join(AFTER_PLAN)} (got {after_plan!r})")
        raise_if_problems(problems, "generate")


# ---------------------------------------------------------------------------------------------- loading a run


def parse_plan(plan: str | Sequence[int] | None) -> list[int] | None:
    """``"17,4,903"`` (or a list) -> ``[17, 4, 903]``."""
    if plan is None or plan == "" or plan == []:
        return None
    if isinstance(plan, str):
        try:
            return [int(p) for p in plan.replace(" ", "").strip("[]").split(",") if p]
        except ValueError:
            raise PlanlmError(
                f"--plan {plan!r} is not a comma-separated list of action ids, e.g. --plan 17,4,903"
            ) from None
    return [int(p) for p in plan]


def format_generation(g: Generation) -> str:
    """Human-readable: the text, then one line per sentence with its action and that action's nearest exemplar."""
    lines = [g.prompt + g.text, "", f"({g.new_tokens} new tokens, stop: {g.stop_reason}, {g.seconds:.2f} s)", ""]
    for i, s in enumerate(g.sentences):
        who = s.source + (f" p={s.probability:.2f}" if s.probability is not None else "")
        act = "-" if s.action is None else str(s.action)
        lines.append(f"[{i}] action {act} ({who}){'' if s.finished else ' (unfinished)'}: {s.text}")
        if s.exemplar:
            lines.append(f"      exemplar of action {act}: {s.exemplar}")
    return "\n".join(lines)


def generate(
    run: Path = Path("runs/finetune"),
    prompt: str = "",
    plan: str | None = None,
    after_plan: str = "stop",
    sampling: SamplingConfig = SamplingConfig(),
    num_samples: int = 1,
    json: bool = False,
    prepared: Path | None = None,
    encoder: str | None = None,
    device: str | None = None,
    speculative: bool = False,
) -> list[dict]:
    """Generate text with the planner in the loop; show each sentence's action and that action's nearest exemplar.

    Each sentence is conditioned on a writing action chosen by the planner from the sentences before it (re-planned
    at every sentence end, KV-cached decoding) or forced by --plan. An EOS token or max_new_tokens ends generation;
    with --plan and --after_plan stop (default), so does the end of the plan's last sentence.

    Args:
        run: a `planlm finetune` output folder.
        prompt: text to continue; its sentences seed the planner's context ("" = unconditional).
        plan: force the actions of the generated sentences, e.g. 17,4,903 (an outline in action space).
        after_plan: when the forced plan runs out: stop, or let the planner take over.
        sampling: max_new_tokens, temperature (0 = greedy), top_p, seed.
        num_samples: texts to generate (seeds seed, seed + 1, ...).
        json: print JSON (one object per text) instead of text.
        prepared: the prepared corpus (default: the one recorded in the run's manifest).
        encoder: sentence encoder (default: the prepared corpus's); must give the same embeddings.
        device: cpu, cuda, ... (default: a GPU when visible).
        speculative: RUN is a `planlm pretrain-lm` LM with multi-token heads: self-speculative decoding (heads 2..n
            draft, head 1 verifies; same output as plain greedy decoding, head 1's distribution when sampling),
            reporting the tokens accepted per forward pass. An LM folder without it decodes plainly.

    Returns:
        The generations as JSON-ready dicts.
    """
    problems = list(sampling.problems())
    if num_samples < 1:
        problems.append(f"num_samples must be positive (got {num_samples})")
    if after_plan not in AFTER_PLAN:
        problems.append(f"after_plan must be one of {', '.join(AFTER_PLAN)} (got {after_plan!r})")
    try:
        forced = parse_plan(plan)
    except PlanlmError as e:
        problems.append(str(e))
        forced = None
    from planlm.eval.speculative import generate_lm, is_lm_folder

    if not is_lm_folder(run) and speculative:
        problems.append("--speculative true needs a `planlm pretrain-lm` LM folder with MTP heads (--mtp.n_heads)")
    raise_if_problems(problems, "generate")
    if is_lm_folder(run):  # an LM without planner (NTP or MTP): plain or self-speculative decoding
        return generate_lm(Path(run), prompt, sampling, num_samples, json, speculative, device)
    model, tokenizer, corpus, _ = load_run(run, prepared, device)
    enc = None
    if needs_planner(model.config.selection):
        from planlm.data.encoders import load_encoder

        enc = load_encoder(encoder or corpus.encoder, device=device)
    gen = PlannedGenerator(model, tokenizer, corpus, enc)
    results = []
    for i in range(num_samples):
        s = SamplingConfig(sampling.max_new_tokens, sampling.temperature, sampling.top_p, sampling.seed + i)
        g = gen.generate_one(prompt, forced, s, after_plan)
        results.append(g.to_json())
        if json:
            print(jsonlib.dumps(results[-1], ensure_ascii=False))
        else:
            print(("\n" + "=" * 80 + "\n" if i else "") + format_generation(g))
    return results
