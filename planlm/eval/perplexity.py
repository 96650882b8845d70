"""Perplexity of a planned LM on one split of a prepared corpus (DESIGN.md 1.7, section 3).

Entry point::

    perplexity(model, corpus, tokenizer, split="test", actions="predicted", protocol="paper", context_length=128,
               stride=None, max_articles=None, max_tokens=None, batch_size=32, planner_inputs_fn=None,
               fixed_action=None, progress=True, window_step=1) -> PerplexityResult

Protocols (windows never cross articles; ``labels`` follow :mod:`planlm.data.windows`):

- ``paper``: windows of ``context_length`` (128) tokens with stride 1, only the last token of each window scored:
  every token is predicted from the ``context_length - 1`` tokens before it. The first ``context_length - 1`` tokens
  of an article have fewer tokens before them; they ARE scored, each with all the tokens before it (a shorter window
  that starts at the article's first token). Decision and why: dropping them would score a different set of tokens
  than the strided protocol and bias the perplexity towards late-article tokens; scoring them is what Hugging Face's
  stride-1 perplexity recipe does. Because the LM is causal and those windows all start at position 0, the shorter
  windows are exactly the prefixes of the article's first window, so they are computed in that one window (every
  token of it scored) -- ``WindowDataset(stride=1, score="new")``. An article's first token is never scored (nothing
  predicts it). One forward pass per scored token: cap the work with ``max_articles`` / ``max_tokens``.
- ``strided``: windows every ``stride`` tokens (default ``context_length - 1``, the fine-tuning validation scoring),
  each scoring its last ``stride`` tokens (the article's first window scores all of its tokens). Tokens are
  predicted from between ``context_length - stride`` and ``context_length - 1`` tokens of context, so it is cheaper
  and slightly pessimistic; ``planlm evaluate`` reports its difference to ``paper`` when both run.

Actions the adapters are conditioned on (``actions``):

- ``predicted`` (the paper's main metric): the planner's logits for each sentence, through the model's selection
  (soft / hard / straight-through). The planner depends only on a sentence's preceding sentences, never on the window,
  so it runs ONCE per sentence of the evaluated articles (batched) and each window gathers its rows.
  A model that reads plans (planner horizon H > 1, or ``plan_samples`` M >= 1) gets each sentence's plan weights
  ``(H, K)`` the same way, once per sentence (:func:`plan_weights_for`; M plans sampled with a generator seeded by the
  model's ``config.seed``, so a perplexity is reproducible).
- ``oracle``: each sentence's oracle action (one-hot), as in Cornille et al.'s "OA" (offset 1 only for plans).
- ``fixed``: every sentence conditioned on one action (``fixed_action``, default the model's ``config.fixed_action``).

Models with ``fixed`` / ``uniform`` selection add one constant vector and ignore ``actions``.

Token budget: ``max_articles`` takes the first articles of the split (in article-id order); ``max_tokens`` stops once
that many tokens are scored (windows are taken in article order, so the last article may be partial);
``window_step`` N runs every N-th window of each article, from its first (about 1/N of the tokens scored, every
article still in the paired bootstrap: a budget cut, planlm's, not the paper's).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from planlm.data.planner_inputs import PlannerInputs
from planlm.data.prepared import SPLITS, PreparedCorpus, Split
from planlm.data.windows import IGNORE_INDEX, WindowDataset, collate_windows
from planlm.errors import PlanlmError, raise_if_problems
from planlm.models.selection import needs_planner

Protocol = Literal["paper", "strided"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
EvalActions = Literal["predicted", "oracle", "fixed"]
EvalPrecision = Literal["32-true", "bf16-mixed"]
EVAL_PRECISIONS: tuple[str, ...] = get_args(EvalPrecision)
ACTION_SOURCES: tuple[str, ...] = get_args(EvalActions)

PlannerInputsFn = Callable[[np.ndarray], dict[str, torch.Tensor]]


@dataclass
class PerplexityResult:
    """Perplexity over the scored tokens, with per-token records for splits (e.g. the paper's Appendix E)."""

    ppl: float
    """exp(nll_sum / tokens)."""
    nll_sum: float
    """Sum of the natural-log negative log-likelihoods of the scored tokens."""
    tokens: int
    """Scored tokens."""
    articles: int
    """Articles that contributed at least one window."""
    windows: int
    """Forward-pass windows."""
    split: str
    actions: str
    protocol: str
    context_length: int
    stride: int
    token_nll: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))
    """(tokens,) NLL of every scored token, in scoring order."""
    token_sentence: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    """(tokens,) global sentence id of each scored token (the sentence whose action conditioned its prediction)."""
    token_greedy: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))
    """(tokens,) whether each scored token is the LM's most probable next token (lm-eval's ``is_greedy``)."""

    def summary(self) -> dict:
        """The JSON-friendly numbers (no per-token arrays)."""
        return {
            "ppl": self.ppl, "nll_sum": self.nll_sum, "tokens": self.tokens, "articles": self.articles,
            "windows": self.windows, "split": self.split, "actions": self.actions, "protocol": self.protocol,
            "context_length": self.context_length, "stride": self.stride,
        }

    def by_article(self, sentence_article: np.ndarray) -> dict:
        """Per-article NLL sums and scored-token counts, the unit `planlm report`'s paired bootstrap resamples:
        ``{"article_ids": [...], "nll_sum": [...], "tokens": [...]}`` (ascending article ids). A scored token
        belongs to the article of its sentence (windows never cross articles); the sums add up to ``nll_sum``."""
        articles = np.asarray(sentence_article)[self.token_sentence]  # (tokens,)
        ids, index = np.unique(articles, return_inverse=True)
        sums = np.bincount(index, weights=self.token_nll.astype(np.float64), minlength=len(ids))  # (A,)
        return {"article_ids": ids.tolist(), "nll_sum": sums.tolist(),
                "tokens": np.bincount(index, minlength=len(ids)).tolist()}


def resolve_stride(protocol: str, context_length: int, stride: int | None) -> int:
    """The stride a protocol uses: 1 for ``paper``; ``stride`` or ``context_length - 1`` for ``strided``."""
    if protocol == "paper":
        return 1
    return int(stride) if stride is not None else context_length - 1


def validate_perplexity(
    model, corpus: PreparedCorpus, split: Split, actions: EvalActions, protocol: Protocol, context_length: int,
    stride: int | None, max_articles: int | None, max_tokens: int | None, batch_size: int,
    planner_inputs_fn: PlannerInputsFn | None, fixed_action: int | None, window_step: int = 1,
) -> None:
    problems = []
    if split not in SPLITS:
        problems.append(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
    if actions not in ACTION_SOURCES:
        problems.append(f"actions must be one of {', '.join(ACTION_SOURCES)} (got {actions!r})")
    if protocol not in PROTOCOLS:
        problems.append(f"protocol must be one of {', '.join(PROTOCOLS)} (got {protocol!r})")
    if context_length < 2:
        problems.append(f"context_length must be at least 2 (got {context_length})")
    if protocol == "paper" and stride not in (None, 1):
        problems.append(f"the paper protocol uses stride 1 (got stride={stride}); use protocol=strided for others")
    if protocol == "strided" and stride is not None and not 1 <= stride <= context_length - 1:
        problems.append(f"stride must be in [1, context_length - 1] = [1, {context_length - 1}] (got {stride})")
    if max_articles is not None and max_articles < 1:
        problems.append(f"max_articles must be positive or None (got {max_articles})")
    if max_tokens is not None and max_tokens < 1:
        problems.append(f"max_tokens must be positive or None (got {max_tokens})")
    if batch_size < 1:
        problems.append(f"batch_size must be positive (got {batch_size})")
    if window_step < 1:
        problems.append(f"window_step must be at least 1 (1: every window; got {window_step})")
    constant = not needs_planner(model.config.selection)
    if actions == "predicted" and not constant and model.planner is None:
        problems.append(
            f"actions=predicted needs a planner but this {model.config.selection!r} planned LM has none; "
            "use actions=oracle or a model fine-tuned with --planner"
        )
    if model.config.num_actions != corpus.num_actions:
        problems.append(
            f"the model has K={model.config.num_actions} actions but {corpus.path} has {corpus.num_actions}; "
            "evaluate on the prepared corpus the model was fine-tuned on"
        )
    if fixed_action is not None and not 0 <= fixed_action < model.config.num_actions:
        problems.append(f"fixed_action {fixed_action} is not an action id in [0, {model.config.num_actions})")
    raise_if_problems(problems, "perplexity")


@torch.inference_mode()
def planner_logits_for(
    model, sentence_ids: np.ndarray, planner_inputs_fn: PlannerInputsFn, batch_size: int = 256
) -> torch.Tensor:
    """Planner logits ``(N, K)`` (float32, on the CPU) for global ``sentence_ids``, batched.

    Each sentence's logits depend only on the sentences before it, so this is computed once per sentence and reused
    by every window that holds it.
    """
    device = next(model.parameters()).device
    out = []
    ids = np.asarray(sentence_ids, dtype=np.int64)
    for i in range(0, len(ids), batch_size):
        inputs = {k: v.to(device) for k, v in planner_inputs_fn(ids[i : i + batch_size]).items()}
        out.append(model.planner(**inputs).float().cpu())  # (n, K)
    if not out:
        return torch.zeros(0, model.config.num_actions)
    return torch.cat(out)


@torch.inference_mode()
def plan_weights_for(
    model, sentence_ids: np.ndarray, planner_inputs_fn: PlannerInputsFn, batch_size: int = 256
) -> torch.Tensor:
    """Plan weights ``(N, H, K)`` (float32, on the CPU) for global ``sentence_ids``: :meth:`PlannedLM.plan`, batched,
    its samples drawn from a generator seeded by ``model.config.seed``."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(model.config.seed)
    ids = np.asarray(sentence_ids, dtype=np.int64)
    out = [torch.zeros(0, model.config.horizon, model.config.num_actions)]
    for i in range(0, len(ids), batch_size):
        inputs = {k: v.to(device) for k, v in planner_inputs_fn(ids[i : i + batch_size]).items()}
        out.append(model.plan(inputs, generator)[1].float().cpu())  # (n, H, K)
    return torch.cat(out)


def _accepts_logits_to_keep(lm) -> bool:
    return "logits_to_keep" in inspect.signature(lm.forward).parameters


def window_ordinals(article_of_window: np.ndarray) -> np.ndarray:
    """``(W,)`` each window's position among its article's windows (0 for an article's first), for windows listed
    article by article."""
    a = np.asarray(article_of_window)
    firsts = np.r_[0, np.flatnonzero(np.diff(a)) + 1] if len(a) else np.zeros(0, np.int64)
    return np.arange(len(a)) - np.repeat(firsts, np.diff(np.r_[firsts, len(a)]))


def score_windows(dataset: WindowDataset, max_tokens: int | None) -> np.ndarray:
    """Indices of the windows to run so that at most ``max_tokens`` tokens are scored (all windows for None)."""
    if max_tokens is None:
        return np.arange(len(dataset))
    keep, total = [], 0
    for i in range(len(dataset)):
        n = int((dataset[i]["labels"][1:] != IGNORE_INDEX).sum())  # HF shifts: position 0 is never scored
        if n == 0:
            continue
        keep.append(i)
        total += n
        if total >= max_tokens:
            break
    return np.asarray(keep, dtype=np.int64)


@torch.inference_mode()
def perplexity(
    model,
    corpus: PreparedCorpus,
    tokenizer,
    split: Split = "test",
    actions: EvalActions = "predicted",
    protocol: Protocol = "paper",
    context_length: int = 128,
    stride: int | None = None,
    max_articles: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 32,
    planner_inputs_fn: PlannerInputsFn | None = None,
    fixed_action: int | None = None,
    planner_logits: tuple[np.ndarray, torch.Tensor] | None = None,
    progress: bool = True,
    score_from: np.ndarray | None = None,
    precision: EvalPrecision = "32-true",
    window_step: int = 1,
) -> PerplexityResult:
    """Perplexity of a planned LM on one split (see the module docstring for protocols and action sources).

    Args:
        model: a :class:`planlm.models.planned_lm.PlannedLM` (put in eval mode here).
        corpus: the prepared corpus the model was fine-tuned on.
        tokenizer: the LM's fast tokenizer.
        split: train, val or test.
        actions: predicted (planner), oracle, or fixed (one action for every sentence).
        protocol: paper (stride 1, last token of each window scored) or strided.
        context_length: tokens per window (paper: 128).
        stride: strided protocol only; default ``context_length - 1``.
        max_articles: evaluate only the first this many articles of the split.
        max_tokens: stop after this many scored tokens.
        batch_size: windows per forward pass.
        planner_inputs_fn: global sentence ids -> planner inputs; default: the training-time builder for the
            model's planner (:class:`planlm.data.planner_inputs.PlannerInputs`).
        fixed_action: actions=fixed, the action id; default ``model.config.fixed_action``.
        planner_logits: ``(sentence_ids, logits)`` already computed for (a superset of) the evaluated sentences,
            to share one planner pass between several calls (not used by a model that reads plans).
        progress: show a progress bar.
        score_from: ``(A,)`` per article id, the index of its first token to score (the tokens before it are context
            only, and windows that score nothing from there on are not run): the continuation of a
            (context, continuation) pair, as lm-eval's ``loglikelihood`` asks. None scores every token.
        precision: "32-true", or "bf16-mixed": the LM's forward under bfloat16 autocast (fp32 weights, the
            log-softmax in fp32), about 2x faster on a CPU with AVX512-BF16 and perplexities that differ in the
            third or fourth digit (a departure, for budgets; paired comparisons run every variant the same way).
        window_step: run every this-many-th window of each article, from its first (1: all, the paper): a budget
            cut that scores about 1/window_step of the tokens of every article.

    Returns:
        A :class:`PerplexityResult`.
    """
    validate_perplexity(model, corpus, split, actions, protocol, context_length, stride, max_articles, max_tokens,
                        batch_size, planner_inputs_fn, fixed_action, window_step)
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    stride = resolve_stride(protocol, context_length, stride)
    dataset = WindowDataset.from_corpus(corpus, tokenizer, split, context_length, stride, "new", max_articles)
    if score_from is not None:  # a window's last token is always one it scores: keep those that reach score_from
        last = np.minimum(dataset.index[:, 1] + context_length,
                          [dataset.articles[a].num_tokens for a in dataset.index[:, 0]]) - 1  # (W,)
        first = np.asarray(score_from)[[dataset.articles[a].article_id for a in dataset.index[:, 0]]]  # (W,)
        dataset.index = dataset.index[last >= first]
    if window_step > 1:
        dataset.index = dataset.index[window_ordinals(dataset.index[:, 0]) % window_step == 0]
    order = score_windows(dataset, max_tokens)

    constant = not needs_planner(model.config.selection)
    row_of = None  # global sentence id -> row of `logits`
    plans = actions == "predicted" and not constant and model.config.plans
    if actions == "predicted" and not constant:
        if planner_logits is None or plans:
            if planner_inputs_fn is None:
                planner_inputs_fn = PlannerInputs.from_config(corpus, model.planner.config, tokenizer=tokenizer)
            articles = np.unique(dataset.index[order, 0]) if len(order) else np.zeros(0, np.int64)
            ids = np.concatenate(
                [np.arange(*corpus.sentence_range(dataset.articles[a].article_id)) for a in articles]
                or [np.zeros(0, np.int64)]
            )
            planner_logits = (ids, (plan_weights_for if plans else planner_logits_for)(model, ids, planner_inputs_fn))
        ids, logits = planner_logits
        row_of = np.full(len(corpus.sentence_article), -1, dtype=np.int64)
        row_of[np.asarray(ids, dtype=np.int64)] = np.arange(len(ids))
    fixed = model.config.fixed_action if fixed_action is None else int(fixed_action)
    keep_logits = _accepts_logits_to_keep(model.lm)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    nlls, sentences, greedy = [], [], []
    batches = range(0, len(order), batch_size)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    for b in tqdm(batches, desc=f"perplexity ({protocol}, {actions})", unit="batch", disable=not progress):
        batch = collate_windows([dataset[int(i)] for i in order[b : b + batch_size]], pad_token_id=pad)
        labels = batch["labels"]  # (B, T), -100 = not scored
        if score_from is not None:  # tokens before an article's score_from are context only
            index = batch["window_starts"][:, None] + torch.arange(labels.shape[1])  # (B, T) token index in article
            first = torch.as_tensor(np.asarray(score_from)[batch["article_ids"].numpy()])[:, None]  # (B, 1)
            labels = labels.masked_fill(index < first, IGNORE_INDEX)
        target = labels[:, 1:]  # (B, T-1): token t + 1 is predicted at position t
        scored = target != IGNORE_INDEX  # (B, T-1)
        kwargs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        if not constant:
            kwargs["token_slot"] = batch["token_slot"].to(device)
            sids = batch["sentence_ids"].numpy()  # (N,)
            if actions == "predicted":
                rows = row_of[sids]
                if (rows < 0).any():
                    raise PlanlmError("planner_logits do not cover every evaluated sentence")
                key = "plan_weights" if plans else "planner_logits"
                kwargs[key] = logits[torch.from_numpy(rows)].to(device)  # (N, K) logits or (N, H, K) plan weights
            elif actions == "oracle":
                kwargs["oracle_actions"] = batch["oracle_actions"].to(device)  # (N,)
            else:
                kwargs["oracle_actions"] = torch.full((len(sids),), fixed, dtype=torch.long, device=device)
        positions = scored.any(0).nonzero().flatten()  # (P,) positions that predict some scored token
        with autocast:
            if keep_logits:
                # Only the positions that are scored go through the LM head: with stride 1 that is ~1 of 128.
                kwargs["logits_to_keep"] = positions.to(device)
                out_logits = model(**kwargs).logits  # (B, P, V)
            else:
                out_logits = model(**kwargs).logits[:, positions.to(device)]  # (B, P, V)
        tgt = target[:, positions]  # (B, P)
        nll = F.cross_entropy(
            out_logits.float().transpose(1, 2), tgt.to(device), ignore_index=IGNORE_INDEX, reduction="none"
        ).cpu()  # (B, P)
        mask = tgt != IGNORE_INDEX  # (B, P)
        nlls.append(nll[mask].numpy())
        greedy.append((out_logits.argmax(-1).cpu() == tgt)[mask].numpy())
        # The scored token t + 1 belongs to the sentence whose action position t carries (DESIGN.md 1.4).
        slot = batch["token_slot"][:, positions]  # (B, P)
        sentences.append(batch["sentence_ids"][slot][mask].numpy())

    token_nll = np.concatenate(nlls).astype(np.float32) if nlls else np.zeros(0, np.float32)
    token_sentence = np.concatenate(sentences).astype(np.int64) if sentences else np.zeros(0, np.int64)
    token_greedy = np.concatenate(greedy) if greedy else np.zeros(0, bool)
    if max_tokens is not None and len(token_nll) > max_tokens:  # the last window of the first article may overshoot
        token_nll, token_sentence = token_nll[:max_tokens], token_sentence[:max_tokens]
        token_greedy = token_greedy[:max_tokens]
    if len(token_nll) == 0:
        raise PlanlmError(
            f"no tokens to score in split {split!r} of {corpus.path}; prepare a corpus with {split} articles"
        )
    nll_sum = float(token_nll.astype(np.float64).sum())
    return PerplexityResult(
        ppl=math.exp(nll_sum / len(token_nll)), nll_sum=nll_sum, tokens=len(token_nll),
        articles=len(np.unique(dataset.index[order, 0])), windows=len(order), split=split,
        actions=actions, protocol=protocol, context_length=context_length, stride=stride,
        token_nll=token_nll, token_sentence=token_sentence, token_greedy=token_greedy,
    )


# ---- Appendix E: perplexity split by whether the planner's action was right -------------------------------------
def planner_right(num_sentences: int, sentence_ids: np.ndarray, planner_logits: torch.Tensor,
                  oracle_actions: np.ndarray) -> np.ndarray:
    """``(num_sentences,)`` bool over global sentence ids: True where the planner's top action (``planner_logits
    (N, K)`` for ``sentence_ids (N,)``) is the sentence's oracle action; sentences not given are False."""
    right = np.zeros(num_sentences, dtype=bool)
    ids = np.asarray(sentence_ids, dtype=np.int64)
    right[ids] = planner_logits.argmax(-1).cpu().numpy() == np.asarray(oracle_actions)[ids]
    return right


def split_by_planner_right(result: PerplexityResult, right: np.ndarray) -> dict[str, dict]:
    """The paper's Appendix E: ``{"right": {"ppl", "nll_sum", "tokens"}, "wrong": {...}}`` over ``result``'s scored
    tokens, a token going with the sentence whose action conditioned its prediction (DESIGN.md 1.4), split by
    ``right (num_sentences,)`` (:func:`planner_right`). The two parts' tokens and NLL sums add up to the result's."""
    ok = right[result.token_sentence]  # (tokens,)
    out = {}
    for part, keep in (("right", ok), ("wrong", ~ok)):
        nll, n = float(result.token_nll[keep].astype(np.float64).sum()), int(keep.sum())
        out[part] = {"ppl": math.exp(nll / n) if n else None, "nll_sum": nll, "tokens": n}  # None: no token
    return out


@dataclass
class PerplexityConfig:
    """Which perplexities to compute (paper: predicted actions, windows of 128, stride 1, 1000 test articles)."""

    actions: list[EvalActions] = field(default_factory=lambda: ["predicted", "oracle"])
    """Action sources: predicted (the main metric) | oracle | fixed. Fixed / uniform models use one constant."""
    protocols: list[Protocol] = field(default_factory=lambda: ["paper"])
    """paper (stride 1, last token of each window scored) | strided; with both, their difference is reported."""
    context_length: int = 128
    """Tokens per window (paper: 128)."""
    stride: int | None = None
    """Stride of the strided protocol (default context_length - 1)."""
    max_articles: int | None = 1000
    """Evaluate the first this many articles of the split (paper: 1000)."""
    max_tokens: int | None = None
    """Stop after this many scored tokens per perplexity (the paper protocol costs one forward pass per token)."""
    batch_size: int = 32
    """Windows per forward pass."""
    window_step: int = 1
    """Run every this-many-th window of each article, from its first (1: all, the paper): about 1/window_step of
    every article's tokens scored, each article still in the paired bootstrap (a budget cut)."""
    fixed_action: int | None = None
    """actions=fixed: the action id (default: the model's fixed_action)."""
    precision: EvalPrecision = "32-true"
    """"32-true", or "bf16-mixed": the LM's forward under bfloat16 autocast (about 2x faster on a CPU with
    AVX512-BF16; a departure for budgets: perplexities differ in the third or fourth digit)."""

    def problems(self) -> list[str]:
        out = []
        bad = [a for a in self.actions if a not in ACTION_SOURCES]
        if not self.actions or bad:
            out.append(f"ppl.actions must be a non-empty list of {', '.join(ACTION_SOURCES)} (got {self.actions})")
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if not self.protocols or bad:
            out.append(f"ppl.protocols must be a non-empty list of {', '.join(PROTOCOLS)} (got {self.protocols})")
        if self.context_length < 2:
            out.append(f"ppl.context_length must be at least 2 (got {self.context_length})")
        if self.stride is not None and not 1 <= self.stride <= self.context_length - 1:
            out.append(f"ppl.stride must be in [1, context_length - 1] (got {self.stride})")
        for name in ("max_articles", "max_tokens"):
            v = getattr(self, name)
            if v is not None and v < 1:
                out.append(f"ppl.{name} must be positive or null (got {v})")
        if self.batch_size < 1:
            out.append(f"ppl.batch_size must be positive (got {self.batch_size})")
        if self.window_step < 1:
            out.append(f"ppl.window_step must be at least 1 (1: every window; got {self.window_step})")
        if self.precision not in EVAL_PRECISIONS:
            out.append(f"ppl.precision must be one of {', '.join(EVAL_PRECISIONS)} (got {self.precision!r})")
        return out
