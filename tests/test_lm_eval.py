"""planlm in EleutherAI's lm-evaluation-harness (planlm/integrations/lm_eval.py), offline, on tasks of our own: a
rolling-loglikelihood task (word_perplexity, bits_per_byte) over a local jsonl of Wikipedia articles and a
multiple-choice task with two endings each."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lm_eval")

from finetune_env import cli_args
from helpers import prepare_builtin_slice, tiny_lm, tiny_planner

from planlm.cli import main
from planlm.data.prepared import PreparedCorpus
from planlm.integrations import lm_eval_main

CONTEXT = 32  # the runs' fine-tuning windows; the harness scores with the same context length


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A finetune run on a real Wikipedia slice (`planlm prepare`, fake:32 encoder, K = 16), tiny LM and planner,
    and the local tasks over three of its test articles."""
    root = tmp_path_factory.mktemp("lmeval")
    prepared = prepare_builtin_slice(root / "prep", n_articles=12, num_actions=16)
    corpus = PreparedCorpus.load(prepared)
    env = {"root": root, "prepared": str(prepared), "corpus": corpus,
           "lm": tiny_lm(root / "lm", list(corpus.texts)), "planner": tiny_planner(root / "planner", corpus)}
    env["run"] = root / "soft"
    assert main(cli_args(env, env["run"], "--optim.max_steps", "2")) == 0
    # the test and val articles whole (`planlm evaluate` scores them too), and the start of a train article
    env["test_id"], env["val_id"] = int(corpus.article_ids("test")[0]), int(corpus.article_ids("val")[0])
    texts = [corpus.texts[env["test_id"]], corpus.texts[env["val_id"]], corpus.texts[0][:1500]]
    env["texts"] = texts
    tasks = root / "tasks"
    tasks.mkdir()
    docs = tasks / "wiki.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tasks / "wiki_ppl.yaml").write_text(f"""task: planlm_wiki_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
""")
    choices = tasks / "choices.jsonl"
    rows = []
    for t in texts:
        rows.append({"context": t[:100], "endings": [t[100:160], " the cat sat on the mat."], "label": 0})
    choices.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "wiki_mc.yaml").write_text(f"""task: planlm_wiki_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {choices}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{endings}}}}"
doc_to_target: label
metric_list:
  - metric: acc
""")
    env["tasks"] = tasks
    return env


def harness(env, out: Path, task: str, model_args: str) -> tuple[dict, list[dict]]:
    """`planlm-lm-eval --model planlm ...` (the harness's own command line): its results and logged samples."""
    rc = lm_eval_main(["--model", "planlm", "--model_args", model_args, "--tasks", task, "--include_path",
                       str(env["tasks"]), "--batch_size", "16", "--output_path", str(out), "--log_samples"])
    assert rc == 0
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for f in out.rglob(f"samples_{task}_*.jsonl") for line in f.read_text().splitlines()]
    return results["results"][task], sorted(samples, key=lambda s: s["doc_id"])


def evaluated(env, split: str, protocol: str) -> tuple[list[int], list[float]]:
    """`planlm evaluate` of the run on one split: (article ids, NLL sums) of its predicted-action perplexity."""
    out = env["root"] / f"eval-{split}-{protocol}"
    assert main(["evaluate", "--run", str(env["run"]), "--out", str(out), "--split", split, "--ppl.actions",
                 "[predicted]", "--ppl.protocols", f"[{protocol}]", "--ppl.context_length", str(CONTEXT),
                 "--ppl.batch_size", "16"]) == 0
    r = json.loads((out / "metrics.json").read_text())["perplexity"][protocol]["predicted"]["by_article"]
    return r["article_ids"], r["nll_sum"]


def test_rolling_loglikelihood_is_planlm_evaluates(env):
    """Same windows (context 32; paper protocol, and strided), same predicted actions: the harness's log-likelihood
    of an article is minus `planlm evaluate`'s NLL sum over it (prefix_token=false: evaluate's first token)."""
    from planlm.integrations.lm_eval import PlanlmLM

    metrics, samples = harness(env, env["root"] / "h-rolling", "planlm_wiki_ppl",
                               f"run={env['run']},prefix_token=false,context_length={CONTEXT}")
    ids, nll = evaluated(env, "test", "paper")
    assert ids == [env["test_id"]]
    assert -float(np.ravel(samples[0]["resps"])[0]) == pytest.approx(nll[0], rel=1e-4)
    ids, nll = evaluated(env, "val", "strided")
    strided = PlanlmLM(run=str(env["run"]), prefix_token=False, context_length=CONTEXT, protocol="strided")
    assert ids == [env["val_id"]] and -strided.score([("", env["texts"][1])])[0][0] == pytest.approx(nll[0], rel=1e-4)
    # every document through the harness is the model's own score of it, and the metrics are the harness's of those
    lm = PlanlmLM(run=str(env["run"]), prefix_token=False, context_length=CONTEXT, batch_size=16)
    for s, (ll, _) in zip(samples, lm.score([("", t) for t in env["texts"]])):
        assert float(np.ravel(s["resps"])[0]) == pytest.approx(ll, rel=1e-4)
    total = sum(float(np.ravel(s["resps"])[0]) for s in samples)
    words = sum(len(t.split()) for t in env["texts"])
    assert metrics["word_perplexity,none"] == pytest.approx(math.exp(-total / words), rel=1e-4)
    assert metrics["bits_per_byte,none"] == pytest.approx(
        -total / sum(len(t.encode()) for t in env["texts"]) / math.log(2), rel=1e-4)


def test_prefix_token_scores_the_first_token_too(env):
    """With the BOS prefix (default) every token is scored: one more token per text, all earlier ones unchanged when
    the text is shorter than the window."""
    from planlm.integrations.lm_eval import PlanlmLM

    short = [t[:60] for t in env["texts"]]
    lm = PlanlmLM(run=str(env["run"]), context_length=256, protocol="paper")
    plain = PlanlmLM(run=env["lm"], context_length=256)
    assert lm.prefix == lm.tokenizer.bos_token
    # a plain LM folder (the baseline): the text after BOS, every token, as the LM itself scores it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf, tok = AutoModelForCausalLM.from_pretrained(env["lm"]).eval(), AutoTokenizer.from_pretrained(env["lm"])
    for (ll, greedy), t in zip(plain.score([("", t) for t in short]), short):
        ids = torch.tensor([[tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits[0, :-1].float(), -1)  # (T - 1, V)
        direct = logp.gather(1, ids[0, 1:, None]).sum()
        assert ll == pytest.approx(float(direct), rel=1e-4)
        assert greedy == bool((logp.argmax(-1) == ids[0, 1:]).all())
    # the planned run: tokens scored = all of them (prefix) vs all but the first (no prefix)
    with_prefix = lm.score([("", t) for t in short])
    assert all(math.isfinite(ll) and ll < 0 for ll, _ in with_prefix)


def test_multiple_choice_task_runs(env):
    metrics, samples = harness(env, env["root"] / "h-mc", "planlm_wiki_mc",
                               f"run={env['run']},context_length={CONTEXT},protocol=strided")
    assert len(samples) == 3
    hits = []
    for s in samples:
        lls = [float(np.ravel(r)[0]) for r in s["filtered_resps"]]
        assert len(lls) == 2 and all(math.isfinite(x) and x < 0 for x in lls)
        hits.append(int(np.argmax(lls)) == 0)
    assert metrics["acc,none"] == pytest.approx(np.mean(hits))


def test_loglikelihood_actions_come_from_the_text_before(env):
    """The continuation's own sentences never choose the actions it is scored under: a continuation scored after a
    context equals the rolling score of context + continuation minus the rolling score of the context alone, as
    long as the context ends a sentence (its sentences and their planned actions are the same in both)."""
    from planlm.integrations.lm_eval import PlanlmLM

    lm = PlanlmLM(run=str(env["run"]), context_length=256, prefix_token=True)
    t = env["texts"][2]
    cut = t.index(". ") + 1
    context, continuation = t[:cut], t[cut:400]
    (both, _), (ctx, _) = lm.score([("", context + continuation), ("", context)])
    (cont, _), = lm.loglikelihood([type("R", (), {"args": (context, continuation)})()])
    assert cont == pytest.approx(both - ctx, rel=1e-4, abs=1e-4)
    # oracle actions: each sentence's own nearest centroid, so the scores differ from the planner's
    oracle = PlanlmLM(run=str(env["run"]), context_length=256, actions="oracle")
    assert oracle.score([("", t[:400])])[0][0] != pytest.approx(lm.score([("", t[:400])])[0][0], rel=1e-6)


def test_generate_until_is_planner_in_the_loop_generation(env):
    from planlm.eval.generator import SamplingConfig
    from planlm.integrations.lm_eval import PlanlmLM

    lm = PlanlmLM(run=str(env["run"]))
    prompt = env["texts"][0][:80]
    full = lm.generator.generate([prompt], [None], SamplingConfig(max_new_tokens=20, temperature=0.0))[0].text
    stop = full[5:8]
    request = type("R", (), {"args": (prompt, {"until": [stop], "max_gen_toks": 20})})()
    assert lm.generate_until([request]) == [full[: full.index(stop)]]


def test_bad_model_args_end_in_one_line(env, capsys):
    rc = lm_eval_main(["--model", "planlm", "--model_args", f"run={env['run']},actions=nope,colour=red",
                       "--tasks", "planlm_wiki_ppl", "--include_path", str(env["tasks"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("planlm-lm-eval: error: ")
    assert "actions must be one of predicted, oracle, fixed" in err[-1] and "colour" in err[-1]


def test_missing_harness_names_the_extra(monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith(("lm_eval.", "planlm.integrations.lm"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval fails as if not installed
    assert lm_eval_main(["--model", "planlm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["planlm-lm-eval: error: the lm-evaluation-harness is not installed: pip install 'planlm[lm-eval]'"]
