"""`tbd generate`: portrait + speech + emotion -> talking-head mp4, thinking first, drawing with progressive guidance.

1. Portrait: face detection and mesh (the preprocess face module), the training crop (same margin),
   crop-normalised landmarks, region masks of the AUs the CoT names.
2. Speech: decoded to 16 kHz mono (any container PyAV reads), silence refused, features made exactly as
   for the training shards (the exported model records how).
3. Think: the annotation engine (`facs` by default; `vllm`/`openai` with a model) turns the emotion into a
   CoT; a rejected CoT stops here with its reasons. `--label-only` drops the CoT (ablation).
4. Draw: the exported denoiser sampled with `ProgressiveSampler` in windows of the training length.
5. Out: H.264 mp4 with the speech muxed, a PNG strip, and a plot + JSON of requested vs measured AU
   intensity per frame (measured by the same landmark proxies, against the portrait as baseline).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tbd.errors import UserError
from tbd_lightning.sampler import GuidanceConfig, ProgressiveSampler

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    image: Path
    audio: Path
    model: Path
    out: Path
    emotion: str = "unknown"
    level: int | None = None
    text: str | None = None
    label_only: bool = False
    engine: str = "facs"
    engine_config: dict = field(default_factory=dict)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    seed: int = 0
    max_seconds: float = 20.0
    device: str | None = None
    tracking_uri: str | None = None  # default: the training run's store (recorded by `tbd export`)


@dataclass
class Portrait:
    crop: np.ndarray  # (S, S, 3) uint8
    landmarks: np.ndarray  # (468, 3) crop-normalised


def prepare_portrait(path: Path, size: int, margin: float) -> Portrait:
    from PIL import Image, UnidentifiedImageError

    from pipelines.clip_media import crop_to
    from pipelines.face import FaceAnalyzer, stable_crop

    try:
        image = np.asarray(Image.open(path).convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path}: not a readable image ({err})") from err
    with FaceAnalyzer() as fa:
        result = fa.analyze(image)
    if result.mesh is None:
        raise UserError(f"{path}: no face found ({result.reason})")
    crop, lm = crop_to(
        image[None], result.mesh.landmarks[None].astype(np.float64), stable_crop([result.mesh], margin), size
    )
    return Portrait(crop[0], lm[0])


def load_speech(path: Path, fps: int, max_seconds: float, silence_dbfs: float) -> tuple[np.ndarray, int]:
    """16 kHz mono float32 and the number of video frames it covers."""
    from pipelines.clip_media import dbfs
    from pipelines.video_io import AUDIO_RATE, read_audio

    if not Path(path).is_file():
        raise UserError(f"{path}: no such audio file")
    audio = read_audio(path)[: int(max_seconds * AUDIO_RATE)]
    if len(audio) < AUDIO_RATE // fps:
        raise UserError(f"{path}: no audio samples")
    level = dbfs(audio)
    if level < silence_dbfs:
        raise UserError(f"{path}: silent audio ({level:.1f} dBFS, threshold {silence_dbfs:.0f} dBFS)")
    return audio, len(audio) * fps // AUDIO_RATE


def think(config: GenerateConfig):
    from annotation.engines import make_engine
    from annotation.records import ThinkRequest

    request = ThinkRequest(key="generate", emotion=config.emotion, level=config.level, text=config.text)
    with make_engine(config.engine, **config.engine_config) as engine:
        (ann,) = engine.annotate([request])
    if not ann.accepted:
        raise UserError(f"the CoT for {config.emotion!r} was rejected: {'; '.join(ann.validation.reasons)}")
    return ann


def requested_aus(cot: dict) -> dict[int, int]:
    """AU -> the FACS value (1..5) a CoT asks for (the stronger side when an AU is listed twice)."""
    from annotation.facs import intensity_value

    out: dict[int, int] = {}
    for u in cot["action_units"]:
        out[u["au"]] = max(out.get(u["au"], 0), intensity_value(u["intensity"]))
    return out


def region_mask(landmarks: np.ndarray, size: int, regions: tuple[str, ...]) -> np.ndarray:
    from pipelines.face import region_masks

    if not regions:
        return np.zeros((size, size), np.float32)
    masks = region_masks(landmarks[:, :2] * size, size, size, regions)
    return np.max(np.stack(list(masks.values())), 0)


def track_generated(frames: np.ndarray, size: int = 256) -> np.ndarray:
    """Crop-normalised landmarks (T, 468, 3) of generated frames (upscaled to `size` for the face
    model); NaN rows where no face is found."""
    import cv2

    from pipelines.face import FaceAnalyzer

    with FaceAnalyzer() as fa:
        results = fa.track([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in frames])
    nan = np.full((468, 3), np.nan, np.float32)
    return np.stack([r.mesh.landmarks / size if r.mesh is not None else nan for r in results]).astype(
        np.float32
    )


def measured_aus(landmarks: np.ndarray, baseline_landmarks: np.ndarray) -> dict[int, list[float | None]]:
    """Per-frame FACS 0-5 estimates from the landmark proxies against a neutral baseline (the portrait);
    None where a frame has no face."""
    from pipelines.au_evidence import PROXY_AUS
    from pipelines.au_proxies import PROXIES, au_proxies

    base = au_proxies(baseline_landmarks[None])[0]
    aus = sorted({a for entries in PROXY_AUS.values() for a, *_ in entries})
    out: dict[int, list] = {au: [] for au in aus}
    for lm in landmarks:
        per_au: dict[int, float] = {}
        values = None if np.isnan(lm).any() else au_proxies(lm[None])[0]
        for i, name in enumerate(PROXIES):
            for au, _side, direction, scale in PROXY_AUS.get(name, []):
                if values is not None:
                    v = float(np.clip(direction * (values[i] - base[i]) / scale * 5, 0, 5))
                    per_au[au] = max(per_au.get(au, 0.0), v)
        for au in aus:
            out[au].append(per_au.get(au) if values is not None else None)
    return out


def plot_aus(requested: dict[int, float], measured: dict[int, list], fps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aus = sorted(set(requested) & set(measured)) or sorted(requested)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, au in enumerate(aus):
        color = f"C{i % 10}"
        series = measured.get(au, [])
        t = np.arange(len(series)) / fps
        ax.plot(t, [np.nan if v is None else v for v in series], color=color, label=f"AU{au} measured")
        ax.axhline(requested[au], color=color, linestyle="--", linewidth=1, label=f"AU{au} requested")
    n = max((len(v) for v in measured.values()), default=0)
    if not any(v is not None for au in aus for v in measured.get(au, [])):
        ax.text(0.5, 0.5, "no face found in the generated frames", transform=ax.transAxes, ha="center")
    ax.set(xlabel="seconds", ylabel="FACS intensity (0-5)", ylim=(0, 5.2), xlim=(0, max(n - 1, 1) / fps),
           title="requested vs measured AUs")  # fmt: skip
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


DEFAULT_MEDIA = {"fps": 25, "crop_margin": 1.8, "n_mels": 80, "audio_encoder": None, "silence_dbfs": -50.0}


def media_settings(info: dict) -> tuple[dict, int]:
    """How the training media were made (fps, crop, audio features) and the model's frame size."""
    media = {**DEFAULT_MEDIA, **(info.get("media") or {})}
    return media, info["conditioning"]["size"] or media.get("crop_size", 64)


def draw(
    model, reference: np.ndarray, ref_landmarks: np.ndarray, feats: np.ndarray, global_text: str,
    local: list[str], regions: tuple[str, ...], embedder, guidance: GuidanceConfig, seed: int, device: str,
    progress_bar: bool = False,
) -> np.ndarray:  # fmt: skip
    """Sample len(feats) frames (T, S, S, 3) uint8 in windows of the training length, all windows batched."""
    from tbd_lightning.callbacks import to_uint8
    from tbd_lightning.model import Conditions

    den, size, window = model.denoiser, reference.shape[0], model.info["conditioning"]["frames"]
    n_frames = len(feats)
    emb = embedder.embed([global_text, *local])
    n_windows = -(-n_frames // window)
    feats = np.pad(feats, ((0, n_windows * window - n_frames), (0, 0)), mode="edge")
    ref = torch.from_numpy(np.ascontiguousarray(reference)).permute(2, 0, 1).float().div(127.5).sub(1)
    mask = torch.from_numpy(region_mask(ref_landmarks, size, regions))
    local_text = torch.zeros(den.config.max_local, emb.shape[1])
    local_text[: len(local)] = torch.from_numpy(emb[1:])
    cond = Conditions(
        reference=ref[None].expand(n_windows, -1, -1, -1),
        audio=torch.from_numpy(feats).reshape(n_windows, window, -1),
        global_text=torch.from_numpy(emb[0])[None].expand(n_windows, -1),
        local_text=local_text[None].expand(n_windows, -1, -1),
        local_valid=(torch.arange(den.config.max_local) < len(local))[None].expand(n_windows, -1),
        region_mask=mask[None, None, None].expand(n_windows, window, 1, size, size),
    ).map(lambda t: t.contiguous().to(device))
    sampler = ProgressiveSampler(den, model.scheduler.config, guidance)
    gen = torch.Generator(device).manual_seed(seed)
    shape = (n_windows, window, den.config.in_channels, size, size)
    video = sampler.sample(shape, cond, generator=gen, progress_bar=progress_bar)
    return to_uint8(video.flatten(0, 1)[:n_frames])


def generate(config: GenerateConfig) -> dict:
    from pipelines.audio_features import audio_features
    from pipelines.video_io import AUDIO_RATE, write_mp4
    from tbd_lightning.export import load_exported
    from tbd_lightning.text import TextEmbedder, cot_regions, cot_sentences

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_exported(config.model, device)
    info, den = model.info, model.denoiser
    media, size = media_settings(info)
    fps = media["fps"]
    if info.get("vae"):
        raise UserError("latent-space models are not supported by `tbd generate` yet (pixel-space only)")

    portrait = prepare_portrait(config.image, size, media["crop_margin"])
    audio, n_frames = load_speech(config.audio, fps, config.max_seconds, media["silence_dbfs"])
    ann = think(config)
    cot = ann.cot.model_dump(mode="json")
    global_text, local = cot_sentences(cot, den.config.max_local, config.label_only)
    regions = cot_regions(cot) if local else ()

    feats = audio_features(audio, n_frames, media["n_mels"], fps, media["audio_encoder"]).astype(np.float32)
    embedder = TextEmbedder(info.get("text_encoder"), device=device)
    frames = draw(model, portrait.crop, portrait.landmarks, feats, global_text, local, regions, embedder,
                  config.guidance, config.seed, device, progress_bar=True)  # fmt: skip

    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(out, frames, fps=fps, audio=audio[: n_frames * AUDIO_RATE // fps])
    from PIL import Image

    picks = np.linspace(0, n_frames - 1, min(8, n_frames)).round().astype(int)
    Image.fromarray(np.concatenate([portrait.crop, *frames[picks]], axis=1)).save(out.with_suffix(".png"))
    requested = requested_aus(cot)
    measured = measured_aus(track_generated(frames), portrait.landmarks)
    plot_aus(requested, measured, fps, out.with_name(out.stem + "_aus.png"))
    report = {
        "video": str(out), "strip": str(out.with_suffix(".png")), "au_plot": str(out.with_name(out.stem + "_aus.png")),
        "frames": int(n_frames), "fps": fps, "seconds": round(n_frames / fps, 3), "size": size,
        "emotion": ann.cot.emotion, "level": ann.cot.intensity_level, "global_text": global_text, "local_text": local,
        "requested_aus": requested, "measured_aus": {str(k): v for k, v in measured.items() if k in requested},
        "annotation_version": ann.provenance.annotation_version, "guidance": vars(config.guidance),
        "model": str(config.model), "seed": config.seed,
    }  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    log.info("wrote %s (%d frames, %.2f s)", out, n_frames, n_frames / fps)
    track(config, info, report)
    return report


def track(config: GenerateConfig, info: dict, report: dict) -> None:
    """One MLflow run per generation (by default in the training run's store), tagged with the training run."""
    from pipelines.tracking import job_run, tracking_uri

    uri = tracking_uri(
        config.tracking_uri, Path(config.model).parent, info["source"].get("mlflow_tracking_uri")
    )
    params = {k: report[k] for k in ("emotion", "level", "frames", "seed", "model", "annotation_version")}
    params.update({f"guidance.{k}": v for k, v in report["guidance"].items()})
    tags = {"tbd.train_run": str(info["source"].get("mlflow_run_id"))}
    with job_run(
        "generate", uri, {**params, "image": str(config.image), "audio": str(config.audio)}, tags
    ) as mlflow:
        measured = [v for series in report["measured_aus"].values() for v in series if v is not None]
        mlflow.log_metrics(
            {
                "seconds": report["seconds"],
                "face_found_fraction": len(measured)
                / max(1, sum(len(s) for s in report["measured_aus"].values())),
            }
        )
        for key in ("video", "strip", "au_plot"):
            mlflow.log_artifact(report[key], "generated")
        mlflow.log_dict(report, "generated/report.json")
