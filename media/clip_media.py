"""Preprocess one clip into media samples, or rejects with their stage, reason and span.

Only the span where the video and its audio overlap is used (`media.clip_spans`); the seconds of either
outside it are rejects keyed `{key}_av-head` / `{key}_av-tail`. That span is cut into consecutive segments
of `segment_seconds` (one segment keeps the clip's key; more are `{key}_seg000`, `{key}_seg001`, ...);
every segment ends as a sample or a reject (damaged data rejects the segments it lies in), so every second
of the input is accounted for. Per segment, streamed (memory bounded by the segment's small per-frame records
and at most `kept_regions.KEEP_BYTES` of pixels around the face, never by its frames), each frame decoded once:
audio (16 kHz mono of the segment's time span; silent → reject) → the frames, resampled to
`fps` by their timestamps (`media.video_io.iter_frames`; broken timestamps → reject): face (detect + track
the 468-point mesh; too few frames with a face, a second person → reject) and calibrated AU features
(`media.au_measure.AUStream`, uncentred: annotate subtracts the speaker's neutral), the pixels around the
face kept (`media.kept_regions`) → stable crop → crops cut from the kept pixels (or, past their memory
budget, from the frames decoded again), crop-normalised landmarks, H.264 encode as they come → audio
features aligned to frames (log-mel, or a local pretrained encoder) and the wav. Region masks are not
stored: they are a function of `landmarks.npy` (`media.face_crops.region_masks`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.io import wavfile

from media.au_calibration import load as load_calibration
from media.audio_features import audio_features
from media.clip_spans import check_accounted, pair_spans, segment_spans, span_of
from media.crop_pass import CropPasses, run_now
from media.face import FaceAnalyzer
from media.face_crops import crop_landmarks, stable_crop
from media.frames import rgb_upright, warp_crop
from media.packets import probe_audio
from media.prefetch import decode_ahead
from media.segment_scan import SegmentScan, roll_problem
from media.video_io import AUDIO_RATE, VideoProbe, iter_frames, probe_video, read_audio, write_mp4
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
    # Videos longer than this are cut into consecutive segments of this length (keys `{key}_segNNN`),
    # each a sample or a ledger row; nothing is dropped. It bounds a worker's per-segment records.
    segment_seconds: float = 60.0
    min_frames: int = 16  # shorter clips and segments are rejected as too short (the training window)
    max_gap_frames: int = 5  # a gap between source frames over this many output frames: broken timestamps
    # One identity per clip: a second face at least this fraction of the first's width in a sampled frame
    # rejects the clip (its tracks could swap identities); smaller background faces are ignored.
    max_second_face: float = 0.5
    max_roll_deg: float = 30.0  # faces rolled further (a video on its side) are rejected; generate warns
    # Audio past either end of the video by up to this (an encoder's last frame, a recorder's tail) is not
    # ledgered (the sample's meta has the audio's span); more is, as audio without picture.
    audio_overhang_seconds: float = 0.25


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


def nearest_with(found: np.ndarray) -> np.ndarray:
    """For each frame, the index of the nearest frame where `found` (T,) bool is true (itself when it is)."""
    have = np.flatnonzero(found)
    return have[np.abs(np.arange(len(found))[:, None] - have[None]).argmin(1)]


def dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def _wav(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    wavfile.write(buf, AUDIO_RATE, (np.clip(audio, -1, 1) * 32767).astype(np.int16))
    return buf.getvalue()


def _mp4(frames, fps: int, crf: int, expected: int | None = None) -> bytes:
    """H.264 bytes of frames (an array or an iterable, encoded as they come)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        # a training window seeks: 2 s GOPs; one x264 thread (the crop pass has a thread of its own beside
        # the tracking, and the crops are the bytes a Ray worker pinned to one core writes)
        n = write_mp4(path, frames, fps=fps, crf=crf, keyframe_every=2 * fps, encode_threads=1)
        if expected is not None and n != expected:
            raise ValueError(f"the crop pass gave {n} frames, the tracking pass {expected}")
        return path.read_bytes()


def warm_up(config: MediaConfig, analyzer: FaceAnalyzer | None = None) -> None:
    """A process's one-time costs of its first clip, paid now (a Ray worker's start-up, not its first
    shard's time): the AU calibration and its content hash, the speech features' library or encoder (the
    log-mel's import of `transformers.audio_utils`: 1.3 s; with both, 1.6 s of a 1080p clip's 2.1 s), and
    the analyzer's first detection and mesh on a blank picture (its models' first runs)."""
    from media.face_boxes import FaceBox

    load_calibration().id  # noqa: B018 (cached)
    if analyzer is not None:
        blank = np.zeros((256, 256, 3), np.uint8)
        analyzer.detect_all(blank)
        analyzer.mesh_from_detection(blank, FaceBox((64.0, 64.0, 192.0, 192.0), 1.0, np.full((6, 2), 128.0)))
    audio_features(
        np.zeros(AUDIO_RATE, np.float32), config.fps, config.n_mels, config.fps, config.audio_encoder
    )


def process_clip(ref: ClipRef, analyzer: FaceAnalyzer, config: MediaConfig) -> list[MediaSample | Reject]:
    """Every segment of the span where the clip's video has audio as a sample or a reject, and the unpaired
    seconds around it as rejects (`pair_spans`), in time order; a video or audio that cannot be read at all
    (or no longer exists): one reject for the whole file."""
    return scan_clip(ref, analyzer, config, run_now)()


def process_clips(
    refs: Iterable[ClipRef], analyzer: FaceAnalyzer, config: MediaConfig
) -> Iterator[tuple[ClipRef, list[MediaSample | Reject]]]:
    """`process_clip` of each clip, in order, each segment's crop pass run in a thread while the next
    segment or clip is decoded and tracked (`media.crop_pass.CropPasses`; now, in a process pinned to one
    core): at 1080p on 2 cores, both cores busy. BLAS runs one thread meanwhile: its products here are
    small, and OpenBLAS's idle threads spin after each (at 1080p on 2 cores, 1.1 of 7.5 ms of CPU per frame,
    2026-12-07)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), CropPasses() as passes:
        pending = None
        for ref in refs:
            results = scan_clip(ref, analyzer, config, passes)
            if pending is not None:
                yield pending[0], pending[1]()
            pending = ref, results
        if pending is not None:
            yield pending[0], pending[1]()


def scan_clip(
    ref: ClipRef, analyzer: FaceAnalyzer, config: MediaConfig, passes: Callable
) -> Callable[[], list[MediaSample | Reject]]:
    """`process_clip` with each segment's crop pass handed to `passes` (`media.crop_pass`) as it comes; the
    function returned waits for them and gives the clip's results."""
    audio_path = ref.audio or ref.video
    for path, stage in ((ref.video, "decode"), (audio_path, "audio")):
        if not os.path.exists(path):
            link = f" (a link to the missing {os.path.realpath(path)})" if os.path.islink(path) else ""
            reason = f"file vanished since ingest: {path} no longer exists{link}"
            return lambda: [Reject(key=ref.key, stage=stage, reason=reason, source=path)]
    try:
        probe = probe_video(ref.video)
    except UserError as err:
        why = str(err).split(": ", 1)[-1]
        return lambda: [Reject(key=ref.key, stage="decode", reason=why, source=ref.video)]
    try:
        a0, a1 = (t - probe.start for t in probe_audio(audio_path))
    except UserError as err:
        why = str(err).split(": ", 1)[-1]
        return lambda: [Reject(key=ref.key, stage="audio", reason=why, source=audio_path)]
    (c0, c1), unpaired = pair_spans(probe.duration, a0, a1, config.fps, config.audio_overhang_seconds)
    if c1 <= c0:
        why = f"the audio ({a0:.2f}-{a1:.2f} s) and the video (0.00-{probe.duration:.2f} s) do not overlap"
        return lambda: [Reject(key=ref.key, stage="audio", reason=why, source=audio_path)]
    rejects = [Reject(key=f"{ref.key}_{part}", stage="audio", reason=why, source=audio_path, start=s, end=e)
               for part, s, e, why in unpaired]  # fmt: skip
    for r in rejects:
        log.warning("%s: %s (%s)", ref.key, r.reason, r.source)
    spans = [(c0 + s, c0 + e) for s, e in segment_spans(c1 - c0, config.segment_seconds)]
    if len(spans) > 1:
        log.info(
            "%s: %.1f s, cut into %d segments of %.0f s", ref.key, c1 - c0, len(spans), config.segment_seconds
        )
    segments = [
        process_segment(
            ref.model_copy(
                update={"key": f"{ref.key}_seg{i:03d}" if len(spans) > 1 else ref.key, "start": s, "end": e}
            ),
            analyzer,
            config,
            probe,
            (a0, a1),
            passes,
        )  # fmt: skip
        for i, (s, e) in enumerate(spans)
    ]

    def results() -> list[MediaSample | Reject]:
        done = [s.result() if isinstance(s, Future) else s for s in segments]
        results = sorted([*rejects, *done], key=lambda r: span_of(r)[0])
        slack, duration = config.audio_overhang_seconds, probe.duration
        check_accounted(results, a0 if a0 < -slack else 0.0, a1 if a1 > duration + slack else duration)
        return results

    return results


def process_segment(
    ref: ClipRef,
    analyzer: FaceAnalyzer,
    config: MediaConfig,
    probe: VideoProbe,
    audio_span: tuple[float, float],
    passes: Callable = run_now,
) -> Reject | Future[MediaSample | Reject]:
    """Run every stage on the span [ref.start, ref.end) of the video, inside the span where it has audio
    (`audio_span`, the video's clock); the first stage that fails names the reject. The last, the crop pass
    (crops cut from the pixels kept, or the frames decoded again, and H.264-encoded), goes to `passes`."""
    source, fps = ref.video, config.fps

    def reject(stage: str, reason: str, source: str = source) -> Reject:
        return Reject(key=ref.key, stage=stage, reason=reason, source=source, start=ref.start, end=ref.end)

    def too_short(n: int) -> Reject:
        whole = (
            f" (the last {ref.end - ref.start:.2f} s of a {probe.duration:.2f} s video)"
            if ref.start > 0
            else ""
        )
        return reject("decode", f"too short: {n} frames at {fps} fps ({n / fps:.2f} s){whole}; needs at "
                      f"least {config.min_frames} ({config.min_frames / fps:.2f} s)")  # fmt: skip

    expected = math.ceil((ref.end - ref.start) * fps - 1e-6)
    if expected < config.min_frames:
        return too_short(expected)
    audio_path = ref.audio or ref.video
    span_end = ref.start + expected / fps  # the last frame's audio, to its end
    try:  # the same clock as the video: presentation times from the video's first frame
        audio = read_audio(audio_path, start=probe.start + ref.start, end=probe.start + span_end)
    except UserError as err:
        return reject("audio", str(err).split(": ", 1)[-1], audio_path)
    level = dbfs(audio)
    if level < config.silence_dbfs:
        return reject(
            "audio", f"silent audio ({level:.1f} dBFS, threshold {config.silence_dbfs:.0f} dBFS)", audio_path
        )

    def frames(convert):
        return iter_frames(source, fps, ref.start, ref.end, config.max_gap_frames / fps, convert)

    scan = SegmentScan(analyzer, config, expected)
    try:  # decoded ahead in a thread while this one tracks; the decoded frame too, for `KeptRegions`
        for frame in decode_ahead(frames(lambda f: (rgb_upright(f), f))):
            scan.add(frame)
    except UserError as err:
        return reject("decode", str(err).split(": ", 1)[-1])
    scan.finish()
    meshes, n = scan.meshes, len(scan.meshes)
    if n < config.min_frames:
        return too_short(n)
    found = [m is not None for m in meshes]
    fraction = sum(found) / n
    if fraction < config.min_face_fraction:
        return reject(
            "face", f"no face in {n - sum(found)}/{n} frames (needs a face in {config.min_face_fraction:.0%})"
        )
    refused = scan.identity or roll_problem([m for m in meshes if m is not None], config)
    if refused:
        return reject("face", refused)
    crop = stable_crop(meshes, margin=config.crop_margin)
    # Frames without a face take the landmarks (and AU readings) of the nearest frame with one.
    nearest = nearest_with(np.asarray(found))
    landmarks = np.stack([meshes[i].landmarks for i in nearest]).astype(np.float64)  # (T, 468, 3) image px
    video = scan.au.result()  # small sources are tracked again upscaled, as the calibration saw them
    if not video.found.any():
        return reject("face", "the face model lost the face in every frame seen at the AU measure's size")
    seen_nearest = nearest_with(video.found)
    cal = load_calibration()
    au_names, au = cal.linear(video.features[seen_nearest], video.iod_px)
    view = cal.view(video.iod_px)

    size = config.crop_size
    crop_lm = crop_landmarks(landmarks, crop, size).astype(np.float16)
    hop = AUDIO_RATE / fps
    # n <= expected frames, each with its audio read whole (`pair_spans` keeps them inside the audio)
    audio = audio[: round(n * hop)]
    meta = {
        **ref.model_dump(),
        "frames": n,
        "fps": fps,
        "fps_in": round(probe.fps, 3),
        "source_times": [round(t, 4) for t in scan.sources],  # the source frame shown at each output frame
        "crop_box": {"cx": crop.cx, "cy": crop.cy, "size": crop.size, "out": size},
        "face_fraction": round(fraction, 4),
        "audio_dbfs": round(level, 2),
        "audio_span": [round(t, 4) for t in audio_span],  # the whole audio's, s (audio past the video's ends)
        "au_names": au_names,
        "au_calibration": cal.id,
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
    crops, kept = scan.kept.crops(crop.affine(size), size), scan.kept.reason  # as `warp_crop` cuts them

    def crop_pass() -> MediaSample | Reject:  # with the speech features, off the tracking thread
        nonlocal crops
        if crops is None:
            log.debug("%s: the crop pass decodes again: %s", ref.key, kept)
            crops = (f.image for f in decode_ahead(frames(warp_crop(crop.affine(size), size))))
        try:
            mp4 = _mp4(crops, fps, config.crf, n)
        except UserError as err:
            return reject("decode", str(err).split(": ", 1)[-1])
        except (OSError, ValueError) as err:
            return reject("encode", f"H.264 encoding failed: {err}")
        return MediaSample(
            key=ref.key,
            mp4=mp4,
            wav=_wav(audio),
            landmarks=crop_lm,
            au=au.astype(np.float32),
            audio=audio_features(audio, n, config.n_mels, fps, config.audio_encoder),
            meta=meta,
            blendshapes=blendshapes,
        )

    return passes(crop_pass)
