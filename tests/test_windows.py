"""Windows over tokenised articles and the batch dict (docs/architecture.md "Batches")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_tokenizer
from torch.utils.data import DataLoader

from planlm.data.alignment import TokenizedArticle, tokenize_articles
from planlm.data.windows import WindowDataset, collate_windows, window_starts
from planlm.errors import PlanlmError


def fake_article(article_id: int, sentence_lengths: list[int], first_sentence: int) -> TokenizedArticle:
    """Tokens numbered 1..T; sentence j (global first_sentence + j) spans sentence_lengths[j] tokens."""
    from planlm.data.alignment import align_tokens

    ends = np.cumsum(sentence_lengths)
    starts = np.r_[0, ends[:-1]]
    T = int(ends[-1])
    offsets = np.stack([np.arange(T), np.arange(T) + 1], 1)
    ts, slot, sts = align_tokens(offsets, starts, ends, first_sentence)
    return TokenizedArticle(article_id, np.arange(1, T + 1, dtype=np.int64), ts, slot, sts)


def scored_positions(ds: WindowDataset) -> list[tuple[int, int]]:
    """(article position, token index) of every scored target (HF labels are shifted: position 0 never scores)."""
    out = []
    for i in range(len(ds)):
        a, start = ds.index[i]
        labels = ds[i]["labels"]
        out += [(int(a), int(start) + p) for p in range(1, len(labels)) if labels[p] != -100]
    return out


def test_window_starts():
    assert window_starts(0, 8, 7) == []
    assert window_starts(5, 8, 7) == [0]  # shorter than one window
    assert window_starts(8, 8, 7) == [0]
    assert window_starts(9, 8, 7) == [0, 7]
    assert window_starts(20, 8, 7) == [0, 7, 14]


@pytest.mark.parametrize("context_length,stride", [(8, 7), (8, 3), (8, 1), (5, 4)])
def test_every_token_but_the_first_is_scored_exactly_once(context_length, stride):
    arts = [fake_article(0, [3, 5, 4, 6], 0), fake_article(1, [2, 2], 4), fake_article(2, [11, 9, 1], 6)]
    ds = WindowDataset(arts, oracle_actions=np.arange(9) % 4, context_length=context_length, stride=stride)
    got = sorted(scored_positions(ds))
    want = sorted((a, t) for a, art in enumerate(arts) for t in range(1, art.num_tokens))
    assert got == want
    assert all(len(ds[i]["input_ids"]) <= context_length for i in range(len(ds)))


def test_score_last_scores_only_the_last_token():
    art = fake_article(0, [4, 6], 0)
    ds = WindowDataset([art], np.zeros(2, dtype=int), context_length=4, stride=1, score="last")
    assert len(ds) == 7
    for i in range(len(ds)):
        labels = ds[i]["labels"]
        assert (labels[:-1] == -100).all() and labels[-1] == ds[i]["input_ids"][-1]


def test_straddling_sentence_short_article_and_last_sentence():
    # sentence 1 (tokens 3..9) straddles the start of the second window (token 7)
    long = fake_article(0, [3, 7, 4], 0)
    short = fake_article(1, [2, 3], 3)  # shorter than one window
    actions = np.array([10, 11, 12, 13, 14])
    ds = WindowDataset([long, short], actions, context_length=8, stride=7)
    assert [tuple(x) for x in ds.index] == [(0, 0), (0, 7), (1, 0)]
    w1 = ds[1]
    # tokens 7, 8 belong to sentence 1, token 9 is its last: it carries sentence 2; then sentence 2's tokens
    assert w1["action_slot"].tolist() == [1, 1, 2, 2, 2, 2, 2]
    assert w1["slot_action"].tolist() == [11, 11, 12, 12, 12, 12, 12]
    # the article's last token keeps the last sentence
    assert ds[2]["action_slot"].tolist() == [3, 4, 4, 4, 4]

    batch = collate_windows([ds[i] for i in range(3)], pad_token_id=0)
    assert batch["input_ids"].shape == (3, 8)
    assert batch["sentence_ids"].tolist() == [0, 1, 2, 3, 4]  # each referenced sentence once
    assert batch["oracle_actions"].tolist() == actions.tolist()
    mask = batch["attention_mask"].bool()
    assert mask.sum(1).tolist() == [8, 7, 5]
    assert (batch["labels"][~mask] == -100).all() and (batch["input_ids"][~mask] == 0).all()
    assert (batch["token_slot"][~mask] == 0).all()
    for b in range(3):
        n = int(mask[b].sum())
        assert batch["sentence_ids"][batch["token_slot"][b, :n]].tolist() == ds[b]["action_slot"].tolist()


def test_batches_from_a_prepared_corpus_with_planner_inputs(synthetic_corpus):
    c = synthetic_corpus
    ds = WindowDataset.from_corpus(c, tiny_tokenizer(), "train", context_length=32, stride=31)
    assert len(ds) > len(c.article_ids("train"))  # articles are longer than one window
    calls = []

    def planner_inputs_fn(sentence_ids: np.ndarray) -> dict[str, torch.Tensor]:
        calls.append(sentence_ids)
        return {"context_embeddings": torch.from_numpy(np.asarray(c.embeddings[sentence_ids], dtype=np.float32))}

    loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=ds.collate_fn(planner_inputs_fn, pad_token_id=0),
                        generator=torch.Generator().manual_seed(0))
    n_batches = 0
    for batch in loader:
        n_batches += 1
        ids = batch["sentence_ids"].numpy()
        assert np.array_equal(ids, np.unique(ids))
        assert np.array_equal(batch["oracle_actions"].numpy(), c.actions[ids])
        assert np.array_equal(calls[-1], ids)
        assert batch["planner_inputs"]["context_embeddings"].shape == (len(ids), c.embedding_dim)
        real = batch["attention_mask"].bool()
        slots = batch["token_slot"][real]
        assert slots.min() >= 0 and slots.max() < len(ids)
        # every window's sentences belong to the window's article
        for b, a in enumerate(batch["article_ids"].tolist()):
            lo, hi = c.sentence_range(a)
            s = ids[batch["token_slot"][b][real[b]].numpy()]
            assert s.min() >= lo and s.max() < hi
    assert n_batches == len(loader) == len(calls)


def test_tokenized_alignment_feeds_windows(synthetic_corpus):
    c = synthetic_corpus
    arts = tokenize_articles(c, tiny_tokenizer(), c.article_ids("val"))
    ds = WindowDataset(arts, c.actions, context_length=16, stride=15)
    total = sum(len(ds[i]["input_ids"]) for i in range(len(ds)))
    # windows overlap by one token (stride = context_length - 1)
    assert total == sum(a.num_tokens + len(window_starts(a.num_tokens, 16, 15)) - 1 for a in arts)


def test_bad_window_arguments_are_listed():
    with pytest.raises(PlanlmError) as e:
        WindowDataset([], np.zeros(0), context_length=1, stride=0, score="all")
    msg = str(e.value)
    assert "context_length" in msg and "stride" in msg and "score" in msg
    with pytest.raises(PlanlmError, match="empty"):
        collate_windows([])


def test_loader_workers_and_pinned_memory_default_to_the_device():
    import torch

    from planlm.train.loop import LoopData

    data = LoopData(train=[], val=None, collate=None)
    assert data.loader_settings(torch.device("cpu")) == {"num_workers": 0, "pin_memory": False}  # as before
    gpu = data.loader_settings(torch.device("cuda"))
    assert gpu["pin_memory"] and 1 <= gpu["num_workers"] <= 4
    assert LoopData(train=[], val=None, collate=None, num_workers=2).loader_settings(torch.device("cpu")) == {
        "num_workers": 2, "pin_memory": False}
