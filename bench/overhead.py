"""Training-step overhead of the planner variants relative to Fixed, measured side by side in one process.

    python bench/overhead.py                      # CPU: GPT-2-small shape, batch 8 x 128
    python bench/overhead.py --device cuda        # GPU: batch 32 x 128
    python bench/overhead.py --json               # the ratios (and ms per step) as one JSON object

One optimizer step = forward, backward and Adam step of a planned LM through the training loop's own step
(:meth:`planlm.train.loop.PlannedLMModule.step_losses`). The LM has GPT-2-small's shape (124M parameters, randomly
initialised: timing does not depend on the weights), frozen as in the paper, with adapters on layers 2-11 and K=1024;
the planner is paper-sized (1 layer, d=768, 2 heads, ff 2048) over cached 768-d sentence embeddings. Batches are
real: windows of 128 tokens (stride 127) over wiki-bench articles split into sentences by planlm's splitter, with the
planner's paper context (the sentences in the 128 tokens before each target sentence). Variants run interleaved,
round-robin with a rotating start, on the same batches; the median step time per variant is reported, with its ratio
to Fixed.
The paper's code measured Uniform 1.9x, Hard/Freeze 3.9x, Soft/Unfreeze 7.2x (it re-encoded every context sentence
with the 110M-parameter sentence encoder inside every batch).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from planlm.variants import VARIANTS

WIKI_BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wiki-bench.jsonl.gz"
# The variants of the paper's training-overhead comparison (Fixed first), under the names it used there.
OVERHEAD_VARIANTS = {v.overhead_name: v for v in VARIANTS.values() if v.overhead_name}

def build_corpus(data: Path, n_articles: int, work: Path, num_actions: int, dim: int, seed: int):
    """A prepared corpus with wiki-bench's real sentence structure and random cached embeddings."""
    from planlm.artifacts import write_manifest
    from planlm.data.prepared import PreparedCorpus, write_prepared
    from planlm.data.sentences import split_sentences

    titles, texts = [], []
    with gzip.open(data, "rt", encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            if obj.get("text", "").strip():
                titles.append(obj["title"])
                texts.append(obj["text"])
            if len(texts) == n_articles:
                break
    spans = split_sentences(texts)
    art, start, end = [], [], []
    for a, ss in enumerate(spans):
        for s, e in ss:
            art.append(a), start.append(s), end.append(e)
    rng = np.random.default_rng(seed)
    n = len(art)
    work.mkdir(parents=True, exist_ok=True)
    write_prepared(
        work, titles, texts, ["train"] * len(texts), np.array(art), np.array(start), np.array(end),
        rng.standard_normal((n, dim)).astype(np.float16), rng.standard_normal((num_actions, dim)).astype(np.float32),
        rng.integers(0, num_actions, n), [],
    )
    write_manifest(work, "prepare", {"bench": "overhead"}, encoder="random", embedding_dim=dim, num_actions=num_actions)
    return PreparedCorpus.load(work)


def make_batches(corpus, tokenizer, batch_size: int, n_batches: int, planner_cfg):
    from planlm.data.planner_inputs import PlannerInputs
    from planlm.data.windows import WindowDataset

    ds = WindowDataset.from_corpus(corpus, tokenizer, "train", 128, 127)
    fn = PlannerInputs.from_config(corpus, planner_cfg, tokenizer=tokenizer)
    collate = ds.collate_fn(fn, pad_token_id=0)
    order = np.random.default_rng(0).permutation(len(ds))
    batches, t_collate = [], []
    for b in range(n_batches):
        items = [ds[int(i)] for i in order[b * batch_size : (b + 1) * batch_size]]
        t = time.perf_counter()
        batches.append(collate(items))
        t_collate.append(time.perf_counter() - t)
    return batches, statistics.median(t_collate)


def to_device(batch, device):
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=WIKI_BENCH, help="wiki-bench.jsonl.gz (read by path, never copied)")
    ap.add_argument("--articles", type=int, default=120, help="articles to cut windows from")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch", type=int, default=None, help="windows per step (default: 8 on CPU, 32 on a GPU)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    ap.add_argument("--dtype", default="float32", help="float32, or bfloat16 autocast on a GPU")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args(argv)
    if not args.data.exists():
        sys.exit(f"bench/overhead.py: {args.data} not found; pass --data PATH to wiki-bench.jsonl.gz")

    from transformers import GPT2Config, GPT2LMHeadModel

    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
    from planlm.models.planner import Planner, PlannerConfig
    from planlm.train.loop import OptimConfig, PlannedLMModule
    from planlm.train.pretrain_lm import train_tokenizer

    device = torch.device(args.device)
    batch_size = args.batch or (32 if device.type == "cuda" else 8)
    K, D = 1024, 768
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_corpus(args.data, args.articles, Path(tmp) / "prepared", K, D, seed=0)
        tokenizer = train_tokenizer(corpus.texts, vocab_size=8192)
        pcfg = PlannerConfig(num_actions=K, encoder_dim=D)  # paper: 1 layer, d 768, 2 heads, ff 2048, dropout 0
        n_batches = args.warmup + args.steps
        batches, collate_s = make_batches(corpus, tokenizer, batch_size, n_batches, pcfg)
    batches = [to_device(b, device) for b in batches]
    sentences_per_window = float(np.mean([len(b["sentence_ids"]) / b["input_ids"].shape[0] for b in batches]))

    base = GPT2LMHeadModel(GPT2Config())  # GPT-2 small shape: 12 layers, 768 wide, vocab 50257 (124M)
    base_planner = Planner(pcfg, centroids=torch.from_numpy(corpus.centroids))
    modules, optims = {}, {}
    for name, variant in OVERHEAD_VARIANTS.items():
        planner = copy.deepcopy(base_planner) if variant.needs_planner else None
        model = PlannedLM(copy.deepcopy(base), PlannedLMConfig(num_actions=K, action_dim=D,
                                                               **variant.recipe.selection_fields()),
                          centroids=torch.from_numpy(corpus.centroids), planner=planner).to(device)
        module = PlannedLMModule(model, variant.recipe, OptimConfig(), total_steps=1000)
        modules[name] = module
        optims[name] = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    del base

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    times = {name: [] for name in OVERHEAD_VARIANTS}
    names = list(modules)
    for i, batch in enumerate(batches):
        # Round-robin, starting one variant later each round: no variant is always the first after another's step.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            module = modules[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with autocast:
                loss = module.step_losses(batch, train=True)["loss"]
            loss.backward()
            optims[name].step()
            optims[name].zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t)

    fixed = statistics.median(times["Fixed"])
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "batch": f"{batch_size} x 128",
        "sentences_per_window": round(sentences_per_window, 2),
        "collate_ms": round(collate_s * 1000, 2),
        "ms_per_step": {n: round(statistics.median(t) * 1000, 1) for n, t in times.items()},
        "ratio_to_fixed": {n: round(statistics.median(t) / fixed, 3) for n, t in times.items()},
        "timed_steps": args.steps,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print(f"device {result['device']}, batch {result['batch']}, {result['sentences_per_window']} sentences per "
          f"window, collate (planner inputs included) {result['collate_ms']} ms, {args.steps} timed steps each")
    print(f"{'variant':28s} {'ms/step':>9s} {'x Fixed':>8s} {'paper':>6s} {'goal':>6s}")
    for n, v in OVERHEAD_VARIANTS.items():
        paper = f"{v.paper_overhead:.1f}x" if v.paper_overhead else ""
        goal = f"<={v.overhead_goal:.2f}" if v.overhead_goal else ""
        print(f"{n:28s} {result['ms_per_step'][n]:9.1f} {result['ratio_to_fixed'][n]:8.3f} {paper:>6s} {goal:>6s}")
    return result


if __name__ == "__main__":
    main()
