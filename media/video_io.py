"""Video and audio IO with PyAV: H.264 mp4 with AAC audio, m4a, decoding to numpy."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tbd_core.errors import UserError

AUDIO_RATE = 16_000


def _audio_stream(container, sample_rate: int):
    stream = container.add_stream("aac", rate=sample_rate)
    stream.layout = "mono"
    return stream


def _encode_audio(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    samples = np.clip(np.asarray(audio, np.float32), -1, 1)[None]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = 0
    frame.time_base = Fraction(1, sample_rate)
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: int = 25,
    audio: np.ndarray | None = None,
    sample_rate: int = AUDIO_RATE,
    crf: int = 18,
) -> None:
    """Write (T, H, W, 3) uint8 RGB frames as H.264 (yuv420p) at `fps`, with mono AAC audio if given."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "fast"}
        if CODEC_THREADS:
            stream.options["threads"] = str(CODEC_THREADS)
        audio_stream = _audio_stream(container, sample_rate) if audio is not None else None
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if audio_stream is not None:
            _encode_audio(container, audio_stream, audio, sample_rate)


def write_m4a(path: str | Path, audio: np.ndarray, sample_rate: int = AUDIO_RATE) -> None:
    """Write mono AAC audio in an MPEG-4 audio file."""
    with av.open(str(path), mode="w", format="ipod") as container:
        _encode_audio(container, _audio_stream(container, sample_rate), audio, sample_rate)


def video_info(path: str | Path) -> dict:
    """Stream facts without decoding: fps, frame count, size, duration, has_audio."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise UserError(f"{path}: no video stream")
            v = c.streams.video[0]
            return {
                "fps": float(v.average_rate) if v.average_rate else 0.0,
                "frames": v.frames,
                "width": v.codec_context.width,
                "height": v.codec_context.height,
                "duration": float(c.duration / av.time_base) if c.duration else 0.0,
                "has_audio": bool(c.streams.audio),
                "codec": v.codec_context.name,
            }
    except (av.FFmpegError, OSError) as err:
        raise UserError(f"{path}: unreadable video ({err})") from err


CODEC_THREADS = 0  # FFmpeg decode / x264 encode threads per stream (0: FFmpeg's choice); see pin_threads


def pin_threads(n: int) -> None:
    """Every library the preprocess stage uses at `n` threads in this process (a Ray worker per core):
    FFmpeg/x264, OpenCV, BLAS, torch. BLAS matters even in one process: OpenBLAS threads spin for a while
    after each call (the log-mel's matrix product), taking a core from the next clip's video decode
    (measured: decode 4x slower, the whole stage 145 vs 204 frames/s on 2 cores)."""
    import cv2
    from threadpoolctl import threadpool_limits

    global CODEC_THREADS
    CODEC_THREADS = n
    cv2.setNumThreads(n)
    threadpool_limits(limits=n)  # BLAS and OpenMP pools loaded so far
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """A decoded frame as it is meant to be shown: `rotation` is PyAV's `VideoFrame.rotation` (degrees
    counter-clockwise that the display matrix turns the stored picture; phones record it)."""
    k = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k)) if k else frame


def read_frames(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode every video frame as (T, H, W, 3) uint8 RGB, upright by the stream's rotation metadata;
    returns (frames, fps)."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                kinds = sorted({s.type for s in c.streams}) or ["nothing"]
                raise UserError(f"{path}: no video stream (the file holds {', '.join(kinds)})")
            stream = c.streams.video[0]
            if CODEC_THREADS:
                stream.thread_count = CODEC_THREADS
            frames = [upright(f.to_ndarray(format="rgb24"), f.rotation) for f in c.decode(stream)]
            fps = float(stream.average_rate or 0)
    except (av.FFmpegError, OSError) as err:
        raise UserError(f"{path}: unreadable video ({err})") from err
    if not frames:
        raise UserError(f"{path}: video has no frames")
    return np.stack(frames), fps


def read_audio(path: str | Path, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """Decode the first audio stream to mono float32 at `sample_rate`."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise UserError(f"{path}: no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks = []
            for frame in c.decode(c.streams.audio[0]):
                chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(frame))
            chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(None))
    except (av.FFmpegError, OSError) as err:
        raise UserError(f"{path}: unreadable audio ({err})") from err
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def frame_envelope(
    audio: np.ndarray, n_frames: int, fps: int = 25, sample_rate: int = AUDIO_RATE
) -> np.ndarray:
    """RMS of the audio in each video frame's window (T,), the speech envelope at frame rate."""
    hop = sample_rate // fps
    audio = np.pad(np.asarray(audio, np.float32), (0, max(0, n_frames * hop - len(audio))))
    return np.sqrt((audio[: n_frames * hop].reshape(n_frames, hop) ** 2).mean(1))
