"""`make gpu-check`'s script in its dry mode (CPU, tiny sizes): every section runs and the report is written,
so the GPU machine's one command cannot rot between the sessions that have a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import offline_env

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_passes_every_section(datasets, tiny_llm, tmp_path, netguard_log):
    out = tmp_path / "gpu-check.json"
    versions = sorted(p.name for p in (datasets["hdtf"]["data"] / "annotations").iterdir())
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry", "--data", str(datasets["hdtf"]["data"]),
         "--llm", str(tiny_llm), "--out", str(out)],
        capture_output=True, text=True, env=offline_env(netguard_log), timeout=1500, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry"] and report["ok"] and report["device"].startswith("cpu")
    names = [s["section"] for s in report["sections"]]
    assert len(names) == 5 and any("no checkpointing" in n for n in names) and any("vLLM" in n for n in names)
    by_name = {s["section"]: s["result"] for s in report["sections"]}
    train = [r for r in by_name.values() if r.get("benchmark") == "train"]
    assert {r["gradient_checkpointing"] for r in train} == {True, False} and all(
        r["latent"]["steps_per_s"] > 0 for r in train
    )
    [annotate] = [r for n, r in by_name.items() if "vLLM" in n]
    assert (
        annotate["n_accepted"] + annotate["n_repaired"] + annotate["n_rejected"] == 3
    )  # the demo's HDTF clips
    # The user's data folder is left as it was: the annotate section works on a copy.
    assert sorted(p.name for p in (datasets["hdtf"]["data"] / "annotations").iterdir()) == versions
