"""`planlm evaluate` on a real (tiny) finetune run: metrics.json in the report's schema, every number traceable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune_env import cli_args, make_env
from generate_env import ENCODER
from planlm.cli import main
from planlm.variants import variant_name
from planlm.persist import load_run
from planlm.eval.perplexity import perplexity

PPL = ["--ppl.context_length", "24", "--ppl.max_tokens", "150", "--ppl.batch_size", "16"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = make_env(tmp_path_factory.mktemp("ev"))
    env["run"] = env["root"] / "soft"
    assert main(cli_args(env, env["run"], "--optim.max_steps", "2")) == 0
    return env


def read(out):
    """metrics.json, after checking that its typed record gives back the very file (keys, order, nulls)."""
    from planlm.eval.record import MetricsRecord

    m = json.loads((out / "metrics.json").read_text())
    assert json.dumps(MetricsRecord.load(out / "metrics.json").to_json()) == json.dumps(m)
    return m


def test_evaluate_writes_the_report_schema(env):
    out = env["root"] / "eval"
    args = ["evaluate", "--run", str(env["run"]), "--out", str(out), "--ppl.protocols", "[paper, strided]", *PPL]
    assert main(args) == 0
    m = read(out)
    assert m["variant"] == "Soft / unfreeze halfway" and m["seed"] == 0
    assert set(m["perplexity"]) == {"paper", "strided"}
    assert set(m["perplexity"]["paper"]) == {"predicted", "oracle"}
    assert m["ppl"] == m["perplexity"]["paper"]["predicted"]["ppl"]
    assert m["ppl_oracle"] == m["perplexity"]["paper"]["oracle"]["ppl"]
    assert m["ppl_strided_minus_paper"] == pytest.approx(
        m["perplexity"]["strided"]["predicted"]["ppl"] - m["perplexity"]["paper"]["predicted"]["ppl"])
    assert "p_predicted" not in m  # only hard-selection runs enter the mixing plot

    # the number is the perplexity function's on the same model and data
    model, tok, corpus, _ = load_run(env["run"], device="cpu")
    direct = perplexity(model, corpus, tok, "test", "predicted", "paper", 24, max_tokens=150, progress=False)
    assert m["ppl"] == pytest.approx(direct.ppl, rel=1e-6) and m["perplexity"]["paper"]["predicted"]["tokens"] == 150

    # planner accuracy against the oracle actions of the evaluated sentences
    ids = np.concatenate([np.arange(*corpus.sentence_range(int(a))) for a in corpus.article_ids("test")])
    from planlm.data.planner_inputs import PlannerInputs
    from planlm.eval.perplexity import planner_logits_for

    logits = planner_logits_for(model, ids, PlannerInputs.from_config(corpus, model.planner.config, tokenizer=tok))
    oracle = torch.from_numpy(corpus.actions[ids].astype(np.int64))
    assert m["planner"]["sentences"] == len(ids)
    assert m["planner"]["top1"] == pytest.approx(float((logits.argmax(-1) == oracle).float().mean()))
    assert m["planner"]["top1"] <= m["planner"]["top5"] <= 1.0
    assert (m["planner_top1"], m["planner_top5"]) == (m["planner"]["top1"], m["planner"]["top5"])

    # Appendix E: right + wrong tokens are all the tokens, and the two perplexities pool back to the total
    split = m["by_planner_correct"]["predicted"]
    n_ok, n_bad = split["right"]["tokens"], split["wrong"]["tokens"]
    assert n_ok + n_bad == 150
    pooled = sum(n * np.log(split[k]["ppl"]) for k, n in (("right", n_ok), ("wrong", n_bad)) if n)
    assert np.exp(pooled / 150) == pytest.approx(m["ppl"], rel=1e-5)

    assert "| paper | predicted |" in (out / "metrics.md").read_text()
    from planlm.stages.report import gather

    gathered = gather([out])  # `planlm report` reads it
    assert "Soft / unfreeze halfway" in json.dumps(gathered, default=str)

    # reuse, refusal, force
    assert main(args) == 0  # same config: up to date
    assert main(["evaluate", "--run", str(env["run"]), "--out", str(out), *PPL]) == 2  # other config, no --force
    assert main(["evaluate", "--run", str(env["run"]), "--out", str(out), *PPL, "--variant", "Mine",
                 "--force", "true"]) == 0
    assert read(out)["variant"] == "Mine" and "strided" not in read(out)["perplexity"]


def test_evaluate_with_generation_metrics_and_probes(env):
    out = env["root"] / "eval-gen"
    args = ["evaluate", "--run", str(env["run"]), "--out", str(out), "--ppl.actions", "[predicted]", *PPL,
            "--generation", "true", "--encoder", ENCODER, "--gen.continuations", "3", "--gen.unconditional", "2",
            "--gen.prefix_tokens", "16", "--gen.unconditional_tokens", "32", "--gen.lengths", "[8, 16]",
            "--probes", "true", "--probe.distances", "[1, 2]", "--probe.max_iter", "5", "--probe_windows", "8"]
    assert main(args) == 0
    m = read(out)
    for key in ("mauve", "rouge2", "latent_ppl", "edit_distance", "mauve_protocol", "latent_delta",
                "latent_ppl_protocol", "rouge2_protocol", "edit_distance_protocol", "edit_distance_mean",
                "plan_matching", "plan_matching_protocol"):
        assert key in m
    assert m["plan_matching"] is None or 0.0 <= m["plan_matching"] <= 1.0  # Figure 4 (issue 27 item 3)
    assert set(m["plan_matching_protocol"]["sentences"]) >= {"unconditional", "continuation"}
    assert set(m["edit_distance"]) <= {"8", "16"}
    md = (out / "metrics.md").read_text()  # the record's labelled fields
    assert "| mauve |" in md and f"| edit_distance_mean | {m['edit_distance_mean']:.3f} |" in md
    assert all(f"| edit distance @{n} (per 128 tokens) |" in md for n in m["edit_distance"])
    lines = (out / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 2 + 3 * 2 and json.loads(lines[0])["kind"] == "unconditional"
    rows = json.loads((out / "probes.json").read_text())
    assert {r["distance"] for r in rows} == {1, 2} and {r["kind"] for r in rows} == {"pre", "post"}
    assert (out / "probes.png").exists()


def test_variant_names():
    def name(**recipe):
        return variant_name({"recipe": recipe})

    assert name(selection="fixed") == "Fixed" and name(selection="uniform") == "Uniform"
    assert name(selection="hard", actions="oracle") == "Cornille OA"
    assert name(selection="hard", actions="predicted") == "Cornille PA"
    assert name(selection="soft", planner_unfreeze="0.5") == "Soft / unfreeze halfway"
    assert name(selection="soft", planner_unfreeze="never") == "Soft / never"
    assert name(selection="straight-through", planner_unfreeze="0.5") == "Straight-through / halfway"
    assert name(selection="soft", planner_unfreeze="immediate", nap_weight=1.0) == "NAP during fine-tuning"


def test_help_and_bad_inputs(env, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--ppl.protocols" in text and "--generation" in text and "planner accuracy" in text
    assert main(["evaluate", "--run", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--run", env["prepared"]]) == 2
    assert "is a `prepare` artifact" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(env["run"]), "--ppl.actions", "[best]", "--split", "dev"]) == 2
    err = capsys.readouterr().err
    assert "ppl.actions" in err and "split" in err
