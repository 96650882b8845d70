"""`planlm mtp-compare`: next-token vs multi-token prediction trained from scratch on the same corpus and token budget
(Gloeckle et al. 2024), through the existing stages.

For each n in ``--n_heads`` (default 1, 2, 4): `planlm pretrain-lm --mtp.n_heads n` (same preset, seed, batches and
steps: the LM's initialisation and data order are identical, only the heads differ) -> `planlm evaluate` on the
LM folder (head-1 perplexity with the usual protocols, each head's accuracy on t + i, and with ``--probes`` the
future-token probes of every block's output, the paper's Figure 3 machinery) -> greedy decoding of test prompts,
plain and self-speculative (tokens/s, tokens per forward pass). Writes ``OUT/mtp_results.md`` (one table),
``OUT/mtp_results.json`` and ``OUT/mtp_probes.png`` (probe accuracy by distance at the trunk output, one line per n).
Every stage's artifact is reused when it is up to date.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from planlm.artifacts import check_writable
from planlm.errors import raise_if_problems
from planlm.eval.probes import ProbeConfig
from planlm.stages.pretrain_lm import pretrain_lm
from planlm.train.lm_pretraining import PRESET_OPTIM, LMPresetName, resolve_optim
from planlm.train.lm_pretraining import PRESETS as LM_PRESETS
from planlm.train.trainer import OptimConfig, TrainerConfig


def _decode_rows(lm_dir: Path, prompts: int, prompt_tokens: int, new_tokens: int) -> dict:
    """Greedy decoding of test prompts, plain and (with heads) self-speculative: tokens/s and tokens per pass (on a
    GPU when one is visible, like the evaluation before it)."""
    from planlm.eval.speculative import decode
    from planlm.persist import load_lm_run

    model, heads, tok, corpus, _ = load_lm_run(lm_dir)  # a GPU when visible, as evaluate
    texts = [corpus.texts[int(a)] for a in corpus.article_ids("test")[:prompts]]
    ids = [tok(t, add_special_tokens=False)["input_ids"][:prompt_tokens] for t in texts]
    decode(model.lm, ids[0], 4, heads=heads)  # warm-up
    out = {}
    for name, h in (("plain", None), ("speculative", heads)):
        if name == "speculative" and heads is None:
            continue
        n = passes = 0
        seconds = 0.0
        for prompt in ids:
            _, s = decode(model.lm, prompt, new_tokens, heads=h)
            n, passes, seconds = n + s.new_tokens, passes + s.forward_passes, seconds + s.seconds
        out[name] = {"tokens_per_second": n / seconds, "tokens_per_forward": n / passes}
    return out


def plot_mtp_probes(rows_by_n: dict[int, list[dict]], layer: int, path: Path) -> Path:
    """Probe accuracy by distance at one layer, one line per n (and the majority baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    base = {}
    for n, rows in sorted(rows_by_n.items()):
        pts = sorted((r["distance"], r["accuracy"]) for r in rows if r["layer"] == layer)
        ax.plot([d for d, _ in pts], [a for _, a in pts], marker="o", label="NTP (n=1)" if n == 1 else f"MTP (n={n})")
        for r in rows:
            if r["layer"] == layer:
                base.setdefault(r["distance"], r["baseline"])
    ds = sorted(base)
    ax.plot(ds, [base[d] for d in ds], "k--", label="majority baseline")
    ax.set(xlabel="distance d (token t + d probed from position t)", ylabel="held-out accuracy", xticks=ds,
           title=f"Linear probes on the trunk output (block {layer})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def mtp_compare(
    prepared: Path = Path("runs/prepared"),
    out: Path = Path("runs/mtp"),
    n_heads: list[int] = [1, 2, 4],  # noqa: B006  (jsonargparse reads the default)
    preset: LMPresetName = "small-cpu",
    vocab_size: int = 8192,
    block_size: int | None = None,
    optim: OptimConfig = PRESET_OPTIM,
    backward: str = "sequential",
    context_length: int = 128,
    eval_max_tokens: int | None = 20000,
    probes: bool = True,
    probe: ProbeConfig = ProbeConfig(vocab_size=200, max_positions=5000, max_iter=50),
    probe_windows: int = 64,
    decode_prompts: int = 5,
    decode_tokens: int = 64,
    seed: int = 0,
    trainer: TrainerConfig = TrainerConfig(),
    force: bool = False,
) -> Path:
    """Compare next-token (n=1) and multi-token prediction (n heads) trained from scratch on one corpus and budget.

    Args:
        prepared: a `planlm prepare` output (the builtin corpus by default there).
        out: folder of the LMs (lm-n1, lm-n2, ...), their evaluations and the results table.
        n_heads: the n to compare (1 = next-token prediction, the baseline).
        preset: `planlm pretrain-lm` preset (same for every n).
        vocab_size: BPE vocabulary size.
        block_size: training sequence length (default: the preset's).
        optim: `planlm pretrain-lm --optim` (lr, batch_size, epochs, max_steps, ...; unset values: the preset's), the
            same token budget for every n.
        backward: sequential (the paper's memory-efficient order) or naive.
        context_length: evaluation windows (strided protocol, stride context_length - 1).
        eval_max_tokens: scored tokens per perplexity at most.
        probes: fit the future-token probes (Figure 3 machinery) on every block's output.
        probe: probe settings (fewer classes and positions than `evaluate`'s default, to fit a CPU budget).
        probe_windows: test windows the probes and head accuracies read.
        decode_prompts: test articles whose first 32 tokens prompt the decoding speed test.
        decode_tokens: new tokens per prompt.
        seed: seed of every stage.
        trainer: devices and precision of the pretraining.
        force: rebuild every stage.

    Returns:
        The output folder.
    """
    from planlm.eval.perplexity import PerplexityConfig
    from planlm.models.mtp import MTPConfig
    from planlm.stages.evaluate import evaluate

    problems = [f"n_heads must be positive (got {n})" for n in n_heads if n < 1]
    problems += [] if n_heads else ["n_heads is empty"]
    problems += MTPConfig(backward=backward).problems()
    problems += resolve_optim(preset, optim).problems() if preset in LM_PRESETS else []
    raise_if_problems(problems, "mtp-compare")
    out = Path(out)
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, probe_rows = [], {}
    for n in n_heads:
        lm_dir = out / f"lm-n{n}"
        t0 = time.time()
        m = pretrain_lm(str(prepared), out=str(lm_dir), preset=preset, vocab_size=vocab_size, block_size=block_size,
                        optim=optim, seed=seed, trainer=trainer, mtp=MTPConfig(n_heads=n, backward=backward),
                        force=force)
        train_s = time.time() - t0
        manifest = json.loads((lm_dir / "manifest.json").read_text())
        ev = evaluate(lm_dir, out=out / f"eval-n{n}", split="test",
                      ppl=PerplexityConfig(actions=["predicted"], protocols=["strided"], context_length=context_length,
                                           max_tokens=eval_max_tokens),
                      probes=probes, probe=probe, probe_windows=probe_windows, force=force)
        metrics = json.loads((Path(ev) / "metrics.json").read_text())
        if probes:
            probe_rows[n] = json.loads((Path(ev) / "probes.json").read_text())
        dec = _decode_rows(lm_dir, decode_prompts, 32, decode_tokens)
        heads = {h["head"]: h["accuracy"] for h in metrics.get("mtp_heads") or []}
        rows.append({
            "n": n, "test_ppl": metrics["ppl"], "val_ppl": m["val_perplexity"],
            "trained_tokens": manifest["counts"]["trained_tokens"], "steps": manifest["counts"]["steps"],
            "parameters": manifest["counts"]["parameters"], "train_tokens_per_s": m["tokens_per_second"],
            "train_seconds": round(train_s, 1), "head_accuracy": heads, "decoding": dec,
        })
    layers = manifest["config"]["shape"]["n_layer"] if "config" in manifest else None
    lines = ["| model | test PPL (head 1) | val PPL | params | trained tokens | head accuracy t+1 / t+2 / ... | "
             "greedy tokens/s plain | speculative | tokens per pass |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = " / ".join(f"{a:.3f}" for _, a in sorted(r["head_accuracy"].items())) or "-"
        d = r["decoding"]
        spec = d.get("speculative")
        lines.append(
            f"| {'NTP (n=1)' if r['n'] == 1 else 'MTP (n=%d)' % r['n']} | {r['test_ppl']:.2f} | {r['val_ppl']:.2f} | "
            f"{r['parameters'] / 1e6:.2f} M | {r['trained_tokens']:,} | {acc} | {d['plain']['tokens_per_second']:.1f} | "
            + (f"{spec['tokens_per_second']:.1f} ({spec['tokens_per_second'] / d['plain']['tokens_per_second']:.2f}x)"
               f" | {spec['tokens_per_forward']:.2f} |" if spec else "- | 1.00 |"))
    table = "\n".join(lines) + "\n"
    if probe_rows and layers:
        trunk = layers - 2  # the trunk's last block: the output every head reads
        plot_mtp_probes(probe_rows, trunk, out / "mtp_probes.png")
        dists = sorted({r["distance"] for rs in probe_rows.values() for r in rs})
        table += "\nProbe accuracy at the trunk output (block %d) by distance d:\n\n| model | " % trunk
        table += " | ".join(f"d={d}" for d in dists) + " |\n|---|" + "---|" * len(dists) + "\n"
        for n, rs in sorted(probe_rows.items()):
            acc = {r["distance"]: r["accuracy"] for r in rs if r["layer"] == trunk}
            table += f"| n={n} | " + " | ".join(f"{acc[d]:.3f}" for d in dists) + " |\n"
    (out / "mtp_results.md").write_text(table)
    (out / "mtp_results.json").write_text(json.dumps({"rows": rows, "probes": probe_rows}, indent=2) + "\n")
    print("\n" + table)
    return out
