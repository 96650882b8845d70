"""`planlm evaluate`: perplexity (predicted / oracle / fixed actions, paper / strided protocol), planner accuracy,
perplexity split by right vs wrong planner predictions (the paper's Appendix E), optional generation metrics and
probes, written as ``metrics.json`` (:class:`planlm.eval.record.MetricsRecord`, the schema `planlm report` reads,
docs/evaluation.md) + ``metrics.md``.

Output folder (``--out``, default ``RUN/evaluate``), written atomically::

    metrics.json        variant, seed, ppl (predicted actions, first protocol), ppl_oracle, p_predicted, ... and
                        the detail: every (protocol, actions) perplexity with its per-article NLL sums and token
                        counts (``by_article``, for the report's bootstrap intervals), planner top-1/top-5,
                        right/wrong split, generation metrics, probe summary
    metrics.md          the same as a table
    generations.jsonl   with --generation: every generated and true text with its action sequence
    probes.json, probes.png   with --probes (Figure 3)
    manifest.json       stage "evaluate"
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from planlm.artifacts import read_manifest, writes_artifact
from planlm.data.prepared import SPLITS, Split
from planlm.errors import PlanlmError, raise_if_problems
from planlm.eval.generation_metrics import GenerationMetricsConfig
from planlm.eval.perplexity import PerplexityConfig
from planlm.eval.probes import ProbeConfig
from planlm.eval.record import MetricsRecord
from planlm.stage_config import Fingerprint, config_of
from planlm.variants import training_actions, training_p_predicted, variant_name


def validate_evaluate(cfg: EvaluateConfig) -> None:
    """Raise one error listing every problem with the arguments of :func:`evaluate`."""

    problems = list(cfg.ppl.problems())
    if cfg.split not in SPLITS:  # the Python API; the command line refuses it first (planlm/cli.py)
        problems.append(f"split must be one of {', '.join(SPLITS)} (got {cfg.split!r})")
    if cfg.generation:
        problems += cfg.gen.problems()
    from planlm.persist import is_lm_folder

    if is_lm_folder(cfg.run):  # a `planlm pretrain-lm` LM (NTP or MTP): perplexity, head accuracy, probes
        if cfg.generation:
            problems.append(f"{cfg.run} is an LM without a planner: --generation needs a `planlm finetune` run")
    else:
        try:
            from planlm.persist import read_planned_manifest

            read_planned_manifest(cfg.run)  # a finetune run or a planned pretrain-lm folder
        except PlanlmError as e:
            problems.append(str(e))
    if cfg.prepared is not None and not Path(cfg.prepared).exists():
        problems.append(f"--prepared {cfg.prepared} does not exist")
    raise_if_problems(problems, "evaluate")


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def metrics_markdown(m: MetricsRecord) -> str:
    """``metrics.md``: the headline numbers (the record's labelled fields) and every perplexity as tables."""
    lines = [f"# {m.variant} (seed {m.seed})", "", "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {_fmt(v)} |" for label, v in m.labelled("number")]
    for h in m.mtp_heads or []:
        lines.append(f"| head {h['head']} accuracy on {h['target']} | {_fmt(h['accuracy'])} ({h['tokens']} tokens) |")
    lines += [f"| {label} | {_fmt(v)} |" for label, v in m.labelled("mapping")]
    lines += [f"| {label} | {json.dumps(v)} |" for label, v in m.labelled("json")]
    if m.planner is not None:
        p = m.planner
        lines.append(f"| planner top-1 / top-5 vs oracle | {_fmt(p['top1'])} / {_fmt(p['top5'])} ({p['sentences']} "
                     "sentences) |")
    for h, o in enumerate((m.planner_offsets or [])[1:], start=2):
        lines.append(f"| planner offset {h} top-1 / top-5 (teacher-forced) | {_fmt(o['top1'])} / {_fmt(o['top5'])} |")
    lines += ["", "## Perplexity", "", "| protocol | actions | PPL | tokens | articles |", "|---|---|---|---|---|"]
    for protocol, by_actions in (m.perplexity or {}).items():
        for actions, r in by_actions.items():
            lines.append(f"| {protocol} | {actions} | {_fmt(r['ppl'])} | {r['tokens']} | {r['articles']} |")
    if m.by_planner_correct:
        lines += ["", "## Perplexity by planner correctness (Appendix E)", "",
                  "| actions | PPL, planner right | tokens | PPL, planner wrong | tokens |", "|---|---|---|---|---|"]
        for actions, r in m.by_planner_correct.items():
            lines.append(f"| {actions} | {_fmt(r['right']['ppl'])} | {r['right']['tokens']} | "
                         f"{_fmt(r['wrong']['ppl'])} | {r['wrong']['tokens']} |")
    return "\n".join(lines) + "\n"


@writes_artifact(out=lambda a: a["out"] or Path(a["run"]) / "evaluate")
def evaluate(
    run: Path = Path("runs/finetune"),
    prepared: Path | None = None,
    out: Path | None = None,
    split: Split = "test",
    ppl: PerplexityConfig = PerplexityConfig(),
    generation: bool = False,
    gen: GenerationMetricsConfig = GenerationMetricsConfig(),
    probes: bool = False,
    probe: ProbeConfig = ProbeConfig(),
    probe_windows: int = 64,
    variant: str | None = None,
    encoder: str | None = None,
    device: str | None = None,
    force: bool = False,
) -> Path:
    """Evaluate a fine-tuned planned LM: perplexity, planner accuracy, and optionally generation metrics and probes.

    Perplexity with planner-predicted actions is the main metric (``ppl`` in metrics.json); oracle and fixed actions
    and the strided protocol are options. Planner top-1/top-5 accuracy is measured against the oracle actions of the
    evaluated sentences, and perplexity is split by whether the planner's top action was right (Appendix E).

    A run with multi-token heads (``--mtp.n_heads``) also reports each head's accuracy on its own target t + i
    (``mtp_heads`` in metrics.json); its perplexity is head 1's, i.e. the LM's. RUN may also be a `planlm pretrain-lm`
    folder (an LM trained from scratch, NTP or MTP): perplexity with the same protocols, head accuracy, and with
    --probes the probes of every block's output.

    Args:
        run: a `planlm finetune` output folder (or a `planlm pretrain-lm` one).
        prepared: the prepared corpus (default: the one recorded in the run's manifest).
        out: output folder (default: RUN/evaluate).
        split: the split to evaluate on (train, val, test).
        ppl: action sources, protocols, window length, article and token caps.
        generation: also compute the generation metrics (MAUVE, ROUGE-2, action edit distance, latent PPL).
        gen: generation-metric counts, lengths, sampling, featurizer, critic.
        probes: also fit the linear probes (pre-/post-merge, Figure 3) on the split's windows.
        probe: probe settings.
        probe_windows: windows of the split the probe features (and the MTP heads' accuracies) come from.
        variant: row name in the report (default: the paper's name of the run's recipe).
        encoder: sentence encoder for generation (default: the prepared corpus's).
        device: cpu, cuda, ... (default: a GPU when visible).
        force: recompute even if OUT holds an evaluation with the same config.

    Returns:
        The output folder.
    """
    from planlm.artifacts import up_to_date

    cfg = EvaluateConfig.from_call(locals())
    validate_evaluate(cfg)
    out = Path(out) if out is not None else cfg.run / "evaluate"
    fingerprint = cfg.fingerprint()
    if up_to_date(out, "evaluate", fingerprint, force):
        return out
    return run_evaluate(cfg, out, fingerprint)


# Everything `planlm evaluate` reads. Its fingerprint (the manifest's config) decides whether an existing evaluation
# is reusable: the settings that change its numbers (the device does not; the settings of an option that is off do
# not), plus the run's id.
EvaluateConfig = config_of(evaluate, exclude=("out", "force"), fingerprint=Fingerprint(
    ignore=("device",),
    null_unless={"gen": lambda c: c.generation, "probe": lambda c: c.probes, "probe_windows": lambda c: c.probes},
    absent_unless={"ppl.precision": lambda c: c.ppl.precision != "32-true",  # evaluations from before the fields
                   "ppl.window_step": lambda c: c.ppl.window_step != 1},
    extra=lambda c: {"run_id": read_manifest(c.run).get("id")},
))


def run_evaluate(cfg: EvaluateConfig, out: Path, fingerprint: dict) -> Path:
    """Compute every metric of ``cfg`` and write ``out`` atomically (the caller validated and checked reuse)."""
    import torch

    from planlm.artifacts import atomic_dir, write_json_atomic, write_manifest
    from planlm.data.planner_inputs import PlannerInputs
    from planlm.eval import mtp_eval
    from planlm.eval.nap import topk_hits
    from planlm.eval.perplexity import (
        perplexity,
        planner_logits_for,
        planner_right,
        split_by_planner_right,
    )
    from planlm.models.selection import needs_planner
    from planlm.persist import is_lm_folder, load_run

    t0 = time.time()
    run, split, ppl = cfg.run, cfg.split, cfg.ppl
    lm_folder = is_lm_folder(run)
    if lm_folder:
        from planlm.persist import load_lm_run

        model, heads, tokenizer, corpus, manifest = load_lm_run(run, cfg.prepared, cfg.device)
    else:
        from planlm.persist import load_mtp_heads

        model, tokenizer, corpus, manifest = load_run(run, cfg.prepared, cfg.device)
        heads = load_mtp_heads(run, model.lm)
    from planlm.persist import training_config

    ft_config = training_config(run, manifest)
    constant = not needs_planner(model.config.selection)

    variant = cfg.variant or (mtp_eval.lm_variant_name(heads) if lm_folder else variant_name(ft_config))
    plans = {}
    if not lm_folder and model.config.plans:  # multi-sentence / sampled plans (issue 16)
        plans = {"horizon": model.config.horizon, "plan_samples": model.config.plan_samples}
        if not cfg.variant:
            variant += f" + plans H={model.config.horizon} M={model.config.plan_samples}"

    # The planner's logits for every sentence of the evaluated articles: once, shared by every perplexity run,
    # the accuracy and the Appendix-E split.
    shared, planner, offsets = None, None, None
    article_ids = corpus.article_ids(split)[: ppl.max_articles]
    sentence_ids = np.concatenate([np.arange(*corpus.sentence_range(int(a))) for a in article_ids] or [[]])
    sentence_ids = sentence_ids.astype(np.int64)
    if not constant and model.planner is not None and len(sentence_ids):
        builder = PlannerInputs.from_config(corpus, model.planner.config, tokenizer=tokenizer)
        logits = planner_logits_for(model, sentence_ids, builder)
        shared = (sentence_ids, logits)
        oracle = torch.from_numpy(corpus.actions[sentence_ids].astype(np.int64))
        top1, top5 = topk_hits(logits, oracle, 5)  # (N,), (N,)
        planner = {
            "top1": float(top1.float().mean()),
            "top5": float(top5.float().mean()),
            "sentences": int(len(sentence_ids)),
        }
        if model.planner.config.horizon > 1:  # a plan's every offset, teacher-forced (planlm.eval.nap)
            from planlm.eval.nap import evaluate_offsets

            offsets = evaluate_offsets(model.planner, builder, corpus, sentence_ids)

    action_sources = ["predicted"] if constant else list(dict.fromkeys(ppl.actions))
    results = {}
    for protocol in dict.fromkeys(ppl.protocols):
        for actions in action_sources:
            results[(protocol, actions)] = perplexity(
                model, corpus, tokenizer, split, actions, protocol, ppl.context_length,
                ppl.stride if protocol == "strided" else None, ppl.max_articles, ppl.max_tokens, ppl.batch_size,
                fixed_action=ppl.fixed_action, planner_logits=shared, precision=ppl.precision,
                window_step=ppl.window_step,
            )
    by_protocol: dict = {}
    for (protocol, actions), r in results.items():
        # + per-article sums and counts: `planlm report` bootstraps its intervals over test articles from them
        by_protocol.setdefault(protocol, {})[actions] = r.summary() | {
            "by_article": r.by_article(corpus.sentence_article)}
    main_protocol = list(dict.fromkeys(ppl.protocols))[0]
    main_actions = "predicted" if "predicted" in action_sources else action_sources[0]
    ppl_oracle, strided_minus_paper, tokens_compared = None, None, None
    if ("oracle" in action_sources) and (main_protocol, "oracle") in results:
        ppl_oracle = results[(main_protocol, "oracle")].ppl
    if {"paper", "strided"} <= set(ppl.protocols):
        a = main_actions
        strided_minus_paper = results[("strided", a)].ppl - results[("paper", a)].ppl
        tokens_compared = {"paper": results[("paper", a)].tokens, "strided": results[("strided", a)].tokens}

    by_planner_correct = None
    if shared is not None:
        # Appendix E: tokens of sentences whose top planner action equals the oracle one vs the others.
        right = planner_right(len(corpus.sentence_article), *shared, corpus.actions)
        by_planner_correct = {
            actions: split_by_planner_right(results[(main_protocol, actions)], right) for actions in action_sources
        }

    mtp_heads = None
    if heads is not None:
        batches = mtp_eval.eval_batches(model, corpus, tokenizer, split, ppl.context_length, ppl.max_articles,
                                        cfg.probe_windows, ppl.batch_size)
        mtp_heads = mtp_eval.head_accuracy(model, heads, batches)

    samples, probe_rows, generated, probes_file = None, None, {}, None
    if cfg.generation:
        from planlm.data.encoders import load_encoder
        from planlm.eval.generation_metrics import generation_metrics
        from planlm.eval.generator import PlannedGenerator, resolve_window

        enc = load_encoder(cfg.encoder or corpus.encoder, device=cfg.device)
        window = resolve_window(cfg.gen.window, ft_config)  # default: the fine-tuning context length
        g = generation_metrics(PlannedGenerator(model, tokenizer, corpus, enc, window=window), cfg.gen)
        generated = g.summary()  # one field of MetricsRecord per key
        samples = g.samples
    if cfg.probes:
        probe_rows = _probe(model, corpus, tokenizer, split, ppl, cfg.probe, cfg.probe_windows, lm_folder)
        probes_file = {"rows": len(probe_rows), "file": "probes.json"}
    metrics = MetricsRecord(
        variant=variant, seed=int(ft_config.get("seed", 0)), selection=model.config.selection, split=split,
        lm_model_type=model.lm.config.model_type, **plans,
        p_predicted=training_p_predicted(ft_config), training_actions=training_actions(ft_config),
        planner=planner, planner_top1=planner["top1"] if planner else None,
        planner_top5=planner["top5"] if planner else None,
        planner_offsets=offsets, perplexity=by_protocol, ppl=results[(main_protocol, main_actions)].ppl,
        ppl_actions=main_actions, ppl_protocol=main_protocol, ppl_oracle=ppl_oracle,
        ppl_strided_minus_paper=strided_minus_paper, tokens_compared=tokens_compared,
        by_planner_correct=by_planner_correct, mtp_heads=mtp_heads, **generated, probes=probes_file,
        seconds=round(time.time() - t0, 1),
    )

    with atomic_dir(out, force=True) as tmp:
        write_json_atomic(tmp / "metrics.json", metrics.to_json())
        (tmp / "metrics.md").write_text(metrics_markdown(metrics))
        if samples is not None:
            with open(tmp / "generations.jsonl", "w") as f:
                for s in samples:
                    f.write(json.dumps(s, ensure_ascii=False) + "\n")
        if probe_rows is not None:
            from planlm.eval.probes import plot_probes, rows_to_json

            write_json_atomic(tmp / "probes.json", rows_to_json(probe_rows))
            plot_probes(probe_rows, tmp / "probes.png", title=metrics.variant)
        write_manifest(tmp, "evaluate", fingerprint, inputs={"run": run, "prepared": corpus.path},
                       counts={"ppl_tokens": {f"{k[0]}/{k[1]}": r.tokens for k, r in results.items()}},
                       variant=metrics.variant, seconds=metrics.seconds)
    print(f"planlm evaluate: {metrics.variant}: ppl {metrics.ppl:.3f} ({main_protocol}, {main_actions}) -> {out}")
    return out


def _probe(model, corpus, tokenizer, split, ppl: PerplexityConfig, probe: ProbeConfig, windows: int,
           lm_folder: bool = False):
    """Probe features from the split's training-style windows (stride context - 1), predicted actions."""
    if lm_folder:  # no adapters to capture: every block's output
        from planlm.eval.mtp_eval import eval_batches, lm_probe_features
        from planlm.eval.probes import run_probes

        batches = eval_batches(model, corpus, tokenizer, split, ppl.context_length, ppl.max_articles, windows,
                               ppl.batch_size)
        feats = lm_probe_features(model, batches)
        return run_probes(feats.features, feats.input_ids, feats.attention_mask, probe)
    from planlm.data.planner_inputs import PlannerInputs
    from planlm.data.windows import WindowDataset
    from planlm.eval.probes import collect_probe_features, run_probes
    from planlm.models.selection import needs_planner

    ds = WindowDataset.from_corpus(corpus, tokenizer, split, ppl.context_length, ppl.context_length - 1,
                                   max_articles=ppl.max_articles)
    if len(ds) == 0:
        raise PlanlmError(f"no {split} windows to probe")
    fn = None
    if needs_planner(model.config.selection):
        fn = PlannerInputs.from_config(corpus, model.planner.config, tokenizer=tokenizer)
    collate = ds.collate_fn(fn, pad_token_id=tokenizer.pad_token_id or 0)
    n = min(windows, len(ds))
    batches = [collate([ds[j] for j in range(i, min(i + ppl.batch_size, n))]) for i in range(0, n, ppl.batch_size)]
    feats = collect_probe_features(model, batches)
    return run_probes(feats.features, feats.input_ids, feats.attention_mask, probe)
