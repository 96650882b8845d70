"""Artifact directories: atomic writes, manifests, content hashes, compatibility checks (DESIGN.md section 2).

Every stage writes one directory. It is built in a temporary sibling and renamed into place only when complete, so
a crash or a kill never leaves a half-written artifact under the final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from planlm.errors import PlanlmError

MANIFEST = "manifest.json"
_VERSIONED = ("planlm", "torch", "transformers", "sentence-transformers", "lightning", "faiss-cpu", "numpy", "spacy")


def library_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and numpy scalars into plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def config_fingerprint(config: Any) -> str:
    """A stable hash of a config, used to decide whether an existing artifact can be reused."""
    blob = json.dumps(to_jsonable(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(final: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``final`` only if the block finishes without error.

    An existing ``final`` is replaced only when ``force`` is set (the caller decides about reuse before this).
    """
    final = Path(final)
    if final.exists() and not force:
        raise PlanlmError(f"{final} already exists; pass --force to rebuild it or choose another --out")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{int(time.time())}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_manifest(
    directory: str | Path,
    stage: str,
    config: Any,
    inputs: dict[str, str | Path] | None = None,
    counts: dict[str, Any] | None = None,
    **extra: Any,
) -> dict:
    """Write ``manifest.json``: stage, resolved config and its fingerprint, library versions, inputs, counts.

    ``inputs`` maps a role ("prepared", "lm", "planner") to an artifact directory or a file; an artifact is recorded
    by its manifest's id, a file by its content hash, anything else (a Hub name) as given.
    """
    recorded = {}
    for role, ref in (inputs or {}).items():
        recorded[role] = describe_input(ref)
    manifest = {
        "stage": stage,
        "id": None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": to_jsonable(config),
        "config_fingerprint": config_fingerprint(config),
        "inputs": recorded,
        "counts": to_jsonable(counts or {}),
        "versions": library_versions(),
        **to_jsonable(extra),
    }
    manifest["id"] = hashlib.sha256(
        json.dumps({k: v for k, v in manifest.items() if k != "created"}, sort_keys=True).encode()
    ).hexdigest()[:16]
    write_json_atomic(Path(directory) / MANIFEST, manifest)
    return manifest


def describe_input(ref: str | Path) -> dict:
    p = Path(ref)
    if p.is_dir() and (p / MANIFEST).exists():
        m = json.loads((p / MANIFEST).read_text())
        return {"path": str(p), "stage": m.get("stage"), "id": m.get("id")}
    if p.is_file():
        return {"path": str(p), "sha256": file_hash(p)}
    return {"name": str(ref)}


def read_manifest(directory: str | Path, stage: str | None = None) -> dict:
    """Read an artifact's manifest, with a one-line error when it is missing or of another stage."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.exists():
        raise PlanlmError(f"{directory} does not exist; build it first" + (f" with `planlm {stage}`" if stage else ""))
    if not path.exists():
        raise PlanlmError(f"{directory} is not a planlm artifact (no {MANIFEST}); point to a directory a planlm stage wrote")
    manifest = json.loads(path.read_text())
    if stage is not None and manifest.get("stage") != stage:
        raise PlanlmError(
            f"{directory} is a `{manifest.get('stage')}` artifact, but a `{stage}` artifact is needed here"
        )
    return manifest


def reusable(directory: str | Path, stage: str, config: Any, force: bool) -> bool:
    """True when ``directory`` already holds this stage's artifact built with the same config (and not --force)."""
    directory = Path(directory)
    if force or not (directory / MANIFEST).exists():
        return False
    try:
        m = read_manifest(directory, stage)
    except PlanlmError:
        return False
    return m.get("config_fingerprint") == config_fingerprint(config)


def up_to_date(out: str | Path, stage: str, config: Any, force: bool) -> bool:
    """The reuse step of every stage's frame (validate_<stage> -> this -> ``atomic_dir(out, force=True)`` ->
    ``write_manifest``), with one wording for all stages.

    Returns True (and says so in one line) when ``out`` already holds this stage's artifact built with the same
    config: the stage returns it unchanged. Refuses an ``out`` that holds anything else unless ``force``. Returns
    False when the stage must build.
    """
    out = Path(out)
    if reusable(out, stage, config, force):
        print(f"planlm {stage}: {out} is up to date (same config and inputs); --force true rebuilds it")
        return True
    if out.exists() and not force:
        raise PlanlmError(f"{out} already exists and holds something else; pass --force true to replace it or "
                          "choose another --out")
    return False


def check_same(what: str, expected: Any, got: Any, artifact: str | Path, fix: str) -> None:
    """Refuse an input artifact that does not fit (other K, tokenizer, encoder) with a one-line error."""
    if expected != got:
        raise PlanlmError(f"{artifact} was built with {what}={got!r}, but {what}={expected!r} is needed; {fix}")
