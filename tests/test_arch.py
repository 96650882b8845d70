"""The architecture table (planlm.models.arch): every entry's paths resolve, on a tiny model of that family, to the
modules the adapters, multi-token heads and myopic attention hook. A new LM family = one entry + one tiny config."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
from transformers.pytorch_utils import Conv1D

from planlm.errors import PlanlmError
from planlm.models.arch import ARCHITECTURES, architecture, cache_keyword

VOCAB, HIDDEN, LAYERS = 64, 32, 2
_LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
# model_type -> tiny config keyword arguments (AutoConfig.for_model: no download)
TINY_CONFIGS: dict[str, dict] = {
    "gpt2": dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=64, bos_token_id=0,
                 eos_token_id=0),
    "gpt_neox": dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, bos_token_id=0, eos_token_id=0),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": {**_LLAMA_LIKE, "head_dim": 16},  # heads x head_dim = 64 != hidden 32
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
}


def tiny_lm(model_type: str) -> nn.Module:
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **TINY_CONFIGS[model_type])
    return AutoModelForCausalLM.from_config(config).eval()


def test_every_entry_has_a_tiny_config():
    assert sorted(TINY_CONFIGS) == sorted(ARCHITECTURES)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_paths_resolve_to_modules_of_the_right_kind(model_type):
    lm = tiny_lm(model_type)
    assert lm.config.model_type == model_type
    arch = architecture(model_type)
    assert lm.get_submodule(arch.base) is lm.base_model
    blocks = lm.get_submodule(arch.blocks_path)
    assert isinstance(blocks, nn.ModuleList) and len(blocks) == lm.config.num_hidden_layers
    norm = lm.get_submodule(arch.final_norm_path)
    assert "norm" in type(norm).__name__.lower()  # OLMo's LayerNorm has no weight
    for i in range(LAYERS):
        attention = lm.base_model.get_submodule(arch.attention_path(i))
        assert "attention" in type(attention).__name__.lower()
        assert attention is blocks[i].get_submodule(arch.attention)
        projection = lm.get_submodule(arch.projection_path(i))
        assert projection is attention.get_submodule(arch.output_projection)
        assert isinstance(projection, (nn.Linear, Conv1D))
        # it writes into the residual stream: (B, T, heads x head_dim) -> (B, T, hidden)
        out_width = projection.nf if isinstance(projection, Conv1D) else projection.out_features
        assert out_width == HIDDEN


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_every_component_attaches(model_type):
    """Adapters (zero gate: the base LM exactly), myopic attention (same forward), a KV cache object passed under
    :func:`cache_keyword`, and MTP heads on each family."""
    from planlm.models.adapters import ActionAdapters
    from planlm.models.mtp import MTPHeads
    from planlm.models.myopic import make_myopic

    lm = tiny_lm(model_type)
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = lm(ids).logits
    adapters = ActionAdapters.for_lm(lm, num_actions=3, action_dim=4, layers=[0, 1], gate=True)
    with torch.no_grad(), adapters.conditioned(torch.softmax(torch.randn(1, 3), -1)):
        torch.testing.assert_close(lm(ids).logits, base)
    adapters.detach()
    myopia = make_myopic(lm)
    torch.testing.assert_close(lm(ids).logits, base, atol=1e-5, rtol=1e-5)  # autograd on: the myopic path
    myopia.remove()
    cache = DynamicCache()
    with torch.no_grad():  # the model takes its own cache object under cache_keyword, whatever the version
        torch.testing.assert_close(lm(ids, use_cache=True, **{cache_keyword(lm): cache}).logits, base)
    assert cache.get_seq_length() == ids.shape[1]
    heads = MTPHeads(lm, n_heads=2)
    with torch.no_grad(), heads.capturing():
        lm(ids, use_cache=False)
        assert heads.head_logits(2).shape == (2, 8, VOCAB)


def test_unknown_model_type_names_the_one_entry_to_add():
    with pytest.raises(PlanlmError) as e:
        architecture("opt", "action adapters")
    msg = str(e.value)
    assert msg.startswith("action adapters:") and "'opt'" in msg and "\n" not in msg
    assert all(t in msg for t in ARCHITECTURES) and "planlm.models.arch.ARCHITECTURES" in msg
