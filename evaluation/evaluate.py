"""`tbd evaluate`: generate held-out clips from a reference portrait, their speech and CoT; compare with the real clip.

For each clip of the chosen split (annotation accepted or repaired, `max_clips` spread over the split):
the reference is the first frame of a neutral clip of the same speaker (`ReferenceBank`: never the target
clip, whose first frame may already show the emotion), the audio features and CoT come from the shards,
and the same seed is used for every guidance mode. Metrics (`evaluation.metrics`): PSNR (mean of per-frame
PSNR), SSIM, LMD (full, mouth), lip-sync proxy (offset-0 correlation, the best offset beside it),
AU-control error against the CoT, emotion accuracy of the nearest FACS prototype to the measured AUs,
face rate (with the real clips' face rate at the same size beside it), FID with a user-supplied network and
the standard Sync-C/D, LPIPS, FVD and CSIM from the user's weights (`evaluation.standard`; Fréchet distances
flagged when too few samples make the estimate rank-deficient), and
on the demo corpus the AU error against the ground-truth sidecar. With `ablations`, modes progressive /
single-stage / label-only / cfg (or no-masks, for a model trained without region masks) run on the same
clips and seeds and form one table, with a spread per row (`evaluation.report`). `cfg` is compared at
matched strength: with s_a = s_g = s_l it is single-stage without the region mask (a warning otherwise).
There is no no-masks row for a model trained with masks: removing them at sampling would measure an input
it never saw, not the value of masks (train with `data.region_masks: false` for that row). Results: a printed table, `OUT/evaluation.json`, an MLflow run
(metrics per mode, the JSON, a real-vs-generated strip and an AU timeline plot).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from evaluation.clips import Clip, load_clips
from evaluation.measures import (
    classify_emotion,
    counterfactual_emotion,
    emotion_templates,
    groundtruth_aus,
    groundtruth_index,
)
from evaluation.standard import StandardMetrics
from tbd_core.errors import UserError
from tbd_lightning.sampler import GuidanceConfig

log = logging.getLogger(__name__)
ABLATIONS = ("progressive", "single-stage", "label-only", "cfg")  # + no-masks for a model trained without
STILL = "reference-still"  # the floor: the reference frame repeated (no model)
THINK = "think-label"  # the deployed setting: the CoT thought from the label alone, as `tbd generate` does
REAL = "real"  # the ceiling: the real clip scored as if it were generated


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    model: Path
    data: Path
    version: str | None = None
    split: str = "test"
    max_clips: int = 8
    max_frames: int = 50
    max_frames_per_batch: int | None = None
    """The clips of a row are sampled together, at most this many frames per denoiser call. None: 16 on CPU
    (larger batches were slower on 2 cores: `benchmarks/bench_evaluate.py`), 512 on a GPU."""
    guidance: GuidanceConfig = GuidanceConfig(steps=20)  # ablations override only its mode
    seed: int = 0
    ablations: bool = False
    out: Path | None = None
    fid_net: Path | None = None
    """A TorchScript feature network (e.g. a local InceptionV3), for FID."""
    # The standard metrics, each from the user's weights (`evaluation.standard`; protocols in the report):
    syncnet: Path | None = None
    """syncnet_python's syncnet_v2.model: Sync-C / Sync-D."""
    lpips_backbone: Path | None = None
    """torchvision's AlexNet ImageNet weights (alexnet-owt-7be5be79.pth): LPIPS v0.1 with lpips' heads."""
    fvd_net: Path | None = None
    """I3D as TorchScript (StyleGAN-V's i3d_torchscript.pt): FVD on 16-frame clips at 224 px."""
    arcface: Path | None = None
    """An ArcFace ONNX model (insightface's w600k_r50.onnx): CSIM to the reference portrait."""
    groundtruth: Path | None = None  # the demo corpus folder (its corpus.json and groundtruth/)
    tracking_uri: str | None = None
    device: str | None = None


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
) -> tuple[dict, dict[int, list]]:
    """The metric row of `frames` (generated, the real clip itself, or the still reference) and their
    measured AU series. Every video is measured the same way: `track_video` at the model's size, AUs
    against the reference frame's features (`reference`: its tracked `VideoAUs`), landmarks compared after a
    Procrustes alignment. Speech AUs (25, 26, 27) are left to the lip-sync metric. `emotion_correct`: the
    nearest FACS prototype to the measured AUs is the clip's emotion (`classify_emotion`). With `judges`
    (`evaluation.judges.Judges`): the FER2013 verdict and the identity similarity to the reference. With
    `templates` (the speaker's ground-truth renders per emotion, `emotion_templates`): the counterfactual
    test, `counterfactual_correct` (the video is nearest to the render of its own emotion). With `standard`:
    the standard metrics whose weights were given (Sync-C/D, LPIPS, CSIM; `fps` the video's rate)."""
    from evaluation import metrics
    from media.au_measure import measured_aus, track_video
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
    measured = {au: v for au, v in measured_aus(video, base).items() if au not in metrics.SPEECH_AUS}
    row["au_control_error"] = metrics.au_control_error(requested, measured)
    if gt is not None:
        truth = groundtruth_aus(gt, t)
        row["au_gt_error"] = metrics.au_series_error(truth, measured)
    verdict = classify_emotion(measured)
    if verdict is not None:
        row["emotion_correct"] = float(verdict == clip.meta["emotion"])
    if templates:
        nearest = counterfactual_emotion(templates, measured)
        if nearest is not None:
            row["counterfactual_correct"] = float(nearest == clip.meta["emotion"])
    if judges is not None:
        row.update(judges.score(frames, video.landmarks, clip.meta["emotion"], clip.reference_identity))
    if standard is not None:
        ref = clip.reference_video
        ref_lm = ref.landmarks[0] if ref is not None and ref.found[0] else None
        row.update(standard.score_clip(frames, clip.frames, fps, clip.wav, video, clip.reference, ref_lm))
    return row, measured


def draw(pipe, clips: list[Clip], mode: str, guidance: GuidanceConfig | None, label_only: bool,
         config: EvaluateConfig) -> list[tuple[np.ndarray, float | None]]:  # fmt: skip
    """Each clip's frames in a table row, and their seam ratio: the model's, every clip through one batched
    `TBDPipeline.generate` (the same seed for each, so each is what a lone call gives); the real clip; or
    the reference frame held still (the floor every mode should beat)."""
    from tbd_lightning.video_batch import VideoRequest

    if mode == REAL:
        return [(c.frames, None) for c in clips]
    if guidance is None:
        return [(np.repeat(c.reference[None], len(c.audio_features), 0), None) for c in clips]
    requests = [VideoRequest(c.reference, c.reference_landmarks, c.audio_features,
                             cot=c.label_cot if mode == THINK else c.cot, label_only=label_only) for c in clips]  # fmt: skip
    per = config.max_frames_per_batch or (512 if pipe.device.type == "cuda" else 16)
    outputs = pipe.generate(requests, guidance, config.seed, max_frames_per_batch=per)
    return [(o.frames, o.seam_ratio) for o in outputs]


def think_from_labels(clips: list[Clip]) -> None:
    """Each clip's `label_cot`: what the default engine thinks from its emotion label and level alone (no
    measured evidence), as `tbd generate` thinks for a user; None where that CoT is rejected."""
    from annotation.engines.spec import EngineSpec
    from annotation.records import ThinkRequest

    requests = [
        ThinkRequest(key=c.key, emotion=c.meta["emotion"], level=c.meta["level"] or None) for c in clips
    ]
    with EngineSpec().make() as engine:
        for clip, ann in zip(clips, engine.annotate(requests), strict=True):
            clip.label_cot = ann.cot.model_dump(mode="json") if ann.accepted else None


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


def guidance_runs(
    config: EvaluateConfig, region_masks: bool = True
) -> list[tuple[str, GuidanceConfig | None, bool]]:
    """(row name, guidance, label_only) per table row: the configured guidance, or the ablations of it (all
    on the clip's own annotation; `no-masks` instead of `progressive`'s masks for a model trained without
    them), then `think-label` (the configured guidance on a CoT thought from the label alone, as deployed),
    the real clips (the ceiling) and the `reference-still` floor (guidance None: no model)."""
    g = config.guidance
    if not region_masks and g.mode != "no-masks":
        log.warning("the model was trained without region masks: sampling with guidance mode no-masks")
        g = replace(g, mode="no-masks")
    bounds = [(THINK, g, False), (REAL, None, False), (STILL, None, False)]
    if not config.ablations:
        return [(g.mode, g, False), *bounds]
    if len({g.audio_scale, g.global_scale, g.local_scale}) > 1:
        log.warning("cfg is not at matched strength: audio/global/local scales %s/%s/%s differ (cfg uses the "
                    "audio scale for every condition)", g.audio_scale, g.global_scale, g.local_scale)  # fmt: skip
    first = "progressive" if region_masks else "no-masks"
    modes = [first if m == "progressive" else m for m in ABLATIONS]
    return [
        (m, replace(g, mode=first if m == "label-only" else m), m == "label-only") for m in modes
    ] + bounds


def run_evaluate(config: EvaluateConfig) -> dict:
    import torch

    from evaluation import metrics
    from evaluation.judges import Judges, confusion
    from evaluation.report import aggregate, plots, print_table, separable
    from media.au_calibration import load as load_calibration
    from media.au_measure import requested_aus, track_video
    from tbd_core.tracking import job_run, tracking_uri
    from tbd_lightning.pipeline import TBDPipeline

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = TBDPipeline.from_pretrained(config.model).to(device)
    source = pipe.config.source or {}
    version = resolve_version(config, pipe.config.annotation_version)
    skipped: dict[str, str] = {}
    clips = load_clips(config, pipe.size, version, skipped)
    if not clips:
        raise UserError(f"every chosen clip was skipped: {skipped}")
    think_from_labels(clips)
    judges = Judges()
    for clip in clips:  # measured once, the same way as every generated video
        clip.real_video = track_video(clip.frames)
        clip.reference_video = track_video(clip.reference[None])
        if clip.reference_video.found[0]:
            clip.reference_identity = judges.identity.descriptor(
                clip.reference, clip.reference_video.landmarks[0]
            )
    gt_index = groundtruth_index(config.groundtruth)
    templates = emotion_templates(config.groundtruth)
    nets = {"fid": torch.jit.load(str(config.fid_net), map_location="cpu").eval()} if config.fid_net else {}
    standard = StandardMetrics.load(config.syncnet, config.lpips_backbone, config.fvd_net, config.arcface)
    runs = guidance_runs(config, (pipe.config.conditioning or {}).get("region_masks", True))
    out = Path(config.out or Path(config.model).parent / "evaluation")
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    per_clip: dict[str, list] = {}
    generated: dict[str, list[tuple[Clip, np.ndarray]]] = {}
    for mode, guidance, label_only in runs:
        todo = [c for c in clips if mode != THINK or c.label_cot is not None]  # THINK: an accepted CoT
        drawn = draw(pipe, todo, mode, guidance, label_only, config)
        rows = []
        for clip, (frames, seams) in zip(todo, drawn, strict=True):
            cot = clip.label_cot if mode == THINK else clip.cot
            gt = gt_index.get(str(Path(clip.meta["video"]).resolve()))
            row, measured = score_clip(
                clip,
                frames,
                requested_aus(cot),
                gt,
                clip.reference_video,
                judges,
                templates.get((clip.meta["speaker"], clip.meta["level"] or 1)),
                standard,
                pipe.fps,
            )
            row["seam_ratio"] = seams
            rows.append({"key": clip.key, "reference": clip.reference_key, **row})
            if clip is clips[0] and mode == runs[0][0]:
                first_measured = measured  # the AU timeline plot: first clip, first mode
            generated.setdefault(mode, []).append((clip, frames))
            log.info(
                "evaluate %s %s: %s",
                mode,
                clip.key,
                {k: v for k, v in rows[-1].items() if k not in ("key", "reference")},
            )
        results[mode] = aggregate(rows)
        per_clip[mode] = rows
        if not rows:
            continue
        reals = [c.frames[: len(g)] for c, g in generated[mode]]
        fakes = [g for _, g in generated[mode]]
        if "fid" in nets:
            real_frames = np.concatenate(reals)
            results[mode]["fid"] = metrics.fid(real_frames, np.concatenate(fakes), nets["fid"])
            dims = metrics.feature_dims(nets["fid"], (1, 3, 299, 299))
            results[mode]["fid_note"] = metrics.frechet_note(len(real_frames), dims)
        results[mode].update(standard.fvd(reals, fakes))
    real_acc = results[REAL].get("emotion_correct")
    emotion_of = {c.key: c.meta["emotion"] for c in clips}
    real_found = [r["face_rate"] for r in per_clip[REAL]]
    report = {"model": str(config.model), "data": str(config.data), "version": version, "split": config.split,
              "clips": [c.key for c in clips], "references": {c.key: c.reference_key for c in clips},
              "guidance": asdict(config.guidance), "seed": config.seed, "results": results,
              "real_face_rate": float(np.mean(real_found)), "separable": separable(results, per_clip=per_clip),
              "per_clip": per_clip, "classifier_accuracy_on_real_clips": real_acc, "skipped": skipped,
              "au_calibration": load_calibration().id,
              "fer_accuracy": {m: r["fer_accuracy"] for m, r in results.items()},
              "identity_similarity": {m: r["identity_similarity"] for m, r in results.items()},
              "fer_confusion": {m: confusion(rows, [emotion_of[r["key"]] for r in rows]) for m, rows in per_clip.items()},
              "judges": {"emotion": "FER2013 mini-Xception (fer 25.10.3), 7 classes, contempt not judged",
                         "identity": "dlib face-recognition ResNet v1, cosine similarity to the reference"},
              "standard_metrics": standard.protocols}  # fmt: skip
    (out / "evaluation.json").write_text(json.dumps(report, indent=2))
    strips = {mode: pairs[0][1] for mode, pairs in generated.items() if mode != REAL}
    plots(
        out,
        clips[0].frames[: len(strips[runs[0][0]])],
        strips,
        requested_aus(clips[0].cot),
        first_measured,
        pipe.fps,
    )
    print_table(results)
    log.info("real clips' face rate at %d px: %.3f", pipe.size, report["real_face_rate"])

    uri = tracking_uri(config.tracking_uri, Path(config.data), source.get("mlflow_tracking_uri"))
    params = {k: str(v) for k, v in config.model_dump(exclude={"guidance"}).items()}
    params |= {f"guidance.{k}": v for k, v in asdict(config.guidance).items()}
    params |= {"n_clips": len(clips), "annotation_version": version}
    with job_run("evaluate", uri, params, {"tbd.train_run": str(source.get("mlflow_run_id"))}) as mlflow:
        for mode, agg in results.items():
            prefix = "" if mode == runs[0][0] else f"{mode}/"
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
        for f in ("evaluation.json", "strip.png", "au_timeline.png"):
            mlflow.log_artifact(str(out / f), "evaluation")
    return report
