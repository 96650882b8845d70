"""Corpus sources -> ``Article(title, text)`` lists, and the article-level train/val/test split (DESIGN.md section 2).

Sources, chosen by ``SourceConfig.source`` (and ``kind``, "auto" by default):

- ``builtin``: the English Wikipedia sample shipped inside gensim's wheel (DESIGN.md section 4), parsed like a dump.
- a ``.jsonl`` file (also ``.jsonl.gz`` / ``.jsonl.bz2``): one JSON object per line, fields ``title_field`` and
  ``text_field``.
- a ``.parquet`` file: columns ``title_field`` and ``text_field``.
- a ``.txt`` file (one article per blank-line block) or a directory of ``.txt`` files (one article per file).
- a Wikipedia XML dump (``.xml`` or ``.xml.bz2``), streamed; redirects and non-article pages dropped; wikitext turned
  into plain text by :func:`wikitext_to_text`.
- anything else is a Hugging Face Hub dataset name (e.g. ``wikimedia/wikipedia`` with ``hub_config="20231101.en"``),
  streamed with ``datasets.load_dataset(..., streaming=True)``. ``kind="hub"`` forces this for a local dataset
  directory, which is how the code path is tested offline.

Undecodable bytes are replaced by U+FFFD and counted; empty articles are skipped and counted. Neither is fatal: both
end up in :class:`ReadStats` and the prepare summary.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from tqdm.auto import tqdm

from planlm.errors import PlanlmError

BUILTIN = "builtin"
BUILTIN_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
KINDS = ("auto", "builtin", "jsonl", "parquet", "txt", "xml", "hub")


@dataclass
class Article:
    title: str
    text: str


@dataclass
class SourceConfig:
    """Where the articles come from."""

    source: str = BUILTIN
    """"builtin" (the Wikipedia sample in gensim's wheel), a .jsonl[.gz|.bz2] / .parquet / .txt file, a directory of
    .txt files, a Wikipedia .xml[.bz2] dump, or a Hugging Face Hub dataset name (e.g. wikimedia/wikipedia)."""
    kind: str = "auto"
    """"auto" (from the name), or force one of: builtin, jsonl, parquet, txt, xml, hub."""
    title_field: str = "title"
    """Field (jsonl, Hub) or column (parquet) holding the article title."""
    text_field: str = "text"
    """Field (jsonl, Hub) or column (parquet) holding the article text."""
    hub_config: str | None = None
    """Hub dataset configuration, e.g. 20231101.en for wikimedia/wikipedia."""
    hub_split: str = "train"
    """Hub dataset split to stream."""
    max_articles: int | None = None
    """Read at most this many (non-empty) articles; None reads them all."""


@dataclass
class SplitConfig:
    """The article-level train/val/test split. A value below 1 is a fraction of the articles, 1 or more a count."""

    train: int | None = None
    """Train articles: a count, or None for every article in neither val nor test. With a count, `prepare` reads
    only the train + val + test articles it needs (val and test are then counts; paper: 285310, 1000, 1000)."""
    val: float = 0.1
    """Validation articles: a fraction (< 1) or a count (>= 1), capped at max_val."""
    test: float = 0.1
    """Test articles: a fraction (< 1) or a count (>= 1), capped at max_test."""
    max_val: int = 1000
    """Cap on validation articles (the paper uses 1000 validation articles)."""
    max_test: int = 1000
    """Cap on test articles (the paper uses 1000 test articles)."""
    seed: int = 0
    """Seed of the article shuffle that decides the split."""


@dataclass
class ReadStats:
    """What reading a corpus skipped or repaired (reported, never fatal)."""

    articles: int = 0
    empty_articles: int = 0
    undecodable_bytes: int = 0
    skipped_pages: int = 0  # redirects and non-article namespaces of XML dumps
    extra: dict = field(default_factory=dict)


# ---- decoding that counts what it could not decode -------------------------------------------------------------
_UNDECODABLE = [0]


def _count_and_replace(err: UnicodeDecodeError) -> tuple[str, int]:
    _UNDECODABLE[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error("planlm_count", _count_and_replace)


def _decode(raw: bytes, stats: ReadStats) -> str:
    before = _UNDECODABLE[0]
    text = raw.decode("utf-8", errors="planlm_count")
    stats.undecodable_bytes += _UNDECODABLE[0] - before
    return text


class _CountingTextReader:
    """A binary stream read as UTF-8 text, with undecodable bytes replaced and counted (for ElementTree.iterparse)."""

    def __init__(self, raw: IO[bytes], stats: ReadStats):
        self.raw, self.stats, self.eof = raw, stats, False
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="planlm_count")

    def read(self, size: int = -1) -> str:
        """Up to ``size`` bytes, decoded: "" also before the end when they end inside a character (see ``eof``)."""
        before = _UNDECODABLE[0]
        chunk = self.raw.read(size)
        self.eof = not chunk
        text = self.decoder.decode(chunk, final=self.eof)
        self.stats.undecodable_bytes += _UNDECODABLE[0] - before
        return text


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    return open(path, "rb")


# ---- wikitext ----------------------------------------------------------------------------------------------------
# Reference-like sections carry lists of links, not prose; they are dropped with their content.
_BOILERPLATE_RE = re.compile(
    r"^\s*(references|notes|footnotes|citations|sources|bibliography|see also|external links|further reading"
    r"|notes and references|works cited|external links and references)\s*$",
    re.IGNORECASE,
)
_DROPPED_TAGS = {"ref", "references", "table", "math", "gallery", "imagemap", "timeline", "score", "chem", "ce",
                 "syntaxhighlight", "source", "pre", "hiero", "graph", "mapframe", "templatedata"}
_DROPPED_LINK_NAMESPACES = re.compile(r"^\s*:?\s*(file|image|media|category|[a-z]{2,3}(-[a-z]+)?)\s*:", re.IGNORECASE)
_HEADING = "\x01"  # marks a heading line inside wikitext_to_text; levels are 1..6
_EMPTY_PARENS = re.compile(r"\s*\(\s*[,;:]*\s*\)")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
# Markup mwparserfromhell leaves as text when the wikitext around it is broken (an unclosed '' or {{).
_LEFTOVER_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?(</ref>|$)", re.IGNORECASE)
_LEFTOVER_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?>")
_LEFTOVER_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_LEFTOVER_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]")
_SPACES = re.compile(r"[ \t\u00a0]+")


def wikitext_to_text(wikitext: str) -> str:
    """Wikitext -> plain article text with mwparserfromhell.

    Templates, references, tables, math, files/images, categories, interlanguage links, comments and the
    reference-like level-2 sections (References, See also, External links, ...) are removed; links become their
    text; section headings are kept, each on its own line; paragraphs and list items are one line each.
    """
    import mwparserfromhell as mw

    lines = []
    skipping = False  # inside a reference-like level-2 section
    in_table = False  # inside a table mwparserfromhell could not parse (broken attributes), left as text
    for line in _plain(mw.parse(wikitext).nodes).split("\n"):
        if line.startswith(_HEADING):
            level, line = int(line[1]), line[2:]
            if level <= 2:
                skipping = level == 2 and bool(_BOILERPLATE_RE.match(line))
        stripped = line.lstrip()
        if stripped.startswith("{|"):
            in_table = True
        if skipping or in_table or stripped.startswith(("|", "!")) or "|thumb" in line:
            in_table = in_table and not stripped.startswith("|}")
            continue
        line = _LEFTOVER_TAG.sub("", _LEFTOVER_REF.sub("", line))
        line = _LEFTOVER_LINK.sub(r"\1", _LEFTOVER_TEMPLATE.sub("", line))
        line = _SPACES.sub(" ", line.replace("'''", "").replace("''", ""))
        line = _EMPTY_PARENS.sub("", line)
        line = _SPACE_BEFORE_PUNCT.sub(r"\1", line).strip()
        if line and any(ch.isalnum() for ch in line):
            lines.append(line)
    return "\n".join(lines)


def _plain(nodes) -> str:
    """One linear walk over the parse tree (removing nodes one by one with ``Wikicode.remove`` is quadratic).

    Headings come out as their own line, prefixed by ``_HEADING`` and their level, so that
    :func:`wikitext_to_text` can drop reference-like sections even when a stray ``''`` nests a heading in a tag.
    """
    from mwparserfromhell import nodes as N

    out: list[str] = []
    for node in nodes:
        if isinstance(node, N.Text):
            out.append(node.value)
        elif isinstance(node, N.Heading):
            out.append(f"\n{_HEADING}{node.level}{_plain(node.title.nodes).strip()}\n")
        elif isinstance(node, N.Wikilink):
            if not _DROPPED_LINK_NAMESPACES.match(str(node.title)):
                out.append(_plain(node.text.nodes) if node.text is not None else _plain(node.title.nodes))
        elif isinstance(node, N.ExternalLink):
            out.append(_plain(node.title.nodes) if node.title is not None else "")
        elif isinstance(node, N.Tag):
            tag = str(node.tag).strip().lower()
            if tag in ("br", "p", "hr"):
                out.append("\n")
            elif tag not in _DROPPED_TAGS and node.contents is not None:
                out.append(_plain(node.contents.nodes))
        elif isinstance(node, N.HTMLEntity):
            out.append(node.normalize())
        # Templates, comments, arguments: dropped.
    return "".join(out)


def iter_wiki_xml(path: Path, stats: ReadStats) -> Iterator[Article]:
    """Stream a MediaWiki XML dump: main-namespace pages that are not redirects, wikitext parsed to plain text."""
    with _open_binary(path) as raw:
        root = None
        for event, elem in ET.iterparse(_CountingTextReader(raw, stats), events=("start", "end")):
            if root is None:
                root = elem  # <mediawiki>: its finished pages are dropped, so a whole dump never accumulates
            if event == "start" or (not elem.tag.endswith("}page") and elem.tag != "page"):
                continue
            # "{*}" matches a tag in any namespace or none (dumps carry the export-0.x namespace).
            ns = elem.findtext("{*}ns") or "0"
            if ns.strip() != "0" or elem.find("{*}redirect") is not None:
                stats.skipped_pages += 1
            else:
                title = elem.findtext("{*}title") or ""
                wikitext = elem.findtext("{*}revision/{*}text") or ""
                if wikitext.lstrip().upper().startswith("#REDIRECT"):
                    stats.skipped_pages += 1
                else:
                    yield Article(title, wikitext_to_text(wikitext))
            elem.clear()
            root.clear()


# ---- other sources -----------------------------------------------------------------------------------------------
def iter_jsonl(path: Path, title_field: str, text_field: str, stats: ReadStats) -> Iterator[Article]:
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, stats).strip()
            if lineno == 1:
                line = line.removeprefix("\ufeff").strip()  # a UTF-8 byte order mark (utf-8-sig): not content
                if line.startswith("["):
                    raise PlanlmError(f"{path} holds a JSON array, not JSON Lines; planlm reads JSON Lines (one object "
                                      f"per line: {{\"{text_field}\": ...}}): convert it, e.g. `jq -c '.[]' {path}`")
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PlanlmError(f"{path} line {lineno} is not JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(obj, dict):
                raise PlanlmError(f"{path} line {lineno} is not a JSON object; each line must be {{\"{text_field}\": ...}}")
            yield _from_record(obj, title_field, text_field, f"{path} line {lineno}", default_title=f"{path.stem}:{lineno}")


def _from_record(obj: dict, title_field: str, text_field: str, where: str, default_title: str) -> Article:
    if text_field not in obj:
        raise PlanlmError(
            f"{where} has no text field {text_field!r} (fields: {', '.join(map(str, obj)) or 'none'}); "
            f"pass --source.text_field NAME"
        )
    text = obj[text_field]
    title = obj.get(title_field)
    # A number or an object is no article: refuse it rather than store its Python repr as text.
    if text is not None and not isinstance(text, str):
        raise PlanlmError(f"{where}: field {text_field!r} is a {type(text).__name__}, not a string; "
                          "fix the corpus or pass the right --source.text_field")
    if title is not None and not isinstance(title, (str, int)):
        raise PlanlmError(f"{where}: field {title_field!r} is a {type(title).__name__}, not a string; "
                          "fix the corpus or pass the right --source.title_field")
    return Article(str(title) if title is not None else default_title, "" if text is None else text)


def iter_parquet(path: Path, title_field: str, text_field: str, stats: ReadStats,
                 batch_size: int = 1024) -> Iterator[Article]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise PlanlmError(f"{path} has no text column {text_field!r} (columns: {', '.join(names)}); pass --source.text_field NAME")
    kind = pf.schema_arrow.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_null(kind)):
        raise PlanlmError(f"{path}: column {text_field!r} holds {kind}, not text; pass the right --source.text_field")
    columns = [text_field] + ([title_field] if title_field in names else [])
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=columns):  # a batch's texts at a time
        d = batch.to_pydict()
        titles = d.get(title_field, [None] * batch.num_rows)
        for title, text in zip(titles, d[text_field]):
            row += 1
            if isinstance(text, bytes):
                text = _decode(text, stats)
            yield Article(str(title) if title is not None else f"{path.stem}:{row}", "" if text is None else str(text))


def iter_txt(path: Path, stats: ReadStats) -> Iterator[Article]:
    """A directory: one article per ``.txt`` file (sorted by name). A file: one article per blank-line block."""
    if path.is_dir():
        for p in sorted(path.rglob("*.txt")):
            yield Article(p.stem, _decode(p.read_bytes(), stats).removeprefix("\ufeff").strip())
        return
    for i, block in enumerate(_blank_line_blocks(path, stats), 1):
        yield Article(f"{path.stem}:{i}", block.strip())


_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def _blank_line_blocks(path: Path, stats: ReadStats, chunk: int = 1 << 20) -> Iterator[str]:
    """The blocks between blank lines of a text file, read ``chunk`` bytes at a time, exactly as splitting the
    whole text (byte order mark dropped, CRLF read as LF) at ``\\n[ \\t]*\\n`` gives them: a separator holds one
    blank line, so every one found in the text read so far is final and only the unfinished last block is carried."""
    with _open_binary(path) as raw:
        reader = _CountingTextReader(raw, stats)
        tail, held, first = "", "", True  # held: a CR ending one read, whose LF may start the next
        while not reader.eof:
            text = held + reader.read(chunk)
            if first and text:
                text, first = text.removeprefix("\ufeff"), False
            held = "\r" if not reader.eof and text.endswith("\r") else ""
            parts = _BLANK_LINE.split(tail + text[: len(text) - len(held)].replace("\r\n", "\n"))
            tail = "" if reader.eof else parts.pop()
            yield from parts


def iter_hub(cfg: SourceConfig, stats: ReadStats) -> Iterator[Article]:
    """Stream a Hugging Face datasets dataset (a Hub name, or a local dataset directory/builder) record by record."""
    import datasets

    try:
        ds = datasets.load_dataset(cfg.source, cfg.hub_config, split=cfg.hub_split, streaming=True)
    except Exception as e:  # noqa: BLE001  datasets raises many types (FileNotFoundError, ConnectionError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PlanlmError(
            f"cannot load dataset {cfg.source!r} (config {cfg.hub_config!r}, split {cfg.hub_split!r}): {first[:200]}; "
            "check the name, or use a local file when offline"
        ) from None
    for i, obj in enumerate(ds, 1):
        yield _from_record(dict(obj), cfg.title_field, cfg.text_field, f"{cfg.source} record {i}", f"{cfg.source}:{i}")


# ---- dispatch ----------------------------------------------------------------------------------------------------
def builtin_path() -> Path:
    """The Wikipedia sample inside gensim's wheel (works offline)."""
    import gensim

    return Path(gensim.__file__).parent / BUILTIN_FILE


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or bool(
        re.search(r"\.(jsonl|json|parquet|txt|xml)(\.(gz|bz2))?$|\.(bz2|gz)$", source)
    )


def source_kind(cfg: SourceConfig) -> str:
    """The source kind of ``cfg`` ("builtin", "jsonl", "parquet", "txt", "xml" or "hub")."""
    if cfg.kind != "auto":
        return cfg.kind
    if cfg.source == BUILTIN:
        return "builtin"
    name = cfg.source.lower()
    p = Path(os.path.expanduser(cfg.source))
    if p.is_dir():
        return "txt"
    for suffix, kind in ((".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet"), (".txt", "txt"), (".xml", "xml")):
        if name.endswith((suffix, suffix + ".gz", suffix + ".bz2")):
            return kind
    return "hub" if not _looks_like_path(cfg.source) else "unknown"


def source_path(cfg: SourceConfig) -> Path | None:
    """The local file or directory a source reads (None for a Hub dataset)."""
    kind = source_kind(cfg)
    if kind == "builtin":
        return builtin_path()
    if kind == "hub":
        p = Path(os.path.expanduser(cfg.source))
        return p if p.exists() else None
    return Path(os.path.expanduser(cfg.source))


def source_problems(cfg: SourceConfig) -> list[str]:
    """Every problem with a source config (empty list when it can be read)."""
    problems = []
    if cfg.kind not in KINDS:
        problems.append(f"unknown source kind {cfg.kind!r}; use one of {', '.join(KINDS)}")
        return problems
    kind = source_kind(cfg)
    if kind == "unknown":
        problems.append(
            f"cannot tell the format of {cfg.source!r} (not .jsonl, .parquet, .txt, .xml[.bz2]); pass --source.kind"
        )
    path = source_path(cfg) if kind != "unknown" else Path(cfg.source)
    if kind not in ("hub",) and path is not None and not path.exists():
        problems.append(f"corpus path {cfg.source} does not exist; pass an existing file or directory, or --source.source builtin")
    if cfg.max_articles is not None and cfg.max_articles < 1:
        problems.append(f"max_articles must be >= 1 (got {cfg.max_articles}); leave it unset to read every article")
    if not cfg.text_field:
        problems.append("text_field is empty; name the field that holds the article text")
    return problems


def iter_articles(cfg: SourceConfig, stats: ReadStats) -> Iterator[Article]:
    """All articles of a source, empty ones included (see :func:`read_corpus`)."""
    kind = source_kind(cfg)
    path = source_path(cfg)
    readers: dict[str, Callable[[], Iterator[Article]]] = {
        "builtin": lambda: iter_wiki_xml(path, stats),
        "xml": lambda: iter_wiki_xml(path, stats),
        "jsonl": lambda: iter_jsonl(path, cfg.title_field, cfg.text_field, stats),
        "parquet": lambda: iter_parquet(path, cfg.title_field, cfg.text_field, stats),
        "txt": lambda: iter_txt(path, stats),
        "hub": lambda: iter_hub(cfg, stats),
    }
    if kind not in readers:
        raise PlanlmError(f"cannot read source {cfg.source!r} of kind {kind!r}; pass --source.kind")
    return readers[kind]() if kind == "hub" else _refusing_damaged(readers[kind](), path, kind)


_WHAT = {"parquet": "a Parquet file", "xml": "a complete XML dump", "builtin": "a complete XML dump",
         "jsonl": "a JSON Lines file", "txt": "a text file"}


def _refusing_damaged(articles: Iterator[Article], path: Path, kind: str) -> Iterator[Article]:
    """``articles``, with a file that is not what its name says (random bytes named .parquet, plain text named
    .gz, a truncated dump) refused in one line naming it, instead of the reader library's traceback."""
    import zlib

    try:
        yield from articles
    except PlanlmError:
        raise
    except ET.ParseError as e:
        raise PlanlmError(f"{path} is not {_WHAT[kind]} (XML parse error: {e}; truncated or not XML); pass a whole "
                          "Wikipedia .xml[.bz2] dump") from None
    except (EOFError, zlib.error, OSError) as e:
        compressed = {".gz": "gzip", ".bz2": "bzip2"}.get(path.suffix)
        msg = " ".join(str(e).split())[:120] or type(e).__name__
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise PlanlmError(f"cannot read {path} ({msg}); pass a readable corpus file") from None
        if compressed and not _is_arrow_error(e):
            raise PlanlmError(f"{path} is not a valid {compressed} file ({msg}): not {compressed}-compressed or "
                              f"truncated; compress it with {compressed}, or drop {path.suffix} from its name") from None
        raise PlanlmError(f"{path} is not {_WHAT[kind]} ({msg}); check the file, or pass --source.kind for "
                          "its real format") from None
    except Exception as e:
        if not _is_arrow_error(e):
            raise
        msg = " ".join(str(e).split())[:120]
        raise PlanlmError(f"{path} is not {_WHAT[kind]} ({msg}); check the file, or pass --source.kind for "
                          "its real format") from None


def _is_arrow_error(e: BaseException) -> bool:
    return type(e).__module__.startswith("pyarrow")


def iter_corpus(cfg: SourceConfig, stats: ReadStats, progress: bool = True) -> Iterator[Article]:
    """Stream the non-empty articles of a source (at most ``max_articles``; line endings normalised, text stripped),
    counting what was skipped in ``stats``. Nothing is held: one article at a time.

    Raises:
        PlanlmError: the source does not exist, a record is malformed, or the source has no non-empty article.
    """
    from planlm.errors import raise_if_problems

    raise_if_problems(source_problems(cfg), "source")
    n = 0
    with tqdm(desc="read articles", unit=" art", disable=not progress, total=cfg.max_articles) as bar:
        for art in iter_articles(cfg, stats):
            text = art.text.replace("\r\n", "\n").strip()
            if not text:
                stats.empty_articles += 1
                continue
            n += 1
            bar.update()
            yield Article(art.title, text)
            if cfg.max_articles is not None and n >= cfg.max_articles:
                return
    if not n:
        raise PlanlmError(
            f"corpus {cfg.source!r} has no non-empty article ({stats.empty_articles} empty, "
            f"{stats.skipped_pages} skipped pages); point --source.source at a corpus with text"
        )


def read_corpus(cfg: SourceConfig, progress: bool = True) -> tuple[list[Article], ReadStats]:
    """Read the non-empty articles of a source (at most ``max_articles``) into a list, with what was skipped
    (:func:`iter_corpus`, whose errors it raises). `planlm prepare` streams instead."""
    stats = ReadStats()
    articles = list(iter_corpus(cfg, stats, progress))
    stats.articles = len(articles)
    return articles, stats


# ---- split -------------------------------------------------------------------------------------------------------
def _split_size(value: float, cap: int, n: int) -> int:
    size = round(value * n) if value < 1 else int(value)
    if 0 < value < 1:
        size = max(1, size)  # a requested fraction never rounds a split away
    return min(size, cap)


def split_problems(cfg: SplitConfig) -> list[str]:
    problems = []
    for name in ("val", "test"):
        v = getattr(cfg, name)
        if v < 0 or (v >= 1 and v != int(v)):
            problems.append(f"split.{name}={v} must be a fraction in [0, 1) or a whole count >= 1")
        elif cfg.train is not None and 0 < v < 1:
            problems.append(f"split.{name}={v} is a fraction, but with split.train set the split is counts: give "
                            f"--split.{name} a count (the paper: --split.train 285310 --split.val 1000 "
                            "--split.test 1000)")
        if getattr(cfg, f"max_{name}") < 0:
            problems.append(f"split.max_{name} must be >= 0")
    if cfg.train is not None and (isinstance(cfg.train, bool) or cfg.train != int(cfg.train) or cfg.train < 1):
        problems.append(f"split.train={cfg.train} must be a count >= 1, or unset for every other article")
    if 0 < cfg.val < 1 and 0 < cfg.test < 1 and cfg.val + cfg.test >= 1:
        problems.append(f"split.val + split.test = {cfg.val + cfg.test} leaves no train articles; make them smaller")
    return problems


def articles_needed(cfg: SplitConfig) -> int | None:
    """How many articles the split takes with ``train`` set (train + val + test, val and test counts as capped);
    None when train is the rest (the split takes every article read)."""
    if cfg.train is None:
        return None
    return int(cfg.train) + min(int(cfg.val), cfg.max_val) + min(int(cfg.test), cfg.max_test)


def split_articles(n_articles: int, cfg: SplitConfig) -> np.ndarray:
    """Assign each of ``n_articles`` to "train" / "val" / "test": a seeded shuffle, then test, val, rest train.

    Deterministic in (n_articles, cfg); it needs the number of articles only, never their texts (so `prepare`
    decides it after one streamed pass). Fractions are capped at ``max_val`` / ``max_test`` (paper: 1000 each),
    so the default (0.1, capped at 1000) is the paper's split on Wikipedia and still non-empty on a 100-article
    corpus. With ``train`` set the corpus must have exactly :func:`articles_needed` articles (`prepare` reads no
    more).

    Returns:
        ``(n_articles,)`` array of split names, in article order.
    """
    n_test = _split_size(cfg.test, cfg.max_test, n_articles)
    n_val = _split_size(cfg.val, cfg.max_val, n_articles)
    needed = articles_needed(cfg)
    if needed is not None and n_articles != needed:
        raise PlanlmError(
            f"the corpus has {n_articles} articles with a sentence but the split asks for {cfg.train} train + "
            f"{n_val} val + {n_test} test = {needed}; read a larger corpus or lower --split.train"
        )
    if n_test + n_val >= n_articles:
        raise PlanlmError(
            f"the corpus has {n_articles} articles but the split asks for {n_val} val + {n_test} test, leaving no "
            "train article; read more articles or lower --split.val / --split.test"
        )
    order = np.random.default_rng(cfg.seed).permutation(n_articles)
    splits = np.full(n_articles, "train", dtype=object)
    splits[order[:n_test]] = "test"
    splits[order[n_test : n_test + n_val]] = "val"
    return splits.astype(str)
