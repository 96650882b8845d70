"""Training-step time of myopic vs vanilla training (Wu et al. 2024), measured side by side in one process.

    python bench/myopia.py                        # CPU: GPT-2 of pretrain-lm's small-cpu preset, batch 16 x 128
    python bench/myopia.py --preset gpt2 --device cuda --batch 8 --length 1024
    python bench/myopia.py --arch llama --json    # a Llama-shaped LM of the same width; the result as JSON

One step = forward, backward and AdamW step of a randomly initialised causal LM (timing does not depend on the
weights) on random token batches. The two variants are two copies of the same LM, one made myopic
(planlm/models/myopic.py: each attention layer runs its projections once more on the detached layer input and
attends over 2T keys); they run interleaved, round-robin with a rotating start, on the same batches, and the median
step time of each is reported with the ratio myopic / vanilla. Results and the command go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from planlm.train.lm_pretraining import PRESETS  # the LM shapes: planlm/presets/pretrain-lm/*.yaml


def shape(preset: str) -> tuple[int, int, int]:
    """(n_layer, n_head, n_embd) of a pretrain-lm preset."""
    p = PRESETS[preset]
    return p.n_layer, p.n_head, p.n_embd


def build(arch: str, preset: str, vocab: int, length: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    n_layer, n_head, n_embd = shape(preset)
    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=length, n_embd=n_embd, n_layer=n_layer,
                                          n_head=n_head, bos_token_id=0, eos_token_id=0))
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=n_embd, num_hidden_layers=n_layer,
                                        num_attention_heads=n_head, intermediate_size=4 * n_embd,
                                        max_position_embeddings=length))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2")
    ap.add_argument("--preset", choices=tuple(PRESETS), default="small-cpu", help="LM shape (pretrain-lm preset)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (after 2 warm-up steps)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady timings on a shared machine)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from planlm.models.myopic import make_myopic

    vanilla = build(args.arch, args.preset, args.vocab, args.length).to(args.device).train()
    myopic = copy.deepcopy(vanilla)
    make_myopic(myopic)
    models = {"vanilla": vanilla, "myopic": myopic}
    optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.batch, args.length), generator=gen) for _ in range(args.steps + 2)]

    def step(name, batch):
        batch = batch.to(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = models[name](input_ids=batch, labels=batch).loss
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    names = list(models)
    times = {n: [] for n in names}
    for i, batch in enumerate(batches):
        for k in range(len(names)):  # round robin, rotating start: neither variant always runs first
            name = names[(i + k) % len(names)]
            elapsed = step(name, batch)
            if i >= 2:
                times[name].append(elapsed)
    ms = {n: 1000 * statistics.median(t) for n, t in times.items()}
    result = {
        "arch": args.arch, "preset": args.preset, "shape": dict(zip(("n_layer", "n_head", "n_embd"),
                                                                    shape(args.preset))),
        "batch": args.batch, "length": args.length, "device": args.device, "steps": args.steps,
        "threads": torch.get_num_threads(),
        "ms_per_step": {n: round(v, 2) for n, v in ms.items()},
        "ratio_myopic_to_vanilla": round(ms["myopic"] / ms["vanilla"], 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.arch} ({args.preset}), batch {args.batch} x {args.length}, {args.device}, "
              f"median of {args.steps} steps")
        print(f"{'variant':10s} {'ms/step':>9s} {'ratio':>7s}")
        for n in names:
            print(f"{n:10s} {ms[n]:9.1f} {ms[n] / ms['vanilla']:7.3f}")
    return result


if __name__ == "__main__":
    main()
