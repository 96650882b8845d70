"""Myopic attention (Wu, Morris, Levine 2024, "Do language models plan ahead for future tokens?", section 4).

A myopic model cannot learn to *pre-cache*: the loss at position j sends no gradient into the hidden states of any
earlier position i < j. At every attention layer, the off-diagonal terms (query j, key/value i < j) use keys and values
computed from a DETACHED copy of the layer input with the live W_K / W_V, and the diagonal term (query j, key/value j)
uses the live key/value. W_K / W_V still receive gradient from every term (weights train from all positions); the
residual streams of earlier positions receive none from later losses. The forward values equal the vanilla model's.

How it attaches to an unmodified Hugging Face causal LM (no modeling code copied):

1. a forward pre-hook on each attention module (found by module path, ``planlm.models.arch``) runs the module once
   more on the detached layer input, without the KV cache (the live pass alone writes it); the attention interface
   function of that pass records the keys/values the model's own code produced from it (after its RoPE, q/k norms,
   head split: whatever the architecture does) and stops the pass;
2. the live pass calls the same interface function, registered with transformers as ``"myopic"``, which attends over
   ``2T`` keys ``[k_detached ; k_live]`` with a mask that allows, for query j, the detached keys i < j and the live key
   j only, and delegates the arithmetic to transformers' SDPA attention. The softmax runs over the same T scores as
   the vanilla model's, so the output is the same; only the autograd graph differs.

Outside autograd (``torch.no_grad``: evaluation, generation) nothing changes: plain SDPA attention, KV cache included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from transformers import AttentionInterface, AttentionMaskInterface, Cache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from planlm.errors import PlanlmError
from planlm.models.arch import architecture

MYOPIC = "myopic"


class _Captured(Exception):
    """Ends the detached pass once its keys/values are recorded (the output projection need not run)."""


@dataclass
class _State:
    """Per attention module: whether the current forward is myopic, and the detached pass's keys/values."""

    capturing: bool = False
    active: bool = False
    kv: tuple | None = field(default=None, repr=False)


def myopic_attention_forward(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """The ``"myopic"`` attention interface: query ``(B, H, T, hd)``, key/value ``(B, H_kv, T, hd)``."""
    state: _State | None = getattr(module, "_myopic_state", None)
    if state is None or not state.active:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if state.capturing:
        state.kv = (key, value)  # computed from the detached layer input with the live weights
        raise _Captured
    key_detached, value_detached = state.kv
    state.kv, state.active = None, False
    t = query.shape[-2]
    if key.shape[-2] != t or key_detached.shape[-2] != t:
        raise PlanlmError("myopic attention trains on whole sequences: a KV cache holding earlier tokens is not "
                          "supported while gradients are enabled (run generation under torch.no_grad)")
    if attention_mask is None:  # SDPA's causal shortcut: the mask is the plain causal one
        allowed = torch.ones(t, t, dtype=torch.bool, device=query.device).tril()[None, None]  # (1, 1, T, T)
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask[..., -t:]  # (B, 1, T, T)
    else:  # additive float mask: 0 where allowed
        allowed = attention_mask[..., -t:] == 0
    diagonal = torch.eye(t, dtype=torch.bool, device=query.device)  # (T, T)
    # (B, 1, T, 2T): detached keys strictly before the query, the live key at the query's own position
    mask = torch.cat([allowed & ~diagonal, allowed & diagonal], dim=-1)
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(
        module, query, torch.cat([key_detached, key], dim=-2), torch.cat([value_detached, value], dim=-2),  # 2T keys
        mask, is_causal=False, **kwargs,
    )


def _register() -> None:
    AttentionInterface.register(MYOPIC, myopic_attention_forward)
    AttentionMaskInterface.register(MYOPIC, sdpa_mask)  # the masks SDPA attention reads


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Every layer's attention module of a supported HF model (LM or trunk), or a clear error naming the fix."""
    arch = architecture(model.config.model_type, "myopic attention")
    base = model.base_model  # so that the heads-less trunk (GPT2Model) and the LM (GPT2LMHeadModel) share one path
    return [base.get_submodule(arch.attention_path(i)) for i in range(model.config.num_hidden_layers)]


def _detached_pass(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook: record the keys/values of the detached layer input before the live pass runs."""
    state: _State = module._myopic_state
    state.active = torch.is_grad_enabled()
    if not state.active:
        return None
    # The live pass alone may write the KV cache: the detached pass gets none. Found by its type (the model's own
    # Cache object), not by the argument's name, which differs between architectures and transformers versions.
    detached_args = [None if isinstance(a, Cache) else a for a in args]
    detached_kwargs = {k: None if isinstance(v, Cache) else v for k, v in kwargs.items()}
    if "hidden_states" in detached_kwargs:
        detached_kwargs["hidden_states"] = detached_kwargs["hidden_states"].detach()
    else:
        detached_args[0] = detached_args[0].detach()
    state.capturing = True
    try:
        module.forward(*detached_args, **detached_kwargs)
    except _Captured:
        pass
    finally:
        state.capturing = False
    if state.kv is None:
        state.active = False
        raise PlanlmError(f"myopic attention: {type(module).__name__} did not call transformers' attention interface")
    return None


class Myopia:
    """Myopic attention attached to a Hugging Face model; :meth:`remove` restores the vanilla model exactly.

    Use :func:`make_myopic`. While attached, ``model.config._attn_implementation`` is ``"myopic"``; remove it before
    ``save_pretrained`` (the saved folder must load without planlm), which :meth:`remove` does.
    """

    def __init__(self, model: nn.Module):
        _register()
        self.model = model
        self.modules = attention_modules(model)
        self.previous = model.config._attn_implementation
        self.handles = []
        for m in self.modules:
            m._myopic_state = _State()
            self.handles.append(m.register_forward_pre_hook(_detached_pass, with_kwargs=True))
        model.set_attn_implementation(MYOPIC)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for m in self.modules:
            del m._myopic_state
        self.handles = []
        self.model.set_attn_implementation(self.previous or "sdpa")


def make_myopic(model: nn.Module) -> Myopia:
    """Make every attention layer of ``model`` myopic (in place); returns the handle whose ``remove()`` undoes it."""
    return Myopia(model)


class SequenceRegressor(nn.Module):
    """A GPT-2 trunk between linear input and output layers: ``(B, T, d_in)`` -> ``(B, T)`` (the D_p model)."""

    def __init__(self, d_in: int = 2, n_layer: int = 2, n_head: int = 4, n_embd: int = 128, n_positions: int = 64):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.inp = nn.Linear(d_in, n_embd)
        self.trunk = GPT2Model(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                                          vocab_size=1, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0,
                                          embd_pdrop=0.0, attn_pdrop=0.0))
        self.out = nn.Linear(n_embd, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.trunk(inputs_embeds=self.inp(inputs), use_cache=False).last_hidden_state  # (B, T, n_embd)
        return self.out(hidden).squeeze(-1)  # (B, T)
