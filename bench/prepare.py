"""Benchmark `planlm prepare`: time per step on real corpora, and k-means backends side by side.

    python bench/prepare.py                                  # everything (builtin, wiki-bench, k-means 100k and 1M)
    python bench/prepare.py --corpora builtin --kmeans-points 100000
    python bench/prepare.py --max-articles 300               # a slice of wiki-bench (CPU embedding is the slow step)

Per-step times come from the artifact's manifest (the same clock `planlm prepare` prints). k-means runs on random
standard-normal 384-d points (float16, as stored) with K=1024: no cluster structure, so Lloyd does its full work.
scikit-learn runs on every point of at most --sklearn-max-points points (it is exact and slow at scale); larger runs
are reported as skipped, with the faiss/sklearn ratio measured where both ran. Results go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIKI_BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wiki-bench.jsonl.gz"
STEPS = ("load encoder", "read", "sentences", "split", "embed", "k-means", "exemplars", "write")


def bench_corpus(name: str, source: str, max_articles: int | None, encoder: str, work: Path) -> dict:
    from planlm.data.corpus import SourceConfig
    from planlm.data.encoders import EncoderConfig
    from planlm.stages.prepare import prepare

    out = work / f"prepared-{name}"
    t0, c0 = time.perf_counter(), time.process_time()
    prepare(out=str(out), source=SourceConfig(source=source, max_articles=max_articles),
            encoder=EncoderConfig(name=encoder), force=True, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = json.loads((out / "manifest.json").read_text())
    return {"name": name, "wall": wall, "cpu": cpu, "seconds": m["seconds"], "counts": m["counts"], "k": m["num_actions"]}


def bench_kmeans(n: int, k: int, backend: str, seed: int = 0) -> dict:
    from planlm.data.actions import KMeansConfig, fit_actions

    x = np.random.default_rng(seed).standard_normal((n, 384), dtype=np.float32).astype(np.float16)
    t0 = time.perf_counter()
    fit = fit_actions(x, k, KMeansConfig(backend=backend), progress=False)
    wall = time.perf_counter() - t0
    sizes = np.bincount(fit.train_labels, minlength=k)
    return {"n": n, "backend": backend, "wall": wall, "detail": fit.seconds, "empty": int((sizes == 0).sum())}


_SEARCH = """
import time, numpy as np, faiss
x = np.random.default_rng(0).standard_normal((100_000, 384), dtype=np.float32)
index = faiss.IndexFlatL2(384); index.add(x[:1024].copy())
index.search(x[:2000], 1)
t = time.perf_counter(); index.search(x, 1); print(time.perf_counter() - t)
"""


def bench_openblas_coretype() -> dict:
    """faiss nearest-centroid search (100k x 1024, d=384) with its bundled OpenBLAS as detected vs as planlm sets it."""
    from planlm.data.actions import openblas_coretype

    chosen = os.environ.get("OPENBLAS_CORETYPE") or openblas_coretype()
    out = {}
    for label, env_value in (("as detected by faiss's OpenBLAS", None), (f"OPENBLAS_CORETYPE={chosen}", chosen)):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        if env_value:
            env["OPENBLAS_CORETYPE"] = env_value
        res = subprocess.run([sys.executable, "-c", _SEARCH], env=env, capture_output=True, text=True, check=True)
        out[label] = float(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default="builtin,wiki-bench", help="comma list of builtin, wiki-bench (or '')")
    p.add_argument("--wiki-bench", default=str(WIKI_BENCH), help="path of wiki-bench.jsonl.gz (loaded, never copied)")
    p.add_argument("--max-articles", type=int, default=None, help="read at most this many wiki-bench articles")
    p.add_argument("--encoder", default="all-MiniLM-L6-v2")
    p.add_argument("--kmeans-points", default="100000,1000000", help="comma list of N for the k-means runs (or '')")
    p.add_argument("--num-actions", type=int, default=1024)
    p.add_argument("--sklearn-max-points", type=int, default=100_000, help="skip scikit-learn above this N")
    p.add_argument("--out-dir", default=None, help="keep the prepared artifacts here (default: a temporary directory)")
    p.add_argument("--no-openblas", action="store_true", help="skip the OpenBLAS core-type comparison")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"# bench/prepare.py  cpus={os.cpu_count()}  load average at start: {os.getloadavg()[0]:.1f}", flush=True)

    corpora = [c for c in args.corpora.split(",") if c]
    if corpora:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.out_dir or tmp)
            for name in corpora:
                source = "builtin" if name == "builtin" else args.wiki_bench
                rows.append(bench_corpus(name, source, args.max_articles if name != "builtin" else None, args.encoder, work))
                print(f"  done {name}: {rows[-1]['wall']:.1f}s (load average {os.getloadavg()[0]:.1f})", flush=True)
        print(f"\n## prepare steps (seconds), encoder {args.encoder}")
        print("| corpus | articles | sentences | K | " + " | ".join(STEPS) + " | total wall | CPU s (all threads) | embed sent/s |")
        print("|---" * (len(STEPS) + 7) + "|")
        for r in rows:
            s, c = r["seconds"], r["counts"]["total"]
            rate = c["sentences"] / s["embed"] if s.get("embed") else float("nan")
            print(f"| {r['name']} | {c['articles']:,} | {c['sentences']:,} | {r['k']} | "
                  + " | ".join(f"{s.get(step, 0):.1f}" for step in STEPS) + f" | {r['wall']:.1f} | {r['cpu']:.0f} | {rate:.0f} |")

    points = [int(n) for n in args.kmeans_points.split(",") if n]
    if points:
        print(f"\n## k-means, {args.num_actions} actions, 384-d random points (seconds, wall)")
        print("| N | faiss (seed + Lloyd + assign) | scikit-learn | sklearn / faiss |")
        print("|---|---|---|---|")
        for n in points:
            f = bench_kmeans(n, args.num_actions, "faiss")
            fd = f["detail"]
            faiss_cell = (f"{f['wall']:.1f} ({fd.get('seeding', 0):.1f} + {fd.get('lloyd', 0):.1f} + "
                          f"{fd.get('assign', 0):.1f}), empty {f['empty']}")
            if n <= args.sklearn_max_points:
                s = bench_kmeans(n, args.num_actions, "sklearn")
                sk_cell, ratio = f"{s['wall']:.1f}, empty {s['empty']}", f"{s['wall'] / f['wall']:.1f}x"
            else:
                sk_cell, ratio = f"skipped (N > --sklearn-max-points {args.sklearn_max_points})", "-"
            print(f"| {n:,} | {faiss_cell} | {sk_cell} | {ratio} |", flush=True)

    if not args.no_openblas:
        times = bench_openblas_coretype()
        base = next(iter(times.values()))
        print("\n## faiss search 100k x 1024 (d=384): OpenBLAS kernels (seconds)")
        print("| OpenBLAS | seconds | speed-up |")
        print("|---|---|---|")
        for label, sec in times.items():
            print(f"| {label} | {sec:.2f} | {base / sec:.1f}x |")
    print(f"\n# load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
