"""Paper-protocol perplexity throughput of a planned LM against a plain Hugging Face forward, side by side.

    python bench/perplexity.py                         # CPU: GPT-2-small shape, 256 windows, batch 32
    python bench/perplexity.py --device cuda --windows 8192 --batch 256 --dtype bfloat16
    python bench/perplexity.py --json
    python bench/perplexity.py --lm smollm2-135m --protocol strided --stride 64   # `planlm run`'s evaluation

``planned``: :func:`planlm.eval.perplexity.perplexity` with the paper's protocol (windows of 128 tokens, stride 1,
the last token of each scored; planner-predicted actions, soft selection), i.e. everything ``planlm evaluate`` does
for that number: tokens from the cache, the planner once per sentence of the evaluated articles, windows collated
with their sentence tables, the conditioned LM with logits at the scored positions only.
``hf``: the same windows collated and run through the plain ``GPT2LMHeadModel`` (same weights), logits of the last
position only (``logits_to_keep=1``), no adapters, no planner. Both in eval mode under ``torch.inference_mode``.
Goal (issue 11): planned >= 0.8x the windows/s of the plain forward.

``--protocol strided --stride S`` (the CPU presets' protocol: windows of 128 tokens every S tokens, the last S of
each scored): ``planned`` is again everything ``planlm evaluate`` does, with logits at the scored positions only;
``hf`` is the plain forward a user would write, logits at every position (``lm(input_ids).logits``) and the loss of
the scored ones. ``--lm`` times a real LM (``smollm2-135m``, a GGUF file, a Hub name or folder) with its own tokenizer
instead of the random GPT-2-small shape.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import WIKI_BENCH, bench_corpus  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=WIKI_BENCH, help="wiki-bench.jsonl.gz")
    ap.add_argument("--prepared", type=Path, default=None, help="prepared corpus (built there if it does not exist)")
    ap.add_argument("--articles", type=int, default=40, help="articles of the bench corpus")
    ap.add_argument("--windows", type=int, default=256, help="scored windows (= tokens) per side")
    ap.add_argument("--batch", type=int, default=32, help="windows per forward pass")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="float32, or bfloat16 autocast")
    ap.add_argument("--protocol", choices=("paper", "strided"), default="paper")
    ap.add_argument("--stride", type=int, default=64, help="stride of --protocol strided")
    ap.add_argument("--lm", default=None, help="a real LM instead of the random GPT-2-small shape (e.g. smollm2-135m)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from transformers import GPT2Config, GPT2LMHeadModel

    from planlm.data.windows import WindowDataset, collate_windows
    from planlm.eval.perplexity import perplexity, score_windows
    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
    from planlm.models.planner import Planner, PlannerConfig

    device = torch.device(args.device)
    torch.manual_seed(0)
    lm, lm_tokenizer = None, None
    if args.lm:
        from planlm.persist import load_lm

        lm, lm_tokenizer = load_lm(args.lm)
    with tempfile.TemporaryDirectory() as tmp:
        corpus, tokenizer = bench_corpus(args, tmp, lm_tokenizer)
        K, D = corpus.num_actions, corpus.embedding_dim
        lm = lm or GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer)))  # GPT-2 small shape
        planner = Planner(PlannerConfig(num_actions=K, encoder_dim=D), centroids=torch.from_numpy(corpus.centroids))
        model = PlannedLM(lm, PlannedLMConfig(num_actions=K, action_dim=D, selection="soft"),
                          centroids=torch.from_numpy(corpus.centroids), planner=planner).to(device).eval()
        split = "train"
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

        # The paper protocol's windows in article order: an article's first window scores all its tokens (each with
        # the tokens before it), every later one its last token. Both sides run the first --windows of them.
        strided = args.protocol == "strided"
        stride = args.stride if strided else 1
        dataset = WindowDataset.from_corpus(corpus, tokenizer, split, 128, stride, "new")
        scored = [int((dataset[i]["labels"][1:] != -100).sum()) for i in range(min(args.windows, len(dataset)))]

        def planned(n: int):
            with autocast:
                return perplexity(model, corpus, tokenizer, split, protocol=args.protocol, max_tokens=sum(scored[:n]),
                                  stride=stride if strided else None, batch_size=args.batch, progress=False)

        planned(args.batch)  # warm-up: allocates, picks kernels (not timed)
        t = time.perf_counter()
        result = planned(len(scored))
        if device.type == "cuda":
            torch.cuda.synchronize()
        planned_s = time.perf_counter() - t

        order = score_windows(dataset, sum(scored))
        pad = tokenizer.pad_token_id
        with torch.inference_mode(), autocast:
            t = time.perf_counter()
            for b in range(0, len(order), args.batch):
                batch = collate_windows([dataset[int(i)] for i in order[b : b + args.batch]], pad_token_id=pad)
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                if strided:  # every position's logits, then the loss of the scored ones
                    logits = lm(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
                    torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), batch["labels"][:, 1:].to(device),
                                                      ignore_index=-100, reduction="none")
                else:
                    logits = lm(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits  # (B, 1, V)
                    logits.float().log_softmax(-1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            hf_s = time.perf_counter() - t
    planned_rate, hf_rate = result.windows / planned_s, len(order) / hf_s
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": "bf16 autocast" if args.dtype == "bfloat16" else "fp32", "batch": args.batch,
        "lm": args.lm or "random GPT-2-small shape",
        "protocol": args.protocol + (f", stride {stride}" if strided else ""),
        "windows": {"planned": result.windows, "hf": int(len(order))},
        "windows_per_s": {"planned": round(planned_rate, 1), "hf": round(hf_rate, 1)},
        "planned / hf": round(planned_rate / hf_rate, 3), "goal": ">= 0.8",
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return out
    print(f"device {out['device']}, {out['precision']}, batch {args.batch}, {out['lm']}, {out['protocol']} protocol "
          f"(windows of 128 tokens)")
    print(f"{'side':10s} {'windows':>8s} {'seconds':>8s} {'windows/s':>10s}")
    print(f"{'planned':10s} {result.windows:8d} {planned_s:8.2f} {planned_rate:10.1f}")
    print(f"{'hf':10s} {len(order):8d} {hf_s:8.2f} {hf_rate:10.1f}")
    print(f"planned / hf: {out['planned / hf']:.3f}x (goal >= 0.8x)")
    return out


if __name__ == "__main__":
    main()
