"""The `planlm` command: every subcommand documents itself, bad input ends in one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from planlm.cli import COMMANDS, main


def subcommands(commands=COMMANDS, prefix=()):
    for name, value in commands.items():
        if isinstance(value, dict):
            yield from subcommands(value, prefix + (name,))
        else:
            yield prefix + (name,)


def test_top_level_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert name in text


@pytest.mark.parametrize("command", list(subcommands()), ids=lambda c: " ".join(c))
def test_every_subcommand_has_documented_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text and "--config" in text
    # the function's docstring becomes the description: its first line is there
    assert len(text.splitlines()) > 8


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "planlm.cli", "run", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--preset" in done.stdout


def test_planlm_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["finetune", "--prepared", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("planlm: error:") and len(err.splitlines()) == 1 and "does not exist" in err
