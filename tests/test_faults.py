"""Faults: a stage killed with SIGKILL mid-write leaves nothing at --out (only a hidden temporary sibling, removed by
the next run) and re-running (``--resume true`` for finetune) finishes; a second process on the same --out stops at
once with one line while the first finishes undisturbed.

Each test starts the stage as a subprocess on a tiny config, kills it while it is writing (its temporary folder or
its first checkpoint exists), then finishes the job in this process.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from finetune_env import cli_args, make_env
from helpers import assert_refused

from planlm.artifacts import lock_path, read_manifest, verify_artifact
from planlm.cli import main

QUIET = ["--trainer.accelerator", "cpu", "--trainer.progress_bar", "false"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = make_env(tmp_path_factory.mktemp("faults"), n_articles=12)
    corpus = e["root"] / "corpus.jsonl"  # a small real-text corpus for `prepare` (faster than the builtin one)
    corpus.write_text("".join(json.dumps({"title": t, "text": x}) + "\n" for t, x in zip(e["corpus"].titles, e["corpus"].texts)))
    e["prepare"] = ["--source.source", str(corpus), "--encoder.name", "fake:16", "--num_actions", "4",
                    "--sentences.n_process", "1", "--progress", "false"]
    return e


@pytest.fixture(scope="module")
def run(env):
    """A finished 1-step finetune run to evaluate."""
    out = env["root"] / "run"
    assert main(cli_args(env, out, "--optim.max_steps", "1", "--windows.max_val_windows", "2")) == 0
    return out


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "planlm.cli", *map(str, argv)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ})


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; True when it was killed before it finished on its own."""
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive


def _temps(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.tmp-*"))


def _killed_mid_write_then_rerun(out: Path, argv: list, attempts: int = 3) -> None:
    argv = [str(a) for a in argv]
    for _ in range(attempts):
        # On a busy CPU the stage can finish, or move its temporary into place, between the poll that saw the
        # temporary and the kill: such an attempt did not kill it mid-write, so it is repeated. A stage that writes
        # --out in place leaves a partial --out every time and fails below.
        if _kill_when(_start(argv), lambda: bool(_temps(out))) and _temps(out):
            break
        shutil.rmtree(out, ignore_errors=True)
        for temp in _temps(out):
            shutil.rmtree(temp, ignore_errors=True)
    else:
        raise AssertionError(f"the stage was not killed mid-write in {attempts} attempts (it finished first)")
    assert not out.exists(), "a killed stage must leave nothing under --out"
    assert _temps(out), "the kill should have hit the write (a temporary sibling exists)"
    assert main(argv) == 0  # the lock died with the killed process; the re-run finishes
    verify_artifact(out)  # complete, every recorded file hash matches
    assert not _temps(out), "the re-run removes the killed run's temporary folder"


def test_prepare_killed_mid_write(env, tmp_path):
    out = tmp_path / "prep"
    _killed_mid_write_then_rerun(out, ["prepare", "--out", out, *env["prepare"]])


def test_pretrain_lm_killed_mid_training(env, tmp_path):
    out = tmp_path / "lm"
    _killed_mid_write_then_rerun(out, ["pretrain-lm", "--prepared", env["prepared"], "--out", out, "--preset", "tiny",
                                       "--vocab_size", "300", "--optim.max_steps", "6", *QUIET])


def test_train_planner_killed_mid_training(env, tmp_path):
    out = tmp_path / "planner"
    _killed_mid_write_then_rerun(out, ["train-planner", "--prepared", env["prepared"], "--out", out,
                                       "--planner.context_sentences", "3", "--planner.ff", "32", "--optim.max_steps", "6",
                                       *QUIET])


def test_evaluate_killed_then_rerun(run, tmp_path):
    out = tmp_path / "eval"
    _killed_mid_write_then_rerun(out, ["evaluate", "--run", run, "--out", out, "--ppl.max_articles", "1",
                                       "--device", "cpu"])


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_finetune_killed_then_resumed_keeps_every_log_row_and_a_fresh_val_loss(env, tmp_path):
    out = tmp_path / "ft"
    # 12 articles, batch 4: a few steps per epoch; max_steps stops the second epoch midway.
    argv = cli_args(env, out, "--optim.epochs", "2", "--optim.max_steps", "5", "--checkpoint_every", "2",
                    "--windows.max_val_windows", "4")
    ckpt = tmp_path / "ft.work" / "checkpoints" / "last.ckpt"
    log = tmp_path / "ft.work" / "logs" / "metrics.csv"

    def past_checkpoint() -> bool:
        # killed after its step-2 checkpoint AND after it logged a later step: those rows must not appear twice.
        # (Lightning logs a step's row just after that step's checkpoint: a kill in between loses that one row.)
        try:
            return ckpt.exists() and any(r.get("train/loss") and int(r["step"]) >= 2 for r in _rows(log))
        except (OSError, ValueError, KeyError):
            return False

    proc = _start(argv)
    assert _kill_when(proc, past_checkpoint), "the run finished before its first checkpoint"
    assert not out.exists()
    assert main([*argv, "--resume", "true"]) == 0
    m = verify_artifact(out)
    steps = [int(r["step"]) for r in _rows(out / "logs" / "metrics.csv") if r.get("train/loss")]
    assert steps == list(range(m["counts"]["optimizer_steps"])), "metrics.csv keeps the rows from before the kill"
    # the val_loss reported is the final model's: a validation ran at the last step
    val = [r for r in _rows(out / "logs" / "metrics.csv") if r.get("val/loss")]
    assert float(val[-1]["val/loss"]) == pytest.approx(m["metrics"]["val_loss"])
    assert int(val[-1]["step"]) >= m["counts"]["optimizer_steps"] - 1


def test_second_writer_on_the_same_out_is_refused(env, tmp_path, capsys):
    out = tmp_path / "prep"
    argv = ["prepare", "--out", str(out), *env["prepare"]]
    first = _start(argv)
    lock = lock_path(out)
    deadline = time.time() + 120
    while first.poll() is None and time.time() < deadline:
        if lock.exists() and lock.read_text().strip() == str(first.pid):
            break
        time.sleep(0.005)
    assert first.poll() is None, "the first writer ended before the second could start"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"another planlm process (pid {first.pid}) is writing {out}" in err[0]
    assert first.wait(timeout=240) == 0, first.stderr.read().decode()[-2000:]
    assert read_manifest(out, "prepare") == verify_artifact(out)  # the first writer's artifact, whole
    assert not lock.exists()
    assert json.loads((out / "manifest.json").read_text())["counts"]["total"]["articles"] > 0


# ---- where --out cannot be written: a read-only filesystem, a full disk ---------------------------------------------
def test_an_empty_out_folder_holds_nothing_to_lose(env, tmp_path):
    out = tmp_path / "prep"
    out.mkdir()
    assert main(["prepare", "--out", out, *env["prepare"]]) == 0
    verify_artifact(out)


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(name, options)``: a tmpfs mounted at tmp_path/name (skips where mounting is not permitted)."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                               text=True, check=False)
        except FileNotFoundError:
            pytest.skip("no mount command here")
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:100]}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def _no_work(*args, **kwargs):
    raise AssertionError("the stage started working before it checked that --out can be written")


def test_read_only_out_is_refused_before_any_work(env, tmp_path, tmpfs, capsys, monkeypatch):
    import planlm.stages.prepare as prepare_stage

    ro = tmpfs("ro", "size=64k,ro")
    monkeypatch.setattr(prepare_stage, "load_encoder", _no_work)
    assert_refused(capsys, ["prepare", "--out", ro / "prep", *env["prepare"]],
                   rf"--out {ro}/prep cannot be written: {ro} is on a read-only file system", tmp_path)
    assert_refused(capsys, cli_args(env, ro / "runs" / "ft", "--optim.max_steps", "1"),
                   r"cannot be written: .* is on a read-only file system", tmp_path)


def test_full_disk_mid_write_is_one_line_and_leaves_nothing(env, tmp_path, tmpfs, capsys):
    full = tmpfs("full", "size=12k")  # room for the probe, not for the artifact
    assert_refused(capsys, ["prepare", "--out", full / "prep", *env["prepare"]],
                   # the writer's own words differ by version (pyarrow 16: "Error writing bytes ... [errno 28] No space
                   # left on device"): the point is one line saying the disk is full and nothing was left
                   rf"could not write {full}/prep \(.*No space left on device.*the partial output was removed",
                   tmp_path)
    assert not list(full.iterdir())


@pytest.mark.parametrize("code, says", [(errno.EROFS, "on a read-only file system"),
                                        (errno.ENOSPC, r"on a full disk \(no space left\)")])
def test_unwritable_out_is_refused_before_any_work_everywhere(env, tmp_path, capsys, monkeypatch, code, says):
    """The same checks without mounting anything: the probe write fails as the OS would make it fail."""
    import planlm.stages.prepare as prepare_stage
    from planlm import artifacts

    def probe(folder, prefix, size=4096):
        raise OSError(code, os.strerror(code), str(folder / prefix))

    monkeypatch.setattr(artifacts, "_probe_write", probe)
    monkeypatch.setattr(prepare_stage, "load_encoder", _no_work)
    assert_refused(capsys, ["prepare", "--out", tmp_path / "prep", *env["prepare"]],
                   rf"--out {tmp_path}/prep cannot be written: {tmp_path} is {says}; choose --out", tmp_path)


def test_disk_full_while_writing_the_artifact_everywhere(env, tmp_path, capsys, monkeypatch):
    import planlm.stages.prepare as prepare_stage

    real = prepare_stage.write_action_space

    def write_until_full(directory, *args, **kwargs):
        real(directory, *args, **kwargs)  # every data file is on disk when the disk fills up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(directory) / "manifest.json"))

    monkeypatch.setattr(prepare_stage, "write_action_space", write_until_full)
    assert_refused(capsys, ["prepare", "--out", tmp_path / "prep", *env["prepare"]],
                   r"could not write .*/prep \(No space left on device: .*manifest\.json\); the partial output was "
                   r"removed and nothing was written", tmp_path)
    assert not list(tmp_path.iterdir())


def _killed_after_first_checkpoint(env, tmp_path, *extra: str) -> tuple[list, Path]:
    out = tmp_path / "ft"
    argv = cli_args(env, out, "--optim.epochs", "3", "--checkpoint_every", "1", "--windows.max_val_windows", "2",
                    *extra)
    ckpt = tmp_path / "ft.work" / "checkpoints" / "last.ckpt"
    proc = _start(argv)
    assert _kill_when(proc, ckpt.exists), "the run finished before its first checkpoint"
    return argv, ckpt


def test_a_killed_finetune_rerun_without_resume_keeps_its_checkpoint(env, tmp_path, capsys):
    """Re-running a killed finetune without --resume stops with one line instead of deleting its checkpoint;
    --force true starts over."""
    argv, ckpt = _killed_after_first_checkpoint(env, tmp_path)
    assert_refused(capsys, argv, r"found a checkpoint at step \d+ in .*--resume true to continue, --force true to "
                                 r"start over", tmp_path)
    assert ckpt.exists()
    assert main([*argv, "--force", "true", "--optim.epochs", "1"]) == 0  # starts over (the checkpoint goes)
    assert not ckpt.parent.parent.exists() and (tmp_path / "ft" / "manifest.json").exists()


def test_finetune_never_deletes_a_users_out_work_folder(env, tmp_path, capsys):
    out = tmp_path / "ft"
    work = tmp_path / "ft.work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    argv = cli_args(env, out, "--optim.max_steps", "1")
    assert_refused(capsys, argv, r"ft\.work holds files planlm did not write \(notes\.txt\)", tmp_path)
    assert_refused(capsys, [*argv, "--force", "true"], r"planlm did not write", tmp_path)
    (work / "notes.txt").unlink()
    work.rmdir()
    work.write_text("a file")
    assert_refused(capsys, argv, r"ft\.work is a file", tmp_path)


def test_a_resume_checkpoint_of_the_wrong_structure_is_one_line(env, tmp_path, capsys):
    import torch

    argv, ckpt = _killed_after_first_checkpoint(env, tmp_path)
    torch.save({"something": 1}, ckpt)
    assert_refused(capsys, [*argv, "--resume", "true"], r"is not a finetune checkpoint", tmp_path)


def test_ctrl_c_is_interrupted_exit_130_and_keeps_the_checkpoint(env, tmp_path):
    out = tmp_path / "ft"
    argv = cli_args(env, out, "--optim.epochs", "50", "--checkpoint_every", "1", "--windows.max_val_windows", "2")
    ckpt = tmp_path / "ft.work" / "checkpoints" / "last.ckpt"
    proc = _start(argv)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before its first checkpoint"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert err.decode().strip().splitlines()[-1] == "planlm: interrupted"
    assert ckpt.exists() and not out.exists()


def test_report_refuses_an_edited_metrics_json_and_an_out_that_is_a_run(run, tmp_path, capsys):
    """`report` reads what `evaluate` wrote only while its hashes hold, and never replaces a run it reads."""
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / "fixed")
    assert main(["evaluate", "--run", runs / "fixed", "--ppl.max_articles", "1", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert_refused(capsys, ["report", runs, "--out", runs / "fixed", "--force", "true"],
                   r"would replace .*fixed.*, which this report reads", tmp_path)
    assert_refused(capsys, ["report", runs, "--out", runs, "--force", "true"], r"would replace", tmp_path)
    metrics = runs / "fixed" / "evaluate" / "metrics.json"
    m = json.loads(metrics.read_text())
    m["ppl"] = 1.5
    metrics.write_text(json.dumps(m))
    assert_refused(capsys, ["report", runs, "--out", tmp_path / "report"], r"metrics\.json", tmp_path)
