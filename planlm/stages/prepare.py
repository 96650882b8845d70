"""`planlm prepare` (a corpus -> writing actions) and `planlm actions show` (DESIGN.md sections 1.1 and 2).

Steps, streamed so that memory does not grow with the corpus (only arrays of a few integers per sentence and per
article do; texts and embeddings are on disk): load the encoder -> read articles and split them into sentences
(character offsets) in one pass, spooling the texts to disk -> split the articles train/val/test (a seeded
shuffle of their count) -> embed the sentences chunk by chunk (float16, written as they come) while the articles
are written with their split -> k-means++ on a sample of the train sentences -> nearest-centroid actions chunk by
chunk -> exemplars -> one artifact directory in the layout of :mod:`planlm.data.prepared`, built in a temporary
sibling and renamed into place. With ``--actions_from PREPARED`` the encoder, centroids and exemplars are
PREPARED's and no k-means runs (see :func:`planlm.data.actions.apply_actions`).
"""

from __future__ import annotations

import itertools
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from planlm.artifacts import (
    atomic_dir,
    file_hash,
    read_manifest,
    up_to_date,
    verify_artifact,
    write_manifest,
    writes_artifact,
)
from planlm.data.actions import (
    KMeansConfig,
    apply_actions,
    assign,
    check_num_actions,
    exemplars,
    fit_actions,
    kmeans_problems,
    suggest_num_actions,
)
from planlm.data.corpus import (
    Article,
    ReadStats,
    SourceConfig,
    SplitConfig,
    articles_needed,
    iter_corpus,
    source_kind,
    source_path,
    source_problems,
    split_articles,
    split_problems,
)
from planlm.data.encoders import (
    EncoderConfig,
    embed_sentences,
    load_encoder,
    resolve_encoder,
)
from planlm.data.prepared import (
    ARTICLES,
    EMBEDDINGS,
    EXEMPLARS,
    SENTENCES,
    SPLITS,
    ActionSpace,
    ArticleTexts,
    ArticleWriter,
    EmbeddingRows,
    EmbeddingWriter,
    write_action_space,
    write_sentences,
)
from planlm.data.sentences import (
    PARALLEL_MIN_TEXTS,
    SentenceConfig,
    auto_processes,
    iter_sentence_spans,
)
from planlm.errors import PlanlmError, raise_if_problems
from planlm.presets import load_presets
from planlm.stage_config import Fingerprint, config_of

ActionsPresetName = Literal["auto", "paper", "small"]  # planlm/presets/prepare/*.yaml (tests/test_presets.py)


@dataclass(frozen=True)
class ActionsPreset:
    """How `planlm prepare --preset` chooses K when --num_actions is unset."""

    num_actions: int
    """K (the paper: 1024)."""
    shrink_to_corpus: bool = False
    """Fewer actions for a small corpus: the largest power of two <= num_actions that leaves about 40 train sentences
    per action (planlm.data.actions.suggest_num_actions), so that every action is populated."""


# planlm/presets/prepare/*.yaml: auto (1024, fewer for a small corpus), paper (1024), small (64)
PRESETS: dict[str, ActionsPreset] = load_presets("prepare", ActionsPreset)


def validate_prepare(
    out: str, source: SourceConfig, split: SplitConfig, sentences: SentenceConfig, encoder: EncoderConfig,
    kmeans: KMeansConfig, num_actions: int | None, preset: ActionsPresetName, actions_from: str | None = None,
) -> None:
    """Raise one PlanlmError listing every problem in the arguments of :func:`prepare`, before any work starts."""
    problems = source_problems(source) + split_problems(split) + kmeans_problems(kmeans)
    problems += actions_from_problems(actions_from, encoder, num_actions)
    if preset not in PRESETS:
        problems.append(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    if num_actions is not None and num_actions < 2:
        problems.append(f"num_actions must be >= 2 (got {num_actions})")
    if sentences.min_chars < 1:
        problems.append(f"sentences.min_chars must be >= 1 (got {sentences.min_chars})")
    if sentences.max_chars is not None and sentences.max_chars < max(1, sentences.min_chars):
        problems.append(f"sentences.max_chars={sentences.max_chars} must be >= min_chars={sentences.min_chars}")
    if sentences.n_process < 0 or sentences.batch_size < 1:
        problems.append("sentences.n_process must be >= 0 (0 = automatic) and sentences.batch_size >= 1")
    if encoder.batch_size < 1:
        problems.append(f"encoder.batch_size must be >= 1 (got {encoder.batch_size})")
    if not out:
        problems.append("--out is empty; name the artifact directory to write")
    elif Path(out).exists() and not Path(out).is_dir():
        problems.append(f"--out {out} is a file; choose a directory path")
    raise_if_problems(problems, "prepare")


def actions_from_problems(actions_from: str | None, encoder: EncoderConfig, num_actions: int | None) -> list[str]:
    """--actions_from must be a prepared corpus; an --encoder.name or --num_actions given with it must be its own."""
    if actions_from is None:
        return []
    try:
        m = read_manifest(actions_from, "prepare")
    except PlanlmError as e:
        return [f"--actions_from: {e}"]
    out = []
    if encoder.name not in (EncoderConfig.name, m.get("encoder")):
        out.append(f"--encoder.name {encoder.name} differs from the encoder of --actions_from {actions_from} "
                   f"({m.get('encoder')}); drop --encoder.name: the actions are that encoder's")
    if num_actions is not None and num_actions != m.get("num_actions"):
        out.append(f"--num_actions {num_actions} differs from K={m.get('num_actions')} of --actions_from "
                   f"{actions_from}; drop --num_actions")
    return out


def resolve_num_actions(num_actions: int | None, preset: ActionsPresetName, n_train_sentences: int) -> int:
    """K: ``num_actions`` when given, else the preset's (planlm/presets/prepare/): "paper" is the paper's K=1024;
    "small" is 64; "auto" is 1024 unless the train split has fewer than about 40 sentences per action, in which case
    the largest power of two that leaves that many (so a small corpus still gets K non-empty, populated actions: 256
    on the builtin corpus).
    """
    if num_actions is not None:
        return num_actions
    p = PRESETS[preset]
    return suggest_num_actions(n_train_sentences, upper=p.num_actions) if p.shrink_to_corpus else p.num_actions


def _input_fingerprint(source: SourceConfig) -> str:
    """Content hash of a local corpus (file, or every .txt under a directory); the name of a Hub dataset."""
    kind = source_kind(source)
    path = source_path(source)
    if path is None:
        return f"hub:{source.source}:{source.hub_config}:{source.hub_split}"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return "dir:" + file_hash_of_list([f"{p.relative_to(path)}={file_hash(p)}" for p in files])
    return f"{kind}:{file_hash(path)}"


def file_hash_of_list(items: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


@writes_artifact()
def prepare(
    out: str = "prepared",
    source: SourceConfig = SourceConfig(),  # noqa: B008 (the CLI's defaults; never mutated)
    split: SplitConfig = SplitConfig(),  # noqa: B008 (the CLI's defaults; never mutated)
    sentences: SentenceConfig = SentenceConfig(),  # noqa: B008 (the CLI's defaults; never mutated)
    encoder: EncoderConfig = EncoderConfig(),  # noqa: B008 (the CLI's defaults; never mutated)
    kmeans: KMeansConfig = KMeansConfig(),  # noqa: B008 (the CLI's defaults; never mutated)
    num_actions: int | None = None,
    preset: ActionsPresetName = "auto",
    actions_from: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build the writing actions of a corpus: sentences, embeddings, k-means++ actions, exemplars.

    Reads the articles (default: the Wikipedia sample shipped in gensim's wheel, offline), splits them train/val/test
    by article, splits each into sentences with character offsets (spaCy sentencizer; every heading is its own
    sentence), embeds every distinct sentence once with a frozen SentenceTransformer (stored float16), runs k-means++
    with K actions on the train sentences only, gives every sentence its nearest centroid as its (oracle) action, and
    stores each action's size and the sentences nearest its centroid. The artifact is one directory written
    atomically (manifest.json + articles.parquet, sentences.parquet, embeddings.npy, centroids.npy, exemplars.json).
    Re-running with the same settings and the same input reuses it; --force true rebuilds it.

    K: the paper uses 1024 actions on Wikipedia. With --num_actions unset, --preset decides: "auto" (default) keeps
    1024 when the train split has at least ~40 sentences per action and otherwise takes the largest power of two that
    does (256 on the ~24k-sentence builtin corpus), so every action is populated; "paper" is always 1024; "small"
    is 64. No action is ever empty: empty clusters are re-seeded.

    Sizes: every article of the source is read unless --source.max_articles or --split.train says otherwise. The
    paper's are 285,310 train, 1,000 val and 1,000 test articles: `--split.train 285310 --split.val 1000
    --split.test 1000` reads exactly the first 287,310 articles with a sentence (of the ~6.4M of wikimedia/wikipedia
    20231101.en), and the default split of `--source.max_articles 287310` (what `planlm run --preset paper` uses) is
    the same. Test protocol: the paper's text, 1,000 test articles, all evaluated; the authors' code draws 5,000 test
    articles and evaluates the first 1,000, which planlm does not (it draws the 1,000 it evaluates).

    Memory does not grow with the corpus but for a few integers per sentence and per article: the texts are spooled
    to disk, the embeddings written as they are computed (65,536 sentences per encoder call) and read back in chunks,
    and k-means (faiss) trains on at most --kmeans.max_points_per_centroid x K train sentences (faiss's own sample;
    0 = every one, as does --kmeans.backend sklearn). The split is a seeded shuffle of the article count, decided
    after the first pass.

    Args:
        out: Artifact directory to write.
        source: Corpus source (builtin, .jsonl, .parquet, .txt, Wikipedia .xml[.bz2], or a Hub dataset name).
        split: Article-level train/val/test split (paper: 285,310 train, 1,000 val and 1,000 test articles).
        sentences: Sentence splitting.
        encoder: Frozen sentence encoder.
        kmeans: k-means++ backend and settings.
        num_actions: K, the number of writing actions; unset = chosen by --preset (paper: 1024).
        preset: "auto" (1024, fewer for a small corpus), "paper" (1024) or "small" (64); used when num_actions is unset.
        actions_from: A prepared corpus whose writing actions to apply (its encoder, centroids and exemplars; no
            k-means): every sentence gets its nearest centroid, so a run fine-tuned on that corpus can be evaluated
            on this one, and a planner shared. --kmeans, --num_actions and --preset are then unused.
        force: Rebuild even if --out already holds this artifact.
        progress: Show progress bars.

    Returns:
        The artifact directory.
    """
    from planlm.hub import local_folder

    actions_from = local_folder(actions_from, "--actions_from", "actions")  # a Hub id or a `planlm share` folder
    validate_prepare(out, source, split, sentences, encoder, kmeans, num_actions, preset, actions_from)
    out_dir = Path(out)
    space = ActionSpace.load(actions_from) if actions_from is not None else None
    if space is not None:  # the source's encoder; k-means settings do not apply
        encoder = EncoderConfig(name=space.encoder, device=encoder.device, batch_size=encoder.batch_size)
    config = PrepareConfig.from_call(locals()).fingerprint()
    if up_to_date(out_dir, "prepare", config, force):
        return out_dir

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 3)
        clock = now

    # Loaded first: a missing encoder should fail in seconds, not after reading the corpus.
    enc = load_encoder(encoder.name, device=encoder.device, batch_size=encoder.batch_size)
    lap("load encoder")

    with atomic_dir(out_dir, force=True) as tmp:
        spool = tmp / ".articles-spool.parquet"  # title and text, read back once the split is known
        read = _read_sentences(source, split, sentences, spool, progress)
        seconds["read"] = round(read.read_s, 3)  # the rest of the pass is sentence splitting (and the spool)
        lap("sentences")
        seconds["sentences"] = round(seconds["sentences"] - read.read_s, 3)
        stats, n_articles = read.stats, len(read.counts)
        if not n_articles:
            raise PlanlmError(f"no article of {source.source!r} has a sentence of at least {sentences.min_chars} "
                              "characters; lower --sentences.min_chars or use another corpus")

        article_split = split_articles(n_articles, split)  # (A,) str
        split_code = np.zeros(n_articles, dtype=np.int8)  # (A,) index into SPLITS
        for code, name in enumerate(SPLITS):
            split_code[article_split == name] = code
        counts_per_article = np.frombuffer(read.counts, dtype=np.int64)  # (A,)
        sentence_article = np.repeat(np.arange(n_articles), counts_per_article)  # (N,)
        sentence_start = np.frombuffer(read.starts, dtype=np.int64)  # (N,)
        sentence_end = np.frombuffer(read.ends, dtype=np.int64)  # (N,)
        sentence_split = split_code[sentence_article]  # (N,)
        train_ids = np.flatnonzero(sentence_split == 0)
        k = resolve_num_actions(num_actions, preset, len(train_ids)) if space is None else space.num_actions
        if space is None:
            check_num_actions(k, len(train_ids))  # before the expensive embedding step
        lap("split")

        seconds["embed"], write_s = _write_articles_and_embeddings(
            spool, tmp, article_split, np.r_[0, np.cumsum(counts_per_article)], sentence_start, sentence_end, enc,
            progress)
        clock = time.perf_counter()

        if space is not None:
            actions, _ = apply_actions(EmbeddingRows(tmp / EMBEDDINGS), space.centroids, space.path)
            centroids, train_labels, reseeded = space.centroids, actions[train_ids], 0
            # The actions are the source's, so are their exemplars (its sentence ids do not index this corpus).
            examples = [{key: v for key, v in e.items() if key != "sentence_ids"} for e in space.exemplars]
            lap("assign")
        else:
            fit = fit_actions(EmbeddingRows(tmp / EMBEDDINGS, train_ids), k, kmeans, progress=progress)
            centroids, train_labels, reseeded = fit.centroids, fit.train_labels, fit.reseeded
            actions = np.empty(len(sentence_article), dtype=np.int64)
            actions[train_ids] = fit.train_labels
            other = np.flatnonzero(sentence_split != 0)
            if len(other):  # val/test: nearest centroid, never refitted
                actions[other] = assign(EmbeddingRows(tmp / EMBEDDINGS, other), fit.centroids)[0]
            lap("k-means")

            texts = ArticleTexts(tmp / ARTICLES)
            examples = exemplars(
                fit.train_labels, fit.train_distances, train_ids,
                lambda idx: _sentence_texts(texts, sentence_article, sentence_start, sentence_end, train_ids[idx]),
                k, kmeans.num_exemplars,
            )
            lap("exemplars")

        counts = _counts(split_code, sentence_split, np.frombuffer(read.tokens, dtype=np.int64), k, train_labels,
                         stats, reseeded)
        write_sentences(tmp / SENTENCES, sentence_article, sentence_start, sentence_end, actions)
        write_action_space(tmp, centroids, examples)
        lap("write")
        seconds["write"] = round(seconds["write"] + write_s, 3)
        inputs = {"corpus": source_path(source) or source.source}
        if space is not None:
            inputs["actions_from"] = space.path
        write_manifest(
            tmp, "prepare", config, inputs=inputs, counts=counts,
            encoder=enc.name, encoder_path=resolve_encoder(enc.name) if not enc.name.startswith("fake:") else enc.name,
            embedding_dim=enc.dim, num_actions=k,
            seconds=seconds | ({"k-means detail": fit.seconds} if space is None else {}),
        )
    _print_summary(out_dir, counts, sentence_end - sentence_start, train_labels, k, stats, seconds)
    return out_dir


EMBED_CHUNK = 65536  # sentences per encoder call (whole row groups of articles, so a little more): the only
# embedding-sized memory of prepare is one chunk's texts and vectors


@dataclass
class _Read:
    """What one streamed pass over the source leaves in memory: a few integers per article and per sentence."""

    stats: ReadStats
    counts: array  # (A,) sentences of each kept article
    starts: array  # (N,) character offset of each sentence in its article
    ends: array  # (N,)
    tokens: array  # (A,) whitespace tokens of each kept article
    read_s: float  # seconds spent reading the source (the rest of the pass is sentence splitting)


def _read_sentences(source: SourceConfig, split: SplitConfig, sentences: SentenceConfig, spool: Path,
                    progress: bool) -> _Read:
    """Read the articles and split them into sentences in one pass, writing each kept article (one with a sentence
    of at least ``min_chars``) to ``spool``; with ``split.train`` set, stop once the split has its articles."""
    out = _Read(ReadStats(), array("q"), array("q"), array("q"), array("q"), 0.0)
    needed = articles_needed(split)

    def timed(articles: Iterator[Article]) -> Iterator[Article]:
        while True:
            t = time.perf_counter()
            art = next(articles, None)
            out.read_s += time.perf_counter() - t
            if art is None:
                return
            yield art

    stream = timed(iter_corpus(source, out.stats, progress=progress))
    n_process = sentences.n_process
    if n_process == 0:  # as split_sentences decides for a list: one process below PARALLEL_MIN_TEXTS articles
        head = list(itertools.islice(stream, PARALLEL_MIN_TEXTS))
        n_process, stream = auto_processes(len(head)), itertools.chain(head, stream)
    spans_of = iter_sentence_spans(stream, n_process, sentences.min_chars, sentences.max_chars, sentences.batch_size,
                                   text=lambda a: a.text)
    with ArticleWriter(spool, split=False) as kept:
        for art, spans in spans_of:
            out.stats.articles += 1
            if not spans:  # all of it shorter than min_chars: nothing to plan, it counts as empty
                out.stats.empty_articles += 1
                continue
            kept.add(art.title, art.text)
            out.counts.append(len(spans))
            out.starts.extend(b for b, _ in spans)
            out.ends.extend(e for _, e in spans)
            out.tokens.append(len(art.text.split()))
            if needed is not None and kept.count == needed:
                break
    spans_of.close()  # stops the splitting workers when the split needed fewer articles than the source has
    return out


def _write_articles_and_embeddings(spool: Path, tmp: Path, article_split: np.ndarray, offsets: np.ndarray,
                                   starts: np.ndarray, ends: np.ndarray, enc, progress: bool) -> tuple[float, float]:
    """Read the spool back one row group at a time: write each article with its split to ``articles.parquet`` and
    embed its sentences, EMBED_CHUNK at a time, into ``embeddings.npy``; the spool is removed. Returns the seconds
    spent embedding and writing."""
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    embed_s, t0 = 0.0, time.perf_counter()
    spooled = pq.ParquetFile(spool)
    vectors = EmbeddingWriter(tmp / EMBEDDINGS, int(offsets[-1]), enc.dim)
    batch: list[str] = []
    with ArticleWriter(tmp / ARTICLES) as articles, tqdm(total=int(offsets[-1]), desc="embed sentences",
                                                         unit=" sent", disable=not progress) as bar:
        for g in range(spooled.num_row_groups):
            group = spooled.read_row_group(g, columns=["title", "text"]).to_pydict()
            for title, text in zip(group["title"], group["text"]):
                a = articles.count
                articles.add(title, text, str(article_split[a]))
                lo, hi = int(offsets[a]), int(offsets[a + 1])
                batch.extend(text[b:e] for b, e in zip(starts[lo:hi].tolist(), ends[lo:hi].tolist()))
            if len(batch) >= EMBED_CHUNK or (batch and g == spooled.num_row_groups - 1):
                t = time.perf_counter()
                vectors.write(embed_sentences(enc, batch, progress=False))  # (chunk, d) float16
                embed_s += time.perf_counter() - t
                bar.update(len(batch))
                batch = []
    vectors.close()
    spool.unlink()
    return round(embed_s, 3), time.perf_counter() - t0 - embed_s


def _sentence_texts(texts: ArticleTexts, sentence_article: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                    ids: np.ndarray) -> list[str]:
    """The texts of sentences ``ids``, read in article order (one row group of articles at a time)."""
    out = [""] * len(ids)
    for i in np.argsort(ids, kind="stable"):
        sid = ids[i]
        out[i] = texts[int(sentence_article[sid])][int(starts[sid]) : int(ends[sid])]
    return out


def _own_actions(cfg) -> bool:
    return cfg.actions_from is None


# Everything `planlm prepare` reads (--encoder as used: with --actions_from, the source's encoder). Its fingerprint
# (the manifest's config) decides reuse, with the input corpus's content hash; with --actions_from, the source's
# path and id stand for the k-means settings, which are unused.
PrepareConfig = config_of(prepare, exclude=("out", "force"), fingerprint=Fingerprint(
    ignore=("progress",),
    null_unless={"kmeans": _own_actions, "num_actions": _own_actions, "preset": _own_actions},
    # split.train came later: a split without it keeps the fingerprint of the artifacts built before it
    absent_unless={"actions_from": lambda c: not _own_actions(c), "split.train": lambda c: c.split.train is not None},
    record={"actions_from": lambda c: {"path": str(c.actions_from),
                                       "id": read_manifest(c.actions_from, "prepare").get("id")}},
    extra=lambda c: {"input": _input_fingerprint(c.source)},
))


def _counts(split_code, sentence_split, article_tokens, k, train_labels, stats, reseeded) -> dict:
    counts: dict = {}
    for code, s in enumerate(SPLITS):
        counts[s] = {
            "articles": int((split_code == code).sum()),
            "sentences": int((sentence_split == code).sum()),
            "tokens": int(article_tokens[split_code == code].sum()),  # whitespace tokens
        }
    counts["total"] = {key: sum(counts[s][key] for s in SPLITS) for key in ("articles", "sentences", "tokens")}
    sizes = np.bincount(train_labels, minlength=k)
    counts["actions"] = {
        "num_actions": int(k), "empty": int((sizes == 0).sum()), "min_size": int(sizes.min()),
        "median_size": float(np.median(sizes)), "max_size": int(sizes.max()), "reseeded": int(reseeded),
    }
    counts["read"] = {
        "articles": stats.articles, "empty_articles": stats.empty_articles,
        "undecodable_bytes": stats.undecodable_bytes, "skipped_pages": stats.skipped_pages,
    }
    return counts


def _print_summary(out_dir, counts, lengths, train_labels, k, stats, seconds) -> None:
    sizes = np.bincount(train_labels, minlength=k)
    pct = lambda a, q: int(np.percentile(a, q)) if len(a) else 0
    lines = [f"planlm prepare: wrote {out_dir}", f"  {'split':<6} {'articles':>9} {'sentences':>10} {'tokens':>11}"]
    for s in (*SPLITS, "total"):
        c = counts[s]
        lines.append(f"  {s:<6} {c['articles']:>9,} {c['sentences']:>10,} {c['tokens']:>11,}")
    lines.append(
        f"  sentence length (chars): min {int(lengths.min())}, p5 {pct(lengths, 5)}, median {pct(lengths, 50)}, "
        f"p95 {pct(lengths, 95)}, max {int(lengths.max())}"
    )
    lines.append(
        f"  actions: K={k}, train sentences per action: min {int(sizes.min())}, p5 {pct(sizes, 5)}, "
        f"median {pct(sizes, 50)}, p95 {pct(sizes, 95)}, max {int(sizes.max())}; empty {int((sizes == 0).sum())}"
    )
    lines.append(
        f"  read: {stats.empty_articles} empty articles skipped, {stats.undecodable_bytes} undecodable bytes replaced, "
        f"{stats.skipped_pages} redirect/non-article pages skipped"
    )
    lines.append("  time: " + ", ".join(f"{step} {sec:.1f}s" for step, sec in seconds.items()) +
                 f" (total {sum(seconds.values()):.1f}s)")
    print("\n".join(lines))


def actions_show(artifact: str, action: int | None = None, n: int = 5) -> None:
    """Print writing actions of a prepared corpus: id, size (train sentences) and the sentences nearest the centroid.

    Args:
        artifact: A directory written by `planlm prepare`.
        action: Show only this action id; unset shows every action.
        n: Exemplar sentences per action.
    """
    import json

    manifest = verify_artifact(artifact, read_manifest(artifact, "prepare"))  # a changed file is refused, not shown
    path = Path(artifact) / EXEMPLARS
    if not path.exists():
        raise PlanlmError(f"{artifact} has no {EXEMPLARS}; rebuild it with `planlm prepare --force true`")
    try:
        table = json.loads(path.read_text())
        rows_ok = isinstance(table, list) and all(isinstance(r, dict) and {"action", "size", "exemplars"} <= set(r)
                                                  for r in table)
    except (ValueError, UnicodeDecodeError):
        rows_ok = False
    if not rows_ok:  # an artifact of an older planlm, whose hashes were not recorded
        raise PlanlmError(f"{path} is damaged (not the list of actions `planlm prepare` writes); rebuild it with "
                          "`planlm prepare --force true`")
    k = int(manifest.get("num_actions", len(table)))
    if action is not None and not 0 <= action < k:
        raise PlanlmError(f"action {action} does not exist; {artifact} has actions 0..{k - 1}")
    if n < 1:
        raise PlanlmError(f"--n must be >= 1 (got {n})")
    total = sum(row["size"] for row in table) or 1
    rows = table if action is None else [row for row in table if row["action"] == action]
    lines = [f"{artifact}: {k} actions, encoder {manifest.get('encoder')}"]
    for row in rows:
        lines.append(f"action {row['action']}  size {row['size']} ({100 * row['size'] / total:.2f}% of train sentences)")
        lines.extend(f"    {text}" for text in row["exemplars"][:n])
    print("\n".join(lines), flush=True)
