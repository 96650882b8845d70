"""`planlm generate`: planner-in-the-loop generation from a fine-tuned run (DESIGN.md 1.7; the paper's Appendix B).

The decoding loop (batched, KV-cached, re-planned at every sentence end, sentences = the corpus splitter's) is
:class:`planlm.eval.generator.PlannedGenerator`; this module loads a run and prints what it generates: each sentence
with its action, where the action came from (prompt, plan, planner) and that action's nearest exemplar.
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Sequence

from planlm.errors import PlanlmError, raise_if_problems
from planlm.eval.generator import (
    AFTER_PLAN,
    AfterPlan,
    Generation,
    PlannedGenerator,
    SamplingConfig,
    resolve_window,
)
from planlm.eval.speculative import decode
from planlm.models.selection import needs_planner
from planlm.persist import is_lm_folder, load_mtp_lm, load_run, training_config

# ---------------------------------------------------------------------------------------------- loading a run


def parse_plan(plan: str | Sequence[int] | None) -> list[int] | None:
    """``"17,4,903"`` (or a list) -> ``[17, 4, 903]``."""
    if plan is None or plan == "" or plan == []:
        return None
    if isinstance(plan, str):
        try:
            return [int(p) for p in plan.replace(" ", "").strip("[]").split(",") if p]
        except ValueError:
            raise PlanlmError(
                f"--plan {plan!r} is not a comma-separated list of action ids, e.g. --plan 17,4,903"
            ) from None
    return [int(p) for p in plan]


def format_generation(g: Generation) -> str:
    """Human-readable: the text, then one line per sentence with its action and that action's nearest exemplar."""
    lines = [g.prompt + g.text, "", f"({g.new_tokens} new tokens, stop: {g.stop_reason}, {g.seconds:.2f} s)", ""]
    for i, s in enumerate(g.sentences):
        who = s.source + (f" p={s.probability:.2f}" if s.probability is not None else "")
        act = "-" if s.action is None else str(s.action)
        lines.append(f"[{i}] action {act} ({who}){'' if s.finished else ' (unfinished)'}: {s.text}")
        if s.exemplar:
            lines.append(f"      exemplar of action {act}: {s.exemplar}")
    return "\n".join(lines)


def generate(
    run: Path = Path("runs/finetune"),
    prompt: str = "",
    plan: str | None = None,
    after_plan: AfterPlan = "stop",
    sampling: SamplingConfig = SamplingConfig(),
    num_samples: int = 1,
    batch_size: int = 8,
    json: bool = False,
    prepared: Path | None = None,
    encoder: str | None = None,
    device: str | None = None,
    speculative: bool = False,
    window: int | None = None,
) -> list[dict]:
    """Generate text with the planner in the loop; show each sentence's action and that action's nearest exemplar.

    Each sentence is conditioned on a writing action chosen by the planner from the sentences before it (re-planned
    at every sentence end, KV-cached decoding) or forced by --plan. An EOS token or max_new_tokens ends generation;
    with --plan and --after_plan stop (default), so does the end of the plan's last sentence.

    Args:
        run: a `planlm finetune` output folder.
        prompt: text to continue; its sentences seed the planner's context ("" = unconditional).
        plan: force the actions of the generated sentences, e.g. 17,4,903 (an outline in action space).
        after_plan: when the forced plan runs out: stop, or let the planner take over.
        sampling: max_new_tokens, temperature (0 = greedy), top_p, seed.
        num_samples: texts to generate (seeds seed, seed + 1, ...).
        batch_size: texts decoded in parallel.
        json: print JSON (one object per text) instead of text.
        prepared: the prepared corpus (default: the one recorded in the run's manifest).
        encoder: sentence encoder (default: the prepared corpus's); must give the same embeddings.
        device: cpu, cuda, ... (default: a GPU when visible).
        speculative: RUN is a `planlm pretrain-lm` LM with multi-token heads: self-speculative decoding (heads 2..n
            draft, head 1 verifies; same output as plain greedy decoding, head 1's distribution when sampling),
            reporting the tokens accepted per forward pass. An LM folder without it decodes plainly.
        window: context window in positions (a chunked sliding window: past it, the context restarts at its last
            window // 2 tokens, so texts longer than the LM's positions run). Default: the run's fine-tuning context
            length (the adapters' training windows); 0: none (the whole text, within the LM's positions).

    Returns:
        The generations as JSON-ready dicts.
    """
    problems = list(sampling.problems())
    if num_samples < 1:
        problems.append(f"num_samples must be positive (got {num_samples})")
    if batch_size < 1:
        problems.append(f"batch_size must be positive (got {batch_size})")
    if after_plan not in AFTER_PLAN:
        problems.append(f"after_plan must be one of {', '.join(AFTER_PLAN)} (got {after_plan!r})")
    try:
        forced = parse_plan(plan)
    except PlanlmError as e:
        problems.append(str(e))
        forced = None
    if window is not None and (window < 0 or window == 1):
        problems.append(f"window must be 0 (none), >= 2, or unset (the run's training context; got {window})")
    if not is_lm_folder(run) and speculative:
        problems.append("--speculative true needs a `planlm pretrain-lm` LM folder with MTP heads (--mtp.n_heads)")
    raise_if_problems(problems, "generate")
    if is_lm_folder(run):  # an LM without planner (NTP or MTP): plain or self-speculative decoding
        return generate_lm(Path(run), prompt, sampling, num_samples, json, speculative, device)
    model, tokenizer, corpus, manifest = load_run(run, prepared, device)
    enc = None
    if needs_planner(model.config.selection):
        from planlm.data.encoders import load_encoder

        enc = load_encoder(encoder or corpus.encoder, device=device)
    gen = PlannedGenerator(model, tokenizer, corpus, enc, window=resolve_window(window, training_config(run, manifest)))
    results = []
    for first in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - first)
        s = SamplingConfig(sampling.max_new_tokens, sampling.temperature, sampling.top_p, sampling.seed + first)
        for i, g in enumerate(gen.generate([prompt] * n, [forced] * n, s, after_plan), start=first):
            results.append(g.to_json())
            if json:
                print(jsonlib.dumps(results[-1], ensure_ascii=False))
            else:
                print(("\n" + "=" * 80 + "\n" if i else "") + format_generation(g))
    return results


def generate_lm(run: Path, prompt: str, sampling, num_samples: int = 1, json: bool = False,
                speculative: bool = True, device: str | None = None) -> list[dict]:
    """`planlm generate` on an LM folder: plain or self-speculative decoding, with tokens/s and acceptance length."""
    lm, heads, tokenizer = load_mtp_lm(run, device)
    if speculative and heads is None:
        print(f"planlm generate: {run} has no MTP heads (n = 1): decoding plainly")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [tokenizer.bos_token_id]
    results = []
    for i in range(num_samples):
        new, stats = decode(lm, ids, sampling.max_new_tokens, heads if speculative else None, sampling.temperature,
                            sampling.top_p, sampling.seed + i, tokenizer.eos_token_id)
        r = {"prompt": prompt, "text": tokenizer.decode(new), "speculative": bool(speculative and heads is not None),
             **stats.to_json()}
        results.append(r)
        if json:
            print(jsonlib.dumps(r, ensure_ascii=False))
        else:
            print(("\n" + "=" * 80 + "\n" if i else "") + prompt + r["text"])
            print(f"\n({r['new_tokens']} new tokens in {r['forward_passes']} forward passes: "
                  f"{r['tokens_per_forward']:.2f} tokens per pass, {r['tokens_per_second']:.1f} tokens/s)")
    return results
