"""The measures themselves, on data where the answer is known: the demo corpus's validation clips.

Every validation clip (the held-out speaker of the demo MEAD data, whole clips) is shrunk to the model's
size (`--size`, default the tiny model's 48 px; preprocess crops at 64) and measured as `tbd evaluate`
measures generated clips:
- the calibrated emotion classifier (fitted on the training split's sidecars): accuracy on the real clips
  (the ceiling) and on the still reference (the floor: the speaker's neutral frame repeated);
- the FER2013 judge: its verdict on every level-3 clip (and the neutral one), a confusion matrix, and how
  many of its 7 classes it recognises;
- the calibrated AU error against the corpus's ground-truth timelines (emotion AUs; speech AUs left out)
  for the real clips and for the still.
Prints one JSON line (and a table): `--data` a preprocessed, annotated MEAD folder, `--corpus` its corpus
(default: what `make demo` wrote under out/demo).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    import cv2

    from evaluation.judges import FER_CLASSES, FER_OF, EmotionJudge
    from evaluation.measures import classifier_row, emotion_classifier, groundtruth_aus, groundtruth_index
    from evaluation.metrics import SPEECH_AUS, au_series_error
    from media.au_measure import measured_aus, track_video
    from pipelines.data_folder import DataFolder
    from pipelines.shards import tar_members
    from tbd_lightning.data import decode_mp4

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("out/demo/data/mead"), help="default: `make demo`'s")
    ap.add_argument("--corpus", type=Path, default=Path("out/demo/corpus"), help="default: `make demo`'s")
    ap.add_argument("--split", default="val")
    ap.add_argument("--size", type=int, default=48)
    args = ap.parse_args()
    if not (args.corpus / "corpus.json").is_file() or not args.data.is_dir():
        raise SystemExit(f"no demo corpus at {args.corpus} or data at {args.data}: run `make demo` first")

    folder = DataFolder(args.data)
    summaries = folder.media_summaries()
    keys = {k for k, s in summaries.items() if s["split"] == args.split}
    clips = {}
    for shard in folder.media_manifest()["shards"]:
        for key, members in tar_members(folder.media_dir / f"{shard['name']}.tar"):
            if key in keys:
                video = decode_mp4(members["mp4"])
                small = np.stack(
                    [cv2.resize(f, (args.size, args.size), interpolation=cv2.INTER_AREA) for f in video]
                )
                clips[key] = (json.loads(members["json"]), small)
    clf = emotion_classifier(args.data)
    judge = EmotionJudge()
    gt_index = groundtruth_index(args.corpus)
    neutral = {m["speaker"]: v[0] for m, v in clips.values() if m["emotion"] == "neutral"}
    rows = []
    for key, (meta, frames) in sorted(clips.items()):
        still = np.repeat(neutral[meta["speaker"]][None], len(frames), 0)
        reference = track_video(still[:1])
        base = reference.baseline()
        gt = gt_index.get(str(Path(meta["video"]).resolve()))
        row = {"key": key, "emotion": meta["emotion"], "level": meta["level"]}
        for name, video_frames in (("real", frames), ("still", still)):
            video = track_video(video_frames)
            row[f"{name}_classified"] = clf.predict(classifier_row(clf, video, base))[0]
            onset = slice(12, None)  # after the 0.32 s onset
            row[f"{name}_fer"] = judge.verdict(video_frames[onset], video.landmarks[onset])
            if gt is not None:
                measured = {a: v for a, v in measured_aus(video, base).items() if a not in SPEECH_AUS}
                row[f"{name}_au_gt_error"] = au_series_error(groundtruth_aus(gt, len(frames)), measured)
        rows.append(row)
    out: dict = {"clips": len(rows), "size": args.size}
    for name in ("real", "still"):
        out[f"classifier_accuracy_{name}"] = float(
            np.mean([r[f"{name}_classified"] == r["emotion"] for r in rows])
        )
        errors = [r[f"{name}_au_gt_error"] for r in rows if r.get(f"{name}_au_gt_error") is not None]
        out[f"au_gt_error_{name}"] = float(np.mean(errors)) if errors else None
        judged = [
            r for r in rows if FER_OF.get(r["emotion"]) and (r["level"] == 3 or r["emotion"] == "neutral")
        ]
        confusion: dict = {}
        for r in judged:
            confusion.setdefault(FER_OF[r["emotion"]], {}).setdefault(r[f"{name}_fer"], 0)
            confusion[FER_OF[r["emotion"]]][r[f"{name}_fer"]] += 1
        out[f"fer_confusion_{name}"] = confusion
        out[f"fer_classes_recognised_{name}"] = sorted(
            c for c in FER_CLASSES if confusion.get(c, {}).get(c, 0) > 0
        )
    for r in rows:
        print(f"{r['key']:45s} real: {r['real_classified']:9s} fer {r['real_fer']!s:8s}  "
              f"still: {r['still_classified']:9s} fer {r['still_fer']!s:8s}")  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
