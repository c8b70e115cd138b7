import time

from conftest import run_tbd

from tbd.cli import SUBCOMMANDS


def test_help_lists_every_subcommand_quickly():
    started = time.time()
    proc = run_tbd("--help")
    assert proc.returncode == 0
    for name in SUBCOMMANDS:
        assert name in proc.stdout
    assert time.time() - started < 30  # lazy imports: no stage is loaded for --help


def test_unknown_subcommand_fails():
    proc = run_tbd("no-such-command")
    assert proc.returncode != 0
    assert "invalid choice" in proc.stderr
