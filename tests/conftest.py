"""Shared fixtures: the demo corpus is rendered once per session by the real CLI, offline."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

NETGUARD = Path(__file__).parent / "netguard"


# Native libraries' log files (tbd_core.native_log) of the suite's processes: not the user's cache.
os.environ.setdefault("TBD_LOG_DIR", tempfile.mkdtemp(prefix="tbd-test-native-logs-"))


@pytest.fixture(autouse=True)
def _tracking_uri_stays_put():
    """`mlflow.set_tracking_uri` (in a test, or a job run in-process) also sets $MLFLOW_TRACKING_URI, which
    every later `tbd` subprocess would inherit: runs would land in another test's store. Restore it."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


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


def tiny_conditions(mask=None):
    """`Conditions` for the tiny denoiser (one sample, 2 frames, 16 px, log-mel 80, MiniLM 384-d, 3 of 8
    local sentences valid), seeded: the same every call; `mask` the region mask (1, 2, 1, 16, 16) or None."""
    import torch

    from tbd_lightning.model import Conditions

    g = torch.Generator().manual_seed(3)
    return Conditions(
        torch.randn(1, 3, 16, 16, generator=g), torch.randn(1, 2, 80, generator=g), torch.randn(1, 384, generator=g),
        torch.randn(1, 8, 384, generator=g), torch.arange(8)[None] < 3, mask,
    )  # fmt: skip


def face_descriptors(images: dict):
    """{name: dlib's 128-d identity descriptor} of each portrait (H, W, 3) uint8 in `images`: the identity
    judge (`evaluation.judges.IdentityJudge`), aligned by the face mesh as evaluation aligns it."""
    from evaluation.judges import IdentityJudge
    from media.face import FaceAnalyzer

    judge, out = IdentityJudge(), {}
    with FaceAnalyzer() as fa:
        for name, image in images.items():
            mesh = fa.analyze(image).mesh
            out[name] = judge.descriptor(image, mesh.landmarks / image.shape[1])
    return out


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
    from media.face import FaceAnalyzer

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


PREPROCESS_ARGS = ("--media.crop_size", "64", "--clips_per_shard", "8", "--concurrency", "2")


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
        pin = (
            ("--split_overrides", "{W003: val}") if dataset == "mead" else ()
        )  # the demo's third identity validates
        root = str(demo_corpus / dataset)
        run = tbd_ok(
            "ingest", "--dataset", dataset, "--root", root, "--out", str(data), *pin, log=netguard_log
        )
        assert run["clips"] > 0 and run["rejected"] == 0  # the demo corpus has no bad files
        metrics = tbd_ok("preprocess", "--data", str(data), *PREPROCESS_ARGS, log=netguard_log)
        annotated = tbd_ok("annotate", "--data", str(data), log=netguard_log)
        out[dataset] = {"data": data, "preprocess": metrics, "annotate": annotated}
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """An exported tiny model: a checkpoint with untrained weights (training is covered by test_train.py)
    put through the real `export`."""
    from tbd_lightning.export import export_untrained

    return export_untrained(tmp_path_factory.mktemp("model"), frames=4, size=32)


@pytest.fixture(scope="session")
def varied(tmp_path_factory, netguard_log) -> tuple[Path, Path]:
    """Corpus 3 as `make thesis` renders it (`--variation true`: each clip's muscles drawn within its label,
    sentences in takes of two), small: happy and sad at level 3 and neutral, four clips each, of the two training people
    (and the held-out one, W003, who validates); ingested, preprocessed and annotated by the rule reasoner.
    (corpus, data folder)."""
    root = tmp_path_factory.mktemp("varied")
    proc = run_tbd("demo-corpus", "--out", str(root / "corpus"), "--variation", "true", "--emotions", "[happy, sad, neutral]",
                   "--levels", "[3]", "--clips_per_level", "4", "--hdtf_clips", "0", env=offline_env(netguard_log))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    tbd_ok("ingest", "--dataset", "mead", "--root", str(root / "corpus" / "mead"), "--out", str(root / "data"),
           "--split_overrides", "{W003: val}", log=netguard_log)  # fmt: skip
    tbd_ok("preprocess", "--data", str(root / "data"), *PREPROCESS_ARGS, log=netguard_log)
    tbd_ok("annotate", "--data", str(root / "data"), log=netguard_log)
    return root / "corpus", root / "data"


# Grace Hopper's sad takes (clips 0/1 one sentence, 2/3 another; AU4 in clips 0 and 2 only, so only the local
# text tells a take's two faces apart), her happy clip (the text partner) and W002's (the reference partner).
CONDITIONING_CLIPS = (
    "[mead_W001_sad_3_000, mead_W001_sad_3_001, mead_W001_sad_3_002, mead_W001_sad_3_003, "
    "mead_W001_happy_3_000, mead_W002_happy_3_000]"
)
CONDITIONING_GATES = "{speech: 0.2, text: 0.25, reference: 0.25, local: 0.25}"  # local gating too


def check_conditioning(
    data, out, netguard_log, *extra, max_frames: int = 24, gates: str = CONDITIONING_GATES
):
    """`tbd check-conditioning` on corpus 3's CONDITIONING_CLIPS as a user runs it, gating on every condition
    (local too): the process and its report (None when none was written). Its limit, 2700 s, is several times
    the overfit's unloaded time (about 8 min), so a loaded machine does not time it out."""
    proc = run_tbd("check-conditioning", "--data", str(data), "--clips", CONDITIONING_CLIPS, "--max_frames", str(max_frames),
                   "--thresholds", gates, "--out", str(out),
                   "--tracking_uri", f"sqlite:///{out.parent / 'mlflow.db'}", *extra,
                   env=offline_env(netguard_log), timeout=2700)  # fmt: skip
    report = out / "conditioning.json"
    return proc, json.loads(report.read_text()) if report.is_file() else None


@pytest.fixture(scope="session")
def overfit(varied, tmp_path_factory, netguard_log):
    """A model overfit by the conditioning check on CONDITIONING_CLIPS of corpus 3 for 500 steps at lr 3e-3,
    with the loss weighing the CoT's AU regions 5x (`region_weight`; configs/train/tiny.yaml: 1): a model that
    draws faces and follows its local text. Without the region weight the brows' few pixels hardly count and
    the two faces of a take are not told apart (local 0.13, and 0.09 at 250 steps; with it 1.14, 2026-12-06).
    (data folder, the check's output folder with `model/`, its report)."""
    import yaml

    _, data = varied
    out = tmp_path_factory.mktemp("check") / "overfit"
    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs/train/tiny.yaml").read_text())
    config["model"]["region_weight"] = 5.0
    overlay = out.parent / "tiny-regions.yaml"
    overlay.write_text(yaml.safe_dump(config, sort_keys=False))
    # Gating on speech, text and reference; local reported (its leak bound is not yet validated on real clips:
    # see test_an_overfit_model_follows_speech_text_reference_and_local_text)
    proc, report = check_conditioning(data, out, netguard_log, "--steps", "500", "--train_config", str(overlay),
                                      gates="{speech: 0.2, text: 0.25, reference: 0.25}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return data, out, report


@contextlib.contextmanager
def local_ray_head(num_cpus: int = 2):
    """A real Ray head with its job server, started for a test and killed after; yields
    (dashboard address, environment for `ray` commands)."""
    from annotation.engines.local_server import free_port

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    gcs, dash, agent, agent_grpc, runtime_env, metrics = (free_port() for _ in range(6))
    ray_tmp = Path(tempfile.mkdtemp(prefix="tbdray", dir="/tmp"))  # short: Ray's unix sockets live here
    # Every port explicit: Ray's fixed defaults (agent 52365...) may still be held by the local Ray of
    # an earlier test that is shutting down, and a head whose agent cannot bind never accepts jobs.
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={gcs}", f"--num-cpus={num_cpus}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
         "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the job server answers only once the head's job agent has registered
            try:
                urllib.request.urlopen(address + "/api/version", timeout=2)
                from ray.job_submission import JobSubmissionClient

                JobSubmissionClient(address).submit_job(entrypoint="true")
                break
            except (OSError, RuntimeError, ConnectionError):
                assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
                time.sleep(1)
        yield address, env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
