"""A planned LM as a model of EleutherAI's lm-evaluation-harness (``lm-eval`` 0.4.x): ``--model planlm``.

    planlm-lm-eval --model planlm --model_args run=RUNS/soft-unfreeze-halfway,actions=predicted --tasks TASK

``planlm-lm-eval`` is the harness's own ``lm_eval`` command (same arguments, same output) with this model registered;
a harness that discovers model plugins finds it through planlm's ``lm_eval.models`` entry point, so there the plain
``lm_eval --model planlm ...`` works too. ``run`` is a `planlm finetune` folder (or a planned `pretrain-lm` one), or
a plain LM -- a `planlm pretrain-lm` folder, a Hugging Face folder or Hub name, a GGUF file -- which is scored as it
is (the plain-LM baseline of the same numbers).

Every request text (context + continuation) becomes one article of a prepared corpus built on the fly, with the run's
own sentence splitter settings, sentence encoder and centroids, and is scored by :func:`planlm.eval.perplexity.perplexity`
-- the windows, token alignment and planner calls of `planlm evaluate`, nothing re-implemented:

- ``actions=predicted`` (default): each sentence's action comes from the planner over the sentences before it, i.e.
  from the text read so far, never from the sentence being scored (re-planned at every sentence end);
  ``oracle``: each sentence's nearest centroid (its own text: the oracle baseline); ``fixed``: one action for all.
- ``protocol=paper`` (default): every scored token predicted from the ``context_length - 1`` tokens before it (stride
  1, one window per token); ``strided``: windows every ``stride`` tokens, cheaper. ``context_length`` default 128.
- ``loglikelihood(context, continuation)`` scores the continuation's tokens (the token that spans the boundary
  included; trailing spaces of the context move to the continuation, as the harness's HF model does);
  ``loglikelihood_rolling(text)`` scores every token of the text.
- ``prefix_token=true`` (default, the harness's convention): every text starts with the tokenizer's BOS (else EOS)
  token, so a text's first token is scored too; ``false`` scores exactly as `planlm evaluate` does on the same
  article (its first token has nothing before it and is not scored).
- ``generate_until``: planner-in-the-loop generation (:class:`planlm.eval.generator.PlannedGenerator`, re-planning
  at every sentence end, greedy unless ``do_sample``), cut at the first ``until`` string; plain LMs decode plainly.

``batch_size`` is windows per forward pass (texts per batch in generation); ``device`` where the model runs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from planlm.errors import PlanlmError, raise_if_problems
from planlm.eval.perplexity import ACTION_SOURCES, PROTOCOLS, PerplexityConfig

EXTRA = "lm-eval"  # pip install 'planlm[lm-eval]'

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # one line naming the extra, not a traceback
    raise PlanlmError(f"the lm-evaluation-harness is not installed: pip install 'planlm[{EXTRA}]'") from None

DEFAULT_BATCH = 32  # windows per forward pass when the harness passes none or "auto"


def _batch_size(value) -> int | None:
    """The harness's ``batch_size`` (an int, a numeric string, "auto" or "auto:N") as windows per pass, or None."""
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@register_model("planlm")
class PlanlmLM(LM):
    """A planned LM (or a plain LM) behind the harness's LM interface; see the module docstring."""

    def __init__(self, run: str, actions: str = "predicted", batch_size=DEFAULT_BATCH, device: str | None = None,
                 protocol: str = "paper",
                 context_length: int = PerplexityConfig.context_length, stride: int | None = None,
                 prefix_token: bool = True, encoder: str | None = None, fixed_action: int | None = None,
                 max_gen_toks: int = 256, max_batch_size=None, **unknown):
        super().__init__()
        import torch

        from planlm.artifacts import MANIFEST
        from planlm.persist import is_lm_folder

        problems = []
        if unknown:
            problems.append(f"unknown model_args {', '.join(sorted(unknown))} (planlm takes run, actions, protocol, "
                            "context_length, stride, prefix_token, encoder, fixed_action, max_gen_toks, batch_size, "
                            "device)")
        if actions not in ACTION_SOURCES:
            problems.append(f"actions must be one of {', '.join(ACTION_SOURCES)} (got {actions})")
        if protocol not in PROTOCOLS:
            problems.append(f"protocol must be one of {', '.join(PROTOCOLS)} (got {protocol})")
        self.batch = _batch_size(batch_size)
        if self.batch is None or self.batch < 1:
            problems.append(f"batch_size must be a positive integer or auto (got {batch_size})")
        if not isinstance(context_length, int) or context_length < 2:
            problems.append(f"context_length must be an integer >= 2 (got {context_length})")
        if not isinstance(max_gen_toks, int) or max_gen_toks < 1:
            problems.append(f"max_gen_toks must be a positive integer (got {max_gen_toks})")
        raise_if_problems(problems, "lm-eval --model planlm")
        self.actions, self.protocol, self.context_length = actions, protocol, context_length
        self.stride, self.fixed_action, self.max_gen_toks = stride, fixed_action, max_gen_toks
        self.run = str(run)
        self.device_name = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device_name.startswith("cuda") and not torch.cuda.is_available():  # the harness's default device
            print(f"planlm: no CUDA device here, running on the CPU instead of {self.device_name}", file=sys.stderr)
            self.device_name = "cpu"
        self.planned = (Path(self.run) / MANIFEST).exists() and not is_lm_folder(Path(self.run))
        if self.planned:
            self._load_planned(encoder)
        else:
            self._load_plain()
        self.prefix = self._prefix() if prefix_token else ""

    # ---- loading --------------------------------------------------------------------------------------------------
    def _load_planned(self, encoder: str | None) -> None:
        from planlm.models.selection import needs_planner
        from planlm.persist import load_run, training_config

        self.model, self.tokenizer, self.corpus, manifest = load_run(Path(self.run), device=self.device_name)
        self.training_config = training_config(self.run, manifest)
        self.constant = not needs_planner(self.model.config.selection)
        needs_text = not self.constant and self.actions != "fixed"  # the planner or the nearest centroid reads it
        self.encoder = None
        if needs_text:
            from planlm.data.encoders import load_encoder

            self.encoder = load_encoder(encoder or self.corpus.encoder, device=self.device_name)
            if self.encoder.dim != self.corpus.embedding_dim:
                raise PlanlmError(f"encoder {self.encoder.name} gives {self.encoder.dim}-d embeddings, the run's "
                                  f"actions are {self.corpus.embedding_dim}-d; use {self.corpus.encoder}")
        sentences = (self.corpus.manifest.get("config") or {}).get("sentences") or {}
        self.min_chars, self.max_chars = int(sentences.get("min_chars", 1)), sentences.get("max_chars")

    def _load_plain(self) -> None:
        from planlm.models.unplanned import UnplannedLM
        from planlm.persist import load_lm

        lm, self.tokenizer = load_lm(self.run)
        self.model = UnplannedLM(lm.to(self.device_name).eval(), num_actions=1)
        self.corpus, self.encoder, self.constant, self.training_config = None, None, True, {}

    def _prefix(self) -> str:
        """The BOS (else EOS) token as text, checked to read back as that one token."""
        tok = self.tokenizer
        text, token_id = (tok.bos_token, tok.bos_token_id) if tok.bos_token_id is not None else (tok.eos_token,
                                                                                                  tok.eos_token_id)
        if token_id is None or tok(text, add_special_tokens=False)["input_ids"] != [token_id]:
            raise PlanlmError(f"the tokenizer of {self.run} has no BOS or EOS token that reads back as one token; "
                              "pass prefix_token=false")
        return text

    # ---- the requests as a prepared corpus --------------------------------------------------------------------------
    def _sentences(self, texts: list[str], offset: int) -> list[list[tuple[int, int]]]:
        """Sentence spans of each text (after its first ``offset`` characters, the prefix token): the run's splitter;
        one sentence over the whole text for a plain LM, or where the splitter finds none."""
        if self.planned:
            from planlm.data.sentences import split_sentences

            found = split_sentences([t[offset:] for t in texts], n_process=1, min_chars=self.min_chars,
                                    max_chars=self.max_chars)
        else:
            found = [[] for _ in texts]
        return [[(s + offset, e + offset) for s, e in spans] or [(offset, len(t))] for t, spans in zip(texts, found)]

    def _request_corpus(self, texts: list[str], folder: Path):
        """``texts`` as the test split of a prepared corpus in ``folder``, in the run's action space."""
        from planlm.artifacts import write_manifest
        from planlm.data.prepared import PreparedCorpus, write_prepared

        spans = self._sentences(texts, len(self.prefix))
        article = np.concatenate([np.full(len(s), a, np.int64) for a, s in enumerate(spans)])
        start = np.array([s for sp in spans for s, _ in sp], np.int64)
        end = np.array([e for sp in spans for _, e in sp], np.int64)
        centroids = self.corpus.centroids if self.planned else np.zeros((1, 1), np.float32)
        embeddings = np.zeros((len(start), centroids.shape[1]), np.float16)
        actions = np.zeros(len(start), np.int64)
        if self.encoder is not None:
            from planlm.data.actions import assign
            from planlm.data.encoders import embed_sentences

            embeddings = embed_sentences(self.encoder, [t[s:e] for t, sp in zip(texts, spans) for s, e in sp],
                                         progress=False)  # (N, d) float16, as `planlm prepare` stores them
            actions = assign(embeddings, centroids)[0]  # each sentence's nearest centroid: its oracle action
        write_prepared(folder, [f"request {a}" for a in range(len(texts))], texts, ["test"] * len(texts), article,
                       start, end, embeddings, centroids, actions, [])
        write_manifest(folder, "prepare", {"lm_eval_requests": True, "sentences": {
            "min_chars": getattr(self, "min_chars", 1), "max_chars": getattr(self, "max_chars", None)}},
            encoder=self.corpus.encoder if self.planned else "none", embedding_dim=int(centroids.shape[1]),
            num_actions=int(centroids.shape[0]))
        return PreparedCorpus.load(folder)

    def score(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """``(log-likelihood, greedy)`` of each continuation after its context (natural log), every text one article
        scored by `planlm evaluate`'s perplexity (see the module docstring)."""
        from planlm.eval.perplexity import perplexity

        if not pairs:
            return []
        texts = [self.prefix + c + x for c, x in pairs]
        first_char = [len(self.prefix) + len(c) for c, _ in pairs]  # the first character to score
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        # the first token that ends after the context: the continuation's (a token across the boundary included)
        score_from = np.array([next((i for i, (_, e) in enumerate(off) if e > c), len(off))
                               for off, c in zip(enc["offset_mapping"], first_char)], np.int64)  # (A,)
        lengths = np.array([len(ids) for ids in enc["input_ids"]])
        if not (lengths > np.maximum(score_from, 1)).any():  # nothing to score anywhere (empty continuations)
            return [(0.0, True)] * len(pairs)
        with tempfile.TemporaryDirectory(prefix="planlm-lm-eval-") as tmp:
            corpus = self._request_corpus(texts, Path(tmp))
            r = perplexity(self.model, corpus, self.tokenizer, "test", self.actions, self.protocol,
                           self.context_length, self.stride if self.protocol == "strided" else None,
                           batch_size=self.batch, fixed_action=self.fixed_action, score_from=score_from)
            article = corpus.sentence_article[r.token_sentence]  # (tokens,) the request of each scored token
        nll = np.bincount(article, weights=r.token_nll.astype(np.float64), minlength=len(pairs))  # (A,)
        missed = np.bincount(article, weights=~r.token_greedy, minlength=len(pairs))  # (A,)
        return [(-float(n), bool(m == 0)) for n, m in zip(nll, missed)]

    # ---- the harness's interface ----------------------------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = []
        for context, continuation in (r.args for r in requests):
            spaces = len(context) - len(context.rstrip())  # the harness's HF model scores them with the continuation
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            pairs.append((context, continuation))
        return self.score(pairs)

    def loglikelihood_rolling(self, requests) -> list[float]:
        return [ll for ll, _ in self.score([("", r.args[0]) for r in requests])]

    def generate_until(self, requests) -> list[str]:
        out = []
        for context, kwargs in (r.args for r in requests):
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            text = self._generate(context, kwargs)
            cut = min([i for i in (text.find(s) for s in until if s) if i >= 0], default=len(text))
            out.append(text[:cut])
        return out

    def _generate(self, context: str, kwargs: dict) -> str:
        from planlm.eval.generator import SamplingConfig

        sampling = SamplingConfig(
            max_new_tokens=int(kwargs.get("max_gen_toks", self.max_gen_toks)),
            temperature=float(kwargs.get("temperature", 1.0)) if kwargs.get("do_sample") else 0.0,
            top_p=float(kwargs.get("top_p") or 1.0), seed=int(kwargs.get("seed", 0) or 0))
        raise_if_problems(sampling.problems(), "lm-eval generate_until")
        if not self.planned:
            from planlm.eval.speculative import decode

            tok = self.tokenizer
            ids = tok(context, add_special_tokens=False)["input_ids"] or [tok.bos_token_id or tok.eos_token_id]
            room = getattr(self.model.lm.config, "max_position_embeddings", None)
            if room:
                ids = ids[-max(1, room - sampling.max_new_tokens):]  # the harness's left truncation
            new, _ = decode(self.model.lm, ids, sampling.max_new_tokens, None, sampling.temperature,
                            sampling.top_p, sampling.seed, tok.eos_token_id)
            return tok.decode(new)
        if self.actions == "oracle":
            raise PlanlmError("generate_until has no true continuation to take oracle actions from; use "
                              "actions=predicted or actions=fixed")
        plan = None
        if self.actions == "fixed" and not self.constant:
            a = self.model.config.fixed_action if self.fixed_action is None else int(self.fixed_action)
            plan = [a] * sampling.max_new_tokens  # a sentence has at least one token: one action per sentence
        return self.generator.generate([context], [plan], sampling, "stop")[0].text

    @property
    def generator(self):
        if getattr(self, "_generator", None) is None:
            from planlm.eval.generator import PlannedGenerator, resolve_window

            self._generator = PlannedGenerator(self.model, self.tokenizer, self.corpus, self.encoder,
                                               window=resolve_window(None, self.training_config))
        return self._generator



def harness_command():
    """The harness's ``lm_eval`` command function (it reads ``sys.argv``), with this module's model registered."""
    from lm_eval.__main__ import cli_evaluate

    return cli_evaluate
