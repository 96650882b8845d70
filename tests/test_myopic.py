"""Myopic attention (Wu et al. 2024): no gradient from the loss at j into earlier positions' hidden states, the same
forward as the vanilla model, and weights trained from every position; then the D_p task and the `myopia` stage."""

import pytest
import torch

from helpers import ARCHS, VOCAB, random_lm
from planlm.models.myopic import MYOPIC, make_myopic

T, J = 12, 9  # sequence length; the position whose loss is differentiated


def _grads_into_hidden_states(lm, ids, j=J):
    """d(loss at position j) / d(input hidden states of every layer): a list of ``(B, T, H)``."""
    out = lm(ids, output_hidden_states=True)
    loss_j = torch.nn.functional.cross_entropy(out.logits[:, j], ids[:, j + 1])
    layer_inputs = out.hidden_states[:-1]  # the last entry is the final norm's output, per position anyway
    return torch.autograd.grad(loss_j, layer_inputs)


@pytest.mark.parametrize("arch", ARCHS)
def test_no_gradient_reaches_earlier_positions(arch):
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    lm = random_lm(arch, n_layer=2)
    vanilla = _grads_into_hidden_states(lm, ids)
    make_myopic(lm)
    myopic = _grads_into_hidden_states(lm, ids)
    for layer, (g_vanilla, g_myopic) in enumerate(zip(vanilla, myopic)):
        assert torch.all(g_myopic[:, :J] == 0), f"layer {layer}: gradient leaks into positions before {J}"
        assert g_myopic[:, J].abs().max() > 0, f"layer {layer}: no gradient at the loss's own position"
        assert torch.all(g_myopic[:, J + 1:] == 0)  # causal, as in the vanilla model
        assert g_vanilla[:, :J].abs().max() > 1e-6, f"layer {layer}: the vanilla model should pre-cache"


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_equals_vanilla_and_remove_restores_it(arch):
    ids = torch.randint(0, VOCAB, (3, T), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0  # right padding on one row
    lm = random_lm(arch, n_layer=2)
    previous = lm.config._attn_implementation
    with torch.no_grad():
        reference = lm(ids, attention_mask=mask).logits
    myopia = make_myopic(lm)
    logits = lm(ids, attention_mask=mask).logits  # autograd on: the myopic path
    assert lm.config._attn_implementation == MYOPIC
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # evaluation and generation: plain attention
        torch.testing.assert_close(lm(ids, attention_mask=mask).logits, reference, atol=1e-5, rtol=1e-5)
    myopia.remove()
    assert lm.config._attn_implementation == previous
    assert not any(hasattr(m, "_myopic_state") for m in lm.modules())
    assert _grads_into_hidden_states(lm, ids)[0][:, :J].abs().max() > 0  # vanilla again


@pytest.mark.parametrize("arch", ARCHS)
def test_weights_receive_gradient_from_every_position(arch):
    """The last layer's weights see no earlier layer, so their gradient is the vanilla one exactly: the detached
    off-diagonal keys/values still train W_K / W_V. Every parameter of the model gets some gradient."""
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(3))
    lm = random_lm(arch, n_layer=2)

    def grads():
        lm.zero_grad()
        out = lm(ids)
        torch.nn.functional.cross_entropy(out.logits[:, J], ids[:, J + 1]).backward()
        return {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}

    vanilla = grads()
    make_myopic(lm)
    myopic = grads()
    last = f".{lm.config.num_hidden_layers - 1}."
    attention = [n for n in myopic if last in n and any(k in n for k in ("c_attn", "query_key_value", "k_proj", "v_proj"))]
    assert attention
    for n in attention:
        torch.testing.assert_close(myopic[n], vanilla[n], atol=1e-6, rtol=1e-5)
        assert myopic[n].abs().max() > 0
    first = [n for n in myopic if ".0." in n and "weight" in n]
    assert first and all(myopic[n].abs().max() > 0 for n in first)
    # ...and the first layer's differ from vanilla: the paths through later positions are gone
    assert any(not torch.allclose(myopic[n], vanilla[n]) for n in first)


def test_unsupported_architecture_is_one_clear_error():
    from transformers import BertConfig, BertModel

    from planlm.errors import PlanlmError

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(PlanlmError, match="ATTENTION_MODULES"):
        make_myopic(bert)
