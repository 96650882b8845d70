"""metrics.json as a typed record: the file's layout kept exactly, its types checked in one place, and the report's
columns and metrics.md's rows read from the record's fields."""

from __future__ import annotations

import dataclasses
import json

import pytest

from planlm.errors import PlanlmError
from planlm.eval.generation_metrics import GenerationMetrics
from planlm.eval.record import (
    COLUMNS,
    GENERATION,
    MetricsRecord,
    headline_by_article,
    json_problems,
)


def by_article(n=3):
    return {"article_ids": list(range(n)), "nll_sum": [10.0] * n, "tokens": [4] * n}


def evaluated() -> dict:
    """A metrics.json as `planlm evaluate --generation true` writes it, in its key order (nulls included)."""
    return {
        "variant": "Cornille PA", "seed": 1, "selection": "hard", "split": "test", "p_predicted": 1.0,
        "training_actions": "predicted", "planner": {"top1": 0.25, "top5": 0.5, "sentences": 12},
        "planner_top1": 0.25, "planner_top5": 0.5,
        "perplexity": {"paper": {"predicted": {"ppl": 20.0, "nll_sum": 30.0, "tokens": 12, "articles": 3,
                                               "by_article": by_article()}}},
        "ppl": 20.0, "ppl_actions": "predicted", "ppl_protocol": "paper",
        "by_planner_correct": {"predicted": {"right": {"ppl": 18.0, "tokens": 5}, "wrong": {"ppl": 22.0, "tokens": 7}}},
        "mauve": 0.5, "latent_ppl": 9.0, "latent_delta": 0.1, "latent_ppl_real": None, "rouge2": None,
        "rouge2_by_length": {}, "edit_distance": {"8": 1.5}, "edit_distance_mean": 1.5, "edit_distance_pairs": {"8": 3},
        "mauve_continuation": None, "by_first_action": {"right": {}, "wrong": {}}, "plan_matching": 0.4,
        "mauve_protocol": {"n": 2}, "latent_ppl_protocol": {}, "rouge2_protocol": {}, "edit_distance_protocol": {},
        "plan_matching_protocol": {"sentences": {"unconditional": 5}}, "seconds": 1.5,
    }


def test_the_file_round_trips_exactly_key_order_and_nulls_included():
    data = evaluated()
    record = MetricsRecord.from_json(data)
    assert json.dumps(record.to_json()) == json.dumps(data)
    assert record.rouge2 is None and record.ppl == 20.0 and record.by_article == by_article()
    # keys of no field are kept, after the fields; a field not measured stays out (no "ppl_oracle": null)
    more = {"variant": "X", "ppl": 3.0, "note": "kept", "extra": 1}
    assert MetricsRecord.from_json(more).to_json() == {"variant": "X", "seed": 0, "ppl": 3.0, "note": "kept",
                                                       "extra": 1}
    assert "ppl_oracle" not in MetricsRecord(variant="X", ppl=3.0).to_json()


def test_the_generation_fields_are_generation_metrics_summary():
    generated = {f.name for f in dataclasses.fields(GenerationMetrics)} - {"samples"}
    grouped = {f.name for f in dataclasses.fields(MetricsRecord) if f.metadata.get("group") == GENERATION}
    assert grouped == generated  # evaluate passes GenerationMetrics.summary() as keywords


def test_every_problem_in_one_line_each(tmp_path):
    bad = {"variant": "", "seed": "zero", "ppl": -1, "mauve": "high", "p_predicted": 1.5, "planner": [1],
           "edit_distance": {"x": 1.0}, "ppl_protocol": "paper", "ppl_actions": "predicted",
           "perplexity": {"paper": {"predicted": {"by_article": {**by_article(), "tokens": [0, 1, 1]}}}}}
    problems = json_problems(bad, "m.json")
    assert problems == [
        'm.json needs "variant": a non-empty string',
        "m.json: \"seed\" must be an integer, got 'zero'",
        'm.json: "p_predicted" must lie in [0, 1], got 1.5',
        'm.json: "planner" must be a JSON object, got [1]',
        'm.json needs "ppl": a positive number',
        "m.json: \"mauve\" must be a number, got 'high'",
        "m.json: \"edit_distance\" must map token counts (\"128\", ...) to numbers, got {'x': 1.0}",
        ('m.json: "by_article" of the headline perplexity must hold equally long lists article_ids, nll_sum and '
         'tokens (finite numbers, positive token counts)'),
    ]
    assert json_problems([], "m.json") == ["m.json must hold a JSON object"]
    assert json_problems({"variant": "A", "ppl": 2, "rouge2": None, "seed": 0}) == []  # null: not measured
    assert json_problems({"variant": "A", "ppl": float("nan")}) == ['metrics.json needs "ppl": a positive number']
    one_error = r'\(1\) metrics.json: "seed" must be an integer, got True; \(2\) metrics.json needs "ppl"'
    with pytest.raises(PlanlmError, match=one_error):
        MetricsRecord.from_json({"variant": "A", "seed": True})
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(PlanlmError, match="is not valid JSON"):
        MetricsRecord.load(tmp_path / "metrics.json")


def test_files_from_before_per_article_records_still_load():
    old = {"variant": "Soft", "seed": 0, "ppl": 25.0, "perplexity": {"paper": {"predicted": {"ppl": 25.0}}}}
    assert headline_by_article(old) is None and MetricsRecord.from_json(old).by_article is None
    assert MetricsRecord.from_json({"variant": "Soft", "ppl": 25.0}).seed == 0


def test_columns_and_rows_come_from_the_fields():
    from planlm.stages import report
    from planlm.stages.evaluate import metrics_markdown

    assert [(c.key, c.header, c.decimals, c.per_key) for c in COLUMNS] == [
        ("ppl", "PPL", 2, False), ("mauve", "MAUVE", 3, False), ("latent_ppl", "Latent PPL", 2, False),
        ("rouge2", "ROUGE-2", 4, False), ("edit_distance", "Edit dist. @{key}", 2, True)]
    assert report.COLUMNS == (("ppl", "PPL", 2), ("ppl_rel", "PPL vs Fixed (%)", 2), ("mauve", "MAUVE", 3),
                              ("latent_ppl", "Latent PPL", 2), ("rouge2", "ROUGE-2", 4))
    assert report.SEED_METRICS == (("ppl", "PPL"), ("mauve", "MAUVE"), ("latent_ppl", "Latent PPL"),
                                   ("rouge2", "ROUGE-2"))
    md = metrics_markdown(MetricsRecord.from_json(evaluated()))
    assert md.startswith("# Cornille PA (seed 1)\n")
    for row in ("| ppl | 20.000 |", "| rouge2 | - |", "| mauve_continuation | - |", "| edit_distance_mean | 1.500 |",
                "| edit distance @8 (per 128 tokens) | 1.500 |", '| mauve_protocol | {"n": 2} |',
                "| planner top-1 / top-5 vs oracle | 0.250 / 0.500 (12 sentences) |",
                "| paper | predicted | 20.000 | 12 | 3 |",
                "| predicted | 18.000 | 5 | 22.000 | 7 |"):
        assert row in md, row
    assert "ppl_oracle" not in md and "latent_delta" not in md  # not measured; no label
