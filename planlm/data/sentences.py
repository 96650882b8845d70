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
import itertools
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tqdm.auto import tqdm

from planlm.errors import PlanlmError

_NONSPACE_RUN = re.compile(r"[^\n]+")
_LINE_BREAK = re.compile(r"\n")
_FIRST_NONSPACE = re.compile(r"\S+")
T = TypeVar("T")
PARALLEL_MIN_TEXTS = 500  # fewer texts than this are split in one process (starting a worker costs ~1 s of imports)
SEGMENT_TEXTS = 1000  # texts split at a time (one spaCy memory zone) by iter_sentence_spans in one process


@functools.lru_cache(maxsize=1)
def sentence_end_chars() -> frozenset[str]:
    """The sentencizer's sentence-final characters (each a single character) and the line break (rule 2)."""
    from spacy.pipeline.sentencizer import Sentencizer

    return frozenset(Sentencizer.default_punct_chars) | {"\n"}


@functools.lru_cache(maxsize=1)
def _ends_regex() -> re.Pattern:
    return re.compile("[" + "".join(re.escape(c) for c in sorted(sentence_end_chars())) + "]")


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
    if n_texts < PARALLEL_MIN_TEXTS:
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
    n_process = auto_processes(len(texts)) if n_process == 0 else n_process
    spans = (sp for _, sp in iter_sentence_spans(texts, n_process, min_chars, max_chars, batch_size))
    return list(tqdm(spans, total=len(texts), desc="split sentences", unit=" art", disable=not progress))


def iter_sentence_spans(
    items: Iterable[T], n_process: int = 1, min_chars: int = 1, max_chars: int | None = None, batch_size: int = 32,
    text: Callable[[T], str] | None = None,
) -> Iterator[tuple[T, list[tuple[int, int]]]]:
    """:func:`split_sentences` of a stream, lazily: ``(item, spans of its text)`` in order, reading a bounded number
    of items ahead (SEGMENT_TEXTS in one process; with workers, two tasks of ``batch_size`` per worker), so a corpus
    is never held whole. ``text(item)`` is the item's text (the item itself by default); ``n_process`` >= 1 here.

    spaCy keeps every distinct token string it meets (its vocabulary: ~0.7 kB each, millions on Wikipedia), so
    each segment or task is split inside a memory zone that frees them; the spans do not depend on the vocabulary.
    Workers send back spans, never spaCy documents, so this process builds no vocabulary at all.
    """
    if max_chars is not None and max_chars < 1:
        raise PlanlmError(f"max_chars must be >= 1 or None (got {max_chars})")
    text_of = text or (lambda item: item)
    items = iter(items)
    tasks = iter(lambda: list(itertools.islice(items, SEGMENT_TEXTS if n_process == 1 else batch_size)), [])
    if n_process == 1:
        for task in tasks:
            yield from zip(task, _spans_of([text_of(item) for item in task], min_chars, max_chars, batch_size))
        return
    import multiprocessing

    with multiprocessing.Pool(n_process) as pool:
        running: deque = deque()  # (items, their spans to come), in order
        for task in tasks:
            running.append((task, pool.apply_async(_spans_of, ([text_of(i) for i in task], min_chars, max_chars,
                                                               batch_size))))
            if len(running) > 2 * n_process:
                done, spans = running.popleft()
                yield from zip(done, spans.get())
        while running:
            done, spans = running.popleft()
            yield from zip(done, spans.get())


def _spans_of(texts: list[str], min_chars: int, max_chars: int | None, batch_size: int) -> list[list[tuple[int, int]]]:
    """The sentence spans of ``texts``, split inside one spaCy memory zone (in a worker or in this process)."""
    nlp = _nlp()
    with nlp.memory_zone():
        docs = nlp.pipe(texts, batch_size=batch_size)
        return [_doc_spans(t, doc, min_chars, max_chars) for t, doc in zip(texts, docs)]


def _doc_spans(text: str, doc, min_chars: int, max_chars: int | None) -> list[tuple[int, int]]:
    """Rules 2-4 over the sentencizer's sentences of ``doc`` (the spaCy doc of ``text``)."""
    return [span for sent in doc.sents for span in _pieces(text, sent.start_char, sent.end_char, min_chars, max_chars)]


def _pieces(text: str, start: int, end: int, min_chars: int, max_chars: int | None) -> list[tuple[int, int]]:
    """The sentences of one sentencizer sentence ``text[start:end]``: cut at line breaks (rule 2), stripped (rule 3),
    short ones dropped, long ones cut (rule 4)."""
    spans: list[tuple[int, int]] = []
    for m in _NONSPACE_RUN.finditer(text, start, end):
        s, e = _strip(text, m.start(), m.end())
        if e - s < max(1, min_chars):
            continue
        if max_chars is None or e - s <= max_chars:
            spans.append((s, e))
        else:
            spans.extend(_cut(text, s, e, max_chars))
    return spans


class SentenceTracker:
    """:func:`split_sentences` of ONE growing text (generation), recomputed only from the last settled reset point.

    ``spans(text)`` returns exactly ``split_sentences([text], min_chars=..., max_chars=...)[0]``; the text may grow
    or be cut back between calls (never edited in the middle). Why a suffix suffices, by how spaCy works:

    - spaCy's tokenizer cuts the text at whitespace first and tokenises every run of non-whitespace on its own, so
      the tokens of complete runs (runs followed by whitespace) never change when text is appended;
    - the sentencizer decides "a sentence starts at token t" from the tokens up to t only, with one bit of state
      (a sentence-final character seen since the last start), reset at every sentence start;
    - so at a *reset point* -- the first non-whitespace character of a sentencizer sentence, or of a line, preceded
      by whitespace, whose run is complete -- the analysis of ``text[p:]`` equals that of the whole text from ``p``
      on, and no sentence crosses ``p``. Sentences before the last reset point are final and kept.

    A window without a sentence-final character or a line break is one sentencizer sentence and is not sent
    through spaCy at all, so the per-token cost is a regex scan of the window (the current sentence, typically)
    plus one spaCy call over it while a sentence end is pending.
    """

    def __init__(self, min_chars: int = 1, max_chars: int | None = None):
        self.min_chars, self.max_chars = min_chars, max_chars
        self._final: list[tuple[int, int]] = []  # sentences before the last reset point
        self._resets: list[tuple[int, int, int]] = [(0, 0, 0)]  # (offset, len(_final) there, length it needs)

    def spans(self, text: str) -> list[tuple[int, int]]:
        while len(self._resets) > 1 and len(text) < self._resets[-1][2]:  # cut back before a reset point settled
            self._resets.pop()
        a, n, _ = self._resets[-1]
        del self._final[n:]
        window = text[a:]
        if _ends_regex().search(window) is None:  # no sentence-final character, no line break: one sentencizer sentence
            return self._final + [(a + s, a + e) for s, e in
                                  _pieces(window, 0, len(window), self.min_chars, self.max_chars)]
        doc = _nlp()(window)
        found = [(a + s, a + e) for s, e in _doc_spans(window, doc, self.min_chars, self.max_chars)]
        reset = _last_reset_point(window, doc)
        if reset is not None:
            p, needs = reset
            self._final.extend(sp for sp in found if sp[0] < a + p)
            self._resets.append((a + p, len(self._final), a + needs))
        return self._final + [sp for sp in found if sp[0] >= self._resets[-1][0]]


def _last_reset_point(window: str, doc) -> tuple[int, int] | None:
    """The last reset point ``p > 0`` of ``window`` whose run of non-whitespace is complete, with the length the
    text must keep for it to stay one (its run plus the whitespace after it); None if there is none."""
    starts = [s.start_char for s in doc.sents] + [m.end() for m in _LINE_BREAK.finditer(window)]
    best = None
    for c in starts:
        m = _FIRST_NONSPACE.search(window, c)
        if m is None or m.start() == 0 or not window[m.start() - 1].isspace():
            continue
        p, run_end = m.start(), m.end()
        if run_end < len(window) and (best is None or p > best[0]):  # whitespace follows: the run is complete
            best = (p, run_end + 1)
    return best


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
