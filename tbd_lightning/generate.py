"""`tbd generate`: portrait + speech + emotion -> talking-head mp4, thinking first, drawing with progressive guidance.

1. Portrait: face detection and mesh (the preprocess face module), the training crop (same margin),
   crop-normalised landmarks, region masks of the AUs the CoT names.
2. Speech: decoded to 16 kHz mono (any container PyAV reads), silence refused, features made exactly as
   for the training shards (the exported model records how).
3. Think: the annotation engine (`facs` by default; `vllm`/`openai` with a model) turns the emotion into a
   CoT; a rejected CoT stops here with its reasons. `--label-only` drops the CoT (ablation).
4. Draw: the exported `TBDPipeline` (progressive guidance, in windows of the training length).
5. Out: H.264 mp4 with the speech muxed, a PNG strip, and a plot + JSON of requested vs measured AU
   intensity per frame (measured by the same landmark proxies, against the portrait as baseline).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from annotation.engines.spec import EngineSpec
from media.au_measure import measured_aus, plot_aus, requested_aus, track_still
from media.inputs import load_speech, prepare_portrait
from tbd_core.errors import UserError
from tbd_lightning.sampler import GuidanceConfig
from tbd_lightning.windows import seam_ratio_of_changes

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    """`tbd generate`: a talking-head video of the portrait saying the speech with the emotion."""

    image: Path
    """The portrait (png, jpg, webp, ...; 16-bit, grayscale, palette, CMYK, alpha and EXIF-rotated images are read as shown)."""
    audio: Path
    """The speech (wav, mp3, m4a, or a video's audio)."""
    model: Path
    """A folder written by `tbd export` (TBDPipeline)."""
    out: Path
    """The mp4 to write (.png strip, _aus.png and .json beside it)."""
    face_index: int | None = None
    """Several faces in the portrait: which one (largest first; all are listed in the log). Default: the largest."""
    emotion: str = "unknown"
    """A MEAD emotion label (or give `text`)."""
    level: int | None = None
    """MEAD intensity level 1..3."""
    text: str | None = None
    """Free-text emotion, e.g. "a bittersweet smile"."""
    label_only: bool = False
    """Ablation: the global text is the label, no CoT."""
    think: EngineSpec = field(default_factory=EngineSpec)
    """The engine that thinks (facs by default)."""
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    """Progressive guidance settings."""
    seed: int = 0
    """Seed of the sampling noise."""
    max_seconds: float | None = None
    """Cut the speech after this many seconds (the cut is logged as a warning and reported in the JSON's
    `cut`). Default: the whole speech, however long (memory does not grow with it)."""
    max_frames_per_batch: int = 256
    """Frames denoised per batch (times the guidance branches per forward pass): bounds GPU/CPU memory,
    does not change the video."""
    device: str | None = None
    """cuda or cpu (default: cuda when present)."""
    tracking_uri: str | None = None
    """MLflow store (default: the training run's store, recorded by `tbd export`)."""


def think(config: GenerateConfig, engine=None):
    """The accepted annotation for the config's emotion (a rejected one is a `UserError`). `engine`: a
    started engine to reuse (the web app keeps one); default: `config.think`'s, started and closed here."""
    from annotation.records import ThinkRequest

    request = ThinkRequest(key="generate", emotion=config.emotion, level=config.level, text=config.text)
    with config.think.make() if engine is None else contextlib.nullcontext(engine) as used:
        (ann,) = used.annotate([request])
    if not ann.accepted:
        raise UserError(
            f"the CoT for {config.text or config.emotion!r} was rejected: {'; '.join(ann.validation.reasons)} "
            f"({_think_again(ann.provenance.route or ann.provenance.engine)})"
        )
    return ann


def _think_again(engine: str) -> str:
    """What to try after `engine` rejected a CoT: never the engine that just failed."""
    if engine == "facs":
        return "reword the text with one or two emotion words, or think with an LLM engine: --think.engine vllm|openai"
    return "think again with other wording, or use the rule-based engine: --think.engine facs"


def load_pipeline(config: GenerateConfig):
    """The exported `TBDPipeline` of `config.model`, on `config.device` (default: cuda when present)."""
    from tbd_lightning.pipeline import TBDPipeline

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return TBDPipeline.from_pretrained(config.model).to(device)


def generate(config: GenerateConfig, ann=None, pipe=None, callback_on_step_end=None) -> dict:
    """The whole of `tbd generate`; returns the report (also written as JSON beside the mp4).

    `ann`: an accepted `Annotation` to draw (the web app's, after the user edited intensities) instead
    of thinking here; `pipe`: a loaded pipeline (`load_pipeline`); `callback_on_step_end`: called after
    every denoising step (`TBDPipeline.__call__`). Errors a user can cause are `UserError`s.
    """
    from media.audio_features import audio_features
    from media.video_io import AUDIO_RATE, write_mp4

    log.info("generate: %s speaking %s, %s -> %s", config.image, config.audio, config.emotion, config.out)
    pipe = pipe or load_pipeline(config)
    media, size = pipe.media_config, pipe.size
    fps = media.fps

    portrait = prepare_portrait(config.image, size, media.crop_margin, config.face_index, media.max_roll_deg)
    speech = load_speech(config.audio, fps, config.max_seconds, media.silence_dbfs)
    audio, n_frames = speech.audio, speech.frames
    ann = ann or think(config)
    cot = ann.cot.model_dump(mode="json")
    feats = audio_features(audio, n_frames, media.n_mels, fps, media.audio_encoder).astype(np.float32)
    result = pipe(portrait.crop, portrait.landmarks, feats, cot=cot, label_only=config.label_only,
                  guidance=config.guidance, seed=config.seed, progress_bar=True,
                  callback_on_step_end=callback_on_step_end, output_type="latent",
                  max_frames_per_batch=config.max_frames_per_batch)  # fmt: skip

    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    drawn = DrawnVideo(pipe, result.frames, portrait.crop)
    write_mp4(out, drawn.frames(), fps=fps, audio=audio[: round(n_frames * AUDIO_RATE / fps)])
    from PIL import Image

    Image.fromarray(np.concatenate([portrait.crop, *drawn.strip], axis=1)).save(out.with_suffix(".png"))
    requested = requested_aus(cot)
    measured = measured_aus(drawn.au.result(), track_still(portrait.crop).baseline())
    plot_aus(requested, measured, fps, out.with_name(out.stem + "_aus.png"))
    report = {
        "video": str(out), "strip": str(out.with_suffix(".png")), "au_plot": str(out.with_name(out.stem + "_aus.png")),
        "frames": int(n_frames), "fps": fps, "seconds": round(n_frames / fps, 3), "size": size,
        "emotion": ann.cot.emotion, "level": ann.cot.intensity_level, "global_text": result.global_text,
        "local_text": result.local_text, "requested_aus": requested,
        "measured_aus": {str(k): v for k, v in measured.items() if k in requested},
        "annotation_version": ann.provenance.annotation_version, "guidance": asdict(config.guidance),
        "model": str(config.model), "seed": config.seed, "windows": result.windows,
        "window": pipe.frames, "motion_frames": result.motion_frames,
        "seam_ratio": seam_ratio_of_changes(np.array(drawn.changes), pipe.frames, result.motion_frames),
        "speech_seconds": round(speech.seconds, 3), "cut": speech.cut,
    }  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    log.info("wrote %s (%d frames, %.2f s)", out, n_frames, n_frames / fps)
    track(config, pipe.config.source or {}, report)
    return report


class DrawnVideo:
    """Sampled latents (T, C, h, w) decoded 16 frames at a time as the mp4 writer asks for them, so a long
    video never sits in memory as pixels; on the way each frame feeds the AU measure (`AUStream`), the
    8-frame strip and the frame-to-frame change (the seam ratio's input)."""

    def __init__(self, pipe, latents: torch.Tensor, reference: np.ndarray, chunk: int = 16):
        from media.au_measure import AUStream

        self.pipe, self.latents, self.chunk = pipe, latents, chunk
        n = len(latents)
        self.picks = set(np.linspace(0, n - 1, min(8, n)).round().astype(int).tolist())
        self.au = AUStream(*reference.shape[:2])
        self.strip: list[np.ndarray] = []
        self.changes: list[float] = []

    def frames(self):
        from tbd_lightning.pipeline import to_uint8

        prev, i = None, 0
        for part in self.latents.split(self.chunk):
            pixels = self.pipe.decode(part).float()  # (N, 3, S, S) in [-1, 1]
            for pixel, frame in zip(pixels, to_uint8(pixels), strict=True):
                self.au.add(frame)
                if i in self.picks:
                    self.strip.append(frame)
                if prev is not None:  # the change as sampled, before rounding to 8 bits
                    self.changes.append(float((pixel - prev).abs().mean()))
                prev, i = pixel, i + 1
                yield frame


def track(config: GenerateConfig, source: dict, report: dict) -> None:
    """One MLflow run per generation (by default in the training run's store), tagged with the training run."""
    from tbd_core.tracking import job_run, tracking_uri

    # Default: the training run's store, else one beside the model folder.
    uri = tracking_uri(config.tracking_uri, Path(config.model), source.get("mlflow_tracking_uri"))
    params = {
        k: report[k] for k in ("emotion", "level", "frames", "seed", "model", "annotation_version", "windows")
    }
    params.update({f"guidance.{k}": v for k, v in report["guidance"].items()})
    tags = {"tbd.train_run": str(source.get("mlflow_run_id"))}
    with job_run(
        "generate", uri, {**params, "image": str(config.image), "audio": str(config.audio)}, tags
    ) as mlflow:
        measured = [v for series in report["measured_aus"].values() for v in series if v is not None]
        mlflow.log_metrics(
            {
                "seconds": report["seconds"],
                **({"seam_ratio": report["seam_ratio"]} if report["seam_ratio"] is not None else {}),
                "face_found_fraction": len(measured)
                / max(1, sum(len(s) for s in report["measured_aus"].values())),
            }
        )
        for key in ("video", "strip", "au_plot"):
            mlflow.log_artifact(report[key], "generated")
        mlflow.log_dict(report, "generated/report.json")
