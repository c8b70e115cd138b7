"""Video and audio IO with PyAV: H.264 mp4 with AAC audio, m4a, decoding to numpy.

Long inputs are read as streams: `probe_video` takes a video's length from its packet timestamps without
decoding (`media.packets.probe_audio`: the audio's span), `iter_frames` yields the frames of a time span
resampled by their timestamps (memory: two frames), `read_audio` decodes a time span, and `write_mp4`
encodes frames as they come. Both readers decode packet by packet (`media.packets.decoded`): damaged data
fails only the spans it lies in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from media import threads
from media.frames import rgb_upright, to_rgb
from media.packets import damage_report, decoded
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
    frames: np.ndarray | Iterable[np.ndarray],
    fps: int = 25,
    audio: np.ndarray | None = None,
    sample_rate: int = AUDIO_RATE,
    crf: int = 18,
    keyframe_every: int | None = None,
    encode_threads: int | None = None,
) -> int:
    """Write uint8 RGB frames, (T, H, W, 3) or any iterable of (H, W, 3) (encoded as they come, so a
    generator keeps one frame in memory), as H.264 (yuv420p) at `fps`, with mono AAC audio if given.
    `keyframe_every` frames at most between keyframes (a reader seeking to a window decodes at most that
    many frames before it; default: x264's 250). `encode_threads`: x264's threads (None: the process's
    pinned count, else FFmpeg's choice; x264's output depends on its thread count, 1 gives one slice per
    frame as ffmpeg's x264 writes). Returns the number of frames written. Raises ValueError on other
    shapes or dtypes, or no frames."""
    if isinstance(frames, np.ndarray) and (frames.ndim != 4 or frames.shape[-1] != 3):
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    n = 0
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = audio_stream = None
        for rgb in frames:
            if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
                raise ValueError(f"expected (H, W, 3) uint8 frames, got {rgb.shape} {rgb.dtype}")
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height = rgb.shape[1], rgb.shape[0]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": "fast"}
                if keyframe_every:
                    stream.options["g"] = str(keyframe_every)
                encoders = threads.PINNED if encode_threads is None else encode_threads
                if encoders:
                    stream.options["threads"] = str(encoders)
                audio_stream = _audio_stream(container, sample_rate) if audio is not None else None
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            ):
                container.mux(packet)
            n += 1
        if stream is None:
            raise ValueError("no frames to write")
        for packet in stream.encode(None):
            container.mux(packet)
        if audio_stream is not None:
            _encode_audio(container, audio_stream, audio, sample_rate)
    return n


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


def _open(path):
    try:
        return av.open(str(path) if isinstance(path, str | Path) else path)
    except (av.FFmpegError, OSError) as err:
        raise UserError(f"{path}: unreadable video ({err})") from err


def _video_stream(container, path):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["nothing"]
        raise UserError(f"{path}: no video stream (the file holds {', '.join(kinds)})")
    stream = container.streams.video[0]
    if threads.CODEC_THREADS != 1:  # frame threads too: most videos have one slice per frame (ffmpeg's x264)
        stream.thread_type = "AUTO"
    if threads.CODEC_THREADS:
        stream.thread_count = threads.CODEC_THREADS
    return stream


@dataclass(frozen=True)
class VideoProbe:
    """A video stream's timing from its packets (no decoding): `start` is the first frame's presentation
    time and `duration` runs from it to the end of the last frame, both in seconds; `fps` is the nominal
    (average) rate, 0 when the file does not say."""

    start: float
    duration: float
    fps: float
    packets: int
    width: int
    height: int


def probe_video(path: str | Path) -> VideoProbe:
    """The video's timing read from every packet's timestamps (the container's stated duration can be
    wrong). Raises UserError for an unreadable file, no video stream, no packets, or packets without
    timestamps."""
    with _open(path) as c:
        stream = _video_stream(c, path)
        tb, first, last, n = stream.time_base, math.inf, -math.inf, 0
        try:
            for packet in c.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                if packet.pts is None:
                    raise UserError(f"{path}: broken timestamps (video packets without a presentation time)")
                n += 1
                first = min(first, packet.pts)
                last = max(last, packet.pts + max(packet.duration or 0, 0))
        except av.FFmpegError as err:
            raise UserError(f"{path}: unreadable video ({err})") from err
        if not n:
            raise UserError(f"{path}: video has no frames")
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if last <= first and fps:  # one packet without a duration
            last = first + 1 / fps / tb
        size = stream.codec_context.width, stream.codec_context.height
    return VideoProbe(float(first * tb), float((last - first) * tb), fps, n, *size)


@dataclass(frozen=True)
class TimedFrame:
    """One output frame: `time` is its time in the output (s, from the video's first frame), `source` the
    presentation time of the decoded frame shown for it (same origin)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, upright (or what `iter_frames`' `convert` made of the frame)
    time: float
    source: float


def iter_frames(
    path: str | Path,
    fps: float,
    start: float = 0.0,
    end: float | None = None,
    max_gap: float | None = None,
    convert: Callable[[av.VideoFrame], np.ndarray] = rgb_upright,
) -> Iterator[TimedFrame]:
    """Frames of the span [start, end) seconds (from the first frame; None: to the end) resampled to `fps`
    by timestamps: output time t shows the decoded frame whose presentation time is nearest to t (ties: the
    later), so constant and variable frame rates alike stay on the audio's clock. Decodes from the keyframe
    before `start`; holds two frames. Raises UserError when timestamps are broken: missing, not increasing,
    or a gap over `max_gap` seconds between frames (None: any gap); and, once the span is decoded, when
    packets in it are damaged (nothing is yielded after the first; damage outside the span is skipped).
    Each shown frame's `image` is `convert` of the decoded frame (default: the upright RGB picture)."""
    with _open(path) as c:
        stream = _video_stream(c, path)
        tb = stream.time_base
        origin = float(stream.start_time * tb) if stream.start_time is not None else None
        nominal = float(stream.average_rate or stream.guessed_rate or fps)
        if start > 0 and origin is not None:
            c.seek(int((origin + max(0.0, start - 1.0)) / tb), stream=stream, backward=True)
        k, prev = 0, None  # prev: [time, frame, image or None]
        damaged, seen, broken = [], 0, []  # packets refused; how many seen; those in the span
        out = lambda k: start + k / fps  # noqa: E731

        def shown(item):
            if item[2] is None:
                item[2] = convert(item[1])
            return item[2]

        def in_span(t: float) -> bool:
            return start - 1e-9 <= t and (end is None or t < end - 1e-9)

        try:
            for frame in decoded(c, stream, damaged):
                if frame.pts is None:
                    raise UserError(f"{path}: broken timestamps (a frame without a presentation time)")
                if origin is None:
                    origin = float(frame.pts * tb)
                t = float(frame.pts * tb) - origin
                lost, seen = len(damaged) > seen, len(damaged)  # packets lost since the last frame
                if lost:
                    broken = [(a - origin, d) for a, d in damaged if in_span(a - origin)]
                if broken:  # the span is damaged: decode on to its end for the report, yield nothing more
                    if end is not None and t >= end - 1e-9:
                        break
                    continue
                if prev is not None and t <= prev[0]:
                    raise UserError(
                        f"{path}: broken timestamps (frame at {t:.3f} s after one at {prev[0]:.3f} s: not increasing)"
                    )
                if prev is not None and max_gap is not None and t - prev[0] > max_gap and not lost:
                    raise UserError(
                        f"{path}: broken timestamps (no frame for {t - prev[0]:.2f} s after {prev[0]:.2f} s; "
                        f"the limit is {max_gap:.2f} s)"
                    )
                cur = [t, frame, None]
                while out(k) <= t and (end is None or out(k) < end - 1e-9):
                    pick = prev if prev is not None and out(k) - prev[0] < t - out(k) else cur
                    yield TimedFrame(shown(pick), out(k), pick[0])
                    k += 1
                if end is not None and out(k) >= end - 1e-9:
                    return
                prev = cur
        except av.FFmpegError as err:
            raise UserError(f"{path}: unreadable video ({err})") from err
        if damaged and not broken:  # all damage may come after the last frame
            base = origin if origin is not None else min(a for a, _ in damaged)
            broken = [(a - base, d) for a, d in damaged if in_span(a - base)]
        if broken:
            raise UserError(f"{path}: {damage_report('video', broken)}")
        if prev is None:
            if k == 0:
                raise UserError(f"{path}: video has no frames")
            return
        last_end = prev[0] + (float(prev[1].duration * tb) if prev[1].duration else 1 / nominal)
        while out(k) < last_end - 1e-9 and (end is None or out(k) < end - 1e-9):
            yield TimedFrame(shown(prev), out(k), prev[0])
            k += 1


def decode_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Every video frame in decoding order, (H, W, 3) uint8 RGB upright by the stream's rotation metadata,
    one at a time: the whole video is never held (a 4,845-frame 1024x768 DISFA subject is 11 GB decoded).
    Frame k of the file (counted from 1, as DISFA's labels count) is the k-th yielded. Raises UserError on
    an unreadable video or one without frames."""
    n = 0
    try:
        with _open(path) as c:
            for f in c.decode(_video_stream(c, path)):
                n += 1
                yield rgb_upright(f)
    except av.FFmpegError as err:
        raise UserError(f"{path}: unreadable video ({err})") from err
    if not n:
        raise UserError(f"{path}: video has no frames")


def read_frames(path: str | Path) -> tuple[np.ndarray, float]:
    """Every video frame as (T, H, W, 3) uint8 RGB, upright (`decode_frames`), and the fps. The whole video
    in memory: for short clips (tests, generated videos); long ones go through `decode_frames`."""
    frames = np.stack(list(decode_frames(path)))
    with _open(path) as c:
        fps = float(_video_stream(c, path).average_rate or 0)
    return frames, fps


def decode_window(source, start: int, count: int, fps: float) -> np.ndarray:
    """Frames [start, start + count) of a constant-rate video (a path or a file object, e.g. the bytes of
    a shard's mp4 in `io.BytesIO`) as (count, H, W, 3) uint8: seeks to the keyframe before `start` and
    decodes from there, so the cost follows the window (plus the keyframe interval), not the video. Raises
    UserError when the video has fewer frames."""
    with _open(source) as c:
        stream = _video_stream(c, "video")
        tb = stream.time_base
        origin = stream.start_time or 0
        if start > 0:
            c.seek(origin + int(start / fps / tb), stream=stream, backward=True)
        frames = []
        for frame in c.decode(stream):
            index = round(float((frame.pts - origin) * tb) * fps)
            if index >= start:
                frames.append(to_rgb(frame))
                if len(frames) == count:
                    return np.stack(frames)
    raise UserError(
        f"video has {start + len(frames)} frames at most; frames {start}..{start + count - 1} asked for"
    )


def read_audio(
    path: str | Path, sample_rate: int = AUDIO_RATE, start: float | None = None, end: float | None = None
) -> np.ndarray:
    """Decode the first audio stream to mono float32 at `sample_rate`. With `start`, the span
    [start, end) in the file's presentation time (s; sample i at start + i / rate), zero-padded where the
    stream has no samples, decoded from a seek point before `start` (memory: the span, not the file).
    Raises UserError when packets in the span (without `start`: anywhere) are damaged; damage before the
    span is skipped."""
    damaged, seen = [], 0

    def in_span(t: float, d: float) -> bool:
        return start is None or (t + d > start and (end is None or t < end))

    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise UserError(f"{path}: no audio stream")
            stream = c.streams.audio[0]
            if start is not None and start > 1.0:
                c.seek(int((start - 1.0) / stream.time_base), stream=stream, backward=True)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks, first, total = [], None, 0
            for frame in decoded(c, stream, damaged):
                if len(damaged) > seen:
                    seen = len(damaged)
                    if start is not None and sum(damaged[-1]) <= start:  # lost before the span: start again
                        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
                        chunks, first, total = [], None, 0
                if first is None:
                    first = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
                    if start is not None and end is not None and first >= end:
                        break
                for r in resampler.resample(frame):
                    chunks.append(r.to_ndarray().reshape(-1))
                    total += len(chunks[-1])
                if end is not None and first + total / sample_rate >= end + 0.1:
                    break
            chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(None))
    except (av.FFmpegError, OSError) as err:
        raise UserError(f"{path}: unreadable audio ({err})") from err
    broken = [p for p in damaged if in_span(*p)]
    if broken:
        raise UserError(f"{path}: {damage_report('audio', broken)}")
    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if start is None:
        return audio
    offset = round((start - (first or 0.0)) * sample_rate)
    if offset < 0:
        audio, offset = np.concatenate([np.zeros(-offset, np.float32), audio]), 0
    n = round((end - start) * sample_rate) if end is not None else max(0, len(audio) - offset)
    audio = audio[offset : offset + n]
    return np.pad(audio, (0, n - len(audio)))


def frame_envelope(
    audio: np.ndarray, n_frames: int, fps: int = 25, sample_rate: int = AUDIO_RATE
) -> np.ndarray:
    """RMS of the audio in each video frame's window (T,), the speech envelope at frame rate."""
    hop = sample_rate // fps
    audio = np.pad(np.asarray(audio, np.float32), (0, max(0, n_frames * hop - len(audio))))
    return np.sqrt((audio[: n_frames * hop].reshape(n_frames, hop) ** 2).mean(1))
