"""Token alignment (DESIGN.md 1.4) on hand-made articles with a tiny byte-level BPE tokenizer built locally."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import handmade_prepared, spans_of, tiny_tokenizer

from planlm.data.alignment import sentence_token_counts, tokenize_articles
from planlm.errors import PlanlmError

# Leading whitespace, a double-space gap, a newline gap and a trailing tail after the last sentence.
TEXT0 = "  The Moon is here.  It orbits.\nThe Sun is hot. tail"
SENTS0 = ["The Moon is here.", "It orbits.", "The Sun is hot."]
TEXT1 = "Apollo 11 landed. Water ice has been found."
SENTS1 = ["Apollo 11 landed.", "Water ice has been found."]


@pytest.fixture
def handmade(tmp_path):
    return handmade_prepared(tmp_path / "prep", [(TEXT0, spans_of(TEXT0, SENTS0)), (TEXT1, spans_of(TEXT1, SENTS1))])


def test_tokens_map_to_their_sentence(handmade):
    tok = tiny_tokenizer()
    arts = tokenize_articles(handmade, tok, [0, 1])
    assert [a.article_id for a in arts] == [0, 1]
    a0, a1 = arts
    # decoding the tokens of each sentence gives back that sentence, with the gap before it (and the tail at the end)
    pieces = ["".join(tok.decode(a0.input_ids[a0.token_sentence == j])) for j in range(3)]
    assert pieces == ["  The Moon is here.", "  It orbits.", "\nThe Sun is hot. tail"]
    # article 1's sentences are global ids 3 and 4
    assert set(a1.token_sentence.tolist()) == {3, 4}
    assert tok.decode(a1.input_ids[a1.token_sentence == 4]) == " Water ice has been found."
    # the tokens of all articles concatenate to the full texts
    assert tok.decode(a0.input_ids) == TEXT0 and tok.decode(a1.input_ids) == TEXT1
    assert np.all(np.diff(a0.token_sentence) >= 0)


def test_the_token_predicting_a_sentence_carries_its_action(handmade):
    a0, a1 = tokenize_articles(handmade, tiny_tokenizer(), [0, 1])
    for art, lo in ((a0, 0), (a1, 3)):
        starts = art.sentence_token_start
        assert art.token_sentence[starts].tolist() == list(range(lo, lo + len(starts)))
        # the token before sentence j's first token is the one predicting it: it carries sentence j's action
        for j in range(1, len(starts)):
            assert art.action_slot[starts[j] - 1] == lo + j
            assert art.token_sentence[starts[j] - 1] == lo + j - 1
        # every other token carries its own sentence; the article's last token keeps its own
        last_of_sentence = set((starts[1:] - 1).tolist())
        for t in range(art.num_tokens):
            if t not in last_of_sentence:
                assert art.action_slot[t] == art.token_sentence[t]
        assert art.action_slot[-1] == lo + len(starts) - 1


def test_sentence_token_counts(handmade):
    tok = tiny_tokenizer()
    counts = sentence_token_counts(handmade, tok, progress=False)
    arts = tokenize_articles(handmade, tok, [0, 1])
    assert counts.dtype == np.int64 and counts.shape == (5,)
    assert counts.sum() == sum(a.num_tokens for a in arts)
    assert counts[4] == len(tok(" Water ice has been found.", add_special_tokens=False)["input_ids"])
    np.testing.assert_array_equal(counts[:3], np.diff(np.r_[arts[0].sentence_token_start, arts[0].num_tokens]))


def test_synthetic_corpus_alignment_is_consistent(synthetic_corpus):
    tok = tiny_tokenizer()
    c = synthetic_corpus
    for art in tokenize_articles(c, tok, range(len(c.texts)), batch_size=5):
        lo, hi = c.sentence_range(art.article_id)
        assert art.sentence_token_start.shape == (hi - lo,)
        for j in range(lo, hi):
            got = tok.decode(art.input_ids[art.token_sentence == j]).strip()
            assert got == c.sentence_text(j)


def test_slow_tokenizer_is_refused(handmade):
    class SlowTokenizer:
        is_fast = False

    with pytest.raises(PlanlmError, match="offset mapping"):
        tokenize_articles(handmade, SlowTokenizer(), [0])


def test_article_without_sentences_has_no_tokens(tmp_path):
    c = handmade_prepared(tmp_path / "p", [("Some text without sentences.", []), (TEXT1, spans_of(TEXT1, SENTS1))])
    empty, full = tokenize_articles(c, tiny_tokenizer(), [0, 1])
    assert empty.num_tokens == 0 and full.token_sentence.min() == 0
