"""Writing actions applied to new text: `planlm prepare --actions_from` reuses a prepared corpus's encoder and
centroids (no k-means), and `planlm evaluate` accepts a corpus in the run's action space and refuses any other."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finetune_env import cli_args, make_env
from helpers import prepare_builtin_slice, synthetic_prepared
from planlm.cli import main
from planlm.data.corpus import SourceConfig, SplitConfig
from planlm.data.encoders import EncoderConfig
from planlm.data.prepared import PreparedCorpus
from planlm.errors import PlanlmError
from planlm.stages.prepare import prepare

FAKE = EncoderConfig(name="fake:32")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """12 builtin articles, fake encoder, K=16: the corpus whose actions are applied elsewhere."""
    return prepare_builtin_slice(tmp_path_factory.mktemp("src") / "prepared")


def test_actions_from_gives_the_source_actions_for_the_source_sentences(source, tmp_path):
    # A larger corpus holding the source's 12 articles first, split differently: no k-means, nearest source centroid.
    new = prepare(out=str(tmp_path / "new"), source=SourceConfig(max_articles=16), split=SplitConfig(seed=5),
                  actions_from=str(source), progress=False)
    src, pc = PreparedCorpus.load(source), PreparedCorpus.load(new)
    n = len(src.actions)
    assert len(pc.texts) == 16 and pc.texts[:12] == list(src.texts)
    assert [pc.sentence_text(i) for i in range(n)] == [src.sentence_text(i) for i in range(n)]
    assert np.array_equal(pc.actions[:n], src.actions)  # train (k-means labels) and val/test sentences alike
    assert not np.array_equal(pc.article_split[:12], src.article_split)  # another split, the same actions
    assert np.array_equal(pc.centroids, src.centroids) and pc.action_space == src.action_space
    assert pc.encoder == "fake:32" and pc.num_actions == 16
    # the new articles' sentences get their nearest source centroid too
    x = pc.embeddings[n:].astype(np.float64)
    d = ((x[:, None] - src.centroids[None].astype(np.float64)) ** 2).sum(-1)
    assert (pc.actions[n:] == d.argmin(1)).mean() > 0.99  # float32 vs float64 ties aside
    m = pc.manifest
    assert m["inputs"]["actions_from"]["id"] == src.id and m["config"]["actions_from"]["id"] == src.id
    assert m["config"]["kmeans"] is None and "k-means" not in m["seconds"]
    assert [e["exemplars"] for e in pc.exemplars()] == [e["exemplars"] for e in src.exemplars()]


def test_actions_from_refuses_what_does_not_fit(source, tmp_path):
    with pytest.raises(PlanlmError) as e:
        prepare(out=str(tmp_path / "x"), source=SourceConfig(max_articles=3), num_actions=8,
                encoder=EncoderConfig(name="fake:64"), actions_from=str(source), progress=False)
    assert "--num_actions 8 differs from K=16" in str(e.value) and "--encoder.name fake:64 differs" in str(e.value)
    assert main(["prepare", "--out", str(tmp_path / "y"), "--actions_from", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.fixture(scope="module")
def run_env(tmp_path_factory):
    env = make_env(tmp_path_factory.mktemp("ev"))
    env["run"] = env["root"] / "pa"
    assert main(cli_args(env, env["run"], "--optim.max_steps", "1", "--recipe.selection", "hard",
                         "--recipe.planner_unfreeze", "never")) == 0
    return env


def _evaluate(env, prepared, out):
    return main(["evaluate", "--run", str(env["run"]), "--prepared", str(prepared), "--out", str(out),
                 "--ppl.context_length", "24", "--ppl.max_tokens", "60", "--ppl.protocols", "[strided]"])


def test_evaluate_accepts_the_run_action_space_and_refuses_any_other(run_env, tmp_path, capsys):
    env = run_env
    assert json.loads((env["run"] / "manifest.json").read_text())["action_space"] == env["corpus"].action_space
    # other articles, the same centroids (the helper draws centroids before articles): the run's action space
    same = synthetic_prepared(tmp_path / "same", n_articles=15)
    assert same.id != env["corpus"].id and same.action_space == env["corpus"].action_space
    assert _evaluate(env, same.path, tmp_path / "ok") == 0
    assert json.loads((tmp_path / "ok" / "manifest.json").read_text())["inputs"]["prepared"]["id"] == same.id

    capsys.readouterr()
    other = synthetic_prepared(tmp_path / "other", n_articles=12, seed=1)  # same K and width, other centroids
    assert _evaluate(env, other.path, tmp_path / "refused") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other writing actions than the run" in err
    assert f"centroids '{other.action_space['centroids']}'" in err and "--actions_from" in err
    k4 = synthetic_prepared(tmp_path / "k4", num_actions=4)
    assert _evaluate(env, k4.path, tmp_path / "refused") == 2
    assert "num_actions 4 (needs 8)" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
