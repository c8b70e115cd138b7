"""Peak memory against input length: preprocess of one 640x480 25 fps talking-head video and `tbd generate`
of one speech, each at 1, 2 and 4 minutes (`--minutes`), every run in a fresh process (peak RSS of that
process). Flat means the per-clip work holds a bounded window: preprocess cuts videos into
`segment_seconds` segments and streams frames; generate samples in batches of windows and streams the
decoded frames into the encoder. Also checks that every second of the video is accounted for (segments in
the shards + ledger spans). `ratio` = peak RSS at the longest input / at the shortest; prints one JSON line.

`--evaluate DATA --corpus CORPUS`: peak RSS of `tbd evaluate` against the number of clips instead (issue 39),
8 and 64 clips (`--clips`) of `--frames` frames (16) of DATA's `--split`, an untrained tiny model at
`--size` px (large frames make what a run keeps per clip visible), one denoising step, the progressive row with the real clips and the
still; each run in a fresh process. Bounded means each chunk of clips is scored and dropped.

`--calibrate`: peak RSS of `tbd calibrate --labels` on a DISFA-size folder built here: one subject of 4,845
frames of 1024x768 (DISFA's length and size; 11 GB decoded) and two of `--short_frames`, rendered faces with
AU2 and AU12 at random and DISFA-style label files. Bounded means each video is decoded and tracked a frame
at a time (`video_io.decode_frames`, `au_measure.track_frames`); the bar is 2 GB (issue 39).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tbd_lightning.export import export_untrained

CHILD_PREPROCESS = """
import json, sys
from media.clip_media import MediaConfig, process_clips
from media.face import FaceAnalyzer
from tbd_core.records import ClipRef, Reject
ref = ClipRef(key="long", dataset="mead", speaker="S001", emotion="neutral", level=1, clip="001",
              split="train", video=sys.argv[1], audio=sys.argv[2])
with FaceAnalyzer() as fa:
    [(_, results)] = process_clips([ref], fa, MediaConfig())  # as a job runs it: crop passes in a thread
seconds = sum(r.meta["frames"] / 25 for r in results if not isinstance(r, Reject))
seconds += sum(r.end - r.start for r in results if isinstance(r, Reject))
print(json.dumps({"segments": len(results), "rejects": sum(isinstance(r, Reject) for r in results),
                  "accounted_s": round(seconds, 3)}))
"""


def run_child(args: list[str]) -> tuple[float, str, float]:
    """(peak RSS MB, stdout, seconds) of a child run in a fresh parent (RUSAGE_CHILDREN is per parent)."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(p.stderr[-3000:] if p.returncode else ''); "
        "print(json.dumps([p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
        "time.perf_counter() - t, p.stdout]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", "import json; " + code, *args], capture_output=True, text=True, check=True
    )
    rc, rss_kb, seconds, out = json.loads(proc.stdout)
    if rc:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{proc.stderr}")
    return rss_kb / 1024, out, seconds


def talking_video(folder: Path, minutes: float) -> tuple[Path, Path]:
    """A 640x480 25 fps video of the astronaut nodding slowly, and 48 kHz speech-like audio."""
    import cv2
    from skimage import data

    from media.video_io import AUDIO_RATE, write_m4a, write_mp4

    face = cv2.resize(data.astronaut(), (320, 320))
    n = int(minutes * 60 * 25)

    def frames():
        for i in range(n):
            canvas = np.full((480, 640, 3), 90, np.uint8)
            dy = int(8 * np.sin(i / 25))
            canvas[80 + dy : 400 + dy, 160:480] = face
            yield canvas

    video, audio = folder / f"{minutes}min.mp4", folder / f"{minutes}min.m4a"
    write_mp4(video, frames(), fps=25, crf=23)
    t = np.arange(int(minutes * 60 * AUDIO_RATE)) / AUDIO_RATE
    write_m4a(
        audio,
        (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32),
    )
    return video, audio


def evaluate_memory(args, tmp: Path) -> None:
    """Peak RSS of `tbd evaluate` on `args.clips` clips each (fresh processes), and the ratio last / first."""
    tbd = str(Path(sys.executable).with_name("tbd"))
    model = export_untrained(tmp, frames=8, size=args.size)
    rows = []
    for n in args.clips:
        rss, _, seconds = run_child([tbd, "evaluate", "--model", str(model), "--data", args.evaluate,
                                     "--split", args.split, "--max_clips", str(n), "--max_frames", str(args.frames),
                                     "--guidance.steps", "1", "--ablations", "true", "--only_rows", "[progressive]",
                                     "--groundtruth", args.corpus, "--out", str(tmp / f"eval-{n}"),
                                     "--tracking_uri", f"sqlite:///{tmp / 'mlflow.db'}"])  # fmt: skip
        clips = len(json.loads((tmp / f"eval-{n}" / "evaluation.json").read_text())["clips"])
        rows.append({"clips": clips, "peak_rss_mb": round(rss), "wall_s": round(seconds, 1)})
        print(
            f"evaluate {clips} clips of {args.frames} frames at {args.size} px: peak RSS {rss:.0f} MB, {seconds:.0f} s"
        )
    ratio = round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3)
    print(json.dumps({"benchmark": "memory-evaluate", "size": args.size, "frames": args.frames, "evaluate": rows,
                      "ratio": ratio}))  # fmt: skip


def disfa_folder(folder: Path, frames: dict[str, int], width: int = 1024, height: int = 768) -> None:
    """DISFA-style subjects `name`.mp4 (`frames[name]` frames of width x height, 25 fps) with label files
    `name`_au2.txt and `name`_au12.txt: a rendered face (the built-in people, one per subject) scaled to 3/4
    of the height, 64 distinct random AU2/AU12 poses (the first neutral) cycled through; every 10th frame
    neutral. Frames are generated as they are encoded (nothing is held)."""
    import cv2

    from media.face import FaceAnalyzer
    from media.video_io import write_mp4
    from pipelines.demo_corpus.au_templates import CHANNELS
    from pipelines.demo_corpus.corpus import ExpressionRenderer, _prepare
    from pipelines.demo_corpus.portraits import builtin_portraits, identities

    rng, side = np.random.default_rng(0), height * 3 // 4
    people = identities(builtin_portraits(), len(frames))
    with FaceAnalyzer() as fa:
        for (name, n), person in zip(frames.items(), people, strict=True):
            x = np.zeros((64, len(CHANNELS)))
            x[1:, CHANNELS.index("AU2")] = np.where(rng.random(63) < 0.5, rng.uniform(1, 5, 63), 0)
            x[1:, CHANNELS.index("AU12_R")] = x[1:, CHANNELS.index("AU12_L")] = np.where(
                rng.random(63) < 0.5, rng.uniform(1, 5, 63), 0
            )
            poses = ExpressionRenderer(*_prepare(fa, person, 128)).frames(x)
            pick = [0 if i % 10 == 0 else i % 64 for i in range(n)]

            def video(pick=pick, poses=poses):
                for k in pick:
                    canvas = np.full((height, width, 3), 90, np.uint8)
                    y, x0 = (height - side) // 2, (width - side) // 2
                    canvas[y : y + side, x0 : x0 + side] = cv2.resize(
                        poses[k], (side, side), interpolation=cv2.INTER_CUBIC
                    )
                    yield canvas

            write_mp4(folder / f"{name}.mp4", video(), fps=25, crf=23)
            for au, channel in ((2, "AU2"), (12, "AU12_R")):
                values = x[pick, CHANNELS.index(channel)]
                (folder / f"{name}_au{au}.txt").write_text(
                    "\n".join(f"{i + 1},{v:.2f}" for i, v in enumerate(values))
                )


def calibrate_memory(args, tmp: Path) -> None:
    """Peak RSS of `tbd calibrate --labels` on a DISFA-size folder (`disfa_folder`), in a fresh process."""
    folder = tmp / "disfa"
    folder.mkdir()
    sizes = {"SN001": 4845, "SN002": args.short_frames, "SN003": args.short_frames}
    disfa_folder(folder, sizes)
    tbd = str(Path(sys.executable).with_name("tbd"))
    rss, _, seconds = run_child([tbd, "calibrate", "--labels", str(folder), "--out", str(tmp / "fit.json")])
    decoded_gb = sum(sizes.values()) * 1024 * 768 * 3 / 1e9
    print(f"calibrate --labels, subjects {sizes} at 1024x768 ({decoded_gb:.1f} GB decoded): "
          f"peak RSS {rss:.0f} MB, {seconds:.0f} s")  # fmt: skip
    print(json.dumps({"benchmark": "memory-calibrate", "frames": sizes, "size": [1024, 768],
                      "decoded_gb": round(decoded_gb, 1), "peak_rss_mb": round(rss), "wall_s": round(seconds, 1),
                      "bar_mb": 2048, "passed": rss < 2048}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 4])
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument(
        "--evaluate", help="a data folder: measure tbd evaluate against the number of clips instead"
    )
    ap.add_argument("--corpus", help="with --evaluate: the demo corpus (its ground truth)")
    ap.add_argument("--split", default="train", help="with --evaluate: the split the clips come from")
    ap.add_argument("--clips", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--size", type=int, default=192, help="with --evaluate: the untrained model's frame size")
    ap.add_argument("--frames", type=int, default=16, help="with --evaluate: frames per clip")
    ap.add_argument(
        "--calibrate", action="store_true", help="measure tbd calibrate --labels, DISFA-size, instead"
    )
    ap.add_argument(
        "--short_frames", type=int, default=250, help="with --calibrate: the two other subjects' frames"
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    if args.calibrate:
        return calibrate_memory(args, tmp)
    if args.evaluate:
        return evaluate_memory(args, tmp)
    result = {"benchmark": "memory", "minutes": args.minutes, "preprocess": [], "generate": []}
    tbd = str(Path(sys.executable).with_name("tbd"))
    model = None if args.skip_generate else export_untrained(tmp, frames=8, size=48)
    for minutes in args.minutes:
        video, audio = talking_video(tmp, minutes)
        rss, out, seconds = run_child([sys.executable, "-c", CHILD_PREPROCESS, str(video), str(audio)])
        counts = json.loads(out.strip().splitlines()[-1])
        row = {"minutes": minutes, "peak_rss_mb": round(rss), "wall_s": round(seconds, 1), **counts}
        result["preprocess"].append(row)
        print(f"preprocess {minutes} min: peak RSS {rss:.0f} MB, {seconds:.0f} s, {counts}")
        if model is not None:
            out_mp4 = tmp / f"gen-{minutes}.mp4"
            rss, _, seconds = run_child([tbd, "generate", "--image", _portrait(tmp),
                                         "--audio", str(audio), "--model", str(model), "--out", str(out_mp4),
                                         "--guidance.steps", "1", "--emotion", "happy"])  # fmt: skip
            report = json.loads(out_mp4.with_suffix(".json").read_text())
            result["generate"].append({"minutes": minutes, "peak_rss_mb": round(rss), "wall_s": round(seconds, 1),
                                       "video_seconds": report["seconds"], "speech_seconds": report["speech_seconds"]})  # fmt: skip
            print(
                f"generate   {minutes} min: peak RSS {rss:.0f} MB, {seconds:.0f} s, video {report['seconds']} s"
            )
    for stage in ("preprocess", "generate"):
        rows = result[stage]
        if rows:
            result[f"{stage}_ratio"] = round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3)
    result["ratio"] = result["preprocess_ratio"]
    print(json.dumps(result))


def _portrait(tmp: Path) -> str:
    from PIL import Image
    from skimage import data

    path = tmp / "face.png"
    if not path.is_file():
        Image.fromarray(data.astronaut()).save(path)
    return str(path)


if __name__ == "__main__":
    main()
