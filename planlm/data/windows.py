"""Fixed-length token windows over tokenised articles, and the batch dict every model step reads.

Windows of ``context_length`` tokens (paper: 128) start every ``stride`` tokens (paper: 127 for training) within one
article; windows never cross articles. An article shorter than one window gives one short window; the last window of
an article may be short (it is padded in the batch). Labels follow the Hugging Face convention (``labels[t]`` is the
token at t, the model shifts them): a window scores only the tokens that no earlier window of the article scored, so
with stride = context_length - 1 every token but an article's first is scored exactly once. ``score="last"`` scores
only each window's last token (the paper's perplexity protocol, with stride 1).

Token action slots follow DESIGN.md 1.4 (see :mod:`planlm.data.alignment`): a sentence that straddles a window
start simply keeps its global sentence id, so its tokens in the window carry its action and the planner predicts it
from the sentences before it in the article, not in the window.

A batch holds a table of the distinct sentences its tokens carry (``sentence_ids (N,)``) and each token's row in it
(``token_slot (B, T)``), so the planner runs once per step for all target sentences of all windows.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from planlm.data.alignment import TokenizedArticle, aligned_articles
from planlm.data.prepared import PreparedCorpus
from planlm.errors import PlanlmError, raise_if_problems

SCORE_MODES = ("new", "last")
IGNORE_INDEX = -100


def window_starts(num_tokens: int, context_length: int, stride: int) -> list[int]:
    """Start offsets of the windows of one article: every ``stride`` tokens until a window reaches the end."""
    if num_tokens == 0:
        return []
    starts = [0]
    while starts[-1] + context_length < num_tokens:
        starts.append(starts[-1] + stride)
    return starts


def validate_windows(context_length: int, stride: int, score: str) -> None:
    problems = []
    if context_length < 2:
        problems.append(f"context_length must be at least 2 (got {context_length})")
    if not 1 <= stride <= max(context_length - 1, 1):
        problems.append(
            f"stride must be in [1, context_length - 1] so that every token is scored (got {stride} with "
            f"context_length {context_length}; the paper trains with 127 for 128)"
        )
    if score not in SCORE_MODES:
        problems.append(f"score must be one of {', '.join(SCORE_MODES)} (got {score!r})")
    raise_if_problems(problems, "windows")


class WindowDataset(Dataset):
    """Windows over tokenised articles. Item: a dict of numpy arrays for one window (see :func:`collate_windows`)."""

    def __init__(
        self,
        articles: Sequence[TokenizedArticle],
        oracle_actions: np.ndarray,
        context_length: int = 128,
        stride: int = 127,
        score: str = "new",
    ):
        """Cut windows.

        Args:
            articles: tokenised articles (:func:`planlm.data.alignment.tokenize_articles`).
            oracle_actions: ``(N,)`` oracle action of every global sentence (``PreparedCorpus.actions``).
            context_length: tokens per window (paper: 128).
            stride: tokens between window starts (paper: 127 for training, 1 for perplexity).
            score: ``new``: score the tokens no earlier window scored; ``last``: only each window's last token.
        """
        validate_windows(context_length, stride, score)
        self.articles = list(articles)
        self.oracle_actions = np.asarray(oracle_actions)
        self.context_length, self.stride, self.score = context_length, stride, score
        index = [
            (i, s) for i, a in enumerate(self.articles) for s in window_starts(a.num_tokens, context_length, stride)
        ]
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 2)  # (W, 2): article position, token start

    @classmethod
    def from_corpus(
        cls,
        corpus: PreparedCorpus,
        tokenizer,
        split: str = "train",
        context_length: int = 128,
        stride: int = 127,
        score: str = "new",
        max_articles: int | None = None,
    ) -> "WindowDataset":
        """Tokenise one split of a prepared corpus and cut its windows."""
        ids = corpus.article_ids(split)
        if max_articles is not None:
            ids = ids[:max_articles]
        articles = aligned_articles(corpus, tokenizer, ids, progress=len(ids) > 1000)  # memory-mapped, cached
        return cls(articles, corpus.actions, context_length, stride, score)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        a, start = (int(v) for v in self.index[i])
        art = self.articles[a]
        end = min(start + self.context_length, art.num_tokens)
        input_ids = art.input_ids[start:end]
        labels = input_ids.copy()
        if self.score == "last":
            labels[:-1] = IGNORE_INDEX
            if start + len(labels) <= 1:  # an article's first token has nothing to predict it
                labels[:] = IGNORE_INDEX
        elif start > 0:
            # The previous (full) window scored global tokens up to start - stride + context_length - 1, i.e. this
            # window's positions 0 .. context_length - 1 - stride (position 0 is never scored: HF shifts labels).
            labels[: self.context_length - self.stride] = IGNORE_INDEX
        slots = art.action_slot[start:end]
        return {
            "input_ids": input_ids,
            "labels": labels,
            "action_slot": slots,  # global sentence id whose action each token carries
            "slot_action": self.oracle_actions[slots].astype(np.int64),  # that sentence's oracle action
            "article_id": np.int64(art.article_id),
            "start": np.int64(start),
        }

    def collate_fn(
        self, planner_inputs_fn: Callable[[np.ndarray], dict[str, torch.Tensor]] | None = None, pad_token_id: int = 0
    ) -> Callable[[list[dict]], dict]:
        """A ``collate_fn`` for a DataLoader over this dataset."""
        return lambda items: collate_windows(items, planner_inputs_fn, pad_token_id)


def collate_windows(
    items: list[dict],
    planner_inputs_fn: Callable[[np.ndarray], dict[str, torch.Tensor]] | None = None,
    pad_token_id: int = 0,
) -> dict:
    """Pad windows into a batch and build its sentence table.

    Args:
        items: windows from :class:`WindowDataset`.
        planner_inputs_fn: maps the table's global sentence ids ``(N,)`` to the planner's input tensors
            (:mod:`planlm.data.planner_inputs`); its result goes under ``batch["planner_inputs"]``.
        pad_token_id: id written at padded positions (they are masked out and not scored).

    Returns:
        ``input_ids (B, T)``, ``attention_mask (B, T)``, ``labels (B, T)`` (-100 = not scored), ``token_slot (B, T)``
        (row of the sentence table; 0 at padding), ``sentence_ids (N,)`` (sorted global ids), ``oracle_actions (N,)``,
        ``article_ids (B,)``, ``window_starts (B,)`` and, with ``planner_inputs_fn``, ``planner_inputs``.
    """
    if not items:
        raise PlanlmError("cannot collate an empty list of windows")
    B, T = len(items), max(len(it["input_ids"]) for it in items)
    input_ids = np.full((B, T), pad_token_id, dtype=np.int64)
    labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
    attention_mask = np.zeros((B, T), dtype=np.int64)
    slots = np.full((B, T), -1, dtype=np.int64)
    slot_action = np.zeros((B, T), dtype=np.int64)
    for b, it in enumerate(items):
        n = len(it["input_ids"])
        input_ids[b, :n] = it["input_ids"]
        labels[b, :n] = it["labels"]
        attention_mask[b, :n] = 1
        slots[b, :n] = it["action_slot"]
        slot_action[b, :n] = it["slot_action"]
    real = slots >= 0
    sentence_ids, first, inverse = np.unique(slots[real], return_index=True, return_inverse=True)
    token_slot = np.zeros((B, T), dtype=np.int64)
    token_slot[real] = inverse
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "labels": torch.from_numpy(labels),
        "token_slot": torch.from_numpy(token_slot),
        "sentence_ids": torch.from_numpy(sentence_ids.astype(np.int64)),
        "oracle_actions": torch.from_numpy(slot_action[real][first]),
        "article_ids": torch.tensor([int(it["article_id"]) for it in items], dtype=torch.int64),
        "window_starts": torch.tensor([int(it["start"]) for it in items], dtype=torch.int64),
    }
    if planner_inputs_fn is not None:
        batch["planner_inputs"] = planner_inputs_fn(sentence_ids.astype(np.int64))
    return batch
