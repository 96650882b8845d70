"""`planlm train-planner`: NAP learns a learnable action pattern, baselines, artifact, reuse, validation, --help."""

import json

import numpy as np
import pytest
import torch

from helpers import NAP, QUIET, patterned_prepared
from planlm.artifacts import read_manifest
from planlm.data.planner_inputs import PlannerInputs
from planlm.errors import PlanlmError
from planlm.models.planner import PlannerConfig
from planlm.persist import load_planner, save_planned_lm
from planlm.eval.latent import BigramCritic
from planlm.eval.nap import action_metrics, baseline_metrics
from planlm.train.planner_nap import ArticleBatches
from planlm.stages.train_planner import train_planner
from planlm.train.trainer import TrainerConfig


@pytest.fixture
def patterned(tmp_path):
    return patterned_prepared(tmp_path / "patterned")


@pytest.mark.parametrize("context", ["paper", "causal"])
def test_nap_beats_the_unigram_baseline_and_saves_a_loadable_planner(patterned, tmp_path, context):
    out = tmp_path / "planner"
    cfg = PlannerConfig(ff=32, context=context, context_sentences=2)
    metrics = train_planner(str(patterned.path), out=str(out), planner=cfg, optim=NAP(lr=5e-3, epochs=8), trainer=QUIET)
    planner, unigram = metrics["planner"], metrics["unigram"]
    assert unigram["top1"] < 0.35  # K = 6, nearly uniform
    assert planner["top1"] > unigram["top1"] + 0.3, metrics
    assert planner["loss"] < unigram["loss"]
    assert metrics["bigram"]["top1"] > 0.7  # the rule is a bigram rule: the baseline sees it too

    manifest = read_manifest(out, "train-planner")
    assert manifest["metrics"]["planner"]["top1"] == pytest.approx(planner["top1"])
    assert manifest["counts"]["train_sentences"] > 0 and manifest["inputs"]["prepared"]["id"] == patterned.id
    # The saved planner predicts what the run measured.
    loaded = load_planner(out).eval()
    assert loaded.config.num_actions == 6 and loaded.config.encoder_dim == 16 and loaded.config.context == context
    val = np.concatenate([np.arange(*patterned.sentence_range(a)) for a in patterned.article_ids("val")])
    with torch.no_grad():
        logits = loaded(**PlannerInputs.from_config(patterned, loaded.config)(val))
    top1 = (logits.argmax(1).numpy() == patterned.actions[val]).mean()
    assert top1 == pytest.approx(planner["top1"], abs=1e-6)
    assert (out / "logs" / "metrics.csv").read_text().count("val/unigram_top1") == 1  # baselines logged in-run


def test_paper_context_counts_tokens_of_a_local_lm_tokenizer(patterned, tmp_path):
    from planlm.train.lm_pretraining import train_tokenizer

    tok_dir = tmp_path / "tok"
    train_tokenizer(patterned.texts, vocab_size=300).save_pretrained(tok_dir)
    out = tmp_path / "planner"
    metrics = train_planner(str(patterned.path), out=str(out), lm=str(tok_dir), planner=PlannerConfig(ff=32),
                            optim=NAP(max_steps=3), trainer=QUIET)
    manifest = read_manifest(out, "train-planner")
    assert manifest["context_tokenizer"] == str(tok_dir) and manifest["counts"]["steps"] == 3
    assert set(metrics) == {"planner", "unigram", "bigram"}
    assert json.loads((out / "planner_config.json").read_text())["context_tokens"] == 128


def test_an_up_to_date_artifact_is_reused_and_force_retrains(patterned, tmp_path, capsys):
    out = tmp_path / "planner"
    kwargs = dict(out=str(out), planner=PlannerConfig(ff=32, context_sentences=2), optim=NAP(max_steps=2), trainer=QUIET)
    first = train_planner(str(patterned.path), **kwargs)
    stamp = (out / "planner.safetensors").stat().st_mtime_ns
    assert train_planner(str(patterned.path), **kwargs) == first
    assert "up to date" in capsys.readouterr().out
    assert (out / "planner.safetensors").stat().st_mtime_ns == stamp
    train_planner(str(patterned.path), force=True, **kwargs)
    assert (out / "planner.safetensors").stat().st_mtime_ns != stamp


def test_baselines_on_a_known_sequence(patterned):
    train = np.concatenate([np.arange(*patterned.sentence_range(a)) for a in patterned.article_ids("train")])
    val = np.concatenate([np.arange(*patterned.sentence_range(a)) for a in patterned.article_ids("val")])
    m = baseline_metrics(patterned, train, val)
    first = patterned.sentence_position[val] == 0
    # The bigram predicts every non-first sentence (a -> a + 1); first sentences follow the start-of-article row.
    assert m["bigram"]["top1"] >= (~first).mean()
    # An unseen previous action falls back to the unigram distribution.
    probs = BigramCritic.fit_pairs(np.array([0, 0, 6]), np.array([1, 1, 2]), num_actions=6).next_action_probs()
    np.testing.assert_allclose(probs[3], probs[4])
    assert probs.sum(1) == pytest.approx(np.ones(7))
    perfect = action_metrics(np.eye(3)[[0, 1, 2]] * 0.98 + 0.01 / 1.5, np.array([0, 1, 2]), top_k=5)
    assert perfect["top1"] == 1.0 and perfect["top5"] == 1.0 and perfect["perplexity"] < 1.05


def test_bad_arguments_are_listed_in_one_error(patterned, tmp_path):
    with pytest.raises(PlanlmError) as e:
        train_planner(str(patterned.path), out=str(tmp_path / "p"), planner=PlannerConfig(num_actions=9),
                      objective="mlm", optim=NAP(lr=0.0), trainer=QUIET)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("objective must be one of", "num_actions=9", "--lm", "lr must be positive"):
        assert part in msg
    with pytest.raises(PlanlmError, match="does not exist"):
        train_planner(str(tmp_path / "missing"), out=str(tmp_path / "p"), trainer=QUIET)


def test_help_lists_the_options(capsys):
    from jsonargparse import CLI, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    with pytest.raises(SystemExit):
        CLI({"train-planner": train_planner}, args=["train-planner", "--help"], as_positional=True)
    text = capsys.readouterr().out
    for option in ("--prepared", "--lm", "--planner.context", "--planner.context_tokens", "--objective",
                   "--optim.weight_decay", "--trainer.accelerator", "next-action prediction", "one causal pass per article"):
        assert option in text, option


def test_ntp_objective_trains_the_planner_and_adapters_of_a_planned_lm_folder_through_its_frozen_lm(
        patterned, tmp_path):
    from transformers import AutoModelForCausalLM

    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
    from planlm.persist import load_planned_lm
    from planlm.train.lm_pretraining import lm_optim
    from planlm.stages.pretrain_lm import pretrain_lm

    lm_dir = tmp_path / "lm"
    pretrain_lm(str(patterned.path), out=str(lm_dir), preset="tiny", vocab_size=300, optim=lm_optim("tiny", max_steps=1),
                trainer=TrainerConfig(accelerator="cpu", progress_bar=False, logger="none"))
    # A planned LM folder as `planlm finetune` writes it: adapters (+ base LM reference) and its tokenizer.
    planned_dir = tmp_path / "planned"
    cfg = PlannedLMConfig(num_actions=patterned.num_actions, action_dim=patterned.embedding_dim, layers=[1],
                          selection="hard", base_lm=str(lm_dir))
    save_planned_lm(PlannedLM(AutoModelForCausalLM.from_pretrained(lm_dir), cfg,
                              centroids=torch.from_numpy(patterned.centroids)), planned_dir)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(lm_dir).save_pretrained(planned_dir / "tokenizer")
    before = load_planned_lm(planned_dir)
    # the NTP stage reads these hard-selection adapters through soft selection, built so from the start
    assert load_planned_lm(planned_dir, config_changes={"selection": "soft"}).config.selection == "soft"

    out = tmp_path / "planner"
    metrics = train_planner(str(patterned.path), out=str(out), objective="ntp", planned_lm=str(planned_dir),
                            planner=PlannerConfig(ff=32), optim=NAP(lr=1e-2, batch_size=4, max_steps=4), trainer=QUIET)
    assert np.isfinite(metrics["planner"]["lm_loss"]) and 0 <= metrics["planner"]["top1"] <= 1
    manifest = read_manifest(out, "train-planner")
    assert manifest["counts"]["steps"] == 4 and str(planned_dir) in json.dumps(manifest["inputs"]["planned_lm"])
    assert manifest["context_tokenizer"] == str(planned_dir / "tokenizer")  # paper context counted its tokens
    trained = load_planner(out)
    assert manifest["counts"]["trainable_parameters"] == (sum(p.numel() for p in trained.parameters())
                                                          + manifest["counts"]["adapter_parameters"])
    assert manifest["adapters"]["layers"] == [1] and (out / "adapters.safetensors").exists()
    fresh = PlannerConfig(num_actions=6, encoder_dim=16, ff=32)
    from planlm.models.planner import Planner

    torch.manual_seed(0)
    init = Planner(fresh, torch.from_numpy(patterned.centroids))
    assert not torch.equal(trained.policy_head.weight, init.policy_head.weight) or not torch.equal(
        trained.input_proj.weight, init.input_proj.weight)
    # The planned LM on disk was only read (its adapters trained on in memory, and were saved in OUT).
    after = load_planned_lm(planned_dir)
    for (name, a), b in zip(before.adapters.state_dict().items(), after.adapters.state_dict().values()):
        assert torch.equal(a, b), name


def _train_window_loss(model, corpus, tokenizer) -> float:
    """Mean next-token loss of ``model`` (eval mode, no grad) over every train window of ``corpus`` (the windows
    the ntp stage trains on), each token counted once."""
    from planlm.data.windows import WindowDataset

    windows = WindowDataset.from_corpus(corpus, tokenizer, "train")
    builder = PlannerInputs.from_config(corpus, model.planner.config, tokenizer=tokenizer)
    collate = windows.collate_fn(builder, pad_token_id=tokenizer.pad_token_id or 0)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), 8):
            batch = collate([windows[j] for j in range(i, min(i + 8, len(windows)))])
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                        token_slot=batch["token_slot"], planner_inputs=batch["planner_inputs"])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total, count = total + float(out.loss) * n, count + n
    return total / count


def test_no_nap_stage_trains_planner_and_adapters_lowers_the_lm_loss_and_finetune_starts_from_both(
        patterned, tmp_path):
    """Issue 27 item 2: the "no NAP pretraining" stage keeps only the LM frozen (the paper's section 4.3); on its own
    train windows the LM loss falls, and `planlm finetune --planner OUT` starts from its planner AND adapters."""
    from helpers import tiny_lm
    from planlm.persist import load_adapters, load_tokenizer
    from planlm.stages.finetune import FinetuneConfig
    from planlm.train.recipe import RecipeConfig
    from planlm.data.windows import WindowDataset
    from planlm.train.start import AdapterConfig, WindowConfig, initial_planned_lm

    lm_dir = tiny_lm(tmp_path / "lm", patterned.texts, dropout=0.0)
    tokenizer = load_tokenizer(lm_dir)
    planner_cfg = PlannerConfig(ff=32, context_sentences=2)
    adapters = AdapterConfig(layers=[1, 2, 3])
    out = tmp_path / "planner-ntp"
    train_planner(str(patterned.path), out=str(out), lm=lm_dir, objective="ntp", planner=planner_cfg,
                  adapters=adapters, windows=WindowConfig(max_val_windows=3),
                  optim=NAP(lr=1e-2, batch_size=4, max_steps=16), trainer=QUIET)
    manifest = read_manifest(out, "train-planner")
    # its LM val loss reads at most --windows.max_val_windows val windows, as finetune's does
    assert manifest["counts"]["val_windows"] == 3 < len(WindowDataset.from_corpus(patterned, tokenizer, "val"))
    assert manifest["adapters"]["layers"] == [1, 2, 3] and manifest["adapters"]["base_lm"] == str(lm_dir)
    assert manifest["counts"]["trainable_parameters"] == (
        manifest["counts"]["parameters"] + manifest["counts"]["adapter_parameters"])

    # the stage's start, rebuilt: the adapters `planlm finetune --seed 0` starts from and a fresh planner
    soft = RecipeConfig(selection="soft", planner_unfreeze="immediate")
    start = FinetuneConfig(prepared=patterned.path, lm=lm_dir, seed=0, recipe=soft, adapters=adapters,
                           trainer=QUIET)
    resolved = PlannerConfig(**{**planner_cfg.__dict__, "num_actions": patterned.num_actions,
                                "encoder_dim": patterned.embedding_dim})
    model, _ = initial_planned_lm(start, patterned, fresh_planner=resolved)
    before = _train_window_loss(model, patterned, tokenizer)
    model.planner = load_planner(out)
    planner_only = _train_window_loss(model, patterned, tokenizer)  # the trained planner, the start's adapters
    load_adapters(model.adapters, out)
    after = _train_window_loss(model, patterned, tokenizer)
    # deterministic (no dropout, the same windows): a random 4-layer LM moves little (about 5.71 -> 5.64 nats)
    assert after < before - 0.03, (before, after)
    assert after < planner_only, (planner_only, after)  # the adapters' own training lowered it too

    # fine-tuning from that planner starts from its adapters too (and refuses adapters of other layers)
    ft = FinetuneConfig(prepared=patterned.path, lm=lm_dir, planner=out, seed=0, recipe=soft, adapters=adapters,
                        trainer=QUIET)
    started, _ = initial_planned_lm(ft, patterned)
    for name, value in started.adapters.state_dict().items():
        assert torch.equal(value, model.adapters.state_dict()[name]), name
    for name, value in started.planner.state_dict().items():
        assert torch.equal(value, model.planner.state_dict()[name]), name
    other = FinetuneConfig(prepared=patterned.path, lm=lm_dir, planner=out, seed=0, recipe=soft,
                           adapters=AdapterConfig(layers=[2, 3]), trainer=QUIET)
    with pytest.raises(PlanlmError, match="layers"):
        initial_planned_lm(other, patterned)


def test_causal_batches_pack_whole_articles(patterned):
    train = patterned.article_ids("train")
    sampler = ArticleBatches(patterned, train, batch_size=20, shuffle=True, seed=0)
    first, second = list(sampler), list(sampler)
    expected = np.concatenate([np.arange(*patterned.sentence_range(a)) for a in train])
    for epoch in (first, second):
        got = np.concatenate(epoch)
        assert sorted(got.tolist()) == expected.tolist()  # every train sentence exactly once
        for batch in epoch:
            arts = np.unique(patterned.sentence_article[batch])
            assert sum(np.diff(patterned.sentence_range(a))[0] for a in arts) == len(batch)  # whole articles only
        assert all(len(b) >= 20 for b in epoch[:-1])
    assert [b[0] for b in first] != [b[0] for b in second]  # reshuffled every epoch


def test_bigram_planner_and_bigram_prior_option_train_and_save(patterned, tmp_path):
    """Issue 27 item 7: ``--planner.kind bigram`` fits the train bigram and trains nothing (the Bigram PA planner);
    ``--planner.bigram_prior true`` trains the paper's planner on top of it, and starts where the bigram is."""
    bigram = train_planner(str(patterned.path), out=str(tmp_path / "bigram"), trainer=QUIET,
                           planner=PlannerConfig(context_sentences=2, kind="bigram"))
    # the patterned rule a_j = a_{j-1} + 1 is a bigram: the bigram planner is the bigram baseline
    assert bigram["planner"]["top1"] == pytest.approx(bigram["bigram"]["top1"])
    assert bigram["planner"]["loss"] == pytest.approx(bigram["bigram"]["loss"], rel=1e-4)
    assert read_manifest(tmp_path / "bigram", "train-planner")["counts"]["steps"] == 0
    assert load_planner(tmp_path / "bigram").config.kind == "bigram"

    prior = train_planner(str(patterned.path), out=str(tmp_path / "prior"), trainer=QUIET,
                          planner=PlannerConfig(ff=32, context_sentences=2, bigram_prior=True),
                          optim=NAP(lr=1e-3, batch_size=16, max_steps=20))
    assert prior["planner"]["top1"] >= prior["bigram"]["top1"] - 0.05  # the prior keeps the bigram's top-1
    assert np.isfinite(prior["planner"]["loss"]) and prior["planner"]["loss"] < prior["unigram"]["loss"]
    trained = load_planner(tmp_path / "prior")
    assert trained.config.bigram_prior and torch.isfinite(trained.bigram_log_probs).all()
    with pytest.raises(PlanlmError, match="nothing to train"):
        train_planner(str(patterned.path), out=str(tmp_path / "x"), lm="gpt2", objective="ntp", trainer=QUIET,
                      planner=PlannerConfig(kind="bigram"))


def test_last_sentences_option_trains_saves_and_is_its_own_artifact(patterned, tmp_path):
    """Issue 27 item 7: ``--planner.last_sentences 1`` (the previous sentence's embedding straight into the logits)
    learns the patterned rule a_j = a_{j-1} + 1, which that one sentence decides, and reloads as trained."""
    common = {"trainer": QUIET, "optim": NAP(lr=5e-3, epochs=4)}
    paper = train_planner(str(patterned.path), out=str(tmp_path / "paper"),
                          planner=PlannerConfig(ff=32, context_sentences=2), **common)
    last = train_planner(str(patterned.path), out=str(tmp_path / "last"),
                         planner=PlannerConfig(ff=32, context_sentences=2, last_sentences=1), **common)
    assert last["planner"]["top1"] > last["unigram"]["top1"] + 0.3, last
    assert last["planner"]["loss"] < paper["planner"]["loss"], (last, paper)  # the direct input helps on this rule
    fingerprint = read_manifest(tmp_path / "last", "train-planner")["config"]
    assert fingerprint["planner"]["last_sentences"] == 1
    assert "last_sentences" not in read_manifest(tmp_path / "paper", "train-planner")["config"]["planner"]
    loaded = load_planner(tmp_path / "last").eval()
    assert loaded.config.last_sentences == 1 and loaded.last_head.weight.abs().sum() > 0
