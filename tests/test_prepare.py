"""`planlm prepare` and `planlm actions show` end to end: artifact contents, reuse, encoders, CLI and bad input."""

import json
import os

import numpy as np
import pytest

from helpers import prepare_builtin_slice
from planlm.cli import main
from planlm.data.actions import KMeansConfig
from planlm.data.corpus import SourceConfig, SplitConfig, read_corpus
from planlm.data.encoders import DEFAULT_ENCODER, EncoderConfig, load_encoder
from planlm.data.prepared import PreparedCorpus
from planlm.data.sentences import split_sentences
from planlm.errors import PlanlmError
from planlm.stages.prepare import actions_show, prepare, resolve_num_actions

FAKE = EncoderConfig(name="fake:32")


@pytest.fixture(scope="module")
def builtin_slice(tmp_path_factory):
    """A prepared corpus of the first 12 builtin Wikipedia articles (fake encoder, K=16)."""
    return prepare_builtin_slice(tmp_path_factory.mktemp("prep") / "builtin12")


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---- the artifact ----------------------------------------------------------------------------------------------
def test_artifact_loads_with_offsets_and_embeddings(builtin_slice):
    pc = PreparedCorpus.load(builtin_slice)
    assert len(pc.texts) == 12 and pc.num_actions == 16 and pc.embedding_dim == 32 and pc.encoder == "fake:32"
    assert pc.embeddings.dtype == np.float16 and pc.embeddings.shape == (len(pc.actions), 32)
    for split in ("train", "val", "test"):
        assert len(pc.article_ids(split)) > 0
    # Offsets round trip: the stored text slice is the sentence the splitter found.
    texts = pc.texts
    expected = split_sentences(texts)
    for a, spans in enumerate(expected):
        lo, hi = pc.sentence_range(a)
        assert list(zip(pc.sentence_start[lo:hi], pc.sentence_end[lo:hi])) == spans
    assert pc.sentence_text(0) == texts[0][: int(pc.sentence_end[0])]
    # Identical sentences get identical embeddings (each distinct sentence was encoded once).
    sentences = [pc.sentence_text(i) for i in range(len(pc.actions))]
    first = {}
    for i, s in enumerate(sentences):
        j = first.setdefault(s, i)
        assert np.array_equal(pc.embeddings[i], pc.embeddings[j])
    assert len(first) < len(sentences)  # headings such as "History" repeat across articles


def test_actions_are_nearest_centroids(builtin_slice):
    pc = PreparedCorpus.load(builtin_slice)
    x = np.asarray(pc.embeddings, dtype=np.float64)
    d = ((x[:, None, :] - pc.centroids[None].astype(np.float64)) ** 2).sum(-1)
    nearest = d.argmin(1)
    train = np.isin(pc.sentence_article, pc.article_ids("train"))
    # Exact on train (labels of the final assignment); val/test assigned to the nearest centroid too (ties aside).
    assert np.array_equal(pc.actions[train], nearest[train])
    other = ~train
    assert np.allclose(d[other, pc.actions[other]], d[other].min(1), rtol=1e-4, atol=1e-5)
    assert np.bincount(pc.actions[train], minlength=16).min() > 0  # no empty action


def test_manifest_contents(builtin_slice):
    m = json.loads((builtin_slice / "manifest.json").read_text())
    assert m["stage"] == "prepare" and m["num_actions"] == 16 and m["encoder"] == "fake:32" and m["embedding_dim"] == 32
    assert m["config"]["num_actions"] == 16 and m["config"]["kmeans"]["backend"] == "faiss"
    assert m["config"]["source"]["max_articles"] == 12 and m["config"]["input"].startswith("builtin:")
    assert len(m["inputs"]["corpus"]["sha256"]) == 16
    counts = m["counts"]
    for split in ("train", "val", "test"):
        assert counts[split]["articles"] > 0 and counts[split]["sentences"] > 0 and counts[split]["tokens"] > 0
    assert counts["total"]["articles"] == 12
    assert counts["actions"]["empty"] == 0 and counts["actions"]["num_actions"] == 16
    assert counts["read"]["skipped_pages"] >= 1
    assert {"torch", "numpy", "faiss-cpu", "spacy"} <= set(m["versions"])
    assert {"read", "sentences", "embed", "k-means"} <= set(m["seconds"])
    table = json.loads((builtin_slice / "exemplars.json").read_text())
    assert [row["action"] for row in table] == list(range(16))
    assert sum(row["size"] for row in table) == counts["train"]["sentences"]
    assert all(1 <= len(row["exemplars"]) <= 5 for row in table)


def test_reuse_and_force(tmp_path):
    out = tmp_path / "p"
    kwargs = dict(source=SourceConfig(max_articles=4), encoder=FAKE, num_actions=8, progress=False)
    prepare(out=str(out), **kwargs)
    stamp = os.stat(out / "manifest.json").st_mtime_ns
    assert prepare(out=str(out), **kwargs) == out
    assert os.stat(out / "manifest.json").st_mtime_ns == stamp  # reused, not rebuilt
    prepare(out=str(out), force=True, **kwargs)
    assert os.stat(out / "manifest.json").st_mtime_ns != stamp
    with pytest.raises(PlanlmError, match="--force"):  # another config into the same directory
        prepare(out=str(out), **(kwargs | {"num_actions": 4}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporary directory left behind


def test_sklearn_backend_and_jsonl_source(tmp_path):
    articles, _ = read_corpus(SourceConfig(max_articles=6), progress=False)
    src = _write_jsonl(tmp_path / "c.jsonl", [{"name": a.title, "body": a.text} for a in articles])
    out = prepare(
        out=str(tmp_path / "p"), source=SourceConfig(source=str(src), title_field="name", text_field="body"),
        split=SplitConfig(val=1, test=1), encoder=FAKE, kmeans=KMeansConfig(backend="sklearn"), num_actions=8,
        progress=False,
    )
    pc = PreparedCorpus.load(out)
    assert pc.titles == [a.title for a in articles]
    assert sorted(pc.article_split.tolist()).count("val") == 1
    assert pc.manifest["config"]["input"].startswith("jsonl:")


def test_resolve_num_actions_presets():
    assert resolve_num_actions(None, "paper", 100) == 1024
    assert resolve_num_actions(None, "small", 100_000) == 64
    assert resolve_num_actions(None, "auto", 19_000) == 256  # builtin-sized train split
    assert resolve_num_actions(None, "auto", 5_000_000) == 1024  # Wikipedia: the paper's K
    assert resolve_num_actions(300, "paper", 100) == 300


def test_actions_show(builtin_slice, capsys):
    actions_show(str(builtin_slice), action=3, n=2)
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("action 3  size ") and len(out) == 4
    table = json.loads((builtin_slice / "exemplars.json").read_text())
    assert out[2].strip() == table[3]["exemplars"][0]
    actions_show(str(builtin_slice), n=1)
    assert sum(line.startswith("action ") for line in capsys.readouterr().out.splitlines()) == 16
    with pytest.raises(PlanlmError, match="action 99 does not exist"):
        actions_show(str(builtin_slice), action=99)


# ---- encoders --------------------------------------------------------------------------------------------------
def test_fake_encoder_is_deterministic_and_bag_of_words():
    enc = load_encoder("fake:24")
    v = enc.encode(["The cat sat on the mat.", "the cat sat on a mat", "Stock prices fell sharply.", "The cat sat on the mat."])
    assert v.shape == (4, 24) and v.dtype == np.float32 and enc.dim == 24 and enc.name == "fake:24"
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, rtol=1e-5)
    assert v[0] @ v[1] > 0.6 > v[0] @ v[2]
    assert np.array_equal(v[0], v[3]) and np.array_equal(v, load_encoder("fake:24").encode(
        ["The cat sat on the mat.", "the cat sat on a mat", "Stock prices fell sharply.", "The cat sat on the mat."]))


def test_encoder_embeds_each_distinct_sentence_once():
    enc = load_encoder("fake:8")
    seen = []
    inner = enc._encode_unique
    enc._encode_unique = lambda texts, progress: (seen.append(list(texts)), inner(texts, progress))[1]
    out = enc.encode(["a b", "c", "a b", "c", "d"])
    assert seen == [["a b", "c", "d"]] and out.shape == (5, 8)


def test_encoder_not_found_offline_is_one_line():
    with pytest.raises(PlanlmError, match="cannot be loaded") as e:
        load_encoder("planlm-test/no-such-encoder")
    assert "\n" not in str(e.value)
    with pytest.raises(PlanlmError, match="does not exist"):
        load_encoder("/no/such/encoder_dir")


def test_real_default_encoder_through_prepare(tmp_path):
    # The one test with the real (packaged, offline) MiniLM: ~300 real sentences through the whole stage.
    articles, _ = read_corpus(SourceConfig(max_articles=1), progress=False)
    (spans,) = split_sentences([articles[0].text])
    sentences = [articles[0].text[s:e] for s, e in spans][:300]
    src = _write_jsonl(tmp_path / "c.jsonl", [{"title": f"part {i}", "text": " ".join(sentences[i::10])} for i in range(10)])
    out = prepare(out=str(tmp_path / "p"), source=SourceConfig(source=str(src)), num_actions=8, progress=False)
    pc = PreparedCorpus.load(out)
    assert pc.encoder == DEFAULT_ENCODER and pc.embedding_dim == 384 and len(pc.actions) >= 250
    norms = np.linalg.norm(np.asarray(pc.embeddings, dtype=np.float32), axis=1)
    np.testing.assert_allclose(norms, 1, atol=2e-3)  # MiniLM's normalised embeddings, stored float16
    enc = load_encoder(DEFAULT_ENCODER)
    v = enc.encode(["Anarchism is a political philosophy.", "Anarchism is a philosophy of politics.", "Alabama is a state."])
    assert v[0] @ v[1] > v[0] @ v[2]


# ---- CLI and bad input -----------------------------------------------------------------------------------------
def test_cli_help(capsys):
    for argv in (["prepare", "--help"], ["actions", "show", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--num_actions" in out and "--source.source" in out and "--kmeans.backend" in out and "--action" in out


def test_cli_prepare_and_show(tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["prepare", "--out", str(out), "--source.max_articles", "4", "--encoder.name", "fake:16",
            "--num_actions", "4", "--progress", "false"]
    assert main(argv) == 0
    assert "planlm prepare: wrote" in capsys.readouterr().out
    assert main(["actions", "show", str(out), "--action", "1", "--n", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("action 1  size ")


def _bad_inputs(tmp_path):
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"title": "A", "text": "Fine."}\n{"title": "B", "text": "Fine."}\nnot json\n')
    no_text = _write_jsonl(tmp_path / "notext.jsonl", [{"title": "A", "body": "Fine."}])
    empty = _write_jsonl(tmp_path / "empty.jsonl", [{"title": "A", "text": "  "}])
    small = _write_jsonl(tmp_path / "small.jsonl", [{"title": f"A{i}", "text": f"Sentence {i}. Another one {i}."} for i in range(10)])
    fake = ["--encoder.name", "fake:8"]
    return [
        (["--source.source", str(tmp_path / "missing.jsonl")] + fake, "does not exist"),
        (["--source.source", str(empty)] + fake, "no non-empty article"),
        (["--source.source", str(bad_line)] + fake, "line 3 is not JSON"),
        (["--source.source", str(no_text)] + fake, "no text field 'text'"),
        (["--source.source", str(small), "--num_actions", "64"] + fake, r"larger than the 16 train sentences; use --num_actions 2"),
        (["--source.source", str(small), "--encoder.name", "planlm-test/no-such-encoder"], "cannot be loaded"),
        (["--source.source", str(small), "--kmeans.backend", "nope", "--preset", "huge"] + fake, r"\(1\).*backend.*\(2\).*preset"),
    ]


def test_cli_bad_input_one_line_exit_2_nothing_left(tmp_path, capsys):
    import re

    for args, message in _bad_inputs(tmp_path):
        out = tmp_path / "out"
        code = main(["prepare", "--out", str(out), "--progress", "false", *args])
        err = capsys.readouterr().err.strip()
        assert code == 2, args
        assert err.startswith("planlm: error: ") and "\n" not in err, err
        assert re.search(message, err), (message, err)
        assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
