"""AU intensity measured on video (generated or real) with the calibrated measure (`media.au_calibration`),
against what a CoT requested, and the requested-vs-measured plot. Shared by `tbd generate`, `tbd evaluate`
and `tbd calibrate` (which fits the measure on frames seen exactly as `track_video` sees them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def requested_aus(cot: dict) -> dict[int, int]:
    """AU -> the FACS value (1..5) a CoT asks for (the stronger side when an AU is listed twice)."""
    from annotation.facs import intensity_value

    out: dict[int, int] = {}
    for u in cot["action_units"]:
        out[u["au"]] = max(out.get(u["au"], 0), intensity_value(u["intensity"]))
    return out


def token_masks(
    landmarks: np.ndarray, size: int, token_regions: tuple[str, ...], slots: int, extra: tuple[str, ...] = ()
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """For crop-normalised landmarks (468, 3) at `size` pixels: the union (S, S) of `token_regions`, one
    mask per local token (slots, S, S; token i inside `token_regions[i]`, zeros in unused slots), and the
    `extra` regions' masks (e.g. the mouth for the loss weight), all rasterised in one pass."""
    from media.face import region_masks

    wanted = tuple(dict.fromkeys((*token_regions, *extra)))
    masks = region_masks(landmarks[:, :2] * size, size, size, wanted) if wanted else {}
    zero = np.zeros((size, size), np.float32)
    union = np.max(np.stack([masks[r] for r in token_regions]), 0) if token_regions else zero
    per_token = np.zeros((slots, size, size), np.float32)
    for i, region in enumerate(token_regions[:slots]):
        per_token[i] = masks[region]
    return union, per_token, {r: masks[r] for r in extra}


TRACK_SIZE = 256  # frames smaller than this are upscaled by a whole factor before the face model


@dataclass
class VideoAUs:
    """A video as the calibrated measure sees it: per-frame features (T, F) and crop-normalised landmarks
    (T, 468, 3), NaN rows where no face was found, and the face's inter-ocular distance in source pixels."""

    features: np.ndarray
    landmarks: np.ndarray
    iod_px: float

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.landmarks).any(axis=(1, 2))

    def baseline(self) -> np.ndarray:
        """The median features of the frames with a face (of a neutral still or clip: a baseline)."""
        return np.nanmedian(self.features[self.found], 0)


def track_video(frames: np.ndarray, landmarks: np.ndarray | None = None) -> VideoAUs:
    """Track frames (T, H, W, 3) uint8 as the calibration saw them: upscaled by max(1, 256 // min(H, W))
    with bicubic interpolation, then MediaPipe's mesh (tracked frame to frame); features on the upscaled
    frames. Frames that need no upscaling may come with their `landmarks` (T, 468, 3) in pixels, tracked
    already (preprocess), and are not tracked again."""
    import cv2

    from media.au_calibration import FEATURES, features
    from media.face import FaceMesh, FaceResult, shared_analyzer

    frames = np.asarray(frames)
    h, w = frames.shape[1:3]
    up = max(1, TRACK_SIZE // min(h, w))
    seen = np.stack([cv2.resize(f, (w * up, h * up), interpolation=cv2.INTER_CUBIC) for f in frames]) if up > 1 else frames  # fmt: skip
    size = w  # landmarks are normalised by the frame width (square crops: the crop side)
    if landmarks is not None and up == 1:
        results = [FaceResult(FaceMesh(np.asarray(lm, np.float32), 1.0)) for lm in landmarks]
    else:
        results = shared_analyzer().track(list(seen))
    feats = np.full((len(frames), len(FEATURES)), np.nan, np.float32)
    lm = np.full((len(frames), 468, 3), np.nan, np.float32)
    found = [i for i, r in enumerate(results) if r.found]
    if found:
        px = np.stack([results[i].mesh.landmarks for i in found])
        feats[found] = features(seen[found], px)
        lm[found] = px / (size * up)
    iods = [results[i].mesh.interocular / up for i in found]
    return VideoAUs(feats, lm, float(np.median(iods)) if iods else float("nan"))


def track_generated(frames: np.ndarray) -> np.ndarray:
    """Crop-normalised landmarks (T, 468, 3) of generated frames; NaN rows where no face is found."""
    return track_video(frames).landmarks


def measured_aus(video: VideoAUs, baseline: np.ndarray) -> dict[int, list[float | None]]:
    """Per-frame FACS 0-5 intensities of every AU the calibrated measure can see at this face size
    (the stronger side where an AU has sides), against a neutral `baseline` (F,) of the same person seen
    the same way; None where a frame has no face."""
    from media.au_calibration import channel_au, load

    readings = load().measure(np.nan_to_num(video.features), baseline, video.iod_px)
    out: dict[int, np.ndarray] = {}
    for channel, series in readings.items():
        au, _ = channel_au(channel)
        out[au] = np.maximum(out[au], series) if au in out else series
    found = video.found
    return {au: [round(float(v), 3) if ok else None for v, ok in zip(series, found, strict=True)]
            for au, series in sorted(out.items())}  # fmt: skip


def plot_aus(requested: dict[int, float], measured: dict[int, list], fps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unmeasured = sorted(set(requested) - set(measured))  # the calibrated measure cannot see these
    aus = sorted(set(requested) | set(measured)) if unmeasured else sorted(set(requested) & set(measured))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, au in enumerate(aus):
        color = f"C{i % 10}"
        series = measured.get(au, [])
        if series:
            t = np.arange(len(series)) / fps
            ax.plot(t, [np.nan if v is None else v for v in series], color=color, label=f"AU{au} measured")
        if au in requested:
            ax.axhline(requested[au], color=color, linestyle="--", linewidth=1, label=f"AU{au} requested")
    n = max((len(v) for v in measured.values()), default=0)
    notes = []
    if not measured:
        notes.append("no AU is measurable at this face size")
    elif not any(v is not None for series in measured.values() for v in series):
        notes.append("no face found in the generated frames")
    if unmeasured:
        notes.append(", ".join(f"AU{a}" for a in unmeasured) + ": requested, not measurable at this size")
    for k, note in enumerate(notes):
        ax.text(0.5, 0.55 - 0.1 * k, note, transform=ax.transAxes, ha="center")
    ax.set(xlabel="seconds", ylabel="FACS intensity (0-5)", ylim=(0, 5.2), xlim=(0, max(n - 1, 1) / fps),
           title="requested vs measured AUs")  # fmt: skip
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
