"""Saving and loading of everything planlm trains: planners, planned LMs, base LMs and tokenizers, finetune runs.

The ONE home of persistence (safetensors + JSON config): ``models/`` does no I/O, and stages call these functions.

Planner artifact (`planlm train-planner`): ``planner.safetensors`` + ``planner_config.json`` (the fields of
:class:`planlm.models.planner.PlannerConfig`) + ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

PLANNER_WEIGHTS = "planner.safetensors"
PLANNER_CONFIG = "planner_config.json"


def verify_folder(directory: Path) -> None:
    """Check the content hashes recorded in ``directory``'s manifest, when it has one (a folder written by planlm)."""
    from planlm.artifacts import MANIFEST, verify_artifact

    if (directory / MANIFEST).exists():
        verify_artifact(directory)


def read_config(path: Path, cls):
    """A dataclass from a JSON file, with one line for a damaged or edited file."""
    from planlm.errors import PlanlmError

    try:
        return cls(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise PlanlmError(f"{path} is damaged or was edited ({str(e).splitlines()[0][:100]}); rebuild the artifact") from None


def load_weights(path: Path) -> dict:
    """A safetensors file, with one line for a truncated or damaged one (safetensors never runs code)."""
    from safetensors.torch import load_file

    from planlm.errors import PlanlmError

    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, OSError: the library's error types vary by version
        raise PlanlmError(f"{path} is damaged ({str(e).splitlines()[0][:100]}); rebuild the artifact") from None


def save_planner(planner, directory: str | Path) -> None:
    """Write a planner's weights and config into ``directory`` (which the caller writes atomically)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in planner.state_dict().items()}
    save_file(state, str(directory / PLANNER_WEIGHTS))
    (directory / PLANNER_CONFIG).write_text(json.dumps(dataclasses.asdict(planner.config), indent=2) + "\n")


def load_planner(directory: str | Path):
    """Load a planner saved by :func:`save_planner` (a train-planner artifact or a planned-LM folder)."""
    from planlm.errors import PlanlmError
    from planlm.models.planner import Planner, PlannerConfig

    directory = Path(directory)
    if not (directory / PLANNER_WEIGHTS).exists() or not (directory / PLANNER_CONFIG).exists():
        raise PlanlmError(f"{directory} holds no planner ({PLANNER_WEIGHTS} + {PLANNER_CONFIG}); train one with `planlm train-planner`")
    verify_folder(directory)
    config = read_config(directory / PLANNER_CONFIG, PlannerConfig)
    try:
        problems = config.problems()
    except TypeError:  # a field of the wrong type ("n_heads": "four")
        problems = ["a field has the wrong type"]
    if problems:
        raise PlanlmError(f"{directory / PLANNER_CONFIG} was edited or is damaged: {'; '.join(problems)}")
    planner = Planner(config)
    try:
        planner.load_state_dict(load_weights(directory / PLANNER_WEIGHTS))
    except RuntimeError as e:  # shapes that do not fit the config
        raise PlanlmError(f"{directory / PLANNER_WEIGHTS} does not fit {PLANNER_CONFIG} "
                          f"({str(e).splitlines()[1].strip()[:100] if len(str(e).splitlines()) > 1 else e})") from None
    return planner


# ---- planned LMs (`planlm finetune`) ---------------------------------------------------------------------------------
# A planned-LM folder: ``planned_lm_config.json`` (PlannedLMConfig + how to rebuild the base LM) +
# ``adapters.safetensors`` + the planner files above when it has a planner + ``lm/`` (Hugging Face
# ``save_pretrained``) only when the LM's own weights were trained (or it has no name or path to be rebuilt from).
PLANNED_LM_CONFIG = "planned_lm_config.json"
ADAPTER_WEIGHTS = "adapters.safetensors"
LM_SUBDIR = "lm"
PLANNED_LM_FORMAT = 1


def save_planned_lm(model, directory: str | Path, save_lm: bool | None = None) -> None:
    """Write a :class:`planlm.models.planned_lm.PlannedLM` into ``directory`` (which the caller writes atomically).

    Args:
        model: the planned LM.
        directory: target folder, created if missing.
        save_lm: write the full LM weights; default: when the LM was trained or ``config.base_lm`` is empty.
    """
    from planlm.errors import PlanlmError

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    if save_lm is None:
        save_lm = cfg.train_lm or not cfg.base_lm
    planner = model.planner
    if planner is not None and not dataclasses.is_dataclass(getattr(planner, "config", None)):
        raise PlanlmError(
            f"cannot save planner {type(planner).__name__}: it has no dataclass `config`; "
            "use planlm.models.planner.Planner"
        )
    save_adapters(model.adapters, directory)
    if save_lm:
        model.lm.save_pretrained(str(directory / LM_SUBDIR))
    if planner is not None:
        save_planner(planner, directory)
    meta = {
        "format": PLANNED_LM_FORMAT,
        "planned_lm": dataclasses.asdict(cfg),
        "lm": {
            "source": LM_SUBDIR if save_lm else cfg.base_lm,
            "saved_in_folder": bool(save_lm),
            "model_type": model.lm.config.model_type,
        },
        "planner": planner is not None,
    }
    (directory / PLANNED_LM_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def save_adapters(adapters, directory: str | Path) -> None:
    """Write the action adapters' weights as ``adapters.safetensors`` into ``directory`` (a planned-LM folder, or the
    no-NAP planner stage's folder, whose adapters train with its planner)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in adapters.state_dict().items()}
    save_file(state, str(Path(directory) / ADAPTER_WEIGHTS))


def load_adapters(adapters, directory: str | Path) -> None:
    """Load ``directory``'s ``adapters.safetensors`` into ``adapters`` (an
    :class:`planlm.models.adapters.ActionAdapters`), refusing in one line weights of other layers or shapes."""
    from planlm.errors import PlanlmError

    path = Path(directory) / ADAPTER_WEIGHTS
    if not path.exists():
        raise PlanlmError(f"{directory} holds no adapters ({ADAPTER_WEIGHTS})")
    state = load_weights(path)
    mine = adapters.state_dict()
    missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    wrong = sorted(k for k in set(mine) & set(state) if tuple(mine[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise PlanlmError(f"{path} does not fit these adapters (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                          f"other shapes {wrong[:3]}): use the --lm and --adapters.* they were trained with")
    adapters.load_state_dict(state)


def load_planned_lm(directory: str | Path, lm=None, config_changes: dict | None = None, **lm_kwargs):
    """Load a planned LM saved by :func:`save_planned_lm`.

    Args:
        directory: the planned-LM folder.
        lm: an already-loaded base LM to use instead of the recorded one.
        config_changes: ``PlannedLMConfig`` fields to build the model with instead of the recorded ones (another
            selection of the same adapters, e.g. ``{"selection": "soft"}``).
        **lm_kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (``torch_dtype``, ``device_map`` ...).
    """
    from planlm.errors import PlanlmError
    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig

    directory = Path(directory)
    if not (directory / PLANNED_LM_CONFIG).exists() or not (directory / ADAPTER_WEIGHTS).exists():
        raise PlanlmError(
            f"{directory} holds no planned LM ({PLANNED_LM_CONFIG} + {ADAPTER_WEIGHTS}); "
            "build one with `planlm finetune`"
        )
    verify_folder(directory)
    try:
        meta = json.loads((directory / PLANNED_LM_CONFIG).read_text())
    except ValueError as e:
        raise PlanlmError(f"{directory / PLANNED_LM_CONFIG} is damaged ({e}); rebuild it with `planlm finetune`") from None
    if not isinstance(meta, dict) or meta.get("format") != PLANNED_LM_FORMAT:
        raise PlanlmError(
            f"{directory} has planned-LM format {meta.get('format') if isinstance(meta, dict) else None}, "
            f"this planlm reads {PLANNED_LM_FORMAT}"
        )
    try:
        config = PlannedLMConfig(**{**meta["planned_lm"], **(config_changes or {})})
    except (KeyError, TypeError, ValueError) as e:
        raise PlanlmError(f"{directory / PLANNED_LM_CONFIG} was edited or is damaged ({e}); rebuild it") from None
    if lm is None:
        from transformers import AutoModelForCausalLM

        from planlm.gguf import resolve_lm

        revision = None
        if meta["lm"]["saved_in_folder"]:
            source = directory / LM_SUBDIR
        else:
            source, revision = resolve_base_lm(directory, meta["lm"]["source"])
            source = resolve_lm(source)  # a GGUF checkpoint: its dequantized folder
        if revision:  # the Hub snapshot the run was trained on, not whatever the name points to today
            lm_kwargs = {"revision": revision, **lm_kwargs}
        try:
            lm = AutoModelForCausalLM.from_pretrained(str(source), **{"dtype": lm_dtype(), **lm_kwargs})
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PlanlmError(
                f"cannot load the base LM {str(source)!r} of {directory} ({first}); pass lm=..."
            ) from None
    if lm.config.model_type != meta["lm"]["model_type"]:
        raise PlanlmError(
            f"{directory} was trained on a {meta['lm']['model_type']!r} LM, the given LM is {lm.config.model_type!r}"
        )
    planner = load_planner(directory) if meta.get("planner") else None
    model = PlannedLM(lm, config, planner=planner)
    state = load_weights(directory / ADAPTER_WEIGHTS)
    missing, unexpected = model.adapters.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PlanlmError(
            f"{directory}/{ADAPTER_WEIGHTS} does not fit the adapters (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    return model.eval()  # like Hugging Face's from_pretrained; call .train() to fine-tune further


def resolve_base_lm(directory: Path, source: str) -> tuple[str, str | None]:
    """``(where, Hub revision or None)`` of the base LM a planned LM in ``directory`` was trained on, which its
    folder does not hold (a frozen LM): found like a run's prepared corpus (relative to the run, then as recorded)
    and checked against the content hash its manifest recorded, so a byte-identical copy next to a moved run is
    used and a changed or rebuilt LM is refused in one line. ``source`` (the recorded path or name) is used as it is
    for a folder without a manifest and for runs written before the LM's hash was recorded."""
    from planlm.artifacts import (
        MANIFEST,
        folder_content_hash,
        input_candidates,
        read_manifest,
    )
    from planlm.errors import PlanlmError

    if not (directory / MANIFEST).exists():
        return source, None
    rec = (read_manifest(directory).get("inputs") or {}).get("lm") or {}
    if rec.get("sha256") and "resolved" in rec:  # a GGUF checkpoint: the file must be the one trained on
        from planlm.gguf import file_sha256, gguf_file

        given = rec.get("name") or rec["path"]
        now = file_sha256(gguf_file(given))
        if now != rec["sha256"]:
            raise PlanlmError(f"{directory}'s base LM {given} changed since training (sha256 {now[:16]}, recorded "
                              f"{rec['sha256'][:16]}): restore that file, or fine-tune again with --force true")
        return given, None
    if "name" in rec:  # a Hub name: the snapshot the run was trained on, when it was known
        return rec["name"], rec.get("revision")
    if "content_hash" not in rec:
        return source, None
    candidates = [c for c in input_candidates(directory, rec) if c.is_dir()]
    for cand in candidates:
        if folder_content_hash(cand) == rec["content_hash"]:
            return str(cand), None
    if not candidates:
        raise PlanlmError(f"{directory}'s base LM {rec['path']} is no longer there (tried "
                          f"{', '.join(map(str, input_candidates(directory, rec)))}); put it back, or copy it next to "
                          f"the run (as {rec.get('relpath', rec['path'])} from the run's folder)")
    cand = candidates[0]
    ids = ""
    if rec.get("id") and (cand / MANIFEST).exists():
        now = read_manifest(cand).get("id")
        ids = f"; id {now}, trained on id {rec['id']}" if now != rec["id"] else ""
    raise PlanlmError(f"{directory}'s base LM {cand} changed since training (content hash {folder_content_hash(cand)}, "
                      f"recorded {rec['content_hash']}{ids}): it is not the LM the run was trained on; restore that LM "
                      f"(or put a copy of it next to the run), or fine-tune again with `planlm finetune --lm {cand} "
                      "--force true`")


# ---- base LMs and tokenizers (Hub name or local folder) ----------------------------------------------------------------
def check_local(lm: str, what: str) -> None:
    """A name that is a path (it has a separator or starts with a dot) must be an existing folder: otherwise the
    Hub loader would answer with a misleading repo-id message. A planlm folder is checked against its manifest."""
    from planlm.errors import PlanlmError

    p = Path(lm)
    if p.is_dir():
        verify_folder(p)
    elif "/" in lm and (lm.startswith((".", "/", "~")) or p.parent.exists()) or lm.startswith("."):
        raise PlanlmError(f"the {what} folder {lm} does not exist; pass an existing folder or a Hub name")


def load_tokenizer(lm: str):
    """The LM's tokenizer, from a Hub name (``gpt2``), a local folder (e.g. a `planlm pretrain-lm` output) or a GGUF
    checkpoint (``FILE.gguf``, ``OWNER/REPO/FILE.gguf``, ``smollm2-135m``: see planlm/gguf.py)."""
    from transformers import AutoTokenizer

    from planlm.errors import PlanlmError
    from planlm.gguf import resolve_lm

    lm = resolve_lm(lm)  # a GGUF checkpoint -> its cached plain folder
    check_local(lm, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(lm)
    except (OSError, ValueError) as e:
        raise PlanlmError(f"cannot load a tokenizer from {lm!r} ({type(e).__name__}); pass a Hub name or a folder "
                          "holding tokenizer files (e.g. the output of `planlm pretrain-lm`)") from None


def lm_dtype(precision: str | None = None):
    """The dtype an LM's weights load in: fp32 master weights unless the trainer's ``precision`` asks for half
    weights ("bf16-true", "16-true"; "64-true": fp64). transformers 5 would otherwise keep a checkpoint's stored
    dtype (``dtype="auto"``), so a bf16 Llama / OLMo or fp16 Pythia checkpoint would train as a half-precision model
    under the default "32-true", with no loss scaling."""
    import torch

    return {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64,
            "64": torch.float64}.get(str(precision), torch.float32)


def load_lm(lm: str, precision: str | None = None):
    """A Hugging Face causal LM and its tokenizer (pad = eos when it has none), by Hub name, local folder or GGUF
    checkpoint (dequantized once into a cached folder: planlm/gguf.py); weights in :func:`lm_dtype` of the
    trainer's ``precision`` (fp32 by default, whatever dtype the checkpoint was stored in)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from planlm.errors import PlanlmError
    from planlm.gguf import resolve_lm

    hf_logging.disable_progress_bar()
    lm = resolve_lm(lm)
    tokenizer = load_tokenizer(lm)  # checks a local folder first
    try:
        model = AutoModelForCausalLM.from_pretrained(lm, dtype=lm_dtype(precision))
    except OSError as e:
        raise PlanlmError(
            f"cannot load the LM {lm!r} ({str(e).splitlines()[0][:160]}); offline, pass a local folder "
            "(e.g. one written by `planlm pretrain-lm`)"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ---- finetune runs (`planlm evaluate`, `planlm generate`) ---------------------------------------------------------
def is_planned_pretraining(run: str | Path) -> bool:
    """Whether ``run`` is a `planlm pretrain-lm --planned.actions ...` folder: a planned LM, not a plain LM."""
    return (Path(run) / PLANNED_LM_CONFIG).exists() and (Path(run) / "manifest.json").exists()


def read_planned_manifest(run: str | Path) -> dict:
    """The manifest of a planned-LM run: a `finetune` folder, or a planned `pretrain-lm` one (one-line error else)."""
    from planlm.artifacts import read_manifest

    return read_manifest(run, "pretrain-lm" if is_planned_pretraining(run) and
                         read_manifest(run).get("stage") == "pretrain-lm" else "finetune")


def training_config(run: str | Path, manifest: dict) -> dict:
    """The config a planned LM was trained with: ``finetune_config.json`` of a finetune run, else its manifest's
    ``config`` (planned pretraining)."""
    saved = Path(run) / "finetune_config.json"
    return json.loads(saved.read_text()) if saved.exists() else manifest.get("config") or {}


def load_run(run: Path, prepared: Path | None = None, device: str | None = None):
    """A finetune run folder -> ``(model, tokenizer, corpus, manifest)``; refuses other folders with one line."""
    import torch

    from planlm.artifacts import (
        check_input_id,
        check_same,
        resolve_input,
        verify_artifact,
    )
    from planlm.data.prepared import PreparedCorpus, check_action_space

    run = Path(run)
    manifest = verify_artifact(run, read_planned_manifest(run))
    if prepared is None:
        prepared = resolve_input(run, manifest, "prepared", "--prepared")
    corpus = PreparedCorpus.load(prepared)
    # Another corpus is fine when its action ids mean the same (`planlm prepare --actions_from`): same encoder, K and
    # centroids as the run's; else one line. Runs older than the recorded action space must use their own corpus.
    trained = (manifest.get("inputs") or {}).get("prepared") or {}
    fix = (f"prepare it with `planlm prepare --actions_from {trained.get('path', 'THE_RUN_CORPUS')}`, or pass the "
           "--prepared corpus the model was fine-tuned on")
    if "action_space" in manifest:
        check_action_space(manifest["action_space"], corpus.action_space, prepared, f"the run {run}", fix)
    else:
        check_same("num_actions", manifest.get("num_actions", corpus.num_actions), corpus.num_actions, prepared, fix)
        check_same("encoder", manifest.get("encoder", corpus.encoder), corpus.encoder, prepared, fix)
        check_input_id(run, manifest, "prepared", prepared, corpus.id, fix)
    model = load_planned_lm(run)
    tokenizer = load_tokenizer(str(run / "tokenizer"))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(dev).eval(), tokenizer, corpus, manifest


# ---- multi-token prediction heads (`pretrain-lm` / `finetune` with --mtp.n_heads > 1) -------------------------------
# Next to the model they extend (a Hugging Face folder or a planned-LM folder): ``mtp_heads.safetensors`` (heads
# 2..n; head 1 is the LM's own last block, saved with the LM) + ``mtp_config.json`` ({"n_heads", "model_type"}).
MTP_WEIGHTS = "mtp_heads.safetensors"
MTP_CONFIG = "mtp_config.json"


def save_mtp_heads(heads, directory: str | Path) -> None:
    """Write :class:`planlm.models.mtp.MTPHeads` into ``directory`` (which the caller writes atomically)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()}, str(directory / MTP_WEIGHTS))
    meta = {"n_heads": heads.n_heads, "model_type": heads.model_type, "num_lm_layers": heads.num_lm_layers}
    (directory / MTP_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def load_mtp_heads(directory: str | Path, lm):
    """The MTP heads saved in ``directory``, attached to ``lm``; None when the folder holds none (an n = 1 model)."""
    from safetensors.torch import load_file

    from planlm.errors import PlanlmError
    from planlm.models.mtp import MTPHeads

    directory = Path(directory)
    if not (directory / MTP_CONFIG).exists():
        return None
    meta = json.loads((directory / MTP_CONFIG).read_text())
    heads = MTPHeads(lm, int(meta["n_heads"]))
    missing, unexpected = heads.load_state_dict(load_file(str(directory / MTP_WEIGHTS)), strict=False)
    if missing or unexpected:
        raise PlanlmError(f"{directory}/{MTP_WEIGHTS} does not fit {meta['n_heads']} heads on this LM "
                          f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return heads.eval()


# ---- `planlm pretrain-lm` folders (`planlm evaluate`, `planlm generate`) -------------------------------------------
def is_lm_folder(run: Path) -> bool:
    """Whether ``run`` is a `planlm pretrain-lm` output (an LM, possibly with MTP heads) rather than a finetune run."""
    manifest = Path(run) / "manifest.json"
    return (manifest.exists() and json.loads(manifest.read_text()).get("stage") == "pretrain-lm"
            and not is_planned_pretraining(run))  # planned pretraining writes a planned LM


def load_mtp_lm(run: Path, device: str | None = None):
    """``(lm, heads or None, tokenizer)`` of a `planlm pretrain-lm` folder, in eval mode on ``device``."""
    import torch

    lm, tokenizer = load_lm(str(run))
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = lm.to(dev).eval()
    heads = load_mtp_heads(run, lm)
    return lm, (heads.to(dev) if heads is not None else None), tokenizer


def load_lm_run(run: Path, prepared: Path | None = None, device: str | None = None):
    """A `planlm pretrain-lm` folder -> ``(UnplannedLM, heads or None, tokenizer, corpus, manifest)``."""
    from planlm.artifacts import read_manifest
    from planlm.data.prepared import PreparedCorpus
    from planlm.errors import PlanlmError
    from planlm.models.unplanned import UnplannedLM

    manifest = read_manifest(run, "pretrain-lm")
    if prepared is None:
        recorded = (manifest.get("inputs") or {}).get("prepared") or {}
        if "path" not in recorded:
            raise PlanlmError(f"{run}/manifest.json records no prepared corpus; pass --prepared DIR")
        prepared = Path(recorded["path"])
    corpus = PreparedCorpus.load(prepared)
    lm, heads, tokenizer = load_mtp_lm(run, device)
    return UnplannedLM(lm, corpus.num_actions).eval(), heads, tokenizer, corpus, manifest
