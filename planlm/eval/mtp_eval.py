"""Evaluation of multi-token-prediction models (and of plain LMs from `planlm pretrain-lm`) for `planlm evaluate`.

- Head 1 is the LM itself, so its perplexity comes from :func:`planlm.eval.perplexity.perplexity` with the usual
  protocols. An LM folder (no adapters, no planner) runs there through :class:`UnplannedLM`, which presents it as a
  planned LM of constant selection whose adapters do nothing: the same windows, the same scored tokens.
- Each head i is also scored on its own target: argmax accuracy on token t + i (:func:`head_accuracy`).
- Future-token probes (the paper's Figure 3 machinery, :mod:`planlm.eval.probes`) read the output of every block of
  the LM (kind "post": what the block passes on), so MTP and NTP trunks are compared at every depth.
"""

from __future__ import annotations


import torch

from planlm.errors import PlanlmError


def eval_batches(model, corpus, tokenizer, split: str, context_length: int, max_articles: int | None,
                 max_windows: int, batch_size: int) -> list[dict]:
    """Training-style windows of the split (stride context - 1) as collated batches with predicted-action inputs."""
    from planlm.data.planner_inputs import PlannerInputs
    from planlm.data.windows import WindowDataset
    from planlm.models.selection import needs_planner

    ds = WindowDataset.from_corpus(corpus, tokenizer, split, context_length, context_length - 1,
                                   max_articles=max_articles)
    if len(ds) == 0:
        raise PlanlmError(f"no {split} windows to evaluate")
    fn = None
    if needs_planner(model.config.selection) and model.planner is not None:
        fn = PlannerInputs.from_config(corpus, model.planner.config, tokenizer=tokenizer)
    collate = ds.collate_fn(fn, pad_token_id=tokenizer.pad_token_id or 0)
    n = min(max_windows, len(ds))
    return [collate([ds[j] for j in range(i, min(i + batch_size, n))]) for i in range(0, n, batch_size)]


def _model_inputs(batch: dict, device) -> dict:
    """The keys of a collated batch a planned LM reads at evaluation (predicted actions), on ``device``."""
    from planlm.eval.probes import _to

    keys = ("input_ids", "attention_mask", "token_slot", "planner_inputs")
    return {k: _to(batch[k], device) for k in keys if k in batch}


@torch.no_grad()
def head_accuracy(model, heads, batches: list[dict]) -> list[dict]:
    """Per head i = 1..n: argmax accuracy on token t + i over the scored tokens of ``batches``."""
    device = next(model.parameters()).device
    counts = torch.zeros(heads.n_heads, 2, dtype=torch.long)
    model.eval()
    for batch in batches:
        inputs = _model_inputs(batch, device)
        labels = batch["labels"].to(device)
        counts += heads.accuracy_counts(lambda: model(**inputs, use_cache=False).logits, labels)
    return [{"head": i + 1, "target": f"t+{i + 1}", "accuracy": float(c / max(n, 1)), "tokens": int(n)}
            for i, (c, n) in enumerate(counts.tolist())]


@torch.no_grad()
def lm_probe_features(model, batches: list[dict]):
    """Every block's output ``{layer: {"post": (B, T, H)}}`` of an LM (or planned LM) over ``batches``."""
    from planlm.eval.probes import ProbeFeatures

    device = next(model.parameters()).device
    feats, ids, masks = [], [], []
    width = max(b["input_ids"].shape[1] for b in batches)
    pad = lambda x: torch.nn.functional.pad(x, [0, 0] * (x.ndim - 2) + [0, width - x.shape[1]])  # noqa: E731
    for batch in batches:
        out = model(**_model_inputs(batch, device), output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states if hasattr(out, "hidden_states") else None
        if hidden is None:
            raise PlanlmError("probe: the model returned no hidden states")
        # hidden_states[l + 1] is block l's output (the last one after the final norm, as Hugging Face returns it)
        feats.append([pad(h.float().cpu()) for h in hidden[1:]])
        ids.append(pad(batch["input_ids"]))
        masks.append(pad(batch["attention_mask"]))
    layers = range(len(feats[0]))
    return ProbeFeatures(features={l: {"post": torch.cat([f[l] for f in feats])} for l in layers},
                         input_ids=torch.cat(ids), attention_mask=torch.cat(masks))


def lm_variant_name(heads) -> str:
    """Report row name of an LM folder: next-token prediction or n-token prediction."""
    return "NTP (n=1)" if heads is None else f"MTP (n={heads.n_heads})"

