"""`tbd evaluate`: generate held-out clips from their first frame, speech and CoT, and compare with the real clip.

For each clip of the chosen split (annotation accepted or repaired, first `max_clips` in shard order):
the reference is the clip's first crop frame, the audio features and CoT come from the shards, and the
same seed is used for every guidance mode. Metrics (`evaluation.metrics`): PSNR, SSIM, LMD (full,
mouth), lip-sync proxy, AU-control error against the CoT, emotion accuracy of an AU classifier fitted
on the training split, FID / FVD / LPIPS with user-supplied networks, and on the demo corpus the AU error
against the ground-truth sidecar. With `ablations`, modes progressive / single-stage / label-only /
no-masks run on the same clips and seeds and form one table. Results: a printed table,
`OUT/evaluation.json`, an MLflow run (metrics per mode, the JSON, a real-vs-generated strip and an AU
timeline plot).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tbd_core.errors import UserError
from tbd_lightning.sampler import GuidanceConfig

log = logging.getLogger(__name__)
ABLATIONS = ("progressive", "single-stage", "label-only", "no-masks")
METRICS = ("psnr", "ssim", "lmd_full", "lmd_mouth", "sync_corr", "sync_offset", "au_control_error",
           "au_gt_error", "emotion_correct", "face_rate", "lpips")  # fmt: skip


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    model: Path
    data: Path
    version: str | None = None
    split: str = "test"
    max_clips: int = 8
    max_frames: int = 50
    guidance: GuidanceConfig = GuidanceConfig(steps=20)  # ablations override only its mode
    seed: int = 0
    ablations: bool = False
    out: Path | None = None
    fid_net: Path | None = None  # a TorchScript feature network (e.g. a local InceptionV3), for FID
    fvd_net: Path | None = None  # a TorchScript video network (e.g. a local I3D), for FVD
    lpips_net: Path | None = None  # a TorchScript network returning feature maps (e.g. AlexNet), for LPIPS
    groundtruth: Path | None = None  # the demo corpus folder (its corpus.json and groundtruth/)
    tracking_uri: str | None = None
    device: str | None = None


@dataclass
class Clip:
    key: str
    meta: dict
    frames: np.ndarray  # (T, S, S, 3) uint8 at the model's size
    landmarks: np.ndarray  # (T, 468, 3) crop-normalised
    audio_features: np.ndarray  # (T, A)
    wav: np.ndarray  # 16 kHz mono
    cot: dict


def load_clips(config: EvaluateConfig, size: int, version: str) -> list[Clip]:
    """`max_clips` clips of the split, evenly spaced over it (so a sorted corpus still covers its emotions);
    a first pass reads only sidecars and annotations, the second decodes the chosen clips."""
    import cv2
    from scipy.io import wavfile

    from pipelines.data_folder import DataFolder
    from pipelines.shards import tar_members
    from tbd_lightning.data import decode_mp4

    folder = DataFolder(config.data)
    shards = folder.aligned_shards(version)
    summaries = folder.media_summaries()
    eligible, cots = [], {}
    for index, shard in enumerate(shards):
        anns = folder.annotation_members(version, shard.name)
        for key in shard.keys:
            if summaries[key]["split"] == config.split and anns[key]["validation"]["outcome"] != "rejected":
                eligible.append((index, key))
                cots[key] = anns[key]["cot"]
    if not eligible:
        raise UserError(
            f"no usable clips of split {config.split!r} in {config.data} (clips per split: {folder.split_counts()})"
        )
    picks = [eligible[i] for i in sorted(set(np.linspace(0, len(eligible) - 1, min(config.max_clips, len(eligible))).round().astype(int)))]  # fmt: skip
    clips = []
    for index in sorted({i for i, _ in picks}):
        wanted = {k for i, k in picks if i == index}
        for key, members in tar_members(shards[index].media_tar):
            if key not in wanted:
                continue
            video = decode_mp4(members["mp4"])[: config.max_frames]
            t = len(video)
            frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in video])
            _, wav = wavfile.read(io.BytesIO(members["wav"]))
            wav = wav.astype(np.float32) / (32768.0 if wav.dtype == np.int16 else 1.0)
            lm = np.load(io.BytesIO(members["landmarks.npy"])).astype(np.float32)[:t]
            feats = np.load(io.BytesIO(members["audio.npy"])).astype(np.float32)[:t]
            clips.append(Clip(key, json.loads(members["json"]), frames, lm, feats, wav, cots[key]))
    return clips


def emotion_classifier(data: Path):
    """AU classifier on the training split's sidecar statistics, relative to each speaker's neutral median."""
    from evaluation.metrics import AUEmotionClassifier
    from media.au_evidence import speaker_baselines
    from pipelines.data_folder import DataFolder

    summaries = DataFolder(data).media_summaries()
    baselines = speaker_baselines(summaries)
    train = [s for s in summaries.values() if s["split"] == "train"]
    if len({s["emotion"] for s in train}) < 2:
        return None, baselines

    def row(s):
        base = baselines.get(s["speaker"], np.asarray(s["au_p10"]))
        return np.concatenate([np.asarray(s["au_mean"]) - base, np.asarray(s["au_p90"]) - base])

    clf = AUEmotionClassifier().fit(np.stack([row(s) for s in train]), [s["emotion"] for s in train])
    return clf, baselines


def groundtruth_index(corpus: Path | None) -> dict[str, Path]:
    """Source video path (resolved) -> ground-truth npz, from the demo corpus index."""
    if corpus is None:
        return {}
    index = json.loads((corpus / "corpus.json").read_text())
    return {str((corpus / c["video"]).resolve()): corpus / c["groundtruth"] for c in index["clips"]}


def groundtruth_aus(path: Path, frames: int) -> dict[int, list[float]]:
    data = np.load(path)
    out: dict[int, list[float]] = {}
    for i, channel in enumerate(data["channels"]):
        au = int(str(channel)[2:].split("_")[0])
        values = data["au"][:frames, i]
        out[au] = list(np.maximum(out.get(au, np.zeros(len(values))), values))
    return out


def _baseline(clip: Clip, baselines: dict) -> np.ndarray:
    """The speaker's neutral AU proxies, else the clip's first frame's."""
    from media.au_proxies import au_proxies

    return baselines.get(clip.meta["speaker"], au_proxies(clip.landmarks[:1])[0])


def score_clip(
    clip: Clip, frames: np.ndarray, requested: dict, gt: Path | None, clf, baselines
) -> tuple[dict, dict[int, list]]:
    """The clip's metric row, and the measured AU series of the generated frames."""
    from evaluation import metrics
    from media.au_measure import measured_aus, track_generated
    from media.au_proxies import au_proxies
    from media.video_io import frame_envelope

    t = len(frames)
    real = clip.frames[:t]
    gen_lm = track_generated(frames)
    found = ~np.isnan(gen_lm).any(axis=(1, 2))
    row: dict = {
        "psnr": metrics.psnr(real, frames),
        "ssim": metrics.ssim(real, frames),
        "face_rate": float(found.mean()),
    }
    if found.any():
        row.update(metrics.lmd(gen_lm[found], clip.landmarks[:t][found], frames.shape[1]))
    if found.mean() >= 0.5:
        mouth = np.interp(np.arange(t), np.flatnonzero(found), metrics.mouth_opening(gen_lm[found]))
        sync = metrics.lipsync(mouth, frame_envelope(clip.wav, t))
        row.update(sync_corr=sync["sync_corr"], sync_offset=sync["sync_offset"])
    measured = measured_aus(gen_lm, clip.landmarks[0])
    row["au_control_error"] = metrics.au_control_error(requested, measured)
    if gt is not None:
        truth = groundtruth_aus(gt, t)
        row["au_gt_error"] = metrics.au_series_error(truth, measured)
    if clf is not None and found.any():
        base = _baseline(clip, baselines)
        row["emotion_correct"] = float(clf.predict(metrics.clip_features(au_proxies(gen_lm[found]), base))[0] == clip.meta["emotion"])  # fmt: skip
    return row, measured


def aggregate(rows: list[dict]) -> dict:
    out = {"clips": len(rows)}
    for m in METRICS:
        values = [r[m] for r in rows if r.get(m) is not None]
        out[m] = float(np.mean(values)) if values else None
        out[f"{m}_n"] = len(values)
    return out


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


def guidance_runs(config: EvaluateConfig) -> list[tuple[str, GuidanceConfig, bool]]:
    """(row name, guidance, label_only) per table row: the configured guidance, or the ablations of it."""
    if not config.ablations:
        return [(config.guidance.mode, config.guidance, False)]
    return [(m, replace(config.guidance, mode="progressive" if m == "label-only" else m), m == "label-only")
            for m in ABLATIONS]  # fmt: skip


def run_evaluate(config: EvaluateConfig) -> dict:
    import torch

    from evaluation import metrics
    from media.au_measure import requested_aus
    from tbd_core.tracking import job_run, tracking_uri
    from tbd_lightning.pipeline import TBDPipeline

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = TBDPipeline.from_pretrained(config.model).to(device)
    source = pipe.config.source or {}
    version = resolve_version(config, pipe.config.annotation_version)
    clips = load_clips(config, pipe.size, version)
    clf, baselines = emotion_classifier(Path(config.data))
    gt_index = groundtruth_index(config.groundtruth)
    nets = {
        name: torch.jit.load(str(path), map_location="cpu").eval()
        for name, path in (("fid", config.fid_net), ("fvd", config.fvd_net), ("lpips", config.lpips_net))
        if path
    }
    runs = guidance_runs(config)
    out = Path(config.out or Path(config.model).parent / "evaluation")
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    per_clip: dict[str, list] = {}
    generated: dict[str, list[np.ndarray]] = {}
    for mode, guidance, label_only in runs:
        rows = []
        for clip in clips:
            frames = pipe(clip.frames[0], clip.landmarks[0], clip.audio_features, cot=clip.cot,
                          label_only=label_only, guidance=guidance, seed=config.seed).frames  # fmt: skip
            gt = gt_index.get(str(Path(clip.meta["video"]).resolve()))
            row, measured = score_clip(clip, frames, requested_aus(clip.cot), gt, clf, baselines)
            rows.append({"key": clip.key, **row})
            if clip is clips[0] and mode == runs[0][0]:
                first_measured = measured  # the AU timeline plot: first clip, first mode
            if "lpips" in nets:
                rows[-1]["lpips"] = metrics.lpips(clip.frames[: len(frames)], frames, nets["lpips"])
            generated.setdefault(mode, []).append(frames)
            log.info("evaluate %s %s: %s", mode, clip.key, {k: v for k, v in rows[-1].items() if k != "key"})
        results[mode] = aggregate(rows)
        reals = [c.frames[: len(g)] for c, g in zip(clips, generated[mode], strict=True)]
        if "fid" in nets:
            results[mode]["fid"] = metrics.fid(
                np.concatenate(reals), np.concatenate(generated[mode]), nets["fid"]
            )
        if "fvd" in nets and len(clips) > 1:
            results[mode]["fvd"] = metrics.fvd(reals, generated[mode], nets["fvd"])
        per_clip[mode] = rows
    if clf is not None:
        from evaluation.metrics import clip_features
        from media.au_proxies import au_proxies

        real_rows = [clip_features(au_proxies(c.landmarks), _baseline(c, baselines)) for c in clips]
        real_acc = clf.accuracy(np.stack(real_rows), [c.meta["emotion"] for c in clips])
    else:
        real_acc = None
    report = {"model": str(config.model), "data": str(config.data), "version": version, "split": config.split,
              "clips": [c.key for c in clips], "guidance": asdict(config.guidance), "seed": config.seed,
              "results": results, "per_clip": per_clip, "classifier_accuracy_on_real_clips": real_acc}  # fmt: skip
    (out / "evaluation.json").write_text(json.dumps(report, indent=2))
    _plots(out, clips[0], generated, requested_aus(clips[0].cot), first_measured, pipe.fps)
    print_table(results)

    uri = tracking_uri(config.tracking_uri, Path(config.data), source.get("mlflow_tracking_uri"))
    params = {k: str(v) for k, v in config.model_dump(exclude={"guidance"}).items()}
    params |= {f"guidance.{k}": v for k, v in asdict(config.guidance).items()}
    params |= {"n_clips": len(clips), "annotation_version": version}
    with job_run("evaluate", uri, params, {"tbd.train_run": str(source.get("mlflow_run_id"))}) as mlflow:
        for mode, agg in results.items():
            prefix = "" if mode == runs[0][0] else f"{mode}/"
            mlflow.log_metrics({f"{prefix}{k}": v for k, v in agg.items() if isinstance(v, (int, float))})
        if real_acc is not None:
            mlflow.log_metric("classifier_accuracy_on_real_clips", real_acc)
        for f in ("evaluation.json", "strip.png", "au_timeline.png"):
            mlflow.log_artifact(str(out / f), "evaluation")
    return report


def _plots(
    out: Path, clip: Clip, generated: dict[str, list[np.ndarray]], requested: dict, measured: dict, fps: int
) -> None:
    from PIL import Image

    from media.au_measure import plot_aus

    t = len(next(iter(generated.values()))[0])
    picks = np.linspace(0, t - 1, min(8, t)).round().astype(int)
    rows = [np.concatenate(list(clip.frames[picks]), axis=1)]
    rows += [np.concatenate(list(g[0][picks]), axis=1) for g in generated.values()]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out / "strip.png")  # real, then one row per mode
    plot_aus(requested, measured, fps, out / "au_timeline.png")


def print_table(results: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="evaluation (mean over clips; n = clips with a value)")
    table.add_column("mode")
    shown = [m for m in (*METRICS, "fid", "fvd") if any(r.get(m) is not None for r in results.values())]
    for m in shown:
        table.add_column(m, justify="right")
    for mode, r in results.items():
        cells = []
        for m in shown:
            v = r.get(m)
            cells.append("-" if v is None else f"{v:.3f}" + (f" ({r[f'{m}_n']})" if f"{m}_n" in r else ""))
        table.add_row(mode, *cells)
    Console(stderr=True).print(table)
