"""Scale rehearsal (issue 39): does per-clip bookkeeping stay flat from hundreds to thousands of clips, and
what would full MEAD and HDTF cost?

A synthetic MEAD-layout dataset of each size in `--clips` (default 500 and 5,000) is built from one small
demo corpus (`tbd demo-corpus --seconds 1`: 3 identities x 15 clips of 25 frames at 128 px) replicated
over as many speakers as it takes, with hard links: the media repeat, the paths, keys, speakers and splits
do not, so ingest, shard plans, sidecars, manifests, ledgers, resume and annotation versions see N clips.
Each size goes through the real commands, each timed from the outside (start-up included):
ingest -> preprocess (Ray, 2 workers) -> preprocess again (resume over the finished folder) -> annotate
(facs) -> a second annotation version (facs with a copied prompt template: a new version beside the first)
-> `tbd annotations --report` -> `--train_steps` training steps of the tiny model on the second version.
Flat means seconds per clip at the largest size within 1.2x of the smallest for every stage (training:
seconds per step, its start-up reading the folder included).

The projection: preprocess's rate on MEAD-size video (1920x1080 at 30 fps, `bench_preprocess.corpus_1080p`,
one process on this machine) and annotate's per-clip rate from the largest rehearsal give the node-hours of
full MEAD (front view, `--mead_clips` clips of `--mead_seconds` s) and HDTF (`--hdtf_hours` hours, taken at
1080p: an upper bound for its 720p-1080p videos), for a node like this one (2 cores) and per core. The
facs engine stands in for the LLM: vLLM's rate is a GPU's (`bench_annotate.py`, `make gpu-check`).
Prints a table and one JSON line. Takes about 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TBD = str(Path(sys.executable).with_name("tbd"))
FLAT = 1.2  # seconds per clip at the largest size / at the smallest: flat up to this


def tbd(*args: str, cwd: Path | None = None) -> tuple[float, str]:
    """Run `tbd args` (seconds, stdout); its stderr goes to a log beside, printed on failure."""
    start = time.perf_counter()
    proc = subprocess.run([TBD, *args], capture_output=True, text=True, cwd=cwd)
    if proc.returncode:
        raise SystemExit(f"tbd {' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout


def source_corpus(tmp: Path) -> dict[str, list[Path]]:
    """The demo corpus's MEAD clips per identity folder (relative paths of the videos, neutral first)."""
    out = tmp / "source"
    tbd("demo-corpus", "--out", str(out), "--seconds", "1", "--hdtf_clips", "0")
    mead = out / "mead"
    clips = {}
    for speaker in sorted(p.name for p in mead.iterdir() if p.is_dir()):
        videos = sorted(
            (mead / speaker / "video").rglob("*.mp4"), key=lambda p: ("neutral" not in p.parts, p)
        )
        clips[speaker] = [v.relative_to(mead / speaker) for v in videos]
    return clips


def replicate(source: Path, clips: dict[str, list[Path]], root: Path, n: int) -> int:
    """A MEAD layout of `n` clips under `root`: speakers M0001, M0002, ... each holding one source identity's
    clips (neutral first, so every speaker has a baseline), as hard links of the videos and their audio."""
    identities, made, speaker = list(clips), 0, 0
    while made < n:
        name, rels = identities[speaker % len(identities)], clips[identities[speaker % len(identities)]]
        speaker += 1
        for rel in rels[: n - made]:
            video = root / f"M{speaker:04d}" / rel
            audio_rel = Path("audio", *rel.parts[2:]).with_suffix(".m4a")  # video/front/e/l/x -> audio/e/l/x
            for src, dst in (
                (source / name / rel, video),
                (source / name / audio_rel, root / f"M{speaker:04d}" / audio_rel),
            ):
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
            made += 1
    return speaker


def rehearse(tmp: Path, clips: dict[str, list[Path]], n: int, steps: int) -> dict:
    """Every stage on `n` clips: {stage: seconds}, with the clips and shards made."""
    from pipelines.data_folder import DataFolder

    root, data = tmp / f"mead-{n}", tmp / f"data-{n}"
    speakers = replicate(tmp / "source" / "mead", clips, root, n)
    template = tmp / "prompt_v2.yaml"
    if not template.exists():
        import yaml

        spec = yaml.safe_load((ROOT / "annotation/data/prompt_cot.yaml").read_text())
        spec["name"], spec["user"] = "rehearsal-v2", spec["user"] + "\n"  # the rendered prompt differs
        template.write_text(yaml.safe_dump(spec, sort_keys=False))
    seconds: dict[str, float] = {}
    seconds["ingest"], _ = tbd("ingest", "--dataset", "mead", "--root", str(root), "--out", str(data))
    pre = (
        "preprocess",
        "--data",
        str(data),
        "--media.crop_size",
        "64",
        "--clips_per_shard",
        "16",
        "--concurrency",
        "2",
    )
    seconds["preprocess"], _ = tbd(*pre)
    seconds["preprocess_resume"], _ = tbd(*pre)
    seconds["annotate"], out = tbd("annotate", "--data", str(data))
    seconds["annotate_v2"], out2 = tbd("annotate", "--data", str(data), "--think.template", str(template))
    seconds["annotations_report"], _ = tbd("annotations", "--data", str(data), "--report", "true")
    version = json.loads(out2)["version"]
    assert version != json.loads(out)["version"], "the copied template made no new version"
    seconds["train"], _ = tbd("train", "--config", str(ROOT / "configs/train/tiny.yaml"), "--data.data", str(data),
                              "--data.version", version, "--trainer.max_steps", str(steps),
                              "--trainer.default_root_dir", str(tmp / f"train-{n}"),
                              "--data.text_cache", str(tmp / f"text-{n}"))  # fmt: skip
    manifest = json.loads((data / "media" / "manifest.json").read_text())
    rejects = len(DataFolder(data).ledger("preprocess"))
    return {"clips": n, "speakers": speakers, "samples": manifest["samples"], "rejects": rejects,
            "shards": len(manifest["shards"]), "seconds": {k: round(v, 2) for k, v in seconds.items()}}  # fmt: skip


def rate_1080p(tmp: Path, clips: int = 4) -> float:
    """Preprocess frames/s of one process on MEAD-size clips (`bench_preprocess.corpus_1080p`)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_preprocess import corpus_1080p

    from media.clip_media import MediaConfig, process_clip, process_clips
    from media.face import FaceAnalyzer
    from pipelines.ingest import IngestConfig, ingest

    refs, _ = ingest(IngestConfig(dataset="mead", root=corpus_1080p(tmp, clips), out=tmp / "data-1080p"))
    config = MediaConfig()  # the default 256 px crops
    with FaceAnalyzer() as fa:
        process_clip(refs[0], fa, config)  # warm-up
        start = time.perf_counter()
        frames = sum(r.meta["frames"] for _, rs in process_clips(refs, fa, config) for r in rs)
        return frames / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--train_steps", type=int, default=5)
    ap.add_argument("--mead_clips", type=int, default=40_000, help="MEAD's front-view clips")
    ap.add_argument("--mead_seconds", type=float, default=4.0, help="a MEAD clip's mean length (s)")
    ap.add_argument("--hdtf_hours", type=float, default=16.0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        clips = source_corpus(tmp)
        runs = []
        for n in args.clips:
            run = rehearse(tmp, clips, n, args.train_steps)
            runs.append(run)
            print(f"{n} clips ({run['speakers']} speakers, {run['shards']} shards, {run['samples']} samples, "
                  f"{run['rejects']} ledger rows): " + ", ".join(f"{k} {v:.1f} s" for k, v in run["seconds"].items()),
                  flush=True)  # fmt: skip
        fps = rate_1080p(tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    first, last = runs[0], runs[-1]
    per = {}
    for stage in first["seconds"]:
        unit = args.train_steps if stage == "train" else None
        a = first["seconds"][stage] / (unit or first["clips"])
        b = last["seconds"][stage] / (unit or last["clips"])
        per[stage] = {"unit": "step" if unit else "clip", "small": round(a, 5), "large": round(b, 5),
                      "ratio": round(b / a, 3), "flat": b / a <= FLAT}  # fmt: skip
    print(
        f"\nseconds per clip (training: per step), {first['clips']} vs {last['clips']} clips (flat: <= {FLAT}x)"
    )
    for stage, p in per.items():
        print(
            f"  {stage:20s} {p['small']:9.4f} {p['large']:9.4f}  {p['ratio']:5.2f}x  {'flat' if p['flat'] else 'GROWS'}"
        )
    annotate_per_clip = (last["seconds"]["annotate"] + last["seconds"]["annotate_v2"]) / 2 / last["clips"]
    projection = {}
    for name, frames, n_clips in (
        ("mead_front", args.mead_clips * args.mead_seconds * 25, args.mead_clips),
        (
            "hdtf",
            args.hdtf_hours * 3600 * 25,
            int(args.hdtf_hours * 3600 / 60),
        ),  # HDTF cut into 60 s segments
    ):
        pre_h = frames / fps / 3600  # one process on this 2-core node
        ann_h = n_clips * annotate_per_clip / 3600
        projection[name] = {"frames": int(frames), "clips": n_clips, "preprocess_node_h": round(pre_h, 1),
                            "annotate_facs_node_h": round(ann_h, 2), "core_h": round(2 * (pre_h + ann_h), 1)}  # fmt: skip
    print(f"\nprojection (preprocess at 1080p, 256 px crops: {fps:.1f} frames/s on this 2-core node; annotate "
          f"(facs): {1000 * annotate_per_clip:.1f} ms per clip)")  # fmt: skip
    for name, p in projection.items():
        print(f"  {name:10s} {p['frames']:>10,} frames {p['clips']:>7,} clips: preprocess {p['preprocess_node_h']} "
              f"node-h, annotate (facs) {p['annotate_facs_node_h']} node-h; {p['core_h']} core-h")  # fmt: skip
    ratio = max(p["ratio"] for p in per.values())
    print(json.dumps({"benchmark": "scale", "runs": runs, "per_unit": per, "ratio": ratio,
                      "flat": all(p["flat"] for p in per.values()), "preprocess_1080p_fps": round(fps, 1),
                      "projection": projection}))  # fmt: skip


if __name__ == "__main__":
    main()
