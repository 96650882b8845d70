"""Saving and loading model weights (safetensors + JSON config). I/O lives here so that `models/` stays pure.

Planner artifact (`planlm train-planner`): ``planner.safetensors`` + ``planner_config.json`` (the fields of
:class:`planlm.models.planner.PlannerConfig`) + ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

PLANNER_WEIGHTS = "planner.safetensors"
PLANNER_CONFIG = "planner_config.json"


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
    from safetensors.torch import load_file

    from planlm.errors import PlanlmError
    from planlm.models.planner import Planner, PlannerConfig

    directory = Path(directory)
    if not (directory / PLANNER_WEIGHTS).exists() or not (directory / PLANNER_CONFIG).exists():
        raise PlanlmError(f"{directory} holds no planner ({PLANNER_WEIGHTS} + {PLANNER_CONFIG}); train one with `planlm train-planner`")
    config = PlannerConfig(**json.loads((directory / PLANNER_CONFIG).read_text()))
    planner = Planner(config)
    planner.load_state_dict(load_file(str(directory / PLANNER_WEIGHTS)))
    return planner
