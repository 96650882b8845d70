"""A plain Hugging Face causal LM (a `planlm pretrain-lm` folder) behind the call interface of a constant-selection
PlannedLM, so perplexity, head accuracy and probes run on it through the planned-LM code paths."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass
class _ConstantSelection:
    num_actions: int
    selection: str = "fixed"
    fixed_action: int = 0


class UnplannedLM(nn.Module):
    """A Hugging Face causal LM behind the call interface of a constant-selection ``PlannedLM`` (no actions)."""

    def __init__(self, lm: nn.Module, num_actions: int):
        super().__init__()
        self.lm = lm
        self.config = _ConstantSelection(num_actions=num_actions)  # the corpus's K, so validation passes
        self.planner = None

    def forward(self, input_ids, attention_mask=None, labels=None, **lm_kwargs):
        for key in ("token_slot", "oracle_actions", "planner_logits", "planner_inputs", "predicted_mask"):
            lm_kwargs.pop(key, None)  # action inputs mean nothing to an LM without adapters
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **lm_kwargs)
