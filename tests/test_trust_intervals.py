"""Numbers with their uncertainty: the paired bootstrap of `planlm report` on synthetic per-article data, the report
on run folders with per-article records, and `planlm run --seeds 0,1` end to end on a tiny setting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planlm.eval.intervals import paired_bootstrap, pooled_bootstrap
from planlm.stages.report import report


def articles(rng, n=200, shift=0.0, noise=0.0, base=None):
    """Per-article records: tokens per article, NLL sums = tokens x (article's mean NLL + shift + noise)."""
    tokens = rng.integers(40, 160, n) if base is None else np.asarray(base["tokens"])
    mean_nll = rng.normal(5.0, 0.5, n) if base is None else np.asarray(base["nll_sum"]) / tokens
    n = len(tokens)
    nll = tokens * (mean_nll + shift + noise * rng.standard_normal(n))
    return {"article_ids": list(range(n)), "nll_sum": nll.tolist(), "tokens": [int(t) for t in tokens]}


def test_a_large_difference_excludes_zero_and_identical_variants_include_it():
    rng = np.random.default_rng(1)
    fixed = articles(rng)
    better = articles(rng, shift=-0.05, noise=0.02, base=fixed)  # 0.05 nats per token better: about -4.9 %
    ci = paired_bootstrap([(better, fixed)])
    assert ci["estimate"] == pytest.approx(100 * np.expm1(-0.05), abs=0.3)
    assert ci["low"] < ci["estimate"] < ci["high"] < 0  # excludes 0
    assert ci["resampled"] == "articles" and ci["articles"] == [200] and ci["n_boot"] == 2000

    same = paired_bootstrap([(fixed, fixed)])
    assert same["estimate"] == 0 and same["low"] == pytest.approx(0) and same["high"] == pytest.approx(0)
    noise_only = paired_bootstrap([(articles(rng, noise=0.05, base=fixed), fixed)])  # no effect, per-article noise
    assert noise_only["low"] < 0 < noise_only["high"]
    assert paired_bootstrap([(better, fixed)]) == ci  # a fixed seed: the same report twice


def test_pairing_detects_a_small_consistent_gain_that_article_spread_would_hide():
    """Articles differ far more from each other (0.5 nats) than the variants do (0.002): only a paired resample
    (the same articles for both) sees the 0.2 % gain; resampling each variant's articles independently would not."""
    rng = np.random.default_rng(2)
    fixed = articles(rng)
    slightly = articles(rng, shift=-0.002, noise=0.001, base=fixed)
    ci = paired_bootstrap([(slightly, fixed)])
    assert ci["high"] < 0 and ci["high"] - ci["low"] < 0.1
    # the unpaired spread of either PPL alone is far wider than the effect
    one = paired_bootstrap([(fixed, {**fixed, "nll_sum": [5.0 * t for t in fixed["tokens"]]})])
    assert one["high"] - one["low"] > 10 * (ci["high"] - ci["low"])


def test_seeds_widen_the_interval_and_are_resampled():
    rng = np.random.default_rng(3)
    fixed = articles(rng)
    per_seed = [articles(rng, shift=s, noise=0.01, base=fixed) for s in (-0.03, -0.01, 0.02)]
    joint = paired_bootstrap([(v, fixed) for v in per_seed])
    assert joint["resampled"] == "seeds and articles" and joint["seeds"] == 3
    assert joint["estimate"] == pytest.approx(np.mean([paired_bootstrap([(v, fixed)])["estimate"] for v in per_seed]))
    assert joint["low"] < 0 < joint["high"]  # the seeds disagree in sign: no claim
    widest_single = max(paired_bootstrap([(v, fixed)])["high"] - paired_bootstrap([(v, fixed)])["low"]
                        for v in per_seed)
    assert joint["high"] - joint["low"] > 2 * widest_single
    with pytest.raises(ValueError, match="different articles"):
        paired_bootstrap([(per_seed[0], {**fixed, "article_ids": list(range(1, 201))})])


def test_pooled_bootstrap_of_a_difference_of_gaps():
    """Four models per seed, one article draw for all of them: a difference of two gaps (0.03 - 0.01 nats) is
    recovered and excludes 0, while each model's own article spread (0.5 nats) would swamp it unpaired."""
    rng = np.random.default_rng(4)
    seeds = []
    for _ in range(2):
        base = articles(rng)
        seeds.append({"a": base, "a+": articles(rng, shift=0.03, noise=0.005, base=base),
                      "b": articles(rng, shift=-0.2, base=base), "b+": articles(rng, shift=-0.19, noise=0.005,
                                                                                  base=base)})
    gap = pooled_bootstrap(seeds, lambda nll: (nll["a+"] - nll["a"]) - (nll["b+"] - nll["b"]))
    assert gap["estimate"] == pytest.approx(0.02, abs=0.003) and 0 < gap["low"] < gap["estimate"] < gap["high"]
    assert gap["resampled"] == "seeds and articles" and gap["articles"] == [200, 200]
    # the two-model case is paired_bootstrap itself, resample for resample
    pairs = [(s["a+"], s["a"]) for s in seeds]
    assert pooled_bootstrap([{"variant": v, "baseline": b} for v, b in pairs],
                            lambda nll: 100 * np.expm1(nll["variant"] - nll["baseline"])) == paired_bootstrap(pairs)
    with pytest.raises(ValueError, match="different articles"):
        pooled_bootstrap([{**seeds[0], "b": {**seeds[0]["b"], "article_ids": list(range(1, 201))}}],
                         lambda nll: nll["a"] - nll["b"])


def _metrics(variant, seed, by_article):
    ppl = float(np.exp(sum(by_article["nll_sum"]) / sum(by_article["tokens"])))
    return {"variant": variant, "seed": seed, "ppl": ppl, "ppl_protocol": "strided", "ppl_actions": "predicted",
            "perplexity": {"strided": {"predicted": {"ppl": ppl, "by_article": by_article}}}}


def test_report_gives_intervals_and_the_figure5_plot(tmp_path):
    rng = np.random.default_rng(4)
    for seed in (0, 1, 2):
        fixed = articles(rng, n=50)
        for variant, shift in (("Fixed", 0.0), ("Soft", -0.05), ("Uniform", 0.0)):
            rec = fixed if variant == "Fixed" else articles(rng, shift=shift, noise=0.01, base=fixed)
            path = tmp_path / "runs" / f"seed-{seed}" / variant / "metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(_metrics(variant, seed, rec)))
    out = report(tmp_path / "runs", out=tmp_path / "report")
    table = {r["variant"]: r for r in json.loads((out / "report.json").read_text())["table"]}
    assert table["Fixed"]["ppl_rel_ci"] is None
    soft, uniform = table["Soft"]["ppl_rel_ci"], table["Uniform"]["ppl_rel_ci"]
    assert soft["seeds"] == 3 and soft["high"] < 0 and uniform["low"] < 0 < uniform["high"]
    assert soft["estimate"] == pytest.approx(table["Soft"]["ppl_rel"]["mean"], abs=1e-9)
    md = (out / "report.md").read_text()
    assert "| PPL vs Fixed (%) | 95% CI vs Fixed (%) |" in md
    assert f"[{soft['low']:+.2f}, {soft['high']:+.2f}] *" in md  # * = excludes 0
    assert (out / "seeds.png").read_bytes()[:4] == b"\x89PNG"

    # one test article per seed: no interval (a resample of one article has no spread), and no false "*"
    from planlm.stages.report import Run, ppl_intervals

    one = {"article_ids": [7], "nll_sum": [500.0], "tokens": [100]}
    worse = {**one, "nll_sum": [520.0]}
    runs = [Run(tmp_path, v, s, _metrics(v, s, rec)) for s in (0, 1) for v, rec in (("Fixed", one), ("Soft", worse))]
    assert ppl_intervals(runs) == {"Soft": None}

    # a malformed record is one of the problems the report lists
    bad = tmp_path / "runs" / "seed-0" / "Soft" / "metrics.json"
    m = json.loads(bad.read_text())
    m["perplexity"]["strided"]["predicted"]["by_article"]["tokens"] = [0]
    bad.write_text(json.dumps(m))
    from planlm.errors import PlanlmError

    with pytest.raises(PlanlmError, match="by_article"):
        report(tmp_path / "runs", out=tmp_path / "report2")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`planlm run --seeds 0,1` on 20 builtin articles (2 test articles; fake encoder, K=8), a tiny LM given, a
    few steps a stage."""
    from helpers import tiny_lm

    import planlm.stages.run as run_module
    from planlm.data.corpus import SourceConfig, read_corpus
    from planlm.presets import build
    from planlm.stages.run import RunPreset, run
    from planlm.train.trainer import TrainerConfig

    root = tmp_path_factory.mktemp("seeds")
    texts = [a.text for a in read_corpus(SourceConfig(max_articles=20), progress=False)[0]]
    lm = tiny_lm(root / "lm", texts)
    run_module.PRESETS["test-tiny"] = build(RunPreset, {
        "max_articles": 20, "num_actions": 8, "encoder": "fake:32", "prepare_preset": "small",
        "planner_optim": {"lr": 1e-3, "max_steps": 2}, "planner_context": "causal",
        "finetune": {"lr": 1e-3, "planner_lr": 1e-4, "batch_size": 4, "max_steps": 2}, "context_length": 32,
        "eval_protocol": "strided", "eval_max_articles": 2, "eval_batch_size": 64, "eval_oracle": True,
        "precision": "bf16-mixed", "finetune_val_windows": 4})
    try:
        out = run(out=root / "out", lm=lm, preset="test-tiny", variants=["Fixed", "Cornille PA"], seeds="0,1",
                  finetune_max_steps=3, trainer=TrainerConfig(accelerator="cpu", progress_bar=False, logger="none"))
    finally:
        del run_module.PRESETS["test-tiny"]
    return out


def test_run_with_two_seeds_writes_each_seed_and_the_interval_table(tiny_run):
    out = tiny_run
    for seed in (0, 1):
        for v in ("fixed", "cornille-pa"):
            m = json.loads((out / f"seed-{seed}" / "runs" / v / "evaluate" / "metrics.json").read_text())
            assert m["seed"] == seed
            rec = m["perplexity"]["strided"]["predicted"]["by_article"]
            assert sum(rec["tokens"]) == m["perplexity"]["strided"]["predicted"]["tokens"]
            assert len(rec["article_ids"]) == 2
            assert np.exp(sum(rec["nll_sum"]) / sum(rec["tokens"])) == pytest.approx(m["ppl"], rel=1e-9)
            manifest = json.loads((out / f"seed-{seed}" / "runs" / v / "manifest.json").read_text())
            assert manifest["counts"]["optimizer_steps"] == 3  # --finetune_max_steps over the preset's 2
            # the preset's precision reaches the stages that run the LM, and its cap on the loop's val windows
            assert manifest["config"]["trainer"]["precision"] == "bf16-mixed"
            assert manifest["counts"]["val_windows"] == 4
            evaluation = json.loads((out / f"seed-{seed}" / "runs" / v / "evaluate" / "manifest.json").read_text())
            assert evaluation["config"]["ppl"]["precision"] == "bf16-mixed"
        assert (out / f"seed-{seed}" / "lm").exists() is False  # --lm given: no LM pretrained
        assert (out / f"seed-{seed}" / "planner" / "manifest.json").exists()
    assert not (out / "seed-0" / "prepared").exists() and (out / "prepared" / "manifest.json").exists()
    results = (out / "results.md").read_text()
    assert "seeds 0,1, fine-tuning capped at 3 steps" in results and "| Cornille PA | 2 |" in results
    assert "95% CI vs Fixed" in results
    # eval_oracle: the variants that condition on per-sentence actions also get the oracle-action PPL (the ceiling)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in results.splitlines()
            if line.startswith("| ") and "seeds" not in line}
    header = [c.strip() for c in next(l for l in results.splitlines() if l.startswith("| variant")).split("|")[1:-1]]
    oracle = header.index("PPL, oracle actions")
    assert rows["Fixed"][oracle] == "-" and float(rows["Cornille PA"][oracle].split(" ± ")[0]) > 1
    assert "Departures from the paper (the budget's cuts): fine-tuning capped at 3 optimizer steps" in results
    assert "batch 4 x 32 tokens (paper: 32 x 128)" in results
    assert "the LM under bf16-mixed autocast in fine-tuning and evaluation (paper: fp32)" in results
    assert "the fine-tuning loop's val loss on 4 val windows" in results
    table = {r["variant"]: r for r in json.loads((out / "report" / "report.json").read_text())["table"]}
    assert table["Cornille PA"]["ppl_rel_ci"]["seeds"] == 2 and table["Cornille PA"]["seeds"] == [0, 1]
    assert (out / "report" / "seeds.png").exists()
    # different seeds train different models
    a, b = (json.loads((out / f"seed-{s}" / "runs" / "cornille-pa" / "evaluate" / "metrics.json").read_text())["ppl"]
            for s in (0, 1))
    assert a != b


def test_seeds_are_checked(tmp_path):
    from planlm.cli import main

    assert main(["run", "--out", str(tmp_path / "x"), "--seeds", "0,0"]) == 2
    assert main(["run", "--out", str(tmp_path / "x"), "--seeds", "a,1"]) == 2
    assert main(["run", "--out", str(tmp_path / "x"), "--finetune_max_steps", "0"]) == 2
