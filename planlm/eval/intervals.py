"""Paired bootstrap intervals over test articles (and seeds) from `planlm evaluate`'s per-article NLL records: the
95% interval of a variant's PPL change vs its baseline (`planlm report`), or of any statistic of several models'
pooled NLLs (`planlm myopia planned`)."""

from __future__ import annotations

import numpy as np

BOOTSTRAP_RESAMPLES = 2000


BOOTSTRAP_SEED = 0


def paired_bootstrap(pairs: list[tuple[dict, dict]], n_boot: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> dict:
    """PPL change of a variant vs its baseline, in percent, with a paired bootstrap 95% interval.

    Args:
        pairs: one ``(variant, baseline)`` per seed, each a per-article record ``{"article_ids", "nll_sum",
            "tokens"}`` (what `planlm evaluate` writes), both over the same articles.
        n_boot: resamples.
        seed: seed of the resampling (fixed, so a report is reproducible).

    Returns:
        :func:`pooled_bootstrap`'s result for the statistic ``100 (PPL_variant / PPL_baseline - 1)``, each PPL pooled
        over its articles' tokens (the headline numbers).
    """
    return pooled_bootstrap([{"variant": v, "baseline": b} for v, b in pairs],
                            lambda nll: 100.0 * np.expm1(nll["variant"] - nll["baseline"]), n_boot, seed)


def pooled_bootstrap(seeds: list[dict[str, dict]], statistic, n_boot: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> dict:
    """A statistic of several models' pooled per-token NLLs, with a paired bootstrap 95% interval.

    Args:
        seeds: one dict per seed, model name -> per-article record ``{"article_ids", "nll_sum", "tokens"}`` (what
            `planlm evaluate` writes); the models of one seed were evaluated on the same articles.
        statistic: maps ``{name: (B,) NLL per token pooled over the articles of B resamples}`` to the ``(B,)``
            statistic of one seed (e.g. a PPL change, a difference of losses).
        n_boot: resamples.
        seed: seed of the resampling (fixed, so a report is reproducible).

    Returns:
        ``{"estimate", "low", "high", "seeds", "articles", "n_boot", "resampled"}``: the estimate is the mean over
        seeds of the statistic on all articles; the interval is the 2.5 / 97.5 percentiles of that mean over
        resamples that draw the articles with replacement (one draw for every model of a seed: paired) and, with
        several seeds, the seeds with replacement. Seeds that share their test articles share one article draw.
    """
    rng = np.random.default_rng(seed)
    ids = [list(next(iter(models.values()))["article_ids"]) for models in seeds]
    for models, mine in zip(seeds, ids):
        if any(list(r["article_ids"]) != mine for r in models.values()):
            raise ValueError("the models of one seed were evaluated on different articles")
    arrays = [{name: (np.asarray(r["nll_sum"], np.float64), np.asarray(r["tokens"], np.float64))
               for name, r in models.items()} for models in seeds]
    shared = all(i == ids[0] for i in ids)
    values = np.empty((len(seeds), n_boot))  # (S, B): each seed's statistic, per resample
    estimate = []
    weights = None
    for s, models in enumerate(arrays):
        a = len(ids[s])
        if weights is None or not shared:  # (B, A): how often each article is drawn in each resample
            weights = rng.multinomial(a, np.full(a, 1.0 / a), size=n_boot).astype(np.float64)
        values[s] = statistic({name: weights @ nll / (weights @ tok) for name, (nll, tok) in models.items()})
        estimate.append(float(statistic({name: np.array([nll.sum() / tok.sum()])
                                         for name, (nll, tok) in models.items()})[0]))
    if len(seeds) > 1:  # (B, S) seeds drawn with replacement, each with its own article draw
        drawn = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
        stat = values[drawn, np.arange(n_boot)[:, None]].mean(1)  # (B,)
    else:
        stat = values[0]
    low, high = np.percentile(stat, [2.5, 97.5])
    return {"estimate": float(np.mean(estimate)), "low": float(low), "high": float(high), "seeds": len(seeds),
            "articles": [len(i) for i in ids], "n_boot": n_boot,
            "resampled": "articles" if len(seeds) == 1 else "seeds and articles"}
