"""Preprocess decodes each frame once (issue 39): the crops are cut from the pixels kept around the face
(`media.kept_regions`), equal to what decoding again cut, or the frames are decoded again when that cannot
be done (a reason for each case); the crop passes run in a thread behind the next clip's tracking
(`media.clip_media.process_clips`) and give the same results, in order."""

from __future__ import annotations

import logging
import threading

import av
import cv2
import numpy as np
import pytest

from media import clip_media, kept_regions, threads
from media.clip_media import MediaConfig, process_clip, process_clips
from media.face_crops import CropBox
from media.frames import warp_crop
from media.kept_regions import KeptRegions
from tbd_core.records import Reject
from tests.test_hard_inputs import clip


def nodding(face: np.ndarray, n: int, size=(360, 640), amplitude: int = 12) -> np.ndarray:
    """`face` (square) pasted on a grey canvas, moving up and down by `amplitude` px over `n` frames."""
    h, w = size
    side = h * 2 // 3
    face = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    frames = np.full((n, h, w, 3), 90, np.uint8)
    for k in range(n):
        dy = int(amplitude * np.sin(k / 3))
        y0, x0 = (h - side) // 2 + dy, (w - side) // 2
        frames[k, y0 : y0 + side, x0 : x0 + side] = face
    return frames


def decoded(path) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


def test_crops_cut_from_kept_pixels_equal_the_decoded_frames_crops(tmp_path):
    """Every crop inside what was kept equals `warp_crop` of the decoded frame, pixel for pixel, at a
    fractional centre, across the frame's edge, and with the frame kept whole (a face filling most of
    it); a crop reaching past the kept region, a budget passed (or sure to be, from the first frame), a
    rotated video and a frame before any face each give None and say why."""
    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.integers(0, 256, (45, 80, 3), dtype=np.uint8), (640, 360))
    frames = np.stack([np.roll(texture, 5 * i, 1) for i in range(6)])
    raw = decoded(clip(tmp_path, frames, "v").video)
    face = (280.0, 120.0, 380.0, 230.0)  # x0, y0, x1, y1: 110 px, so the kept side is 110 x 1.8 x 1.3

    def kept(box=face, budget=None):
        k = KeptRegions(1.8, budget=budget)
        for frame in raw:
            k.add(frame, box)
        return k

    for crop in (CropBox(330.4, 175.7, 190.0), CropBox(331, 170, 240), CropBox(20, 30, 150)):
        for size in (48, 128):
            k = kept(box=face if crop.cx > 100 else (0.0, 0.0, 90.0, 110.0))
            crops = k.crops(crop.affine(size), size)
            assert crops is not None, k.reason
            want = [warp_crop(crop.affine(size), size)(f) for f in raw]
            assert all(np.array_equal(a, b) for a, b in zip(crops, want, strict=True)), (crop, size)
    whole = kept(box=(20.0, 0.0, 620.0, 360.0))  # a face filling the frame: kept whole
    assert whole.kept[0][2].shape == (360, 640)
    big = CropBox(320, 180, 700)
    assert all(
        np.array_equal(a, warp_crop(big.affine(64), 64)(f))
        for a, f in zip(whole.crops(big.affine(64), 64), raw, strict=True)
    )

    far = kept()
    assert far.crops(CropBox(330, 175, 400).affine(64), 64) is None
    assert "reaches outside the region kept of frame 0" in far.reason
    small = kept(budget=200_000)
    assert small.crops(CropBox(330, 175, 190).affine(64), 64) is None and "passed 0 MB" in small.reason
    assert not small.kept  # released at once
    long = KeptRegions(1.8, frames=10_000)  # 6 min at 25 fps: known too big from its first frame
    long.add(raw[0], face)
    assert not long.kept and "its 10000 frames would keep about" in long.reason
    late = KeptRegions(1.8)
    late.add(raw[0], None)
    assert (
        late.crops(CropBox(330, 175, 190).affine(64), 64) is None and "before any tracked face" in late.reason
    )
    side = KeptRegions(1.8)
    side.add(decoded(clip(tmp_path, frames, "r", rotation=90).video)[0], face)
    assert side.crops(CropBox(330, 175, 190).affine(64), 64) is None and "rotation 90" in side.reason


def test_a_bt709_video_is_cut_with_its_own_colour_matrix(tmp_path):
    """A video tagged BT.709 and limited range (as cameras and ffmpeg write HD video) is converted with its
    tags: the crop from the region `warp_crop` converts and the one from the kept pixels equal the whole
    frame's conversion. Untagged, swscale converted the regions as BT.601: up to 30 levels off."""
    from media.frames import rgb_upright

    rng = np.random.default_rng(2)
    image = cv2.resize(rng.integers(0, 256, (36, 64, 3), dtype=np.uint8), (640, 360))
    path = str(tmp_path / "hd.mp4")
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
        cc = s.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = cc.color_range = 1  # BT.709, limited range
        for _ in range(2):
            for packet in s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    raw = decoded(path)
    assert (raw[0].colorspace, raw[0].color_range) == (1, 1)
    crop = CropBox(320, 180, 150)
    m = crop.affine(64)
    kept = KeptRegions(1.8)
    for frame in raw:
        kept.add(frame, (270.0, 130.0, 370.0, 230.0))
    flags = cv2.INTER_AREA | cv2.WARP_INVERSE_MAP
    for frame, cut in zip(raw, kept.crops(m, 64), strict=True):
        whole = cv2.warpAffine(rgb_upright(frame), m, (64, 64), flags=flags)
        assert np.array_equal(warp_crop(m, 64)(frame), whole)
        assert np.array_equal(cut, whole)


@pytest.fixture(scope="module")
def analyzer():
    from media.face import FaceAnalyzer

    with FaceAnalyzer() as fa:
        yield fa


def test_a_clip_cut_from_kept_pixels_equals_the_clip_decoded_twice(tmp_path, astronaut, analyzer, monkeypatch,
                                                                    caplog):  # fmt: skip
    """A nodding face: the sample whose crops came from the kept pixels has the same H.264 bytes (and every
    other member) as the one whose frames were decoded a second time (kept pixels' budget 0), and the log
    says which path each took."""
    ref = clip(tmp_path, nodding(astronaut, 40), "nod")
    config = MediaConfig(crop_size=64)
    with caplog.at_level(logging.DEBUG, logger="media.clip_media"):
        [once] = process_clip(ref, analyzer, config)
        assert "decodes again" not in caplog.text
        monkeypatch.setattr(kept_regions, "KEEP_BYTES", 0)
        [twice] = process_clip(ref, analyzer, config)
        assert "the crop pass decodes again: its 40 frames would keep about" in caplog.text
    assert isinstance(once, clip_media.MediaSample) and once.meta["frames"] == 40
    assert once.mp4 == twice.mp4
    assert once.members() == twice.members()


def test_clips_processed_together_give_each_clips_results_in_order(
    tmp_path, astronaut, analyzer, monkeypatch
):
    """`process_clips` (the crop passes in a thread behind the next clip's tracking; in the caller's thread
    in a process pinned to one core) gives every clip's results in order, equal to `process_clip`'s one by
    one; a crop pass that fails is that clip's reject; a caller that stops early leaves no crop-pass thread
    behind."""
    refs = [clip(tmp_path, nodding(astronaut, n, amplitude=a), f"c{i}")
            for i, (n, a) in enumerate([(20, 8), (24, 14), (18, 4)])]  # fmt: skip
    refs.insert(1, clip(tmp_path, np.full((20, 96, 128, 3), 90, np.uint8), "empty"))  # no face: a reject
    config = MediaConfig(crop_size=48)
    alone = [process_clip(r, analyzer, config) for r in refs]
    together = list(process_clips(refs, analyzer, config))
    assert [r.key for r, _ in together] == [r.key for r in refs]
    for (_, got), want in zip(together, alone, strict=True):
        assert [type(r) for r in got] == [type(r) for r in want]
        for a, b in zip(got, want, strict=True):
            assert (a.members() == b.members()) if isinstance(a, clip_media.MediaSample) else a == b
    assert isinstance(together[1][1][0], Reject) and together[1][1][0].stage == "face"

    real, ran_in = clip_media._mp4, []

    def broken(frames, fps, crf, expected=None):
        ran_in.append(threading.current_thread().name)
        if expected == 24:
            raise OSError("the encoder ran out of disk")
        return real(frames, fps, crf, expected)

    monkeypatch.setattr(clip_media, "_mp4", broken)
    results = [rs for _, rs in process_clips(refs, analyzer, config)]
    [failed] = results[2]
    assert isinstance(failed, Reject) and failed.stage == "encode" and "ran out of disk" in failed.reason
    assert all(isinstance(results[i][0], clip_media.MediaSample) for i in (0, 3))
    assert len(ran_in) == 3 and all(t.startswith("crop-pass") for t in ran_in)  # behind the tracking
    ran_in.clear()
    monkeypatch.setattr(threads, "PINNED", 1)  # a Ray worker on one core: the passes run in its thread
    list(process_clips(refs, analyzer, config))
    assert ran_in == ["MainThread"] * 3

    for _ in process_clips(refs, analyzer, config):
        break
    assert not [t for t in threading.enumerate() if t.name.startswith("crop-pass")]
