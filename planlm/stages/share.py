"""`planlm share`: a trained planner and its action space as one Hugging Face Hub folder with a model card.

Folder (``--out``), written atomically, and pushed with ``--push_to OWNER/NAME`` (huggingface_hub's upload_folder)::

    README.md            the model card: YAML metadata (license, datasets, library_name: planlm, tags), the action
                         space, NAP accuracy on the val split, example actions with their exemplar sentences
    planner.safetensors, planner_config.json, manifest.json
                         the `planlm train-planner` artifact as it is (so `finetune --planner FOLDER_OR_HUB_ID`)
    actions/             the action space: centroids.npy, exemplars.json, manifest.json (stage prepare: encoder, K),
                         what `planlm prepare --actions_from FOLDER_OR_HUB_ID` applies to new text
    tokenizer/           the LM tokenizer the planner's context is counted in (paper context), when it has one
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from planlm.artifacts import read_manifest, writes_artifact
from planlm.errors import PlanlmError

ACTIONS = "actions"
TOKENIZER = "tokenizer"


def _tokenizer_note(source: str | None) -> str:
    """Where the card says the context tokenizer is: tokenizer/ of the folder, from a Hub name or a local LM."""
    if not source:
        return "- (the planner counts sentences, not LM tokens)"
    return f"{TOKENIZER}/ (from {source if not Path(source).exists() else Path(source).name})"


def _card(manifest: dict, prepared: dict, exemplars: list[dict], license: str, hub_dataset: str | None,
          examples: int, repo: str | None) -> str:
    """README.md: the model card of a shared planner."""
    planner = (manifest.get("metrics") or {}).get("planner") or {}
    cfg = manifest.get("planner_config") or {}
    source = ((prepared.get("config") or {}).get("source") or {})
    corpus = hub_dataset or source.get("source") or "builtin"
    tags = ["planlm", "planner", "writing-actions", "next-action-prediction"]
    meta = [f"license: {license}", "library_name: planlm", "tags:", *[f"- {t}" for t in tags]]
    if hub_dataset:
        meta += ["datasets:", f"- {hub_dataset}"]
    load = repo or "THIS_FOLDER"
    acc = " / ".join(f"{planner[k]:.3f}" for k in ("top1", "top5") if isinstance(planner.get(k), (int, float)))
    rows = []
    for e in sorted(exemplars, key=lambda e: -int(e.get("size", 0)))[:examples]:
        shown = " / ".join(s.replace("|", "\\|").replace("\n", " ")[:120] for s in (e.get("exemplars") or [])[:2])
        rows.append(f"| {e['action']} | {e.get('size', '-')} | {shown} |")
    lines = ["---", *meta, "---", "", "# planlm planner", "",
             ("A next-action-prediction planner of [planlm](https://pypi.org/project/planlm/) (planner-conditioned "
              "language modeling): it predicts the writing action (a k-means cluster of sentence embeddings) of the "
              "next sentence from the sentences before it."), "",
             "| | |", "|---|---|",
             f"| sentence encoder | {manifest.get('encoder')} |",
             f"| actions K | {manifest.get('num_actions')} |",
             f"| context | {cfg.get('context')} ({cfg.get('context_tokens')} LM tokens) |",
             f"| context tokenizer | {_tokenizer_note(manifest.get('context_tokenizer'))} |",
             f"| NAP top-1 / top-5 (val split) | {acc or '-'} |",
             f"| corpus | {corpus} |", "",
             "## Use", "", "```bash",
             f"planlm prepare --source.source MY_CORPUS.jsonl --actions_from {load} --out prepared  # its actions on new text",
             f"planlm finetune --prepared prepared --lm MY_LM --planner {load} --out run", "```", "",
             "## Example actions", "", "| action | train sentences | exemplars (nearest to the centroid) |",
             "|---:|---:|---|", *rows, ""]
    return "\n".join(lines)


@writes_artifact()
def share(
    planner: Path = Path("runs/planner"),
    out: Path = Path("runs/planner-hub"),
    push_to: str | None = None,
    license: str = "apache-2.0",
    dataset: str | None = None,
    examples: int = 8,
    force: bool = False,
) -> Path:
    """Write a trained planner and its action space as one Hugging Face Hub folder with a model card; push it.

    The folder is what `planlm finetune --planner` and `planlm prepare --actions_from` read, as a local path or as a
    Hub id once pushed (downloaded once into the Hub cache).

    Args:
        planner: a `planlm train-planner` output folder.
        out: the folder to write (README.md, the planner, actions/, tokenizer/).
        push_to: upload the folder to this Hub model repository (OWNER/NAME), created when missing.
        license: the card's license.
        dataset: the Hub dataset the corpus came from, for the card's metadata (default: the prepared corpus's source
            when it is a Hub dataset).
        examples: actions shown in the card with their exemplars.
        force: replace an existing --out.

    Returns:
        The output folder.
    """
    from planlm.artifacts import atomic_dir, resolve_input, write_manifest
    from planlm.data.prepared import CENTROIDS, EXEMPLARS, ActionSpace
    from planlm.persist import (
        PLANNER_CONFIG,
        PLANNER_WEIGHTS,
        load_planner,
        load_tokenizer,
    )

    problems = [] if examples >= 0 else [f"examples must be >= 0 (got {examples})"]
    if push_to is not None:
        from planlm.hub import HUB_ID

        if not HUB_ID.match(push_to):
            problems.append(f"push_to must be a Hub id OWNER/NAME (got {push_to})")
    if problems:
        raise PlanlmError("share: " + "; ".join(problems))
    manifest = read_manifest(planner, "train-planner")
    load_planner(planner)  # its files are whole and fit its config
    space = ActionSpace.load(resolve_input(planner, manifest, "prepared", "--prepared"))
    source = (read_manifest(space.path).get("config") or {}).get("source") or {}
    hub_dataset = dataset or (source.get("source") if source.get("kind") == "hub" else None)
    with atomic_dir(out, force=force) as tmp:
        for name in (PLANNER_WEIGHTS, PLANNER_CONFIG, "manifest.json"):
            shutil.copy2(Path(planner) / name, tmp / name)
        (tmp / ACTIONS).mkdir()
        shutil.copy2(space.path / CENTROIDS, tmp / ACTIONS / CENTROIDS)
        (tmp / ACTIONS / EXEMPLARS).write_text(json.dumps(space.exemplars, indent=1) + "\n")
        write_manifest(tmp / ACTIONS, "prepare", {"shared_action_space": True, "sentences": (
            read_manifest(space.path).get("config") or {}).get("sentences")}, encoder=space.encoder, embedding_dim=int(space.centroids.shape[1]), num_actions=space.num_actions)
        if manifest.get("context_tokenizer"):
            load_tokenizer(str(manifest["context_tokenizer"])).save_pretrained(str(tmp / TOKENIZER))
        card = _card(manifest, read_manifest(space.path), space.exemplars, license, hub_dataset, examples, push_to)
        (tmp / "README.md").write_text(card)
    print(f"planlm share: {planner} -> {out}")
    if push_to is not None:
        from planlm.hub import push_folder

        print(f"planlm share: pushed to {push_folder(Path(out), push_to)}")
    return Path(out)
