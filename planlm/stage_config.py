"""One field list per stage: the stage function's signature.

A stage function (planlm/stages/, planlm/studies/) is its command: jsonargparse reads its typed signature, and the
docstring's ``Args:`` are its ``--help`` (litgpt's style). Its config dataclass, what its manifest records and what
decides whether an existing artifact is reused all derive from that signature here; no stage lists its fields again::

    @writes_artifact()
    def finetune(prepared: Path = ..., out: Path = ..., ..., force: bool = False) -> Path:
        cfg = FinetuneConfig.from_call(locals())  # the arguments, as the config's typed fields
        ...

    FinetuneConfig = config_of(finetune, exclude=("out", "resume", "force"))

``cfg.fingerprint()`` is every field of the config, but those the stage's :class:`Fingerprint` declares otherwise,
so a field added to a stage's signature counts by default: an artifact built without it is not silently reused.
:func:`planlm.artifacts.config_fingerprint` hashes a config by this view, so a manifest that records the whole config
(``write_manifest(dir, stage, cfg)``) and the reuse check (``up_to_date(out, stage, cfg, force)``) agree.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

from planlm.artifacts import to_jsonable

Condition = Callable[[Any], bool]  # the config -> whether a field counts

_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, PurePath)


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """How a stage's config enters its reuse fingerprint: every field as it is, but the ones named here."""

    ignore: tuple[str, ...] = ()
    """Fields that never change the artifact (devices, progress bars) or that an input's id stands for. A dotted
    name (``"windows.num_workers"``) is a field of a field's dataclass, left out of that field's value."""
    null_unless: Mapping[str, Condition] = dataclasses.field(default_factory=dict)
    """field -> condition: recorded as null while the condition is false (the settings of an option that is off)."""
    absent_unless: Mapping[str, Condition] = dataclasses.field(default_factory=dict)
    """field -> condition: left out while the condition is false, so that the configs of artifacts built before the
    field existed keep their fingerprint (and are still reused). A dotted name (``"split.train"``) is a field of a
    field's dataclass, left out of that field's value."""
    record: Mapping[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)
    """field -> the value recorded for it, from the config (e.g. an input artifact as its path and id)."""
    extra: Callable[[Any], dict] | None = None
    """Entries computed from the config and its inputs (input ids, a preset's shape), after the fields."""

    def names(self) -> set[str]:
        """The stage parameters named (a dotted name names its first part)."""
        return {name.split(".")[0] for name in (*self.ignore, *self.null_unless, *self.absent_unless, *self.record)}


def config_of(stage: Callable, *, exclude: tuple[str, ...] = (), fingerprint: Fingerprint = Fingerprint(),
              name: str | None = None) -> type:
    """The config dataclass of ``stage``: one field per parameter of its signature but ``exclude`` (where to write
    and whether to rebuild), with the parameter's type and default (mutable defaults deep-copied per instance).

    The class gets ``from_call(arguments)`` (the config of one call: pass ``locals()`` of the stage) and
    ``fingerprint()`` (the JSON view that decides reuse, after ``fingerprint``'s declarations).
    """
    params = inspect.signature(stage).parameters  # follows functools.wraps (planlm.artifacts.writes_artifact)
    hints = typing.get_type_hints(stage)
    unknown = (set(exclude) | fingerprint.names()) - set(params)
    if unknown:
        raise TypeError(f"{stage.__qualname__} has no parameter {', '.join(sorted(unknown))}")
    fields = []
    for p in params.values():
        if p.name in exclude:
            continue
        if p.default is inspect.Parameter.empty:
            spec = dataclasses.field()
        elif isinstance(p.default, _IMMUTABLE) or (isinstance(p.default, tuple) and _hashable(p.default)):
            spec = dataclasses.field(default=p.default)
        else:  # one copy per config: a default instance is never shared (nor changed) by two configs
            spec = dataclasses.field(default_factory=lambda d=p.default: copy.deepcopy(d))
        fields.append((p.name, hints.get(p.name, Any), spec))
    name = name or "".join(w.capitalize() for w in stage.__name__.split("_")) + "Config"
    cls = dataclasses.make_dataclass(name, fields, namespace={
        "__doc__": f"Everything {stage.__name__}() reads: the parameters of :func:`{stage.__module__}."
                   f"{stage.__qualname__}` (documented there)" + (f" but {', '.join(exclude)}." if exclude else "."),
        "from_call": classmethod(_from_call),
        "fingerprint": _fingerprint,
        "__stage__": stage,
        "__fingerprint__": fingerprint,
    })
    cls.__module__ = stage.__module__  # pickle and repr find it where the stage defines it
    return cls


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _from_call(cls, arguments: Mapping[str, Any]):
    """The config of one call of the stage: ``arguments`` (the stage's ``locals()``, read for the config's fields
    only) with path-typed fields converted as their types say: ``Path`` -> ``Path(v)``; ``Path | None`` -> None
    when unset or empty; ``str`` (or ``str | None``) -> ``str(v)`` for a path."""
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in arguments]
    if missing:
        raise TypeError(f"{cls.__name__}.from_call: no value for {', '.join(missing)} (pass the stage's locals())")
    return cls(**{f.name: _converted(f.type, arguments[f.name]) for f in dataclasses.fields(cls)})


def _converted(hint: Any, value: Any) -> Any:
    optional = _optional_of(hint)
    if hint is Path:
        return value if value is None else Path(value)
    if optional is Path:
        return Path(value) if value else None
    if str in (hint, optional) and isinstance(value, os.PathLike):
        return str(value)
    return value


def _optional_of(hint: Any) -> Any:
    """``X`` of ``X | None`` (or ``Optional[X]``), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def _fingerprint(self) -> dict:
    """What decides whether an existing artifact of this config is reusable, as JSON values: every field, but those
    the stage's :class:`Fingerprint` ignores, nulls or leaves out, then its extra entries."""
    decl: Fingerprint = type(self).__fingerprint__
    out = {}
    for f in dataclasses.fields(self):
        if f.name in decl.ignore:
            continue
        if f.name in decl.absent_unless and not decl.absent_unless[f.name](self):
            continue
        if f.name in decl.null_unless and not decl.null_unless[f.name](self):
            out[f.name] = None
        elif f.name in decl.record:
            out[f.name] = decl.record[f.name](self)
        else:
            out[f.name] = getattr(self, f.name)
    if decl.extra is not None:
        out |= decl.extra(self)
    out = to_jsonable(out)
    left_out = [n for n in decl.ignore if "." in n] + [n for n, counts in decl.absent_unless.items() if not counts(self)]
    for name in left_out:
        *path, leaf = name.split(".")
        node = out
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if path and isinstance(node, dict):
            node.pop(leaf, None)
    return out

