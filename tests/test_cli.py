import time
from pathlib import Path

from conftest import run_tbd

from tbd.commands import COMMANDS

TRAIN_CONFIGS = Path(__file__).parents[1] / "configs" / "train"


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


def test_the_text_chunks_advice_of_the_refusal_trains(datasets, tmp_path, netguard_log):
    """`tbd train` refuses texts longer than the model's CLIP windows and names the option to set; that
    option, as printed, typed on the command line, trains (it arrived as the string '2': a TypeError). The
    model reads the whole global sentence (`global_text: description`): the emotion alone fits one window."""
    import re

    import torch
    from conftest import offline_env

    from tbd_lightning.tiny_sd import write_tiny_sd

    sd = write_tiny_sd(tmp_path / "tiny-sd")
    root = tmp_path / "train"
    args = ("train", "--config", str(TRAIN_CONFIGS / "sd-tiny.yaml"), "--model.pretrained", str(sd),
            "--model.motion_adapter", str(sd / "motion_adapter"), "--data.data", str(datasets["mead"]["data"]),
            "--trainer.max_steps", "1", "--trainer.default_root_dir", str(root), "--data.num_workers", "0",
            "--data.size", "32", "--data.frames", "4", "--trainer.limit_val_batches", "1",
            "--data.text_cache", str(tmp_path / "text"),
            "--model.model_overrides", "{max_frames: 16, motion_heads: 2, text_chunks: 1, global_text: description}")  # fmt: skip
    env = {**offline_env(netguard_log), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    refused = run_tbd(*args, env=env)
    message = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    option, value = re.search(r"(?:--)?(model\.model_overrides\.\w+) (\S+)$", message).groups()
    trained = run_tbd(*args, f"--{option}", value, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    state = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    overrides = state["hyper_parameters"]["model_overrides"]
    assert state["global_step"] == 1 and overrides["text_chunks"] == int(value)  # an int, as a YAML gives


def test_an_unknown_or_badly_typed_model_override_is_one_line(tmp_path):
    """Overrides of the denoiser's fields are read as their types, or refused naming the key and the type."""
    common = ("train", "--config", str(TRAIN_CONFIGS / "tiny.yaml"), "--data.data", str(tmp_path))
    for option, value, said in (
        ("heads", "four", "model.model_overrides.heads expects int, not 'four'"),
        ("attention_levels", "[true, x]", "attention_levels expects tuple[bool, ...], not [True, 'x']"),
        ("hedas", "4", "model.model_overrides.hedas: not a field of the 'tiny' denoiser"),
    ):
        proc = run_tbd(*common, f"--model.model_overrides.{option}", value)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert said in proc.stderr.strip().splitlines()[-1], proc.stderr[-1000:]
