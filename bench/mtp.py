"""Multi-token prediction: training step time and peak memory for n = 1, 2, 4 heads (naive vs sequential backward),
and decoding tokens/s, self-speculative vs plain, side by side.

    python bench/mtp.py                                   # CPU: GPT-2 shape 4 x 256, vocab 8192, batch 8 x 256
    python bench/mtp.py --model runs/mtp4                 # + decoding on a trained `pretrain-lm --mtp.n_heads 4` LM
    python bench/mtp.py --json                            # the ratios (and raw figures) as one JSON object

Training: one optimizer step = forward, backward (the summed loss's, or the paper's sequential order through
:meth:`planlm.models.mtp.MTPHeads.losses`) and AdamW step of a randomly initialised GPT-2 (timing and memory do not
depend on the weights) on random tokens. Step times: variants interleaved round-robin in this process, median per
variant. Peak memory: each variant in its own child process (a process's memory high-water mark cannot be reset),
as the growth of the peak resident set over the process's size after a warm-up step at batch 1 (which allocates the
gradients and the optimizer state): what the step's activations and logits take. The children run with glibc's
``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB, so that freed large tensors leave the resident set at once and its peak
is the peak of live memory. On a GPU (``--device cuda``) the
peak comes from ``torch.cuda.max_memory_allocated`` instead.

Decoding (with ``--model``): greedy decoding of ``--new-tokens`` tokens after each of a few prompts from the LM's
own prepared corpus, plain (one token per forward pass, KV cache) vs self-speculative with all draft heads and with
head 2 only; outputs are checked identical; tokens/s and the acceptance length (tokens per forward pass) are
reported. Goals (issue 14): sequential peak at n = 4 within 1.2x of n = 1; speculative >= 1.5x plain tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = [(1, "plain"), (2, "naive"), (2, "sequential"), (4, "naive"), (4, "sequential")]


def build(n_heads: int, args, device: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    from planlm.models.mtp import MTPHeads

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=args.vocab, n_positions=args.seq, n_embd=args.embd,
                                    n_layer=args.layers, n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0)).to(device)
    heads = MTPHeads(lm, n_heads) if n_heads > 1 else None
    params = list(lm.parameters()) + (list(heads.parameters()) if heads is not None else [])
    return lm, heads, torch.optim.AdamW(params, lr=1e-4)


def train_step(lm, heads, opt, backward: str, ids: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=False)  # keep the gradient buffers: they are not what this measures
    if heads is None:
        loss = lm(input_ids=ids, labels=ids).loss
        loss.backward()
    else:
        out = heads.losses(lambda: lm(input_ids=ids, use_cache=False).logits, ids, backward)
        (out.trunk_loss if backward == "sequential" else out.loss).backward()
        loss = out.loss
    opt.step()
    return float(loss.detach())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_child(n_heads: int, backward: str, args) -> dict:
    """Run in a child process: the step's peak memory above the warmed-up process."""
    device = args.device
    lm, heads, opt = build(n_heads, args, device)
    g = torch.Generator().manual_seed(1)
    small = torch.randint(0, args.vocab, (1, args.seq), generator=g).to(device)
    train_step(lm, heads, opt, backward, small)  # allocates gradients and AdamW state
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train_step(lm, heads, opt, backward, ids)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_bytes()
        train_step(lm, heads, opt, backward, ids)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"peak_mb": peak / 2**20}


def measure_memory(args) -> dict[str, float]:
    out = {}
    for n, backward in VARIANTS:
        cmd = [sys.executable, __file__, "--child-memory", f"{n},{backward}", *sys.argv[1:]]
        cmd = [c for c in cmd if c != "--json"]
        # A fixed mmap threshold makes glibc return every large block to the system when it is freed: without it
        # the threshold adapts upwards and freed logits stay in the heap, so the resident high-water mark would
        # count memory that is free (and sequential heads, which free and reallocate logits n times, look worse).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[f"n={n} {backward}"] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]
    return out


def measure_time(args) -> dict[str, float]:
    models = {f"n={n} {b}": (build(n, args, args.device), b) for n, b in VARIANTS}
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(args.device)
               for _ in range(args.steps + 1)]
    times: dict[str, list[float]] = {k: [] for k in models}
    names = list(models)
    for step, ids in enumerate(batches):
        for j in range(len(names)):  # round-robin with a rotating start
            name = names[(step + j) % len(names)]
            (lm, heads, opt), backward = models[name]
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_step(lm, heads, opt, backward, ids)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if step > 0:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def measure_decoding(args) -> dict:
    from planlm.data.prepared import PreparedCorpus
    from planlm.persist import load_lm_run
    from planlm.eval.speculative import decode

    model, heads, tok, corpus, _ = load_lm_run(Path(args.model), device=args.device)
    lm = model.lm
    if heads is None:
        raise SystemExit(f"{args.model} has no MTP heads: train it with `planlm pretrain-lm --mtp.n_heads 4`")
    assert isinstance(corpus, PreparedCorpus)
    prompts = []
    for a in corpus.article_ids("test")[: args.prompts]:
        ids = tok(corpus.texts[int(a)], add_special_tokens=False)["input_ids"]
        prompts.append(ids[: args.prompt_tokens])
    variants = {"plain": 0, f"speculative (heads 2..{heads.n_heads})": None, "speculative (head 2)": 1}
    tokens = {k: [] for k in variants}
    stats = {k: {"new_tokens": 0, "forward_passes": 0, "seconds": 0.0, "accepted_by_head": None} for k in variants}
    decode(lm, prompts[0], 8, heads=heads)  # warm-up
    for i, prompt in enumerate(prompts):
        names = list(variants)
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            out, s = decode(lm, prompt, args.new_tokens, heads=heads, draft_heads=variants[name])
            tokens[name].append(out)
            agg = stats[name]
            agg["new_tokens"] += s.new_tokens
            agg["forward_passes"] += s.forward_passes
            agg["seconds"] += s.seconds
            if s.accepted_by_head:
                prev = agg["accepted_by_head"] or [0] * len(s.accepted_by_head)
                agg["accepted_by_head"] = [a + b for a, b in zip(prev, s.accepted_by_head)]
    for name in variants:
        assert tokens[name] == tokens["plain"], f"{name} differs from plain greedy decoding"
    res = {}
    for name, agg in stats.items():
        res[name] = {"tokens_per_second": agg["new_tokens"] / agg["seconds"],
                     "tokens_per_forward": agg["new_tokens"] / agg["forward_passes"],
                     "acceptance_rate_by_head": [a / max(agg["forward_passes"] - len(prompts), 1)
                                                 for a in (agg["accepted_by_head"] or [])]}
    return {"n_heads": heads.n_heads, "prompts": len(prompts), "new_tokens": args.new_tokens, "variants": res}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--embd", type=int, default=256)
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up round)")
    p.add_argument("--model", default=None, help="a `planlm pretrain-lm --mtp.n_heads N` folder for decoding")
    p.add_argument("--prompts", type=int, default=5)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: a shared machine's cores oversubscribed by 2 threads slow small ops 10x)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_memory:
        n, backward = args.child_memory.split(",")
        print(json.dumps(memory_child(int(n), backward, args)))
        return

    result: dict = {"shape": {"layers": args.layers, "embd": args.embd, "vocab": args.vocab, "batch": args.batch,
                              "seq": args.seq, "device": args.device}}
    if not args.skip_training:
        mem, ms = measure_memory(args), measure_time(args)
        base_mem, base_ms = mem["n=1 plain"], ms["n=1 plain"]
        result["training"] = {k: {"step_ms": ms[k], "peak_mb": mem[k], "time_ratio": ms[k] / base_ms,
                                  "memory_ratio": mem[k] / base_mem} for k in ms}
        result["goal_memory_n4_sequential_within_1.2x"] = mem["n=4 sequential"] / base_mem <= 1.2
    if args.model:
        dec = measure_decoding(args)
        plain = dec["variants"]["plain"]["tokens_per_second"]
        for v in dec["variants"].values():
            v["speedup"] = v["tokens_per_second"] / plain
        result["decoding"] = dec
        result["goal_speculative_1.5x"] = max(v["speedup"] for v in dec["variants"].values()) >= 1.5
    if args.json:
        print(json.dumps(result, indent=2))
        return
    if "training" in result:
        print(f"training step, GPT-2 {args.layers} x {args.embd}, vocab {args.vocab}, batch {args.batch} x {args.seq}, "
              f"{args.device}")
        print(f"{'variant':<18} {'ms/step':>9} {'x n=1':>7} {'peak MB':>9} {'x n=1':>7}")
        for k, v in result["training"].items():
            print(f"{k:<18} {v['step_ms']:>9.0f} {v['time_ratio']:>7.2f} {v['peak_mb']:>9.0f} {v['memory_ratio']:>7.2f}")
    if "decoding" in result:
        d = result["decoding"]
        print(f"\ngreedy decoding, {d['prompts']} prompts x {d['new_tokens']} new tokens, n = {d['n_heads']} heads")
        print(f"{'variant':<28} {'tokens/s':>9} {'x plain':>8} {'tokens/pass':>12}  acceptance by head")
        for k, v in d["variants"].items():
            acc = ", ".join(f"{a:.2f}" for a in v["acceptance_rate_by_head"]) or "-"
            print(f"{k:<28} {v['tokens_per_second']:>9.1f} {v['speedup']:>8.2f} {v['tokens_per_forward']:>12.2f}  {acc}")


if __name__ == "__main__":
    main()
