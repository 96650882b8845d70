"""`planlm prepare` (a corpus -> writing actions) and `planlm actions show` (DESIGN.md sections 1.1 and 2).

Steps: load the encoder -> read articles -> split sentences (character offsets) -> split articles train/val/test ->
embed every sentence once (float16) -> k-means++ on the train sentences -> nearest-centroid actions for every
sentence -> exemplars -> one artifact directory in the layout of :mod:`planlm.data.prepared`, written atomically.
With ``--actions_from PREPARED`` the encoder, centroids and exemplars are PREPARED's and no k-means runs (see
:func:`planlm.data.actions.apply_actions`).
"""

from __future__ import annotations

import time
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
    SourceConfig,
    SplitConfig,
    read_corpus,
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
from planlm.data.prepared import EXEMPLARS, SPLITS, ActionSpace, write_prepared
from planlm.data.sentences import SentenceConfig, split_sentences
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
    source: SourceConfig = SourceConfig(),
    split: SplitConfig = SplitConfig(),
    sentences: SentenceConfig = SentenceConfig(),
    encoder: EncoderConfig = EncoderConfig(),
    kmeans: KMeansConfig = KMeansConfig(),
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

    Args:
        out: Artifact directory to write.
        source: Corpus source (builtin, .jsonl, .parquet, .txt, Wikipedia .xml[.bz2], or a Hub dataset name).
        split: Article-level train/val/test split (paper: 1000 val and 1000 test articles).
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

    articles, stats = read_corpus(source, progress=progress)
    lap("read")

    spans = split_sentences(
        [a.text for a in articles], n_process=sentences.n_process, min_chars=sentences.min_chars,
        max_chars=sentences.max_chars, batch_size=sentences.batch_size, progress=progress,
    )
    # An article without a sentence (all of it shorter than min_chars) has nothing to plan: it counts as empty.
    keep = [i for i, s in enumerate(spans) if s]
    stats.empty_articles += len(articles) - len(keep)
    articles, spans = [articles[i] for i in keep], [spans[i] for i in keep]
    if not articles:
        raise PlanlmError(f"no article of {source.source!r} has a sentence of at least {sentences.min_chars} characters; "
                          "lower --sentences.min_chars or use another corpus")
    lap("sentences")

    article_split = split_articles(len(articles), split)
    counts_per_article = np.array([len(s) for s in spans], dtype=np.int64)
    sentence_article = np.repeat(np.arange(len(articles)), counts_per_article)  # (N,)
    sentence_start = np.array([b for s in spans for b, _ in s], dtype=np.int64)  # (N,)
    sentence_end = np.array([e for s in spans for _, e in s], dtype=np.int64)  # (N,)
    texts = [articles[a].text[b:e] for a, b, e in zip(sentence_article, sentence_start, sentence_end)]
    sentence_split = article_split[sentence_article]  # (N,)
    train_ids = np.flatnonzero(sentence_split == "train")
    k = resolve_num_actions(num_actions, preset, len(train_ids)) if space is None else space.num_actions
    if space is None:
        check_num_actions(k, len(train_ids))  # before the expensive embedding step
    lap("split")

    embeddings = embed_sentences(enc, texts, progress=progress)  # (N, d) float16
    lap("embed")

    if space is not None:
        actions, _ = apply_actions(embeddings, space.centroids, space.path)
        centroids, train_labels, reseeded = space.centroids, actions[train_ids], 0
        # The actions are the source's, so are their exemplars (its sentence ids do not index this corpus).
        examples = [{key: v for key, v in e.items() if key != "sentence_ids"} for e in space.exemplars]
        lap("assign")
    else:
        fit = fit_actions(embeddings[train_ids], k, kmeans, progress=progress)
        centroids, train_labels, reseeded = fit.centroids, fit.train_labels, fit.reseeded
        actions = np.empty(len(texts), dtype=np.int64)
        actions[train_ids] = fit.train_labels
        other = np.flatnonzero(sentence_split != "train")
        if len(other):
            actions[other] = assign(embeddings[other], fit.centroids)[0]  # val/test: nearest centroid, never refitted
        lap("k-means")

        examples = exemplars(fit.train_labels, fit.train_distances, train_ids, [texts[i] for i in train_ids], k,
                             kmeans.num_exemplars)
        lap("exemplars")

    counts = _counts(articles, article_split, sentence_split, k, train_labels, stats, reseeded)
    with atomic_dir(out_dir, force=True) as tmp:
        write_prepared(
            tmp, [a.title for a in articles], [a.text for a in articles], list(article_split), sentence_article,
            sentence_start, sentence_end, embeddings, centroids, actions, examples,
        )
        lap("write")
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


def _own_actions(cfg) -> bool:
    return cfg.actions_from is None


# Everything `planlm prepare` reads (--encoder as used: with --actions_from, the source's encoder). Its fingerprint
# (the manifest's config) decides reuse, with the input corpus's content hash; with --actions_from, the source's
# path and id stand for the k-means settings, which are unused.
PrepareConfig = config_of(prepare, exclude=("out", "force"), fingerprint=Fingerprint(
    ignore=("progress",),
    null_unless={"kmeans": _own_actions, "num_actions": _own_actions, "preset": _own_actions},
    absent_unless={"actions_from": lambda c: not _own_actions(c)},
    record={"actions_from": lambda c: {"path": str(c.actions_from),
                                       "id": read_manifest(c.actions_from, "prepare").get("id")}},
    extra=lambda c: {"input": _input_fingerprint(c.source)},
))


def _counts(articles, article_split, sentence_split, k, train_labels, stats, reseeded) -> dict:
    counts: dict = {}
    for s in SPLITS:
        ids = np.flatnonzero(article_split == s)
        counts[s] = {
            "articles": int(len(ids)),
            "sentences": int((sentence_split == s).sum()),
            "tokens": int(sum(len(articles[i].text.split()) for i in ids)),  # whitespace tokens
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
    pct = lambda a, q: int(np.percentile(a, q)) if len(a) else 0  # noqa: E731
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
