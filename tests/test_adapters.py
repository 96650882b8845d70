"""Action adapters on tiny GPT-2, GPT-NeoX and Llama models built locally (DESIGN.md 1.3)."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHS, random_lm, sentence_batch

from planlm.errors import PlanlmError
from planlm.models.adapters import ActionAdapters
from planlm.models.arch import ARCHITECTURES
from planlm.models.selection import action_weights


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_gate_gives_the_base_lm_exactly(arch):
    lm = random_lm(arch)
    input_ids, token_slot, logits = sentence_batch()
    base = lm(input_ids).logits
    adapters = ActionAdapters.for_lm(lm, num_actions=6, action_dim=8, gate=True)
    w = action_weights("soft", 6, planner_logits=logits)
    with adapters.conditioned(w, token_slot):
        out = lm(input_ids).logits
    assert torch.equal(out, base)
    # without the gate the same adapters do change the logits
    for a in adapters.adapters.values():
        a.gate = None
    with adapters.conditioned(w, token_slot):
        assert not torch.allclose(lm(input_ids).logits, base)
    # outside `conditioned` and after detach the LM is the base LM
    assert torch.equal(lm(input_ids).logits, base)
    adapters.detach()
    with pytest.raises(PlanlmError, match="not attached"):
        with adapters.conditioned(w, token_slot):
            pass


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_projection_starts_as_the_base_lm_and_trains_without_a_gate(arch):
    lm = random_lm(arch)
    input_ids, token_slot, logits = sentence_batch()
    base = lm(input_ids).logits
    adapters = ActionAdapters.for_lm(lm, num_actions=6, action_dim=8, projection_init="zeros")
    w = action_weights("soft", 6, planner_logits=logits)
    with adapters.conditioned(w, token_slot):
        out = lm(input_ids).logits
    assert torch.equal(out, base)
    # one Adam step on the next-token loss opens W_A and the bias: the logits move, per sentence
    opt = torch.optim.Adam(adapters.parameters(), lr=1e-2)
    with adapters.conditioned(w, token_slot):
        loss = torch.nn.functional.cross_entropy(lm(input_ids).logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten())
    loss.backward()
    first = adapters.adapters[str(adapters.layers[0])]
    assert first.proj.weight.grad.abs().sum() > 0 and first.action_embeddings.grad.abs().sum() == 0  # W_A = 0 still
    opt.step()
    with adapters.conditioned(w, token_slot):
        assert not torch.allclose(lm(input_ids).logits, base)


def test_zero_projection_behind_a_zero_gate_is_refused_in_one_line():
    with pytest.raises(PlanlmError, match="--adapters.gate false with --adapters.projection_init zeros"):
        ActionAdapters("gpt2", 4, 16, 6, 8, gate=True, projection_init="zeros")
    with pytest.raises(PlanlmError, match="projection_init must be one of xavier, zeros"):
        ActionAdapters("gpt2", 4, 16, 6, 8, projection_init="orthogonal")
    from planlm.models.planned_lm import PlannedLMConfig

    assert any("--adapters.gate false" in m for m in PlannedLMConfig(gate=True, projection_init="zeros").problems())
    assert PlannedLMConfig(projection_init="zeros").problems() == []


def test_adapter_vector_enters_at_the_output_projection_input_gpt2_one_layer():
    """Recompute a 1-layer GPT-2 by hand, adding r to the attention output before c_proj."""
    lm = random_lm("gpt2", n_layer=1)
    input_ids, token_slot, logits = sentence_batch(N=4, K=5)
    adapters = ActionAdapters.for_lm(lm, num_actions=5, action_dim=8, layers=[0])
    w = torch.softmax(logits, -1)  # (N, K)
    with adapters.conditioned(w, token_slot):
        got = lm(input_ids).logits

    block, tr = lm.transformer.h[0], lm.transformer
    ad = adapters.adapters["0"]
    r = ad.proj(w @ ad.action_embeddings)[token_slot]  # (B, T, H)
    with torch.no_grad():
        B, T = input_ids.shape
        h = tr.wte(input_ids) + tr.wpe(torch.arange(T))[None]  # (B, T, H)
        x = block.ln_1(h)
        q, k, v = block.attn.c_attn(x).split(32, dim=2)
        heads = lambda t: t.view(B, T, 2, 16).transpose(1, 2)  # noqa: E731  (B, nh, T, hs)
        att = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
        merged = att.transpose(1, 2).reshape(B, T, 32)  # (B, T, H): the c_proj input
        h = h + block.attn.c_proj(merged + r)  # r enters HERE, before the output projection
        h = h + block.mlp(block.ln_2(h))
        want = lm.lm_head(tr.ln_f(h))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_post_merge_is_the_base_projection_input_plus_r(arch):
    """On a 1-layer model, the projection input with adapters = the base LM's projection input + r (captured)."""
    lm = random_lm(arch, n_layer=1)
    input_ids, token_slot, logits = sentence_batch(N=4, K=5)
    path = ARCHITECTURES[arch].projection_path(0)
    seen = {}
    handle = lm.get_submodule(path).register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach()))
    lm(input_ids)
    base_input = seen["x"]
    handle.remove()
    adapters = ActionAdapters.for_lm(lm, num_actions=5, action_dim=8, layers=[0])
    w = torch.softmax(logits, -1)
    with adapters.capturing() as captured, adapters.conditioned(w, token_slot):
        lm(input_ids)
    ad = adapters.adapters["0"]
    r = ad.proj(w @ ad.action_embeddings)[token_slot]
    torch.testing.assert_close(captured[0]["pre"], r.detach())
    torch.testing.assert_close(captured[0]["post"], base_input + r.detach())
    assert not captured[0]["post"].requires_grad


@pytest.mark.parametrize("arch", ARCHS)
def test_per_sentence_equals_naive_per_token(arch):
    lm = random_lm(arch)
    input_ids, token_slot, logits = sentence_batch(N=5, K=6)
    adapters = ActionAdapters.for_lm(lm, num_actions=6, action_dim=8)
    w = torch.softmax(logits, -1)
    with adapters.capturing() as captured, adapters.conditioned(w, token_slot):
        fast = lm(input_ids).logits
    assert sorted(captured) == adapters.layers == [2, 3]
    # naive: a K x d product for every token, then the projection, added by an independent hook
    handles = []
    adapters.detach()
    for l in adapters.layers:
        ad = adapters.adapters[str(l)]
        B, T = token_slot.shape
        naive = torch.stack(
            [torch.stack([ad.proj(w[token_slot[b, t]] @ ad.action_embeddings) for t in range(T)]) for b in range(B)]
        )  # (B, T, H)
        torch.testing.assert_close(captured[l]["pre"], naive.detach())
        path = ARCHITECTURES[arch].projection_path(l)
        handles.append(lm.get_submodule(path).register_forward_pre_hook(lambda m, a, r=naive: (a[0] + r,)))
    slow = lm(input_ids).logits
    for h in handles:
        h.remove()
    torch.testing.assert_close(fast, slow)


def test_fixed_and_uniform_broadcast_one_vector():
    lm = random_lm("gpt2")
    input_ids, _, _ = sentence_batch()
    adapters = ActionAdapters.for_lm(lm, num_actions=6, action_dim=8)
    with adapters.capturing() as captured, adapters.conditioned(action_weights("uniform", 6)):
        lm(input_ids)
    for l in adapters.layers:
        ad = adapters.adapters[str(l)]
        mean = ad.proj(ad.action_embeddings.mean(0)).detach()  # uniform == the mean action embedding
        assert captured[l]["pre"].shape == (2, 10, 32)
        torch.testing.assert_close(captured[l]["pre"], mean.expand(2, 10, 32))
    with pytest.raises(PlanlmError, match="token_slot"):
        with adapters.conditioned(torch.ones(3, 6) / 6):
            pass


def test_negative_slot_means_no_action():
    lm = random_lm("gpt2")
    input_ids, token_slot, logits = sentence_batch()
    adapters = ActionAdapters.for_lm(lm, num_actions=6, action_dim=8)
    token_slot[:, -3:] = -1
    with adapters.capturing() as captured, adapters.conditioned(torch.softmax(logits, -1), token_slot):
        lm(input_ids)
    assert torch.all(captured[2]["pre"][:, -3:] == 0) and torch.any(captured[2]["pre"][:, :-3] != 0)


def test_initialisation_and_layers():
    centroids = torch.randn(6, 8)
    lm = random_lm("gpt_neox")
    adapters = ActionAdapters.for_lm(lm, num_actions=6, action_dim=8, centroids=centroids, layers=[0, -1])
    assert adapters.layers == [0, 3]
    for ad in adapters.adapters.values():
        assert torch.equal(ad.action_embeddings.detach(), centroids) and ad.action_embeddings.requires_grad
        assert torch.all(ad.proj.bias == 0)
    # every layer owns its embedding matrix (no sharing)
    a0, a3 = adapters.adapters["0"], adapters.adapters["3"]
    assert a0.action_embeddings.data_ptr() != a3.action_embeddings.data_ptr()
    with pytest.raises(PlanlmError, match="do not exist"):
        ActionAdapters.for_lm(lm, num_actions=6, action_dim=8, layers=[7])
    with pytest.raises(PlanlmError, match="centroids have shape"):
        ActionAdapters.for_lm(lm, num_actions=6, action_dim=8, centroids=torch.randn(5, 8))
    assert ActionAdapters.for_lm(random_lm("llama"), num_actions=6, action_dim=8).hidden_size == 48


def test_unsupported_architecture_names_the_fix():
    with pytest.raises(PlanlmError) as e:
        ActionAdapters("opt", 4, 32, 6, 8)
    msg = str(e.value)
    assert "'opt'" in msg and "gpt2" in msg and "llama" in msg and "planlm.models.arch.ARCHITECTURES" in msg


def test_gpt2_small_parameter_count():
    """Paper: 10 conditioned layers x (1024*768 + 768*768 + 768) = 13,770,240 for GPT-2 small, K=1024."""
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):  # the shape of GPT-2 small, without allocating (or downloading) its weights
        lm = GPT2LMHeadModel(GPT2Config())
    adapters = ActionAdapters.for_lm(lm, num_actions=1024, action_dim=768)
    assert adapters.layers == list(range(2, 12))
    assert sum(p.numel() for p in adapters.parameters()) == 13_770_240
