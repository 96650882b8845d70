"""`planlm pretrain-lm`: BPE + GPT-2 from scratch lowers val loss; the folder loads with the Auto classes."""

import numpy as np
import pytest
import torch

from helpers import synthetic_prepared
from planlm.artifacts import read_manifest
from planlm.errors import PlanlmError
from planlm.train.lm_pretraining import PRESETS, blocks, lm_optim, train_tokenizer
from planlm.stages.pretrain_lm import pretrain_lm
from planlm.train.trainer import TrainerConfig

QUIET = TrainerConfig(accelerator="cpu", progress_bar=False, logger="none")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    corpus = synthetic_prepared(root / "prepared", n_articles=30)
    out = root / "lm"
    metrics = pretrain_lm(str(corpus.path), out=str(out), preset="tiny", vocab_size=400, optim=lm_optim("tiny", epochs=8),
                          trainer=QUIET)
    return corpus, out, metrics


def test_training_lowers_val_loss_and_records_it(trained):
    corpus, out, metrics = trained
    assert metrics["val_loss"] < metrics["val_loss_initial"] - 0.5, metrics
    assert metrics["val_perplexity"] == pytest.approx(np.exp(metrics["val_loss"]))
    manifest = read_manifest(out, "pretrain-lm")
    assert manifest["metrics"]["tokens_per_second"] > 0
    assert manifest["counts"]["train_tokens"] > 0 and manifest["counts"]["steps"] > 0
    assert manifest["inputs"]["prepared"]["id"] == corpus.id


def test_folder_loads_with_the_auto_classes_and_scores_like_training(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus, out, metrics = trained
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert tok.is_fast  # planlm's token alignment needs offsets
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.pad_token_id != tok.eos_token_id and len(tok) == model.config.vocab_size
    text = corpus.texts[corpus.article_ids("val")[0]]
    enc = tok(text, return_offsets_mapping=True)
    assert tok.decode(enc["input_ids"]) == text  # byte-level BPE round-trips
    # The loaded model reproduces the recorded val loss on the same val blocks.
    ids = [i for a in corpus.article_ids("val") for i in (*tok(corpus.texts[a])["input_ids"], tok.eos_token_id)]
    total = count = 0.0
    with torch.no_grad():
        for block in blocks(np.array(ids), PRESETS["tiny"].block_size, keep_tail=True):
            x = torch.from_numpy(block)[None]
            total += model(input_ids=x, labels=x).loss.item() * (len(block) - 1)
            count += len(block) - 1
    assert total / count == pytest.approx(metrics["val_loss"], rel=1e-4)


def test_tokenizer_respects_the_vocab_size(trained):
    corpus = trained[0]
    tok = train_tokenizer(corpus.texts, vocab_size=300)
    assert len(tok) <= 300
    assert tok("naïve ✓ text")["input_ids"]  # any string is encodable (byte level)


def test_bad_arguments_are_listed_in_one_error(tmp_path):
    with pytest.raises(PlanlmError) as e:
        pretrain_lm(str(tmp_path / "missing"), out=str(tmp_path / "lm"), preset="huge", vocab_size=100, trainer=QUIET)
    msg = str(e.value)
    for part in ("does not exist", "unknown preset 'huge'", "vocab_size 100"):
        assert part in msg


def test_help_lists_the_options(capsys):
    from jsonargparse import CLI, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    with pytest.raises(SystemExit):
        CLI({"pretrain-lm": pretrain_lm}, args=["pretrain-lm", "--help"], as_positional=True)
    text = capsys.readouterr().out
    for option in ("--prepared", "--preset", "--vocab_size", "--block_size", "--optim.max_steps", "--trainer.precision",
                   "small-cpu", "byte-level BPE tokenizer"):
        assert option in text, option
