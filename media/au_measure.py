"""AU intensity measured on video (generated or real) with the calibrated measure (`media.au_calibration`),
against what a CoT requested, and the requested-vs-measured plot. Shared by `tbd generate`, `tbd evaluate`
and `tbd calibrate` (which fits the measure on frames seen exactly as `track_video` sees them)."""

from __future__ import annotations

from collections.abc import Iterable
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
    landmarks: np.ndarray,
    size: int,
    token_regions: tuple[str, ...],
    slots: int,
    extra: tuple[str, ...] = (),
    out: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """For crop-normalised landmarks (468, 3) of a `size`-pixel frame: the union (S, S) of `token_regions`,
    one mask per local token (slots, S, S; token i inside `token_regions[i]`, zeros in unused slots), and the
    `extra` regions' masks (e.g. the mouth for the loss weight), all rasterised in one pass. S = `out` (the
    latent size, e.g. 64 for 512 px through SD's VAE), else `size`: a smaller `out` is rasterised at 4x (at
    least 128 px, where the regions' dilation and blur are resolved; never above `size`) and area-averaged,
    so each cell holds the region's coverage of it."""
    import cv2

    from media.face_crops import region_masks

    out = size if out is None else out
    raster = min(size, max(4 * out, 128))
    wanted = tuple(dict.fromkeys((*token_regions, *extra)))
    masks = region_masks(landmarks[:, :2] * raster, raster, raster, wanted) if wanted else {}
    zero = np.zeros((raster, raster), np.float32)
    union = np.max(np.stack([masks[r] for r in token_regions]), 0) if token_regions else zero
    per_token = np.zeros((slots, raster, raster), np.float32)
    for i, region in enumerate(token_regions[:slots]):
        per_token[i] = masks[region]
    extras = {r: masks[r] for r in extra}
    if raster != out:  # the union is taken before averaging: coverage of the union, not the largest region's

        def cells(m: np.ndarray) -> np.ndarray:
            return cv2.resize(m, (out, out), interpolation=cv2.INTER_AREA)

        union, extras = cells(union), {r: cells(m) for r, m in extras.items()}
        per_token = np.stack([cells(m) for m in per_token]) if slots else per_token[:, :out, :out]
    return union, per_token, extras


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


class AUStream:
    """`track_video` one frame at a time, for videos too long to hold: frames of (height, width) are
    upscaled by max(1, 256 // min(H, W)) with bicubic interpolation as the calibration saw them, meshed
    (tracked frame to frame, or by the caller: `tracked=True` with frames that need no upscaling), and
    reduced to their features at once; only the features (F,) and landmarks (468, 3) of each frame are kept."""

    def __init__(self, height: int, width: int, tracked: bool = False):
        from media.face import FaceTracker, shared_analyzer

        self.h, self.w = height, width
        self.up = max(1, TRACK_SIZE // min(height, width))
        self.tracked = tracked and self.up == 1
        self.tracker = None if self.tracked else FaceTracker(shared_analyzer())
        self.features: list[np.ndarray | None] = []
        self.landmarks: list[np.ndarray | None] = []
        self.iods: list[float] = []

    def add(self, frame: np.ndarray, landmarks: np.ndarray | None = None) -> None:
        """One frame (H, W, 3) uint8; with `tracked`, its landmarks (468, 3) in pixels, None: no face."""
        import cv2

        from media.au_calibration import features
        from media.face import FaceMesh

        up = self.up
        seen = (
            cv2.resize(frame, (self.w * up, self.h * up), interpolation=cv2.INTER_CUBIC) if up > 1 else frame
        )
        if self.tracked:
            mesh = FaceMesh(np.asarray(landmarks, np.float32), 1.0) if landmarks is not None else None
        else:
            mesh = self.tracker(seen).mesh
        if mesh is None:
            self.features.append(None)
            self.landmarks.append(None)
            return
        self.features.append(features(seen[None], mesh.landmarks[None])[0])
        self.landmarks.append(
            mesh.landmarks / (self.w * up)
        )  # normalised by the width (square crops: the side)
        self.iods.append(mesh.interocular / up)

    def result(self) -> VideoAUs:
        """The tracked video; consumes the stream (each frame's arrays are freed as they are copied, so a
        long video's landmarks are never held twice)."""
        from media.au_calibration import FEATURES

        feats = np.full((len(self.features), len(FEATURES)), np.nan, np.float32)
        lm = np.full((len(self.features), 468, 3), np.nan, np.float32)
        for i in range(len(feats)):
            f, m = self.features[i], self.landmarks[i]
            self.features[i] = self.landmarks[i] = None
            if f is not None:
                feats[i], lm[i] = f, m
        self.features, self.landmarks = [], []
        return VideoAUs(feats, lm, float(np.median(self.iods)) if self.iods else float("nan"))


def track_video(frames: np.ndarray, landmarks: np.ndarray | None = None) -> VideoAUs:
    """Track frames (T, H, W, 3) uint8 as the calibration saw them (`AUStream`). Frames that need no
    upscaling may come with their `landmarks` (T, 468, 3) in pixels, tracked already, and are not tracked
    again."""
    frames = np.asarray(frames)
    stream = AUStream(*frames.shape[1:3], tracked=landmarks is not None)
    for i, frame in enumerate(frames):
        stream.add(frame, landmarks[i] if stream.tracked else None)
    return stream.result()


def track_frames(frames: Iterable[np.ndarray]) -> VideoAUs:
    """`track_video` of frames (H, W, 3) uint8 that come one at a time (e.g. `video_io.decode_frames`):
    one frame is held at a time, whatever the video's length. Raises ValueError without frames."""
    stream = None
    for frame in frames:
        if stream is None:
            stream = AUStream(*frame.shape[:2])
        stream.add(frame)
    if stream is None:
        raise ValueError("no frames to track")
    return stream.result()


STILL_FRAMES = 8  # a still is tracked as a video of this many copies of itself


def track_still(frame: np.ndarray) -> VideoAUs:
    """A still frame (H, W, 3) seen as a video is: `track_video` of `STILL_FRAMES` copies. Its `baseline()`
    is then the neutral a tracked video is compared with; from one frame alone (the mesh found by detection,
    not tracked from a previous frame) it was not, and a still reference read AUs against itself (the
    astronaut's: every clip's still classified "contempt")."""
    return track_video(np.repeat(np.asarray(frame)[None], STILL_FRAMES, 0))


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
