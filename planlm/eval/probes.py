"""Linear probes: does a representation know the token d positions ahead? (DESIGN.md 1.7; the paper's Figure 3.)

At each conditioned layer two representations are probed: "pre-merge", the adapter output r (what the action adds),
and "post-merge", the attention output after r was added (what the layer passes on). For each distance d = 1..8 a
multinomial logistic regression maps the representation at position t to the token at t + d (d = 1 is the next
token). Held-out accuracy is reported next to the majority-class baseline: a probe is informative only above it.

To keep thousands of output classes cheap, the target vocabulary is the ``vocab_size`` most frequent target tokens
of the probe's train split plus one "other" class for the rest; predicting "other" for a rare token counts as
correct, for the probe and for the baseline alike. Train and held-out positions come from different sequences (the
batch rows), so a probe cannot score by memorising a neighbouring position of the same text.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from planlm.errors import PlanlmError, raise_if_problems

KINDS = ("pre", "post")


@dataclass
class ProbeConfig:
    distances: list[int] = field(default_factory=lambda: list(range(1, 9)))
    """Token distances probed: the representation at t predicts the token at t + d (paper: 1..8)."""
    vocab_size: int = 1000
    """Most frequent target tokens kept as classes; the rest share one "other" class."""
    held_out: float = 0.2
    """Fraction of sequences (batch rows) held out for accuracy."""
    max_positions: int = 20000
    """Train positions per probe at most (a random subsample), to bound the cost of each fit."""
    l2: float = 1e-4
    """L2 penalty on the probe weights (features are standardised first)."""
    max_iter: int = 100
    """L-BFGS iterations per probe (full batch)."""
    seed: int = 0
    device: str | None = None
    """Device for the fits; None = CUDA when available, else CPU."""


@dataclass
class ProbeResult:
    accuracy: float
    baseline: float
    """Held-out accuracy of always predicting the most frequent train class."""
    n_train: int
    n_held_out: int
    num_classes: int


@dataclass
class ProbeRow:
    layer: int
    kind: str
    distance: int
    accuracy: float
    baseline: float
    n_train: int
    n_held_out: int


def _split(n: int, groups: np.ndarray | None, held_out: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of held-out positions: whole groups when there are at least two, else single positions."""
    if groups is not None:
        unique = np.unique(groups)
        if len(unique) >= 2:
            n_held = min(len(unique) - 1, max(1, int(round(held_out * len(unique)))))
            held_groups = rng.permutation(unique)[:n_held]
            return np.isin(groups, held_groups)
    n_held = min(n - 1, max(1, int(round(held_out * n))))
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:n_held]] = True
    return mask


def fit_probe(features, targets, groups=None, config: ProbeConfig = ProbeConfig()) -> ProbeResult:
    """Fit one linear probe ``features (N, H) -> targets (N,)`` and score it on held-out positions.

    Args:
        features: representations, one row per position (numpy or torch).
        targets: the token id each row should predict.
        groups: optional sequence id per row; train and held-out never share a group.
        config: probe settings.
    """
    import torch

    x = features if torch.is_tensor(features) else torch.as_tensor(np.asarray(features, dtype=np.float32))
    x = x.detach().float().cpu()
    y = np.asarray(targets.cpu() if torch.is_tensor(targets) else targets, dtype=np.int64)
    g = None if groups is None else np.asarray(groups.cpu() if torch.is_tensor(groups) else groups)
    if x.ndim != 2 or len(x) != len(y) or (g is not None and len(g) != len(y)):
        raise PlanlmError(f"probe: features must be (N, H) with one target (and group) per row; got features "
                          f"{tuple(x.shape)}, targets {y.shape}" + ("" if g is None else f", groups {g.shape}"))
    if len(y) < 2:
        raise PlanlmError(f"probe: needs at least 2 positions, got {len(y)}")
    rng = np.random.default_rng(config.seed)
    held = _split(len(y), g, config.held_out, rng)
    train_idx, held_idx = np.flatnonzero(~held), np.flatnonzero(held)
    if len(train_idx) > config.max_positions:
        train_idx = np.sort(rng.choice(train_idx, config.max_positions, replace=False))

    # Classes: the most frequent train targets, then "other" (index len(kept)) for everything else.
    tokens, counts = np.unique(y[train_idx], return_counts=True)
    kept = tokens[np.argsort(-counts, kind="stable")[: config.vocab_size]]
    lookup = {int(t): i for i, t in enumerate(kept)}
    other = len(kept)
    classes = np.array([lookup.get(int(t), other) for t in y], dtype=np.int64)
    num_classes = other + 1
    majority = np.bincount(classes[train_idx], minlength=num_classes).argmax()
    baseline = float((classes[held_idx] == majority).mean())

    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x_train = x[train_idx].to(device)  # (n, H)
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)  # standardise: one l2 fits every layer's scale
    x_train = (x_train - mean) / std
    y_train = torch.as_tensor(classes[train_idx], device=device)
    weight = torch.zeros(x.shape[1], num_classes, device=device, requires_grad=True)  # (H, C)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)  # (C,)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=config.max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = x_train @ weight + bias  # (n, C)
        loss = torch.nn.functional.cross_entropy(logits, y_train) + config.l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        x_held = (x[held_idx].to(device) - mean) / std  # (m, H)
        predicted = (x_held @ weight + bias).argmax(-1).cpu().numpy()
    accuracy = float((predicted == classes[held_idx]).mean())
    return ProbeResult(accuracy=accuracy, baseline=baseline, n_train=len(train_idx), n_held_out=len(held_idx),
                       num_classes=num_classes)


def run_probes(
    features: Mapping[int, Mapping[str, object]],
    input_ids,
    attention_mask=None,
    config: ProbeConfig = ProbeConfig(),
    progress: bool = True,
) -> list[ProbeRow]:
    """Probe every (layer, kind, distance): ``features[layer][kind]`` is ``(B, T, H)``, ``input_ids`` ``(B, T)``.

    Args:
        features: ``{layer: {"pre": (B, T, H), "post": (B, T, H)}}`` (either kind may be missing).
        input_ids: the tokens the features were computed on, ``(B, T)``.
        attention_mask: ``(B, T)``, 0 at padding; positions whose source or target is padding are skipped.
        config: probe settings.
        progress: show a progress bar.

    Returns:
        One :class:`ProbeRow` per (layer, kind, distance), sorted in that order.
    """
    import torch
    from tqdm.auto import tqdm

    ids = torch.as_tensor(input_ids).cpu()
    if ids.ndim != 2:
        raise PlanlmError(f"probe: input_ids must be (B, T), got {tuple(ids.shape)}")
    b, t = ids.shape
    if attention_mask is None:
        mask = torch.ones(b, t, dtype=torch.bool)
    else:
        mask = torch.as_tensor(attention_mask).cpu().bool()
    problems = []
    for layer, kinds in features.items():
        for kind, f in kinds.items():
            if kind not in KINDS:
                problems.append(f"layer {layer}: unknown kind {kind!r} (expected one of {KINDS})")
            elif tuple(f.shape[:2]) != (b, t) or len(f.shape) != 3:
                problems.append(f"layer {layer} {kind}: features {tuple(f.shape)} do not match input_ids {(b, t)}")
    bad = [d for d in config.distances if not 1 <= d < t]
    if bad:
        problems.append(f"distances {bad} do not fit sequences of {t} tokens (need 1 <= d < T)")
    raise_if_problems(problems, "probe")

    jobs = [(layer, kind, d) for layer in sorted(features) for kind in KINDS if kind in features[layer]
            for d in config.distances]
    rows = []
    rows_of_batch = torch.arange(b).unsqueeze(1).expand(b, t)  # (B, T): the group of each position
    for layer, kind, d in tqdm(jobs, desc="probes", disable=not progress):
        valid = mask[:, :-d] & mask[:, d:]  # (B, T - d): source and target both real tokens
        f = torch.as_tensor(features[layer][kind])[:, :-d]  # (B, T - d, H)
        result = fit_probe(f[valid], ids[:, d:][valid], rows_of_batch[:, :-d][valid], config)
        rows.append(ProbeRow(layer=int(layer), kind=kind, distance=d, accuracy=result.accuracy,
                             baseline=result.baseline, n_train=result.n_train, n_held_out=result.n_held_out))
    return rows


def rows_to_json(rows: Iterable[ProbeRow]) -> list[dict]:
    """Rows as the list of dicts that ``probes.json`` holds (read back by ``planlm report``)."""
    return [dataclasses.asdict(r) for r in rows]


@dataclass
class ProbeFeatures:
    features: dict[int, dict[str, object]]  # {layer: {"pre": (B, T, H), "post": (B, T, H)}} float32 CPU tensors
    input_ids: object  # (B, T)
    attention_mask: object  # (B, T)


def _to(value, device):
    if hasattr(value, "to"):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def collect_probe_features(planned_lm, batches: Iterable[Mapping], max_batches: int | None = None,
                           progress: bool = True) -> ProbeFeatures:
    """Run ``planned_lm`` over ``batches`` and keep the pre-/post-merge representations of every conditioned layer.

    Uses the planned LM's capture hook: inside ``planned_lm.adapters.capturing()`` a forward pass fills
    ``planned_lm.adapters.captured[layer] = {"pre": (B, T, H), "post": (B, T, H)}``. Batches are ``collate_windows``
    dicts; only the keys ``planned_lm.forward`` accepts are passed. Batches of different lengths are right-padded to
    the longest (with attention mask 0), so the result feeds :func:`run_probes` directly.

    Args:
        planned_lm: a ``PlannedLM`` (in eval mode for the probes the paper reports).
        batches: an iterable of batch dicts.
        max_batches: stop after this many batches.
        progress: show a progress bar.
    """
    import torch
    from tqdm.auto import tqdm

    accepted = set(inspect.signature(planned_lm.forward).parameters)
    device = next(planned_lm.parameters()).device
    per_batch, ids, masks = [], [], []
    with torch.no_grad():
        for i, batch in enumerate(tqdm(batches, desc="probe features", disable=not progress, total=max_batches)):
            if max_batches is not None and i >= max_batches:
                break
            inputs = {k: _to(v, device) for k, v in batch.items() if k in accepted and k != "labels"}
            with planned_lm.adapters.capturing():
                planned_lm(**inputs)
                captured = {int(layer): {kind: v.detach().float().cpu() for kind, v in kinds.items()}
                            for layer, kinds in planned_lm.adapters.captured.items()}
            if not captured:
                raise PlanlmError("probe: the planned LM captured no adapter features; is any layer conditioned?")
            input_ids = batch["input_ids"].cpu()
            mask = batch.get("attention_mask")
            per_batch.append(captured)
            ids.append(input_ids)
            masks.append(torch.ones_like(input_ids) if mask is None else mask.cpu())
    if not per_batch:
        raise PlanlmError("probe: no batches to collect features from")

    width = max(x.shape[1] for x in ids)

    def pad(x, value=0):  # (B, T, ...) -> (B, width, ...)
        return torch.nn.functional.pad(x, [0, 0] * (x.ndim - 2) + [0, width - x.shape[1]], value=value)

    features = {layer: {kind: torch.cat([pad(c[layer][kind]) for c in per_batch]) for kind in per_batch[0][layer]}
                for layer in per_batch[0]}
    return ProbeFeatures(features=features, input_ids=torch.cat([pad(x) for x in ids]),
                         attention_mask=torch.cat([pad(x) for x in masks]))


def plot_probes(rows: Iterable[ProbeRow | Mapping], path: str | Path, title: str | None = None) -> Path:
    """A PNG like the paper's Figure 3: accuracy by distance (one line per layer) and by layer (one line per
    distance), pre-merge left, post-merge right, the majority baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r if isinstance(r, Mapping) else dataclasses.asdict(r) for r in rows]
    layers = sorted({int(r["layer"]) for r in rows})
    distances = sorted({int(r["distance"]) for r in rows})
    kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]
    acc = {(int(r["layer"]), r["kind"], int(r["distance"])): float(r["accuracy"]) for r in rows}
    base = {}
    for r in rows:
        base.setdefault(int(r["distance"]), []).append(float(r["baseline"]))
    fig, axes = plt.subplots(2, len(kinds), figsize=(5.5 * len(kinds), 7.5), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for col, kind in enumerate(kinds):
        ax = axes[0, col]
        for i, layer in enumerate(layers):
            ys = [acc.get((layer, kind, d), np.nan) for d in distances]
            ax.plot(distances, ys, marker="o", color=cmap(i / max(1, len(layers) - 1)), label=f"layer {layer}")
        ax.plot(distances, [np.mean(base[d]) for d in distances], "k--", label="majority baseline")
        ax.set(title=f"{kind}-merge: accuracy by distance", xlabel="distance d (tokens ahead)", ylabel="accuracy",
               xticks=distances)
        ax.legend(fontsize=7)
        ax = axes[1, col]
        for i, d in enumerate(distances):
            ys = [acc.get((layer, kind, d), np.nan) for layer in layers]
            ax.plot(layers, ys, marker="o", color=cmap(i / max(1, len(distances) - 1)), label=f"d = {d}")
        ax.set(title=f"{kind}-merge: accuracy by layer", xlabel="layer", ylabel="accuracy", xticks=layers)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
