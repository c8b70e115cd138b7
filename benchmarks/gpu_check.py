"""`make gpu-check`: one script that checks a single-CUDA-GPU machine without internet, in about 8 minutes.

Sections (each a subprocess with its own time limit; a failure is recorded and the next section runs):
- training, SD-1.5's architecture with random weights (`tbd tiny-sd --arch sd15`), 512 px, bf16
  (`bench_train.py`): stage 1 settings (spatial layers, single frames, batch 8) and stage 2 settings
  (motion modules, 16 frames), gradient checkpointing on and off: steps/s and peak GPU memory;
- sampling at 64x64 latents, 16 frames (`bench_sampler.py --sd`): progressive guidance vs CFG, and the
  reference cache on vs off;
- vLLM on CUDA annotating the demo's HDTF clips with the `instruct_llm` asset (`tbd annotate --think.engine
  vllm`) through both runners (`actors`, `ray-llm`).
Writes one JSON file (`--out`) and prints a table. `--dry` runs every section on CPU at tiny sizes
(tiny-sd, 32 px, 4 frames, 2 steps; the annotate section with `tbd tiny-llm` and the `actors` runner, as
`ray-llm` needs a GPU) so the script is exercised by the test suite and cannot rot.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
TBD = str(Path(sys.executable).with_name("tbd"))


def sections(dry: bool, sd: Path, data: Path, llm: str) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit s) of every check."""
    train = [PY, str(HERE / "bench_train.py"), "--sd", str(sd)]
    if dry:
        tiny = ["--size", "32", "--steps", "2"]
        runs = [
            ("train stage 1 (spatial, 1 frame, batch 2)", [*train, *tiny, "--trainable", "spatial", "--frames", "1", "--batch", "2"]),
            ("train stage 2 (motion, 4 frames)", [*train, *tiny, "--trainable", "motion", "--frames", "4", "--checkpointing", "on"]),
            ("train stage 2, no checkpointing", [*train, *tiny, "--trainable", "motion", "--frames", "4", "--checkpointing", "off"]),
            ("sampler (8x8 latents, 4 frames)", [PY, str(HERE / "bench_sampler.py"), "--sd", str(sd), "--latent_size", "8", "--frames", "4", "--steps", "2"]),
        ]  # fmt: skip
        runners = ["actors"]
    else:
        runs = [
            ("train stage 1 (spatial, 1 frame, batch 8)", [*train, "--trainable", "spatial", "--frames", "1", "--batch", "8"]),
            ("train stage 2 (motion, 16 frames)", [*train, "--trainable", "motion", "--frames", "16", "--checkpointing", "on"]),
            ("train stage 2, no checkpointing", [*train, "--trainable", "motion", "--frames", "16", "--checkpointing", "off"]),
            ("sampler (64x64 latents, 16 frames)", [PY, str(HERE / "bench_sampler.py"), "--sd", str(sd), "--latent_size", "64", "--frames", "16", "--steps", "10"]),
        ]  # fmt: skip
        runners = ["actors", "ray-llm"]
    limit = 300 if dry else 120
    out = [(name, cmd, limit) for name, cmd in runs]
    for runner in runners:
        gpu = [] if dry else ["--num_gpus_per_worker", "1"]
        out.append((f"annotate, vLLM via {runner}", [TBD, "annotate", "--data", str(data), "--think.engine", "vllm",
                    "--think.model", llm, "--runner", runner, "--concurrency", "1", *gpu], 300 if dry else 150))  # fmt: skip
    return out


def run(name: str, cmd: list[str], limit: int) -> dict:
    """Run one section; its last JSON line (benchmarks) or the annotate job's counts."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"section": name, "ok": False, "error": f"over its {limit} s limit", "wall_s": limit}
    wall = round(time.perf_counter() - start, 1)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or not result:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"section": name, "ok": False, "error": " | ".join(tail), "wall_s": wall}
    return {"section": name, "ok": True, "wall_s": wall, "result": result}


def summary(row: dict) -> str:
    """The numbers of a section in one line."""
    r = row.get("result", {})
    if not row["ok"]:
        return f"FAILED: {row['error'][:160]}"
    if r.get("benchmark") == "train":
        latent = r.get("latent", {})
        return (f"{latent.get('steps_per_s')} steps/s, peak {latent.get('peak_gib')} GiB "
                f"({r.get('size')} px, {r.get('frames')} frames, batch {r.get('batch')}, bf16 {r.get('bf16')})")  # fmt: skip
    if r.get("benchmark") == "sampler":
        extra = (
            f", reference cache saves {r['reference_cache_saving']}x" if "reference_cache_saving" in r else ""
        )
        return (f"progressive / CFG {r['ratio']} ({1000 * r['progressive_s_per_step']:.1f} vs "
                f"{1000 * r['cfg_s_per_step']:.1f} ms/step){extra}")  # fmt: skip
    if "n_accepted" in r:
        n = r.get("n_accepted", 0) + r.get("n_repaired", 0) + r.get("n_rejected", 0)
        return f"{n} clips: {r['n_accepted']} accepted, {r.get('n_repaired', 0)} repaired, {r.get('n_rejected', 0)} rejected"
    return json.dumps(r)[:160]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="CPU, tiny sizes (the test suite's run)")
    ap.add_argument(
        "--data", help="an HDTF data folder with media shards (default: the demo's HDTF clips, built)"
    )
    ap.add_argument(
        "--llm",
        help="the LLM folder for the annotate section (default: the instruct_llm asset; --dry: tbd tiny-llm)",
    )
    ap.add_argument("--out", default="out/gpu-check.json")
    args = ap.parse_args()
    import torch

    if not args.dry and not torch.cuda.is_available():
        raise SystemExit(
            "gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False); --dry runs on CPU"
        )
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    sd = tmp / "sd"
    subprocess.run([TBD, "tiny-sd", "--out", str(sd), "--arch", "tiny" if args.dry else "sd15"], check=True,
                   capture_output=True)  # fmt: skip
    if args.data:
        data = tmp / "data"
        shutil.copytree(args.data, data)  # annotate adds a version: the user's folder stays as it was
    else:
        data = build_hdtf(tmp)
    llm = args.llm
    if llm is None and args.dry:
        subprocess.run([TBD, "tiny-llm", "--out", str(tmp / "llm")], check=True, capture_output=True)
        llm = str(tmp / "llm")
    if llm is None:
        from tbd_core import assets

        llm = str(assets.resolve("instruct_llm"))
    rows = []
    for name, cmd, limit in sections(args.dry, sd, data, llm):
        row = run(name, cmd, limit)
        rows.append(row)
        print(f"{name:48s} {row['wall_s']:7.1f} s  {summary(row)}", flush=True)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run: tiny sizes)"
    report = {"benchmark": "gpu-check", "date": datetime.date.today().isoformat(), "device": card,
              "dry": args.dry, "torch": torch.__version__, "sections": rows, "ok": all(r["ok"] for r in rows)}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{card}: {sum(r['ok'] for r in rows)}/{len(rows)} sections passed -> {args.out}")
    print(json.dumps({k: v for k, v in report.items() if k != "sections"}))
    raise SystemExit(0 if report["ok"] else 1)


def build_hdtf(tmp: Path) -> Path:
    """The demo corpus's HDTF clips, ingested and preprocessed (about a minute)."""
    corpus, data = tmp / "corpus", tmp / "data"
    steps = [
        [TBD, "demo-corpus", "--out", str(corpus), "--emotions", "[neutral]", "--levels", "[1]"],
        [TBD, "ingest", "--dataset", "hdtf", "--root", str(corpus / "hdtf"), "--out", str(data)],
        [TBD, "preprocess", "--data", str(data), "--media.crop_size", "64"],
    ]
    for cmd in steps:
        subprocess.run(cmd, check=True, capture_output=True)
    return data


if __name__ == "__main__":
    main()
