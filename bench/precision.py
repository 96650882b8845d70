"""fp32 against bfloat16 autocast for one plain Hugging Face training step of a frozen LM on this machine: what
`precision: auto` (planlm/stages/run.py, native_bf16) decides, and whether it decides right here.

    python bench/precision.py --lm smollm2-135m --batch 8 --steps 2

Times forward + backward of random 128-token windows through every layer (the input embeddings take the gradient, so
the backward runs the whole stack, as fine-tuning adapters on 28 of 30 layers does), fp32 and then under bf16
autocast, side by side in one process, and prints the seconds per step and the ratio.
"""

from __future__ import annotations

import argparse
import json
import time


def step_seconds(lm, ids, steps: int, warmup: int, bf16: bool) -> float:
    import torch

    def one():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = lm(input_ids=ids, labels=ids).loss
        loss.backward()
        lm.zero_grad(set_to_none=True)

    for _ in range(warmup):
        one()
    started = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - started) / steps


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm", default="smollm2-135m", help="Hub name, folder or GGUF checkpoint (planlm's --lm)")
    ap.add_argument("--batch", type=int, default=8, help="windows per step")
    ap.add_argument("--length", type=int, default=128, help="tokens per window")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per precision")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per precision first")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from planlm.persist import load_lm
    from planlm.stages.run import native_bf16

    lm = load_lm(args.lm)[0].train()
    lm.requires_grad_(False)
    lm.get_input_embeddings().weight.requires_grad_(True)  # the gradient reaches the bottom of the stack
    ids = torch.randint(0, lm.config.vocab_size, (args.batch, args.length), generator=torch.Generator().manual_seed(0))
    fp32 = step_seconds(lm, ids, args.steps, args.warmup, bf16=False)
    bf16 = step_seconds(lm, ids, args.steps, args.warmup, bf16=True)
    result = {"lm": args.lm, "batch": args.batch, "length": args.length, "threads": torch.get_num_threads(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16("cpu"),
              "fp32_s": round(fp32, 3), "bf16_s": round(bf16, 3), "bf16_over_fp32": round(bf16 / fp32, 3)}
    print(f"{args.lm}, batch {args.batch} x {args.length}, {result['threads']} threads, CPU "
          f"{result['cpu_capability']}, native bf16: {result['native_bf16']}")
    print(f"fp32 {fp32:.2f} s/step, bf16 autocast {bf16:.2f} s/step: bf16 / fp32 = {bf16 / fp32:.2f}; "
          f"precision auto picks {'bf16-mixed' if result['native_bf16'] else '32-true'}")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
