"""Test helpers: a small synthetic prepared corpus that needs no encoder, no k-means and no download.

Texts are real English sentences (from Wikipedia's article on the Moon) arranged into articles by a seeded RNG;
embeddings are seeded random vectors; actions are each sentence's nearest random centroid. Use it for model and
training tests; `planlm prepare` itself is tested on real data in tests/test_prepare*.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from planlm.artifacts import write_manifest
from planlm.data.prepared import PreparedCorpus, write_prepared

SENTENCES = [
    "The Moon is Earth's only natural satellite.",
    "It orbits at an average distance of 384,400 km.",
    "The Moon is thought to have formed about 4.5 billion years ago.",
    "Its surface is covered in lunar dust and marked by craters.",
    "The near side is marked by dark volcanic maria.",
    "These fill the spaces between the bright ancient crustal highlands.",
    "The Moon is the second-brightest regularly visible object in the sky.",
    "Its gravitational influence produces the ocean tides.",
    "The Moon's orbit is slowly getting larger over time.",
    "Both the Moon and the Sun appear about the same size in the sky.",
    "This allows total solar eclipses to occur.",
    "The first artificial object to reach the Moon was Luna 2 in 1959.",
    "Apollo 11 landed the first humans on the Moon in 1969.",
    "Twelve astronauts walked on its surface between 1969 and 1972.",
    "Samples returned by the missions revealed its composition.",
    "Water ice has been found in permanently shadowed craters.",
]


def synthetic_prepared(
    directory: str | Path,
    n_articles: int = 12,
    sentences_per_article: tuple[int, int] = (4, 14),
    num_actions: int = 8,
    dim: int = 16,
    seed: int = 0,
) -> PreparedCorpus:
    """Write and load a prepared corpus with ``n_articles`` (split 60/20/20 train/val/test, each non-empty)."""
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sentence_vectors = rng.standard_normal((len(SENTENCES), dim)).astype(np.float32)
    centroids = rng.standard_normal((num_actions, dim)).astype(np.float32)
    titles, texts, splits = [], [], []
    sent_article, sent_start, sent_end, emb = [], [], [], []
    n_val = max(1, n_articles // 5)
    for a in range(n_articles):
        n = int(rng.integers(*sentences_per_article))
        picks = rng.integers(0, len(SENTENCES), size=n)
        text = ""
        for p in picks:
            if text:
                text += " "
            start = len(text)
            text += SENTENCES[p]
            sent_article.append(a)
            sent_start.append(start)
            sent_end.append(len(text))
            emb.append(sentence_vectors[p] + 0.01 * rng.standard_normal(dim).astype(np.float32))
        titles.append(f"Article {a}")
        texts.append(text)
        splits.append("val" if a < n_val else "test" if a < 2 * n_val else "train")
    emb = np.stack(emb)
    actions = ((emb[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    exemplars = [{"action": k, "size": int((actions == k).sum()), "exemplars": []} for k in range(num_actions)]
    write_prepared(
        directory, titles, texts, splits, np.array(sent_article), np.array(sent_start), np.array(sent_end),
        emb, centroids, actions, exemplars,
    )
    counts = {s: {"articles": splits.count(s)} for s in ("train", "val", "test")}
    write_manifest(directory, "prepare", {"synthetic": True, "seed": seed}, counts=counts,
                   encoder="synthetic", embedding_dim=dim, num_actions=num_actions)
    return PreparedCorpus.load(directory)


def tiny_lm(directory: str | Path, texts: list[str], vocab_size: int = 300, seed: int = 0, dropout: float = 0.1) -> str:
    """Save a tiny randomly initialised causal LM + a BPE tokenizer trained on ``texts``; returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from planlm.train.pretrain_lm import train_tokenizer

    directory = Path(directory)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, min_frequency=1)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=4, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def tiny_planner(directory: str | Path, corpus: PreparedCorpus, context: str = "paper", seed: int = 0) -> str:
    """Save a small randomly initialised planner artifact for ``corpus`` (policy head from its centroids)."""
    import torch

    from planlm.models.planner import Planner, PlannerConfig
    from planlm.persist import save_planner

    torch.manual_seed(seed)
    cfg = PlannerConfig(num_actions=corpus.num_actions, encoder_dim=corpus.embedding_dim, ff=32, context=context,
                        context_sentences=3 if context == "paper" else None)
    planner = Planner(cfg, centroids=torch.from_numpy(corpus.centroids))
    save_planner(planner, directory)
    write_manifest(directory, "train-planner", {"tiny": True}, num_actions=corpus.num_actions)
    return str(directory)
