"""Multi-token prediction: heads on any supported LM, the sequential backward's exact gradients, self-speculative
decoding (greedy = plain greedy; sampling keeps head 1's distribution), and the pretrain-lm / finetune / evaluate /
generate wiring."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import VOCAB, random_lm
from planlm.errors import PlanlmError
from planlm.eval import speculative
from planlm.eval.speculative import accept_or_resample, decode
from planlm.models.mtp import MTPConfig, MTPHeads, shifted_cross_entropy

ARCHS = ["gpt2", "gpt_neox", "llama"]


def _no_dropout(lm):
    return lm.eval()  # HF dropout off: naive and sequential passes then see the same computation


@pytest.mark.parametrize("arch", ARCHS)
def test_head_one_is_the_lm_and_heads_predict_further_tokens(arch):
    lm = random_lm(arch, n_layer=2)
    heads = MTPHeads(lm, 3)
    ids = torch.randint(0, VOCAB, (2, 9))
    plain = lm(input_ids=ids).logits
    with heads.capturing():
        logits = lm(input_ids=ids, use_cache=False).logits
        h2, h3 = heads.head_logits(2), heads.head_logits(3)
    assert torch.equal(plain, logits)  # head 1 is exactly the unmodified LM
    assert h2.shape == h3.shape == plain.shape and not torch.allclose(h2, plain)
    out = heads.losses(lambda: lm(input_ids=ids, use_cache=False).logits, ids, "eval")
    # head 1's term is Hugging Face's next-token loss; head i's the CE of token t + i
    assert out.head_losses[0].item() == pytest.approx(lm(input_ids=ids, labels=ids).loss.item(), rel=1e-5)
    manual = F.cross_entropy(h3[:, :-3].reshape(-1, VOCAB), ids[:, 3:].reshape(-1))
    assert out.head_losses[2].item() == pytest.approx(manual.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(sum(l.item() for l in out.head_losses), rel=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_sequential_backward_gives_the_naive_sums_gradients(arch):
    lm = _no_dropout(random_lm(arch, n_layer=3))
    heads = MTPHeads(lm, 4)
    ids = torch.randint(0, VOCAB, (3, 12))
    labels = ids.clone()
    labels[0, :4] = -100  # unscored context tokens, as in strided windows

    def grads(mode):
        lm.zero_grad(set_to_none=True)
        heads.zero_grad(set_to_none=True)
        out = heads.losses(lambda: lm(input_ids=ids, use_cache=False).logits, labels, mode)
        (out.loss if mode == "naive" else out.trunk_loss).backward()
        named = list(lm.named_parameters()) + [("heads." + n, p) for n, p in heads.named_parameters()]
        return out.loss.item(), {n: p.grad.clone() for n, p in named if p.grad is not None}

    loss_naive, g_naive = grads("naive")
    loss_seq, g_seq = grads("sequential")
    assert loss_seq == pytest.approx(loss_naive, rel=1e-6)
    assert g_naive.keys() == g_seq.keys() and len(g_naive) == len(list(lm.parameters())) + len(list(heads.parameters()))
    for name in g_naive:
        torch.testing.assert_close(g_seq[name], g_naive[name], rtol=1e-4, atol=1e-6, msg=name)
    # the trunk really received the heads' gradient: the first block's weights have one
    first = next(n for n in g_seq if ".0." in n and not n.startswith("heads."))
    assert g_seq[first].abs().sum() > 0


def test_bad_configs_are_clear_errors():
    assert MTPConfig(n_heads=0, backward="x", init="y").problems() and len(MTPConfig(0, "x", "y").problems()) == 3
    with pytest.raises(PlanlmError, match="model_type .*planlm.models.arch.ARCHITECTURES"):
        from transformers import BertConfig, BertLMHeadModel

        MTPHeads(BertLMHeadModel(BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=32, is_decoder=True)), 2)
    assert shifted_cross_entropy(torch.zeros(1, 2, 5, requires_grad=True), torch.zeros(1, 2, dtype=torch.long),
                                 3).item() == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_self_speculative_equals_plain_greedy(arch):
    lm = random_lm(arch, n_layer=2)
    heads = MTPHeads(lm, 4, init="copy").eval()
    prompt = [3, 17, 5, 42]
    reference = lm.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(prompt):].tolist()
    plain, s_plain = decode(lm, prompt, 30)
    spec, s_spec = decode(lm, prompt, 30, heads=heads)
    assert plain == reference and spec == reference
    assert s_plain.forward_passes == 30 and s_plain.tokens_per_forward == 1.0
    # every pass but the prompt's yields 1 + its accepted drafts
    assert s_spec.new_tokens <= s_spec.forward_passes + s_spec.drafts_accepted
    assert s_spec.forward_passes < 30 or s_spec.drafts_accepted == 0
    assert sum(s_spec.accepted_by_head) == s_spec.drafts_accepted


def test_greedy_speculative_exercises_acceptance_and_rejection():
    lm = random_lm("gpt2", n_layer=2, seed=3)
    heads = MTPHeads(lm, 3, init="copy").eval()
    spec, s = decode(lm, [1, 2, 3], 40, heads=heads)
    assert spec == decode(lm, [1, 2, 3], 40)[0]
    assert 0 < s.drafts_accepted < s.drafts_proposed  # both branches of the verification ran


def _resample_from_p(p, q, draft, generator):
    """A classic mistake, for the tests to catch: on rejection, resample from p instead of norm(max(0, p - q))."""
    if torch.rand((), generator=generator) * q[draft] <= p[draft]:
        return draft, True
    return int(torch.multinomial(p, 1, generator=generator)), False


def test_acceptance_rule_preserves_the_target_distribution():
    p = torch.tensor([0.4, 0.3, 0.2, 0.1])
    q = torch.tensor([0.7, 0.05, 0.05, 0.2])  # a draft that overlaps the target only in part

    def tv(rule, n=4000):
        g = torch.Generator().manual_seed(0)
        counts = torch.zeros(4)
        for _ in range(n):
            d = int(torch.multinomial(q, 1, generator=g))
            counts[rule(p, q, d, g)[0]] += 1
        return 0.5 * (counts / n - p).abs().sum().item()

    assert tv(accept_or_resample) < 0.03  # ~0.01 by chance
    assert tv(_resample_from_p) > 0.08  # the wrong rule is off by 0.12 in expectation


def _toy_mtp(vocab=4, seed=1):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                    bos_token_id=0, eos_token_id=0)).eval()
    heads = MTPHeads(lm, 2).eval()
    with torch.no_grad():
        lm.transformer.wte.weight.mul_(6.0)  # peaked distributions (a random tiny LM's are near uniform)
        # head 2 drafts mostly token 0: a draft clearly unlike head 1, so that a wrong rule shows
        heads.heads[0].mlp.c_proj.bias.copy_(50.0 * lm.transformer.wte.weight[0])
    return lm, heads


def _two_token_distributions(lm, heads, prompt, vocab):
    """Head 1's exact joint distribution of the first two new tokens ``(V, V)``, and the one that resampling
    from p after a rejected draft would give instead."""
    with torch.no_grad(), heads.capturing():
        p1 = torch.softmax(lm(input_ids=torch.tensor([prompt]), use_cache=False).logits[0, -1].float(), -1)  # (V,)
        q = torch.softmax(heads.head_logits(2)[0, -1].float(), -1)  # (V,): head 2's draft of the second token
    with torch.no_grad():
        seconds = torch.tensor([[*prompt, a] for a in range(vocab)])
        p2 = torch.softmax(lm(input_ids=seconds).logits[:, -1].float(), -1)  # (V, V): row a = p(. | prompt, a)
    kept = torch.minimum(p2, q)  # (V, V): accepted-draft mass
    wrong = p1[:, None] * (kept + (1 - kept.sum(-1, keepdim=True)) * p2)
    return p1[:, None] * p2, wrong


def test_speculative_sampling_keeps_head_ones_distribution():
    vocab, prompt, n = 4, [1, 3, 2], 1000
    lm, heads = _toy_mtp(vocab)
    exact, wrong = _two_token_distributions(lm, heads, prompt, vocab)
    # The second token is head 2's draft verified by head 1: the acceptance rule decides their joint distribution.
    counts = torch.zeros(vocab, vocab)
    for i in range(n):
        out, _ = decode(lm, prompt, 2, heads=heads, temperature=1.0, seed=i)
        counts[out[0], out[1]] += 1
    tv = 0.5 * (counts / n - exact).abs().sum().item()
    assert tv < 0.07, tv  # ~0.03 by chance over 16 cells and 1000 draws
    assert 0.5 * (wrong - exact).abs().sum().item() > 0.14  # a wrong rule would sit far outside the tolerance


# ---- stage wiring ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mtp_lm(tmp_path_factory):
    from helpers import synthetic_prepared
    from planlm.train.lm_pretraining import lm_optim
    from planlm.stages.pretrain_lm import pretrain_lm
    from planlm.train.trainer import TrainerConfig

    root = tmp_path_factory.mktemp("mtp")
    corpus = synthetic_prepared(root / "prepared", n_articles=20)
    out = root / "lm"
    metrics = pretrain_lm(str(corpus.path), out=str(out), preset="tiny", vocab_size=300,
                          optim=lm_optim("tiny", max_steps=6),
                          trainer=TrainerConfig(accelerator="cpu", progress_bar=False, logger="none"),
                          mtp=MTPConfig(n_heads=3))
    return corpus, out, metrics


def test_pretrain_lm_trains_and_saves_the_heads(mtp_lm):
    from planlm.artifacts import read_manifest
    from planlm.persist import load_mtp_lm

    corpus, out, metrics = mtp_lm
    assert metrics["val_loss"] < metrics["val_loss_initial"]
    assert (out / "mtp_heads.safetensors").exists() and read_manifest(out, "pretrain-lm")["counts"]["mtp_heads"] == 3
    lm, heads, tok = load_mtp_lm(out, "cpu")
    assert heads.n_heads == 3 and len(heads.heads) == 2
    # Layer norms start at bias 0 and have no weight decay: a non-zero bias means the heads got gradients.
    for head in heads.heads:
        assert head.ln_1.bias.abs().max() > 0 and head.ln_2.bias.abs().max() > 0


def test_evaluate_and_generate_on_an_mtp_lm(mtp_lm, tmp_path, capsys):
    from planlm.eval.perplexity import PerplexityConfig
    from planlm.stages.evaluate import evaluate
    from planlm.eval.generator import SamplingConfig
    from planlm.stages.generate import generate

    corpus, out, metrics = mtp_lm
    ev = evaluate(out, out=tmp_path / "ev", split="val", ppl=PerplexityConfig(protocols=["strided"], context_length=32,
                                                                              max_articles=3), probe_windows=8)
    m = json.loads((ev / "metrics.json").read_text())
    assert m["variant"] == "MTP (n=3)" and m["ppl"] > 1
    assert [h["target"] for h in m["mtp_heads"]] == ["t+1", "t+2", "t+3"]
    assert all(0 <= h["accuracy"] <= 1 and h["tokens"] > 0 for h in m["mtp_heads"])
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.0)
    spec = generate(out, prompt="The", sampling=sampling, speculative=True, json=True)[0]
    plain = generate(out, prompt="The", sampling=sampling, speculative=False, json=True)[0]
    assert spec["text"] == plain["text"] and spec["speculative"] and not plain["speculative"]
    assert plain["tokens_per_forward"] == 1.0


def test_finetune_adds_heads_to_a_frozen_pretrained_lm(tmp_path):
    from safetensors.torch import load_file

    from finetune_env import cli_args, make_env
    from planlm.cli import main

    env = make_env(tmp_path, n_articles=12)
    out = tmp_path / "ft"
    args = cli_args(env, out, "--optim.max_steps", "3", "--recipe.selection", "soft", "--recipe.planner_unfreeze",
                    "immediate", "--mtp.n_heads", "3")
    assert main(args) == 0
    from planlm.persist import load_mtp_heads, load_planned_lm

    model = load_planned_lm(out)
    heads = load_mtp_heads(out, model.lm)
    assert heads.n_heads == 3
    start = MTPHeads(model.lm, 3, init="copy").state_dict()  # the frozen LM's last block: the heads' start
    trained = load_file(str(out / "mtp_heads.safetensors"))
    assert any(not torch.equal(trained[k], start[k]) for k in start)
    assert not (out / "lm").exists()  # the trunk stayed frozen: the LM is not saved again
    from planlm.eval.perplexity import PerplexityConfig
    from planlm.stages.evaluate import evaluate

    ev = evaluate(out, out=tmp_path / "ev", split="val", probe_windows=4,
                  ppl=PerplexityConfig(actions=["predicted"], protocols=["strided"], context_length=32, max_articles=2))
    heads_acc = json.loads((ev / "metrics.json").read_text())["mtp_heads"]
    assert [h["head"] for h in heads_acc] == [1, 2, 3] and heads_acc[0]["tokens"] > 0
    assert main(cli_args(env, tmp_path / "bad", "--mtp.n_heads", "2", "--trainer.precision", "16-mixed")) == 2


def test_sequential_and_naive_training_runs_match(tmp_path):
    """Through Lightning (which zeroes .grad between the training step and its backward) both orders train alike."""
    from helpers import synthetic_prepared
    from planlm.train.lm_pretraining import lm_optim
    from planlm.stages.pretrain_lm import pretrain_lm
    from planlm.train.trainer import TrainerConfig

    corpus = synthetic_prepared(tmp_path / "prepared", n_articles=12)
    quiet = TrainerConfig(accelerator="cpu", progress_bar=False, logger="none")
    runs = {b: pretrain_lm(str(corpus.path), out=str(tmp_path / b), preset="tiny", vocab_size=300,
                           optim=lm_optim("tiny", max_steps=4),
                           trainer=quiet, mtp=MTPConfig(n_heads=2, backward=b)) for b in ("naive", "sequential")}
    assert runs["sequential"]["val_loss"] == pytest.approx(runs["naive"]["val_loss"], rel=1e-5)
    assert runs["sequential"]["val_loss"] < runs["sequential"]["val_loss_initial"]


@pytest.mark.slow
def test_mtp_compare_runs_the_stages_and_writes_the_table(tmp_path):
    from helpers import synthetic_prepared
    from planlm.eval.probes import ProbeConfig
    from planlm.studies.mtp_compare import mtp_compare
    from planlm.train.lm_pretraining import lm_optim
    from planlm.train.trainer import TrainerConfig

    corpus = synthetic_prepared(tmp_path / "prepared", n_articles=16)
    out = mtp_compare(prepared=corpus.path, out=tmp_path / "cmp", n_heads=[1, 2], preset="tiny",
                      optim=lm_optim("tiny", max_steps=2),
                      context_length=32, eval_max_tokens=300, probe_windows=8, decode_prompts=1, decode_tokens=6,
                      probe=ProbeConfig(distances=[1, 2], vocab_size=20, max_positions=300, max_iter=5),
                      trainer=TrainerConfig(accelerator="cpu", progress_bar=False, logger="none"))
    rows = json.loads((out / "mtp_results.json").read_text())["rows"]
    assert [r["n"] for r in rows] == [1, 2] and rows[0]["trained_tokens"] == rows[1]["trained_tokens"]
    assert "speculative" in rows[1]["decoding"] and "speculative" not in rows[0]["decoding"]
    assert (out / "mtp_probes.png").stat().st_size > 0 and "MTP (n=2)" in (out / "mtp_results.md").read_text()
