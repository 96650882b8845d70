"""What a planned-LM training starts from: finetune's window and adapter sections, and the planned LM built from a
prepared corpus, a base LM and a planner (used by `planlm finetune`, the no-NAP stage of `planlm train-planner` and
planned pretraining). The ``cfg`` these functions take is a :class:`planlm.stages.finetune.FinetuneConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planlm.errors import PlanlmError
from planlm.models.adapters import OffsetInit, ProjectionInit
from planlm.models.selection import needs_planner


@dataclass
class WindowConfig:
    """How articles become training windows (paper: 128 tokens, stride 127)."""

    context_length: int = 128
    """Tokens per window (paper: 128)."""
    stride: int = 127
    """Tokens between window starts (paper: 127: every token is scored once)."""
    max_train_articles: int | None = None
    """Use only the first this many train articles (None = all)."""
    max_val_windows: int | None = 512
    """Validate on at most this many val windows (None = all)."""
    num_workers: int | None = None
    """DataLoader worker processes (they also build the planner inputs); None = 0 on a CPU, and on a GPU a few
    workers with pinned memory, so the GPU is not kept waiting (the numbers do not depend on it)."""

    def datasets(self, corpus, tokenizer):
        """The train windows and the val windows the loop's val loss reads (at most ``max_val_windows``)."""
        import torch.utils.data as tud

        from planlm.data.windows import WindowDataset

        train = WindowDataset.from_corpus(corpus, tokenizer, "train", self.context_length, self.stride,
                                          max_articles=self.max_train_articles)
        val = WindowDataset.from_corpus(corpus, tokenizer, "val", self.context_length, self.stride)
        if self.max_val_windows is not None and len(val) > self.max_val_windows:
            val = tud.Subset(val, range(self.max_val_windows))
        return train, val


@dataclass
class AdapterConfig:
    """Where and how the action adapters attach (paper: every layer but the first two, no gate)."""

    layers: list[int] | None = None
    """Conditioned layers; None = every layer but the first two (paper)."""
    gate: bool = False
    """Zero-initialised gate on every adapter, so training starts from the exact base LM (a departure)."""
    projection_init: ProjectionInit = "xavier"
    """How every adapter's W_A starts: "xavier" (planlm's choice; the paper gives none) or "zeros" (a departure:
    training starts from the exact base LM without a gate; use it with ``gate: false``)."""
    offset_init: OffsetInit = "zeros"
    """Plans of H > 1 sentences (a planner trained with --planner.horizon H): how the action embeddings of offsets
    2..H start, "zeros" (the model starts as the H = 1 model) or "centroids"."""


def build_planned_lm(cfg, corpus, lm_model, planner):
    """The PlannedLM of a finetune config: adapters initialised from the corpus's k-means centroids."""
    import torch

    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig

    r = cfg.recipe
    pcfg = PlannedLMConfig(
        num_actions=corpus.num_actions,
        action_dim=corpus.embedding_dim,
        layers=cfg.adapters.layers,
        gate=cfg.adapters.gate,
        projection_init=cfg.adapters.projection_init,
        **r.selection_fields(),
        train_lm=r.train_lm,
        base_lm=str(Path(cfg.lm).resolve()) if Path(cfg.lm).exists() else str(cfg.lm),  # loadable from any cwd
        seed=cfg.seed,
        horizon=getattr(getattr(planner, "config", None), "horizon", 1),  # the adapters read the planner's plan
        offset_init=cfg.adapters.offset_init,
    )
    return PlannedLM(lm_model, pcfg, centroids=torch.from_numpy(corpus.centroids), planner=planner)


def initial_planned_lm(cfg, corpus, fresh_planner=None):
    """The planned LM a fine-tuning starts from, and the LM's tokenizer: seed, base LM, planner (``cfg.planner``, or
    a fresh one of the PlannerConfig ``fresh_planner``, its policy head at the centroids), adapters.

    The one order of random draws of a fine-tuning start: a fresh planner draws what building ``cfg.planner``'s
    draws before its weights load, so the no-NAP stage (`planlm train-planner --objective ntp` without
    ``--planned_lm``) trains its planner through exactly the adapters that `planlm finetune --seed` starts from.
    """
    import lightning as L
    import torch

    from planlm.models.planner import Planner
    from planlm.persist import load_lm, load_planner

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    lm_model, tokenizer = load_lm(cfg.lm, precision=cfg.trainer.precision)
    planner = None
    if fresh_planner is not None:
        planner = Planner(fresh_planner, torch.from_numpy(corpus.centroids))
    elif needs_planner(cfg.recipe.selection):
        planner = load_planner(cfg.planner)
        check_planner_fits(planner, corpus, cfg.planner)
        check_planner_inputs(cfg, corpus)
        if planner.config.horizon > 1 and cfg.recipe.actions != "predicted":
            raise PlanlmError(f"{cfg.planner} plans {planner.config.horizon} sentences: train on its plans with "
                              "--recipe.actions predicted (oracle plans are not built)")
    if cfg.myopic:
        from planlm.models.myopic import make_myopic

        make_myopic(lm_model)  # its detached pass stops before the output projection: adapters see the live one
    model = build_planned_lm(cfg, corpus, lm_model, planner)
    if fresh_planner is None and planner is not None:
        load_stage_adapters(model, cfg.planner)
    return model, tokenizer


def stage_adapters(planner_dir) -> dict | None:
    """The adapters that trained together with ``planner_dir``'s planner, as its manifest records them (the no-NAP
    stage, `planlm train-planner --objective ntp`), or None for a planner trained alone (NAP)."""
    from planlm.artifacts import MANIFEST, read_manifest
    from planlm.persist import ADAPTER_WEIGHTS

    if planner_dir is None or not (Path(planner_dir) / MANIFEST).exists():
        return None
    m = read_manifest(planner_dir)
    if m.get("stage") != "train-planner" or not isinstance(m.get("adapters"), dict):
        return None
    return m["adapters"] if (Path(planner_dir) / ADAPTER_WEIGHTS).exists() else None


def load_stage_adapters(model, planner_dir) -> bool:
    """Start ``model``'s adapters from those the no-NAP stage trained with its planner (the paper's section 4.3:
    the fine-tuning that follows that stage starts from both), when ``planner_dir`` holds them; True if it did.
    Refuses, in one line, adapters trained on another base LM or at other layers."""
    from planlm.persist import load_adapters

    rec = stage_adapters(planner_dir)
    if rec is None:
        return False
    mine = {"base_lm": model.config.base_lm, "layers": list(model.adapters.layers), "gate": bool(model.config.gate)}
    differ = [f"{k} {rec.get(k)!r} there, {v!r} here" for k, v in mine.items() if rec.get(k) != v]
    if differ:
        raise PlanlmError(f"{planner_dir} trained its planner together with adapters that do not fit this fine-tuning "
                          f"({'; '.join(differ)}); rebuild it with `planlm train-planner --objective ntp` and this "
                          "--lm and --adapters.*")
    load_adapters(model.adapters, planner_dir)
    return True


def check_planner_fits(planner, corpus, planner_dir) -> None:
    from planlm.artifacts import check_same

    fix = "train the planner on this prepared corpus (`planlm train-planner --prepared ...`)"
    check_same("num_actions", corpus.num_actions, planner.config.num_actions, planner_dir, fix)
    check_same("encoder_dim", corpus.embedding_dim, planner.config.encoder_dim, planner_dir, fix)


def check_planner_inputs(cfg, corpus) -> None:
    """The planner must come from this very prepared corpus (same centroids, encoder, sentence ids) and, when its
    context was counted in LM tokens, from this LM's tokenizer: same K and width are not enough."""
    from planlm.artifacts import MANIFEST, check_input_id, read_manifest

    if cfg.planner is None or not (Path(cfg.planner) / MANIFEST).exists():
        return
    m = read_manifest(cfg.planner)
    if m.get("stage") != "train-planner":
        return  # a planned-LM folder's planner: its own manifest is checked where it is loaded
    fix = "train the planner on this prepared corpus (`planlm train-planner --prepared ...`)"
    check_input_id(cfg.planner, m, "prepared", cfg.prepared, corpus.id, fix)
    if m.get("encoder") and corpus.encoder and m["encoder"] != corpus.encoder:
        raise PlanlmError(f"{cfg.planner} was trained on {m['encoder']} embeddings, {cfg.prepared} has {corpus.encoder}; {fix}")
    lm_rec = (m.get("inputs") or {}).get("lm") or {}
    pcfg = m.get("planner_config") or {}
    if lm_rec and pcfg.get("context") == "paper" and pcfg.get("context_sentences") is None:
        given = Path(cfg.lm).resolve() if Path(cfg.lm).exists() else None
        recorded = lm_rec.get("abspath") or lm_rec.get("name")
        # a folder recorded by name only (planners written before local folders were recorded by where they are)
        where = lm_rec.get("abspath") or str(Path(lm_rec.get("name", "")).resolve())
        same = str(given) == where if given is not None else cfg.lm == lm_rec.get("name")
        if not same:
            raise PlanlmError(f"{cfg.planner} counted its context in tokens of the LM {recorded}, not of --lm {cfg.lm}; "
                              "train the planner with this --lm")
