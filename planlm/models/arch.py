"""The one table of supported LM families: where each component finds its modules in a Hugging Face model.

Action adapters hook layer i's attention output projection, multi-token heads read the block list and the final norm,
myopic attention hooks layer i's attention module. All of them find those modules by path (no modeling code copied),
and all paths of one family come from one :class:`Arch` entry of :data:`ARCHITECTURES`, keyed by
``config.model_type``. Supporting a new LM family is one entry here (plus its tiny config in ``tests/test_arch.py``,
which checks every path of every entry on a real model). :func:`cache_keyword` is the other thing planlm must know
about how a Hugging Face model is called: the name of its KV-cache argument, which changed in transformers 5.24.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch.nn as nn

from planlm.errors import PlanlmError


@dataclass(frozen=True)
class Arch:
    """Module paths of one LM family, each relative to the module above it."""

    base: str
    """The base model (decoder without the LM head) under the causal LM: its ``base_model_prefix``."""
    blocks: str
    """The list of transformer blocks, under the base model."""
    attention: str
    """The attention module, under one block."""
    output_projection: str
    """The attention output projection, under the attention module: its INPUT is the attention-weighted values."""
    final_norm: str
    """The norm after the last block, under the base model."""

    # Paths from the causal LM (``AutoModelForCausalLM``).
    @property
    def blocks_path(self) -> str:
        return f"{self.base}.{self.blocks}"

    @property
    def final_norm_path(self) -> str:
        return f"{self.base}.{self.final_norm}"

    def projection_path(self, i: int) -> str:
        """Layer ``i``'s attention output projection."""
        return f"{self.blocks_path}.{i}.{self.attention}.{self.output_projection}"

    # Paths from the base model (``model.base_model``), so that an LM and its heads-less trunk share them.
    def attention_path(self, i: int) -> str:
        """Layer ``i``'s attention module, under ``model.base_model``."""
        return f"{self.blocks}.{i}.{self.attention}"


_LLAMA_LIKE = Arch(base="model", blocks="layers", attention="self_attn", output_projection="o_proj", final_norm="norm")

# config.model_type -> the family's module paths.
ARCHITECTURES: dict[str, Arch] = {
    "gpt2": Arch(base="transformer", blocks="h", attention="attn", output_projection="c_proj", final_norm="ln_f"),
    "gpt_neox": Arch(base="gpt_neox", blocks="layers", attention="attention", output_projection="dense",
                     final_norm="final_layer_norm"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
}


def architecture(model_type: str, component: str = "planlm") -> Arch:
    """The :class:`Arch` of ``model_type``, or one clear error naming the fix (``component`` says who asked)."""
    if model_type not in ARCHITECTURES:
        raise PlanlmError(
            f"{component}: model_type {model_type!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))}); "
            f"add one entry to planlm.models.arch.ARCHITECTURES mapping {model_type!r} to its module paths, e.g. "
            "Arch(base='model', blocks='layers', attention='self_attn', output_projection='o_proj', final_norm='norm')"
        )
    return ARCHITECTURES[model_type]


def cache_keyword(model: nn.Module) -> str:
    """The keyword under which ``model.forward`` takes a KV cache object: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before (5.24 still accepts it, with a FutureWarning, until 5.40)."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
