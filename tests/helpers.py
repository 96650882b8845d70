"""Test helpers shared by the test modules (no encoder, no k-means, no download).

- `synthetic_prepared`: a small prepared corpus. Texts are real English sentences (from Wikipedia's article on the
  Moon) arranged into articles by a seeded RNG; embeddings are seeded random vectors; actions are each sentence's
  nearest random centroid. `planlm prepare` itself is tested on real data in tests/test_prepare*.py.
- `tiny_lm` / `tiny_planner`: saved folders of a tiny GPT-2 (+ BPE tokenizer) and a tiny planner, as the CLI reads them.
- `random_lm`, `sentence_batch`, `tiny_tokenizer`, `handmade_prepared`, `spans_of`: in-memory models (GPT-2,
  GPT-NeoX, Llama), batches and hand-made corpora for the model-level tests.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from planlm.artifacts import write_manifest
from planlm.data.alignment import sentence_token_counts
from planlm.data.corpus import SourceConfig
from planlm.data.encoders import EncoderConfig
from planlm.data.planner_inputs import PlannerInputs
from planlm.data.prepared import PreparedCorpus, write_prepared
from planlm.data.windows import WindowDataset, collate_windows
from planlm.train.trainer import OptimConfig, TrainerConfig

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

    from planlm.train.lm_pretraining import train_tokenizer

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


# In-memory models and hand-made corpora for the model-level tests (adapters, selection, alignment, planned LM).

ARCHS = ("gpt2", "gpt_neox", "llama")
VOCAB = 300


def random_lm(arch: str, n_layer: int = 4, seed: int = 0):
    """A randomly initialised causal LM of ``arch`` (no download), in eval mode."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if arch == "gpt2":
        lm = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=256, n_embd=32, n_layer=n_layer, n_head=2,
                                          bos_token_id=0, eos_token_id=0))
    elif arch == "gpt_neox":
        lm = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=VOCAB, hidden_size=32, num_hidden_layers=n_layer, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=256,
            )
        )
    elif arch == "llama":
        # head_dim * heads = 48 != hidden 32, and grouped-query attention: the projection input width is read from
        # the module, not assumed to be the hidden size.
        lm = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=VOCAB, hidden_size=32, num_hidden_layers=n_layer, num_attention_heads=2,
                num_key_value_heads=1, head_dim=24, intermediate_size=64, max_position_embeddings=256,
            )
        )
    else:
        raise ValueError(arch)
    return lm.eval()


def sentence_batch(B=2, T=10, N=5, K=6, seed=1):
    """Random token ids, each row's tokens in N sentences in order, and random (N, K) planner logits."""
    import torch

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (B, T), generator=g)
    token_slot = torch.sort(torch.randint(0, N, (B, T), generator=g), dim=1).values  # sentences in order
    logits = torch.randn(N, K, generator=g)
    return input_ids, token_slot, logits


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A GPT-2-style byte-level BPE (fast, with offsets) trained in a second on the helper sentences."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def handmade_prepared(directory, articles: list[tuple[str, list[tuple[int, int]]]], num_actions: int = 4):
    """Write a prepared corpus from ``[(text, [(start, end), ...]), ...]``; action of sentence i is i % K."""
    spans = [(a, s, e) for a, (_, sents) in enumerate(articles) for s, e in sents]
    n = len(spans)
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    write_prepared(
        directory,
        titles=[f"A{a}" for a in range(len(articles))],
        texts=[t for t, _ in articles],
        splits=["train"] * len(articles),
        sentence_article=np.array([a for a, _, _ in spans]),
        sentence_start=np.array([s for _, s, _ in spans]),
        sentence_end=np.array([e for _, _, e in spans]),
        embeddings=rng.standard_normal((n, 8)),
        centroids=rng.standard_normal((num_actions, 8)),
        actions=np.arange(n) % num_actions,
        exemplars=[],
    )
    write_manifest(directory, "prepare", {"handmade": True}, encoder="none", embedding_dim=8, num_actions=num_actions)
    return PreparedCorpus.load(directory)


def spans_of(text: str, sentences: list[str]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for s in sentences:
        start = text.index(s, pos)
        out.append((start, start + len(s)))
        pos = start + len(s)
    return out


NAP = functools.partial(OptimConfig, weight_decay=1e-4)  # train-planner's optimisation defaults (the paper's)
QUIET = TrainerConfig(accelerator="cpu", progress_bar=False, logger="csv")


def patterned_prepared(directory, n_articles=40, num_actions=6, dim=16, seed=0) -> PreparedCorpus:
    """A prepared corpus whose actions follow a rule a planner can learn from the previous sentence's embedding:
    the first action of an article is random, then a_j = (a_{j-1} + 1) mod K. Embeddings are noisy centroids."""
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True)
    centroids = rng.standard_normal((num_actions, dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    titles, texts, splits, arts, starts, ends, actions = [], [], [], [], [], [], []
    for a in range(n_articles):
        n = int(rng.integers(6, 12))
        acts = (int(rng.integers(num_actions)) + np.arange(n)) % num_actions
        text = ""
        for act in acts:
            text += " " if text else ""
            starts.append(len(text))
            text += SENTENCES[int(act) % len(SENTENCES)]
            ends.append(len(text))
            arts.append(a)
        actions += acts.tolist()
        titles.append(f"Patterned {a}")
        texts.append(text)
        splits.append("val" if a < 8 else "test" if a < 12 else "train")
    actions = np.array(actions)
    emb = centroids[actions] + 0.2 * rng.standard_normal((len(actions), dim)).astype(np.float32) / np.sqrt(dim)
    exemplars = [{"action": k, "size": int((actions == k).sum()), "exemplars": []} for k in range(num_actions)]
    write_prepared(directory, titles, texts, splits, np.array(arts), np.array(starts), np.array(ends), emb,
                   centroids, actions, exemplars)
    write_manifest(directory, "prepare", {"patterned": True, "seed": seed}, encoder="synthetic", embedding_dim=dim,
                   num_actions=num_actions)
    return PreparedCorpus.load(directory)


def corpus_batch(corpus, split="train", n=4, context_length=32):
    tok = tiny_tokenizer()
    ds = WindowDataset.from_corpus(corpus, tok, split, context_length=context_length, stride=context_length - 1)
    fn = PlannerInputs(corpus, "paper", context_tokens=32, token_counts=sentence_token_counts(corpus, tok, False))
    return collate_windows([ds[i] for i in range(n)], fn, pad_token_id=tok.pad_token_id)


def model_inputs(batch):
    keys = ("input_ids", "attention_mask", "labels", "token_slot", "oracle_actions", "planner_inputs")
    return {k: batch[k] for k in keys}


def prepare_builtin_slice(out, n_articles: int = 12, num_actions: int = 16) -> Path:
    """`planlm prepare` of the first ``n_articles`` builtin Wikipedia articles (fake 32-d encoder, K=16) into out."""
    from planlm.stages.prepare import prepare

    prepare(out=str(out), source=SourceConfig(max_articles=n_articles), encoder=EncoderConfig(name="fake:32"),
            num_actions=num_actions, progress=False)
    return Path(out)


def snapshot(*roots: Path) -> dict:
    """Every path under ``roots`` with (is a folder, size, mtime of a file): equal before and after a refused
    command when it added, changed and removed nothing."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            st = p.lstat()
            out[str(p)] = (p.is_dir(), st.st_size, 0 if p.is_dir() else st.st_mtime_ns)
    return out


def assert_refused(capsys, argv: list, pattern: str, *roots: Path) -> str:
    """``planlm argv`` exits 2 with one ``planlm: error:`` line matching ``pattern`` and leaves ``roots`` as they
    were; returns the line."""
    import re

    from planlm.cli import main

    before = snapshot(*roots)
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"exit {rc}, stderr: {err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("planlm: error: "), err[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    assert snapshot(*roots) == before, "a refused command must add, change and remove nothing"
    return lines[0]
