import time

from conftest import run_tbd

from tbd.commands import COMMANDS


def test_help_lists_every_subcommand_quickly():
    started = time.time()
    proc = run_tbd("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name in proc.stdout
    assert time.time() - started < 30  # lazy imports: no stage is loaded for --help


def test_unknown_subcommand_fails():
    proc = run_tbd("no-such-command")
    assert proc.returncode != 0
    assert "invalid choice" in proc.stderr


def test_options_are_generated_from_the_job_config():
    from pipelines.preprocess import PreprocessConfig

    proc = run_tbd("preprocess", "--help")
    assert proc.returncode == 0, proc.stderr
    for field in PreprocessConfig.model_fields:
        if field != "media":
            assert f"--{field}" in proc.stdout
    assert "--media.crop_size" in proc.stdout  # a nested config becomes dotted options


def test_a_bad_option_value_is_one_clear_line():
    proc = run_tbd("ingest", "--dataset", "voxceleb", "--root", ".", "--out", "x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "dataset" in proc.stderr and "voxceleb" in proc.stderr


def test_tbd_keeps_freed_memory_on_glibc():
    """`tbd` sets glibc's malloc thresholds (tbd_core.allocator); on this Linux/glibc machine it must take."""
    import platform

    from tbd_core.allocator import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        import pytest

        pytest.skip("not glibc")
    assert keep_freed_memory() is True


def test_app_serves_only_loopback_unless_told_and_lists_its_options():
    proc = run_tbd("app", "--help")
    assert proc.returncode == 0
    for option in ("--model", "--data", "--host", "--port", "--allow_remote", "--think.engine"):
        assert option in proc.stdout
    proc = run_tbd("app", "--host", "0.0.0.0")
    assert proc.returncode == 2 and "--allow_remote true" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
