"""Planner folders on the Hugging Face Hub: a Hub id wherever a stage takes a planlm folder (``--planner``,
``--actions_from``), downloaded once into the Hub cache (``snapshot_download``), and ``upload_folder`` for
`planlm share --push_to`. Only huggingface_hub's own calls: offline (``HF_HUB_OFFLINE=1``) a cached snapshot is
used, and an id that is not cached ends in one line naming it."""

from __future__ import annotations

import re
from pathlib import Path

from planlm.errors import PlanlmError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


def is_hub_id(ref: str | Path) -> bool:
    """Whether ``ref`` names a Hub repository rather than a local folder: ``owner/name`` that is not a path here."""
    text = str(ref)
    return bool(HUB_ID.match(text)) and not Path(text).exists() and not text.startswith((".", "/", "~"))


def local_folder(ref: str | Path | None, what: str, part: str | None = None) -> str | Path | None:
    """``ref`` as a local folder: itself when it is no Hub id, else the cached snapshot of that Hub repository; with
    ``part``, that subfolder when the folder is a `planlm share` folder holding it (``actions/``)."""
    if ref is not None and not is_hub_id(ref):
        return Path(ref) / part if part and (Path(ref) / part / "manifest.json").exists() else ref
    if ref is None:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        folder = Path(snapshot_download(repo_id=str(ref)))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        why = "the Hub is offline (HF_HUB_OFFLINE=1) and it is not in the cache" if isinstance(
            e, LocalEntryNotFoundError) else (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise PlanlmError(f"{what} {ref}: cannot download it from the Hugging Face Hub ({why}); pass a local folder"
                          ) from None
    return local_folder(folder, what, part)


def push_folder(folder: Path, repo_id: str, message: str = "planlm share") -> str:
    """Upload ``folder`` to the Hub model repository ``repo_id`` (created when missing); its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 commit_message=message)
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PlanlmError(f"cannot push {folder} to the Hub as {repo_id} ({first}); log in with `hf auth login` "
                          "or set HF_TOKEN") from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")
