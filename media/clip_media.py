"""Preprocess one clip into a media sample, or a reject with its stage and reason.

decode (PyAV, resampled to 25 fps) → audio (16 kHz mono; silent → reject) → face (detect + track the
468-point mesh; too few frames with a face → reject) → stable crop → crop-normalised landmarks →
calibrated AU readings (`media.au_calibration`, uncentred: annotate subtracts the speaker's neutral) → audio features aligned to frames (log-mel, or a local pretrained encoder) → encode (H.264 mp4 + wav).
Region masks are not stored: they are a function of `landmarks.npy` (`media.face.region_masks`).
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.io import wavfile

from media.au_calibration import load as load_calibration
from media.audio_features import audio_features
from media.face import FaceAnalyzer, stable_crop
from media.video_io import AUDIO_RATE, read_audio, read_frames, write_mp4
from tbd_core.errors import UserError
from tbd_core.records import ClipRef, Reject

log = logging.getLogger(__name__)


class MediaConfig(BaseModel):
    """Per-clip processing settings (part of the media shard set's identity)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    fps: int = 25
    crop_size: int = 256
    crop_margin: float = 1.8
    min_face_fraction: float = 0.8
    silence_dbfs: float = -50.0
    n_mels: int = 80
    audio_encoder: str | None = None  # local folder of a pretrained speech encoder; None: log-mel
    crf: int = 20
    max_seconds: float = 60.0
    min_frames: int = 12  # shorter clips are rejected as too short (a training window needs frames)
    # One identity per clip: a second face at least this fraction of the first's width in a sampled frame
    # rejects the clip (its tracks could swap identities); smaller background faces are ignored.
    max_second_face: float = 0.5
    max_roll_deg: float = 30.0  # faces rolled further (a video on its side) are rejected; generate warns


class MediaSample(BaseModel):
    """The members of one sample in a media shard (bytes / arrays) plus its summary for the sidecar."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    key: str
    mp4: bytes
    wav: bytes
    landmarks: np.ndarray  # (T, 468, 3) float16, crop-normalised (x, y in [0, 1])
    au: np.ndarray  # (T, C) float32 uncentred calibrated AU readings w.x, channels in `meta["au_names"]`
    audio: np.ndarray  # (T, D) float16: log-mel (D = n_mels) or encoder hidden states
    meta: dict
    blendshapes: np.ndarray | None = None  # (T, 52) with the official face landmarker; names in meta

    def members(self) -> dict[str, bytes]:
        """WebDataset members (extension -> bytes) in a fixed order."""
        members = {
            "mp4": self.mp4,
            "wav": self.wav,
            "landmarks.npy": _npy(self.landmarks),
            "au.npy": _npy(self.au),
            "audio.npy": _npy(self.audio),
        }
        if self.blendshapes is not None:
            members["blendshapes.npy"] = _npy(self.blendshapes)
        return {**members, "json": json.dumps(self.meta, sort_keys=True).encode()}

    def summary(self) -> dict:
        """Per-clip AU statistics the annotate job reads without opening the tar."""
        au = self.au.astype(np.float64)
        return {
            **{k: self.meta[k] for k in ("au_names", "au_measurable", "au_calibration")},
            "au_mean": au.mean(0).round(5).tolist(),
            "au_p10": np.percentile(au, 10, axis=0).round(5).tolist(),
            "au_p50": np.percentile(au, 50, axis=0).round(5).tolist(),
            "au_p90": np.percentile(au, 90, axis=0).round(5).tolist(),
            **{k: self.meta[k] for k in ("frames", "emotion", "level", "speaker", "dataset", "split")},
        }


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def resample_indices(n_in: int, fps_in: float, fps: int) -> np.ndarray:
    """Frame indices that resample a clip from `fps_in` to `fps` (nearest frame in time)."""
    if not fps_in or abs(fps_in - fps) < 0.01:
        return np.arange(n_in)
    times = np.arange(0, n_in / fps_in, 1 / fps)
    return np.minimum(np.round(times * fps_in).astype(int), n_in - 1)


def dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def _wav(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    wavfile.write(buf, AUDIO_RATE, (np.clip(audio, -1, 1) * 32767).astype(np.int16))
    return buf.getvalue()


def _mp4(frames: np.ndarray, fps: int, crf: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        write_mp4(path, frames, fps=fps, crf=crf)
        return path.read_bytes()


def crop_to(frames: np.ndarray, landmarks: np.ndarray, crop, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) frames and (T, 468, 3) image-pixel landmarks -> (T, size, size, 3) crops and landmarks
    normalised to the crop (x, y in [0, 1]; z in the same scale)."""
    to_image = crop.affine(size)  # crop pixels -> image pixels
    flags = cv2.INTER_AREA | cv2.WARP_INVERSE_MAP
    cropped = np.stack([cv2.warpAffine(f, to_image, (size, size), flags=flags) for f in frames])
    to_crop = cv2.invertAffineTransform(to_image)
    xy = landmarks[..., :2] @ to_crop[:, :2].T + to_crop[:, 2]
    scale = np.linalg.norm(to_crop[0, :2])
    return cropped, np.concatenate([xy / size, landmarks[..., 2:] * scale / size], -1).astype(np.float32)


def identity_problem(frames: np.ndarray, meshes: list, analyzer: FaceAnalyzer, config: MediaConfig) -> str:
    """Why the clip cannot be one upright speaker, or "". Policy: a second face at least `max_second_face`
    of the first's width in the first, middle or last frame rejects the clip (the tracker could swap to it
    and mix identities); a face rolled beyond `max_roll_deg` (a video on its side without rotation
    metadata) rejects it too."""
    from media.face import roll_degrees

    n = len(frames)
    for i in sorted({0, n // 2, n - 1}):
        faces = analyzer.detect_all(frames[i])
        if len(faces) > 1:
            widths = [f.box[2] - f.box[0] for f in faces]
            if widths[1] >= config.max_second_face * widths[0]:
                return (f"{len(faces)} faces in frame {i} (the second {widths[1] / widths[0]:.0%} the width of "
                        f"the first): one speaker per clip, identities could mix")  # fmt: skip
    roll = float(np.median([roll_degrees(m.landmarks) for m in meshes]))
    if abs(roll) > config.max_roll_deg:
        return (f"face rolled by {roll:.0f} degrees (limit {config.max_roll_deg:.0f}): a video on its side "
                f"without rotation metadata? Turn it upright first")  # fmt: skip
    return ""


def au_readings(frames: np.ndarray, landmarks: np.ndarray):
    """(channel names, uncentred calibrated readings (T, C) float32, the calibration's view) of a clip, or
    why not. Frames without a face take the nearest frame's readings (as their landmarks do)."""
    from media.au_measure import track_video

    video = track_video(frames, landmarks)
    if not video.found.any():
        return "the face model lost the face in every frame seen at the AU measure's size"
    have = np.flatnonzero(video.found)
    nearest = have[np.abs(np.arange(len(frames))[:, None] - have[None]).argmin(1)]
    cal = load_calibration()
    names, values = cal.linear(video.features[nearest], video.iod_px)
    return names, values.astype(np.float32), cal.view(video.iod_px)


def process_clip(ref: ClipRef, analyzer: FaceAnalyzer, config: MediaConfig) -> MediaSample | Reject:
    """Run every stage; the first that fails names the reject."""
    source = ref.video
    try:
        raw, fps_in = read_frames(ref.video)
    except UserError as err:
        return Reject(key=ref.key, stage="decode", reason=str(err).split(": ", 1)[-1], source=source)
    frames = raw[resample_indices(len(raw), fps_in, config.fps)][: int(config.max_seconds * config.fps)]
    n = len(frames)
    if n < config.min_frames:
        return Reject(
            key=ref.key, stage="decode", source=source,
            reason=f"too short: {n} frames at {config.fps} fps ({n / config.fps:.2f} s); needs at least "
            f"{config.min_frames} ({config.min_frames / config.fps:.2f} s)",
        )  # fmt: skip

    try:
        audio = read_audio(ref.audio or ref.video)
    except UserError as err:
        return Reject(
            key=ref.key, stage="audio", reason=str(err).split(": ", 1)[-1], source=ref.audio or source
        )
    hop = AUDIO_RATE // config.fps
    audio = np.pad(audio, (0, max(0, n * hop - len(audio))))[: n * hop]
    level = dbfs(audio)
    if level < config.silence_dbfs:
        return Reject(
            key=ref.key, stage="audio", source=ref.audio or source,
            reason=f"silent audio ({level:.1f} dBFS, threshold {config.silence_dbfs:.0f} dBFS)",
        )  # fmt: skip

    results = analyzer.track(frames)
    found = [r.mesh is not None for r in results]
    fraction = sum(found) / n
    if fraction < config.min_face_fraction:
        return Reject(
            key=ref.key, stage="face", source=source,
            reason=f"no face in {n - sum(found)}/{n} frames (needs a face in {config.min_face_fraction:.0%})",
        )  # fmt: skip
    meshes = [r.mesh for r in results]
    refused = identity_problem(frames, [m for m in meshes if m is not None], analyzer, config)
    if refused:
        return Reject(key=ref.key, stage="face", reason=refused, source=source)
    crop = stable_crop(meshes, margin=config.crop_margin)
    # Frames without a face take the landmarks of the nearest frame with one.
    have = np.flatnonzero(found)
    nearest = have[np.abs(np.arange(n)[:, None] - have[None]).argmin(1)]
    landmarks = np.stack([meshes[i].landmarks for i in nearest]).astype(np.float64)  # (T, 468, 3) image px

    seen = au_readings(frames, landmarks)
    if isinstance(seen, str):
        return Reject(key=ref.key, stage="face", reason=seen, source=source)
    au_names, au, view = seen

    size = config.crop_size
    cropped, crop_lm = crop_to(frames, landmarks, crop, size)
    crop_lm = crop_lm.astype(np.float16)

    meta = {
        **ref.model_dump(),
        "frames": n,
        "fps": config.fps,
        "fps_in": round(float(fps_in), 3),
        "crop_box": {"cx": crop.cx, "cy": crop.cy, "size": crop.size, "out": size},
        "face_fraction": round(fraction, 4),
        "audio_dbfs": round(level, 2),
        "au_names": au_names,
        "au_calibration": load_calibration().id,
        "au_view": view.name,
        "au_measurable": view.measurable(),
        "audio_features": f"encoder:{Path(config.audio_encoder).name}"
        if config.audio_encoder
        else f"log-mel-{config.n_mels}",
    }
    blendshapes = None
    if all(meshes[i].blendshapes for i in nearest):  # the official landmarker is configured
        names = sorted(meshes[nearest[0]].blendshapes)
        blendshapes = np.array(
            [[meshes[i].blendshapes.get(b, 0.0) for b in names] for i in nearest], np.float16
        )
        meta["blendshape_names"] = names
    try:
        mp4 = _mp4(cropped, config.fps, config.crf)
    except (OSError, ValueError) as err:
        return Reject(key=ref.key, stage="encode", reason=f"H.264 encoding failed: {err}", source=source)
    return MediaSample(
        key=ref.key,
        mp4=mp4,
        wav=_wav(audio),
        landmarks=crop_lm,
        au=au,
        audio=audio_features(audio, n, config.n_mels, config.fps, config.audio_encoder),
        meta=meta,
        blendshapes=blendshapes,
    )
