"""Corpus sources, the article split and sentence splitting, on small real slices (builtin Wikipedia, files in tmp_path)."""

import bz2
import gzip
import json

import numpy as np
import pytest

from planlm.data.corpus import (
    SourceConfig, SplitConfig, read_corpus, source_kind, split_articles, source_problems, wikitext_to_text,
)
from planlm.data.sentences import split_sentences
from planlm.errors import PlanlmError

WIKITEXT = """{{Infobox person|name=Ada}}
'''Ada Lovelace''' was an [[England|English]] mathematician.<ref>Smith 2001, p. 3</ref> She wrote the first program.
[[File:Ada.jpg|thumb|A portrait of Ada]]
== Early life ==
She was born in [[London]] in 1815 {{citation needed}}.
{| class="wikitable"
| cell one || cell two
|}
<!-- a hidden comment -->
== References ==
* Smith, J. ''A Life''. 2001.
== External links ==
* [http://example.org Official site]
[[Category:Mathematicians]]
[[de:Ada Lovelace]]
"""

XML = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
  <page><title>Ada Lovelace</title><ns>0</ns><id>1</id>
    <revision><text xml:space="preserve">{text}</text></revision></page>
  <page><title>Lovelace</title><ns>0</ns><id>2</id><redirect title="Ada Lovelace" />
    <revision><text xml:space="preserve">#REDIRECT [[Ada Lovelace]]</text></revision></page>
  <page><title>Talk:Ada Lovelace</title><ns>1</ns><id>3</id>
    <revision><text xml:space="preserve">Some talk.</text></revision></page>
  <page><title>Charles Babbage</title><ns>0</ns><id>4</id>
    <revision><text xml:space="preserve">'''Charles Babbage''' was a polymath. He designed engines.</text></revision></page>
</mediawiki>
"""


def _xml() -> str:
    from xml.sax.saxutils import escape

    return XML.format(text=escape(WIKITEXT))


# ---- wikitext and XML ------------------------------------------------------------------------------------------
def test_wikitext_to_text_removes_markup_and_keeps_headings():
    text = wikitext_to_text(WIKITEXT)
    lines = text.split("\n")
    assert lines[0] == "Ada Lovelace was an English mathematician. She wrote the first program."
    assert "Early life" in lines  # a heading is its own line
    assert "She was born in London in 1815." in lines  # template removed, no space left before the period
    for gone in ("Infobox", "Smith", "portrait", "cell one", "hidden", "Category", "Mathematicians", "Official site",
                 "References", "de:", "{{", "[[", "<ref", "'''"):
        assert gone not in text, gone


@pytest.mark.parametrize("suffix", [".xml", ".xml.bz2"])
def test_xml_dump_source(tmp_path, suffix):
    path = tmp_path / f"dump{suffix}"
    data = _xml().encode()
    path.write_bytes(bz2.compress(data) if suffix.endswith(".bz2") else data)
    articles, stats = read_corpus(SourceConfig(source=str(path)), progress=False)
    assert [a.title for a in articles] == ["Ada Lovelace", "Charles Babbage"]
    assert stats.skipped_pages == 2  # the redirect and the talk page
    assert articles[1].text == "Charles Babbage was a polymath. He designed engines."


def test_builtin_source_slice():
    articles, stats = read_corpus(SourceConfig(max_articles=3), progress=False)
    assert len(articles) == 3 and stats.articles == 3
    assert articles[0].title == "Anarchism"
    assert stats.skipped_pages >= 1  # the dump starts with a redirect (AccessibleComputing)
    text = articles[0].text
    assert "Etymology and terminology" in text.split("\n")  # a section heading on its own line
    assert text.startswith("Anarchism is a political philosophy")
    for gone in ("{{", "}}", "[[", "<ref", "Category:", "thumb|"):
        assert gone not in text, gone


# ---- line-based and columnar files -----------------------------------------------------------------------------
def test_jsonl_source_fields_gz_and_counts(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    lines = [
        json.dumps({"name": "A", "body": "First article. It has two sentences."}),
        json.dumps({"name": "B", "body": "   "}),  # empty: counted, skipped
        "",  # blank line: ignored
        b'{"name": "C", "body": "Bad byte \xff here."}',
    ]
    raw = b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n"
    path.write_bytes(gzip.compress(raw))
    cfg = SourceConfig(source=str(path), title_field="name", text_field="body")
    articles, stats = read_corpus(cfg, progress=False)
    assert [a.title for a in articles] == ["A", "C"]
    assert articles[1].text == "Bad byte \ufffd here."
    assert stats.empty_articles == 1 and stats.undecodable_bytes == 1


def test_jsonl_bad_line_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"title": "A", "text": "ok."}\n{"title": "B", "text": \n')
    with pytest.raises(PlanlmError, match="line 2 is not JSON"):
        read_corpus(SourceConfig(source=str(path)), progress=False)


def test_jsonl_missing_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"title": "A", "body": "ok."}\n')
    with pytest.raises(PlanlmError, match="no text field 'text'.*--source.text_field"):
        read_corpus(SourceConfig(source=str(path)), progress=False)


def test_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"heading": ["A", "B", "C"], "content": ["One. Two.", "", "Three."]}), path)
    articles, stats = read_corpus(SourceConfig(source=str(path), title_field="heading", text_field="content"), progress=False)
    assert [(a.title, a.text) for a in articles] == [("A", "One. Two."), ("C", "Three.")]
    assert stats.empty_articles == 1
    with pytest.raises(PlanlmError, match="no text column 'text'"):
        read_corpus(SourceConfig(source=str(path)), progress=False)


def test_txt_sources(tmp_path):
    block_file = tmp_path / "blocks.txt"
    block_file.write_text("First article.\nStill first.\n\n  \nSecond article.\n\n\n")
    articles, _ = read_corpus(SourceConfig(source=str(block_file)), progress=False)
    assert [a.text for a in articles] == ["First article.\nStill first.", "Second article."]
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_text("Bee article.\n\nWith a paragraph.")
    (folder / "a.txt").write_bytes(b"Ay article \xfe.")
    articles, stats = read_corpus(SourceConfig(source=str(folder)), progress=False)
    assert [a.title for a in articles] == ["a", "b"]  # one article per file, sorted
    assert articles[1].text == "Bee article.\n\nWith a paragraph."
    assert stats.undecodable_bytes == 1


def test_hub_code_path_on_a_local_dataset(tmp_path):
    # The same datasets.load_dataset(..., streaming=True) call a Hub name takes, on a local dataset directory.
    folder = tmp_path / "hub_like"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"title": f"T{i}", "text": f"Text {i}."}) + "\n" for i in range(5)))
    cfg = SourceConfig(source=str(folder), kind="hub", max_articles=3)
    articles, _ = read_corpus(cfg, progress=False)
    assert [a.title for a in articles] == ["T0", "T1", "T2"]
    assert source_kind(SourceConfig(source="wikimedia/wikipedia")) == "hub"


def test_unloadable_hub_dataset_is_one_line_error(tmp_path):
    with pytest.raises(PlanlmError, match="cannot load dataset") as e:
        read_corpus(SourceConfig(source=str(tmp_path / "nothing_here"), kind="hub"), progress=False)
    assert "\n" not in str(e.value)


def test_missing_path_and_empty_corpus(tmp_path):
    problems = source_problems(SourceConfig(source=str(tmp_path / "missing.jsonl")))
    assert len(problems) == 1 and "does not exist" in problems[0]
    with pytest.raises(PlanlmError, match="does not exist"):
        read_corpus(SourceConfig(source=str(tmp_path / "missing.jsonl")), progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"title": "A", "text": ""}\n')
    with pytest.raises(PlanlmError, match="no non-empty article"):
        read_corpus(SourceConfig(source=str(empty)), progress=False)


# ---- split -----------------------------------------------------------------------------------------------------
def test_split_is_deterministic_and_sized():
    a = split_articles(107, SplitConfig())
    assert np.array_equal(a, split_articles(107, SplitConfig()))
    assert not np.array_equal(a, split_articles(107, SplitConfig(seed=1)))
    assert (a == "val").sum() == 11 and (a == "test").sum() == 11 and (a == "train").sum() == 85
    paper = split_articles(50_000, SplitConfig())  # fractions capped at the paper's 1000 / 1000
    assert (paper == "val").sum() == 1000 and (paper == "test").sum() == 1000
    counts = split_articles(20, SplitConfig(val=3, test=2))
    assert (counts == "val").sum() == 3 and (counts == "test").sum() == 2
    tiny = split_articles(3, SplitConfig())  # a fraction never rounds a split away
    assert sorted(tiny) == ["test", "train", "val"]
    with pytest.raises(PlanlmError, match="no train article"):
        split_articles(2, SplitConfig())


# ---- sentences -------------------------------------------------------------------------------------------------
def test_sentence_offsets_round_trip_on_builtin():
    articles, _ = read_corpus(SourceConfig(max_articles=2), progress=False)
    texts = [a.text for a in articles]
    spans = split_sentences(texts)
    for text, sp in zip(texts, spans):
        assert len(sp) > 50
        for (s, e), (s2, _) in zip(sp, sp[1:] + [(len(text), 0)]):
            sentence = text[s:e]
            assert sentence == sentence.strip() and "\n" not in sentence and e <= s2
            assert not text[e:s2].strip() or text[e:s2].strip() == ""  # only whitespace between sentences
    sentences = [texts[0][s:e] for s, e in spans[0]]
    assert sentences[0] == "Anarchism is a political philosophy that advocates self-governed societies based on voluntary institutions."
    assert "Etymology and terminology" in sentences  # a heading is a sentence of its own


def test_sentence_length_options():
    text = "Intro\nA short one. " + "word " * 60 + "end.\n\n  Tail sentence here.  "
    (spans,) = split_sentences([text], min_chars=6)
    sentences = [text[s:e] for s, e in spans]
    assert "Intro" not in sentences and sentences[0] == "A short one."  # "Intro" (5 chars) dropped
    assert sentences[-1] == "Tail sentence here."
    (cut,) = split_sentences([text], max_chars=50)
    pieces = [text[s:e] for s, e in cut]
    assert max(map(len, pieces)) <= 50 and all(p == p.strip() and p for p in pieces)
    assert " ".join(pieces[2:-1]).split() == ("word " * 60 + "end.").split()  # cut at whitespace, nothing lost
    assert split_sentences([""]) == [[]]
    with pytest.raises(PlanlmError):
        split_sentences([text], max_chars=0)


def test_sentences_parallel_equals_serial():
    texts = [f"Article {i} starts. It goes on for a while!\nHeading {i}\nDone? Yes." for i in range(6)]
    assert split_sentences(texts, n_process=2, batch_size=2) == split_sentences(texts, n_process=1)
