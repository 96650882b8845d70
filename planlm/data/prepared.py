"""The prepared-corpus artifact (output of `planlm prepare`): its file layout, a writer and a loader.

Layout of a prepared directory::

    manifest.json        stage "prepare"; config; counts; extra keys: encoder, embedding_dim, num_actions
    articles.parquet     article_id (dense 0..A-1), title, split ("train" | "val" | "test"), text
    sentences.parquet    sentence_id (dense 0..N-1, = row), article_id, position (index in article),
                         start, end (character offsets: text[start:end] is the sentence), action (oracle action id)
    embeddings.npy       float16 (N, d_encoder), row i = sentence i
    centroids.npy        float32 (K, d_encoder), the k-means centroids (initialise policy head and adapters)
    exemplars.json       [{"action": a, "size": n, "exemplars": [sentence, ...]}, ...] nearest to each centroid
    tokens-<hash>/       written later, once per LM tokenizer: the token cache (planlm.data.alignment.TokenCache)

Sentences are sorted by (article_id, position), so an article's sentences are one contiguous row range.

Action space: an action id means "nearest to centroid a of encoder E's embeddings". Two prepared corpora share their
action space when encoder, K and the centroids' content agree (:func:`action_space`): a corpus prepared with
``planlm prepare --actions_from SOURCE`` shares SOURCE's, so a run fine-tuned on SOURCE can be evaluated on it. A
finetune manifest records the action space it was trained on (``action_space``), and :func:`check_action_space`
refuses any other.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from planlm.artifacts import read_manifest, verify_artifact
from planlm.errors import PlanlmError

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(Split)
ARTICLES = "articles.parquet"
SENTENCES = "sentences.parquet"
EMBEDDINGS = "embeddings.npy"
CENTROIDS = "centroids.npy"
EXEMPLARS = "exemplars.json"
ARTICLES_PER_ROW_GROUP = 256  # the unit ArticleTexts reads: small enough that reading one article stays cheap


SENTENCES_PER_ROW_GROUP = 1 << 18  # sentences.parquet is written (and its columns built) this many rows at a time


def write_prepared(
    directory: str | Path,
    titles: list[str],
    texts: list[str],
    splits: list[str],
    sentence_article: np.ndarray,
    sentence_start: np.ndarray,
    sentence_end: np.ndarray,
    embeddings: np.ndarray,
    centroids: np.ndarray,
    actions: np.ndarray,
    exemplars: list[dict],
) -> None:
    """Write the data files of a prepared corpus held in memory into ``directory`` (the manifest is the caller's).
    `planlm prepare` writes the same files as it streams (:class:`ArticleWriter`, :class:`EmbeddingWriter`)."""
    directory = Path(directory)
    with ArticleWriter(directory / ARTICLES) as articles:
        for title, text, split in zip(titles, texts, splits):
            articles.add(title, text, split)
    write_sentences(directory / SENTENCES, sentence_article, sentence_start, sentence_end, actions)
    np.save(directory / EMBEDDINGS, np.asarray(embeddings, dtype=np.float16))
    write_action_space(directory, centroids, exemplars)


def write_action_space(directory: str | Path, centroids: np.ndarray, exemplars: list[dict]) -> None:
    """``centroids.npy`` (float32) and ``exemplars.json`` of a prepared corpus."""
    np.save(Path(directory) / CENTROIDS, np.asarray(centroids, dtype=np.float32))
    (Path(directory) / EXEMPLARS).write_text(json.dumps(exemplars, indent=1) + "\n")


class ArticleWriter:
    """``articles.parquet`` written as articles arrive, one row group of ARTICLES_PER_ROW_GROUP articles at a time
    (the unit :class:`ArticleTexts` reads), with dense article ids. ``split=False`` writes title and text only (a
    spool to be read back before the split is known)."""

    def __init__(self, path: str | Path, split: bool = True):
        import pyarrow as pa

        self.path, self.count = Path(path), 0
        self.columns = ["article_id", "title", *(["split"] if split else []), "text"]
        self.schema = pa.schema([(c, pa.int64() if c == "article_id" else pa.string()) for c in self.columns])
        self._rows: dict[str, list] = {c: [] for c in self.columns}
        self._writer = None

    def add(self, title: str, text: str, split: str | None = None) -> None:
        row = {"article_id": self.count, "title": title, "split": split, "text": text}
        for c in self.columns:
            self._rows[c].append(row[c])
        self.count += 1
        if len(self._rows["text"]) == ARTICLES_PER_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema)
        if self._rows["text"] or self.count == 0:
            self._writer.write_table(pa.table(self._rows, schema=self.schema))
        self._rows = {c: [] for c in self.columns}

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        elif self._writer is not None:
            self._writer.close()


def write_sentences(path: str | Path, sentence_article: np.ndarray, sentence_start: np.ndarray,
                    sentence_end: np.ndarray, actions: np.ndarray) -> None:
    """``sentences.parquet`` from its columns (sorted by article, then start), SENTENCES_PER_ROW_GROUP rows at a
    time: sentence ids are the rows, positions the index of each sentence in its article."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sentence_article = np.asarray(sentence_article, dtype=np.int64)
    a, b = sentence_article, np.asarray(sentence_start)
    if not np.all((a[1:] > a[:-1]) | ((a[1:] == a[:-1]) & (b[1:] >= b[:-1]))):
        raise ValueError("sentences must be sorted by (article, start)")
    n = len(sentence_article)
    schema = pa.schema([("sentence_id", pa.int64()), ("article_id", pa.int64()), ("position", pa.int32()),
                        ("start", pa.int64()), ("end", pa.int64()), ("action", pa.int32())])
    with pq.ParquetWriter(path, schema) as writer:
        for lo in range(0, max(n, 1), SENTENCES_PER_ROW_GROUP):
            hi = min(n, lo + SENTENCES_PER_ROW_GROUP)
            rows = np.arange(lo, hi, dtype=np.int64)
            first = np.searchsorted(sentence_article, sentence_article[lo:hi])  # first row of each row's article
            writer.write_table(pa.table({
                "sentence_id": rows,
                "article_id": sentence_article[lo:hi],
                "position": (rows - first).astype(np.int32),
                "start": np.asarray(sentence_start[lo:hi], dtype=np.int64),
                "end": np.asarray(sentence_end[lo:hi], dtype=np.int64),
                "action": np.asarray(actions[lo:hi], dtype=np.int32),
            }, schema=schema))


class EmbeddingWriter:
    """``embeddings.npy`` (float16 ``(n, dim)``) written chunk by chunk through the file, never mapped, so that the
    rows written do not stay in the writer's memory; the file is what ``np.save`` writes."""

    def __init__(self, path: str | Path, n: int, dim: int):
        self.path, self.n, self.dim, self.written = Path(path), int(n), int(dim), 0
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                  "shape": (self.n, self.dim)}
        with open(self.path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float16)  # (m, dim)
        if rows.ndim != 2 or rows.shape[1] != self.dim or self.written + len(rows) > self.n:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape} do not fit ({self.written} of "
                             f"({self.n}, {self.dim}) written)")
        with open(self.path, "ab") as f:
            f.write(rows.tobytes())
        self.written += len(rows)

    def close(self) -> None:
        if self.written != self.n:
            raise ValueError(f"{self.path.name}: {self.written} rows written of {self.n}")


class EmbeddingRows:
    """Rows ``ids`` (sorted global sentence ids; None = all) of an ``embeddings.npy`` as one matrix to read from:
    ``len``, ``shape`` and indexing by an int, a slice or an index array, each read through a memory map opened
    for that read only, so a pass over millions of rows keeps no page of them (:func:`planlm.data.actions.assign`
    reads chunks of it; k-means reads its samples)."""

    def __init__(self, path: str | Path, ids: np.ndarray | None = None):
        self.path = Path(path)
        self.ids = None if ids is None else np.asarray(ids, dtype=np.int64)
        matrix = np.load(self.path, mmap_mode="r")
        self.shape = (matrix.shape[0] if self.ids is None else len(self.ids), *matrix.shape[1:])
        self.dtype = matrix.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        rows = key if self.ids is None else self.ids[key]
        matrix = np.load(self.path, mmap_mode="r")
        out = np.array(matrix[rows])  # a copy: the map closes when ``matrix`` goes
        del matrix
        return out


class ArticleTexts(Sequence[str]):
    """The article texts of ``articles.parquet``, read on demand one row group at a time (the last group read is
    kept), so that a process holds a few hundred articles, not the corpus: at the paper's 285k articles the texts are
    gigabytes as Python strings. Stages that only need token counts read none once the token cache exists."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = Path(path)
        parquet = pq.ParquetFile(self.path)
        if "text" not in parquet.schema_arrow.names:
            raise KeyError(f"{self.path.name} has no text column")
        meta = parquet.metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._group_start = np.r_[0, np.cumsum(sizes, dtype=np.int64)]  # (G + 1,) first article of each group
        self._file = None
        self._group: tuple[int, list[str]] = (-1, [])

    def __len__(self) -> int:
        return int(self._group_start[-1])

    def _read_group(self, g: int) -> list[str]:
        if self._group[0] != g:
            import pyarrow.parquet as pq

            if self._file is None:
                self._file = pq.ParquetFile(self.path)
            self._group = (g, self._file.read_row_group(g, columns=["text"]).column(0).to_pylist())
        return self._group[1]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = operator.index(index)
        i = i + len(self) if i < 0 else i
        if not 0 <= i < len(self):
            raise IndexError(f"article {index} out of range for {len(self)} articles")
        g = int(np.searchsorted(self._group_start, i, side="right")) - 1
        return self._read_group(g)[i - int(self._group_start[g])]

    def __iter__(self) -> Iterator[str]:
        for g in range(len(self._group_start) - 1):
            yield from self._read_group(g)

    def __getstate__(self) -> dict:  # picklable for spawned workers: the open file is reopened on demand
        return {**self.__dict__, "_file": None, "_group": (-1, [])}


def action_space(encoder: str, centroids: np.ndarray) -> dict:
    """The identity of an action space: ``{"encoder", "num_actions", "centroids"}`` (a content hash of the float32
    centroids and their shape, independent of how the file was written)."""
    c = np.ascontiguousarray(centroids, dtype=np.float32)  # (K, d)
    digest = hashlib.sha256(repr(c.shape).encode() + c.tobytes()).hexdigest()[:16]
    return {"encoder": str(encoder), "num_actions": int(c.shape[0]), "centroids": digest}


def check_action_space(expected: dict, got: dict, given: str | Path, what: str, fix: str) -> None:
    """Refuse, in one line, a prepared corpus ``given`` whose action space ``got`` is not ``expected`` (recorded by
    ``what``): its action ids would mean other sentences than the ones the model was trained on."""
    differ = [f"{k} {got.get(k)!r} (needs {expected.get(k)!r})" for k in ("encoder", "num_actions", "centroids")
              if expected.get(k) != got.get(k)]
    if differ:
        raise PlanlmError(f"{given} has other writing actions than {what}: {', '.join(differ)}; {fix}")


@dataclass
class ActionSpace:
    """The writing actions of a prepared corpus without its text: the encoder, the centroids and their exemplars.
    What `planlm prepare --actions_from` applies to a new corpus (no k-means)."""

    path: Path
    manifest: dict
    centroids: np.ndarray  # (K, d) float32
    exemplars: list[dict]

    @classmethod
    def load(cls, path: str | Path) -> ActionSpace:
        path = Path(path)
        manifest = verify_artifact(path, read_manifest(path, "prepare"))
        if not (path / CENTROIDS).exists():
            raise PlanlmError(f"{path} is missing {CENTROIDS}; rebuild it with `planlm prepare --force true`")
        exemplars = json.loads((path / EXEMPLARS).read_text()) if (path / EXEMPLARS).exists() else []
        return cls(path, manifest, np.load(path / CENTROIDS).astype(np.float32), exemplars)

    @property
    def encoder(self) -> str:
        return str(self.manifest.get("encoder", ""))

    @property
    def num_actions(self) -> int:
        return int(self.centroids.shape[0])


@dataclass
class PreparedCorpus:
    """A loaded prepared corpus. Arrays are indexed by article id or by global sentence id."""

    path: Path
    manifest: dict
    titles: list[str]
    texts: Sequence[str]  # ArticleTexts when loaded (read on demand); any sequence of strings when built in memory
    article_split: np.ndarray  # (A,) str
    sentence_article: np.ndarray  # (N,) int64
    sentence_position: np.ndarray  # (N,) int32
    sentence_start: np.ndarray  # (N,) int64, character offset in the article text
    sentence_end: np.ndarray  # (N,) int64
    actions: np.ndarray  # (N,) int32, oracle action ids
    embeddings: np.ndarray  # (N, d) float16, memory-mapped: read rows, never copy the whole matrix
    centroids: np.ndarray  # (K, d) float32
    article_offsets: np.ndarray = field(init=False)  # (A + 1,): sentences of article a are rows [off[a], off[a+1])

    def __post_init__(self) -> None:
        counts = np.bincount(self.sentence_article, minlength=len(self.texts))
        self.article_offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)

    @classmethod
    def load(cls, path: str | Path) -> PreparedCorpus:
        import pyarrow.parquet as pq

        path = Path(path)
        manifest = read_manifest(path, "prepare")
        for name in (ARTICLES, SENTENCES, EMBEDDINGS, CENTROIDS):
            if not (path / name).exists():
                raise PlanlmError(f"{path} is missing {name}; rebuild it with `planlm prepare --force`")
        verify_artifact(path, manifest)  # recorded content hashes: an edited, truncated or swapped file stops here
        try:
            arts = pq.read_table(path / ARTICLES, columns=["title", "split"]).to_pydict()
            sents = pq.read_table(path / SENTENCES)
            col = lambda name: sents.column(name).to_numpy()
            corpus = cls(
                path=path,
                manifest=manifest,
                titles=list(arts["title"]),
                texts=ArticleTexts(path / ARTICLES),
                article_split=np.asarray(arts["split"]),
                sentence_article=col("article_id").astype(np.int64),
                sentence_position=col("position").astype(np.int32),
                sentence_start=col("start").astype(np.int64),
                sentence_end=col("end").astype(np.int64),
                actions=col("action").astype(np.int32),
                embeddings=np.load(path / EMBEDDINGS, mmap_mode="r"),  # never allow_pickle: data, not code
                centroids=np.load(path / CENTROIDS),
            )
        except (OSError, ValueError, KeyError, EOFError) as e:  # pyarrow's errors are OSError / ValueError too
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise PlanlmError(f"{path} is damaged ({first}); rebuild it with `planlm prepare --force true`") from None
        corpus.check_consistent()
        return corpus

    def check_consistent(self) -> None:
        """Row counts and shapes of the files must agree with each other and with the manifest: a file swapped in
        from another prepared corpus is refused even where no content hash was recorded."""
        n, problems = len(self.sentence_article), []
        if self.embeddings.ndim != 2 or len(self.embeddings) != n:
            problems.append(f"{EMBEDDINGS} has shape {self.embeddings.shape}, {SENTENCES} has {n} sentences")
        if self.centroids.ndim != 2 or self.embeddings.ndim == 2 and self.centroids.shape[1] != self.embeddings.shape[1]:
            problems.append(f"{CENTROIDS} has shape {self.centroids.shape}, {EMBEDDINGS} {self.embeddings.shape}")
        k = self.manifest.get("num_actions")
        if k is not None and self.centroids.ndim == 2 and self.centroids.shape[0] != k:
            problems.append(f"{CENTROIDS} has {self.centroids.shape[0]} actions, the manifest records {k}")
        if n and (self.sentence_article.max() >= len(self.texts) or self.actions.max() >= len(self.centroids)):
            problems.append(f"{SENTENCES} refers to articles or actions that do not exist")
        if len(self.article_split) != len(self.texts):
            problems.append(f"{ARTICLES} columns differ in length")
        if problems:
            raise PlanlmError(f"{self.path} is inconsistent ({'; '.join(problems)}); rebuild it with "
                              "`planlm prepare --force true`")

    # ---- sizes and identity -------------------------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def encoder(self) -> str:
        return str(self.manifest.get("encoder", ""))

    @property
    def id(self) -> str:
        return str(self.manifest.get("id"))

    @property
    def action_space(self) -> dict:
        """Encoder, K and centroid hash (:func:`action_space`): equal for corpora whose action ids mean the same."""
        return action_space(self.encoder, self.centroids)

    # ---- lookups ------------------------------------------------------------------------------------------------
    def article_ids(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise PlanlmError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.article_split == split)

    def sentence_range(self, article_id: int) -> tuple[int, int]:
        """Global sentence ids [lo, hi) of one article."""
        return int(self.article_offsets[article_id]), int(self.article_offsets[article_id + 1])

    def sentence_text(self, sentence_id: int) -> str:
        a = int(self.sentence_article[sentence_id])
        return self.texts[a][int(self.sentence_start[sentence_id]) : int(self.sentence_end[sentence_id])]

    def exemplars(self) -> list[dict]:
        p = self.path / EXEMPLARS
        return json.loads(p.read_text()) if p.exists() else []
