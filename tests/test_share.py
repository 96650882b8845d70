"""`planlm share`: a trained planner and its action space as one Hub folder with a model card, reloaded from a local
path (or a Hub id, through huggingface_hub's cache) by `finetune --planner` and `prepare --actions_from`."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from finetune_env import cli_args
from helpers import assert_refused, prepare_builtin_slice, tiny_lm

from planlm.cli import main
from planlm.data.prepared import PreparedCorpus
from planlm.persist import load_planner


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("share")
    prepared = prepare_builtin_slice(root / "prep", n_articles=12, num_actions=16)
    corpus = PreparedCorpus.load(prepared)
    env = {"root": root, "prepared": str(prepared), "corpus": corpus, "lm": tiny_lm(root / "lm", list(corpus.texts))}
    env["trained"] = root / "planner"
    assert main(["train-planner", "--prepared", env["prepared"], "--lm", env["lm"], "--out", str(env["trained"]),
                 "--optim.max_steps", "3", "--optim.batch_size", "16", "--planner.ff", "32",
                 "--trainer.accelerator", "cpu", "--trainer.progress_bar", "false", "--trainer.logger", "none"]) == 0
    env["shared"] = root / "hub-folder"
    assert main(["share", "--planner", str(env["trained"]), "--out", str(env["shared"]), "--examples", "4"]) == 0
    return env


def test_the_folder_holds_the_planner_its_action_space_and_a_card(env):
    shared, corpus = env["shared"], env["corpus"]
    assert {"README.md", "planner.safetensors", "planner_config.json", "manifest.json", "actions", "tokenizer"} <= {
        p.name for p in shared.iterdir()}
    card = (shared / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "planlm" and "planner" in meta["tags"]
    manifest = json.loads((env["trained"] / "manifest.json").read_text())
    top1 = manifest["metrics"]["planner"]["top1"]
    assert "| actions K | 16 |" in card and "| sentence encoder | fake:32 |" in card and f"{top1:.3f}" in card
    exemplars = json.loads((corpus.path / "exemplars.json").read_text())
    biggest = max(exemplars, key=lambda e: e["size"])
    assert f"| {biggest['action']} | {biggest['size']} |" in card  # example actions, with their exemplars
    assert biggest["exemplars"][0].replace("|", "\\|").replace("\n", " ")[:120] in card
    # the planner reloads from the folder, weights identical
    a, b = load_planner(env["trained"]), load_planner(shared)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    # its context tokenizer is the LM's
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(shared / "tokenizer").get_vocab() == AutoTokenizer.from_pretrained(
        env["lm"]).get_vocab()


def test_finetune_and_prepare_read_the_folder(env, tmp_path):
    shared = env["shared"]
    env2 = {**env, "planner": str(shared)}
    run = tmp_path / "ft"
    assert main(cli_args(env2, run, "--optim.max_steps", "1")) == 0
    assert json.loads((run / "manifest.json").read_text())["inputs"]["planner"]["path"] == str(shared)
    # a new corpus gets the shared actions, exactly as with --actions_from of the source corpus
    docs = tmp_path / "new.jsonl"
    docs.write_text("".join(json.dumps({"title": f"T{i}", "text": t[:2000]}) + "\n"
                            for i, t in enumerate(list(env["corpus"].texts)[:5])))
    for name, source in (("via-share", shared), ("via-corpus", env["prepared"])):
        assert main(["prepare", "--source.source", str(docs), "--actions_from", str(source),
                     "--out", str(tmp_path / name)]) == 0
    a, b = (PreparedCorpus.load(tmp_path / n) for n in ("via-share", "via-corpus"))
    assert a.action_space == b.action_space == env["corpus"].action_space
    assert (a.actions == b.actions).all()


def test_a_hub_id_is_downloaded_by_huggingface_hub_and_offline_names_it(env, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: calls.append(repo_id) or str(env["shared"]))
    from planlm.hub import local_folder

    assert local_folder("someone/planner", "--planner") == env["shared"] and calls == ["someone/planner"]
    assert local_folder("someone/planner", "--actions_from", "actions") == env["shared"] / "actions"
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    env2 = {**env, "planner": "someone/not-cached-planner"}
    assert_refused(capsys, cli_args(env2, tmp_path / "x", "--optim.max_steps", "1"),
                   r"--planner someone/not-cached-planner: cannot download it .*offline", tmp_path)


def test_push_uses_upload_folder(env, tmp_path, monkeypatch):
    import huggingface_hub

    seen = {}
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: seen.update(repo=repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: seen.update(kw))
    out = tmp_path / "pushed"
    assert main(["share", "--planner", str(env["trained"]), "--out", str(out), "--push_to", "me/my-planner"]) == 0
    assert seen["repo"] == "me/my-planner" and seen["repo_id"] == "me/my-planner"
    assert seen["folder_path"] == str(out) and seen["repo_type"] == "model"
    assert "planlm finetune --prepared prepared --lm MY_LM --planner me/my-planner" in (out / "README.md").read_text()


def test_bad_share_arguments(env, tmp_path, capsys):
    assert_refused(capsys, ["share", "--planner", str(env["prepared"]), "--out", str(tmp_path / "o")],
                   r"train-planner", tmp_path)
    assert_refused(capsys, ["share", "--planner", str(env["trained"]), "--out", str(tmp_path / "o"), "--push_to",
                            "not a repo"], r"push_to must be a Hub id", tmp_path)
