"""Self-speculative decoding with multi-token heads (Gloeckle et al. 2024 section 3.2; Stern et al. 2018's blockwise
parallel decoding), and the `planlm generate` path for LMs from `planlm pretrain-lm` (with or without MTP heads).

One decoding step: the token ``y`` chosen from head 1 and the drafts ``d_2..d_n`` of heads 2..n (all read at the
same position) go through the model in ONE forward pass with the KV cache. Head 1's outputs at those positions
verify the drafts left to right; the first rejected draft is replaced by head 1's own choice there, and when all are
accepted head 1's prediction after the last one comes for free. The cache is cut back to the accepted tokens
(heads 2..n keep their own cache layers, cut with the rest), and the heads' outputs at the last accepted position
are the next drafts. Each pass thus yields 1 + (accepted drafts) tokens: ``tokens_per_forward`` below (1 for plain
decoding), the "acceptance length" of the paper.

Greedy: a draft is accepted iff it is head 1's argmax, so the output is exactly plain greedy decoding with head 1.
Sampling: the standard speculative acceptance rule (Leviathan et al. 2023; Chen et al. 2023): a draft ``d ~ q`` is
kept with probability ``min(1, p(d) / q(d))``, and on rejection a token is drawn from ``norm(max(0, p - q))``, so
every emitted token follows head 1's distribution ``p`` (after the same temperature / top-p) exactly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from planlm.errors import PlanlmError


@dataclass
class DecodeStats:
    """Counts of one decoding run."""

    new_tokens: int = 0
    forward_passes: int = 0
    """Forward passes of the model, the prompt's included."""
    drafts_proposed: int = 0
    drafts_accepted: int = 0
    seconds: float = 0.0
    accepted_by_head: list[int] = field(default_factory=list)
    """Accepted drafts of heads 2..n (index 0 = head 2)."""

    @property
    def tokens_per_forward(self) -> float:
        """Mean tokens emitted per forward pass (1 for plain decoding): the acceptance length."""
        return self.new_tokens / max(self.forward_passes, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)

    def to_json(self) -> dict:
        return {**asdict(self), "tokens_per_forward": self.tokens_per_forward,
                "tokens_per_second": self.tokens_per_second}


def token_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """``logits (..., V)`` -> sampling distribution ``(..., V)`` float32 after temperature and nucleus (top-p)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the token that crosses it included)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, draft: int, generator: torch.Generator) -> tuple[int, bool]:
    """The speculative acceptance rule for one draft token ``draft ~ q``; ``p``, ``q``: ``(V,)`` distributions.

    Returns ``(token, accepted)``: the draft with probability ``min(1, p[d] / q[d])``, else a token from the residual
    ``norm(max(0, p - q))``. The emitted token is distributed as ``p`` whatever ``q`` is.
    """
    u = torch.rand((), generator=generator)
    if u * q[draft] <= p[draft]:  # u < p/q without dividing by a zero q
        return draft, True
    residual = (p - q).clamp_min(0.0)
    total = residual.sum()
    if total <= 0:  # p == q up to rounding: the rejection was a rounding artefact
        residual, total = p, p.sum()
    return int(torch.multinomial(residual / total, 1, generator=generator)), False


class _Picker:
    """Head-1 choice and draft choice under greedy (temperature 0) or sampling."""

    def __init__(self, temperature: float, top_p: float, seed: int):
        self.greedy = temperature == 0
        self.temperature, self.top_p = temperature, top_p
        self.generator = torch.Generator().manual_seed(seed)

    def probs(self, logits: torch.Tensor) -> torch.Tensor | None:  # (V,) -> (V,) on the CPU, None when greedy
        return None if self.greedy else token_probs(logits.cpu(), self.temperature, self.top_p)

    def pick(self, logits: torch.Tensor, probs: torch.Tensor | None) -> int:
        if self.greedy:
            return int(logits.argmax())
        return int(torch.multinomial(probs, 1, generator=self.generator))


@torch.inference_mode()
def decode(
    lm,
    prompt_ids: list[int],
    max_new_tokens: int = 64,
    heads=None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_id: int | None = None,
    draft_heads: int | None = None,
) -> tuple[list[int], DecodeStats]:
    """Decode from a Hugging Face causal LM with the KV cache; self-speculative when ``heads`` (n >= 2) are given.

    Args:
        lm: the LM (head 1), in eval mode.
        prompt_ids: the prompt's token ids (at least one).
        max_new_tokens: stop after this many new tokens.
        heads: :class:`planlm.models.mtp.MTPHeads` attached to ``lm``; None (or n = 1) decodes plainly.
        temperature: 0 = greedy; otherwise sampling from head 1's distribution at this temperature.
        top_p: nucleus sampling threshold (applied to head 1 and to the drafts alike).
        seed: seed of the sampler.
        eos_token_id: stop after this token.
        draft_heads: use only heads 2..(draft_heads + 1) as drafters (default: all n - 1); the others do not run.

    Returns:
        The new token ids and the :class:`DecodeStats`.
    """
    from transformers import DynamicCache

    from planlm.models.arch import cache_keyword

    if not prompt_ids:
        raise PlanlmError("decoding needs a prompt of at least one token (e.g. the bos token)")
    speculative = heads is not None and heads.n_heads > 1 and draft_heads != 0
    n_draft = 0 if not speculative else min(heads.n_heads - 1, draft_heads or heads.n_heads - 1)
    device = next(lm.parameters()).device
    picker = _Picker(temperature, top_p, seed)
    stats = DecodeStats(accepted_by_head=[0] * n_draft)
    cache = DynamicCache()  # no config: it grows a layer for every extra head's layer index
    cache_kw = cache_keyword(lm)
    t0 = time.perf_counter()

    def forward(tokens: list[int]):
        """One pass over ``tokens``: head-1 logits ``(k, V)`` and heads 2..n's normed states ``[(k, H)]``."""
        ids = torch.tensor([tokens], device=device)  # (1, k)
        stats.forward_passes += 1
        if not speculative:
            return lm(input_ids=ids, use_cache=True, **{cache_kw: cache}).logits[0], []
        with heads.capturing():
            logits = lm(input_ids=ids, use_cache=True, **{cache_kw: cache}).logits[0]  # (k, V)
            # every extra head runs on all k positions: its cache layer must hold them all
            hidden = [heads.head_hidden(i)[0] for i in range(2, n_draft + 2)]  # n_draft x (k, H)
        return logits, hidden

    def drafts_at(hidden: list[torch.Tensor], pos: int) -> tuple[list[int], list[torch.Tensor | None]]:
        unembed = lm.get_output_embeddings()
        drafts, qs = [], []
        for h in hidden:
            logits = unembed(h[pos])  # (V,)
            q = picker.probs(logits)
            drafts.append(picker.pick(logits, q))
            qs.append(q)
        return drafts, qs

    logits, hidden = forward(list(prompt_ids))
    p = picker.probs(logits[-1])
    token = picker.pick(logits[-1], p)
    drafts, qs = drafts_at(hidden, -1)
    out: list[int] = []
    while True:
        out.append(token)
        if token == eos_token_id or len(out) >= max_new_tokens:
            break
        drafts, qs = drafts[: max_new_tokens - len(out)], qs[: max_new_tokens - len(out)]
        logits, hidden = forward([token, *drafts])  # (k, V): position j verifies drafts[j]
        stats.drafts_proposed += len(drafts)
        accepted, stop = 0, False
        for j, d in enumerate(drafts):
            p = picker.probs(logits[j])
            if picker.greedy:
                token = int(logits[j].argmax())
                ok = token == d
            else:
                token, ok = accept_or_resample(p, qs[j], d, picker.generator)
            if not ok:
                break
            accepted += 1
            stats.accepted_by_head[j] += 1
            out.append(d)
            if d == eos_token_id:
                stop = True
                break
        else:  # every draft accepted: head 1's prediction after the last one comes with the same pass
            token = picker.pick(logits[len(drafts)], picker.probs(logits[len(drafts)]))
        stats.drafts_accepted += accepted
        if stop:
            break
        rejected = len(drafts) - accepted
        if rejected:
            cache.crop(-rejected)  # drop the rejected drafts' keys and values from every layer, heads' included
        drafts, qs = drafts_at(hidden, accepted)
    out = out[:max_new_tokens]
    stats.new_tokens = len(out)
    stats.seconds = time.perf_counter() - t0
    return out, stats


