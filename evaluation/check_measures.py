"""`tbd check-measures`: the measures themselves, on clips whose answer is known, before they grade a model.

Every clip of a split (the demo's: the held-out speaker's 15 clips, whole; one at a time, so a split of
any size fits in the memory of one clip) is shrunk to the model's size (`size`, default the tiny model's
48 px) and measured as `tbd evaluate` measures a generated clip (tracked
at that size, AUs against the speaker's neutral frame, speech AUs left out):
- the emotion classifier on calibrated AUs (`classify_emotion`, the nearest FACS prototype): accuracy on
  the real clips (the ceiling) and on the still reference (the floor: the speaker's neutral frame repeated);
- the FER2013 judge, which nobody here trained: its verdict on every level-3 clip and the neutral one, after
  the 0.32 s onset, a confusion matrix, and how many of its 7 classes it recognises;
- with the demo corpus (`corpus`): the calibrated AU error against the ground-truth timelines, and AU F1
  against each clip's AU specification (`evaluation.au_request`): the real clip (the ceiling), the still
  (the floor), and the label's FACS prototype drawn perfectly (`au_f1_label`: what a label alone can request
  of this clip, no video; the headroom a CoT has over it is 1 minus that). An AU reads present above the
  person's noise floor from their neutral clips (`au_request.person_floor`), which are then not AU-scored.
  The real clips are also read on a random half of their frames (`au_f1_real_half`): a clip measured on
  half its frames keeps its AU F1, so `au_request.MIN_FACE` (a face in under half the frames is lost) does
  not lower the ceiling.
Prints a line per clip, then the summary and whether the measures pass their bar (`BAR`); `out` gets it
all as JSON (`make demo`: out/demo/measures.json, which `tests/test_demo_output.py` holds to the bar; the
suite runs the same check on its own data).

The bar (declared 2026-12-04, before the fit/select/test calibration was measured): on the validation
speaker, a person the calibration was neither fitted nor selected on, the real clips (the ceiling) are told
from the still (the floor). Issue 23's bar (classifier >= 0.9) held only while that speaker was the training
photograph varied: the classifier's templates are the renderer's own lookup table, and on the same
photograph the calibration had been fitted on it read 15 of 15; on another person (the astronaut, with the
calibration of 2026-11-30) it read 5 of 15.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tbd_core.errors import UserError

ONSET = 12  # frames: the demo corpus's expressions reach their level after 0.32 s (8 frames) + margin
AU_ERROR_BAR = "AU error against the ground truth: real clips below the still"
AU_F1_BAR = "AU F1 against each clip's specification: real clips >= the still's + 0.25"
AU_F1_HALF_BAR = "AU F1 of real clips read on a random half of their frames >= their whole clips' - 0.05"
BAR = {
    "classifier accuracy on real clips >= 0.25 (twice chance over 8 emotions)": lambda m: m["classifier_accuracy_real"] >= 0.25,
    "classifier accuracy on real clips >= the still's + 0.15": lambda m: m["classifier_accuracy_real"] >= m["classifier_accuracy_still"] + 0.15,
    AU_ERROR_BAR: lambda m: m["au_gt_error_real"] is None or m["au_gt_error_real"] < m["au_gt_error_still"],
    "FER2013 recognises happy and sad on the real clips": lambda m: {"happy", "sad"} <= set(m["fer_classes_recognised_real"]),
    # Declared 2026-12-05 after one measurement with the person's floor (48 px: real 0.748 vs still 0.286 on the
    # default corpus, 0.802 vs 0.286 on corpus 3): half that margin
    AU_F1_BAR: lambda m: m["au_f1_real"] is None or m["au_f1_real"] >= m["au_f1_still"] + 0.25,
    # Declared 2026-12-07 before measuring it (`au_request.MIN_FACE`: a clip needs a face in half its frames)
    AU_F1_HALF_BAR: lambda m: m["au_f1_real"] is None or m["au_f1_real_half"] >= m["au_f1_real"] - 0.05,
}  # fmt: skip


class CheckMeasuresConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    data: Path
    corpus: Path | None = None  # the demo corpus (its corpus.json and groundtruth/), for the AU error
    split: str = "val"
    size: int = 48
    out: Path | None = None


def split_clips(data: Path, split: str) -> dict[str, dict]:
    """key -> sidecar summary (speaker, emotion, level, ...) of every clip of `split`; nothing decoded."""
    from pipelines.data_folder import DataFolder

    folder = DataFolder(data)
    clips = {k: s for k, s in folder.media_summaries().items() if s["split"] == split}
    if not clips:
        raise UserError(f"no clips of split {split!r} in {data} (clips per split: {folder.split_counts()})")
    return clips


def iter_split(data: Path, keys: list[str], size: int) -> Iterator[tuple[str, dict, np.ndarray]]:
    """(key, sample metadata, frames (T, size, size, 3) uint8) of each clip in `keys`, in that order, whole,
    one clip at a time: only its members are read (`pipelines.shards.ShardIndex`) and nothing is kept, so a
    split of any size is measured in the memory of one clip."""
    import cv2

    from pipelines.data_folder import DataFolder
    from pipelines.shards import ShardIndex
    from tbd_lightning.data import decode_mp4

    folder = DataFolder(data)
    where = {key: folder.media_dir / f"{shard['name']}.tar" for shard in folder.media_manifest()["shards"]
             for key in shard["keys"]}  # fmt: skip
    index = None
    try:
        for key in keys:
            if index is None or index.path != where[key]:
                if index is not None:
                    index.close()
                index = ShardIndex(where[key])
            frames = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                      for f in decode_mp4(index.read(key, "mp4"))]  # fmt: skip
            yield key, json.loads(index.read(key, "json")), np.stack(frames)
    finally:
        if index is not None:
            index.close()


def check_measures(config: CheckMeasuresConfig) -> dict:
    from evaluation.au_request import (
        clip_levels,
        detectable,
        expression_aus,
        person_floor,
        presence,
        score_request,
    )
    from evaluation.judges import FER_CLASSES, EmotionJudge, confusion
    from evaluation.measures import (
        classify_emotion,
        groundtruth_aus,
        groundtruth_index,
        groundtruth_specs,
        prototype_templates,
    )
    from evaluation.metrics import au_series_error
    from media.au_measure import track_still, track_video

    summaries = split_clips(config.data, config.split)
    keys = sorted(summaries)
    neutral_keys = [k for k in keys if summaries[k]["emotion"] == "neutral"]
    missing = {s["speaker"] for s in summaries.values()} - {summaries[k]["speaker"] for k in neutral_keys}
    if missing:
        raise UserError(
            f"speaker(s) {sorted(missing)} have no neutral clip in split {config.split!r}: no baseline"
        )
    judge, gt_index, specs = (
        EmotionJudge(),
        groundtruth_index(config.corpus),
        groundtruth_specs(config.corpus),
    )
    neutral, bases, calm = {}, {}, {}  # per speaker: still frame, its baseline, their neutral clips' AUs

    def measure(frames: np.ndarray, speaker: str):
        video = track_video(frames)
        return video, expression_aus(video, bases[speaker])

    # First the neutral clips: a speaker's still is the first frame of their first, and each person's AU
    # noise floor comes from all of them (`au_request.person_floor`); those clips are not AU-scored.
    for _, meta, frames in iter_split(config.data, neutral_keys, config.size):
        speaker = meta["speaker"]
        if speaker not in neutral:
            neutral[speaker], bases[speaker] = frames[0], track_still(frames[0]).baseline()
        calm.setdefault(speaker, []).append(measure(frames, speaker)[1])
    floors = {speaker: person_floor(readings) for speaker, readings in calm.items()}
    del calm
    rows, rng = [], np.random.default_rng(0)
    for key, meta, frames in iter_split(config.data, keys, config.size):  # one clip held at a time
        still = np.repeat(neutral[meta["speaker"]][None], len(frames), 0)
        source = str(Path(meta["video"]).resolve())
        gt, spec = gt_index.get(source), specs.get(source)
        row = {"key": key, "emotion": meta["emotion"], "level": meta["level"]}
        if meta["emotion"] == "neutral":
            row["au_floor_clip"], spec = True, None  # its readings are its person's floor
        for name, video_frames in (("real", frames), ("still", still)):
            video, measured = measure(video_frames, meta["speaker"])
            row[f"{name}_classified"] = classify_emotion(measured)
            row[f"{name}_fer"] = judge.verdict(video_frames[ONSET:], video.landmarks[ONSET:])
            if gt is not None:
                row[f"{name}_au_gt_error"] = au_series_error(groundtruth_aus(gt, len(frames)), measured)
            if spec is not None:
                least, present = detectable(video.iod_px), presence(video.iod_px, floors[meta["speaker"]])
                row[f"{name}_au"] = score_request(spec, clip_levels(measured), least, present)
                if name == "real":  # read on a random half of its frames (`au_request.MIN_FACE`'s validation)
                    half = np.sort(rng.permutation(len(frames))[: len(frames) // 2])
                    levels = clip_levels({au: [s[i] for i in half] for au, s in measured.items()})
                    row["real_half_au"] = score_request(spec, levels, least, present)
        if spec is not None:  # the label's prototype drawn perfectly: its intensities as the clip levels
            label = (meta["emotion"], 1 if meta["emotion"] == "neutral" else meta["level"])
            proto = prototype_templates()[label]
            row["label_au"] = score_request(spec, proto, least, present)
        rows.append(row)
        print(f"{key:45s} real: {row['real_classified']!s:9s} fer {row['real_fer']!s:8s}  "
              f"still: {row['still_classified']!s:9s} fer {row['still_fer']!s:8s}")  # fmt: skip
    out: dict = {"clips": len(rows), "size": config.size, "split": config.split, "rows": rows}
    judged = [r for r in rows if r["level"] == 3 or r["emotion"] == "neutral"]  # contempt: `confusion` skips
    for name in ("real", "still"):
        out[f"classifier_accuracy_{name}"] = float(
            np.mean([r[f"{name}_classified"] == r["emotion"] for r in rows])
        )
        errors = [r[f"{name}_au_gt_error"] for r in rows if r.get(f"{name}_au_gt_error") is not None]
        out[f"au_gt_error_{name}"] = float(np.mean(errors)) if errors else None
        scored = [r[f"{name}_au"]["au_f1"] for r in rows if f"{name}_au" in r]
        out[f"au_f1_{name}"] = float(np.mean(scored)) if scored else None
        counts = confusion([{"fer_label": r[f"{name}_fer"]} for r in judged], [r["emotion"] for r in judged])
        out[f"fer_confusion_{name}"] = counts
        out[f"fer_classes_recognised_{name}"] = sorted(c for c in FER_CLASSES if counts.get(c, {}).get(c, 0))
    halves = [r["real_half_au"]["au_f1"] for r in rows if "real_half_au" in r]
    out["au_f1_real_half"] = float(np.mean(halves)) if halves else None
    labelled = [r["label_au"]["au_f1"] for r in rows if "label_au" in r]
    out["au_f1_label"] = float(np.mean(labelled)) if labelled else None
    if labelled:
        print(f"AU F1 against each clip's specification: real {out['au_f1_real']:.3f}, still "
              f"{out['au_f1_still']:.3f}, the label's prototype drawn perfectly {out['au_f1_label']:.3f}; the real "
              f"clips read on a random half of their frames {out['au_f1_real_half']:.3f}")  # fmt: skip
    out["bar"] = {name: bool(check(out)) for name, check in BAR.items()}
    out["passed"] = all(out["bar"].values())
    for name, ok in out["bar"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if config.out:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(json.dumps(out, indent=1))
    return out
