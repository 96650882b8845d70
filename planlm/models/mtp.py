"""Multi-token prediction (Gloeckle et al. 2024, "Better & Faster Large Language Models via Multi-Token Prediction").

The model predicts the next n tokens from every position: a shared trunk, n heads that are each ONE transformer
block on the trunk's output, a shared final norm and a shared unembedding; the loss is the sum over heads of the
cross-entropy of token t + i from head i (section 2). Head 1 is the ordinary next-token head.

Where the trunk ends (our choice, stated): the trunk is the LM minus its LAST block, and head 1 IS that last block.
So head 1 alone is exactly the unmodified Hugging Face LM (trunk + last block + final norm + unembedding): its
logits are the LM's logits, its perplexity is the model's perplexity, and a model with n = 1 is plain next-token
training. Heads 2..n are extra blocks of the LM's own block class (found by module path, ``planlm.models.arch``; no
modeling code copied), built from the LM's config with layer indices after the LM's last one so that they keep their
own KV-cache layers.
An n-head model therefore has n - 1 more blocks than the LM it extends (`planlm mtp-compare` reports the parameter
count of every model next to its perplexity).

The heads attach to the LM like the action adapters do: a forward pre-hook on the LM's last block records the
trunk output ``(B, T, H)`` and the arguments the LM passes to its blocks (attention mask, rotary embeddings, cache),
so an extra head is called exactly as the LM calls its own blocks. Outside :meth:`MTPHeads.capturing` the hook does
nothing and the LM is the plain LM.

Memory-efficient training (section 2, memory-efficient implementation): with ``backward="sequential"`` the hook
hands the last block (head 1) a detached copy of the trunk output; every head's forward and backward then run one
after another on it, accumulating its gradient, and one backward through the trunk follows. At most one head's
logits ``(B, T, V)`` exist at a time, so peak memory does not grow with n.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from planlm.errors import PlanlmError
from planlm.models.arch import architecture

IGNORE_INDEX = -100

BACKWARDS = ("sequential", "naive")
HEAD_INITS = ("copy", "random")


@dataclass
class MTPConfig:
    """Multi-token prediction heads (Gloeckle et al. 2024). ``n_heads=1`` is ordinary next-token prediction."""

    n_heads: int = 1
    """n: head i predicts token t + i (paper: 4 for natural language; 1 = next-token prediction, no extra heads)."""
    backward: str = "sequential"
    """sequential (the paper's memory-efficient order: heads one after another on a detached trunk output, then
    one trunk backward) | naive (one backward of the summed loss; same gradients, memory grows with n)."""
    init: str = "random"
    """Initialisation of heads 2..n: random (the LM's own init, for training from scratch) | copy (of the LM's last
    block, a warm start when heads are added to a pretrained LM)."""

    def problems(self) -> list[str]:
        out = []
        if self.n_heads < 1:
            out.append(f"mtp.n_heads must be at least 1 (got {self.n_heads})")
        if self.backward not in BACKWARDS:
            out.append(f"mtp.backward must be one of {', '.join(BACKWARDS)} (got {self.backward!r})")
        if self.init not in HEAD_INITS:
            out.append(f"mtp.init must be one of {', '.join(HEAD_INITS)} (got {self.init!r})")
        return out


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, offset: int) -> torch.Tensor:
    """Mean CE of token t + offset predicted at position t: ``logits (B, T, V)``, ``labels (B, T)`` (-100 = skip).

    ``offset=1`` is Hugging Face's shifted next-token loss.
    """
    if labels.shape[1] <= offset:
        return logits.sum() * 0.0  # no target this far ahead in so short a sequence: contributes nothing
    pred = logits[:, :-offset].reshape(-1, logits.shape[-1]).float()  # (B*(T-offset), V)
    return F.cross_entropy(pred, labels[:, offset:].reshape(-1), ignore_index=IGNORE_INDEX)


@dataclass
class MTPLosses:
    """What :meth:`MTPHeads.losses` returns."""

    loss: torch.Tensor
    """Sum over heads of the per-head losses (the paper's objective); has a graph only for ``mode="naive"``."""
    head_losses: list[torch.Tensor] = field(default_factory=list)
    """Per-head mean CE, head 1 first (detached unless ``mode="naive"``)."""
    trunk_loss: torch.Tensor | None = None
    """``mode="sequential"``: a scalar whose ``.backward()`` (yours or Lightning's) writes the gradients the heads'
    backwards collected into the parameters and runs the ONE trunk backward with the gradient they accumulated on
    the trunk output. Its value is meaningless; its gradients are exactly the naive sum's."""


class MTPHeads(nn.Module):
    """Heads 2..n of a multi-token predictor for a Hugging Face causal LM, whose own last block is head 1.

    The LM is not a submodule (its weights are not in this module's state dict), as with the action adapters.
    """

    def __init__(self, lm: nn.Module, n_heads: int, init: str = "random"):
        """Build ``n_heads - 1`` blocks of the LM's block class and attach them to ``lm``.

        Args:
            lm: a Hugging Face causal LM (``AutoModelForCausalLM``) of a supported architecture.
            n_heads: n, the number of heads including head 1 (the LM's last block).
            init: "random" (the LM's ``_init_weights``) or "copy" (of the LM's last block).
        """
        super().__init__()
        if n_heads < 1:
            raise PlanlmError(f"n_heads must be at least 1 (got {n_heads})")
        if init not in HEAD_INITS:
            raise PlanlmError(f"init must be one of {', '.join(HEAD_INITS)} (got {init!r})")
        self.model_type = lm.config.model_type
        arch = architecture(self.model_type, "multi-token heads")  # the unembedding is lm.get_output_embeddings()
        self.blocks_path, self.norm_path = arch.blocks_path, arch.final_norm_path
        self.n_heads = n_heads
        blocks = _blocks(lm, self.blocks_path)
        last = blocks[-1]
        self.num_lm_layers = len(blocks)
        # Layer indices after the LM's own: each extra head keeps its own layer of a (lazily grown) DynamicCache.
        with _last_layer_type_for(lm.config, n_heads - 1):
            self.heads = nn.ModuleList(
                [type(last)(lm.config, layer_idx=self.num_lm_layers + j) for j in range(n_heads - 1)]
            )
        for head in self.heads:
            if init == "copy":
                head.load_state_dict(last.state_dict())
            else:
                head.apply(lm._init_weights)
        self.to(device=next(lm.parameters()).device, dtype=next(lm.parameters()).dtype)
        self.train(lm.training)  # new modules start in train mode: follow the LM's (dropout)
        self._lm: list[nn.Module] = []  # a list, so that the LM is not registered as a submodule
        self._handle = None
        self._capture: dict | None = None
        self.attach(lm)

    # ---- hooking into the LM ------------------------------------------------------------------------------------
    @property
    def lm(self) -> nn.Module:
        if not self._lm:
            raise PlanlmError("the MTP heads are not attached to an LM; call heads.attach(lm) first")
        return self._lm[0]

    def attach(self, lm: nn.Module) -> None:
        """Register the forward pre-hook on the last block of ``lm`` (head 1) that records the trunk output."""
        if lm.config.model_type != self.model_type:
            raise PlanlmError(f"MTP heads were built for {self.model_type!r}, the LM is {lm.config.model_type!r}")
        blocks = _blocks(lm, self.blocks_path)
        if len(blocks) != self.num_lm_layers:
            raise PlanlmError(f"MTP heads were built for an LM of {self.num_lm_layers} blocks, this one has {len(blocks)}")
        self.detach()
        self._lm = [lm]
        self._handle = blocks[-1].register_forward_pre_hook(self._hook, with_kwargs=True)

    def detach(self) -> None:
        """Remove the hook: the LM is the plain LM again."""
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._lm = None, []

    def _hook(self, module, args, kwargs):
        if self._capture is None:
            return None
        trunk = args[0]  # (B, T, H): the trunk's output, the input of head 1 (the LM's last block)
        head_input = trunk
        if self._capture["detach"] and torch.is_grad_enabled():
            head_input = trunk.detach().requires_grad_(True)  # a leaf: the heads' backwards accumulate into .grad
        self._capture.update(trunk=trunk, head_input=head_input, args=args[1:], kwargs=kwargs)
        return (head_input, *args[1:]), kwargs

    @contextlib.contextmanager
    def capturing(self, detach: bool = False) -> Iterator[dict]:
        """Within this block, a forward pass of the LM records the trunk output for :meth:`head_logits`.

        Args:
            detach: give head 1 (and later the extra heads) a detached leaf copy of the trunk output, for the
                sequential backward.
        """
        self.lm  # noqa: B018  (raises when not attached)
        previous = self._capture
        self._capture = {"detach": detach}
        try:
            yield self._capture
        finally:
            self._capture = previous

    # ---- heads --------------------------------------------------------------------------------------------------
    def final_norm(self) -> nn.Module:
        return self.lm.get_submodule(self.norm_path)

    def head_hidden(self, i: int) -> torch.Tensor:
        """Head ``i``'s (2..n) normed output ``(B, T, H)`` on the trunk output recorded by the last LM forward."""
        if not 2 <= i <= self.n_heads:
            raise PlanlmError(f"head {i} is not an extra head: this model has heads 2..{self.n_heads}")
        cap = self._capture
        if cap is None or "head_input" not in cap:
            raise PlanlmError("no trunk output recorded: run the LM inside heads.capturing() first")
        out = self.heads[i - 2](cap["head_input"], *cap["args"], **cap["kwargs"])
        out = out[0] if isinstance(out, tuple) else out  # older transformers return (hidden, ...) from blocks
        return self.final_norm()(out)

    def head_logits(self, i: int, positions: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Head ``i``'s (2..n) logits ``(B, T, V)`` (or ``(B, P, V)`` at ``positions``) through the shared unembedding."""
        h = self.head_hidden(i)
        if positions is not None:
            h = h[:, positions]
        return self.lm.get_output_embeddings()(h)

    def losses(
        self,
        run_lm: Callable[[], torch.Tensor],
        labels: torch.Tensor,
        mode: str = "naive",
        params: Iterable[torch.Tensor] | None = None,
    ) -> MTPLosses:
        """The multi-token loss: sum over heads i = 1..n of the CE of token t + i.

        Args:
            run_lm: runs the LM forward on the batch (plain or conditioned by action adapters) and returns head 1's
                logits ``(B, T, V)``; called once, inside :meth:`capturing`.
            labels: ``(B, T)`` token ids, -100 where not scored (Hugging Face convention, unshifted).
            mode: "naive" (the summed loss with its graph: backward it yourself) | "sequential" (every head's
                forward and backward run now, one head at a time; backward ``trunk_loss`` afterwards) | "eval".
            params: sequential mode: the trainable tensors whose gradients the heads' backwards collect (default:
                the LM's and the heads' parameters that require grad). Pass every trained parameter that a head's
                loss can reach (e.g. a planner feeding adapters on the last block).
        """
        if mode not in ("naive", "sequential", "eval"):
            raise PlanlmError(f"mode must be naive, sequential or eval (got {mode!r})")
        sequential = mode == "sequential" and torch.is_grad_enabled()
        if sequential:
            params = itertools.chain(self.lm.parameters(), self.parameters()) if params is None else params
            params = list({id(p): p for p in params if p.requires_grad}.values())
            param_grads: list[torch.Tensor | None] = [None] * len(params)
        trunk_grad = None
        head_losses = []
        with self.capturing(detach=sequential) as cap:
            logits = run_lm()  # (B, T, V): head 1 = the LM
            for i in range(1, self.n_heads + 1):
                if i > 1:
                    logits = self.head_logits(i)  # (B, T, V)
                loss = shifted_cross_entropy(logits, labels, i)
                del logits  # only one head's logits alive at a time
                if sequential and loss.requires_grad:
                    # Gradients are collected, not written to .grad: a trainer (Lightning) zeroes .grad between
                    # the training step and its backward. retain_graph: head 1's graph may share a non-leaf with
                    # the trunk (the planner's action weights feed adapters on both sides); each head's own graph is
                    # freed when `loss` goes.
                    grads = torch.autograd.grad(loss, [cap["head_input"], *params], retain_graph=True,
                                                allow_unused=True)
                    trunk_grad = _add(trunk_grad, grads[0])
                    param_grads = [_add(a, b) for a, b in zip(param_grads, grads[1:])]
                    loss = loss.detach()
                head_losses.append(loss)
        total = torch.stack(head_losses).sum()
        if not sequential:
            return MTPLosses(loss=total, head_losses=[l.detach() for l in head_losses])
        # One backward of trunk_loss puts exactly the collected gradients into the heads' parameters and sends the
        # gradient accumulated on the trunk output through the trunk: the naive sum's backward, split in two.
        terms = [(p * g).sum() for p, g in zip(params, param_grads) if g is not None]
        trunk = cap["trunk"]
        if trunk_grad is not None and trunk.requires_grad:
            terms.append((trunk * trunk_grad).sum())
        trunk_loss = torch.stack(terms).sum() if terms else None
        return MTPLosses(loss=total.detach(), head_losses=head_losses, trunk_loss=trunk_loss)

    @torch.no_grad()
    def accuracy_counts(self, run_lm: Callable[[], torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """``(n, 2)`` int64: per head i, [correct argmax predictions of token t + i, scored targets]."""
        out = torch.zeros(self.n_heads, 2, dtype=torch.long)
        with self.capturing():
            logits = run_lm()
            for i in range(1, self.n_heads + 1):
                if i > 1:
                    logits = self.head_logits(i)
                if labels.shape[1] > i:
                    target = labels[:, i:]  # (B, T-i)
                    scored = target != IGNORE_INDEX
                    hit = (logits[:, :-i].argmax(-1) == target) & scored
                    out[i - 1] = torch.stack([hit.sum().cpu(), scored.sum().cpu()])
        return out

    def extra_repr(self) -> str:
        return f"model_type={self.model_type!r}, n_heads={self.n_heads} (head 1 = LM block {self.num_lm_layers - 1})"


@contextlib.contextmanager
def _last_layer_type_for(config, extra: int) -> Iterator[None]:
    """While the heads are built: architectures with per-layer attention kinds (Qwen2/3: ``config.layer_types``) read
    ``layer_types[layer_idx]`` in a block's constructor; the extra heads take the last block's kind, whose attention
    mask the LM hands them."""
    types = getattr(config, "layer_types", None)
    if not types or not extra:
        yield
        return
    config.layer_types = [*types, *[types[-1]] * extra]
    try:
        yield
    finally:
        config.layer_types = types


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a + b


def _blocks(lm: nn.Module, path: str) -> nn.ModuleList:
    try:
        return lm.get_submodule(path)
    except AttributeError:
        raise PlanlmError(
            f"{type(lm).__name__} has no module {path!r}; pass the causal-LM model (AutoModelForCausalLM), "
            "not its base model"
        ) from None
