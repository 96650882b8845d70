"""Action adapters: per-layer action embeddings added before each attention output projection (DESIGN.md 1.3).

At every conditioned layer l, a vector ``r^l = W_A^l(weights @ E_A^l)`` is ADDED to the attention output after the
attention-weighted values and BEFORE the attention output projection. The adapters attach to an unmodified Hugging
Face causal LM through a forward pre-hook on that projection module, found by module path (``planlm.models.arch``),
so no modeling code is copied from transformers and the LM stays any ``AutoModelForCausalLM``.

``r^l`` is computed once per SENTENCE of the batch's sentence table, ``(N, K) @ (K, d) -> W_A -> (N, H)``, then
gathered to tokens with ``token_slot (B, T)``; fixed and uniform selection pass one ``(1, K)`` row that is broadcast
to every token.

Plans of H sentences (``horizon`` H > 1): a token reads the weights of its own sentence's action and of the H - 1
sentences after it, ``(N, H, K)``. Offset 1 goes through E_A^l exactly as for H = 1; offset h >= 2 through its own
action embeddings E_A^{l,h} (``offset_embeddings (H - 1, K, d_action)``), summed before the shared projection:
``r^l = W_A^l(w_1 @ E_A^l + sum_h w_h @ E_A^{l,h})``. planlm initialises E_A^{l,h} to zero by default, so an H-plan
model starts out as the H = 1 model and learns how much the later sentences matter (``offset_init="centroids"``
starts them at the k-means centroids like E_A^l). Weights ``(N, K)`` condition offset 1 only.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal, Sequence, get_args

import torch
import torch.nn as nn

from planlm.errors import PlanlmError
from planlm.models.arch import Arch, architecture


OffsetInit = Literal["zeros", "centroids"]
OFFSET_INITS: tuple[str, ...] = get_args(OffsetInit)
ProjectionInit = Literal["xavier", "zeros"]
PROJECTION_INITS: tuple[str, ...] = get_args(ProjectionInit)


def default_layers(num_layers: int) -> list[int]:
    """Every layer but the first two (paper, DESIGN.md 1.3)."""
    return list(range(2, num_layers))


def projection_problem(projection_init: str, gate: bool) -> str | None:
    """Why adapters with this W_A initialisation and gate cannot train, in one line (None when they can)."""
    if projection_init not in PROJECTION_INITS:
        return f"projection_init must be one of {', '.join(PROJECTION_INITS)} (got {projection_init!r})"
    if projection_init == "zeros" and gate:
        return ("projection_init zeros behind a zero gate never trains (neither gets a gradient): pass "
                "--adapters.gate false with --adapters.projection_init zeros")
    return None


def projection_input_dim(module: nn.Module) -> int:
    """Input width of an output projection: ``nn.Linear`` or GPT-2's transposed ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if hasattr(module, "nx"):  # transformers.pytorch_utils.Conv1D: weight (nx, nf)
        return int(module.nx)
    return int(module.weight.shape[0])


class LayerAdapter(nn.Module):
    """E_A^l (K x d_action) and W_A^l (d_action -> hidden) of one conditioned layer, with an optional gate."""

    def __init__(self, num_actions: int, action_dim: int, hidden_size: int, gate: bool, centroids=None,
                 horizon: int = 1, offset_init: str = "zeros", projection_init: str = "xavier"):
        super().__init__()
        init = torch.randn(num_actions, action_dim) / action_dim**0.5 if centroids is None else centroids.clone()
        self.action_embeddings = nn.Parameter(init.float())  # (K, d_action), init from k-means centroids
        # Offsets 2..H of a plan (horizon > 1 only: an H = 1 adapter's state dict is the paper's).
        self.offset_embeddings = None
        if horizon > 1:
            start = init.float()[None].repeat(horizon - 1, 1, 1) if offset_init == "centroids" else \
                torch.zeros(horizon - 1, num_actions, action_dim)
            self.offset_embeddings = nn.Parameter(start)  # (H - 1, K, d_action)
        self.proj = nn.Linear(action_dim, hidden_size)
        # xavier-normal weight, zero bias: planlm's choice (the paper's text gives no initialisation for W_A).
        # "zeros" (a departure): W_A = 0 too, so r = 0 and the LM starts as the base LM without a gate; the bias
        # (one vector per layer) then learns what every action shares and W_A only what the actions' data supports.
        (nn.init.zeros_ if projection_init == "zeros" else nn.init.xavier_normal_)(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        # A zero gate makes the planned LM start as the exact base LM (an option; the paper has no gate).
        self.gate = nn.Parameter(torch.zeros(())) if gate else None

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        """``weights (N, K)`` or a plan's ``(N, H, K)`` -> ``r (N, hidden)``: one vector per sentence (or one row
        for fixed / uniform)."""
        if weights.dim() == 3:
            w = weights.to(self.action_embeddings.dtype)
            mixed = w[:, 0] @ self.action_embeddings  # (N, d_action), offset 1
            if self.offset_embeddings is not None and w.shape[1] > 1:
                later = w[:, 1 : 1 + self.offset_embeddings.shape[0]]  # (N, H - 1, K)
                mixed = mixed + torch.einsum("nhk,hkd->nd", later, self.offset_embeddings[: later.shape[1]])
        else:
            mixed = weights.to(self.action_embeddings.dtype) @ self.action_embeddings  # (N, d_action)
        r = self.proj(mixed)  # (N, H)
        return r * self.gate if self.gate is not None else r


class ActionAdapters(nn.Module):
    """Action adapters for a Hugging Face causal LM; :meth:`attach` hooks them into the LM's attention layers.

    The LM is not a submodule (its weights are not in this module's state dict). Use :meth:`conditioned` around a
    forward pass of the LM to give the per-sentence action weights and each token's sentence slot.
    """

    def __init__(
        self,
        model_type: str,
        num_layers: int,
        hidden_size: int,
        num_actions: int,
        action_dim: int,
        layers: Sequence[int] | None = None,
        gate: bool = False,
        centroids: torch.Tensor | None = None,
        horizon: int = 1,
        offset_init: str = "zeros",
        projection_init: str = "xavier",
    ):
        """Build adapters for an LM of the given shape.

        Args:
            model_type: the LM's ``config.model_type`` (a key of ``planlm.models.arch.ARCHITECTURES``).
            num_layers: number of transformer layers of the LM.
            hidden_size: input width of the attention output projection.
            num_actions: K.
            action_dim: width of the action embeddings (the sentence encoder's, when initialised from centroids).
            layers: conditioned layer indices (negative counts from the end); None = every layer but the first two.
            gate: multiply each layer's r by a zero-initialised trainable scalar.
            centroids: ``(K, action_dim)`` k-means centroids initialising every E_A^l.
            horizon: H, the sentences of a plan each token reads (1 = the paper's adapters).
            offset_init: "zeros" or "centroids": how the action embeddings of offsets 2..H start.
            projection_init: "xavier" (planlm's default) or "zeros": how every W_A^l starts; zeros needs no gate
                (behind a zero gate a zero W_A gets no gradient, and neither does the gate).
        """
        super().__init__()
        self.arch = architecture(model_type, "action adapters")
        self.model_type = model_type
        self.num_actions, self.action_dim, self.hidden_size = num_actions, action_dim, hidden_size
        if horizon < 1 or offset_init not in OFFSET_INITS:
            raise PlanlmError(f"horizon must be >= 1 and offset_init one of {', '.join(OFFSET_INITS)} "
                              f"(got {horizon}, {offset_init!r})")
        if problem := projection_problem(projection_init, gate):
            raise PlanlmError(problem)
        self.horizon = horizon
        layers = default_layers(num_layers) if layers is None else [l % num_layers if l < 0 else l for l in layers]
        bad = [l for l in layers if not 0 <= l < num_layers]
        if bad:
            raise PlanlmError(f"conditioned layers {bad} do not exist: the LM has layers 0..{num_layers - 1}")
        if not layers:
            raise PlanlmError(
                f"no conditioned layers: the LM has {num_layers} layers and the default skips the first two; "
                "pass layers explicitly"
            )
        if centroids is not None:
            centroids = torch.as_tensor(centroids, dtype=torch.float32)
            if tuple(centroids.shape) != (num_actions, action_dim):
                raise PlanlmError(
                    f"centroids have shape {tuple(centroids.shape)}, the adapters need ({num_actions}, {action_dim})"
                )
        self.layers = sorted(set(int(l) for l in layers))
        self.adapters = nn.ModuleDict(
            {str(l): LayerAdapter(num_actions, action_dim, hidden_size, gate, centroids, horizon, offset_init,
                                  projection_init)
             for l in self.layers}
        )
        self._handles: list = []
        self._weights: torch.Tensor | None = None
        self._token_slot: torch.Tensor | None = None
        self._capturing = False
        self.captured: dict[int, dict[str, torch.Tensor]] = {}

    @classmethod
    def for_lm(cls, lm: nn.Module, num_actions: int, action_dim: int, **kwargs) -> "ActionAdapters":
        """Adapters shaped for ``lm`` (layer count and projection width read from the model) and attached to it."""
        model_type = lm.config.model_type
        num_layers = lm.config.num_hidden_layers
        hidden = projection_input_dim(_get_projection(lm, architecture(model_type, "action adapters"), 0))
        adapters = cls(model_type, num_layers, hidden, num_actions, action_dim, **kwargs)
        adapters.attach(lm)
        return adapters

    # ---- hooking into the LM ------------------------------------------------------------------------------------
    def attach(self, lm: nn.Module) -> None:
        """Register a forward pre-hook on each conditioned layer's attention output projection of ``lm``."""
        if lm.config.model_type != self.model_type:
            raise PlanlmError(f"adapters were built for {self.model_type!r}, the LM is {lm.config.model_type!r}")
        self.detach()
        for l in self.layers:
            module = _get_projection(lm, self.arch, l)
            if projection_input_dim(module) != self.hidden_size:
                raise PlanlmError(
                    f"layer {l} projection input is {projection_input_dim(module)} wide, "
                    f"the adapters expect {self.hidden_size}"
                )
            self._handles.append(module.register_forward_pre_hook(self._make_hook(l)))

    def detach(self) -> None:
        """Remove the hooks: the LM is the plain base LM again."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _make_hook(self, layer: int):
        adapter = self.adapters[str(layer)]

        def hook(module, args):
            if self._weights is None:  # not inside `conditioned(...)`: the plain base LM
                return None
            x = args[0]  # (B, T, H): attention-weighted values, heads merged, before the output projection
            r = adapter(self._weights).to(x.dtype)  # (N, H), once per sentence
            if self._token_slot is None:
                r_tok = r.view(1, 1, -1)  # fixed / uniform: one vector for every token
            else:
                # slot -1 = "no action" (zero vector): point it at an extra zero row
                r = torch.cat([r, r.new_zeros(1, r.shape[-1])], dim=0)  # (N + 1, H)
                slot = torch.where(self._token_slot < 0, r.shape[0] - 1, self._token_slot)
                r_tok = r[slot]  # (B, T, H)
            post = x + r_tok  # (B, T, H)
            if self._capturing:
                self.captured[layer] = {"pre": r_tok.detach().expand_as(x), "post": post.detach()}
            return (post, *args[1:])

        return hook

    @contextlib.contextmanager
    def conditioned(self, weights: torch.Tensor, token_slot: torch.Tensor | None = None) -> Iterator[None]:
        """Within this block, forward passes of the attached LM are conditioned on the given actions.

        Args:
            weights: ``(N, K)`` per-sentence action weights (``selection.action_weights``), ``(1, K)``, or a plan's
                per-offset weights ``(N, H, K)`` (``selection.plan_weights``).
            token_slot: ``(B, T)`` row of ``weights`` each token carries (-1: none); None broadcasts row 0.
        """
        if token_slot is None and weights.shape[0] != 1:
            raise PlanlmError(f"{weights.shape[0]} weight rows but no token_slot saying which row each token uses")
        if not self._handles:
            raise PlanlmError("the adapters are not attached to an LM; call adapters.attach(lm) first")
        previous = (self._weights, self._token_slot)
        self._weights, self._token_slot = weights, token_slot
        try:
            yield
        finally:
            self._weights, self._token_slot = previous

    @contextlib.contextmanager
    def capturing(self) -> Iterator[dict[int, dict[str, torch.Tensor]]]:
        """Within this block, each conditioned layer stores ``captured[layer] = {"pre", "post"}`` (detached).

        ``pre`` is r^l at every token ``(B, T, H)`` (the "pre-merge" representation), ``post`` the projection input
        after the addition ``(B, T, H)`` ("post-merge"). Used by the linear probes (DESIGN.md 1.7).
        """
        self.captured = {}
        self._capturing = True
        try:
            yield self.captured
        finally:
            self._capturing = False

    def extra_repr(self) -> str:
        return f"model_type={self.model_type!r}, layers={self.layers}, K={self.num_actions}, d_action={self.action_dim}"


def _get_projection(lm: nn.Module, arch: Arch, layer: int) -> nn.Module:
    path = arch.projection_path(layer)
    try:
        return lm.get_submodule(path)
    except AttributeError:
        raise PlanlmError(
            f"{type(lm).__name__} has no module {path!r}; pass the causal-LM model "
            "(AutoModelForCausalLM), not its base model"
        ) from None
