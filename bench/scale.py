"""Memory and start-up time against corpus size: peak RSS of each stage at 100k and at 1M sentences, and of
`planlm prepare` at 500 and 5,000 articles.

    python bench/scale.py                          # 100k and 1M sentences, 20 steps per stage; prepare 500, 5k
    python bench/scale.py --sizes 20000,200000     # smaller, faster
    python bench/scale.py --stages prepare         # the prepare row only
    python bench/scale.py --json

For each size, a synthetic prepared corpus with real sentence-length statistics (sentences drawn from wiki-bench,
split at sentence-final punctuation; sentences per article drawn from wiki-bench's articles) and random 768-d float16
embeddings, K = 1024. Then two stages, each in its own process as a user runs them, for ``--steps`` optimizer steps:

- ``train-planner``: paper-size planner by NAP, paper context (counts LM tokens: the first stage that needs the
  tokens builds the token cache next to the prepared corpus);
- ``finetune``: soft selection, planner trained from the start, batch 8 x 128 (reads the cache).

Per stage: peak resident memory of its process (``VmHWM``), start-up time (process start, imports, loading, data
up to the first optimizer step) and total wall time. The issue's goal: peak RSS at 1M <= 1.3x the peak at 100k.
The LM is a small randomly initialised GPT-2 (``--n-layer``, ``--n-embd``): a small LM makes the corpus's share of
memory, the thing measured here, as visible as possible.

The prepare row (issue 25): for each of ``--prepare-articles``, a JSON Lines corpus of that many articles with the
same statistics (wiki-bench's sentences, its sentences per article), then ``planlm prepare`` on it in its own process
with the fast test encoder ``fake:D`` (``--prepare-dim``) and K = 1024: reading, sentence splitting, embedding,
k-means and writing, all of it. Goal: peak RSS at 10x the articles <= 1.3x.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# ../shared/data of the repository (or of the folder holding a git worktree of it)
WIKI_BENCH = next((p / "shared" / "data" / "wiki-bench.jsonl.gz" for p in Path(__file__).resolve().parents[2:4]
                   if (p / "shared" / "data" / "wiki-bench.jsonl.gz").exists()), Path("../shared/data/wiki-bench.jsonl.gz"))
K, D = 1024, 768


def sentence_statistics(data: Path, n_articles: int) -> tuple[list[str], np.ndarray]:
    """Real sentences and real sentences-per-article counts from the first ``n_articles`` of wiki-bench."""
    pool, per_article = [], []
    with gzip.open(data, "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line).get("text", "")
            sents = [s for s in re.split(r"(?<=[.!?])\s+", text.replace("\n", " ")) if s.strip()]
            if sents:
                pool += sents
                per_article.append(len(sents))
            if len(per_article) == n_articles:
                break
    return pool, np.asarray(per_article)


def draw_article(rng: np.random.Generator, pool: list[str], per_article: np.ndarray) -> list[str]:
    """The sentences of one synthetic article: as many as a real article has, each a real sentence."""
    return [pool[p] for p in rng.integers(0, len(pool), size=int(rng.choice(per_article)))]


def build_corpus(folder: Path, n_sentences: int, pool: list[str], per_article: np.ndarray, seed: int = 0) -> None:
    """Write a prepared corpus of about ``n_sentences`` sentences (embeddings streamed to disk, chunk by chunk)."""
    from planlm.artifacts import write_manifest
    from planlm.data.prepared import write_prepared

    rng = np.random.default_rng(seed)
    texts, art, start, end = [], [], [], []
    while len(art) < n_sentences:
        text, a = "", len(texts)
        for sentence in draw_article(rng, pool, per_article):
            text += " " if text else ""
            art.append(a), start.append(len(text))
            text += sentence
            end.append(len(text))
        texts.append(text)
    n = len(art)
    folder.mkdir(parents=True)
    emb_path = folder.parent / f"{folder.name}-embeddings.npy"
    emb = np.lib.format.open_memmap(emb_path, mode="w+", dtype=np.float16, shape=(n, D))
    for c in range(0, n, 100_000):
        emb[c : c + 100_000] = rng.standard_normal((min(100_000, n - c), D)).astype(np.float16)
    emb.flush()
    splits = ["val" if i % 100 == 0 else "test" if i % 100 == 1 else "train" for i in range(len(texts))]
    write_prepared(
        folder, [f"a{i}" for i in range(len(texts))], texts, splits, np.array(art), np.array(start), np.array(end),
        emb, rng.standard_normal((K, D)).astype(np.float32), rng.integers(0, K, n), [],
    )
    del emb
    emb_path.unlink()
    write_manifest(folder, "prepare", {"bench": "scale", "sentences": n}, encoder="random", embedding_dim=D,
                   num_actions=K)


def build_text_corpus(path: Path, n_articles: int, pool: list[str], per_article: np.ndarray, seed: int = 0) -> None:
    """Write ``n_articles`` synthetic articles as JSON Lines (one at a time: the bench holds none of them)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"title": f"a{i}", "text": " ".join(draw_article(rng, pool, per_article))}) + "\n"
                     for i in range(n_articles))


def prepare_row(tmp: Path, n_articles: int, pool: list[str], per_article: np.ndarray, dim: int) -> dict:
    """``planlm prepare`` of a synthetic corpus of ``n_articles`` in its own process: its peak RSS and wall time."""
    corpus, out = tmp / f"corpus-{n_articles}.jsonl", tmp / f"prepared-{n_articles}"
    build_text_corpus(corpus, n_articles, pool, per_article)
    stage = run_stage(["prepare", "--out", str(out), "--source.source", str(corpus), "--encoder.name", f"fake:{dim}",
                       "--num_actions", str(K), "--progress", "false"])
    total = json.loads((out / "manifest.json").read_text())["counts"]["total"]
    return {"articles": n_articles, "sentences": total["sentences"], "peak_rss_mb": stage["peak_rss_mb"],
            "total_s": stage["total_s"]}


def build_lm(folder: Path, texts: list[str], n_layer: int, n_embd: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from planlm.train.lm_pretraining import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=8192)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=n_embd, n_layer=n_layer, n_head=4,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def run_stage(args: list[str]) -> dict:
    """Run ``planlm ARGS`` in a child process; its peak RSS, time to the first optimizer step and total time."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as report:
        t0 = time.time()
        child = subprocess.Popen([sys.executable, __file__, "--child", report.name, "--", *args],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "PLANLM_BENCH_T0": repr(t0)})
        err = child.stderr.read()
        if child.wait():
            sys.exit(f"bench/scale.py: planlm {args[0]} failed:\n{err[-3000:]}")
        out = json.loads(Path(report.name).read_text())
    return {"peak_rss_mb": round(out["peak_kb"] / 1024, 1), "startup_s": round(out["first_step"] - t0, 1),
            "total_s": round(time.time() - t0, 1)}


def peak_rss_kb() -> int:
    """This process's peak resident memory (``VmHWM``). Not ``ru_maxrss``: a child started by vfork, as
    ``subprocess`` starts it, inherits its parent's high-water mark at exec, so the bench's own peak (it builds the
    corpora) would be reported as the stage's."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def child(report: str, args: list[str]) -> None:
    """In the child process: note when the first optimizer step starts, then run the stage."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from planlm.cli import main

    first = []

    def note(optimizer, *_):
        if not first:
            first.append(time.time())

    register_optimizer_step_pre_hook(note)
    code = main(args)
    Path(report).write_text(json.dumps({"first_step": first[0] if first else time.time(), "peak_kb": peak_rss_kb()}))
    sys.exit(code)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1], argv[3:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=WIKI_BENCH, help="wiki-bench.jsonl.gz (sentence statistics)")
    ap.add_argument("--sizes", default="100000,1000000", help="sentence counts, comma-separated")
    ap.add_argument("--stages", default="train-planner,finetune,prepare", help="stages to measure, comma-separated")
    ap.add_argument("--prepare-articles", default="500,5000", help="article counts of the prepare row")
    ap.add_argument("--prepare-dim", type=int, default=64, help="dimension of the prepare row's fake encoder")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per stage")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--work", type=Path, default=None, help="folder for the corpora (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not args.data.exists():
        sys.exit(f"bench/scale.py: {args.data} not found; pass --data PATH to wiki-bench.jsonl.gz")
    pool, per_article = sentence_statistics(args.data, 400)
    stages = [s for s in ("train-planner", "finetune") if s in args.stages.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")] if stages else []
    result = {"lm": f"GPT-2 {args.n_layer} layers x {args.n_embd}", "steps": args.steps, "goal": "<= 1.3"}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        tmp = Path(tmp)
        if stages:
            result |= stage_rows(tmp, args, stages, sizes, pool, per_article)
        if "prepare" in args.stages.split(","):
            rows = [prepare_row(tmp, int(n), pool, per_article, args.prepare_dim)
                    for n in args.prepare_articles.split(",")]
            lo, hi = min(rows, key=lambda r: r["articles"]), max(rows, key=lambda r: r["articles"])
            result["prepare"] = {"encoder": f"fake:{args.prepare_dim}", "num_actions": K, "rows": rows,
                                 "peak_rss_ratio": round(hi["peak_rss_mb"] / lo["peak_rss_mb"], 3)}
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    if stages:
        print(f"LM {result['lm']}, {args.steps} optimizer steps per stage, K = {K}, d = {D}")
        print_table(["sentences", "stage", "peak RSS MB", "start-up s", "total s"],
                    [[row["sentences"], s, *(row[s][k] for k in ("peak_rss_mb", "startup_s", "total_s"))]
                     for row in result["rows"] for s in stages])
        for s, v in result["peak_rss_ratio"].items():
            print(f"peak RSS {max(sizes)} / {min(sizes)} sentences, {s}: {v:.3f}x (goal <= 1.3x)")
    if "prepare" in result:
        p = result["prepare"]
        print(f"prepare, encoder {p['encoder']}, K = {K}")
        keys = ("articles", "sentences", "peak_rss_mb", "total_s")
        print_table(["articles", "sentences", "peak RSS MB", "total s"], [[r[k] for k in keys] for r in p["rows"]])
        counts = sorted(r["articles"] for r in p["rows"])
        print(f"peak RSS of prepare, {counts[-1]} / {counts[0]} articles: {p['peak_rss_ratio']:.3f}x (goal <= 1.3x)")
    return result


def print_table(headers: list[str], rows: list[list]) -> None:
    """Right-aligned columns as wide as their headers (at least 10), floats with one decimal."""
    widths = [max(10, len(h)) for h in headers]
    cell = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)
    for line in [headers, *([cell(v) for v in row] for row in rows)]:
        print(" ".join(f"{v:>{w}}" for v, w in zip(line, widths)))


def stage_rows(tmp: Path, args, stages: list[str], sizes: list[int], pool: list[str], per_article: np.ndarray) -> dict:
    """train-planner and finetune on a prepared corpus of each size: rows and the peak RSS ratios."""
    build_lm(tmp / "lm", pool[:20000], args.n_layer, args.n_embd)
    common = ["--trainer.accelerator", "cpu", "--trainer.progress_bar", "false", "--trainer.logger", "none"]
    rows = {}
    for n in sizes:
        prep = tmp / f"prep-{n}"
        t = time.time()
        build_corpus(prep, n, pool, per_article)
        row = {"sentences": n, "build_corpus_s": round(time.time() - t, 1)}
        if "train-planner" in stages or "finetune" in stages:  # finetune reads the planner
            row["train-planner"] = run_stage([
                "train-planner", "--prepared", str(prep), "--lm", str(tmp / "lm"), "--out", str(tmp / f"planner-{n}"),
                "--optim.max_steps", str(args.steps), "--optim.batch_size", "32", *common,
            ])
        if "finetune" in stages:
            row["finetune"] = run_stage([
                "finetune", "--prepared", str(prep), "--lm", str(tmp / "lm"), "--planner", str(tmp / f"planner-{n}"),
                "--out", str(tmp / f"ft-{n}"), "--recipe.selection", "soft", "--recipe.planner_unfreeze", "immediate",
                "--optim.max_steps", str(args.steps), "--optim.batch_size", "8", "--windows.max_val_windows", "16",
                "--checkpoint_every", "100000", *common,
            ])
        rows[n] = row
        print(f"{n} sentences: {json.dumps(row)}", file=sys.stderr)
    lo, hi = rows[min(sizes)], rows[max(sizes)]
    return {"rows": list(rows.values()),
            "peak_rss_ratio": {s: round(hi[s]["peak_rss_mb"] / lo[s]["peak_rss_mb"], 3) for s in stages}}


if __name__ == "__main__":
    main()
