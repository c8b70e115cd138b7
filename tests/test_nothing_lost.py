"""Nothing is lost without a trace: audio shorter or longer than its video, links and files ingest cannot
read, files gone before preprocess, and damaged data each end in the ledger with their reason and seconds,
while the good seconds of the same clip are kept."""

from __future__ import annotations

import logging
import os
import re
from itertools import pairwise
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from media.clip_media import MediaConfig, process_clip
from media.clip_spans import span_of
from media.video_io import AUDIO_RATE, write_m4a, write_mp4
from pipelines.ingest import IngestConfig, ingest, ingest_summary
from tbd_core.records import ClipRef, Reject

FPS = 25


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)


def frames(astronaut: np.ndarray, seconds: float) -> np.ndarray:
    """A speaker in the middle of a grey 320x240 frame, `seconds` long at 25 fps."""
    canvas = np.full((240, 320, 3), 90, np.uint8)
    canvas[40:200, 80:240] = cv2.resize(astronaut, (160, 160), interpolation=cv2.INTER_AREA)
    return np.repeat(canvas[None], round(seconds * FPS), 0)


def ref(key: str, video: Path, audio: Path | None) -> ClipRef:
    """An HDTF clip (audio muxed) without `audio`, a MEAD clip with it."""
    return ClipRef(key=key, dataset="hdtf" if audio is None else "mead", speaker="S001", emotion="neutral",
                   level=1, clip="001", split="train", video=str(video),
                   audio=str(audio) if audio else None)  # fmt: skip


def assert_accounted(results: list, seconds: float) -> None:
    """Samples and rejects follow each other and cover `seconds` of input."""
    spans = [span_of(r) for r in results]
    assert all(abs(a[1] - b[0]) < 1e-6 for a, b in pairwise(spans)), spans
    assert abs(spans[-1][1] - spans[0][0] - seconds) < 1e-6, spans


# -- audio and video of different lengths ----------------------------------------------------------------
def test_short_audio_is_not_zero_filled_its_missing_seconds_are_ledgered(
    tmp_path, analyzer, astronaut, caplog
):
    """HDTF-style: 2 s of muxed audio under a 3 s video. The sample is the 2 s with speech; the last 1 s
    is a reject that says so (it was a 3 s sample whose last second was zeros)."""
    video = tmp_path / "short.mp4"
    write_mp4(video, frames(astronaut, 3.0), FPS, speech(2.0))
    with caplog.at_level(logging.WARNING, logger="media.clip_media"):
        results = process_clip(ref("short", video, None), analyzer, MediaConfig(crop_size=64))
    assert [r.key for r in results] == ["short", "short_av-tail"], results
    sample, tail = results
    assert not isinstance(sample, Reject), sample
    assert sample.meta["frames"] == 50 and (sample.meta["start"], sample.meta["end"]) == (0.0, 2.0)
    assert isinstance(tail, Reject) and (tail.stage, tail.start, tail.end) == ("audio", 2.0, 3.0)
    assert tail.reason == "audio ends at 2.00 s of a 3.00 s video: 2.00-3.00 s without speech"
    assert "audio ends at 2.00 s" in caplog.text
    assert_accounted(results, 3.0)


def test_long_audio_has_its_extra_seconds_ledgered(tmp_path, analyzer, astronaut):
    """MEAD-style: a 3 s m4a beside a 2 s video. The 2 s are the sample; the audio's last second, which
    has no picture, is a reject (it was dropped without a trace)."""
    video, audio = tmp_path / "long.mp4", tmp_path / "long.m4a"
    write_mp4(video, frames(astronaut, 2.0), FPS)
    write_m4a(audio, speech(3.0))
    results = process_clip(ref("long", video, audio), analyzer, MediaConfig(crop_size=64))
    assert [r.key for r in results] == ["long", "long_av-tail"], results
    sample, tail = results
    assert not isinstance(sample, Reject) and sample.meta["frames"] == 50, sample
    assert isinstance(tail, Reject) and (tail.stage, tail.start, tail.end) == ("audio", 2.0, 3.0)
    assert tail.reason == "audio runs to 3.00 s, past the 2.00 s video: 2.00-3.00 s of audio without picture"
    assert tail.source == str(audio)
    assert_accounted(results, 3.0)


# -- ingest: links and files that cannot be read -------------------------------------------------------
def mead_root(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A MEAD root whose clips are links into a store (ingest does not decode: any bytes do)."""
    store, root = tmp_path / "store", tmp_path / "mead"
    video = root / "S001" / "video" / "front" / "happy" / "level_1"
    audio = root / "S001" / "audio" / "happy" / "level_1"
    for folder in (store, video, audio):
        folder.mkdir(parents=True)
    for name in ("000", "001", "002"):
        for folder, suffix in ((video, ".mp4"), (audio, ".m4a")):
            (store / f"{name}{suffix}").write_bytes(b"media")
            (folder / f"{name}{suffix}").symlink_to(store / f"{name}{suffix}")
    return root, video, audio


def test_ingest_ledgers_dangling_links_and_entries_it_cannot_read(tmp_path):
    root, video, audio = mead_root(tmp_path)
    (video / "003.mp4").symlink_to(tmp_path / "store" / "gone.mp4")  # dangling
    (audio / "003.m4a").symlink_to(tmp_path / "store" / "000.m4a")
    (video / "004.mp4").mkdir()  # a folder where a clip file is expected
    (audio / "004.m4a").symlink_to(tmp_path / "store" / "000.m4a")
    (video / "005.mp4").symlink_to(video / "005.mp4")  # a link to itself
    (audio / "005.m4a").symlink_to(tmp_path / "store" / "000.m4a")
    (video / "006.mp4").symlink_to(tmp_path / "store" / "000.mp4")
    (audio / "006.m4a").symlink_to(tmp_path / "store" / "gone.m4a")  # its audio dangles
    summary = ingest_summary(IngestConfig(dataset="mead", root=root, out=tmp_path / "data"))
    assert (summary["clips"], summary["rejected"]) == (3, 4), summary
    _, rejects = ingest(IngestConfig(dataset="mead", root=root, out=tmp_path / "data2"))
    reasons = {r.key.split("_")[-1]: r.reason for r in rejects}
    assert reasons["003"] == f"dangling link to {tmp_path / 'store' / 'gone.mp4'}"
    assert reasons["004"] == "a folder where a file is expected"
    assert reasons["005"].startswith("cannot be read (Too many levels of symbolic links")
    assert reasons["006"] == (
        f"audio file S001/audio/happy/level_1/006.m4a: dangling link to {tmp_path / 'store' / 'gone.m4a'}"
    )


def test_ingest_ledgers_a_dangling_hdtf_link(tmp_path):
    root = tmp_path / "hdtf"
    root.mkdir()
    (tmp_path / "WRA_Ann_000.mp4").write_bytes(b"media")
    (root / "WRA_Ann_000.mp4").symlink_to(tmp_path / "WRA_Ann_000.mp4")
    (root / "WRA_Ann_001.mp4").symlink_to(tmp_path / "gone.mp4")
    clips, rejects = ingest(IngestConfig(dataset="hdtf", root=root, out=tmp_path / "data"))
    assert [c.key for c in clips] == ["hdtf_WRA_Ann_unknown_0_000"]
    assert [(r.key, r.reason) for r in rejects] == [
        ("hdtf_WRA_Ann_unknown_0_001", f"dangling link to {tmp_path / 'gone.mp4'}")
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_ingest_ledgers_a_file_without_read_permission(tmp_path):
    root, _, _ = mead_root(tmp_path)
    (tmp_path / "store" / "001.mp4").chmod(0)
    try:
        clips, rejects = ingest(IngestConfig(dataset="mead", root=root, out=tmp_path / "data"))
    finally:
        (tmp_path / "store" / "001.mp4").chmod(0o644)
    assert [c.clip for c in clips] == ["000", "002"]
    assert [r.reason for r in rejects] == ["cannot be read (Permission denied)"]


@pytest.mark.parametrize("gone", ["video", "audio"])
def test_a_file_that_vanished_after_ingest_is_a_reject_in_preprocess(tmp_path, gone):
    root, _, _ = mead_root(tmp_path)
    write_mp4(tmp_path / "store" / "000.mp4", np.zeros((16, 64, 64, 3), np.uint8), FPS)  # a real video
    [clip, *_] = ingest(IngestConfig(dataset="mead", root=root, out=tmp_path / "data"))[0]
    path = Path(getattr(clip, gone))
    path.unlink()
    [reject] = process_clip(clip, None, MediaConfig())  # the face stage is never reached
    assert isinstance(reject, Reject) and reject.stage == ("decode" if gone == "video" else "audio")
    assert reject.reason == f"file vanished since ingest: {path} no longer exists"
    assert reject.source == str(path)


# -- damaged data ----------------------------------------------------------------------------------------
def damage(path: Path, start: float, end: float) -> None:
    """Overwrite the bytes of the video packets from `start` to `end` s (and what lies between) with noise."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        pos = [(float(p.pts * stream.time_base), p.pos) for p in c.demux(stream) if p.size]
    lo = min(b for t, b in pos if t >= start)
    hi = min(b for t, b in pos if t >= end)
    with open(path, "r+b") as f:
        f.seek(lo)
        f.write(np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("layout", ["mead", "hdtf"])
def test_a_damaged_span_rejects_only_its_segment(tmp_path, analyzer, astronaut, layout):
    """A 6 s clip in 2 s segments, its data from 2.6 to 3.4 s overwritten: the segment 2-4 s is a reject
    that names the damaged seconds; 0-2 s and 4-6 s are samples (4-6 s was lost: its decode starts a second
    early, inside the damage). MEAD: a video-only mp4 beside its m4a; HDTF: audio muxed, damaged too."""
    video, audio = tmp_path / "damaged.mp4", tmp_path / "damaged.m4a"
    if layout == "mead":
        write_mp4(video, frames(astronaut, 6.0), FPS, keyframe_every=5)
        write_m4a(audio, speech(6.0))
    else:
        write_mp4(video, frames(astronaut, 6.0), FPS, speech(6.0), keyframe_every=5)
        audio = None
    damage(video, 2.6, 3.4)
    results = process_clip(
        ref("damaged", video, audio), analyzer, MediaConfig(crop_size=64, segment_seconds=2)
    )
    assert [r.key for r in results] == ["damaged_seg000", "damaged_seg001", "damaged_seg002"]
    first, bad, last = results
    assert not isinstance(first, Reject) and not isinstance(last, Reject), results
    assert first.meta["frames"] == last.meta["frames"] == 50
    assert isinstance(bad, Reject) and (bad.start, bad.end) == (2.0, 4.0), bad
    found = re.fullmatch(
        r"damaged (video|audio): \d+ packets at (\d+\.\d+)-(\d+\.\d+) s cannot be decoded", bad.reason
    )
    assert found, bad.reason
    assert bad.stage == ("decode" if found[1] == "video" else "audio")
    assert 2.5 <= float(found[2]) and float(found[3]) <= 3.5, bad.reason
    assert_accounted(results, 6.0)
