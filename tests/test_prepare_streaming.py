"""`planlm prepare` streams (issue 25): the streamed artifact equals the one computed in memory, the split needs the
article count only, `--split.train` reads no more articles than the split takes, k-means reads faiss's own sample,
and the paper preset reads the paper's sizes."""

import json

import numpy as np
import pytest

import planlm.data.prepared as prepared_module
import planlm.data.sentences as sentences_module
import planlm.stages.prepare as prepare_stage
from planlm.data.actions import (
    KMeansConfig,
    assign,
    exemplars,
    fit_actions,
    kmeans_plusplus,
    lloyd_sample,
)
from planlm.data.corpus import (
    SourceConfig,
    SplitConfig,
    articles_needed,
    split_articles,
    split_problems,
)
from planlm.data.encoders import EncoderConfig, load_encoder
from planlm.data.prepared import EmbeddingRows, EmbeddingWriter, PreparedCorpus
from planlm.data.sentences import SentenceConfig, iter_sentence_spans, split_sentences
from planlm.errors import PlanlmError
from planlm.stages.prepare import prepare

WORDS = ("river", "stone", "city", "empire", "music", "theory", "grain", "harbour", "treaty", "comet", "orbit",
         "engine", "poem", "battle", "garden", "market")


def _corpus(path, n_articles, seed=0, blanks=()):
    """JSON Lines articles of real-looking sentences (headings, repeated sentences, varied lengths); the articles
    at ``blanks`` are whitespace only or a lone short heading."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_articles):
        if i in blanks:
            rows.append({"title": f"T{i}", "text": "   " if i % 2 else "Ab"})
            continue
        lines = []
        for _ in range(int(rng.integers(1, 4))):
            lines.append(f"Section {int(rng.integers(3))}")  # headings repeat across articles
            lines.append(" ".join(
                " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))).capitalize() + "."
                for _ in range(int(rng.integers(1, 6)))))
        rows.append({"title": f"T{i}", "text": "\n".join(lines)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_streamed_artifact_equals_the_in_memory_computation(tmp_path, monkeypatch):
    """Many embedding chunks and article row groups, articles dropped as empty or without a sentence: the files
    equal what the whole corpus in memory gives (splitting, split, one encoder call, k-means on the matrix)."""
    monkeypatch.setattr(prepare_stage, "EMBED_CHUNK", 50)  # about a dozen encoder calls
    monkeypatch.setattr(prepared_module, "ARTICLES_PER_ROW_GROUP", 7)
    monkeypatch.setattr(prepared_module, "SENTENCES_PER_ROW_GROUP", 37)
    src = _corpus(tmp_path / "c.jsonl", 60, blanks=(3, 10, 11, 40))
    kmeans = KMeansConfig(max_points_per_centroid=20)  # Lloyd on faiss's sample of the train sentences
    out = prepare(out=str(tmp_path / "p"), source=SourceConfig(source=str(src)), split=SplitConfig(val=5, test=4),
                  sentences=SentenceConfig(min_chars=3), encoder=EncoderConfig(name="fake:16"), kmeans=kmeans,
                  num_actions=6, progress=False)
    pc = PreparedCorpus.load(out)

    records = [json.loads(line) for line in src.read_text().splitlines()]
    texts = [r["text"].strip() for r in records if r["text"].strip()]
    spans = split_sentences(texts, min_chars=3)
    kept = [i for i, s in enumerate(spans) if s]
    assert len(kept) == 56 and list(pc.texts) == [texts[i] for i in kept]  # "   " skipped, "Ab" has no sentence
    assert pc.titles == [r["title"] for r in records if r["text"].strip() and len(r["text"].strip()) >= 3]
    assert np.array_equal(pc.article_split, split_articles(56, SplitConfig(val=5, test=4)))
    starts = [b for i in kept for b, _ in spans[i]]
    assert pc.sentence_start.tolist() == starts and len(pc.actions) == len(starts)
    assert pc.sentence_position.tolist() == [p for i in kept for p in range(len(spans[i]))]
    sentences = [pc.sentence_text(i) for i in range(len(starts))]
    whole = load_encoder("fake:16").encode(sentences).astype(np.float16)
    assert np.array_equal(pc.embeddings, whole)
    train = np.isin(pc.sentence_article, pc.article_ids("train"))
    fit = fit_actions(whole[train], 6, kmeans, progress=False)
    assert np.array_equal(pc.centroids, fit.centroids)
    assert np.array_equal(pc.actions[train], fit.train_labels)
    assert np.array_equal(pc.actions[~train], assign(whole[~train], fit.centroids)[0])
    expected = exemplars(fit.train_labels, fit.train_distances, np.flatnonzero(train),
                         [s for s, t in zip(sentences, train) if t], 6, 5)
    assert pc.exemplars() == expected
    m = pc.manifest
    assert m["counts"]["read"] == {"articles": 58, "empty_articles": 4, "undecodable_bytes": 0, "skipped_pages": 0}
    assert m["counts"]["total"]["articles"] == 56 and "train" not in m["config"]["split"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # the spool is gone


def test_split_train_reads_only_the_articles_the_split_takes(tmp_path, monkeypatch):
    src = _corpus(tmp_path / "c.jsonl", 40, blanks=(2,))
    read = []
    real = prepare_stage.iter_corpus

    def counted(*args, **kwargs):
        for art in real(*args, **kwargs):
            read.append(art.title)
            yield art

    monkeypatch.setattr(prepare_stage, "iter_corpus", counted)
    monkeypatch.setattr(sentences_module, "SEGMENT_TEXTS", 8)
    split = SplitConfig(train=20, val=3, test=2)
    kwargs = {"source": SourceConfig(source=str(src)), "encoder": EncoderConfig(name="fake:8"), "num_actions": 4,
                  "sentences": SentenceConfig(min_chars=3, n_process=1, batch_size=4), "progress": False}
    out = prepare(out=str(tmp_path / "p"), split=split, **kwargs)
    pc = PreparedCorpus.load(out)
    assert [len(pc.article_ids(s)) for s in ("train", "val", "test")] == [20, 3, 2]
    assert pc.titles == [f"T{i}" for i in range(26) if i != 2]  # the first 25 with a sentence
    assert len(read) <= 26 + 8  # the source was not read to its end (one segment of texts ahead at most)
    # the same articles and split as the default rule on those 25 articles: --split.train only stops the reading
    same = prepare(out=str(tmp_path / "q"), split=SplitConfig(val=3, test=2),
                   **(kwargs | {"source": SourceConfig(source=str(src), max_articles=26)}))
    assert PreparedCorpus.load(same).article_split.tolist() == pc.article_split.tolist()
    assert pc.manifest["config"]["split"]["train"] == 20 and "train" not in PreparedCorpus.load(same).manifest[
        "config"]["split"]
    with pytest.raises(PlanlmError, match=r"has 39 articles with a sentence but the split asks for 50 train"):
        prepare(out=str(tmp_path / "r"), split=SplitConfig(train=50, val=3, test=2), **kwargs)
    assert not (tmp_path / "r").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".r")]


def test_split_train_parallel_sentence_splitting_stops_its_workers(tmp_path):
    src = _corpus(tmp_path / "c.jsonl", 80)
    out = prepare(out=str(tmp_path / "p"), source=SourceConfig(source=str(src)),
                  split=SplitConfig(train=30, val=2, test=2), sentences=SentenceConfig(n_process=2, batch_size=4),
                  encoder=EncoderConfig(name="fake:8"), num_actions=4, progress=False)
    assert len(PreparedCorpus.load(out).texts) == 34


def test_split_problems_and_sizes():
    assert split_problems(SplitConfig(train=285_310, val=1000, test=1000)) == []
    problems = split_problems(SplitConfig(train=100))
    assert len(problems) == 2 and "split.val=0.1 is a fraction" in problems[0] and "--split.val 1000" in problems[0]
    assert any("split.train=0 must be a count" in p for p in split_problems(SplitConfig(train=0, val=1, test=1)))
    assert articles_needed(SplitConfig()) is None
    assert articles_needed(SplitConfig(train=285_310, val=1000, test=1000)) == 287_310
    assert articles_needed(SplitConfig(train=10, val=3000, test=0)) == 1010  # capped at max_val, as the split is
    with pytest.raises(PlanlmError, match="has 12 articles"):
        split_articles(12, SplitConfig(train=10, val=1, test=2))


def test_paper_preset_reads_the_papers_sizes():
    from planlm.stages.run import PRESETS

    p = PRESETS["paper"]
    assert p.max_articles == 287_310 and p.eval_max_articles == 1000
    split = split_articles(p.max_articles, SplitConfig())  # what `planlm run --preset paper` prepares
    assert [(split == s).sum() for s in ("train", "val", "test")] == [285_310, 1000, 1000]


def test_lloyd_reads_faiss_own_sample():
    """The rows read for Lloyd are the ones faiss picks when handed every point: the same centroids, bit for bit
    (the k-means of every prepared corpus larger than max_points_per_centroid x K is unchanged)."""
    import faiss

    x = np.random.default_rng(0).standard_normal((3000, 8)).astype(np.float16)
    for seed in (0, 3):
        cfg = KMeansConfig(seed=seed, max_points_per_centroid=60)
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(3000, size=40, replace=False))
        seeds = kmeans_plusplus(x[picked].astype(np.float32), 5, rng)
        km = faiss.Kmeans(8, 5, niter=cfg.max_iter, seed=seed, verbose=False, spherical=False,
                          max_points_per_centroid=60, min_points_per_centroid=1)
        km.train(x.astype(np.float32), init_centroids=seeds)  # faiss subsamples 300 of the 3000 points itself
        fit = fit_actions(x, 5, cfg, progress=False)
        assert fit.reseeded == 0 and np.array_equal(fit.centroids, km.centroids)
    assert len(lloyd_sample(3000, 5, KMeansConfig(max_points_per_centroid=60))) == 300
    assert lloyd_sample(300, 5, KMeansConfig(max_points_per_centroid=60)) is None
    assert lloyd_sample(3000, 5, KMeansConfig(max_points_per_centroid=0)) is None  # 0 = every point


def test_embedding_writer_and_rows(tmp_path):
    x = np.random.default_rng(1).standard_normal((23, 4)).astype(np.float16)
    writer = EmbeddingWriter(tmp_path / "e.npy", 23, 4)
    for lo in range(0, 23, 5):
        writer.write(x[lo : lo + 5].astype(np.float32))
    writer.close()
    np.save(tmp_path / "ref.npy", x)
    assert (tmp_path / "e.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()  # what np.save writes
    ids = np.array([1, 2, 3, 8, 13, 21])
    rows = EmbeddingRows(tmp_path / "e.npy", ids)
    assert len(rows) == 6 and rows.shape == (6, 4) and rows.dtype == np.float16
    assert np.array_equal(rows[1:4], x[ids[1:4]]) and np.array_equal(rows[[5, 0]], x[[21, 1]])
    assert np.array_equal(rows[2], x[3]) and np.array_equal(EmbeddingRows(tmp_path / "e.npy")[20:], x[20:])
    with pytest.raises(ValueError, match="do not fit"):
        EmbeddingWriter(tmp_path / "f.npy", 2, 4).write(x[:3])
    short = EmbeddingWriter(tmp_path / "g.npy", 5, 4)
    short.write(x[:2])
    with pytest.raises(ValueError, match="2 rows written of 5"):
        short.close()


def test_exemplars_read_only_the_nearest_texts():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=400)
    dists = rng.random(400).astype(np.float32)
    texts = [f"sentence {i}" for i in range(400)]
    texts[:300] = ["Early life"] * 300  # a heading repeated: its action needs many candidates for 3 distinct
    fetched = []

    def text_of(idx):
        fetched.extend(idx.tolist())
        return [texts[j] for j in idx]

    lazy = exemplars(labels, dists, np.arange(400) + 1000, text_of, 4, 3)
    assert lazy == exemplars(labels, dists, np.arange(400) + 1000, texts, 4, 3)
    assert all(len(row["exemplars"]) == 3 for row in lazy) and len(set(fetched)) == len(fetched)
    unique = [f"s{i}" for i in range(400)]
    fetched.clear()
    exemplars(labels, dists, np.arange(400), lambda idx: (fetched.extend(idx.tolist()), [unique[j] for j in idx])[1],
              4, 3)
    assert len(fetched) == 12  # no duplicates: the 3 nearest of each action, nothing else


def test_iter_sentence_spans_is_lazy_and_keeps_items(monkeypatch):
    from planlm.data import sentences

    monkeypatch.setattr(sentences, "SEGMENT_TEXTS", 10)
    for n_process in (1, 2):
        fed = []

        def texts(fed=fed):
            for i in range(1000):
                fed.append(i)
                yield (i, f"Item {i} one. Item {i} two.")

        stream = iter_sentence_spans(texts(), n_process, batch_size=4, text=lambda item: item[1])
        first = [next(stream) for _ in range(3)]
        assert [item for item, _ in first] == [(i, f"Item {i} one. Item {i} two.") for i in range(3)]
        assert first[0][1] == [(0, 11), (12, 23)] and len(fed) <= 20  # a segment, or 2 tasks per worker, ahead
        rest = list(stream)
        assert len(rest) == 997 and rest[-1][1] == [(0, 13), (14, 27)]


def test_a_txt_file_is_read_in_chunks_exactly_as_whole(tmp_path):
    """Blank-line blocks of a .txt file read a few bytes at a time equal the split of the whole text (CRLF, a byte
    order mark, tabs, runs of blank lines, multi-byte and undecodable bytes at every chunk boundary)."""
    import re

    from planlm.data.corpus import ReadStats, _blank_line_blocks, _decode

    rng = np.random.default_rng(0)
    pieces = ["word", " ", "\t", "\n", "\r\n", "\r", "é", "€", "\n\n", "\n \t\n", "\r\n\r\n", ".", "\n\n\n\n"]
    for trial in range(60):
        raw = b"\xef\xbb\xbf" * (trial % 3 == 0) + "".join(rng.choice(pieces, size=40)).encode()
        if trial % 4 == 1:
            raw = raw[:7] + b"\xff\xe2\x82" + raw[7:]  # undecodable bytes, a truncated euro sign
        path = tmp_path / f"{trial}.txt"
        path.write_bytes(raw)
        whole_stats = ReadStats()
        text = _decode(raw, whole_stats).removeprefix("\ufeff")
        expected = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))
        for chunk in (1, 2, 3, 5, 64):
            stats = ReadStats()
            assert list(_blank_line_blocks(path, stats, chunk=chunk)) == expected, (trial, chunk, raw)
            assert stats.undecodable_bytes == whole_stats.undecodable_bytes


def test_an_xml_dump_keeps_no_finished_page(tmp_path, monkeypatch):
    import xml.etree.ElementTree as ET

    from planlm.data import corpus

    pages = "".join(f"<page><title>P{i}</title><ns>0</ns><revision><text>Text of page {i}.</text></revision></page>"
                    for i in range(3000))
    path = tmp_path / "dump.xml"
    path.write_text(f"<mediawiki><siteinfo><sitename>W</sitename></siteinfo>{pages}</mediawiki>")
    roots = []
    real = ET.iterparse

    def recording(*args, **kwargs):
        for event, elem in real(*args, **kwargs):
            roots.append(roots[0] if roots else elem)
            yield event, elem

    monkeypatch.setattr(corpus.ET, "iterparse", recording)
    held = [len(roots[0]) for _ in corpus.iter_wiki_xml(path, corpus.ReadStats())]
    # the pages of the parser's read-ahead (16 KiB of XML), never every page read so far
    assert len(held) == 3000 and max(held) < 300


def test_spacy_forgets_the_vocabulary_of_each_segment(monkeypatch):
    from planlm.data import sentences

    monkeypatch.setattr(sentences, "SEGMENT_TEXTS", 3)
    texts = [f"Word{i}a and word{i}b here. Then x{i}y{i}z ends!\nHeading {i}" for i in range(20)]
    strings = len(sentences._nlp().vocab.strings)
    streamed = [spans for _, spans in iter_sentence_spans(iter(texts), batch_size=2)]
    assert len(sentences._nlp().vocab.strings) == strings  # 60 new words met, none kept
    monkeypatch.setattr(sentences, "SEGMENT_TEXTS", 1000)
    assert streamed == split_sentences(texts) and len(streamed) == 20
    assert [s for _, s in iter_sentence_spans(texts[:6], batch_size=2)] == split_sentences(texts[:6])  # 2 segments


def test_fake_encoder_cache_starts_over_with_the_same_vectors(monkeypatch):
    from planlm.data.encoders import FakeEncoder

    texts = [f"w{i} w{i + 1} common" for i in range(50)]
    whole = FakeEncoder(16).encode(texts)
    monkeypatch.setattr(FakeEncoder, "CACHED_WORDS", 7)
    small = FakeEncoder(16)
    assert np.array_equal(small.encode(texts), whole) and len(small._cache) <= 7
