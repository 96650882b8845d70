"""Planned pretraining (`pretrain-lm --planned.*`): LM + adapters trained from step 0 by the one planned-LM loop,
oracle actions reach the loss, the folder loads as a planned LM (evaluate) and its lm/ as a plain LM, bad
combinations are refused in one line, and plain pretraining is untouched (tests/test_pretrain_lm.py, golden)."""

import json

import numpy as np
import pytest
import torch

from helpers import synthetic_prepared
from planlm.artifacts import read_manifest
from planlm.errors import PlanlmError
from planlm.models.planner import PlannerConfig
from planlm.train.start import AdapterConfig
from planlm.stages.train_planner import train_planner
from planlm.train.lm_pretraining import PlannedPretraining, lm_optim, train_tokenizer
from planlm.stages.pretrain_lm import pretrain_lm
from planlm.train.trainer import OptimConfig, TrainerConfig

QUIET = TrainerConfig(accelerator="cpu", progress_bar=False, logger="none")
TINY = dict(preset="tiny", vocab_size=400, block_size=32, trainer=QUIET)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A synthetic corpus, a plain LM (the tokenizer's source), and a NAP planner whose paper context counts the
    tokens of that LM: the order the stage documents."""
    root = tmp_path_factory.mktemp("planned")
    corpus = synthetic_prepared(root / "prepared", n_articles=20)
    lm = root / "plain"
    pretrain_lm(str(corpus.path), out=str(lm), optim=lm_optim("tiny", max_steps=2), **TINY)
    planner = root / "planner"
    train_planner(str(corpus.path), out=str(planner), lm=str(lm), planner=PlannerConfig(ff=32, context_tokens=32),
                  optim=OptimConfig(lr=1e-3, max_steps=3, weight_decay=1e-4), trainer=QUIET)
    return root, corpus, planner


def _planned(setup, name, actions, steps=4, **kw):
    root, corpus, planner = setup
    out = root / name
    metrics = pretrain_lm(str(corpus.path), out=str(out), optim=lm_optim("tiny", max_steps=steps, batch_size=4),
                          planned=PlannedPretraining(actions=actions, planner=None if actions == "fixed" else str(planner),
                                                     adapters=AdapterConfig(layers=[1]), **kw), **TINY)
    return out, metrics


def test_bpe_training_is_deterministic(setup):
    """The planner's token context relies on it: the same corpus and vocab_size give the same tokenizer."""
    corpus = setup[1]
    texts = [corpus.texts[a] for a in corpus.article_ids("train")]
    assert train_tokenizer(texts, 400).get_vocab() == train_tokenizer(texts, 400).get_vocab()


@pytest.mark.parametrize("actions", ["oracle", "soft"])
def test_lm_and_adapters_train_from_step_zero_and_the_folder_loads(setup, actions):
    from planlm.persist import load_planned_lm, load_run

    root, corpus, planner = setup
    out, metrics = _planned(setup, f"planned-{actions}", actions, snapshot_every=2)
    manifest = read_manifest(out, "pretrain-lm")
    assert manifest["planned"] is True and manifest["counts"]["steps"] == 4
    assert [s["step"] for s in manifest["counts"]["snapshots"]] == [2, 4]
    assert metrics["val_loss"] < metrics["val_loss_initial"]
    first = load_planned_lm(out / "snapshots" / "step-000002")
    final, tokenizer, _, _ = load_run(out, device="cpu")
    assert final.config.selection == {"oracle": "hard", "soft": "soft"}[actions] and final.planner is not None
    # LM and adapters both moved between step 2 and the end (everything trains from the start)
    lm_a, lm_b = first.lm.state_dict(), final.lm.state_dict()
    assert any(not torch.equal(lm_a[k], lm_b[k].cpu()) for k in lm_a)
    ad_a, ad_b = first.adapters.state_dict(), final.adapters.state_dict()
    assert any(not torch.equal(ad_a[k], ad_b[k].cpu()) for k in ad_a)
    # the frozen NAP planner is the one that was given (planner_unfreeze never)
    from planlm.persist import load_planner

    given = load_planner(planner).state_dict()
    assert all(torch.equal(given[k], v.cpu()) for k, v in final.planner.state_dict().items())
    # lm/ is a complete plain Hugging Face LM folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = AutoModelForCausalLM.from_pretrained(out / "lm")
    assert AutoTokenizer.from_pretrained(out / "lm").get_vocab() == tokenizer.get_vocab()
    assert plain.config.n_layer == 2


def test_oracle_actions_reach_the_loss(setup):
    from planlm.data.windows import WindowDataset
    from planlm.persist import load_run

    out, _ = _planned(setup, "planned-oracle-loss", "oracle", steps=2)
    model, tokenizer, corpus, _ = load_run(out, device="cpu")
    ds = WindowDataset.from_corpus(corpus, tokenizer, "val", 32, 31)
    batch = ds.collate_fn(None, pad_token_id=tokenizer.pad_token_id)([ds[0], ds[1]])
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
              token_slot=batch["token_slot"])
    with torch.no_grad():
        right = model(**kw, oracle_actions=batch["oracle_actions"]).loss
        other = model(**kw, oracle_actions=(batch["oracle_actions"] + 1) % corpus.num_actions).loss
    assert not torch.isclose(right, other), (right, other)


def test_fixed_is_the_same_architecture_without_a_planner_and_evaluate_reads_it(setup, tmp_path):
    from planlm.eval.perplexity import PerplexityConfig
    from planlm.stages.evaluate import evaluate

    out, _ = _planned(setup, "planned-fixed", "fixed", steps=2)
    report = evaluate(run=out, out=tmp_path / "eval", split="test",
                      ppl=PerplexityConfig(protocols=["strided"], context_length=32, max_articles=2))
    m = json.loads((report / "metrics.json").read_text())
    assert m["selection"] == "fixed" and np.isfinite(m["ppl"]) and m["variant"].startswith("Fixed")


def test_fixed_folder_is_also_the_same_plain_lm(setup):
    from transformers import AutoModelForCausalLM

    from planlm.persist import load_planned_lm

    out, _ = _planned(setup, "planned-fixed", "fixed", steps=2)  # reused from the test above when it ran
    planned, plain = load_planned_lm(out), AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, plain.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, planned(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(planned.lm(input_ids=ids).logits, plain(input_ids=ids).logits)  # adapters matter


def test_evaluate_measures_predicted_and_oracle_actions(setup, tmp_path):
    from planlm.eval.perplexity import PerplexityConfig
    from planlm.stages.evaluate import evaluate

    out, _ = _planned(setup, "planned-predicted", "predicted", steps=2)
    report = evaluate(run=out, out=tmp_path / "eval", split="test",
                      ppl=PerplexityConfig(protocols=["strided"], actions=["predicted", "oracle"], context_length=32,
                                           max_articles=2))
    m = json.loads((report / "metrics.json").read_text())
    assert np.isfinite(m["ppl"]) and np.isfinite(m["ppl_oracle"]) and m["ppl"] != m["ppl_oracle"]


@pytest.mark.parametrize("planned, message", [
    (PlannedPretraining(actions="predicted"), "planned.actions=predicted needs a NAP-pretrained planner"),
    (PlannedPretraining(actions="soft"), "planned.actions=soft needs a NAP-pretrained planner"),
    (PlannedPretraining(actions="oracle", planner_unfreeze="immediate", planner="x"), "through soft selection only"),
    (PlannedPretraining(planner="x"), "planned.planner set without --planned.actions"),
])
def test_bad_combinations_are_refused_in_one_line(setup, planned, message):
    root, corpus, _ = setup
    with pytest.raises(PlanlmError) as e:
        pretrain_lm(str(corpus.path), out=str(root / "bad"), planned=planned, **TINY)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (root / "bad").exists()


def test_a_planner_counting_other_tokens_is_refused(setup, tmp_path):
    root, corpus, planner = setup
    with pytest.raises(PlanlmError, match="vocabulary differs"):
        pretrain_lm(str(corpus.path), out=str(tmp_path / "lm"), planned=PlannedPretraining("soft", str(planner)),
                    preset="tiny", vocab_size=380, block_size=32, trainer=QUIET)
