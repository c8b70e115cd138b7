"""Shared fixtures: the demo corpus is rendered once per session by the real CLI, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NETGUARD = Path(__file__).parent / "netguard"


def offline_env(log: Path) -> dict[str, str]:
    """Environment for a subprocess that must not reach the network (see tests/netguard)."""
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(NETGUARD), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "TBD_NETGUARD_LOG": str(log),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "http_proxy": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9",
            "NO_PROXY": "",
        }
    )
    return env


def run_tbd(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tbd", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(scope="session")
def netguard_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("netguard") / "attempts.log"


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory, netguard_log) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "demo"
    proc = run_tbd("demo-corpus", "--out", str(out), env=offline_env(netguard_log))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def analyzer():
    from pipelines.face import FaceAnalyzer

    with FaceAnalyzer() as fa:
        yield fa


@pytest.fixture(scope="session")
def astronaut():
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory, netguard_log) -> Path:
    """The tiny local stand-in LLM, built offline by the real CLI."""
    out = tmp_path_factory.mktemp("llm") / "tiny"
    proc = run_tbd("tiny-llm", "--out", str(out), env=offline_env(netguard_log))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


PREPROCESS_ARGS = ("--crop-size", "64", "--clips-per-shard", "8", "--concurrency", "2")


def tbd_ok(*args, log: Path, env_extra: dict | None = None) -> dict:
    proc = run_tbd(*args, env={**offline_env(log), **(env_extra or {})}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip().startswith("{") else {}


@pytest.fixture(scope="session")
def datasets(demo_corpus, tmp_path_factory, netguard_log):
    """Both layouts of the demo corpus, ingested, preprocessed and annotated with the facs engine."""
    out = {}
    for dataset in ("mead", "hdtf"):
        data = tmp_path_factory.mktemp(f"data_{dataset}")
        pin = ("--split", "W003=val") if dataset == "mead" else ()  # the demo's third identity validates
        root = str(demo_corpus / dataset)
        run = tbd_ok(
            "ingest", "--dataset", dataset, "--root", root, "--out", str(data), *pin, log=netguard_log
        )
        assert run == {}
        metrics = tbd_ok("preprocess", "--data", str(data), *PREPROCESS_ARGS, log=netguard_log)
        annotated = tbd_ok("annotate", "--data", str(data), log=netguard_log)
        out[dataset] = {"data": data, "preprocess": metrics, "annotate": annotated}
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """An exported tiny model: a checkpoint with untrained weights (training is covered by test_train.py)
    put through the real `export`."""
    import torch

    from tbd_lightning.export import export
    from tbd_lightning.module import TBDModule

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("model")
    module = TBDModule()
    media = {
        "fps": 25,
        "crop_margin": 1.8,
        "crop_size": 64,
        "n_mels": 80,
        "audio_encoder": None,
        "silence_dbfs": -50.0,
    }
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 0,
         "datamodule_hyper_parameters": {"frames": 4, "size": 32, "media": media, "text_encoder": None}},
        tmp / "untrained.ckpt",
    )  # fmt: skip
    export(tmp / "untrained.ckpt", tmp / "model")
    return tmp / "model"
