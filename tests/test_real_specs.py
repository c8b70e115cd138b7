"""Inputs built to the real datasets' specs, small: MEAD's 1080p 30 fps video with 48 kHz stereo m4a, HDTF's
29.97 fps video with its audio muxed, a variable-rate video, a long video cut into segments. Each carries a
flash and a tone at one known time, which must land on the same output frame (+-1) after preprocess."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from scipy.io import wavfile

from media.clip_media import MediaConfig, process_clip
from media.video_io import AUDIO_RATE, frame_envelope, read_frames
from tbd_core.records import ClipRef, Reject

FPS = 25
FLASH = 0.12  # seconds of flash and of tone


def picture(astronaut: np.ndarray, width: int, height: int) -> np.ndarray:
    """A speaker in the middle of a grey frame (the face about a third of the height, as in MEAD)."""
    canvas = np.full((height, width, 3), 90, np.uint8)
    side = height * 2 // 3
    face = cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_AREA)
    y, x = (height - side) // 2, (width - side) // 2
    canvas[y : y + side, x : x + side] = face
    return canvas


def soundtrack(seconds: float, rate: int, flash_at: float, channels: int) -> np.ndarray:
    """(channels, N) float32: quiet modulated speech-like noise, and a loud 1 kHz tone at `flash_at`."""
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.05 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    burst = (t >= flash_at) & (t < flash_at + FLASH)
    audio[burst] += 0.8 * np.sin(2 * np.pi * 1000 * t[burst])
    return np.repeat(audio[None].astype(np.float32), channels, 0)


def _add_audio(container, audio: np.ndarray, rate: int):
    stream = container.add_stream("aac", rate=rate)
    stream.layout = "stereo" if len(audio) == 2 else "mono"
    return stream


def _mux_audio(container, stream, audio: np.ndarray, rate: int) -> None:
    for start in range(0, audio.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio[:, start : start + 1024]), format="fltp", layout=stream.layout.name
        )
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_video(path: Path, image: np.ndarray, times: np.ndarray, flash_at: float, rate, audio=None) -> None:
    """H.264 frames shown at `times` (s; variable rates allowed), bright during the flash; `audio` =
    (samples (C, N), rate) muxed in the same file (HDTF) or None (MEAD's separate m4a)."""
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
        s.codec_context.time_base = Fraction(1, 90000)
        s.options = {"preset": "ultrafast"}
        a = _add_audio(c, *audio) if audio is not None else None
        bright = np.clip(image.astype(np.int16) + 110, 0, 255).astype(np.uint8)
        for t in times:
            rgb = bright if flash_at <= t < flash_at + FLASH else image
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = round(t * 90000), Fraction(1, 90000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            _mux_audio(c, a, *audio)


def write_m4a(path: Path, audio: np.ndarray, rate: int) -> None:
    with av.open(str(path), "w", format="ipod") as c:
        _mux_audio(c, _add_audio(c, audio, rate), audio, rate)


def onsets(sample) -> tuple[int, int]:
    """(first flash frame, first tone frame) of a media sample."""
    path = Path(f"/tmp/tbd-real-specs-{sample.key}.mp4")
    path.write_bytes(sample.mp4)
    frames, _ = read_frames(path)
    path.unlink()
    brightness = frames.reshape(len(frames), -1).mean(1)
    lit = brightness > (np.median(brightness) + brightness.max()) / 2
    rate, wav = wavfile.read(io.BytesIO(sample.wav))
    assert rate == AUDIO_RATE
    envelope = frame_envelope(wav.astype(np.float32) / 32767, len(frames))
    loud = envelope > envelope.max() / 2
    return int(np.argmax(lit)), int(np.argmax(loud))


def ref(key: str, video: Path, audio: Path | None) -> ClipRef:
    return ClipRef(key=key, dataset="mead" if audio else "hdtf", speaker="S001", emotion="neutral", level=1,
                   clip="001", split="train", video=str(video), audio=str(audio) if audio else None)  # fmt: skip


CASES = {
    # name: (width, height, frame times, nominal rate, audio rate, muxed, flash at)
    "mead-1080p30": (1920, 1080, np.arange(72) / 30, 30, 48000, False, 1.3),
    "hdtf-29.97": (1280, 720, np.arange(72) * 1001 / 30000, Fraction(30000, 1001), 44100, True, 1.5),
    # 15 fps for 1.2 s, then 30 fps: indices at the average rate would put the flash 0.27 s early
    "variable-rate": (640, 480, np.r_[np.arange(18) / 15, 1.2 + np.arange(36) / 30], 30, 48000, False, 0.8),
}


@pytest.mark.parametrize("name", list(CASES))
def test_flash_and_tone_land_on_the_same_frame(name, tmp_path, analyzer, astronaut):
    width, height, times, rate, audio_rate, muxed, flash_at = CASES[name]
    sound = (soundtrack(times[-1] + 0.2, audio_rate, flash_at, 2), audio_rate)
    video, audio = tmp_path / f"{name}.mp4", None
    write_video(video, picture(astronaut, width, height), times, flash_at, rate, sound if muxed else None)
    if not muxed:
        audio = tmp_path / f"{name}.m4a"
        write_m4a(audio, *sound)
    [sample] = process_clip(ref(name, video, audio), analyzer, MediaConfig(crop_size=64))
    assert not isinstance(sample, Reject), sample
    flash, tone = onsets(sample)
    expected = round(flash_at * FPS)
    assert abs(flash - expected) <= 1 and abs(tone - expected) <= 1, (flash, tone, expected)
    assert abs(sample.meta["frames"] - (times[-1] + 1 / float(rate)) * FPS) <= 1
    # The source frame shown at each output frame is recorded, on the source's own clock.
    shown = np.array(sample.meta["source_times"])
    assert np.all(np.diff(shown) >= 0) and np.abs(shown[:, None] - times[None]).min(1).max() < 1e-3


def test_a_long_video_is_cut_into_segments_and_every_second_is_accounted_for(tmp_path, analyzer, astronaut):
    """4.4 s with 2 s segments: two full segments, and a 0.4 s tail too short for a training window, in
    the ledger with its span. The flash at 2.6 s lands in the second segment's frame 15."""
    times, flash_at = np.arange(110) / 25, 2.6
    video, audio = tmp_path / "long.mp4", tmp_path / "long.m4a"
    write_video(video, picture(astronaut, 640, 480), times, flash_at, 25)
    write_m4a(audio, soundtrack(4.6, 48000, flash_at, 2), 48000)
    results = process_clip(ref("long", video, audio), analyzer, MediaConfig(crop_size=64, segment_seconds=2))
    assert [r.key for r in results] == ["long_seg000", "long_seg001", "long_seg002"]
    samples = [r for r in results if not isinstance(r, Reject)]
    [tail] = [r for r in results if isinstance(r, Reject)]
    assert len(samples) == 2 and tail.key == "long_seg002" and (tail.start, tail.end) == (4.0, 4.4)
    assert tail.stage == "decode" and "too short" in tail.reason and "the last 0.40 s" in tail.reason
    covered = sum(s.meta["frames"] for s in samples) / FPS + (tail.end - tail.start)
    assert abs(covered - 4.4) <= 1 / FPS
    assert [(s.meta["start"], s.meta["end"]) for s in samples] == [(0.0, 2.0), (2.0, 4.0)]
    flash, tone = onsets(samples[1])
    assert abs(flash - 15) <= 1 and abs(tone - 15) <= 1, (flash, tone)


def test_the_source_rate_is_kept_when_asked(tmp_path, analyzer, astronaut):
    """`--media.fps 30` on a 30 fps video: every source frame once (at 25 fps one in six is dropped), the
    flash on its own frame, and the audio features on the same clock (16 kHz / 30 is not whole)."""
    width, height, times, rate, audio_rate, _, flash_at = CASES["mead-1080p30"]
    video, audio = tmp_path / "v.mp4", tmp_path / "v.m4a"
    write_video(video, picture(astronaut, 640, 360), times, flash_at, rate)
    write_m4a(audio, soundtrack(times[-1] + 0.2, audio_rate, flash_at, 2), audio_rate)
    [sample] = process_clip(ref("thirty", video, audio), analyzer, MediaConfig(crop_size=64, fps=30))
    assert not isinstance(sample, Reject), sample
    assert sample.meta["frames"] == len(times) and np.allclose(sample.meta["source_times"], times, atol=1e-3)
    features = np.load(io.BytesIO(sample.members()["audio.npy"]))
    assert features.shape[0] == len(times)
    loud = features.astype(np.float32).mean(1)
    onset = int(np.argmax(loud > np.median(loud) + 0.75 * (loud.max() - np.median(loud))))
    assert abs(onset - round(flash_at * 30)) <= 1, onset


# 100 fps: the 10 ms grid itself, whose last rows reach past the end of the audio
@pytest.mark.parametrize("fps", [25, 30, 100])
@pytest.mark.parametrize("seconds", [0.0, 0.02, 3.0, 24.7])
def test_log_mel_in_chunks_equals_the_spectrogram_of_the_whole(seconds, fps):
    """`log_mel` takes long speech a few hundred rows at a time (memory flat in length); every row equals the
    one of transformers' centred spectrogram of the whole used audio (cut or zero-padded to the frames)."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    from media.audio_features import log_mel

    audio = np.random.default_rng(0).standard_normal(int(seconds * AUDIO_RATE)).astype(np.float32) * 0.1
    # 24.8 s at 25 fps (past the end of every speech here), 20.7 s at 30 fps (it cuts the longest)
    n_frames = 620
    rate = fps if AUDIO_RATE % fps == 0 else 100  # 30 fps rows are read off a 10 ms grid
    rows = n_frames if rate == fps else int(np.ceil(n_frames * 100 / fps)) + 1
    hop, n_fft = AUDIO_RATE // rate, 1024
    used = np.pad(audio, (0, max(0, rows * hop - len(audio))))[: rows * hop]
    mel = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=80, min_frequency=20.0,
                          max_frequency=AUDIO_RATE / 2, sampling_rate=AUDIO_RATE, norm="slaney", mel_scale="slaney")  # fmt: skip
    whole = spectrogram(used, window_function(n_fft, "hann"), frame_length=n_fft, hop_length=hop, power=2.0,
                        mel_filters=mel, log_mel="log10").T[:rows].astype(np.float16)  # fmt: skip
    if rate != fps:
        whole = whole[
            np.minimum(np.round(np.arange(n_frames) * AUDIO_RATE / fps / hop).astype(int), rows - 1)
        ]
    assert np.array_equal(log_mel(audio, n_frames, 80, fps), whole)
