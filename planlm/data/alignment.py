"""Token alignment: which sentence each LM token belongs to, and whose action it carries (DESIGN.md 1.4).

Every article is tokenised once, as one string, with the tokenizer's offset mapping; a token belongs to the sentence
whose character span holds the token's first character. Tokens in the whitespace between two sentences (or before
the first) belong to the next sentence, tokens after the last sentence to the last sentence.

The action convention follows the paper: a token carries its own sentence's action, except the LAST token of a
sentence, which carries the NEXT sentence's action, because that position predicts the next sentence's first token
and so must already be conditioned on that sentence's plan. Equivalently: the token at position t carries the action
of the sentence that token t + 1 belongs to. The last token of the article keeps its own sentence's action.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from planlm.data.prepared import PreparedCorpus
from planlm.errors import PlanlmError


@dataclass
class TokenizedArticle:
    """One article's tokens and their alignment to the prepared corpus's global sentence ids."""

    article_id: int
    input_ids: np.ndarray  # (T,) int64
    token_sentence: np.ndarray  # (T,) int64, global id of the sentence whose text holds the token
    action_slot: np.ndarray  # (T,) int64, global id of the sentence whose action the token carries
    sentence_token_start: np.ndarray  # (S,) int64, index of each sentence's first token (T when it has none)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def check_fast_tokenizer(tokenizer) -> None:
    """Refuse a tokenizer that cannot give character offsets (only Rust-backed "fast" tokenizers can)."""
    if not getattr(tokenizer, "is_fast", False):
        raise PlanlmError(
            f"tokenizer {type(tokenizer).__name__} has no offset mapping (not a fast tokenizer); "
            "load it with AutoTokenizer.from_pretrained(name, use_fast=True) or pass a tokenizer.json-backed one"
        )


def align_tokens(
    offsets: np.ndarray, sentence_start: np.ndarray, sentence_end: np.ndarray, first_sentence_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align tokens of one article to its sentences.

    Args:
        offsets: (T, 2) character offsets of the tokens in the article text.
        sentence_start: (S,) character start of each of the article's sentences, in order.
        sentence_end: (S,) character end of each sentence.
        first_sentence_id: global id of the article's first sentence.

    Returns:
        ``(token_sentence, action_slot, sentence_token_start)`` as described in :class:`TokenizedArticle`.
    """
    num_sentences = len(sentence_end)
    starts = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)[:, 0]
    # Zero-width tokens may report offset 0 mid-text; a running max keeps the mapping monotone.
    starts = np.maximum.accumulate(starts) if len(starts) else starts
    # First sentence whose end lies after the token's first character: tokens in a gap go to the next sentence.
    local = np.searchsorted(np.asarray(sentence_end, dtype=np.int64), starts, side="right")
    local = np.minimum(local, num_sentences - 1)  # trailing tokens after the last sentence
    token_sentence = local + first_sentence_id  # (T,)
    # Token t predicts token t + 1, so it carries the action of t + 1's sentence (DESIGN.md 1.4).
    action_slot = np.empty_like(token_sentence)
    action_slot[:-1] = token_sentence[1:]
    if len(token_sentence):
        action_slot[-1] = token_sentence[-1]
    sentence_token_start = np.searchsorted(local, np.arange(num_sentences), side="left").astype(np.int64)
    return token_sentence.astype(np.int64), action_slot.astype(np.int64), sentence_token_start


def tokenize_articles(
    corpus: PreparedCorpus, tokenizer, article_ids: Sequence[int], batch_size: int = 256, progress: bool = False
) -> list[TokenizedArticle]:
    """Tokenise articles once each (no special tokens) and align every token to its sentence.

    Args:
        corpus: the prepared corpus holding texts and sentence character offsets.
        tokenizer: a Hugging Face fast tokenizer (offset mapping is required).
        article_ids: the articles to tokenise, in the order of the returned list.
        batch_size: articles per tokenizer call (the Rust tokenizer parallelises within a call).
        progress: show a progress bar.

    Returns:
        One :class:`TokenizedArticle` per article id. An article without sentences gets zero tokens.
    """
    check_fast_tokenizer(tokenizer)
    article_ids = [int(a) for a in article_ids]
    out: list[TokenizedArticle] = []
    batches = range(0, len(article_ids), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="tokenize", unit="batch")
    for b in batches:
        chunk = article_ids[b : b + batch_size]
        enc = tokenizer(
            [corpus.texts[a] for a in chunk],
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
        )
        for a, ids, offsets in zip(chunk, enc["input_ids"], enc["offset_mapping"]):
            lo, hi = corpus.sentence_range(a)
            if hi == lo:
                empty = np.zeros(0, dtype=np.int64)
                out.append(TokenizedArticle(a, empty, empty, empty, empty))
                continue
            token_sentence, action_slot, sentence_token_start = align_tokens(
                np.asarray(offsets), corpus.sentence_start[lo:hi], corpus.sentence_end[lo:hi], lo
            )
            out.append(
                TokenizedArticle(
                    article_id=a,
                    input_ids=np.asarray(ids, dtype=np.int64),
                    token_sentence=token_sentence,
                    action_slot=action_slot,
                    sentence_token_start=sentence_token_start,
                )
            )
    return out


def sentence_token_counts(corpus: PreparedCorpus, tokenizer, progress: bool = True) -> np.ndarray:
    """LM tokens per global sentence, over the whole corpus (the planner's ``paper`` context counts these).

    Computed once per (prepared corpus, tokenizer) and then read from the token cache (:class:`TokenCache`).

    Args:
        corpus: the prepared corpus.
        tokenizer: a Hugging Face fast tokenizer.
        progress: show a progress bar while the cache is built.

    Returns:
        ``(N,)`` int64, the number of tokens aligned to each sentence (gap tokens count for the next sentence).
    """
    return TokenCache.load_or_build(corpus, tokenizer, progress).sentence_token_counts


def aligned_articles(
    corpus: PreparedCorpus, tokenizer, article_ids: Sequence[int], progress: bool = True
) -> list[TokenizedArticle]:
    """:func:`tokenize_articles`, read from the token cache: every array is a view of a memory map, so holding the
    tokens of a whole split costs no RAM (the OS pages in what the batches touch)."""
    return TokenCache.load_or_build(corpus, tokenizer, progress).articles(article_ids)


def tokenizer_hash(tokenizer) -> str:
    """A short content hash of a fast tokenizer (vocabulary, merges, normalisation, pre-tokenisation, offsets)."""
    import hashlib

    check_fast_tokenizer(tokenizer)
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


class TokenCache:
    """Every article of a prepared corpus tokenised and aligned once per tokenizer, stored next to the corpus.

    Layout of ``PREPARED/tokens-<tokenizer hash>/`` (raw little-endian int64 files, read as memory maps)::

        article_token_offsets.bin  (A + 1,)  article a's tokens are rows [off[a], off[a + 1]) of the token files
        input_ids.bin, token_sentence.bin, action_slot.bin  (T,)  as in :class:`TokenizedArticle`, all articles
        sentence_token_start.bin   (N,)      per sentence, index of its first token within its article
        sentence_token_counts.bin  (N,)      tokens aligned to each sentence

    Built article chunk by article chunk (bounded memory) into a temporary sibling and renamed into place, so a
    concurrent builder (another DDP rank, another stage) never sees a half-written cache. A prepared folder that is
    not writable gets the same arrays in memory instead.
    """

    FILES = ("article_token_offsets", "input_ids", "token_sentence", "action_slot", "sentence_token_start",
             "sentence_token_counts")

    def __init__(self, arrays: dict[str, np.ndarray], sentence_offsets: np.ndarray):
        self.arrays = arrays
        self.sentence_offsets = sentence_offsets  # (A + 1,) the corpus's article -> sentence row ranges
        self.offsets = arrays["article_token_offsets"]
        self.sentence_token_counts = arrays["sentence_token_counts"]

    @classmethod
    def load_or_build(cls, corpus: PreparedCorpus, tokenizer, progress: bool = True) -> "TokenCache":
        import os
        import shutil

        folder = corpus.path / f"tokens-{tokenizer_hash(tokenizer)}"
        if not folder.exists():
            tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
            try:
                tmp.mkdir()
            except OSError:  # a read-only prepared corpus: tokenise into memory, every time
                return cls(cls._build(corpus, tokenizer, None, progress), corpus.article_offsets)
            cls._build(corpus, tokenizer, tmp, progress)
            try:
                tmp.rename(folder)
            except OSError:  # another process finished first; its cache is the same
                shutil.rmtree(tmp, ignore_errors=True)
        return cls({name: _memmap(folder / f"{name}.bin") for name in cls.FILES}, corpus.article_offsets)

    @classmethod
    def _build(cls, corpus: PreparedCorpus, tokenizer, folder, progress: bool) -> dict[str, np.ndarray] | None:
        n_articles, n_sentences = len(corpus.texts), len(corpus.sentence_article)
        sentence_token_start = np.zeros(n_sentences, dtype=np.int64)
        counts = np.zeros(n_sentences, dtype=np.int64)
        lengths = np.zeros(n_articles, dtype=np.int64)
        token_names = ("input_ids", "token_sentence", "action_slot")
        parts: dict[str, list[np.ndarray]] = {name: [] for name in token_names}
        sinks = {name: open(folder / f"{name}.bin", "wb") for name in token_names} if folder else {}
        # Bounded memory: only this many articles' tokens are held at once (the tokenizer's Python offset tuples
        # cost ~100 bytes per token, so the chunk stays small; the Rust tokenizer is as fast per token).
        chunk = 64
        starts = range(0, n_articles, chunk)
        if progress and n_articles > chunk:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="tokenize and align (cached)", unit="chunk")
        try:
            for c in starts:
                for art in tokenize_articles(corpus, tokenizer, range(c, min(c + chunk, n_articles)), chunk):
                    lo, hi = corpus.sentence_range(art.article_id)
                    lengths[art.article_id] = art.num_tokens
                    if art.num_tokens:
                        counts[lo:hi] = np.bincount(art.token_sentence - lo, minlength=hi - lo)
                        sentence_token_start[lo:hi] = art.sentence_token_start
                    for name in token_names:
                        a = np.ascontiguousarray(getattr(art, name), dtype=np.int64)
                        sinks[name].write(a.tobytes()) if folder else parts[name].append(a)
        finally:
            for f in sinks.values():
                f.close()
        rest = {
            "article_token_offsets": np.r_[0, np.cumsum(lengths)].astype(np.int64),
            "sentence_token_start": sentence_token_start,
            "sentence_token_counts": counts,
        }
        if folder is None:
            empty = np.zeros(0, dtype=np.int64)
            return {**rest, **{n: np.concatenate(parts[n]) if parts[n] else empty for n in token_names}}
        for name, a in rest.items():
            a.tofile(folder / f"{name}.bin")
        return None

    def articles(self, article_ids: Sequence[int]) -> list[TokenizedArticle]:
        """The :class:`TokenizedArticle` of each id: views, no copy."""
        a, off, sent = self.arrays, self.offsets, self.sentence_offsets
        out = []
        for i in (int(x) for x in article_ids):
            t0, t1 = int(off[i]), int(off[i + 1])
            view = lambda name: a[name][t0:t1]  # noqa: E731
            starts = a["sentence_token_start"][int(sent[i]) : int(sent[i + 1])]
            out.append(TokenizedArticle(i, view("input_ids"), view("token_sentence"), view("action_slot"), starts))
        return out


def _memmap(path) -> np.ndarray:
    # numpy cannot map an empty file (a corpus without tokens): an empty array reads the same
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.memmap(path, dtype=np.int64, mode="r")
