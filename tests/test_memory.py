"""Memory flat in corpus size (issue 11): embeddings read from the memory map, never copied whole; tokens and
sentence token counts computed once per (prepared corpus, tokenizer), cached next to the corpus as memory maps."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import synthetic_prepared, tiny_tokenizer

import planlm.data.alignment as alignment
from planlm.data.alignment import TokenCache, aligned_articles, sentence_token_counts, tokenize_articles
from planlm.data.planner_inputs import PlannerInputs
from planlm.data.prepared import PreparedCorpus


@pytest.fixture
def corpus(tmp_path):
    return synthetic_prepared(tmp_path / "prep", n_articles=10)


def test_cache_equals_fresh_tokenisation_and_is_built_once(corpus, monkeypatch):
    tok = tiny_tokenizer()
    ids = list(range(len(corpus.texts)))
    fresh = tokenize_articles(corpus, tok, ids)
    cached = aligned_articles(corpus, tok, ids[::-1])[::-1]
    folders = list(corpus.path.glob("tokens-*"))
    assert len(folders) == 1 and not list(corpus.path.glob("tokens-*.tmp-*"))
    for a, b in zip(fresh, cached):
        assert a.article_id == b.article_id
        for name in ("input_ids", "token_sentence", "action_slot", "sentence_token_start"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert isinstance(b.input_ids, np.memmap)  # a view of the map: no RAM per token
    counts = np.zeros(len(corpus.actions), dtype=np.int64)
    for a in fresh:
        np.add.at(counts, a.token_sentence, 1)
    # A second stage (a new loader of the same folder) reads the cache: tokenising again would fail here.
    monkeypatch.setattr(alignment, "tokenize_articles", lambda *a, **k: pytest.fail("tokenised again"))
    again = PreparedCorpus.load(corpus.path)
    assert np.array_equal(sentence_token_counts(again, tok), counts)


def test_another_tokenizer_gets_its_own_cache(corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    sentence_token_counts(corpus, tiny_tokenizer())
    raw = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    words = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    counts = sentence_token_counts(corpus, words)
    assert len(list(corpus.path.glob("tokens-*"))) == 2
    # one token per whitespace-separated word or punctuation run
    assert counts.sum() == sum(len(raw.pre_tokenizer.pre_tokenize_str(t)) for t in corpus.texts)


def test_read_only_corpus_tokenises_in_memory(corpus, monkeypatch):
    import pathlib

    def refuse(self, *args, **kwargs):  # as a read-only folder would (chmod does not stop root, who runs CI here)
        raise PermissionError(f"read-only: {self}")

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    cache = TokenCache.load_or_build(corpus, tiny_tokenizer(), progress=False)
    monkeypatch.undo()
    assert not list(corpus.path.glob("tokens-*"))
    fresh = tokenize_articles(corpus, tiny_tokenizer(), [3])[0]
    assert np.array_equal(cache.articles([3])[0].action_slot, fresh.action_slot)


def test_planner_inputs_read_the_memory_map(corpus):
    build = PlannerInputs(corpus, context="paper", context_sentences=3)
    assert isinstance(build.embeddings, np.memmap)  # no (N, d) copy per process
    ids = np.arange(len(corpus.actions))
    emb = build(ids)["context_embeddings"]  # (N, C, d)
    mask = build(ids)["context_mask"]
    start = build.context_start(ids)
    n, c = np.nonzero(mask.numpy())
    expected = np.asarray(corpus.embeddings, dtype=np.float32)[start[n] + c]
    assert np.array_equal(emb[n, c].numpy(), expected)
    assert (emb[~mask] == 0).all()


def test_article_texts_are_read_a_row_group_at_a_time(tmp_path, monkeypatch):
    import pickle

    import planlm.data.prepared as prepared

    monkeypatch.setattr(prepared, "ARTICLES_PER_ROW_GROUP", 4)
    corpus = synthetic_prepared(tmp_path / "prep", n_articles=10)
    texts = corpus.texts
    assert isinstance(texts, prepared.ArticleTexts) and len(texts) == 10
    expected = [texts[a] for a in range(10)]  # 3 row groups: 4 + 4 + 2 articles
    assert len(texts._group[1]) == 2  # only the last group read is held
    assert list(texts) == expected and texts[-1] == expected[9] and texts[np.int64(5)] == expected[5]
    assert texts[2:7] == expected[2:7]
    assert pickle.loads(pickle.dumps(texts))[6] == expected[6]
    with pytest.raises(IndexError):
        texts[10]
    for a in range(10):  # the sentence offsets index the lazily read texts
        lo, hi = corpus.sentence_range(a)
        assert "".join(corpus.sentence_text(i) for i in range(lo, hi)).replace(" ", "") == expected[a].replace(" ", "")
