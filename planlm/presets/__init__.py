"""Named presets, one mechanism for every stage: ``planlm/presets/<stage>/<name>.yaml`` files, each holding the
fields of the preset dataclass of its stage (``prepare``: :class:`planlm.prepare.ActionsPreset`, ``pretrain-lm``:
:class:`planlm.train.pretrain_lm.LMPreset`, ``run``: :class:`planlm.run.RunPreset`), nested sections as nested
mappings. ``--preset NAME`` picks one; tests/test_presets.py checks every file against its dataclass and its stage's
``--preset`` choices (a Literal of the file names).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from planlm.errors import PlanlmError

PRESETS_DIR = Path(__file__).resolve().parent
T = TypeVar("T")


def preset_names(stage: str) -> list[str]:
    """The preset names of a stage (the YAML files in ``planlm/presets/<stage>/``), sorted."""
    return sorted(p.stem for p in (PRESETS_DIR / stage).glob("*.yaml"))


def build(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """A dataclass ``cls`` from a mapping; a field whose type is a dataclass takes a nested mapping. Unknown keys
    are refused, so that a preset cannot silently set nothing."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise PlanlmError(f"{where or cls.__name__}: unknown fields {unknown}; {cls.__name__} has {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = build(hint, value, f"{where}.{key}" if where else key)
        kwargs[key] = value
    return cls(**kwargs)


def load_preset(stage: str, name: str, cls: type[T]) -> T:
    """The preset ``name`` of ``stage`` as a ``cls`` instance."""
    path = PRESETS_DIR / stage / f"{name}.yaml"
    if not path.exists():
        raise PlanlmError(f"unknown {stage} preset {name!r}; use one of {', '.join(preset_names(stage))}")
    return build(cls, yaml.safe_load(path.read_text()) or {}, str(path.relative_to(PRESETS_DIR.parent.parent)))


def load_presets(stage: str, cls: type[T]) -> dict[str, T]:
    """Every preset of ``stage``, by name."""
    return {name: load_preset(stage, name, cls) for name in preset_names(stage)}
