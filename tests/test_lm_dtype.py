"""LMs load in fp32 master weights whatever dtype their checkpoint was stored in (transformers 5 keeps the stored
dtype by default), unless the trainer's precision asks for half weights."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from helpers import synthetic_prepared, tiny_lm, tiny_planner
from planlm.data.prepared import PreparedCorpus
from planlm.persist import load_lm, load_planned_lm, save_planned_lm
from planlm.stages.finetune import FinetuneConfig
from planlm.train.start import initial_planned_lm
from planlm.train.trainer import TrainerConfig


def bf16_lm(tmp_path) -> str:
    folder = tiny_lm(tmp_path / "fp32", ["A first sentence here. And a second one there."] * 4)
    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tmp_path / "fp32" / f).exists():
            (tmp_path / "bf16" / f).write_bytes((tmp_path / "fp32" / f).read_bytes())
    stored = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")  # transformers' own default keeps bf16
    assert next(stored.parameters()).dtype == torch.bfloat16
    return str(tmp_path / "bf16")


def test_a_bf16_checkpoint_loads_as_fp32_unless_precision_says_otherwise(tmp_path):
    lm = bf16_lm(tmp_path)
    model, _ = load_lm(lm)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    model, _ = load_lm(lm, precision="bf16-mixed")  # mixed precision keeps fp32 master weights
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    model, _ = load_lm(lm, precision="bf16-true")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_a_planned_lm_on_a_bf16_base_lm_trains_and_reloads_in_fp32(tmp_path):
    lm = bf16_lm(tmp_path)
    corpus = synthetic_prepared(tmp_path / "prep", n_articles=6)
    planner = tiny_planner(tmp_path / "planner", corpus)
    cfg = FinetuneConfig(prepared=tmp_path / "prep", lm=lm, planner=tmp_path / "planner", trainer=TrainerConfig())
    model, _ = initial_planned_lm(cfg, PreparedCorpus.load(tmp_path / "prep"))
    assert {p.dtype for p in model.lm.parameters()} == {torch.float32} and planner
    save_planned_lm(model, tmp_path / "run")
    again = load_planned_lm(tmp_path / "run")
    assert {p.dtype for p in again.lm.parameters()} == {torch.float32}
