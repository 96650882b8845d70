"""The Lightning pieces of planner pretraining by Next-Action Prediction (DESIGN.md 1.2), for `planlm train-planner`
(planlm/stages/train_planner.py): target-sentence batches, whole-article batches of the causal context, and the NAP
module (cross-entropy on oracle actions; exact per-sentence validation sums, metrics from planlm.eval.nap)."""

from __future__ import annotations

import numpy as np

from planlm.data.prepared import PreparedCorpus
from planlm.eval.nap import TOP_K, next_actions, offset_metrics, offset_sums


class NAPCollate:
    """Batch of global target sentence ids -> ``{"planner_inputs": {...}, "oracle_actions": (N,)}``."""

    def __init__(self, builder, actions: np.ndarray, corpus: PreparedCorpus | None = None, horizon: int = 1):
        self.builder = builder
        self.actions = actions
        self.corpus, self.horizon = corpus, horizon

    def __call__(self, sentence_ids: list[int]) -> dict:
        import torch

        ids = np.asarray(sentence_ids, dtype=np.int64)
        batch = {
            "planner_inputs": self.builder(ids),
            "oracle_actions": torch.from_numpy(self.actions[ids].astype(np.int64)),
        }
        if self.horizon > 1:  # the plan's oracle actions, offsets 1..H (-100 past the article's end)
            batch["future_actions"] = torch.from_numpy(next_actions(self.corpus, ids, self.horizon))
        return batch


class ArticleBatches:
    """Causal mode's batches: whole articles (shuffled, seeded, reshuffled every epoch) packed until a batch holds at
    least ``batch_size`` target sentences, so one causal pass per article serves all of its sentences (DESIGN.md 3)
    instead of re-running every article once per randomly drawn sentence."""

    def __init__(self, corpus: PreparedCorpus, article_ids: np.ndarray, batch_size: int, shuffle: bool, seed: int):
        self.ranges = [corpus.sentence_range(int(a)) for a in article_ids]
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0

    def _batches(self) -> list[list[int]]:
        order = np.arange(len(self.ranges))
        if self.shuffle:
            order = np.random.default_rng(self.seed * 1_000_003 + self.epoch).permutation(order)
        out, current = [], []
        for i in order:
            current.extend(range(*self.ranges[i]))
            if len(current) >= self.batch_size:
                out.append(current)
                current = []
        return out + ([current] if current else [])

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self):
        batches = self._batches()
        self.epoch += 1
        return iter(batches)


def nap_module(planner, lr: float, weight_decay: float, baselines: dict[str, dict]):
    import lightning as L
    import torch
    import torch.nn.functional as F

    from planlm.train.trainer import adam

    horizon = planner.config.horizon  # H > 1: every offset of the plan, teacher-forced

    class NAPModule(L.LightningModule):
        """NAP cross-entropy on oracle actions; validation accumulates exact sums so metrics are per sentence."""

        def __init__(self):
            super().__init__()
            self.planner = planner
            self._val = None

        def plan_logits(self, batch):
            """``(logits (N, H, K), targets (N, H))``: offset 1 alone for H = 1, teacher-forced offsets 1..H else."""
            if horizon == 1:
                return self.planner(**batch["planner_inputs"])[:, None], batch["oracle_actions"][:, None]
            future = batch["future_actions"]  # (N, H)
            return self.planner.teacher_forced_logits(batch["planner_inputs"], future), future

        def training_step(self, batch, batch_idx):
            if horizon == 1:
                logits = self.planner(**batch["planner_inputs"])  # (N, K)
                loss = F.cross_entropy(logits, batch["oracle_actions"])
            else:
                logits, future = self.plan_logits(batch)  # (N, H, K), (N, H)
                loss = F.cross_entropy(logits.flatten(0, 1), future.flatten(), ignore_index=-100)
            self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
            return loss

        def on_validation_epoch_start(self):
            # per offset: loss sum, top1, top5, count
            self._val = torch.zeros(horizon, 4, dtype=torch.float64, device=self.device)

        def validation_step(self, batch, batch_idx):
            self._val += offset_sums(*self.plan_logits(batch), TOP_K)

        def on_validation_epoch_end(self):
            total = self.all_gather(self._val)
            total = total.reshape(-1, horizon, 4).sum(0) if total.dim() > 2 else total  # (H, 4)
            for h, m in enumerate(offset_metrics(total.cpu(), TOP_K), start=1):
                prefix = "val/" if h == 1 else f"val/offset{h}_"
                self.log_dict({f"{prefix}{k}": float(v) for k, v in m.items() if k != "targets"}, prog_bar=h == 1)
            # The baselines are constants, logged next to the planner so one log file holds the comparison.
            self.log_dict({f"val/{name}_{m}": float(v) for name, ms in baselines.items() for m, v in ms.items()})

        def configure_optimizers(self):
            # Adam with (L2) weight decay, as the paper's planner pretraining (DESIGN.md 1.2).
            return adam(self.planner.parameters(), lr, weight_decay=weight_decay, trainer=self._trainer)

    return NAPModule()
