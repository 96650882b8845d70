"""Sentence splitting with character offsets: spaCy ``blank("en")`` + ``sentencizer`` (no model download).

:func:`split_sentences` is a plain function over strings, used by `planlm prepare` on articles and by generation on
generated text. Rules, in order:

1. spaCy's rule-based sentencizer splits each text at sentence-final punctuation.
2. A sentence never crosses a line break: every line is at least its own sentence. Section headings are lines
   without final punctuation, so each heading is one (short) sentence of its own, kept by default: a heading is a
   writing step of an article ("a new section starts") and gets an action like any sentence. ``min_chars`` drops
   short sentences (headings included) when that is not wanted; a dropped sentence's text stays in the article and
   belongs to no sentence.
3. Leading and trailing whitespace is not part of a sentence: ``text[start:end] == sentence`` with no outer spaces.
4. A sentence longer than ``max_chars`` is cut at the last whitespace before the limit (a hard cut when there is
   none), so that no piece is longer than the encoder reads usefully. Off by default, as in the paper.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Sequence

from tqdm.auto import tqdm

from planlm.errors import PlanlmError

_NONSPACE_RUN = re.compile(r"[^\n]+")


@dataclass
class SentenceConfig:
    """How articles are split into sentences."""

    min_chars: int = 1
    """Drop sentences shorter than this many characters (1 keeps every non-blank sentence and heading)."""
    max_chars: int | None = None
    """Cut sentences longer than this many characters at whitespace; None (the paper) keeps them whole."""
    n_process: int = 0
    """Worker processes for spaCy (parallel over articles); 0 = automatic (one per core when there are many articles)."""
    batch_size: int = 32
    """Articles per spaCy batch."""


@functools.lru_cache(maxsize=1)
def _nlp():
    # Built once per process: generation splits text at every sentence end, and building costs ~0.1 s.
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    # Articles are long; the default 1e6-character limit guards parser/NER memory, which a blank pipeline lacks.
    nlp.max_length = 10**9
    return nlp


def auto_processes(n_texts: int) -> int:
    """Worker processes worth starting for ``n_texts`` articles: spawning one costs about a second of imports."""
    if n_texts < 500:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def split_sentences(
    texts: Sequence[str],
    n_process: int = 1,
    min_chars: int = 1,
    max_chars: int | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> list[list[tuple[int, int]]]:
    """Split texts into sentences, returning each sentence's character offsets in its text.

    Args:
        texts: The texts (articles, or generated text).
        n_process: spaCy worker processes (parallel over texts); 0 chooses automatically.
        min_chars: Drop sentences shorter than this (after stripping whitespace).
        max_chars: Cut longer sentences at whitespace into pieces of at most this many characters; None keeps them.
        batch_size: Texts per spaCy batch.
        progress: Show a progress bar.

    Returns:
        For each text, its sentences as ``(start, end)`` pairs in order: ``text[start:end]`` is the sentence, with
        no leading or trailing whitespace and no line break inside.
    """
    if max_chars is not None and max_chars < 1:
        raise PlanlmError(f"max_chars must be >= 1 or None (got {max_chars})")
    if n_process == 0:
        n_process = auto_processes(len(texts))
    nlp = _nlp()
    out: list[list[tuple[int, int]]] = []
    docs = nlp.pipe(texts, n_process=n_process, batch_size=batch_size)
    for text, doc in tqdm(zip(texts, docs), total=len(texts), desc="split sentences", unit=" art", disable=not progress):
        spans: list[tuple[int, int]] = []
        for sent in doc.sents:
            # Rule 2: cut at line breaks; rule 3: each piece without outer whitespace.
            for m in _NONSPACE_RUN.finditer(text, sent.start_char, sent.end_char):
                start, end = _strip(text, m.start(), m.end())
                if end - start < max(1, min_chars):
                    continue
                if max_chars is None or end - start <= max_chars:
                    spans.append((start, end))
                else:
                    spans.extend(_cut(text, start, end, max_chars))
        out.append(spans)
    return out


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _cut(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    pieces = []
    while end - start > max_chars:
        cut = text.rfind(" ", start + 1, start + max_chars + 1)
        cut = cut if cut > start else start + max_chars
        s, e = _strip(text, start, cut)
        if e > s:
            pieces.append((s, e))
        start, _ = _strip(text, cut, end)
    if end > start:
        pieces.append((start, end))
    return pieces
