"""The tensors a planner reads for a set of target sentences, built from the stored embeddings (DESIGN.md 1.2, 3).

No text is re-encoded: the context of a target sentence is a row range of ``embeddings.npy``. The original code
decoded the 128 context tokens back to text and re-encoded every context sentence for every target; here a context
that starts mid-sentence uses that sentence's whole stored embedding (a small, documented difference).

``paper`` mode (see :mod:`planlm.models.planner`): target sentence j of an article gets the sentences of the same
article before j that overlap the ``context_tokens`` LM tokens before j's first token (per-sentence token counts
from :func:`planlm.data.alignment.sentence_token_counts`), or the last ``context_sentences`` sentences::

    {"context_embeddings": (N, C, d_enc) float32, "context_mask": (N, C) bool}

``causal`` mode: every article that holds a target, from its first sentence up to its last target::

    {"article_embeddings": (A, S, d_enc) float32, "article_mask": (A, S) bool, "target_index": (N,) int64}

Both are built with a handful of numpy gathers, cheap enough to run in every training step's collate.
"""

from __future__ import annotations

import numpy as np
import torch

from planlm.data.prepared import PreparedCorpus
from planlm.errors import PlanlmError


def needs_token_counts(config) -> bool:
    """Whether a planner context (a ``PlannerConfig``, or anything with ``context`` and ``context_sentences``) needs
    LM-token counts per sentence: the paper context does, unless it counts sentences instead. The ONE place that
    decides it."""
    return config.context == "paper" and config.context_sentences is None


class PlannerInputs:
    """Builds planner inputs for global sentence ids: ``PlannerInputs.from_config(corpus, config, ...)(sentence_ids)``
    (the one builder, used by training, evaluation, generation and the benchmarks).

    Args:
        corpus: the prepared corpus (its embeddings are read from the memory map, only the rows a batch needs).
        context: "paper" or "causal" (as ``PlannerConfig.context``).
        context_tokens: paper mode, the LM-token budget of the context.
        context_sentences: paper mode, a sentence count instead of the token budget.
        token_counts: ``(N,)`` LM tokens per global sentence; needed by paper mode unless ``context_sentences``.
    """

    def __init__(
        self,
        corpus: PreparedCorpus,
        context: str = "paper",
        context_tokens: int = 128,
        context_sentences: int | None = None,
        token_counts: np.ndarray | None = None,
    ):
        n = len(corpus.sentence_article)
        if context not in ("paper", "causal"):
            raise PlanlmError(f"unknown planner context {context!r}; use paper or causal")
        self.context = context
        self.context_tokens = int(context_tokens)
        self.context_sentences = context_sentences
        if needs_token_counts(self):
            if token_counts is None:
                raise PlanlmError(
                    "the paper planner context counts LM tokens: pass the LM (--lm NAME_OR_DIR) for its tokenizer, "
                    "or set --planner.context_sentences N"
                )
            if len(token_counts) != n:
                raise PlanlmError(f"token_counts has {len(token_counts)} entries but the corpus has {n} sentences")
        # (N, d_enc) float16, memory-mapped: a copy would cost N x d_enc x 2 bytes per process (16 GB at the paper's
        # 11M sentences, again on every DDP rank), while a batch reads a few hundred rows.
        self.embeddings = corpus.embeddings
        self.sentence_article = corpus.sentence_article
        self.sentence_position = corpus.sentence_position.astype(np.int64)
        self.article_offsets = corpus.article_offsets  # (A + 1,)
        self.article_first = corpus.article_offsets[:-1][corpus.sentence_article]  # (N,) first sentence of its article
        # Global prefix sums of token counts: sentence s spans tokens [cum[s], cum[s + 1]) of a virtual stream in
        # which an article's sentences are contiguous, so one searchsorted finds every context start.
        counts = np.zeros(n, dtype=np.int64) if token_counts is None else np.asarray(token_counts, dtype=np.int64)
        self.cum_tokens = np.r_[0, np.cumsum(counts)].astype(np.int64)  # (N + 1,)

    @classmethod
    def from_config(
        cls, corpus: PreparedCorpus, config, token_counts: np.ndarray | None = None, tokenizer=None,
        progress: bool = False,
    ) -> "PlannerInputs":
        """The builder for a :class:`planlm.models.planner.PlannerConfig`'s context settings.

        The paper context's token counts are ``token_counts`` when given, else counted with the LM's ``tokenizer``
        (:func:`planlm.data.alignment.sentence_token_counts`) when :func:`needs_token_counts` says so.
        """
        if token_counts is None and tokenizer is not None and needs_token_counts(config):
            from planlm.data.alignment import sentence_token_counts

            token_counts = sentence_token_counts(corpus, tokenizer, progress=progress)
        return cls(corpus, config.context, config.context_tokens, config.context_sentences, token_counts)

    def context_start(self, sentence_ids: np.ndarray) -> np.ndarray:
        """Paper mode: the first global sentence id of each target's context (= the target when it has none)."""
        j = np.asarray(sentence_ids, dtype=np.int64)
        if self.context_sentences is not None:
            first = j - int(self.context_sentences)
        else:
            # First sentence s whose token span ends after the window start: cum[s + 1] > cum[j] - budget.
            first = np.searchsorted(self.cum_tokens, self.cum_tokens[j] - self.context_tokens, side="right") - 1
        return np.maximum(first, self.article_first[j])  # never reach into the previous article

    def __call__(self, sentence_ids: np.ndarray) -> dict[str, torch.Tensor]:
        j = np.asarray(sentence_ids, dtype=np.int64).reshape(-1)
        if self.context == "paper":
            return self._paper(j)
        return self._causal(j)

    def _rows(self, rows: np.ndarray) -> torch.Tensor:
        """Embedding rows ``(..., d_enc)`` float32 for global sentence ids ``rows (...)``, gathered from the map."""
        flat = np.asarray(self.embeddings[rows.reshape(-1)], dtype=np.float32)  # reads only these rows
        return torch.from_numpy(flat).reshape(*rows.shape, self.embeddings.shape[1])

    def _paper(self, j: np.ndarray) -> dict[str, torch.Tensor]:
        start = self.context_start(j)
        lengths = j - start  # (N,)
        c = int(lengths.max()) if len(j) else 0
        slots = np.arange(c)[None]  # (1, C)
        mask = slots < lengths[:, None]  # (N, C)
        rows = np.where(mask, start[:, None] + slots, 0)  # (N, C) global sentence ids, 0 in padding
        emb = self._rows(rows)  # (N, C, d_enc)
        mask_t = torch.from_numpy(mask)
        emb = emb * mask_t[..., None]  # zero padding
        return {"context_embeddings": emb, "context_mask": mask_t}

    def _causal(self, j: np.ndarray) -> dict[str, torch.Tensor]:
        articles, row_of_target = np.unique(self.sentence_article[j], return_inverse=True)  # (A,), (N,)
        position = self.sentence_position[j]  # (N,)
        # An article's slice only needs to reach its last target (causality never reads later sentences).
        span = np.zeros(len(articles), dtype=np.int64)
        np.maximum.at(span, row_of_target, position + 1)
        s = int(span.max()) if len(j) else 0
        slots = np.arange(s)[None]  # (1, S)
        mask = slots < span[:, None]  # (A, S)
        first = self.article_offsets[articles]  # (A,) global id of each article's first sentence
        rows = np.where(mask, first[:, None] + slots, 0)  # (A, S)
        emb = self._rows(rows)  # (A, S, d_enc)
        mask_t = torch.from_numpy(mask)
        return {
            "article_embeddings": emb * mask_t[..., None],
            "article_mask": mask_t,
            "target_index": torch.from_numpy(row_of_target * s + position),
        }

