"""The planner: predicts the writing action of sentence j from the sentences before it (DESIGN.md 1.2).

It reads the frozen sentence-encoder embeddings stored by `planlm prepare` (no text is re-encoded) and returns
``planner_logits (N, K)`` over the K writing actions, row i for target sentence i. Two context modes:

- ``paper`` (default, the paper's architecture): each target sentence gets its own context, the sentences in the
  ``context_tokens`` LM tokens before it (or the last ``context_sentences`` sentences). Context embeddings +
  sinusoidal positions within the context -> Linear(d_enc, d) -> TransformerEncoder, bidirectional over the
  context -> masked mean-pool -> policy head Linear(d, K). All target sentences are one batched call, contexts
  padded to the longest. An empty context (an article's first sentence) uses a learned start vector instead of the
  pooled one.
- ``causal`` (a faster departure from the paper): one causal pass per article over ALL its sentences, with a learned
  start vector in front; the output at position j, which has seen the start vector and sentences 0..j-1, predicts
  sentence j. No context limit, no mean-pool and no position table (causal attention gives the order).

Policy-head initialisation (the paper initialises the head to the k-means centroids): the centroids live in the
encoder space (d_enc). When d == d_enc the head weight IS the centroids (the paper's case: 768 = 768). When
d != d_enc the centroids are mapped into model space by the freshly initialised input projection
(``W_head = C @ W_in^T``, no bias), so that a pooled state built from an embedding e scores action a by roughly
the same projected geometry as <e, c_a>. The head bias starts at zero.

Multi-sentence plans (``horizon`` H > 1; the paper's limitation 7.2, after Mai, Cornille, Moens 2024): the planner
also predicts the actions of the H - 1 sentences after the target, by an autoregressive rollout over its own
predictions. Offset 1 is the target itself (exactly the H = 1 planner); offset h reads the target's real context
followed by the actions of offsets 1..h-1 as extra context slots, each embedded by ``plan_embeddings`` (K x d_enc,
initialised to the k-means centroids, i.e. to the mean embedding of the sentences of that action, so a planned
sentence starts out looking like a real one) at the next sinusoidal positions, through the same input projection,
encoder and policy head. NAP trains every offset on the oracle actions (teacher forcing, one batched call for all
offsets: :meth:`Planner.teacher_forced_logits`); sampling runs the H offsets as H batched calls over all sentences x
samples (:meth:`Planner.sample_plans`), computing each distinct (target, plan prefix) once. How offset h >= 2 reads
the plan (``rollout``):

- ``context`` (default): the plan slots extend the target's real context and the whole encoder runs again over
  context + slots (the paper planner reading planned sentences like real ones; cost ~ (C + h) per row and offset).
- ``decoder`` (faster): one ``TransformerDecoderLayer`` whose learned query for offset h attends to the target's
  pooled offset-1 state followed by the embedded actions of offsets 1..h-1 (cost ~ 1 query per row and offset,
  independent of the context length).

The plan slots come on top of the context's token budget. Paper context only (the causal mode's one pass per article
cannot append per-target slots).

The previous sentence's action (issue 27: consecutive sentences often share an action, and the mean-pool over a
bidirectional context blurs the last sentence, so the paper's planner loses to an action bigram on the builtin
corpus). Both options below read the action of the LAST context sentence (the sentence right before the target) as
the nearest k-means centroid of its stored embedding, the rule that gave every sentence its action (generated
sentences included: the planner needs no input beyond the embeddings), and the train split's action-bigram table
``bigram_log_probs (K + 1, K)`` (row K: an article's first sentence), both buffers that `planlm train-planner`
fills:

- ``kind="bigram"``: no learned part at all; logits = the bigram's log P(a | previous action). Hard selection on
  its argmax is the "Bigram PA" baseline (planlm.variants): does the learned planner add anything beyond the
  previous action?
- ``bigram_prior=True``: the paper's planner with the bigram's log-probabilities added to its logits, so the
  transformer learns what the previous action does not already say (a departure from the paper; default off).

Imports torch only (STYLE.md rule 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

CONTEXT_MODES = ("paper", "causal")
KINDS = ("transformer", "bigram")
Rollout = Literal["context", "decoder"]
ROLLOUTS: tuple[str, ...] = get_args(Rollout)


@dataclass
class PlannerConfig:
    """Planner architecture and context (DESIGN.md 1.2). Defaults are the paper's."""

    num_actions: int = 0
    """K, the number of writing actions (0 = taken from the prepared corpus)."""
    encoder_dim: int = 0
    """d_enc, the size of the stored sentence embeddings (0 = taken from the prepared corpus)."""
    d_model: int | None = None
    """d, the transformer width. None = the encoder's size (the paper: 768 for all-mpnet-base-v2)."""
    n_layers: int = 1
    """Transformer encoder layers (paper: 1)."""
    n_heads: int = 2
    """Attention heads (paper: 2)."""
    ff: int = 2048
    """Feed-forward width (paper: 2048)."""
    dropout: float = 0.0
    """Dropout inside the transformer (paper: 0)."""
    context: Literal["paper", "causal"] = "paper"
    """"paper": each sentence's own context, bidirectional; "causal": one causal pass per article (faster, a
    departure from the paper)."""
    context_tokens: int = 128
    """paper context: the sentences overlapping the last this many LM tokens before the target sentence."""
    context_sentences: int | None = None
    """paper context: the last this many sentences instead of a token budget (used when no LM tokenizer is given)."""

    horizon: int = 1
    """H, the sentences planned ahead: 1 = the paper's next-action planner; H > 1 adds offsets 2..H by an
    autoregressive rollout over the planner's own (sampled, or in NAP training oracle) actions."""
    rollout: Rollout = "context"
    """H > 1: how offset h reads the planned actions before it: "context" (appended to the real context, the whole
    encoder re-run) or "decoder" (a small decoder layer over the pooled state and the plan: faster)."""
    kind: Literal["transformer", "bigram"] = "transformer"
    """transformer: the paper's planner; bigram: no learned part, the train split's action bigram given the last
    context sentence's action (the "Bigram PA" baseline; nothing to train)."""
    bigram_prior: bool = False
    """Add the train split's action-bigram log-probabilities given the last context sentence's action to the
    transformer's logits (a departure from the paper: it learns the residual over "what follows the previous
    action")."""
    bigram_alpha: float = 1.0
    """The smoothing of the bigram that kind=bigram and bigram_prior read: P(b | a) = (c(a, b) + alpha p(b)) /
    (c(a) + alpha), p the add-one unigram. 1 = train-planner's bigram baseline; larger shrinks each row more towards
    the unigram (on the builtin corpus 64 has the lowest val loss: docs/results-planner.md)."""
    last_sentences: int = 0
    """A departure from the paper: the embeddings of the last this many context sentences also reach the logits
    directly, through their own linear map, zero-initialised (so training starts from the paper's planner, or from
    the bigram prior). The paper's planner sees the previous sentence only through a mean-pooled bidirectional state,
    which blurs it (docs/results-planner.md). 0 = the paper's planner."""

    @property
    def width(self) -> int:
        return int(self.d_model or self.encoder_dim)

    def problems(self) -> list[str]:
        """Everything wrong with this config, as one-line messages (empty when it is usable)."""
        out = []
        if self.num_actions <= 0:
            out.append(f"num_actions must be positive (got {self.num_actions})")
        if self.encoder_dim <= 0:
            out.append(f"encoder_dim must be positive (got {self.encoder_dim})")
        if self.context not in CONTEXT_MODES:
            out.append(f"context must be one of {', '.join(CONTEXT_MODES)} (got {self.context!r})")
        if self.n_layers < 1 or self.n_heads < 1 or self.ff < 1:
            out.append("n_layers, n_heads and ff must be positive")
        elif self.width > 0 and self.width % self.n_heads:
            out.append(f"d_model {self.width} is not divisible by n_heads {self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.context_tokens < 1:
            out.append(f"context_tokens must be positive (got {self.context_tokens})")
        if self.context_sentences is not None and self.context_sentences < 1:
            out.append(f"context_sentences must be positive or None (got {self.context_sentences})")
        if self.kind not in KINDS:
            out.append(f"kind must be one of {', '.join(KINDS)} (got {self.kind!r})")
        elif self.kind == "bigram" and (self.bigram_prior or self.horizon > 1):
            out.append("kind=bigram is the bigram alone: no bigram_prior, horizon 1")
        elif self.bigram_prior and self.horizon > 1:
            out.append("bigram_prior conditions the next sentence only: use horizon 1")
        if not self.bigram_alpha > 0:
            out.append(f"bigram_alpha must be positive (got {self.bigram_alpha})")
        if self.last_sentences < 0:
            out.append(f"last_sentences must be 0 or more (got {self.last_sentences})")
        elif self.last_sentences and (self.kind == "bigram" or self.horizon > 1):
            out.append("last_sentences feeds the transformer planner's next-action logits: use kind transformer, "
                       "horizon 1")
        if self.horizon < 1:
            out.append(f"horizon must be at least 1 (got {self.horizon})")
        elif self.rollout not in ROLLOUTS:
            out.append(f"rollout must be one of {', '.join(ROLLOUTS)} (got {self.rollout!r})")
        elif self.horizon > 1 and self.context != "paper":
            out.append(f"horizon {self.horizon} > 1 needs context=paper (the causal pass cannot append plan slots)")
        return out


def sinusoidal_positions(num_positions: int, dim: int, device=None) -> torch.Tensor:
    """The fixed sine/cosine position table of Vaswani et al. 2017, ``(num_positions, dim)``."""
    pos = torch.arange(num_positions, dtype=torch.float32, device=device)[:, None]  # (P, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class Planner(nn.Module):
    """Next-action predictor over stored sentence embeddings; ``forward(**planner_inputs) -> (N, K)`` logits."""

    def __init__(self, config: PlannerConfig, centroids: torch.Tensor | None = None):
        super().__init__()
        problems = config.problems()
        if problems:
            raise ValueError("invalid PlannerConfig: " + "; ".join(problems))
        self.config = config
        d, d_enc, k = config.width, config.encoder_dim, config.num_actions
        if config.kind == "bigram" or config.bigram_prior:
            # filled by `planlm train-planner` (set_bigram), saved with the weights; only planners that read them
            # have them, so the paper planner's state dict is unchanged
            self.register_buffer("action_centroids", torch.zeros(k, d_enc))  # (K, d_enc)
            self.register_buffer("bigram_log_probs", torch.full((k + 1, k), -math.log(k)))  # (K + 1, K)
        if config.kind == "bigram":
            return  # no transformer: the logits are the bigram's
        self.input_proj = nn.Linear(d_enc, d)
        layer = nn.TransformerEncoderLayer(
            d_model=d, nhead=config.n_heads, dim_feedforward=config.ff, dropout=config.dropout, batch_first=True
        )
        # Nested tensors would drop padded rows in eval mode only; keep train and eval numerically the same path.
        self.encoder = nn.TransformerEncoder(layer, num_layers=config.n_layers, enable_nested_tensor=False)
        self.start = nn.Parameter(torch.randn(d) * 0.02)  # stands in for an empty context (first sentence)
        self.policy_head = nn.Linear(d, k)
        # only a planner with last_sentences has it, so the paper planner's state dict is unchanged
        self.last_head = nn.Linear(config.last_sentences * d_enc, k) if config.last_sentences else None
        if self.last_head is not None:
            nn.init.zeros_(self.last_head.weight)
            nn.init.zeros_(self.last_head.bias)
        # Offsets 2..H read the actions planned before them through these (only H > 1 has them, so an H = 1
        # planner's state dict is the paper's).
        self.plan_embeddings = nn.Parameter(torch.randn(k, d_enc) / d_enc**0.5) if config.horizon > 1 else None
        self.plan_decoder = self.offset_queries = None
        if config.horizon > 1 and config.rollout == "decoder":
            self.plan_decoder = nn.TransformerDecoderLayer(
                d_model=d, nhead=config.n_heads, dim_feedforward=config.ff, dropout=config.dropout, batch_first=True
            )
            self.offset_queries = nn.Parameter(torch.randn(config.horizon - 1, d) * 0.02)  # offsets 2..H
        if centroids is not None:
            self.init_policy_head(centroids)

    @torch.no_grad()
    def set_bigram(self, centroids: torch.Tensor, next_action_probs: torch.Tensor) -> None:
        """Store the k-means centroids ``(K, d_enc)`` and the train bigram P(next | previous) ``(K + 1, K)`` (row K:
        an article's first sentence) that ``kind="bigram"`` and ``bigram_prior`` read."""
        self.action_centroids.copy_(torch.as_tensor(centroids, dtype=torch.float32))
        self.bigram_log_probs.copy_(torch.as_tensor(next_action_probs, dtype=torch.float64).clamp_min(1e-12).log())

    def previous_actions(self, **planner_inputs) -> torch.Tensor:
        """``(N,)`` the action of the sentence right before each target (its nearest centroid), K for none (an
        article's first sentence). Same arguments as :meth:`forward`."""
        last, has_previous = self.previous_sentences(1, **planner_inputs)  # (N, 1, d_enc), (N, 1)
        c = self.action_centroids  # (K, d_enc)
        dist = (last[:, 0].float()[:, None, :] - c[None]).pow(2).sum(-1)  # (N, K) squared L2, as prepare assigns
        nearest = dist.argmin(-1)  # (N,)
        return torch.where(has_previous[:, 0], nearest, torch.full_like(nearest, self.config.num_actions))

    def last_context(self, n: int, **planner_inputs) -> torch.Tensor:
        """``(N, n, d_enc)`` the embeddings of the n sentences right before each target, nearest first (slot 0: the
        previous sentence); zeros where the article has fewer. Same inputs as :meth:`forward`."""
        picked, have = self.previous_sentences(n, **planner_inputs)
        return picked * have[..., None].to(picked.dtype)

    def previous_sentences(
        self,
        n: int,
        context_embeddings: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        article_embeddings: torch.Tensor | None = None,
        article_mask: torch.Tensor | None = None,
        target_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, n, d_enc)`` the embeddings of the n sentences right before each target, nearest first, and ``(N,
        n)`` bool, False where the article has no such sentence (that slot then holds some other row)."""
        if self.config.context == "paper":
            count = context_mask.bool().sum(1)  # (N,) real context sentences, left-aligned in article order
            back = count[:, None] - 1 - torch.arange(n, device=count.device)[None]  # (N, n): context position
            if context_embeddings.shape[1] == 0:  # no target has context: every count is 0, every slot missing
                return context_embeddings.new_zeros(len(count), n, context_embeddings.shape[-1]), back >= 0
            rows = torch.arange(len(count), device=count.device)[:, None]  # (N, 1)
            return context_embeddings[rows, back.clamp_min(0)], back >= 0
        s = article_embeddings.shape[1]
        flat = article_embeddings.reshape(-1, article_embeddings.shape[-1])  # (A * S, d_enc)
        back = torch.arange(1, n + 1, device=target_index.device)[None]  # (1, n)
        picked = flat[(target_index[:, None] - back).clamp_min(0)]  # (N, n, d_enc)
        return picked, (target_index % s)[:, None] >= back  # the article's own earlier sentences only

    def bigram_logits(self, **planner_inputs) -> torch.Tensor:
        """``(N, K)`` the train bigram's log P(a | the previous sentence's action)."""
        return self.bigram_log_probs[self.previous_actions(**planner_inputs)].float()

    @torch.no_grad()
    def init_policy_head(self, centroids: torch.Tensor) -> None:
        """Set the policy head to the k-means centroids (K, d_enc); see the module docstring for d != d_enc."""
        centroids = torch.as_tensor(centroids, dtype=torch.float32)
        k, d_enc = self.config.num_actions, self.config.encoder_dim
        if tuple(centroids.shape) != (k, d_enc):
            raise ValueError(f"centroids have shape {tuple(centroids.shape)}, expected ({k}, {d_enc})")
        if self.config.kind == "bigram":
            return  # no policy head
        weight = centroids if self.config.width == d_enc else centroids @ self.input_proj.weight.T  # (K, d)
        self.policy_head.weight.copy_(weight)
        self.policy_head.bias.zero_()
        if self.plan_embeddings is not None:
            self.plan_embeddings.copy_(centroids)

    def forward(
        self,
        context_embeddings: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        article_embeddings: torch.Tensor | None = None,
        article_mask: torch.Tensor | None = None,
        target_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Planner logits for N target sentences.

        Args:
            context_embeddings: paper mode, ``(N, C, d_enc)`` context sentences in article order, right-padded.
            context_mask: paper mode, ``(N, C)`` bool, True on real context sentences.
            article_embeddings: causal mode, ``(A, S, d_enc)`` the articles' sentences from position 0, right-padded.
            article_mask: causal mode, ``(A, S)`` bool, True on real sentences.
            target_index: causal mode, ``(N,)`` index into ``A * S``: article row * S + position of the target.

        Returns:
            ``planner_logits (N, K)``.
        """
        inputs = {"context_embeddings": context_embeddings, "context_mask": context_mask,
                  "article_embeddings": article_embeddings, "article_mask": article_mask, "target_index": target_index}
        if self.config.kind == "bigram":
            return self.bigram_logits(**inputs)  # (N, K)
        logits = self.policy_head(self.plan_states(**inputs))  # (N, K)
        if self.last_head is not None:
            last = self.last_context(self.config.last_sentences, **inputs)  # (N, n, d_enc)
            logits = logits + self.last_head(last.flatten(1).to(logits.dtype))
        if self.config.bigram_prior:
            logits = logits + self.bigram_logits(**inputs).to(logits.dtype)  # a prior on the previous action
        return logits

    def plan_states(
        self,
        context_embeddings: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        article_embeddings: torch.Tensor | None = None,
        article_mask: torch.Tensor | None = None,
        target_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The pooled state ``(N, d)`` that the policy head reads (same arguments as :meth:`forward`)."""
        if self.config.context == "paper":
            if context_embeddings is None or context_mask is None:
                raise ValueError("paper-context planner needs context_embeddings and context_mask")
            return self._paper_states(context_embeddings, context_mask.bool())
        if article_embeddings is None or target_index is None:
            raise ValueError("causal-context planner needs article_embeddings and target_index")
        return self._causal_states(article_embeddings, article_mask, target_index)

    def _paper_states(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, c, d_enc = ctx.shape
        w = self.input_proj.weight
        if c == 0:
            return self.start.expand(n, -1)
        pos = sinusoidal_positions(c, d_enc, device=ctx.device)  # (C, d_enc), position within the context
        x = self.input_proj(ctx.to(w.dtype) + pos[None].to(w.dtype))  # (N, C, d)
        has_context = mask.any(dim=1)  # (N,)
        # A row without context would attend to nothing (NaN); let it see its first slot and overwrite it below.
        attend = mask.clone()
        attend[:, 0] |= ~has_context
        h = self.encoder(x, src_key_padding_mask=~attend)  # (N, C, d), bidirectional within the context
        weights = mask.to(h.dtype)[..., None]  # (N, C, 1)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (N, d), masked mean-pool
        return torch.where(has_context[:, None], pooled, self.start.to(h.dtype).expand(n, -1))

    def _causal_states(
        self, articles: torch.Tensor, mask: torch.Tensor | None, target_index: torch.Tensor
    ) -> torch.Tensor:
        a, s, _ = articles.shape
        w = self.input_proj.weight
        if mask is not None:
            articles = articles * mask[..., None].to(articles.dtype)  # padded slots carry no values
        # No position table here: causal attention already tells the order, and sinusoids of article positions in
        # the hundreds (norm ~ sqrt(d_enc / 2)) swamp unit-norm sentence embeddings; with them this mode did not
        # learn on the builtin corpus (val NAP loss 5.62 vs 3.91 without, docs/results-planner.md).
        x = self.input_proj(articles.to(w.dtype))  # (A, S, d)
        # Shift right by one behind the start vector: slot j then holds start, sentences 0..j-1 only.
        x = torch.cat([self.start.to(x.dtype).expand(a, 1, -1), x[:, :-1]], dim=1)  # (A, S, d)
        causal = nn.Transformer.generate_square_subsequent_mask(s, device=x.device, dtype=x.dtype)  # (S, S)
        # Padding sits after every real sentence, so the causal mask alone keeps it out of real outputs.
        h = self.encoder(x, mask=causal, is_causal=True)  # (A, S, d)
        return h.reshape(a * s, -1)[target_index]  # (N, d)

    # ---- multi-sentence plans (horizon H > 1) -----------------------------------------------------------------------
    def rollout_logits(
        self,
        planner_inputs: dict[str, torch.Tensor],
        rows: torch.Tensor,
        plan_actions: torch.Tensor,
        plan_length: torch.Tensor,
        states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(R, K)`` of the next action after a target's context extended by planned actions.

        Args:
            planner_inputs: paper-context inputs of N targets (``context_embeddings (N, C, d_enc)``,
                ``context_mask (N, C)``).
            rows: ``(R,)`` which target each output row extends.
            plan_actions: ``(R, P)`` actions appended after the row's real context, in order.
            plan_length: ``(R,)`` how many of them row r appends (0 = the target's own offset-1 prediction).
            states: decoder rollout, the N targets' pooled offset-1 states ``(N, d)`` if already computed.
        """
        if self.plan_decoder is not None:
            states = self.plan_states(**planner_inputs) if states is None else states  # (N, d)
            return self.policy_head(self._decoder_states(states, rows, plan_actions, plan_length))
        ctx = planner_inputs["context_embeddings"][rows]  # (R, C, d_enc), real sentences first, then padding
        mask = planner_inputs["context_mask"][rows].bool()  # (R, C)
        r, c, d_enc = ctx.shape
        p = plan_actions.shape[1]
        if p == 0:
            return self.policy_head(self._paper_states(ctx, mask))
        length = mask.sum(1)  # (R,) real context sentences
        slot = torch.arange(p, device=ctx.device)  # (P,)
        used = slot[None] < plan_length[:, None]  # (R, P)
        emb = self.plan_embeddings[plan_actions] * used[..., None].to(ctx.dtype)  # (R, P, d_enc)
        # Plan slot t goes right after the real context, at position length + t: padding slots only are written.
        where = (length[:, None] + slot[None])[..., None].expand(r, p, d_enc)  # (R, P, d_enc)
        ext = torch.cat([ctx, ctx.new_zeros(r, p, d_enc)], 1).scatter(1, where, emb.to(ctx.dtype))  # (R, C + P, d_enc)
        ext_mask = torch.arange(c + p, device=ctx.device)[None] < (length + plan_length)[:, None]  # (R, C + P)
        return self.policy_head(self._paper_states(ext, ext_mask))

    def _decoder_states(
        self, states: torch.Tensor, rows: torch.Tensor, plan_actions: torch.Tensor, plan_length: torch.Tensor
    ) -> torch.Tensor:
        """Decoder rollout: offset ``plan_length + 1``'s query attends to [pooled state, plan slots] -> ``(R, d)``."""
        r, p = plan_actions.shape
        first = states[rows]  # (R, d), offset 1 (plan_length 0) reads it directly
        if p == 0:
            return first
        w = self.input_proj.weight
        pos = sinusoidal_positions(p + 1, self.config.encoder_dim, device=w.device)[1:]  # (P, d_enc), after the state
        slots = self.input_proj((self.plan_embeddings[plan_actions] + pos[None]).to(w.dtype))  # (R, P, d)
        memory = torch.cat([first[:, None].to(w.dtype), slots], 1)  # (R, 1 + P, d)
        hidden = torch.arange(p + 1, device=w.device)[None] > plan_length[:, None]  # (R, 1 + P): slots not planned yet
        query = self.offset_queries[(plan_length - 1).clamp_min(0)][:, None]  # (R, 1, d)
        out = self.plan_decoder(query, memory, memory_key_padding_mask=hidden)[:, 0]  # (R, d)
        return torch.where((plan_length > 0)[:, None], out, first)

    def teacher_forced_logits(self, planner_inputs: dict[str, torch.Tensor], future: torch.Tensor) -> torch.Tensor:
        """NAP logits ``(N, H, K)`` of offsets 1..H, offset h reading the oracle actions of offsets 1..h-1.

        ``future (N, H)`` holds the oracle actions of the target and the H - 1 sentences after it (negative past the
        article's end; such slots are never read by a valid offset). One encoder call for all N x H rows.
        """
        n, h = future.shape
        rows = torch.arange(n, device=future.device).repeat_interleave(h)  # (N * H,)
        length = torch.arange(h, device=future.device).repeat(n)  # (N * H,) offset - 1
        actions = future[:, : h - 1].clamp_min(0).repeat_interleave(h, dim=0)  # (N * H, H - 1)
        return self.rollout_logits(planner_inputs, rows, actions, length).view(n, h, -1)

    def sample_plans(
        self,
        planner_inputs: dict[str, torch.Tensor],
        samples: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``samples`` plans of H actions per target by the autoregressive rollout.

        Offset 1's logits are shared by every sample (same context): one call over N rows; each later offset is one
        call over the distinct (target, sampled prefix) rows of all N x M. ``temperature`` 0 takes the argmax (a
        greedy plan).

        Returns:
            ``actions (N, M, H)`` and ``logits (N, M, H, K)``, offset h's logits given the sample's offsets < h.
        """
        states = self.plan_states(**planner_inputs)  # (N, d)
        first = self.policy_head(states)  # (N, K)
        n, k = first.shape
        m, horizon = samples, self.config.horizon
        rows = torch.arange(n, device=first.device).repeat_interleave(m)  # (N * M,)
        logits = [first.repeat_interleave(m, dim=0)]  # [(N * M, K)]
        actions = [sample_actions(logits[0], temperature, generator)]  # [(N * M,)]
        for h in range(1, horizon):
            plan = torch.stack(actions, 1)  # (N * M, h)
            # Samples that drew the same prefix for the same target need one rollout row (a peaked planner draws
            # few distinct prefixes); data-dependent sizes, so one host-device sync per offset on a GPU.
            keys, inverse = torch.unique(torch.cat([rows[:, None], plan], 1), dim=0, return_inverse=True)  # (U, 1+h)
            distinct = self.rollout_logits(planner_inputs, keys[:, 0], keys[:, 1:], torch.full_like(keys[:, 0], h),
                                           states=states)  # (U, K)
            logits.append(distinct[inverse])  # (N * M, K)
            actions.append(sample_actions(logits[-1], temperature, generator))
        return torch.stack(actions, 1).view(n, m, horizon), torch.stack(logits, 1).view(n, m, horizon, k)


def sample_actions(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One action per row of ``logits (R, K)`` from softmax(logits / temperature) by the Gumbel-max trick (argmax at
    temperature 0). The uniform noise comes from ``generator`` (on its own device, then moved) or the global RNG."""
    if temperature <= 0:
        return logits.argmax(-1)
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, device=device).to(logits.device)  # (R, K)
    gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
    return (logits.detach().float() / temperature + gumbel).argmax(-1)
