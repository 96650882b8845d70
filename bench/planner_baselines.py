"""The planner against its bigram baseline on val (issue 27 item 7): where the action bigram wins, and whether a
planner option closes the gap.

    python bench/planner_baselines.py --prepared runs/demo/prepared --planners paper=runs/demo/planner \
        prior=runs/demo/planner-prior                         # planners trained by `planlm train-planner`

For every val sentence: is its action the previous sentence's ("repeat": the bigram's strength, since its most
likely successor of an action is very often the action itself) or not ("change"), or is it an article's first
sentence? Printed per planner folder and for the bigram and unigram baselines (fitted on the train sentences, as
train-planner fits them): val loss, top-1 and top-5 overall, and top-1 on the repeats and on the changes. The
planners are read as saved (their context as configured, counted in the tokens of the LM they were trained with).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def split_ids(corpus, split: str) -> np.ndarray:
    ranges = [np.arange(*corpus.sentence_range(int(a))) for a in corpus.article_ids(split)]
    return np.concatenate(ranges).astype(np.int64)


def planner_probs(planner_dir: str, corpus, ids: np.ndarray) -> np.ndarray:
    """``(N, K)`` the saved planner's action probabilities for the sentences ``ids``."""
    from planlm.artifacts import read_manifest
    from planlm.data.planner_inputs import PlannerInputs, needs_token_counts
    from planlm.persist import load_planner, load_tokenizer

    planner = load_planner(planner_dir).eval()
    tokenizer = None
    if needs_token_counts(planner.config):
        tokenizer = load_tokenizer(read_manifest(planner_dir, "train-planner")["context_tokenizer"])
    build = PlannerInputs.from_config(corpus, planner.config, tokenizer=tokenizer)
    with torch.no_grad():
        return np.concatenate([planner(**build(ids[b:b + 512])).float().softmax(-1).double().numpy()
                               for b in range(0, len(ids), 512)])


def rows_of(probs: np.ndarray, target: np.ndarray, groups: dict[str, np.ndarray]) -> dict:
    """Loss / top-1 / top-5 of ``probs (N, K)`` and top-1 on each group (a boolean mask over the N sentences)."""
    from planlm.eval.nap import action_metrics

    out = action_metrics(probs, target)
    hit = probs.argmax(1) == target
    out.update({f"top1 {name}": float(hit[mask].mean()) if mask.any() else None for name, mask in groups.items()})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--planners", nargs="*", default=[], help="NAME=DIR of train-planner outputs")
    ap.add_argument("--alphas", default="1,4,16,64,256",
                    help="the bigram's smoothing pseudo-counts per row to score (PlannerConfig.bigram_alpha); the one "
                         "with the lowest val loss is also printed as the strongest bigram baseline")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = ap.parse_args(argv)
    from planlm.data.prepared import PreparedCorpus
    from planlm.eval.nap import bigram_table, previous_actions

    torch.set_num_threads(1)
    corpus = PreparedCorpus.load(args.prepared)
    train, val = split_ids(corpus, "train"), split_ids(corpus, "val")
    target = corpus.actions[val].astype(np.int64)
    prev = previous_actions(corpus, val)  # K for an article's first sentence
    first = prev == corpus.num_actions
    groups = {"repeat": ~first & (prev == target), "change": ~first & (prev != target), "first": first}
    table = bigram_table(corpus, train)  # (K + 1, K)
    counts = np.bincount(corpus.actions[train], minlength=corpus.num_actions) + 1.0
    results = {
        "val sentences": int(len(val)),
        "share": {name: float(mask.mean()) for name, mask in groups.items()},
        "bigram argmax = previous action (share of actions)": float(
            (table[: corpus.num_actions].argmax(1) == np.arange(corpus.num_actions)).mean()),
        "models": {"unigram": rows_of(np.tile(counts / counts.sum(), (len(val), 1)), target, groups),
                   "bigram": rows_of(table[prev], target, groups)},
    }
    # the bigram's one setting, its smoothing, chosen on val: the strongest bigram a planner option has to beat
    smoothed = {float(a): rows_of(bigram_table(corpus, train, alpha=float(a))[prev], target, groups)
                for a in args.alphas.split(",")}
    best = min(smoothed, key=lambda a: smoothed[a]["loss"])
    results["bigram val loss per alpha"] = {a: m["loss"] for a, m in smoothed.items()}
    results["models"][f"bigram, alpha {best:g} (lowest val loss)"] = smoothed[best]
    for spec in args.planners:
        name, folder = spec.split("=", 1)
        results["models"][name] = rows_of(planner_probs(folder, corpus, val), target, groups)

    print(f"val sentences: {results['val sentences']}; " + ", ".join(
        f"{name} {100 * share:.1f} %" for name, share in results["share"].items())
          + f"; the bigram's most likely successor is the action itself for "
            f"{100 * results['bigram argmax = previous action (share of actions)']:.0f} % of actions")
    print("bigram val loss per smoothing alpha: " + ", ".join(
        f"{a:g}: {loss:.4f}" for a, loss in results["bigram val loss per alpha"].items()))
    print("| model | val loss | top-1 | top-5 | top-1 on repeats | top-1 on changes | top-1 on first sentences |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, m in results["models"].items():
        cells = [m["loss"], m["top1"], m["top5"], m["top1 repeat"], m["top1 change"], m["top1 first"]]
        print(f"| {name} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
