"""Next-action prediction (NAP) metrics and their baselines (DESIGN.md 1.2): how well actions are predicted.

Used by `planlm train-planner` (validation, the baselines next to the planner) and `planlm evaluate` (the planner's
accuracy against the oracle actions of the evaluated sentences). Baselines, fitted on train sentences:

- unigram: the train action frequencies, add-one smoothed (top-1 = the most frequent train action);
- bigram: P(next action | previous sentence's action), the action-bigram model of latent perplexity
  (:class:`planlm.eval.latent.BigramCritic`) shrunk towards the unigram (:meth:`BigramCritic.next_action_probs`); an
  article's first sentence conditions on the "start of article" symbol.

Metrics: loss (mean cross-entropy, nats), top-1 and top-5 accuracy, action perplexity = exp(loss).

Multi-sentence plans (a planner of horizon H > 1): offset h is the sentence h - 1 after the target, predicted with
the oracle actions of offsets 1..h-1 as context (teacher forcing); every offset is scored on its own
(:func:`offset_sums`, :func:`offset_metrics`), over the targets whose article still has that sentence
(:func:`next_actions`). Offset 1 is the planner's next-action prediction, reported under the usual names.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from planlm.data.prepared import PreparedCorpus
from planlm.data.windows import IGNORE_INDEX as IGNORE
from planlm.eval.latent import BigramCritic

TOP_K = 5


def topk_hits(scores: torch.Tensor, targets: torch.Tensor, k: int = TOP_K) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``scores (N, K)`` (logits or probabilities): is the target the top-1, is it among the top k?
    Returns two ``(N,)`` bool tensors (the ONE top-k accuracy of planlm)."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (N, k)
    return scores.argmax(1) == targets, (top == targets[:, None]).any(1)


def chunked_metrics(chunks: Iterable[tuple[np.ndarray, np.ndarray]], top_k: int = TOP_K) -> dict[str, float]:
    """Loss, top-1, top-k accuracy and perplexity over chunks of (action probabilities ``(c, K)``, targets ``(c,)``),
    summed chunk by chunk: the ``(N, K)`` matrix of all rows never exists whole (at the paper's 110k validation
    sentences and K = 1024 it would be 0.9 GB of float64)."""
    n, loss, hits1, hitsk = 0, 0.0, 0, 0
    for probs, target in chunks:
        probs, target = np.ascontiguousarray(probs), np.asarray(target, dtype=np.int64)
        loss -= float(np.log(probs[np.arange(len(target)), target]).sum())
        top1, topk = topk_hits(torch.from_numpy(probs), torch.from_numpy(target), top_k)
        n, hits1, hitsk = n + len(target), hits1 + int(top1.sum()), hitsk + int(topk.sum())
    loss /= max(n, 1)
    return {"loss": loss, "top1": hits1 / max(n, 1), f"top{top_k}": hitsk / max(n, 1), "perplexity": float(np.exp(loss))}


def table_metrics(table: np.ndarray, rows: np.ndarray, targets: np.ndarray, top_k: int = TOP_K,
                  chunk: int = 4096) -> dict[str, float]:
    """:func:`chunked_metrics` of the distributions ``table[rows]`` (e.g. a bigram model's rows) against targets."""
    return chunked_metrics(((table[rows[b : b + chunk]], targets[b : b + chunk]) for b in range(0, len(rows), chunk)),
                           top_k)


def action_metrics(probs: np.ndarray, targets: np.ndarray, top_k: int = TOP_K) -> dict[str, float]:
    """Loss, top-1, top-k accuracy and perplexity of rows of action probabilities ``(N, K)`` against targets."""
    return table_metrics(probs, np.arange(len(targets)), targets, top_k)


def previous_actions(corpus: PreparedCorpus, sentence_ids: np.ndarray) -> np.ndarray:
    """The action of the sentence before each target in its article, or K ("start of article") for a first one."""
    j = np.asarray(sentence_ids, dtype=np.int64)
    prev = np.full(len(j), corpus.num_actions, dtype=np.int64)
    has_prev = corpus.sentence_position[j] > 0
    prev[has_prev] = corpus.actions[j[has_prev] - 1]
    return prev


def next_actions(corpus: PreparedCorpus, sentence_ids: np.ndarray, horizon: int) -> np.ndarray:
    """``(N, H)`` oracle actions of each target and the H - 1 sentences after it in its article; ``IGNORE`` (-100)
    past the article's end."""
    j = np.asarray(sentence_ids, dtype=np.int64)
    later = j[:, None] + np.arange(horizon)[None]  # (N, H) global ids
    end = corpus.article_offsets[corpus.sentence_article[j] + 1]  # (N,) one past the article's last sentence
    inside = later < end[:, None]
    return np.where(inside, corpus.actions[np.minimum(later, len(corpus.actions) - 1)], IGNORE).astype(np.int64)


def offset_sums(logits: torch.Tensor, targets: torch.Tensor, top_k: int = TOP_K) -> torch.Tensor:
    """Per offset of a plan's ``logits (N, H, K)`` against ``targets (N, H)`` (``IGNORE`` = not scored): ``(H, 4)``
    float64 sums of cross-entropy, top-1 hits, top-k hits and scored targets, to add up over batches (and ranks)."""
    n, h, k = logits.shape
    flat, tgt = logits.reshape(n * h, k), targets.reshape(n * h)
    valid = tgt != IGNORE  # (N * H,)
    safe = tgt.clamp_min(0)
    ce = F.cross_entropy(flat.float(), safe, reduction="none") * valid  # (N * H,)
    top1, topk = topk_hits(flat, safe, top_k)  # (N * H,), (N * H,)
    per = torch.stack([ce.double(), (top1 & valid).double(), (topk & valid).double(), valid.double()], 1)
    return per.view(n, h, 4).sum(0)  # (H, 4)


def offset_metrics(sums: torch.Tensor, top_k: int = TOP_K) -> list[dict[str, float]]:
    """:func:`offset_sums` (added up) -> one metrics dict per offset: loss, top-1, top-k, perplexity, targets."""
    out = []
    for loss, top1, topk, count in sums.tolist():
        n = max(count, 1.0)
        out.append({"loss": loss / n, "top1": top1 / n, f"top{top_k}": topk / n, "perplexity": float(np.exp(loss / n)),
                    "targets": int(count)})
    return out


def offset_name(h: int) -> str:
    """The metrics row of offset h (1-based): "planner" for the next sentence, "planner offset h" after it."""
    return "planner" if h == 1 else f"planner offset {h}"


def bigram_table(corpus: PreparedCorpus, train_ids: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """The bigram baseline fitted on the sentences ``train_ids``: P(next action | previous symbol) ``(K + 1, K)``,
    row K = an article's first sentence (what the "Bigram PA" planner and the planner's ``bigram_prior`` read),
    shrunk towards the unigram by ``alpha`` pseudo-counts per row (:meth:`BigramCritic.next_action_probs`)."""
    train_next = corpus.actions[train_ids].astype(np.int64)
    return BigramCritic.fit_pairs(previous_actions(corpus, train_ids), train_next, corpus.num_actions
                                  ).next_action_probs(alpha=alpha)


def baseline_metrics(corpus: PreparedCorpus, train_ids: np.ndarray, val_ids: np.ndarray) -> dict[str, dict]:
    """Unigram and bigram baselines fitted on ``train_ids``, scored on ``val_ids``."""
    k = corpus.num_actions
    train_next = corpus.actions[train_ids].astype(np.int64)
    val_next = corpus.actions[val_ids].astype(np.int64)
    bigram = bigram_table(corpus, train_ids)
    counts = np.bincount(train_next, minlength=k).astype(np.float64)
    unigram = (counts + 1.0) / (counts.sum() + k)  # add-one: keeps the perplexity finite
    return {
        "unigram": table_metrics(unigram[None], np.zeros(len(val_ids), np.int64), val_next),
        "bigram": table_metrics(bigram, previous_actions(corpus, val_ids), val_next),
    }


def planner_device(planner) -> torch.device:
    """Where a planner's tensors live (the bigram planner has buffers only, no parameters)."""
    return next(iter([*planner.parameters(), *planner.buffers()])).device


@torch.no_grad()
def evaluate_nap(planner, builder, sentence_ids: np.ndarray, actions: np.ndarray, batch_size: int = 512) -> dict:
    """NAP metrics (loss, top-1, top-5, perplexity) of a planner on ``sentence_ids``, outside any training loop."""
    was_training = planner.training
    planner.eval()
    device = planner_device(planner)

    def batches():
        for b in range(0, len(sentence_ids), batch_size):
            ids = sentence_ids[b : b + batch_size]
            inputs = {k: v.to(device) for k, v in builder(ids).items()}
            yield planner(**inputs).float().softmax(-1).cpu().double().numpy(), actions[ids]  # (n, K), (n,)

    metrics = chunked_metrics(batches())
    planner.train(was_training)
    return metrics


@torch.no_grad()
def evaluate_offsets(planner, builder, corpus: PreparedCorpus, sentence_ids: np.ndarray, batch_size: int = 512
                     ) -> list[dict[str, float]]:
    """NAP metrics of every offset 1..H of a plan-trained planner on ``sentence_ids`` (teacher forcing on the oracle
    actions, as in training), one dict per offset (:func:`offset_metrics`)."""
    was_training = planner.training
    planner.eval()
    device = planner_device(planner)
    horizon = planner.config.horizon
    sums = torch.zeros(horizon, 4, dtype=torch.float64)
    for b in range(0, len(sentence_ids), batch_size):
        ids = sentence_ids[b:b + batch_size]
        inputs = {k: v.to(device) for k, v in builder(ids).items()}
        future = torch.from_numpy(next_actions(corpus, ids, horizon)).to(device)  # (n, H)
        sums += offset_sums(planner.teacher_forced_logits(inputs, future), future).cpu()
    planner.train(was_training)
    return offset_metrics(sums)


def format_table(metrics: dict[str, dict]) -> str:
    """A small markdown table: one row per model, columns loss / top-1 / top-5 / perplexity."""
    top = f"top{TOP_K}"
    lines = [f"| model | val loss | top-1 | {top[:3]}-{TOP_K} | action ppl |", "|---|---:|---:|---:|---:|"]
    for name, m in metrics.items():
        lines.append(f"| {name} | {m['loss']:.4f} | {m['top1']:.4f} | {m[top]:.4f} | {m['perplexity']:.2f} |")
    return "\n".join(lines)
