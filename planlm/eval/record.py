"""``metrics.json`` as one typed record: what `planlm evaluate` writes and `planlm report` and `planlm run` read
(docs/evaluation.md describes the file).

Each field of :class:`MetricsRecord` is one key of the file, in the order evaluate writes them. Its metadata says
where it shows, and the readers go by it alone:

- ``column``: its header in the report's Table 1 (``{key}`` in it: a mapping, one column per key found, e.g.
  ``Edit dist. @128``), with ``decimals`` digits; the report's Figure 5 draws every number that has a column;
- ``label``: its row in ``metrics.md`` (numbers with 3 digits, a mapping one row per key, a dict as JSON);
- ``group``: ``generation`` for the numbers of one `--generation` measurement, written together (null where one had
  no data: ROUGE-2 without continuations), as :meth:`planlm.eval.generation_metrics.GenerationMetrics.summary`
  gives them;
- ``bounds``: the closed interval a number must lie in.

The field's type is checked on reading (:func:`json_problems`, one line per problem). A new metric is therefore
its function, one field here and its ``column`` / ``label``. Keys of no field are kept as they were
(:attr:`MetricsRecord.extra`), so files with more (or, being older, fewer) keys still load.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from planlm.errors import PlanlmError, raise_if_problems

GENERATION = "generation"


def _meta(*, column: str | None = None, decimals: int = 3, label: str | None = None, group: str | None = None,
          bounds: tuple[float, float] | None = None, positive: bool = False) -> dict:
    return {"column": column, "decimals": decimals, "label": label, "group": group, "bounds": bounds,
            "positive": positive}


def metric(default=None, **meta):
    """A field of :class:`MetricsRecord` (default None: not measured, left out of metrics.json) and where it shows."""
    return field(default=default, metadata=_meta(**meta))


def required(**meta):
    """A field every metrics.json has."""
    return field(metadata=_meta(**meta))


def generation(**meta):
    """A number of the `--generation` measurement."""
    return metric(group=GENERATION, **meta)


@dataclass(kw_only=True)
class MetricsRecord:
    """One evaluated run: every number `planlm evaluate` measured, the keys of ``metrics.json``."""

    variant: str = required()
    """The row name in Table 1 (planlm.variants.variant_name of the run's recipe, or --variant); runs with the same
    name are seeds of one variant."""
    seed: int = field(default=0, metadata=_meta())
    """The training seed; (variant, seed) is unique across the folders a report gathers."""
    selection: str | None = metric()
    """The run's selection (fixed | uniform | hard | straight-through | soft)."""
    split: str | None = metric()
    """The split evaluated on."""
    lm_model_type: str | None = metric()
    """The base LM's ``config.model_type`` (gpt2, llama, olmo, ...): which of the paper's Table 1 columns (GPT-2 or
    OLMo-1B) the report sets next to the run (:func:`planlm.variants.paper_lm`)."""
    horizon: int | None = metric()
    """H, sentences per plan (runs with plans only)."""
    plan_samples: int | None = metric()
    """M, plans sampled per sentence (runs with plans only)."""
    p_predicted: float | None = metric(bounds=(0.0, 1.0))
    """Probability of planner-predicted (vs oracle) actions in hard-selection training; runs with two or more values
    make the report's mixing plot (Figure 4)."""
    training_actions: str | None = metric()
    """Where a hard-selection run's training actions came from (``schedule``: scheduled sampling, drawn apart)."""
    planner: dict | None = metric()
    """Planner accuracy vs the oracle actions: ``{"top1", "top5", "sentences"}``."""
    planner_top1: float | None = metric()
    planner_top5: float | None = metric()
    planner_offsets: list | None = metric()
    """Teacher-forced top-1 / top-5 at every offset of a plan (H > 1)."""
    perplexity: dict | None = metric()
    """``{protocol: {actions: {"ppl", "nll_sum", "tokens", "articles", ..., "by_article": {"article_ids",
    "nll_sum", "tokens"}}}}``: every perplexity measured, with the per-article sums the report's intervals resample."""
    ppl: float = required(column="PPL", decimals=2, label="ppl", positive=True)
    """Perplexity with planner-predicted actions, first protocol: the main metric."""
    ppl_actions: str | None = metric()
    """The actions of ``ppl`` (predicted where there are any)."""
    ppl_protocol: str | None = metric()
    """The protocol of ``ppl`` (paper | strided)."""
    ppl_oracle: float | None = metric(label="ppl_oracle")
    """Perplexity with oracle actions at test time (the mixing plot's second line)."""
    ppl_strided_minus_paper: float | None = metric(label="ppl_strided_minus_paper")
    """With both protocols: strided minus paper perplexity."""
    tokens_compared: dict | None = metric()
    """With both protocols: each one's scored tokens."""
    by_planner_correct: dict | None = metric()
    """Appendix E: ``{actions: {"right": {...}, "wrong": {...}}}``, perplexity on the tokens of sentences whose
    planner action was right / wrong."""
    mtp_heads: list | None = metric()
    """Multi-token heads: ``[{"head", "target", "accuracy", "tokens"}]``."""
    mauve: float | None = generation(column="MAUVE", decimals=3, label="mauve")
    latent_ppl: float | None = generation(column="Latent PPL", decimals=2, label="latent_ppl")
    latent_delta: float | None = generation()
    latent_ppl_real: float | None = generation()
    rouge2: float | None = generation(column="ROUGE-2", decimals=4, label="rouge2")
    rouge2_by_length: dict | None = generation()
    edit_distance: dict[str, float] | None = generation(column="Edit dist. @{key}", decimals=2,
                                                        label="edit distance @{key} (per 128 tokens)")
    """``{"<tokens>": edits per 128 tokens}``."""
    edit_distance_mean: float | None = generation(label="edit_distance_mean")
    edit_distance_pairs: dict | None = generation()
    mauve_continuation: float | None = generation(label="mauve_continuation")
    by_first_action: dict | None = generation()
    plan_matching: float | None = generation(label="plan_matching", bounds=(0.0, 1.0))
    """Figure 4: the share of generated sentences whose own writing action equals the action they were conditioned
    on (the report's mixing plot draws it against p)."""
    mauve_protocol: dict | None = generation(label="mauve_protocol")
    latent_ppl_protocol: dict | None = generation(label="latent_ppl_protocol")
    rouge2_protocol: dict | None = generation(label="rouge2_protocol")
    edit_distance_protocol: dict | None = generation(label="edit_distance_protocol")
    plan_matching_protocol: dict | None = generation(label="plan_matching_protocol")
    probes: dict | None = metric()
    """With --probes: ``{"rows", "file"}`` (probes.json beside it)."""
    seconds: float | None = metric()
    """Time the evaluation took."""
    extra: dict = field(default_factory=dict)
    """Every key of no field above, as it was read (written after them)."""

    def to_json(self) -> dict:
        """The ``metrics.json`` object: every measured field (not None; of a measured group all of them, null
        included), in field order, then :attr:`extra`."""
        measured = {f.metadata["group"] for f in _FIELDS if f.metadata["group"] and getattr(self, f.name) is not None}
        out = {f.name: getattr(self, f.name) for f in _FIELDS
               if getattr(self, f.name) is not None or f.metadata["group"] in measured}
        return out | self.extra

    @classmethod
    def from_json(cls, data, where: str | Path = "metrics.json") -> MetricsRecord:
        """The record of a ``metrics.json`` object; raises one PlanlmError listing every problem
        (:func:`json_problems`)."""
        raise_if_problems(json_problems(data, where), "metrics")
        names = {f.name for f in _FIELDS}
        return cls(**{k: v for k, v in data.items() if k in names}, extra={k: v for k, v in data.items()
                                                                           if k not in names})

    @classmethod
    def load(cls, path: str | Path) -> MetricsRecord:
        """Read and check a ``metrics.json`` file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise PlanlmError(f"metrics: {path} is not valid JSON ({e}); rewrite it or remove it") from None
        return cls.from_json(data, path)

    @property
    def by_article(self) -> dict | None:
        """The per-article record of the headline perplexity (``ppl``), or None when the file has none."""
        return _by_article(self.perplexity, self.ppl_protocol, self.ppl_actions)

    def labelled(self, kind: str) -> list[tuple[str, typing.Any]]:
        """``metrics.md`` rows of one kind of field (``number``, ``mapping``: one row per key, ``json``), in field
        order: (label, value) for every field with a ``label`` that metrics.json holds."""
        written = self.to_json()
        rows = []
        for f in _FIELDS:
            if f.metadata["label"] is None or f.name not in written or _kind(f) != kind:
                continue
            if kind == "mapping":
                rows += [(f.metadata["label"].format(key=k), v) for k, v in (written[f.name] or {}).items()]
            else:
                rows.append((f.metadata["label"], written[f.name]))
        return rows


@dataclass(frozen=True)
class Column:
    """A Table 1 column of the report: the field, its header (``{key}``: one column per key of a mapping) and
    digits."""

    key: str
    header: str
    decimals: int
    per_key: bool


_FIELDS = tuple(f for f in fields(MetricsRecord) if f.name != "extra")
_HINTS = typing.get_type_hints(MetricsRecord)


def _kind(f) -> str:
    """number | integer | string | mapping (str -> number) | json (an object) | list."""
    hint = _HINTS[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    if typing.get_origin(base) is dict:
        return "mapping"
    return {float: "number", int: "integer", str: "string", dict: "json", list: "list"}[base]


def _optional(f) -> bool:
    return type(None) in typing.get_args(_HINTS[f.name])


COLUMNS: tuple[Column, ...] = tuple(
    Column(f.name, f.metadata["column"], f.metadata["decimals"], _kind(f) == "mapping")
    for f in _FIELDS if f.metadata["column"])
"""The report's columns from the record, in field order (the report adds its own: PPL vs Fixed, the interval)."""


def is_number(x) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


_FITS = {
    "number": is_number,
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "string": lambda x: isinstance(x, str),
    "json": lambda x: isinstance(x, dict),
    "list": lambda x: isinstance(x, list),
    "mapping": lambda x: isinstance(x, dict) and all(str(k).isdigit() and is_number(v) for k, v in x.items()),
}
_MUST = {"number": "be a number", "integer": "be an integer", "string": "be a string", "json": "be a JSON object",
         "list": "be a list", "mapping": 'map token counts ("128", ...) to numbers'}


def json_problems(data, where: str | Path = "metrics.json") -> list[str]:
    """Every problem of a ``metrics.json`` object, one line each (the one place its types are checked)."""
    if not isinstance(data, dict):
        return [f"{where} must hold a JSON object"]
    out = []
    for f in _FIELDS:
        kind, value, meta = _kind(f), data.get(f.name), f.metadata
        if f.default is MISSING:  # required: variant, ppl
            ok = _FITS[kind](value) and (kind != "string" or value) and (not meta["positive"] or value > 0)
            if not ok:
                what = "a non-empty string" if kind == "string" else "a positive number" if meta["positive"] \
                    else _MUST[kind].removeprefix("be ")
                out.append(f'{where} needs "{f.name}": {what}')
        elif f.name in data and not (value is None and _optional(f)):
            if not _FITS[kind](value):
                out.append(f'{where}: "{f.name}" must {_MUST[kind]}, got {value!r}')
            elif meta["bounds"] and not meta["bounds"][0] <= value <= meta["bounds"][1]:
                low, high = meta["bounds"]
                out.append(f'{where}: "{f.name}" must lie in [{low:g}, {high:g}], got {value}')
    per_article = headline_by_article(data)
    if per_article is not None and not _article_nll_ok(per_article):
        out.append(f'{where}: "by_article" of the headline perplexity must hold equally long lists article_ids, '
                   'nll_sum and tokens (finite numbers, positive token counts)')
    return out


def headline_by_article(data: dict) -> dict | None:
    """The per-article record of a metrics.json object's headline perplexity (``ppl``), or None when it has none
    (files written before evaluate recorded them): read without checking the rest of the file."""
    if not isinstance(data, dict):
        return None
    return _by_article(data.get("perplexity"), data.get("ppl_protocol"), data.get("ppl_actions"))


def _by_article(perplexity, protocol, actions) -> dict | None:
    r = perplexity
    for key in (protocol, actions):
        r = r.get(key) if isinstance(r, dict) else None
    return r.get("by_article") if isinstance(r, dict) else None


def _article_nll_ok(a) -> bool:
    keys = ("article_ids", "nll_sum", "tokens")
    if not isinstance(a, dict) or not all(isinstance(a.get(k), list) for k in keys):
        return False
    n = len(a["article_ids"])
    return (n > 0 and all(len(a[k]) == n for k in keys) and all(is_number(x) for x in a["nll_sum"])
            and all(isinstance(t, int) and t > 0 for t in a["tokens"]))
