"""Safe loading: no artifact or checkpoint is ever unpickled. A pickle planted under a checkpoint's name is refused
with one line (no hint to retry with weights_only=False) and its code never runs; .npy files load without pickle."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from planlm.errors import PlanlmError
from planlm.train.resumable import AtomicCheckpointIO, load_checkpoint_safely

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates ``marker``: proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _plant(path: Path, marker: Path, as_torch: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if as_torch:  # a real torch zip checkpoint whose pickle holds the payload
        torch.save({"state_dict": {}, "global_step": 3, "evil": _Payload(marker)}, path)
    else:  # a bare pickle file named like a checkpoint
        path.write_bytes(pickle.dumps({"global_step": 3, "evil": _Payload(marker)}))


@pytest.mark.parametrize("as_torch", [True, False], ids=["torch-zip", "bare-pickle"])
def test_planted_pickle_checkpoint_is_refused_and_never_runs(tmp_path, as_torch):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "run.work" / "checkpoints" / "last.ckpt"
    _plant(ckpt, marker, as_torch)
    for load in (load_checkpoint_safely, AtomicCheckpointIO().load_checkpoint):  # ours, and Lightning's resume path
        with pytest.raises(PlanlmError) as e:
            load(ckpt)
        msg = str(e.value)
        assert "\n" not in msg and "holds objects other than plain data" in msg and str(ckpt) in msg
        assert "weights_only" not in msg and "weights_only" not in repr(e.value.__cause__ or "")
        assert e.value.__suppress_context__  # no chained torch traceback with its "retry unsafely" hint
    assert not marker.exists(), "loading a checkpoint must never run code"


def test_a_real_checkpoint_still_loads(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    from planlm.train.resumable import rng_states

    state = {"global_step": 7, "state_dict": {"w": torch.ones(2)}, "rng": rng_states()}
    AtomicCheckpointIO().save_checkpoint(state, ckpt)
    back = load_checkpoint_safely(ckpt)
    assert back["global_step"] == 7 and torch.equal(back["state_dict"]["w"], torch.ones(2))


def test_truncated_checkpoint_is_one_line(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    torch.save({"global_step": 1, "w": torch.zeros(1000)}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    with pytest.raises(PlanlmError, match="is damaged or not a torch checkpoint"):
        load_checkpoint_safely(ckpt)


def test_pickled_npy_is_refused(synthetic_corpus):
    from planlm.data.prepared import CENTROIDS, PreparedCorpus

    path = synthetic_corpus.path / CENTROIDS
    np.save(path, np.array([{"code": "here"}], dtype=object), allow_pickle=True)
    with pytest.raises(PlanlmError, match=r"centroids\.npy"):
        PreparedCorpus.load(synthetic_corpus.path)


def test_no_unsafe_loader_in_the_package():
    """Every torch.load passes weights_only=True, no np.load allows pickle, no pickle/joblib load at all."""
    offenders = []
    for path in sorted((REPO / "planlm").rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.name}: {m.group(0)}")
        offenders += [f"{path.name}: {x}" for x in re.findall(r"allow_pickle\s*=\s*True|pickle\.loads?\(|joblib\.load\(",
                                                             text)]
    assert not offenders, offenders


def test_torch_lower_bound_loads_weights_only_by_default():
    """pyproject's torch bound admits no torch whose torch.load defaults to weights_only=False (before 2.6)."""
    text = (REPO / "pyproject.toml").read_text()
    bound = re.search(r'"torch>=(\d+)\.(\d+)', text)
    assert bound and (int(bound.group(1)), int(bound.group(2))) >= (2, 6)
