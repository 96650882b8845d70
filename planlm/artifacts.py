"""Artifact directories: atomic writes, manifests, content hashes, compatibility checks (DESIGN.md section 2).

Every stage writes one directory. It is built in a temporary sibling and renamed into place only when complete, so
a crash or a kill never leaves a half-written artifact under the final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import inspect
import json
import os
import re
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from planlm.errors import PlanlmError

MANIFEST = "manifest.json"
UNHASHED = ("logs", "checkpoints")  # training logs and Lightning checkpoints inside an artifact: not its content
CONTENT_HASHED_INPUTS = ("lm",)  # inputs recorded with their folder's content hash: later stages load a base LM from
# where it is (planlm.persist.load_planned_lm), so a changed, rebuilt or copied one is told apart by content
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
    """A stable hash of a config, used to decide whether an existing artifact can be reused. A stage's config
    dataclass (:func:`planlm.stage_config.config_of`) is hashed by its ``fingerprint()``: the fields that decide
    reuse, so that a manifest recording the whole config and the reuse check agree."""
    if hasattr(type(config), "__fingerprint__"):
        config = config.fingerprint()
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

    An existing ``final`` is replaced only when ``force`` is set (the caller decides about reuse before this), and
    never when it holds files planlm did not write. A full disk or a read-only filesystem while writing ends in one
    line, the temporary folder removed.
    """
    final = Path(final)
    if final.exists() and not force and not _empty_dir(final):
        raise PlanlmError(f"{final} already exists; pass --force to rebuild it or choose another --out")
    refuse_foreign_out(final)
    refuse_unlisted_files(final)
    check_writable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{int(time.time())}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        why = _write_failure(e, tmp)
        if why is None:
            raise
        raise PlanlmError(f"could not write {final} ({why}); the partial output was removed and nothing was "
                          "written: free disk space or choose --out on a writable disk") from None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_DISK_MESSAGES = ("No space left on device", "Read-only file system", "Disk quota exceeded")


def _write_failure(e: BaseException, tmp: Path) -> str | None:
    """Why writing into ``tmp`` failed, when ``e`` is the disk's fault (full, read-only, no permission there);
    None for any other error (a bug or bad input, which keeps its own message)."""
    if isinstance(e, OSError) and e.errno is not None:
        inside = e.filename is not None and str(Path(e.filename).absolute()).startswith(str(tmp.absolute()))
        if e.errno in _DISK_ERRNOS or (inside and e.errno in (errno.EACCES, errno.EPERM)):
            return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    if isinstance(e, Exception):  # libraries that wrap the OS error (torch.save, safetensors, pyarrow)
        return next((m for m in _DISK_MESSAGES if m in str(e)), None)
    return None


def check_writable(out: str | Path) -> None:
    """Refuse an --out that cannot be written (a read-only filesystem, a full disk, no permission) before any work:
    a small probe file is created and removed in the nearest existing folder above ``out`` (where the artifact's
    temporary sibling goes). The probe is named like a temporary sibling, so a killed run's is cleaned up too."""
    out = Path(out).absolute()
    where = next((p for p in out.parents if p.exists()), None)
    if where is None:
        return
    if not where.is_dir():
        raise PlanlmError(f"--out {out} is inside {where}, which is a file; choose another --out")
    try:
        _probe_write(where, f".{out.name}.tmp-{os.getpid()}-probe-")
    except OSError as e:
        reason = {errno.EROFS: "on a read-only file system", errno.ENOSPC: "on a full disk (no space left)",
                  errno.EDQUOT: "over its disk quota", errno.EACCES: "not writable (permission denied)",
                  errno.EPERM: "not writable (operation not permitted)"}.get(e.errno, f"not writable ({e.strerror})")
        raise PlanlmError(f"--out {out} cannot be written: {where} is {reason}; choose --out on a writable disk with "
                          "free space") from None


def _probe_write(folder: Path, prefix: str, size: int = 4096) -> None:
    import tempfile

    fd, name = tempfile.mkstemp(prefix=prefix, dir=folder)
    try:
        os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
        os.unlink(name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temps(final: Path) -> None:
    """Delete the temporary siblings (``.NAME.tmp-PID-...``) that killed processes left behind for ``final``."""
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        pid = tmp.name[len(f".{final.name}.tmp-"):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def refuse_foreign_out(out: str | Path, stage: str | None = None) -> None:
    """Refuse to replace ``out`` unless it is empty or a planlm artifact (of ``stage`` when given): --force never
    deletes a folder planlm did not write, nor another stage's artifact (a finetune --out pointing at its own
    --planner, say)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise PlanlmError(f"--out {out} is a file, not a folder; choose another --out")
    if not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        raise PlanlmError(f"--out {out} is a folder that planlm did not write (no {MANIFEST}); refusing to replace it, "
                          "even with --force: choose another --out")
    if stage is not None:
        got = read_manifest(out).get("stage")
        if got != stage:
            raise PlanlmError(f"--out {out} holds a `{got}` artifact; refusing to replace it with a `{stage}` artifact, "
                              "even with --force: choose another --out")


_TEMP_NAME = re.compile(r"^\..+\.(tmp|old)-\d+")  # planlm's temporary siblings and files (write_json_atomic)
# planlm.data.alignment.TokenCache: a prepared corpus's tokens per tokenizer, raw .bin arrays written beside it later
_TOKEN_CACHE = re.compile(r"^tokens-[0-9a-f]{16}(\.tmp-\d+)?$")


def unlisted_files(directory: str | Path, manifest: dict) -> list[str]:
    """Files inside an artifact that its manifest does not list: put there by someone else, so never deleted by a
    rebuild. A planlm artifact nested in it (``RUN/evaluate``) is checked against its own manifest; logs,
    checkpoints and planlm's temporary files are planlm's. An artifact of an older planlm (no hashes recorded)
    lists nothing to check: empty."""
    directory = Path(directory)
    files = manifest.get("files")
    if not isinstance(files, dict):
        return []
    out = []

    def walk(folder: Path, prefix: str, listed: dict) -> None:
        for p in sorted(folder.iterdir()):
            rel = prefix + p.name
            if p.name == MANIFEST and not prefix or _TEMP_NAME.match(p.name) or (not prefix and p.name in UNHASHED):
                continue
            if not prefix and _TOKEN_CACHE.match(p.name) and p.is_dir():
                out.extend(f"{rel}/{f.relative_to(p)}" for f in sorted(p.rglob("*"))
                           if not f.is_dir() and not (f.parent == p and f.suffix == ".bin"))
                continue
            if p.is_dir() and not p.is_symlink():
                nested = _nested_manifest(p)
                if nested is not None:
                    out.extend(f"{rel}/{x}" for x in unlisted_files(p, nested))
                else:
                    walk(p, rel + "/", listed)
            elif rel not in listed:
                out.append(rel)

    walk(directory, "", files)
    return out


def _nested_manifest(folder: Path) -> dict | None:
    if not (folder / MANIFEST).is_file():
        return None
    try:
        return read_manifest(folder)
    except PlanlmError:
        return None


def refuse_unlisted_files(out: str | Path) -> None:
    """Refuse to replace the artifact ``out`` while it holds files its manifest does not list (naming them)."""
    out = Path(out)
    if not (out / MANIFEST).is_file():
        return
    extra = unlisted_files(out, read_manifest(out))
    if extra:
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise PlanlmError(f"--out {out} holds files that its {MANIFEST} does not list ({', '.join(extra[:5])}{more}); "
                          "planlm did not write them and will not delete them: move them out of it, or choose "
                          "another --out")


def content_hashes(directory: str | Path) -> dict[str, str]:
    """Content hash of every file of an artifact (relative path -> sha256 prefix), except its manifest, logs and
    training checkpoints: recorded in the manifest and checked on load, so an edited, truncated or swapped file is
    refused instead of used."""
    directory = Path(directory)
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory)
        if p.is_file() and rel.as_posix() != MANIFEST and rel.parts[0] not in UNHASHED:
            out[rel.as_posix()] = file_hash(p)
    return out


_VERIFIED: dict[tuple, bool] = {}


def verify_artifact(directory: str | Path, manifest: dict | None = None) -> dict:
    """Check every file recorded in the manifest: present and with the recorded content hash (once per process
    and file state). Returns the manifest. Artifacts written before hashes were recorded are only read."""
    directory = Path(directory)
    manifest = manifest if manifest is not None else read_manifest(directory)
    files = manifest.get("files") or {}
    for rel, expected in files.items():
        p = directory / rel
        if not p.is_file():
            raise PlanlmError(f"{directory} is missing {rel} (recorded in its {MANIFEST}); rebuild it with "
                              f"`planlm {manifest.get('stage')} --force true`")
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns, expected)
        if key not in _VERIFIED:
            if file_hash(p) != expected:
                raise PlanlmError(f"{p} was changed after {directory} was written (its content hash differs from the "
                                  f"one in {MANIFEST}: edited, truncated or swapped); rebuild it with "
                                  f"`planlm {manifest.get('stage')} --force true`")
            _VERIFIED[key] = True
    return manifest


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
        recorded[role] = describe_input(ref, directory, content=role in CONTENT_HASHED_INPUTS)
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
        "files": content_hashes(directory),
    }
    manifest["id"] = hashlib.sha256(
        json.dumps({k: v for k, v in manifest.items() if k != "created"}, sort_keys=True).encode()
    ).hexdigest()[:16]
    write_json_atomic(Path(directory) / MANIFEST, manifest)
    return manifest


def describe_input(ref: str | Path, directory: str | Path | None = None, content: bool = False) -> dict:
    """How a manifest records an input: its path as given, absolute, and relative to the artifact being written
    (``directory``, a sibling of the final folder), so that a folder of runs moved elsewhere still resolves.

    With ``content``, a folder also gets its :func:`folder_content_hash` and a Hub name the revision (commit) the
    local Hugging Face cache resolves it to, when it is cached.
    """
    from planlm.gguf import describe_lm, is_gguf

    if is_gguf(ref):  # an embedded LM or a .gguf file: also its sha256 and the cached folder it resolved to
        return describe_lm(str(ref), directory)
    p = Path(ref)
    where = {"path": str(p), "abspath": str(p.resolve())}
    if directory is not None:
        where["relpath"] = os.path.relpath(p.resolve(), Path(directory).resolve().parent / "_")
    if p.is_dir():
        if content:
            where["content_hash"] = folder_content_hash(p)
        if (p / MANIFEST).exists():  # a planlm artifact: its id too
            m = read_manifest(p)
            return {**where, "stage": m.get("stage"), "id": m.get("id")}
        return where  # a folder planlm did not write (e.g. a model saved by transformers): where it is
    if p.is_file():
        return {**where, "sha256": file_hash(p)}
    revision = hub_revision(str(ref)) if content else None
    return {"name": str(ref), **({"revision": revision} if revision else {})}


def hub_revision(name: str) -> str | None:
    """The commit the local Hugging Face cache resolves the Hub model ``name`` to (None when not cached)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid repo id, no huggingface_hub: nothing known
        return None
    if not isinstance(hit, str) or "snapshots" not in Path(hit).parts:
        return None
    return Path(hit).parent.name


# Files that make a model what it is (weights, configs, tokenizer files); the rest of a folder (READMEs, logs) is not.
_MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".txt", ".tiktoken", ".py")
_FILE_HASHES: dict[tuple, str] = {}


def folder_content_hash(directory: str | Path) -> str:
    """One hash of a model folder's weight, config and tokenizer files (names and contents; manifest, logs,
    checkpoints and hidden files aside), so that a byte-identical copy elsewhere has the same hash and a changed or
    rebuilt model another. Files are hashed once per process and file state."""
    directory = Path(directory)
    items = []
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory)
        if (not p.is_file() or rel.as_posix() == MANIFEST or rel.parts[0] in UNHASHED
                or any(part.startswith(".") for part in rel.parts) or not p.name.endswith(_MODEL_SUFFIXES)):
            continue
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _FILE_HASHES:
            _FILE_HASHES[key] = file_hash(p)
        items.append(f"{rel.as_posix()}={_FILE_HASHES[key]}")
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def input_candidates(directory: str | Path, rec: dict) -> list[Path]:
    """Where a recorded input may be now, in the order tried: relative to the artifact (a moved folder of runs),
    then absolute, then as given."""
    directory = Path(directory)
    tried = []
    if "relpath" in rec:  # relative to the artifact's own folder (recorded from a sibling of it, hence "_")
        tried.append(Path(os.path.normpath(directory.resolve().parent / "_" / rec["relpath"])))
    tried += [Path(rec[k]) for k in ("abspath", "path") if k in rec]
    return list(dict.fromkeys(tried))


def resolve_input(directory: str | Path, manifest: dict, role: str, option: str) -> Path:
    """The folder recorded as input ``role`` of an artifact: relative to the artifact (a moved folder of runs),
    then absolute, then as given; one line naming ``option`` when none exists any more."""
    directory = Path(directory)
    rec = (manifest.get("inputs") or {}).get(role) or {}
    if "path" not in rec:
        raise PlanlmError(f"{directory}/{MANIFEST} records no {role} input; pass {option} DIR")
    tried = input_candidates(directory, rec)
    for cand in tried:
        if (cand / MANIFEST).exists():
            return cand
    raise PlanlmError(f"{directory} was built from the {role} {rec['path']} (id {rec.get('id')}), which is no longer "
                      f"there (tried {', '.join(map(str, tried))}); pass {option} DIR")


def check_input_id(artifact: str | Path, manifest: dict, role: str, given: str | Path, given_id: str, fix: str) -> None:
    """Refuse ``given`` (used as input ``role`` together with ``artifact``) when ``artifact`` recorded another one."""
    rec = (manifest.get("inputs") or {}).get(role) or {}
    if rec.get("id") and given_id and rec["id"] != given_id:
        raise PlanlmError(f"{artifact} was built from the {role} {rec.get('path')} (id {rec['id']}), not from {given} "
                          f"(id {given_id}); {fix}")


def read_manifest(directory: str | Path, stage: str | None = None) -> dict:
    """Read an artifact's manifest, with a one-line error when it is missing or of another stage."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.exists():
        raise PlanlmError(f"{directory} does not exist; build it first" + (f" with `planlm {stage}`" if stage else ""))
    if not path.exists():
        raise PlanlmError(f"{directory} is not a planlm artifact (no {MANIFEST}); point to a directory a planlm stage wrote")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise PlanlmError(f"{path} is damaged ({type(e).__name__}: {str(e)[:80]}); rebuild the artifact"
                          + (f" with `planlm {stage} --force true`" if stage else "")) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stage"), str):
        raise PlanlmError(f"{path} is not a planlm manifest (no stage); rebuild the artifact"
                          + (f" with `planlm {stage} --force true`" if stage else ""))
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
    config: the stage returns it unchanged. Refuses an ``out`` that holds anything else unless ``force``, and even
    with ``force`` a folder that planlm did not write or another stage's artifact. Returns False when the stage must
    build.
    """
    out = Path(out)
    refuse_foreign_out(out, stage)
    if reusable(out, stage, config, force):
        print(f"planlm {stage}: {out} is up to date (same config and inputs); --force true rebuilds it")
        return True
    if out.exists() and not force and not _empty_dir(out):  # an empty folder holds nothing to lose
        raise PlanlmError(f"{out} already exists and holds something else; pass --force true to replace it or "
                          "choose another --out")
    refuse_unlisted_files(out)
    check_writable(out)
    return False


def check_same(what: str, expected: Any, got: Any, artifact: str | Path, fix: str) -> None:
    """Refuse an input artifact that does not fit (other K, tokenizer, encoder) with a one-line error."""
    if expected != got:
        raise PlanlmError(f"{artifact} was built with {what}={got!r}, but {what}={expected!r} is needed; {fix}")


# ---- one writer per --out --------------------------------------------------------------------------------------------
_HELD: dict[str, int] = {}  # lock path -> depth, locks this process holds (a stage called from `planlm run`)


def lock_path(out: str | Path) -> Path:
    """The lock file of an --out. It lives in the temp folder (named by the absolute --out), so that locking writes
    nothing beside --out, not even its parent folder, before the stage has checked its arguments."""
    import tempfile

    locks = Path(tempfile.gettempdir()) / "planlm-locks"
    locks.mkdir(exist_ok=True)
    return locks / (hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:24] + ".lock")


@contextlib.contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` (a lock file named by its absolute path) while a stage writes it, so a
    second process on the same --out stops at once with one line instead of both writing. The OS drops the lock when the
    holder dies, so a killed run never blocks the next."""
    import fcntl


    out = Path(out)
    for parent in out.absolute().parents:  # the first existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise PlanlmError(f"--out {out} is inside {parent}, which is a file; choose another --out")
            break
    path = str(lock_path(out))
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PlanlmError(f"another planlm process (pid {holder}) is writing {out}; wait for it to finish or "
                              "choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed that lock file as we opened it: take the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[path] = 1
        try:
            yield
        finally:
            del _HELD[path]
            os.unlink(path)  # while still holding it; a waiter that opened it meanwhile sees the inode change
    finally:
        os.close(fd)  # closing releases the lock


def secondary_rank() -> bool:
    """True in a distributed worker other than the global rank 0 (Lightning's launcher, torchrun, SLURM)."""
    return any(int(os.environ.get(k, "0") or 0) > 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def writes_artifact(out: Callable[[dict], Any] = lambda args: args["out"]) -> Callable:
    """Decorate a stage function: while it runs, it holds :func:`output_lock` on its --out. ``out`` picks the output
    folder from the call's bound arguments (defaults applied)."""

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def stage_fn(*args, **kwargs):
            if secondary_rank():  # a DDP worker re-running the command: rank 0 holds the lock and writes --out
                return fn(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            with output_lock(Path(out(bound.arguments))):
                return fn(*args, **kwargs)

        return stage_fn

    return wrap
