"""Exact mid-epoch resume: a seeded, rank-aware batch sampler whose position is saved in every checkpoint, an
atomic checkpoint writer, and the RNG states that a checkpoint must carry.

Lightning restores the model, optimizer, schedulers and loop counters; it does not restore the data order or the RNG
(dropout) by itself. The training module saves ``batches consumed in this epoch`` and the RNG states in
``on_save_checkpoint`` and hands them back here on resume, so a killed run continues with the very batch it would
have seen next.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of a seeded permutation (a new one per epoch), this rank's share only, from a resumable position.

    Every rank sees the same permutation (seed + epoch) and takes its slice of every global batch, so a DDP run with
    per-rank batch ``b`` over ``w`` ranks consumes the same examples per step as one process with batch ``b*w``.

    The sampler counts epochs itself (every new iterator is the next epoch) rather than relying on
    ``set_epoch`` calls, whose timing relative to the prefetching iterator Lightning does not promise.
    """

    def __init__(
        self, num_examples: int, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ):
        self.n, self.batch_size, self.seed, self.shuffle = num_examples, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip = 0  # batches of the current epoch consumed before a resume; applied once, by the next __iter__

    def global_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __len__(self) -> int:
        return math.ceil(self.n / (self.batch_size * self.world_size))

    def __iter__(self):
        # Each iterator is one epoch: the epoch and the resume offset are taken now, when Lightning asks for it,
        # not when it first draws from it (it prefetches).
        epoch, start = self.epoch, self.skip
        self.epoch, self.skip = epoch + 1, 0
        return self._batches(epoch, start)

    def _batches(self, epoch: int, start: int):
        order = self.global_order(epoch)
        step = self.batch_size * self.world_size
        for b in range(start, len(self)):
            chunk = order[b * step : (b + 1) * step]
            mine = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            if len(mine) == 0:  # the last global batch may not reach every rank: repeat its head so ranks stay in step
                mine = chunk[: self.batch_size]
            yield mine.tolist()


def rng_states() -> dict:
    """Every RNG a training step may draw from, in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
        **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
    }


def load_checkpoint_safely(path, map_location=None) -> dict:
    """``torch.load(path, weights_only=True)``, with a one-line :class:`PlanlmError` for a file that is not a plain
    checkpoint (a torn file, or a pickle that would run code), never a hint to retry unsafely."""
    import pickle
    import zipfile

    from planlm.errors import PlanlmError

    path = Path(path)
    if not path.is_file():
        raise PlanlmError(f"checkpoint {path} does not exist; run without --resume to start afresh")
    try:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as e:
        kind = "holds objects other than plain data (refused: loading it would run code)" if isinstance(
            e, pickle.UnpicklingError) else "is damaged or not a torch checkpoint"
        raise PlanlmError(
            f"checkpoint {path} {kind}; delete it and run without --resume to start afresh"
        ) from None


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary sibling and rename it into place: a kill never leaves a torn file.

    Load with ``weights_only=True`` only: a checkpoint is data (tensors, numbers, strings), never code, so a pickle
    planted under a checkpoint's name is refused instead of run.
    """

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_checkpoint_safely(path, map_location)

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
