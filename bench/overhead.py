"""Training-step overhead of the planner variants relative to Fixed, measured side by side in one process.

    python bench/overhead.py                      # CPU: GPT-2-small shape, batch 8 x 128
    python bench/overhead.py --device cuda        # GPU: batch 32 x 128
    python bench/overhead.py --json               # the ratios (and ms per step) as one JSON object
    python bench/overhead.py --prepared DIR       # batches from a prepared corpus (built there first if missing)
    python bench/overhead.py --compile            # + compiled Fixed and compiled reference (default on a GPU)
    python bench/overhead.py --profile            # + operators (and GPU kernels) per step, from torch.profiler
    python bench/overhead.py --lm smollm2-135m    # a real pretrained LM (SmolLM2-135M, 30 layers), frozen

One optimizer step = forward, backward and Adam step of a planned LM through the training loop's own step
(:meth:`planlm.train.loop.PlannedLMModule.step_losses`). The LM has GPT-2-small's shape (124M parameters, randomly
initialised: timing does not depend on the weights; ``--lm`` times a real LM instead, e.g. SmolLM2-135M with adapters
on 28 of its 30 layers), frozen as in the paper, with adapters on layers 2-11 and K=1024;
the planner is paper-sized (1 layer, d=768, 2 heads, ff 2048) over cached 768-d sentence embeddings. Batches are
real: windows of 128 tokens (stride 127) over wiki-bench articles split into sentences by planlm's splitter, with the
planner's paper context (the sentences in the 128 tokens before each target sentence). Variants run interleaved,
round-robin with a rotating start, on the same batches; the median step time per variant is reported, with its ratio
to Fixed.
The paper's code measured Uniform 1.9x, Hard/Freeze 3.9x, Soft/Unfreeze 7.2x (it re-encoded every context sentence
with the 110M-parameter sentence encoder inside every batch).

Multi-sentence plans (issue 16): ``Soft plan H=4 M=16`` rows are Soft/Unfreeze with a horizon-4 planner and 16 plans
sampled per sentence (``--recipe.plan_samples 16``), one row per planner rollout (``context``: the encoder re-run over
context + plan slots; ``decoder``: one decoder query per offset); goal <= 1.3x Fixed. ``--only NAMES`` times a subset
(comma-separated row names; Fixed is always timed). ``--planner_only`` times only the planner's part of each step
(plans sampled, forward + backward) against Soft/Unfreeze's, where whole GPT-2-small steps are too slow or too noisy.

Plain Hugging Face reference, timed in the same rounds: the same ``GPT2LMHeadModel`` shape, batch and precision,
body frozen, train mode, and ONE trainable vector added to the input of one attention output projection (the least
a trained conditioning can cost); eager, and under ``torch.compile`` with ``--compile``. Ratios: every variant to
Fixed, Fixed to the eager reference, compiled Fixed to the compiled reference.

``--prepared DIR``: a GPU machine without spaCy runs from a prepared corpus (``planlm prepare`` output, or the one
this bench wrote to DIR on an earlier run: it keeps the sentence splits). ``--profile`` counts, for one step of each
variant, the operators torch dispatches (and on a GPU the kernels it launches): a proxy for the launch overhead and
host stalls that dominate small-batch GPU steps, measurable on a CPU.
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

# ../shared/data of the repository (or of the folder holding a git worktree of it)
WIKI_BENCH = next((p / "shared" / "data" / "wiki-bench.jsonl.gz" for p in Path(__file__).resolve().parents[2:4]
                   if (p / "shared" / "data" / "wiki-bench.jsonl.gz").exists()), Path("../shared/data/wiki-bench.jsonl.gz"))
# The variants of the paper's training-overhead comparison (Fixed first), under the names it used there.
OVERHEAD_VARIANTS = {v.overhead_name: v for v in VARIANTS.values() if v.overhead_name}
# Multi-sentence plans (issue 16): Soft/Unfreeze conditioned on 16 sampled plans of 4 sentences, per planner rollout.
PLAN_HORIZON, PLAN_SAMPLES, PLAN_GOAL = 4, 16, 1.3
PLAN_ROWS = {f"Soft plan H={PLAN_HORIZON} M={PLAN_SAMPLES} ({r})": r for r in ("context", "decoder")}

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


def bench_corpus(args, tmp: str, tokenizer=None):
    """The benches' corpus and tokenizer (``tokenizer``, else a BPE one trained on the corpus): ``--prepared DIR``
    when it exists (a GPU machine without spaCy), else one built from ``--data`` (K = 1024, 768-d random
    embeddings) in ``tmp``."""
    from planlm.data.prepared import PreparedCorpus
    from planlm.train.lm_pretraining import train_tokenizer

    folder = args.prepared or Path(tmp) / "prepared"
    if folder.exists():
        corpus = PreparedCorpus.load(folder)
    else:
        corpus = build_corpus(args.data, args.articles, folder, 1024, 768, seed=0)
    return corpus, tokenizer or train_tokenizer(corpus.texts, vocab_size=8192)


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


def reference_model(base, device, layer: int = 2):
    """Plain HF: ``base`` frozen, one trainable vector added at the input of layer ``layer``'s attention projection
    (the lowest layer the adapters condition by default), found by the LM family's module path."""
    from planlm.models.adapters import projection_input_dim
    from planlm.models.arch import architecture

    model = copy.deepcopy(base).requires_grad_(False).to(device)
    projection = model.get_submodule(architecture(model.config.model_type).projection_path(layer))
    vector = torch.nn.Parameter(torch.zeros(projection_input_dim(projection), device=device))
    projection.register_forward_pre_hook(lambda mod, args: (args[0] + vector,))
    model.train()  # dropout active, as in the planned LM's training (the paper's code)
    return model, vector


def count_ops(step, device) -> dict:
    """Operators dispatched (and, on a GPU, kernels launched) by one call of ``step``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    events = prof.events()
    out = {"aten_ops": sum(1 for e in events if e.name.startswith("aten::"))}
    if device.type == "cuda":
        out["kernel_launches"] = sum(1 for e in events if e.name in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                       "cudaLaunchKernelExC"))
        out["syncs"] = sum(1 for e in events if "Synchronize" in e.name or e.name == "cudaMemcpyAsync")
    return out


def planner_loss(model, batch) -> torch.Tensor:
    """A scalar of the weights the planner gives a batch (plans sampled when the model reads plans), so that its
    backward is the planner's backward of a training step."""
    if model.config.plans:
        weights = model.plan(batch["planner_inputs"])[1]  # (N, H, K)
    else:
        weights = torch.softmax(model.planner(**batch["planner_inputs"]) / model.config.temperature, -1)  # (N, K)
    return weights.square().sum()


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
    ap.add_argument("--prepared", type=Path, default=None,
                    help="prepared corpus to cut batches from (built there from --data first if it does not exist)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also time compiled Fixed and the compiled reference (default: on a GPU only)")
    ap.add_argument("--profile", action="store_true", help="count operators / kernels per step of each variant")
    ap.add_argument("--planner_only", action="store_true",
                    help="time only the planner's part of each step (forward + backward), against Soft/Unfreeze's")
    ap.add_argument("--lm", default=None,
                    help="a real LM to time instead of the random GPT-2-small shape: smollm2-135m (the embedded "
                         "SmolLM2-135M), a GGUF file, a Hub name or a folder; its own tokenizer cuts the batches")
    ap.add_argument("--only", default=None, help="comma-separated rows to time (Fixed always), e.g. "
                    "'Soft/Unfreeze,Soft plan H=4 M=16 (decoder)'")
    args = ap.parse_args(argv)
    if args.prepared is None and not args.data.exists():
        sys.exit(f"bench/overhead.py: {args.data} not found; pass --data PATH to wiki-bench.jsonl.gz")

    from transformers import GPT2Config, GPT2LMHeadModel

    import dataclasses

    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
    from planlm.models.planner import Planner, PlannerConfig
    from planlm.train.loop import PlannedLMModule
    from planlm.train.trainer import OptimConfig, adam

    device = torch.device(args.device)
    batch_size = args.batch or (32 if device.type == "cuda" else 8)
    compile_too = device.type == "cuda" if args.compile is None else args.compile
    torch.manual_seed(0)
    lm_tokenizer = None
    if args.lm:
        from planlm.persist import load_lm

        base, lm_tokenizer = load_lm(args.lm)  # fp32, as `planlm finetune` loads it
    else:
        base = GPT2LMHeadModel(GPT2Config())  # GPT-2 small shape: 12 layers, 768 wide, vocab 50257 (124M)
    with tempfile.TemporaryDirectory() as tmp:
        corpus, tokenizer = bench_corpus(args, tmp, lm_tokenizer)
        K, D = corpus.num_actions, corpus.embedding_dim
        pcfg = PlannerConfig(num_actions=K, encoder_dim=D)  # paper: 1 layer, d 768, 2 heads, ff 2048, dropout 0
        n_batches = args.warmup + args.steps
        batches, collate_s = make_batches(corpus, tokenizer, batch_size, n_batches, pcfg)
    batches = [to_device(b, device) for b in batches]
    sentences_per_window = float(np.mean([len(b["sentence_ids"]) / b["input_ids"].shape[0] for b in batches]))

    base_planner = Planner(pcfg, centroids=torch.from_numpy(corpus.centroids))
    modules, optims = {}, {}
    # name -> (recipe, planner or None, horizon): the paper's rows, then the plan rows (a horizon-4 planner)
    rows = {name: (v.recipe, copy.deepcopy(base_planner) if v.needs_planner else None, 1)
            for name, v in OVERHEAD_VARIANTS.items()}
    for name, rollout in PLAN_ROWS.items():
        plan_cfg = dataclasses.replace(pcfg, horizon=PLAN_HORIZON, rollout=rollout)
        torch.manual_seed(0)
        planner = Planner(plan_cfg, centroids=torch.from_numpy(corpus.centroids))
        planner.load_state_dict(base_planner.state_dict(), strict=False)  # the same offset-1 planner
        recipe = dataclasses.replace(OVERHEAD_VARIANTS["Soft/Unfreeze"].recipe, plan_samples=PLAN_SAMPLES)
        rows[name] = (recipe, planner, PLAN_HORIZON)
    if args.only:
        keep = {"Fixed", *(n.strip() for n in args.only.split(","))}
        unknown = keep - set(rows)
        if unknown:
            sys.exit(f"bench/overhead.py: unknown rows {sorted(unknown)}; rows: {', '.join(rows)}")
        rows = {n: r for n, r in rows.items() if n in keep}
    for name, (recipe, planner, horizon) in rows.items():
        model = PlannedLM(copy.deepcopy(base), PlannedLMConfig(num_actions=K, action_dim=D, horizon=horizon,
                                                               **recipe.selection_fields()),
                          centroids=torch.from_numpy(corpus.centroids), planner=planner).to(device)
        module = PlannedLMModule(model, recipe, OptimConfig(), total_steps=1000)
        modules[name] = module
        optims[name] = adam([p for p in model.parameters() if p.requires_grad], 1e-4)  # the loop's optimizer
    steps = {}  # name: (forward -> loss, optimizer)
    for name, module in modules.items():
        steps[name] = (lambda batch, m=module: m.step_losses(batch, train=True)["loss"], optims[name])
    if args.planner_only:
        # The planner's part of a step alone (plans sampled, forward + backward): cheap enough to time where a whole
        # GPT-2-small step is too slow or too noisy; reported against Soft/Unfreeze's planner.
        steps = {name: (lambda batch, m=module: planner_loss(m.model, batch), optims[name])
                 for name, module in modules.items()
                 if module.model.planner is not None and any(p.requires_grad for p in module.model.planner.parameters())}
        compile_too = False
    if compile_too:
        fixed_c = PlannedLMModule(
            PlannedLM(copy.deepcopy(base), PlannedLMConfig(num_actions=K, action_dim=D, selection="fixed"),
                      centroids=torch.from_numpy(corpus.centroids)).to(device),
            OVERHEAD_VARIANTS["Fixed"].recipe, OptimConfig(), total_steps=1000, compile=True)
        steps["Fixed (compiled)"] = (lambda batch: fixed_c.step_losses(batch, train=True)["loss"],
                                     adam([p for p in fixed_c.parameters() if p.requires_grad], 1e-4))
    references = [] if args.planner_only else [("HF reference", False)]
    for name, compiled in references + ([("HF reference (compiled)", True)] if compile_too else []):
        ref, vector = reference_model(base, device)
        call = torch.compile(ref) if compiled else ref
        steps[name] = (lambda batch, call=call: call(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                                       labels=batch["labels"]).loss, adam([vector], 1e-4))
    del base

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    def one_step(name, batch):
        forward, optim = steps[name]
        with autocast:
            loss = forward(batch)
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    times = {name: [] for name in steps}
    names = list(steps)
    for i, batch in enumerate(batches):
        # Round-robin, starting one variant later each round: no variant is always the first after another's step.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            one_step(name, batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t)
    ops = {name: count_ops(lambda: one_step(name, batches[-1]), device) for name in names} if args.profile else {}

    ms = {n: statistics.median(t) * 1000 for n, t in times.items()}
    if args.planner_only:
        result = {"planner_ms_per_step": {n: round(v, 1) for n, v in ms.items()},
                  "ratio_to_soft_planner": {n: round(v / ms["Soft/Unfreeze"], 3) for n, v in ms.items()}}
        print(json.dumps(result, indent=2))
        return result
    ratios = {f"{n} / Fixed": ms[n] / ms["Fixed"] for n in rows}
    ratios["Fixed / HF reference"] = ms["Fixed"] / ms["HF reference"]
    if compile_too:
        ratios["Fixed (compiled) / HF reference (compiled)"] = ms["Fixed (compiled)"] / ms["HF reference (compiled)"]
        ratios["HF reference (compiled) / HF reference"] = ms["HF reference (compiled)"] / ms["HF reference"]
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "lm": args.lm or "random GPT-2-small shape",
        "batch": f"{batch_size} x 128",
        "precision": "bf16 autocast" if args.dtype == "bfloat16" else "fp32",
        "sentences_per_window": round(sentences_per_window, 2),
        "collate_ms": round(collate_s * 1000, 2),
        "ms_per_step": {n: round(v, 1) for n, v in ms.items()},
        "ratio_to_fixed": {n: round(ms[n] / ms["Fixed"], 3) for n in rows},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "timed_steps": args.steps,
    }
    if ops:
        result["ops_per_step"] = ops
        result["aten_ops_vs_fixed"] = {n: ops[n]["aten_ops"] - ops["Fixed"]["aten_ops"] for n in rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print(f"device {result['device']}, batch {result['batch']}, {result['precision']}, "
          f"{result['sentences_per_window']} sentences per window, collate (planner inputs included) "
          f"{result['collate_ms']} ms, {args.steps} timed steps each")
    print(f"{'variant':28s} {'ms/step':>9s} {'x Fixed':>8s} {'paper':>6s} {'goal':>6s}" + ("  aten ops/step" if ops else ""))
    for n in names:
        v = OVERHEAD_VARIANTS.get(n)
        paper = f"{v.paper_overhead:.1f}x" if v is not None and v.paper_overhead else ""
        goal = f"<={v.overhead_goal:.2f}" if v is not None and v.overhead_goal else \
            f"<={PLAN_GOAL:.2f}" if n in PLAN_ROWS else ""
        extra = f"  {ops[n]['aten_ops']:14d}" if ops else ""
        print(f"{n:28s} {ms[n]:9.1f} {ms[n] / ms['Fixed']:8.3f} {paper:>6s} {goal:>6s}{extra}")
    for k, v in ratios.items():
        print(f"{k:50s} {v:.3f}")
    return result


if __name__ == "__main__":
    main()
