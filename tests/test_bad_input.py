"""Bad input, every kind in one place: each case ends with one clear line on stderr, exit status 2, and nothing
written (no --out, no file added, changed or removed anywhere under the test's folders).

A case is a function ``(env, tmp) -> (argv, pattern)``: it may build a damaged copy of an artifact in ``tmp`` first;
``pattern`` is a regular expression the error line must match.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from finetune_env import cli_args
from helpers import snapshot as _snapshot
from helpers import synthetic_prepared, tiny_lm, tiny_planner
from planlm.artifacts import resolve_input, write_manifest
from planlm.cli import main
from planlm.errors import PlanlmError

FAST = ["--optim.max_steps", "2", "--checkpoint_every", "1000", "--windows.max_val_windows", "4"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A prepared corpus, a tiny LM and planner, a second corpus of the same K and width (other centroids), a
    planner trained on it, and one real 2-step finetune run."""
    root = tmp_path_factory.mktemp("bad")
    corpus = synthetic_prepared(root / "prep", n_articles=12)
    other = synthetic_prepared(root / "other", n_articles=12, seed=1)
    e = {
        "root": root, "corpus": corpus, "prepared": str(root / "prep"), "other": str(root / "other"),
        "lm": tiny_lm(root / "lm", corpus.texts),
        "planner": _planner_of(root / "planner", corpus),
        "other_planner": _planner_of(root / "other_planner", other),
        "planner_k4": tiny_planner(root / "planner_k4", synthetic_prepared(root / "prep_k4", num_actions=4)),
        "planner_d8": tiny_planner(root / "planner_d8", synthetic_prepared(root / "prep_d8", dim=8)),
    }
    e["run"] = str(root / "run")
    assert main(cli_args(e, root / "run", *FAST)) == 0
    return e


def _planner_of(directory: Path, corpus) -> str:
    """A tiny planner whose manifest records the prepared corpus it belongs to, as `train-planner` writes it."""
    tiny_planner(directory, corpus)
    write_manifest(directory, "train-planner", {"tiny": True}, inputs={"prepared": corpus.path},
                   num_actions=corpus.num_actions, encoder=corpus.encoder)
    return str(directory)


def _jsonl(tmp: Path, lines: list) -> str:
    path = tmp / "corpus.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _out_file(tmp: Path, argv: list[str], inside: bool = False) -> list[str]:
    """``argv`` with --out replaced by an existing file (or a path inside one)."""
    f = Path(_write(tmp / "f", b"x"))
    i = argv.index("--out")
    return [*argv[: i + 1], str(f / "out" if inside else f), *argv[i + 2 :]]


def _prepare(tmp: Path, source: str, *extra: str) -> list[str]:
    return ["prepare", "--source.source", source, "--encoder.name", "fake:16", "--out", str(tmp / "out"),
            "--progress", "false", *extra]


def _copy(env, tmp: Path, name: str) -> Path:
    dst = tmp / name
    shutil.copytree(env[name], dst)
    return dst


def _finetune(env, tmp: Path, *extra: str, prepared=None, planner=None) -> list[str]:
    e = dict(env, prepared=str(prepared or env["prepared"]), planner=str(planner or env["planner"]))
    return cli_args(e, tmp / "out", *FAST, *extra)


def _evaluate(env, tmp: Path, run=None, *extra: str) -> list[str]:
    return ["evaluate", "--run", str(run or env["run"]), "--out", str(tmp / "out"), "--ppl.max_articles", "1",
            "--device", "cpu", *extra]


def _generate(env, tmp: Path, *extra: str, run=None) -> list[str]:
    return ["generate", "--run", str(run or env["run"]), "--sampling.max_new_tokens", "4", "--device", "cpu",
            "--encoder", "fake:16", *extra]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _pickle_centroids(env, tmp):
    prep = _copy(env, tmp, "prepared")
    np.save(prep / "centroids.npy", np.array([{"not": "numbers"}], dtype=object), allow_pickle=True)
    return _finetune(env, tmp, prepared=prep), r"centroids\.npy.*(changed|damaged)"


def _swap_sentences(env, tmp):
    prep = _copy(env, tmp, "prepared")
    shutil.copy(Path(env["other"]) / "sentences.parquet", prep / "sentences.parquet")
    return _finetune(env, tmp, prepared=prep), r"sentences\.parquet was changed"


def _missing_centroids(env, tmp):
    prep = _copy(env, tmp, "prepared")
    (prep / "centroids.npy").unlink()
    return _finetune(env, tmp, prepared=prep), r"missing centroids\.npy"


def _truncated_embeddings(env, tmp):
    prep = _copy(env, tmp, "prepared")
    _truncate(prep / "embeddings.npy")
    return _finetune(env, tmp, prepared=prep), r"embeddings\.npy was changed"


def _truncated_manifest(env, tmp):
    prep = _copy(env, tmp, "prepared")
    _truncate(prep / "manifest.json")
    return _finetune(env, tmp, prepared=prep), r"manifest\.json is damaged"


def _empty_manifest(env, tmp):
    prep = _copy(env, tmp, "prepared")
    (prep / "manifest.json").write_text("")
    return _finetune(env, tmp, prepared=prep), r"manifest\.json is damaged"


def _edited_manifest(env, tmp):
    prep = _copy(env, tmp, "prepared")
    m = json.loads((prep / "manifest.json").read_text())
    m["num_actions"] = 5  # the centroids say 8
    (prep / "manifest.json").write_text(json.dumps(m))
    return _finetune(env, tmp, prepared=prep), r"5"


def _strip_hashes(directory: Path) -> None:
    """Drop the recorded content hashes (an artifact of an older planlm): the loaders' own checks must hold."""
    m = json.loads((directory / "manifest.json").read_text())
    m.pop("files", None)
    (directory / "manifest.json").write_text(json.dumps(m))


def _unhashed_truncated_planner(env, tmp):
    planner = _copy(env, tmp, "planner")
    _strip_hashes(planner)
    _truncate(planner / "planner.safetensors")
    return _finetune(env, tmp, planner=planner), r"planner\.safetensors is damaged"


def _unhashed_edited_planner_config(env, tmp):
    planner = _copy(env, tmp, "planner")
    _strip_hashes(planner)
    cfg = json.loads((planner / "planner_config.json").read_text())
    cfg["n_heads"] = "four"
    (planner / "planner_config.json").write_text(json.dumps(cfg))
    return _finetune(env, tmp, planner=planner), r"planner_config\.json was edited"


def _unhashed_pickled_centroids(env, tmp):
    prep = _copy(env, tmp, "prepared")
    _strip_hashes(prep)
    np.save(prep / "centroids.npy", np.array([{"not": "numbers"}], dtype=object), allow_pickle=True)
    return _finetune(env, tmp, prepared=prep), r"prep.* is damaged \(.*allow_pickle"


def _unhashed_swapped_embeddings(env, tmp):
    prep = _copy(env, tmp, "prepared")
    _strip_hashes(prep)
    np.save(prep / "embeddings.npy", np.zeros((3, 16), dtype=np.float16))
    return _finetune(env, tmp, prepared=prep), r"inconsistent \(embeddings\.npy has shape \(3, 16\)"


def _planner_counted_with(env, tmp, lm) -> Path:
    """A copy of the planner whose manifest says its paper context was counted in tokens of ``lm``."""
    planner = _copy(env, tmp, "planner")
    m = json.loads((planner / "manifest.json").read_text())
    write_manifest(planner, "train-planner", m["config"], inputs={"prepared": env["prepared"], "lm": lm},
                   num_actions=m["num_actions"], encoder=m["encoder"],
                   planner_config={"context": "paper", "context_sentences": None})
    return planner


def _planner_of_another_lm(env, tmp):
    other_lm = shutil.copytree(env["lm"], tmp / "other_lm")  # same tokenizer files, but another LM as far as recorded
    planner = _planner_counted_with(env, tmp, other_lm)
    return _finetune(env, tmp, planner=planner), r"counted its context in tokens of the LM .*other_lm"


def _truncated_planner(env, tmp):
    planner = _copy(env, tmp, "planner")
    _truncate(planner / "planner.safetensors")
    return _finetune(env, tmp, planner=planner), r"planner\.safetensors (was changed|is damaged)"


def _overwritten_planner_bytes(env, tmp):
    planner = _copy(env, tmp, "planner")
    data = bytearray((planner / "planner.safetensors").read_bytes())
    data[-64:] = b"\x7e" * 64  # float32 values up to ~8e37, a well-formed file of wrong numbers
    (planner / "planner.safetensors").write_bytes(bytes(data))
    return _finetune(env, tmp, planner=planner), r"planner\.safetensors was changed"


def _edited_planner_config(env, tmp):
    planner = _copy(env, tmp, "planner")
    cfg = json.loads((planner / "planner_config.json").read_text())
    cfg["n_heads"] = "four"
    (planner / "planner_config.json").write_text(json.dumps(cfg))
    return _finetune(env, tmp, planner=planner), r"planner_config\.json was changed"


def _deleted_run_tokenizer(env, tmp):
    run = _copy(env, tmp, "run")
    shutil.rmtree(run / "tokenizer")
    return _evaluate(env, tmp, run), r"missing tokenizer/"


def _moved_run_without_corpus(env, tmp):
    run = _copy(env, tmp, "run")  # copied away from its prepared corpus, which is then not where it was recorded
    m = json.loads((run / "manifest.json").read_text())
    m["inputs"]["prepared"].update(path="gone/prep", abspath=str(tmp / "gone" / "prep"), relpath="../gone/prep")
    (run / "manifest.json").write_text(json.dumps(m))
    return _generate(env, tmp, run=run), r"is damaged|no longer there.*--prepared"


def _malicious_resume(env, tmp):
    ckpt = tmp / "out.work" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(pickle.dumps(Exploit()))
    return _finetune(env, tmp, "--resume", "true"), r"last\.ckpt holds objects other than plain data"


class Exploit:
    def __reduce__(self):
        return (os.mkdir, ("/tmp/planlm-pwned-by-a-checkpoint",))


def _resume_changed_lr(env, tmp):
    import dataclasses

    import torch

    from planlm.stages.finetune import FinetuneConfig
    from planlm.train.start import WindowConfig
    from planlm.train.trainer import OptimConfig

    work = tmp / "out.work"
    (work / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 1}, work / "checkpoints" / "last.ckpt")
    # what the interrupted run recorded: the same command line but --optim.lr 5e-4
    interrupted = FinetuneConfig(
        prepared=Path(env["prepared"]), lm=env["lm"], planner=Path(env["planner"]), checkpoint_every=1000,
        optim=OptimConfig(lr=5e-4, batch_size=4, max_steps=2),
        windows=WindowConfig(context_length=32, stride=31, max_val_windows=4),
    )
    (work / "config.json").write_text(json.dumps(dataclasses.asdict(interrupted), default=str))
    return _finetune(env, tmp, "--resume", "true"), r"another config than the interrupted run \(optim.lr changed\)"


def _user_file_in_prepared(env, tmp):
    prep = _copy(env, tmp, "prepared")
    (prep / "notes.txt").write_text("my notes on the clusters")
    argv = _prepare(tmp, _jsonl(tmp, [{"text": "A b."}]), "--force", "true")
    argv[argv.index("--out") + 1] = str(prep)
    return argv, r"holds files that its manifest\.json does not list \(notes\.txt\).*move them"


def _user_file_in_run(env, tmp):
    run = _copy(env, tmp, "run")
    (run / "tokenizer" / "my_vocab_notes.md").write_text("notes")
    argv = _finetune(env, tmp, "--force", "true")
    argv[argv.index("--out") + 1] = str(run)
    return argv, r"does not list \(tokenizer/my_vocab_notes\.md\)"


def _truncated_exemplars(env, tmp):
    prep = _copy(env, tmp, "prepared")
    _truncate(prep / "exemplars.json")
    return ["actions", "show", prep], r"exemplars\.json was changed"


def _unhashed_truncated_exemplars(env, tmp):
    prep = _copy(env, tmp, "prepared")
    _strip_hashes(prep)
    _truncate(prep / "exemplars.json")
    return ["actions", "show", prep], r"exemplars\.json is damaged"


def _swapped_centroids_shown(env, tmp):
    prep = _copy(env, tmp, "prepared")
    shutil.copy(Path(env["other"]) / "centroids.npy", prep / "centroids.npy")
    return ["actions", "show", prep], r"centroids\.npy was changed"


def _run_with_own_lm(env, tmp) -> tuple[Path, Path]:
    """A copy of the run and of its base LM, the run's manifest saying it was trained on that copy."""
    run, lm = _copy(env, tmp, "run"), _copy(env, tmp, "lm")
    m = json.loads((run / "manifest.json").read_text())
    m["inputs"]["lm"].update(path=str(lm), abspath=str(lm))
    (run / "manifest.json").write_text(json.dumps(m))
    return run, lm


def _zero_weights(lm: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(lm / "model.safetensors")
    save_file({k: v * 0 for k, v in weights.items()}, lm / "model.safetensors", metadata={"format": "pt"})


def _zeroed_lm_evaluate(env, tmp):
    run, lm = _run_with_own_lm(env, tmp)
    _zero_weights(lm)
    return _evaluate(env, tmp, run), r"run's base LM .*lm changed since training \(content hash"


def _zeroed_lm_generate(env, tmp):
    run, lm = _run_with_own_lm(env, tmp)
    _zero_weights(lm)
    return _generate(env, tmp, run=run), r"run's base LM .*lm changed since training \(content hash"


def _lm_of_another_seed(env, tmp):
    run, lm = _run_with_own_lm(env, tmp)
    shutil.rmtree(lm)
    tiny_lm(lm, env["corpus"].texts, seed=1)  # the same recipe, another initialisation
    return _evaluate(env, tmp, run), r"base LM .* changed since training.*not the LM the run was trained on"


def _lm_gone(env, tmp):
    run, lm = _run_with_own_lm(env, tmp)
    shutil.rmtree(lm)
    m = json.loads((run / "manifest.json").read_text())
    m["inputs"]["lm"]["relpath"] = "../gone-lm"
    (run / "manifest.json").write_text(json.dumps(m))
    return _evaluate(env, tmp, run), r"base LM .*lm is no longer there \(tried"


def _out_is_own_planner(env, tmp):
    planner = _copy(env, tmp, "planner")
    return cli_args(dict(env, planner=str(planner)), planner, *FAST, "--force", "true"), r"holds a `train-planner`"


def _out_is_foreign_folder(env, tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "thesis.tex").write_text("years of work")
    return _finetune(env, tmp, "--force", "true"), r"did not write"


CASES = {
    # paths: missing, empty, of the wrong type
    "corpus file missing": lambda env, tmp: (_prepare(tmp, str(tmp / "nope.jsonl")), r"does not exist|not found|no such"),
    "corpus file empty": lambda env, tmp: (_prepare(tmp, _jsonl(tmp, [])), r"no article|empty|zero"),
    "prepare --out is a file": lambda env, tmp: (_out_file(tmp, _prepare(tmp, _jsonl(tmp, [{"text": "A b."}]))),
                                                 r"is a file"),
    "finetune --prepared missing": lambda env, tmp: (_finetune(env, tmp, prepared=tmp / "none"), r"does not exist"),
    "finetune --prepared is a file": lambda env, tmp: (
        _finetune(env, tmp, prepared=Path(env["prepared"]) / "centroids.npy"), r"not a planlm artifact|does not exist"),
    "evaluate --run missing": lambda env, tmp: (_evaluate(env, tmp, tmp / "none"), r"does not exist"),
    "--out inside a file": lambda env, tmp: (_out_file(tmp, _finetune(env, tmp), inside=True), r"which is a file"),
    "--config missing": lambda env, tmp: (["finetune", "--config", str(tmp / "none.yaml")], r"does not exist"),
    "--config not YAML": lambda env, tmp: (["finetune", "--config", _write(tmp / "c.yaml", b"optim: [1, 2\n")],
                                           r"config"),
    # corpora
    "invalid JSON line": lambda env, tmp: (_prepare(tmp, _jsonl(tmp, ['{"text": "A sentence here."', ])), r"line 1"),
    "missing text field": lambda env, tmp: (_prepare(tmp, _jsonl(tmp, [{"body": "A sentence."}])), r"no text field"),
    "whitespace-only texts": lambda env, tmp: (_prepare(tmp, _jsonl(tmp, [{"text": "   \n\t "}, {"text": ""}])),
                                               r"no article|empty"),
    "text is a number": lambda env, tmp: (_prepare(tmp, _jsonl(tmp, [{"text": 12345}])), r"is a int, not a string"),
    "text is an object": lambda env, tmp: (_prepare(tmp, _jsonl(tmp, [{"text": {"a": 1}}])), r"is a dict, not a string"),
    "random bytes named .parquet": lambda env, tmp: (
        _prepare(tmp, _write(tmp / "c.parquet", np.random.default_rng(0).bytes(2000))),
        r"c\.parquet is not a Parquet file"),
    "plain text named .jsonl.gz": lambda env, tmp: (
        _prepare(tmp, _write(tmp / "c.jsonl.gz", b'{"text": "A sentence."}\n')),
        r"c\.jsonl\.gz is not a valid gzip file.*drop \.gz from its name"),
    "truncated .jsonl.bz2": lambda env, tmp: (
        _prepare(tmp, _write(tmp / "c.jsonl.bz2", __import__("bz2").compress(b'{"text": "A b. C d."}\n' * 500)[:60])),
        r"c\.jsonl\.bz2 is not a valid bzip2 file"),
    "truncated .xml": lambda env, tmp: (
        _prepare(tmp, _write(tmp / "c.xml", b"<mediawiki><page><title>A</title><revision><text>Some text")),
        r"c\.xml is not a complete XML dump .*truncated"),
    "one JSON array instead of JSON Lines": lambda env, tmp: (
        _prepare(tmp, _write(tmp / "c.jsonl", b'[{"text": "A sentence."}, {"text": "Another."}]\n')),
        r"c\.jsonl holds a JSON array, not JSON Lines.*one object per line"),
    "pretty-printed JSON array": lambda env, tmp: (
        _prepare(tmp, _write(tmp / "c.json", b'[\n  {"text": "A sentence."}\n]\n')), r"JSON array, not JSON Lines"),
    "undecodable bytes only": lambda env, tmp: (_prepare(tmp, _write(tmp / "c.jsonl", b"\xff\xfe\xfa\n")), r"line 1"),
    "zero articles after min_chars": lambda env, tmp: (
        _prepare(tmp, _jsonl(tmp, [{"text": "Hi."}]), "--sentences.min_chars", "50"), r"no article"),
    # nonsense numbers
    "K <= 0": lambda env, tmp: (_prepare(tmp, _jsonl(tmp, [{"text": "A b."}]), "--num_actions", "0"), r"num_actions"),
    "K above train sentences": lambda env, tmp: (
        _prepare(tmp, _jsonl(tmp, [{"text": f"Sentence number {i} is here."} for i in range(6)]), "--num_actions",
                 "512"), r"512"),
    "split fractions > 1": lambda env, tmp: (
        _prepare(tmp, _jsonl(tmp, [{"text": "A b."}]), "--split.val", "0.8", "--split.test", "0.7"), r"split|val"),
    "lr <= 0": lambda env, tmp: (_finetune(env, tmp, "--optim.lr", "-1"), r"lr must be positive"),
    "lr nan": lambda env, tmp: (_finetune(env, tmp, "--optim.lr", "nan"),
                                r"^planlm: error: finetune: optim\.lr must be a finite number \(got nan\)$"),
    "lr -inf": lambda env, tmp: (_finetune(env, tmp, "--optim.lr", "-inf"), r"finetune: optim\.lr must be a finite"),
    "lr 1e999": lambda env, tmp: (_finetune(env, tmp, "--optim.lr=1e999"), r"finetune: optim\.lr must be a finite"),
    "planner lr inf": lambda env, tmp: (
        ["train-planner", "--prepared", env["prepared"], "--out", str(tmp / "out"), "--optim.lr", "inf",
         "--planner.context_sentences", "3"], r"train-planner: optim\.lr must be a finite number \(got inf\)"),
    "pretrain lr nan": lambda env, tmp: (
        ["pretrain-lm", "--prepared", env["prepared"], "--out", str(tmp / "out"), "--preset", "tiny",
         "--optim.lr", "nan"], r"pretrain-lm: optim\.lr must be a finite number"),
    "mtp-compare lr inf": lambda env, tmp: (
        ["mtp-compare", "--prepared", env["prepared"], "--out", str(tmp / "out"), "--preset", "tiny",
         "--optim.lr", "inf"], r"mtp-compare: optim\.lr must be a finite number"),
    "mtp-compare lr .nan (past the parser)": lambda env, tmp: (
        ["mtp-compare", "--prepared", env["prepared"], "--out", str(tmp / "out"), "--preset", "tiny",
         "--optim.lr", ".nan"], r"mtp-compare: optim\.lr must be a finite number"),
    "myopia lm lr nan": lambda env, tmp: (
        ["myopia", "lm", "--prepared", env["prepared"], "--out", str(tmp / "out"), "--budget.optim.lr", "nan"],
        r"myopia lm: budget\.optim\.lr must be a finite number"),
    "myopia dp lr .nan": lambda env, tmp: (["myopia", "dp", "--out", str(tmp / "out"), "--dp.lr", ".nan"],
                                           r"myopia dp: dp\.lr must be a finite number"),
    "myopia dp frequency inf": lambda env, tmp: (["myopia", "dp", "--out", str(tmp / "out"), "--dp.frequency", "inf"],
                                                 r"myopia dp: dp\.frequency must be a finite number"),
    "grad_clip negative": lambda env, tmp: (_finetune(env, tmp, "--optim.grad_clip", "-1"),
                                            r"optim\.grad_clip must be >= 0 \(0 = no clipping"),
    "myopia dp duplicate seeds": lambda env, tmp: (["myopia", "dp", "--out", str(tmp / "out"), "--seeds", "1,1"],
                                                   r"myopia dp: seeds must be distinct \(got \[1, 1\]\)"),
    "myopia lm duplicate seeds": lambda env, tmp: (
        ["myopia", "lm", "--prepared", env["prepared"], "--out", str(tmp / "out"), "--seeds=0, 2,0"],
        r"myopia lm: seeds must be distinct"),
    "run duplicate variants": lambda env, tmp: (["run", "--out", str(tmp / "out"), "--variants", "Fixed,Fixed"],
                                                r"run: --variants names 'Fixed' more than once"),
    "run unknown variant": lambda env, tmp: (
        ["run", "--out", str(tmp / "out"), "--variants", "Fixed,fixd"],
        r"unknown variants 'fixd'; choose from Fixed, Uniform, .*'A,B' or '\[A, B\]'"),
    "run variant of the wrong case": lambda env, tmp: (
        ["run", "--out", str(tmp / "out"), "--variants", "cornille pa"], r"'cornille pa' \(did you mean 'Cornille PA'\?\)"),
    "batch 0": lambda env, tmp: (_finetune(env, tmp, "--optim.batch_size", "0"), r"batch_size"),
    "context length 1": lambda env, tmp: (_finetune(env, tmp, "--windows.context_length", "1"), r"context_length"),
    "max_steps 0": lambda env, tmp: (_finetune(env, tmp, "--optim.max_steps", "0"), r"max_steps must be positive"),
    "pretrain max_steps 0": lambda env, tmp: (
        ["pretrain-lm", "--prepared", env["prepared"], "--out", str(tmp / "out"), "--preset", "tiny",
         "--optim.max_steps", "0"], r"max_steps must be positive"),
    # mismatched artifacts
    "planner of another K": lambda env, tmp: (_finetune(env, tmp, planner=env["planner_k4"]), r"num_actions"),
    "planner of another encoder width": lambda env, tmp: (_finetune(env, tmp, planner=env["planner_d8"]),
                                                          r"encoder_dim"),
    "planner of another corpus, same K and width": lambda env, tmp: (
        _finetune(env, tmp, planner=env["other_planner"]), r"was built from the prepared .*not from"),
    "run evaluated on another corpus": lambda env, tmp: (
        _evaluate(env, tmp, None, "--prepared", env["other"]), r"other writing actions than the run.*centroids"),
    "K=2 with one train sentence": lambda env, tmp: (
        _prepare(tmp, _jsonl(tmp, [{"text": f"Article number {i} is here."} for i in range(3)]), "--num_actions", "2"),
        r"^(?!.*use --num_actions 2).*train split has 1 sentence, too few"),
    "K=2 of identical sentences": lambda env, tmp: (
        _prepare(tmp, _jsonl(tmp, [{"text": "Same words here. Same words here."}] * 5), "--num_actions", "2"),
        r"^(?!.*use --num_actions 2).*same embedding"),
    "truncated manifest.json": _truncated_manifest,
    "empty manifest.json": _empty_manifest,
    "edited manifest": _edited_manifest,
    "truncated safetensors": _truncated_planner,
    "overwritten safetensors bytes": _overwritten_planner_bytes,
    "edited planner_config.json": _edited_planner_config,
    "file missing inside an artifact": _missing_centroids,
    "truncated safetensors, no hashes recorded": _unhashed_truncated_planner,
    "edited planner_config.json, no hashes recorded": _unhashed_edited_planner_config,
    "pickled centroids.npy, no hashes recorded": _unhashed_pickled_centroids,
    "embeddings.npy of another size, no hashes recorded": _unhashed_swapped_embeddings,
    "planner whose context was counted with another LM": _planner_of_another_lm,
    "sentences.parquet from another corpus": _swap_sentences,
    "truncated embeddings.npy": _truncated_embeddings,
    "pickled centroids.npy": _pickle_centroids,
    "deleted run tokenizer/": _deleted_run_tokenizer,
    "moved run, corpus not found": _moved_run_without_corpus,
    # outputs that must never be deleted, resumes that must not mix configs, checkpoints that are code
    "finetune --out is its own --planner": _out_is_own_planner,
    "finetune --out is a foreign folder": _out_is_foreign_folder,
    "resume with a changed lr": _resume_changed_lr,
    "malicious pickle as checkpoint": _malicious_resume,
    "prepare --force over a user's file": _user_file_in_prepared,
    "finetune --force over a user's file": _user_file_in_run,
    # artifacts read without being checked
    "actions show of a truncated exemplars.json": _truncated_exemplars,
    "actions show of a truncated exemplars.json, no hashes recorded": _unhashed_truncated_exemplars,
    "actions show of swapped centroids.npy": _swapped_centroids_shown,
    "evaluate, the run's base LM zeroed": _zeroed_lm_evaluate,
    "generate, the run's base LM zeroed": _zeroed_lm_generate,
    "evaluate, the base LM rebuilt with another seed": _lm_of_another_seed,
    "evaluate, the base LM gone": _lm_gone,
    # generation
    "plan ids out of range": lambda env, tmp: (_generate(env, tmp, "--plan", "1,99"), r"not action ids"),
    "plan not numbers": lambda env, tmp: (_generate(env, tmp, "--plan", "a,b"), r"plan"),
    "whitespace-only prompt": lambda env, tmp: (_generate(env, tmp, "--prompt", "   "), r"prompt"),
    "generation window of 1": lambda env, tmp: (_generate(env, tmp, "--window", "1"), r"window must be"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(env, tmp_path, capsys, case):
    argv, pattern = CASES[case](env, tmp_path)
    before = _snapshot(tmp_path, env["root"])
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"exit {rc}, stderr: {err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("planlm: error: "), err[-2000:]
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert "weights_only" not in lines[0] and "Traceback" not in err
    assert _snapshot(tmp_path, env["root"]) == before, "a refused command must write nothing"
    assert not (tmp_path / "out").exists() or case == "finetune --out is a foreign folder"
    assert not Path("/tmp/planlm-pwned-by-a-checkpoint").exists()


def test_at_least_25_kinds():
    assert len(CASES) >= 25


def test_a_moved_folder_of_runs_still_finds_its_corpus(env, tmp_path, capsys):
    """The run records its prepared corpus relative to itself too: move both elsewhere and generation still works;
    the run alone, away from its corpus, gets the one-line error above (case "moved run, corpus not found")."""
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("prep", "run"):
        shutil.copytree(env["root"] / name, moved / name)
    shutil.rmtree(moved / "run" / "logs", ignore_errors=True)  # logs are not content: not checked
    manifest = json.loads((moved / "run" / "manifest.json").read_text())
    assert manifest["inputs"]["prepared"]["relpath"] == "../prep"
    # the moved copy wins over the original (still at the recorded absolute path)
    assert resolve_input(moved / "run", manifest, "prepared", "--prepared") == moved / "prep"
    assert main(_generate(env, tmp_path, "--json", "true", run=moved / "run")) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0])["text"] is not None


def test_a_planner_counted_in_a_plain_hf_lm_folders_tokens_is_accepted(env, tmp_path):
    """An LM folder saved by transformers (no planlm manifest) is recorded by where it is, so the LM the planner
    counted its context with is recognised when the same folder comes back as --lm (and another one is refused)."""
    from planlm.stages.finetune import FinetuneConfig
    from planlm.train.start import check_planner_inputs

    planner = _planner_counted_with(env, tmp_path, env["lm"])
    config = lambda lm: FinetuneConfig(prepared=env["prepared"], lm=lm, planner=planner)  # noqa: E731
    check_planner_inputs(config(env["lm"]), env["corpus"])
    with pytest.raises(PlanlmError, match="counted its context in tokens of the LM"):
        check_planner_inputs(config(str(shutil.copytree(env["lm"], tmp_path / "other_lm"))), env["corpus"])


def test_a_bom_at_the_start_of_a_jsonl_file_is_not_content(tmp_path):
    from planlm.data.corpus import SourceConfig, read_corpus

    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"title": "T", "text": "A sentence here."}\n{"text": "Another one."}\n')
    articles, stats = read_corpus(SourceConfig(source=str(path)), progress=False)
    assert [(a.title, a.text) for a in articles] == [("T", "A sentence here."), ("c:2", "Another one.")]
    assert stats.undecodable_bytes == 0


def test_variants_and_seeds_read_comma_separated_lists():
    from planlm.cli import with_number_lists
    from planlm.stages.run import parse_variants
    from planlm.studies.myopia import myopia_dp

    assert parse_variants("Fixed, Cornille PA") == ["Fixed", "Cornille PA"]
    assert parse_variants("table1") == ["table1"] and parse_variants(["Fixed", "Uniform"]) == ["Fixed", "Uniform"]
    assert with_number_lists(myopia_dp, ["--seeds", "0,1", "--seeds=2, 3", "--out", "a,b"]) == \
        ["--seeds", "[0,1]", "--seeds=[2, 3]", "--out", "a,b"]


def test_unlisted_files_spare_nested_artifacts_and_planlms_own_files(tmp_path):
    from planlm.artifacts import unlisted_files

    art = tmp_path / "run"
    (art / "sub").mkdir(parents=True)
    (art / "weights.bin").write_bytes(b"1")
    (art / "sub" / "config.json").write_text("{}")
    m = write_manifest(art, "finetune", {})
    assert unlisted_files(art, m) == []
    (art / "evaluate").mkdir()  # `planlm evaluate RUN`'s default --out: a planlm artifact of its own
    (art / "evaluate" / "metrics.json").write_text("{}")
    write_manifest(art / "evaluate", "evaluate", {})
    (art / "logs").mkdir()
    (art / "logs" / "metrics.csv").write_text("step\n")
    (art / ".weights.bin.tmp-123").write_text("")
    (art / "tokens-0123456789abcdef").mkdir()  # a prepared corpus's token cache (planlm.data.alignment.TokenCache)
    (art / "tokens-0123456789abcdef" / "input_ids.bin").write_bytes(b"")
    assert unlisted_files(art, m) == []
    (art / "tokens-0123456789abcdef" / "notes.txt").write_text("x")
    assert unlisted_files(art, m) == ["tokens-0123456789abcdef/notes.txt"]
    (art / "tokens-0123456789abcdef" / "notes.txt").unlink()
    (art / "sub" / "mine.txt").write_text("x")
    (art / "evaluate" / "draft.md").write_text("x")
    assert unlisted_files(art, m) == ["evaluate/draft.md", "sub/mine.txt"]


def test_a_moved_run_uses_the_copy_of_its_base_lm_next_to_it(env, tmp_path, capsys):
    """A run and a byte-identical copy of its base LM moved elsewhere together: the copy is found relative to the
    run (and checked by content, not path) even when the LM at the recorded absolute path is gone."""
    from planlm.persist import load_run, resolve_base_lm

    moved = tmp_path / "elsewhere"
    for name in ("prep", "lm", "run"):
        shutil.copytree(env["root"] / name, moved / name)
    m = json.loads((moved / "run" / "manifest.json").read_text())
    assert m["inputs"]["lm"]["content_hash"] and m["inputs"]["lm"]["relpath"] == "../lm"
    m["inputs"]["lm"].update(path=str(tmp_path / "gone"), abspath=str(tmp_path / "gone"))  # the original is gone
    (moved / "run" / "manifest.json").write_text(json.dumps(m))
    assert resolve_base_lm(moved / "run", "unused") == (str(moved / "lm"), None)
    model, *_ = load_run(moved / "run", device="cpu")
    assert model.lm.config.n_embd == 32
    assert main(_evaluate(env, tmp_path, moved / "run")) == 0, capsys.readouterr().err[-2000:]


def test_a_run_without_a_recorded_lm_hash_still_loads(env, tmp_path):
    """Runs of an older planlm recorded their base LM by path only: loaded as recorded, unchecked."""
    from planlm.persist import load_run

    run = _copy(env, tmp_path, "run")
    m = json.loads((run / "manifest.json").read_text())
    m["inputs"]["lm"].pop("content_hash")
    (run / "manifest.json").write_text(json.dumps(m))
    model, *_ = load_run(run, device="cpu")
    assert model.config.base_lm == str(Path(env["lm"]).resolve())


def test_python_api_refuses_non_finite_numbers_too():
    from planlm.eval.generator import SamplingConfig
    from planlm.studies.myopia import DpConfig, validate_myopia_dp
    from planlm.train.trainer import OptimConfig

    assert "temperature must be a finite number (got nan)" in SamplingConfig(temperature=float("nan")).problems()
    assert any("grad_clip must be >= 0" in p for p in OptimConfig(grad_clip=-1.0).problems())
    assert not OptimConfig(grad_clip=0.0).problems()  # 0 = no clipping
    with pytest.raises(PlanlmError, match=r"dp\.frequency must be a finite number \(got inf\); \(2\) dp\.lr must be a finite"):
        validate_myopia_dp(DpConfig(lr=float("nan"), frequency=float("inf")), [0])
