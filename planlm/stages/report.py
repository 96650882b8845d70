"""`planlm report`: gather run folders into the paper's Table 1 and its figures (DESIGN.md section 2).

What the report reads from each run folder (searched recursively, so one folder may hold several variants in
subfolders; docs/evaluation.md is the reference):

- ``metrics.json``: ``{"variant": str, "seed": int (default 0), "ppl": float, and optionally "mauve",
  "latent_ppl", "rouge2": float, "edit_distance": {"128": float, ...}, "p_predicted": float in [0, 1],
  "ppl_oracle": float, ...}``, read and checked as a :class:`planlm.eval.record.MetricsRecord`, whose fields name
  the table's columns. Other keys are kept in ``report.json`` but not shown. `planlm evaluate` also
  writes the per-article NLL sums and token counts of the headline perplexity
  (``perplexity[ppl_protocol][ppl_actions]["by_article"]``), from which the report draws its intervals.
- ``probes.json`` next to a ``metrics.json``: a list of ``{"layer", "kind", "distance", "accuracy", "baseline"}``
  rows (:func:`planlm.eval.probes.rows_to_json`).
- ``overhead.json`` anywhere: ``{variant: training-step time relative to Fixed}``.

Intervals (:func:`planlm.eval.intervals.paired_bootstrap`): each variant's PPL change vs Fixed gets a paired bootstrap 95% interval.
Test articles are resampled with replacement (2,000 resamples, seed 0), the same resample for the variant and the
Fixed run it is compared with; with several seeds, the seeds are resampled too (a two-level bootstrap of the mean
over seeds of each seed's change vs its own Fixed run), and the seeds share one article resample when they share
their test articles. The table also gives the spread across seeds (± sample std).

What it writes into ``out`` (atomically): ``report.md``, ``report.html`` (self-contained: PNGs inlined as base64),
``report.json`` (the gathered numbers), the PNG plots, and ``manifest.json``.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from planlm.artifacts import (
    verify_artifact,
    atomic_dir,
    write_json_atomic,
    write_manifest,
    writes_artifact,
)
from planlm.errors import PlanlmError, raise_if_problems
from planlm.eval.figures import plot_mixing, plot_planner_correct, pyplot
from planlm.eval.intervals import BOOTSTRAP_RESAMPLES, paired_bootstrap
from planlm.eval.record import COLUMNS as RECORD_COLUMNS
from planlm.eval.record import MetricsRecord, json_problems
from planlm.eval.record import is_number as _is_number
from planlm.stage_config import config_of
from planlm.variants import PAPER_LMS, paper_lm, paper_ppl

METRICS = "metrics.json"
PROBES = "probes.json"
OVERHEAD = "overhead.json"
MIN_ARTICLES = 2  # per seed, for an interval
CI_HEADER = "95% CI vs Fixed (%)"
PROBE_KEYS = ("layer", "kind", "distance", "accuracy", "baseline")

RELATIVE = ("ppl_rel", "PPL vs Fixed (%)", 2)
"""The report's own column: each seed's PPL relative to the Fixed run of the same seed (after PPL)."""
NUMBER_COLUMNS = tuple(c for c in RECORD_COLUMNS if not c.per_key)
"""One number per run: a cell of mean ± std over seeds (PPL, MAUVE, latent PPL, ROUGE-2)."""
KEYED_COLUMNS = tuple(c for c in RECORD_COLUMNS if c.per_key)
"""A mapping per run (edit distance by token count): one column per key found."""
# Table 1 columns: (key, header, decimals): the record's numbers, PPL vs Fixed right after PPL
COLUMNS = tuple(col for c in NUMBER_COLUMNS
                for col in [(c.key, c.header, c.decimals)] + ([RELATIVE] if c.key == "ppl" else []))


@dataclass
class Run:
    """One metrics.json: a variant trained and evaluated with one seed."""

    path: Path
    variant: str
    seed: int
    metrics: dict
    """The file as read (copied into report.json)."""
    probes: list[dict] | None = None
    record: MetricsRecord = field(init=False, repr=False)
    """The same, checked and typed: what the table reads."""

    def __post_init__(self):
        self.record = MetricsRecord.from_json(self.metrics, self.path / METRICS)


@dataclass
class Gathered:
    runs: list[Run] = field(default_factory=list)
    overhead: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _read_json(path: Path, problems: list[str]):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problems.append(f"{path} is not valid JSON ({e}); rewrite it or remove it")
        return None


def _check_probes(path: Path, rows, problems: list[str]) -> bool:
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in PROBE_KEYS) for r in rows):
        problems.append(f"{path} must be a list of rows with keys {', '.join(PROBE_KEYS)}")
        return False
    return True


def gather(runs: list[Path]) -> Gathered:
    """Read every ``metrics.json`` (with its ``probes.json``) and ``overhead.json`` under ``runs``; collect problems."""
    out = Gathered()
    seen: set[Path] = set()
    overhead_values: dict[str, list[float]] = {}
    for root in runs:
        root = Path(root)
        if not root.exists():
            out.problems.append(f"run folder {root} does not exist")
            continue
        metrics_files = sorted(root.rglob(METRICS)) if root.is_dir() else ([root] if root.name == METRICS else [])
        if not metrics_files:
            out.problems.append(f"no {METRICS} under {root}; run `planlm evaluate` into it first")
        for path in metrics_files:
            if path.resolve() in seen:  # overlapping run folders (a and a/sub)
                continue
            seen.add(path.resolve())
            if (path.parent / "manifest.json").exists():  # written by `planlm evaluate`: its hashes must hold
                try:
                    verify_artifact(path.parent)
                except PlanlmError as e:
                    out.problems.append(str(e))
                    continue
            m = _read_json(path, out.problems)
            problems = [] if m is None else json_problems(m, path)
            out.problems += problems
            if m is None or problems:
                continue
            probes = None
            if (path.parent / PROBES).exists():
                rows = _read_json(path.parent / PROBES, out.problems)
                probes = rows if rows is not None and _check_probes(path.parent / PROBES, rows, out.problems) else None
            out.runs.append(Run(path=path.parent, variant=m["variant"], seed=int(m.get("seed", 0)), metrics=m,
                                probes=probes))
        for path in sorted(root.rglob(OVERHEAD)) if root.is_dir() else []:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            o = _read_json(path, out.problems)
            if o is None:
                continue
            if not isinstance(o, dict) or not all(_is_number(v) and v > 0 for v in o.values()):
                out.problems.append(f"{path} must map variant names to positive numbers (time relative to Fixed)")
                continue
            for variant, ratio in o.items():
                overhead_values.setdefault(variant, []).append(float(ratio))
    # several files giving one variant's overhead (repeated benchmarks): their mean
    out.overhead = {v: float(np.mean(r)) for v, r in overhead_values.items()}
    where: dict[tuple[str, int], Path] = {}
    for run in out.runs:
        key = (run.variant, run.seed)
        if key in where:
            out.problems.append(f"variant {run.variant!r} seed {run.seed} appears twice ({where[key]} and "
                                f"{run.path}); give each run its own seed or variant name")
        where[key] = run.path
    return out


def validate_report(runs: list[Path], out: Path, force: bool) -> Gathered:
    """Check every argument and every file the report would read; raise one error listing all problems."""
    problems = []
    if not runs:
        problems.append("give at least one run folder (planlm report RUN_DIR...)")
    if Path(out).exists() and not force:
        problems.append(f"{out} already exists; pass --force true to rebuild it or choose another --out")
    gathered = gather(runs)
    target = Path(out).resolve()
    inputs = [Path(r).resolve() for r in runs] + [run.path.resolve() for run in gathered.runs]
    hit = next((p for p in inputs if p == target or target in p.parents), None)
    if hit is not None:  # --force would replace the runs being reported
        problems.append(f"--out {out} would replace {hit}, which this report reads; choose an --out outside the runs "
                        "(e.g. RUNS/../report)")
    raise_if_problems(problems + gathered.problems, "planlm report")
    return gathered


# --------------------------------------------------------------------------------------------------------- table


def seed_stats(values: list[float]) -> dict | None:
    """Mean and sample standard deviation (ddof 1; 0 for one seed) over seeds."""
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values)}


def _ordered_variants(runs: list[Run], baseline: str) -> list[str]:
    order = list(dict.fromkeys(r.variant for r in runs))
    return sorted(order, key=lambda v: (v.lower() != baseline.lower(), order.index(v)))


def relative_ppl(runs: list[Run], baseline: str = "fixed", key: str = "ppl") -> dict[tuple[str, int], float]:
    """Per (variant, seed): the metric ``key`` (PPL by default) relative to the baseline run of the SAME seed, in
    percent (``100 * (ppl / ppl_fixed - 1)``; for PPL negative = better than Fixed; the paper's Figure 5). Seeds
    without a baseline run, or runs without the metric, are left out."""
    values = [(r, getattr(r.record, key)) for r in runs if _is_number(getattr(r.record, key))]
    fixed = {r.seed: v for r, v in values if r.variant.lower() == baseline.lower() and v > 0}
    return {(r.variant, r.seed): 100.0 * (v / fixed[r.seed] - 1.0) for r, v in values if r.seed in fixed}


def results_table(runs: list[Run], baseline: str = "fixed") -> list[dict]:
    """One row per variant (baseline first, then in the order found): each Table 1 column as mean/std/n over seeds.

    Row keys: ``variant``, ``seeds`` (list), ``ppl``, ``ppl_rel``, ``mauve``, ``latent_ppl``, ``rouge2`` (each
    ``{"mean", "std", "n"}`` or None), ``ppl_rel_ci`` (:func:`paired_bootstrap`'s result, or None without
    per-article records), ``edit_distance`` (``{"128": {"mean", "std", "n"}, ...}``), ``paper_ppl`` (the
    paper's number for the variants of :mod:`planlm.variants`, else None) and ``paper_lm`` (the base LM of the
    paper's column it comes from: OLMo-1B when a run's base LM is OLMo-like, else GPT-2; :func:`paper_lm`).
    """
    column = paper_lm(r.record.lm_model_type for r in runs)
    rel = relative_ppl(runs, baseline)
    intervals = ppl_intervals(runs, baseline)
    rows = []
    for variant in _ordered_variants(runs, baseline):
        mine = sorted((r for r in runs if r.variant == variant), key=lambda r: r.seed)
        row = {"variant": variant, "seeds": [r.seed for r in mine]}
        for c in NUMBER_COLUMNS:
            row[c.key] = seed_stats([getattr(r.record, c.key) for r in mine if _is_number(getattr(r.record, c.key))])
        row["ppl_rel"] = seed_stats([rel[(variant, r.seed)] for r in mine if (variant, r.seed) in rel])
        row["ppl_rel_ci"] = intervals.get(variant)  # paired bootstrap over articles (and seeds); None for the baseline
        for c in KEYED_COLUMNS:  # {"128": stats, ...}: one column per token count any seed recorded
            values = [getattr(r.record, c.key) or {} for r in mine]
            keys = sorted({int(k) for v in values for k in v})
            row[c.key] = {str(n): seed_stats([v[str(n)] for v in values if str(n) in v]) for n in keys}
        row["paper_ppl"] = paper_ppl(variant, column)  # the paper's Wikipedia number for a variant it names
        row["paper_lm"] = PAPER_LMS[column]
        rows.append(row)
    return rows


def ppl_intervals(runs: list[Run], baseline: str = "fixed") -> dict[str, dict | None]:
    """Per variant (baseline excluded): :func:`paired_bootstrap` over its seeds that have a baseline run of the
    same seed and per-article records on the same articles, at least MIN_ARTICLES of them (resampling one article
    gives a zero-width interval that would claim a certainty nobody has); None when no seed qualifies."""
    base = {r.seed: r.record.by_article for r in runs if r.variant.lower() == baseline.lower()}
    out = {}
    for variant in _ordered_variants(runs, baseline):
        if variant.lower() == baseline.lower():
            continue
        pairs = []
        for r in sorted((r for r in runs if r.variant == variant), key=lambda r: r.seed):
            mine, theirs = r.record.by_article, base.get(r.seed)
            if (mine is not None and theirs is not None and mine["article_ids"] == theirs["article_ids"]
                    and len(mine["article_ids"]) >= MIN_ARTICLES):
                pairs.append((mine, theirs))
        out[variant] = paired_bootstrap(pairs) if pairs else None
    return out


def _cell(stat: dict | None, decimals: int, signed: bool = False) -> str:
    if stat is None:
        return "–"
    fmt = f"{{:{'+' if signed else ''}.{decimals}f}}"
    text = fmt.format(stat["mean"])
    return text + f" ± {stat['std']:.{decimals}f}" if stat["n"] > 1 else text


def interval_cell(ci: dict | None) -> str:
    """``[low, high]`` in percent, with a mark when the interval excludes 0."""
    if ci is None:
        return "–"
    return f"[{ci['low']:+.2f}, {ci['high']:+.2f}]" + (" *" if ci["low"] > 0 or ci["high"] < 0 else "")


def table_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of Table 1 (edit distance: one column per token length found; the interval
    column when some run has per-article records)."""
    keys = {c.key: sorted({int(n) for row in rows for n in row[c.key]}) for c in KEYED_COLUMNS}
    with_ci = any(row.get("ppl_rel_ci") for row in rows)
    header = ["Variant", "Seeds"]
    for key, h, _ in COLUMNS:
        header += [h] + ([CI_HEADER] if key == "ppl_rel" and with_ci else [])
    header += [c.header.format(key=n) for c in KEYED_COLUMNS for n in keys[c.key]] + [paper_header(rows)]
    body = []
    for row in rows:
        cells = [row["variant"], str(len(row["seeds"]))]
        for key, _, d in COLUMNS:
            cells.append(_cell(row[key], d, signed=key == "ppl_rel"))
            if key == "ppl_rel" and with_ci:
                cells.append(interval_cell(row.get("ppl_rel_ci")))
        cells += [_cell(row[c.key].get(str(n)), c.decimals) for c in KEYED_COLUMNS for n in keys[c.key]]
        cells.append("–" if row.get("paper_ppl") is None else f"{row['paper_ppl']:.2f}")
        body.append(cells)
    return header, body


def paper_header(rows: list[dict], word: str = "Paper") -> str:
    """The header of the paper's column: ``Paper PPL (GPT-2, Wikipedia)``, or OLMo-1B's (the rows' ``paper_lm``)."""
    lm = next((row["paper_lm"] for row in rows if row.get("paper_lm")), PAPER_LMS["gpt2"])
    return f"{word} PPL ({lm}, Wikipedia)"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- plots


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "variant"


def plot_overhead(overhead: dict[str, float], path: Path, baseline: str = "fixed") -> Path | None:
    """Bars: training-step time of each variant relative to Fixed."""
    if not overhead:
        return None
    plt = pyplot()
    names = sorted(overhead, key=lambda v: (v.lower() != baseline.lower(), list(overhead).index(v)))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names)), 4))
    bars = ax.bar(names, [overhead[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2fx")
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set(ylabel="time per training step / Fixed", title="Training overhead")
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


SEED_METRICS = tuple((c.key, c.header) for c in NUMBER_COLUMNS)  # PPL, MAUVE, latent PPL, ROUGE-2


def plot_seeds(runs: list[Run], path: Path, baseline: str = "fixed",
               intervals: dict[str, dict | None] | None = None) -> Path | None:
    """The paper's Figure 5: for each metric (PPL, MAUVE, latent PPL, ROUGE-2: those recorded),
    each seed's value relative to the Fixed run of the SAME seed, one dot per seed per variant, with the mean
    (bar) and, for PPL, the paired bootstrap 95% interval (:func:`ppl_intervals`). None unless some variant other
    than the baseline has at least two seeds with a baseline."""
    variants = [v for v in _ordered_variants(runs, baseline) if v.lower() != baseline.lower()]
    panels = []
    for key, label in SEED_METRICS:
        rel = relative_ppl(runs, baseline, key)
        per = {v: [x for (name, _), x in sorted(rel.items()) if name == v] for v in variants}
        if any(per.values()):
            panels.append((key, label, per))
    if not panels or not any(len(xs) > 1 for xs in panels[0][2].values()):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4, 1.1 * len(variants)) * len(panels), 4.2), squeeze=False)
    for ax, (key, label, per) in zip(axes[0], panels):
        for i, (v, xs) in enumerate(per.items()):
            ax.scatter([i] * len(xs), xs, color="tab:blue", alpha=0.7, zorder=3)
            if xs:
                ax.hlines(np.mean(xs), i - 0.25, i + 0.25, color="tab:red", zorder=4)
            ci = (intervals or {}).get(v) if key == "ppl" else None
            if ci:
                ax.errorbar(i + 0.3, ci["estimate"], yerr=[[ci["estimate"] - ci["low"]], [ci["high"] - ci["estimate"]]],
                            fmt="none", ecolor="tab:gray", capsize=3, zorder=2)
        ax.axhline(0.0, color="k", ls="--", lw=1)
        ax.set_xticks(range(len(per)), list(per), rotation=30, ha="right")
        ax.set(ylabel=f"{label} vs Fixed of the same seed (%)", title=label)
    fig.suptitle("Seeds (dots), their mean (red bar),\nPPL: paired bootstrap 95% interval (grey)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def probe_plots(runs: list[Run], directory: Path) -> dict[str, Path]:
    """One Figure-3-like PNG per variant with probe results (rows averaged over its seeds)."""
    from planlm.eval.probes import plot_probes

    out = {}
    for variant in dict.fromkeys(r.variant for r in runs):
        groups: dict[tuple, list[dict]] = {}
        for r in runs:
            if r.variant == variant and r.probes:
                for row in r.probes:
                    groups.setdefault((int(row["layer"]), row["kind"], int(row["distance"])), []).append(row)
        if not groups:
            continue
        rows = [{"layer": l, "kind": k, "distance": d, "accuracy": float(np.mean([x["accuracy"] for x in rs])),
                 "baseline": float(np.mean([x["baseline"] for x in rs]))} for (l, k, d), rs in sorted(groups.items())]
        out[variant] = plot_probes(rows, directory / f"probes-{_slug(variant)}.png", title=f"Probes: {variant}")
    return out


# -------------------------------------------------------------------------------------------------------- output


TABLE_NOTE = (
    "Mean ± sample standard deviation over seeds; PPL vs Fixed compares each seed with the Fixed run of the same "
    f"seed (negative = better). {CI_HEADER}: paired bootstrap over test articles ({BOOTSTRAP_RESAMPLES} resamples, "
    "the same draw for the variant and Fixed), over seeds too when there are several; * = the interval excludes 0; "
    f"– = no per-article records or fewer than {MIN_ARTICLES} test articles. "
    "Edit distance is per 128 tokens.")


def _html(title: str, header: list[str], body: list[list[str]], overhead: dict[str, float],
          figures: list[tuple[str, Path]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in body)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>",
        f"<h1>{esc(title)}</h1><h2>Results (Table 1)</h2><table><tr>{head}</tr>{rows}</table>",
        f"<p>{esc(TABLE_NOTE)}</p>",
    ]
    if overhead:
        parts.append("<h2>Training overhead vs Fixed</h2><table><tr><th>Variant</th><th>Ratio</th></tr>"
                     + "".join(f"<tr><td>{esc(v)}</td><td>{r:.2f}x</td></tr>" for v, r in overhead.items())
                     + "</table>")
    for caption, path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{esc(caption)}</h2><img alt='{esc(caption)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _markdown(title: str, header, body, overhead: dict[str, float], figures: list[tuple[str, Path]],
              sources: list[Run]) -> str:
    lines = [f"# {title}", "", "## Results (Table 1)", "", markdown_table(header, body), "",
             TABLE_NOTE, ""]
    if overhead:
        lines += ["## Training overhead vs Fixed", "", markdown_table(
            ["Variant", "Ratio"], [[v, f"{r:.2f}x"] for v, r in overhead.items()]), ""]
    for caption, path in figures:
        lines += [f"## {caption}", "", f"![{caption}]({path.name})", ""]
    lines += ["## Sources", ""] + [f"- {r.variant} (seed {r.seed}): `{r.path}`" for r in sources]
    return "\n".join(lines) + "\n"


@writes_artifact()
def report(
    runs: Path | list[Path],
    out: Path = Path("report"),
    baseline: str = "fixed",
    title: str = "planlm results",
    force: bool = False,
) -> Path:
    """Gather run folders into the paper's Table 1 (markdown + self-contained HTML) and its plots (PNG).

    Reads every metrics.json under each run folder (recursively; probes.json beside it, overhead.json anywhere);
    docs/evaluation.md describes these files. Several seeds of one variant are shown as mean ± std, and relative to
    the baseline (Fixed) run of the same seed.

    Args:
        runs: a run folder, or a list of them (``'[runs/a, runs/b]'`` on the command line); each is searched
            recursively, so a parent folder of several runs works too.
        out: output folder (report.md, report.html, report.json, PNG plots, manifest.json).
        baseline: variant name (case-insensitive) that "PPL vs Fixed" compares with.
        title: page title.
        force: replace an existing output folder.

    Returns:
        The output folder.
    """
    runs = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
    config = ReportConfig.from_call(locals()).fingerprint()
    gathered = validate_report(runs, Path(out), force)
    rows = results_table(gathered.runs, baseline)
    header, body = table_cells(rows)
    with atomic_dir(out, force=force) as tmp:
        figures = [(f"Probes: {v}", p) for v, p in probe_plots(gathered.runs, tmp).items()]
        for caption, plot in (
            ("Oracle / predicted action mixing", plot_mixing([r.metrics for r in gathered.runs], tmp / "mixing.png")),
            ("Perplexity by planner correctness (Appendix E)",
             plot_planner_correct([r.metrics for r in gathered.runs], tmp / "planner-correct.png")),
            ("Seeds relative to Fixed (Figure 5)", plot_seeds(gathered.runs, tmp / "seeds.png", baseline,
                                                              {r["variant"]: r["ppl_rel_ci"] for r in rows})),
            ("Training overhead", plot_overhead(gathered.overhead, tmp / "overhead.png", baseline)),
        ):
            if plot is not None:
                figures.append((caption, plot))
        (tmp / "report.md").write_text(_markdown(title, header, body, gathered.overhead, figures, gathered.runs))
        (tmp / "report.html").write_text(_html(title, header, body, gathered.overhead, figures))
        write_json_atomic(tmp / "report.json", {
            "baseline": baseline, "table": rows, "overhead": gathered.overhead,
            "runs": [{"path": str(r.path), "variant": r.variant, "seed": r.seed, "metrics": r.metrics}
                     for r in gathered.runs],
            "figures": [p.name for _, p in figures],
        })
        write_manifest(tmp, "report", config,
                       inputs={f"run{i}": r for i, r in enumerate(runs)},
                       counts={"runs": len(gathered.runs), "variants": len(rows), "figures": len(figures)})
    print(f"report: {len(rows)} variants from {len(gathered.runs)} runs -> {Path(out) / 'report.html'}")
    return Path(out)


# What `planlm report` reads (the run folders as a list); recorded as the manifest's config.
ReportConfig = config_of(report, exclude=("out", "force"))
