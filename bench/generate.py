"""Benchmark planner-in-the-loop generation against plain Hugging Face ``generate`` of the same LM, side by side.

    python bench/generate.py --run runs/finetune          # a fine-tuned planned LM (its corpus's encoder)
    python bench/generate.py                              # self-contained: a GPT-2 of GPT-2 small's shape trained
                                                          # briefly on wiki-bench text, MiniLM, a paper-size planner
    python bench/generate.py --layers 6 --width 384       # the same with a 6 x 384 GPT-2, smaller than MiniLM
    python bench/generate.py --device cuda --tokens 512 --batch 32 --json

Three decoders of the same LM, the same batch of ``--batch`` texts (B = 8 on a CPU, 32 on a GPU) and the same
sampling settings (temperature 1, top-p 0.95), each run ``--samples`` times after one warm-up, new tokens per second
over all of them:

- ``hf``: ``lm.generate`` on the batch (KV cache, the LM without adapters);
- ``planned-fixed``: planlm's decoding loop with the adapters on and ``fixed`` selection (no planner, no splitting):
  the cost of the loop itself and the adapter hooks;
- ``planned``: the planner in the loop (the incremental sentence tracker, sentence embedding, one planner call per
  step for every text that ended a sentence, and the re-feed of each finished sentence's last token).

The three run round-robin (one batch each per round, rotating which goes first), so that a machine whose load
changes during the run slows all three alike; the ratios are what to compare across machines.

The self-contained setup's LM has GPT-2 small's shape by default (12 layers, 768 wide, 12 heads: the paper's LM),
with a 4,096-token BPE trained on wiki-bench text (GPT-2's own tokenizer needs the Hub; its 50,257-token output layer
would make every LM step dearer and the ratios better). The planner-in-the-loop overhead is mostly fixed per sentence
(one MiniLM call, 22 M parameters, over each finished sentence), so the ratio depends on the LM's size: with an LM
smaller than the encoder (``--layers 6 --width 384``, 12.6 M) the encoder costs as much as the LM itself. The LM is
trained for ``--train-steps`` steps (batches of 8 x 64 tokens) so that it writes sentence ends at a realistic rate
(re-planning is the cost being measured; a random LM almost never ends a sentence). Results and the command go in
docs/performance.md (``## generate``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

# the shared data folder next to the checkout (or next to a folder of worktrees)
WIKI_BENCH = next((p / "shared" / "data" / "wiki-bench.jsonl.gz" for p in Path(__file__).resolve().parents
                   if (p / "shared" / "data" / "wiki-bench.jsonl.gz").exists()), Path("shared/data/wiki-bench.jsonl.gz"))


def synthetic_setup(args):
    """A small GPT-2 trained briefly on wiki-bench text + MiniLM + a random paper-size planner (K=1024)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from planlm.data.encoders import DEFAULT_ENCODER, load_encoder
    from planlm.data.prepared import PreparedCorpus
    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
    from planlm.models.planner import Planner, PlannerConfig
    from planlm.train.lm_pretraining import train_tokenizer

    with gzip.open(WIKI_BENCH, "rt") as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(200), f)]
    tok = train_tokenizer(texts, vocab_size=4096)
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=args.width, n_layer=args.layers,
                                    n_head=max(1, args.width // 64), bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id)).to(args.device)
    ids = torch.tensor([i for t in texts for i in tok(t)["input_ids"]])
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    cached = args.lm_cache and Path(args.lm_cache).exists()
    t0 = time.perf_counter()
    for step in range(0 if cached else args.train_steps):
        starts = torch.randint(0, len(ids) - 65, (8,))
        batch = torch.stack([ids[s : s + 64] for s in starts.tolist()]).to(args.device)  # (8, 64)
        loss = lm(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    if not cached:
        print(f"trained the bench LM for {args.train_steps} steps in {time.perf_counter() - t0:.0f} s "
              f"(loss {loss:.2f})", file=sys.stderr)
    encoder = load_encoder(DEFAULT_ENCODER, device=args.device)
    k, d = 1024, encoder.dim
    centroids = np.random.default_rng(0).standard_normal((k, d)).astype(np.float32)
    corpus = PreparedCorpus(
        path=Path("<bench>"), manifest={}, titles=[], texts=[], article_split=np.zeros(0, dtype=str),
        sentence_article=np.zeros(0, np.int64), sentence_position=np.zeros(0, np.int32),
        sentence_start=np.zeros(0, np.int64), sentence_end=np.zeros(0, np.int64), actions=np.zeros(0, np.int32),
        embeddings=np.zeros((0, d), np.float16), centroids=centroids,
    )
    planner = Planner(PlannerConfig(num_actions=k, encoder_dim=d, context_sentences=None), torch.from_numpy(centroids))
    model = PlannedLM(lm, PlannedLMConfig(num_actions=k, action_dim=d), torch.from_numpy(centroids), planner)
    if cached:  # the whole planned LM (its planner's random init included) as the run that trained it saved it
        model.load_state_dict(torch.load(args.lm_cache, map_location=args.device))
    elif args.lm_cache:
        torch.save(model.state_dict(), args.lm_cache)
    return model.to(args.device).eval(), tok, corpus, encoder


def run_setup(args):
    from planlm.data.encoders import load_encoder
    from planlm.persist import load_run

    model, tok, corpus, _ = load_run(Path(args.run), device=args.device)
    return model, tok, corpus, load_encoder(args.encoder or corpus.encoder, device=args.device)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_round_robin(fns: dict, samples: int) -> list[tuple[str, float, int]]:
    """``(name, seconds, tokens)`` per decoder: one warm-up call each, then ``samples`` rounds, every round calling
    each decoder once in a rotating order, so that a load that changes over the run hits all of them alike."""
    for fn in fns.values():
        fn(-1)
    names = list(fns)
    seconds, tokens = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
    for i in range(samples):
        for name in names[i % len(names):] + names[: i % len(names)]:
            sync()
            t0 = time.perf_counter()
            tokens[name] += fns[name](i)
            sync()
            seconds[name] += time.perf_counter() - t0
    return [(name, seconds[name], tokens[name]) for name in names]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="a `planlm finetune` folder (default: the self-contained setup)")
    p.add_argument("--encoder", help="sentence encoder for --run (default: its corpus's)")
    p.add_argument("--tokens", type=int, default=256, help="new tokens per sample")
    p.add_argument("--samples", type=int, default=2, help="timed batches per decoder")
    p.add_argument("--batch", type=int, default=0, help="texts per batch (default: 8 on a CPU, 32 on a GPU)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--prompt", default="The Moon is Earth's only natural satellite.")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--layers", type=int, default=12, help="self-contained LM: layers (GPT-2 small: 12)")
    p.add_argument("--width", type=int, default=768, help="self-contained LM: hidden size (GPT-2 small: 768)")
    p.add_argument("--train-steps", type=int, default=60, help="self-contained LM: training steps")
    p.add_argument("--lm-cache", help="self-contained LM: load its trained weights from this file, or train and save "
                                      "them there (training is seeded: the same LM either way)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (32 if str(args.device).startswith("cuda") else 8)

    from planlm.eval.generator import PlannedGenerator, SamplingConfig

    model, tok, corpus, encoder = run_setup(args) if args.run else synthetic_setup(args)
    prompt_ids = torch.tensor([tok(args.prompt, add_special_tokens=False)["input_ids"]] * batch, device=args.device)

    def sampling(i):
        return SamplingConfig(max_new_tokens=args.tokens, temperature=1.0, top_p=0.95, seed=100 + i)

    def hf(i):
        torch.manual_seed(100 + i)
        with torch.inference_mode():
            out = model.lm.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), do_sample=True,
                                    top_p=0.95, top_k=0, temperature=1.0, max_new_tokens=args.tokens,
                                    pad_token_id=tok.pad_token_id)
        return (out.shape[1] - prompt_ids.shape[1]) * batch

    planned_gen = PlannedGenerator(model, tok, corpus, encoder)
    sentences = []

    def planned(i):
        gs = planned_gen.generate([args.prompt] * batch, None, sampling(i * batch), after_plan="planner")
        if i >= 0:
            sentences.extend(len([s for s in g.sentences if s.generated]) for g in gs)
        return sum(g.new_tokens for g in gs)

    selection = model.config.selection
    model.config.selection = "fixed"  # the same loop and adapters, no planner and no sentence work
    fixed_gen = PlannedGenerator(model, tok, corpus, encoder)
    model.config.selection = selection

    def fixed(i):
        model.config.selection = "fixed"
        try:
            return sum(g.new_tokens for g in fixed_gen.generate([args.prompt] * batch, None, sampling(i * batch)))
        finally:
            model.config.selection = selection

    rows = time_round_robin({"hf": hf, "planned-fixed": fixed, "planned": planned}, args.samples)
    base = rows[0][2] / rows[0][1]
    n_params = sum(p.numel() for p in model.lm.parameters())
    result = {
        "device": str(args.device), "threads": torch.get_num_threads(), "lm_parameters": n_params, "batch": batch,
        "samples": args.samples, "new_tokens": args.tokens, "sentences_per_text": float(np.mean(sentences)),
        "tokens_per_s": {name: tokens / seconds for name, seconds, tokens in rows},
    }
    result["ratio_planned_vs_hf"] = result["tokens_per_s"]["planned"] / base
    result["ratio_planned_fixed_vs_hf"] = result["tokens_per_s"]["planned-fixed"] / base
    if args.json:
        print(json.dumps(result))
        return
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, LM {n_params / 1e6:.1f} M parameters, "
          f"{args.samples} batches of {batch} x {args.tokens} new tokens, planned: {np.mean(sentences):.1f} sentences "
          "per text")
    print(f"{'decoder':<15} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'vs hf':>6}")
    for name, seconds, tokens in rows:
        rate = tokens / seconds
        print(f"{name:<15} {tokens:>7} {seconds:>8.2f} {rate:>9.1f} {rate / base:>6.2f}")


if __name__ == "__main__":
    main()
