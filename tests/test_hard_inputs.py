"""Hard inputs end in the ledger with a reason that says what is wrong (or in generate with a clear error),
and files handed in by users are read without running their code."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from media.clip_media import MediaConfig, process_clip
from media.video_io import AUDIO_RATE, write_m4a, write_mp4
from tbd_core.errors import UserError
from tbd_core.records import ClipRef, Reject
from tests.conftest import offline_env, run_tbd

FPS = 25


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)


def clip(tmp_path: Path, frames: np.ndarray, name: str, rotation: int | None = None) -> ClipRef:
    """An mp4 of `frames` with speech; `rotation` stores display-rotation metadata (as phones do)."""
    video = tmp_path / f"{name}.mp4"
    if rotation is None:
        write_mp4(video, frames, FPS)
    else:
        with av.open(str(video), "w") as c:
            s = c.add_stream("libx264", rate=FPS)
            s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            s.set_display_rotation(rotation)
            for f in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    audio = tmp_path / f"{name}.m4a"
    write_m4a(audio, speech(len(frames) / FPS + 0.2))
    return ClipRef(key=name, dataset="mead", speaker="M001", emotion="neutral", level=1, clip="001", split="train",
                   video=str(video), audio=str(audio))  # fmt: skip


def still(image: np.ndarray, n: int = 16) -> np.ndarray:
    h, w = (s // 2 * 2 for s in image.shape[:2])  # even sizes for yuv420p
    return np.repeat(image[None, :h, :w], n, 0)


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    from matplotlib import cbook

    return np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))


@pytest.fixture(scope="module")
def two_people(astronaut, hopper) -> np.ndarray:
    """The astronaut and Grace Hopper side by side (her face is the larger)."""
    import cv2

    h = 512
    a = cv2.resize(astronaut, (astronaut.shape[1] * h // astronaut.shape[0], h))
    g = cv2.resize(hopper, (hopper.shape[1] * h // hopper.shape[0], h))
    return np.concatenate([a, g], 1)


def only(results: list):
    """The one result of a clip that is not cut into segments."""
    assert len(results) == 1, [r.key for r in results]
    return results[0]


def rejected(results: list) -> str:
    result = only(results)
    assert isinstance(result, Reject), f"expected a reject, got a sample ({result.key})"
    return f"{result.stage}: {result.reason}"


# -- clips ------------------------------------------------------------------------------------------
def test_audio_only_mp4_is_no_video_stream(tmp_path, analyzer):
    path = tmp_path / "voice.mp4"
    write_m4a(path, speech(1.0))  # an MPEG-4 file with one AAC stream
    ref = ClipRef(key="voice", dataset="mead", speaker="M001", emotion="neutral", level=1, clip="001", split="train",
                  video=str(path), audio=None)  # fmt: skip
    reason = rejected(process_clip(ref, analyzer, MediaConfig()))
    assert reason.startswith("decode: no video stream") and "audio" in reason


def test_two_frames_are_too_short_not_silent(tmp_path, analyzer, astronaut):
    reason = rejected(process_clip(clip(tmp_path, still(astronaut, 2), "short"), analyzer, MediaConfig()))
    assert reason == "decode: too short: 2 frames at 25 fps (0.08 s); needs at least 16 (0.64 s)"


def test_two_people_in_a_clip_are_refused(tmp_path, analyzer, two_people):
    reason = rejected(process_clip(clip(tmp_path, still(two_people), "two"), analyzer, MediaConfig()))
    assert reason.startswith("face: 2 faces in frame 0") and "identities could mix" in reason


def test_a_detection_inside_the_face_is_part_of_it_not_a_second_speaker(tmp_path, analyzer):
    """The demo corpus's mirrored Grace Hopper in fear at level 3 (brows and lids raised behind her glasses):
    the detector also reports a spectacle lens as a face half as wide, inside hers. It is kept (the policy
    before rejected it as a second speaker and lost the clip)."""
    from media.face_boxes import box_inside
    from media.segment_scan import second_face
    from pipelines.demo_corpus.corpus import (
        CorpusConfig,
        ExpressionRenderer,
        _prepare,
        clip_signals,
        plan_clips,
    )
    from pipelines.demo_corpus.portraits import builtin_portraits, identities

    people = identities(builtin_portraits(), 3)
    spec = next(s for s in plan_clips(CorpusConfig(out=tmp_path), [p.name for p in people])
                if s.speaker == "W002" and s.emotion == "fear" and s.level == 3)  # fmt: skip
    crop, lm = _prepare(analyzer, people[1], 128)
    # Frame 48: one where the detector sees a lens as a face.
    aus = clip_signals(spec, people[1].name, 2.0)[2][48:49]
    frame = cv2.resize(ExpressionRenderer(crop, lm).frames(aus)[0], (128, 128), interpolation=cv2.INTER_AREA)
    faces = analyzer.detect_all(frame)
    assert len(faces) > 1 and box_inside(faces[1].box, faces[0].box) > 0.5, [f.box for f in faces]
    assert second_face(frame, 0, analyzer, MediaConfig()) == ""
    sample = only(process_clip(clip(tmp_path, still(frame), "lens"), analyzer, MediaConfig(crop_size=64)))
    assert not isinstance(sample, Reject), sample


def test_one_person_clip_is_accepted(tmp_path, analyzer, hopper):
    sample = only(process_clip(clip(tmp_path, still(hopper), "one"), analyzer, MediaConfig(crop_size=64)))
    assert not isinstance(sample, Reject), sample


def test_rotation_metadata_is_applied(tmp_path, analyzer, hopper):
    """Stored on its side with display rotation 90 (a phone video): decoded upright and accepted."""
    from media.face import roll_degrees
    from media.video_io import read_frames

    ref = clip(tmp_path, still(np.rot90(hopper, -1)), "phone", rotation=90)
    frames, _ = read_frames(ref.video)
    assert frames.shape[1:3] == still(hopper).shape[1:3]
    assert abs(roll_degrees(analyzer.analyze(frames[0]).mesh.landmarks)) < 15
    assert not isinstance(only(process_clip(ref, analyzer, MediaConfig(crop_size=64))), Reject)


@pytest.mark.parametrize("rotation", [None, 90])
def test_the_crop_pass_converts_only_the_crop_and_gets_the_same_pixels(tmp_path, rotation):
    """Preprocess's second pass converts only the pixels a crop samples (`video_io.warp_crop`, issue 39:
    the whole 1080p frame's conversion was its largest cost): every crop, inside the frame, across its
    edges, outside it, larger than it, at a fractional centre, equals the whole frame's crop pixel for pixel,
    and a rotated video (converted whole) too."""
    from media.face_crops import CropBox
    from media.frames import rgb_upright, warp_crop

    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (45, 80, 3), dtype=np.uint8), (640, 360))
    frames = np.stack([np.roll(base, 7 * i, 1) for i in range(4)])
    path = clip(tmp_path, frames, "v", rotation).video
    boxes = [CropBox(320, 180, 200), CropBox(20, 30, 150), CropBox(630, 350, 300), CropBox(-50, 180, 120),
             CropBox(320, 180, 2000), CropBox(321.37, 177.6, 99.9)]  # fmt: skip
    with av.open(str(path)) as c:
        decoded = list(c.decode(video=0))
    assert decoded[0].rotation == (rotation or 0)
    for box in boxes:
        for size in (48, 128):
            m = box.affine(size)
            convert = warp_crop(m, size)
            for frame in decoded:
                whole = cv2.warpAffine(
                    rgb_upright(frame), m, (size, size), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP
                )
                assert np.array_equal(convert(frame), whole), (box, size, rotation)


def test_frames_decoded_ahead_arrive_in_order_and_errors_and_early_stops_are_kept(tmp_path):
    """Preprocess decodes in a thread ahead of tracking (`media.prefetch`, issue 39): the same frames in the
    same order as decoding inline, a damaged-timestamp error raised where the inline reader raises it (after
    the frames before it), and a caller that stops early closes the reader (its file) before going on."""
    from media.prefetch import prefetched
    from media.video_io import iter_frames

    rng = np.random.default_rng(1)
    frames = np.stack(
        [cv2.resize(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8), (160, 96)) for _ in range(30)]
    )
    path = clip(tmp_path, frames, "v").video
    inline = [(f.time, f.image) for f in iter_frames(path, 25)]
    ahead = [(f.time, f.image) for f in prefetched(iter_frames(path, 25), depth=2)]
    assert len(ahead) == len(inline) == 30
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(ahead, inline, strict=True))

    closed = []

    def source():
        try:
            for i in range(100):
                if i == 7:
                    raise UserError("broken timestamps (frame 7)")
                yield i
        finally:
            closed.append(True)

    got = []
    with pytest.raises(UserError, match="frame 7"):
        for i in prefetched(source(), depth=3):
            got.append(i)
    assert got == list(range(7)) and closed == [True]

    closed.clear()
    for i in prefetched(source(), depth=3):
        if i == 2:
            break
    assert closed == [True]  # closed in its thread before the loop went on


def test_a_clip_on_its_side_without_metadata_is_refused(tmp_path, analyzer, hopper):
    reason = rejected(
        process_clip(clip(tmp_path, still(np.rot90(hopper, -1)), "side"), analyzer, MediaConfig())
    )
    assert reason.startswith("face: face rolled by") and "rotation metadata" in reason


# -- portraits (generate) -----------------------------------------------------------------------------
def test_portrait_with_two_people_takes_the_largest_and_says_so(tmp_path, two_people, hopper, caplog):
    from media.inputs import prepare_portrait

    path = tmp_path / "two.png"
    Image.fromarray(two_people).save(path)
    with caplog.at_level(logging.WARNING):
        largest = prepare_portrait(path, 64, 1.8)
    assert "2 faces found" in caplog.text and "--face_index" in caplog.text
    other = prepare_portrait(path, 64, 1.8, face_index=1)
    alone = tmp_path / "hopper.png"
    Image.fromarray(hopper).save(alone)
    only = prepare_portrait(alone, 64, 1.8)
    diff = lambda a, b: np.abs(a.crop.astype(int) - b.crop.astype(int)).mean()  # noqa: E731
    assert diff(largest, only) < diff(other, only)  # #0 is Grace Hopper, #1 the astronaut
    with pytest.raises(UserError, match="face_index 2, but 2 face"):
        prepare_portrait(path, 64, 1.8, face_index=2)
    # `tbd face` finds the same faces the same way and lists them.
    from media.face_tool import FaceConfig, describe_face

    said = describe_face(FaceConfig(image=path))
    assert "2 faces found (#0 at" in said and "#1 at" in said and "#0 meshed" in said
    assert "#1 meshed" in describe_face(FaceConfig(image=path, face_index=1))


def test_portrait_exif_orientation_and_roll_warning(tmp_path, hopper, caplog):
    from media.face import roll_degrees
    from media.inputs import prepare_portrait

    side = Image.fromarray(np.ascontiguousarray(np.rot90(hopper, 1)))  # stored turned left
    tagged = tmp_path / "tagged.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 CW to display
    side.save(tagged, exif=exif)
    with caplog.at_level(logging.WARNING):
        upright = prepare_portrait(tagged, 64, 1.8)
    assert abs(roll_degrees(upright.landmarks)) < 15 and "rolled" not in caplog.text
    bare = tmp_path / "bare.png"
    side.save(bare)
    with caplog.at_level(logging.WARNING):
        prepare_portrait(bare, 64, 1.8)
    assert "rolled by" in caplog.text


# -- untrusted files -------------------------------------------------------------------------------
class Payload:
    """Pickles to a call of `os.system` (a checkpoint someone could hand you)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker, ckpt = tmp_path / "pwned", tmp_path / "evil.ckpt"
    import torch

    torch.save({"state_dict": {}, "hyper_parameters": {"model": "tiny"}, "x": Payload(marker)}, ckpt)
    assert b"system" in ckpt.read_bytes()
    return ckpt, marker


def test_a_pickled_payload_checkpoint_is_refused_by_export(tmp_path, netguard_log):
    ckpt, marker = evil_checkpoint(tmp_path)
    proc = run_tbd("export", str(ckpt), str(tmp_path / "out"), env=offline_env(netguard_log))
    assert proc.returncode != 0 and "was refused" in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists()  # the payload never ran


def test_a_pickled_payload_checkpoint_is_refused_by_resume(tmp_path, netguard_log, datasets):
    ckpt, marker = evil_checkpoint(tmp_path)
    config = str(Path(__file__).parents[1] / "configs" / "train" / "tiny.yaml")
    proc = run_tbd("train", "--config", config, "--data.data", str(datasets["mead"]["data"]),
                   "--trainer.default_root_dir", str(tmp_path / "run"), "--ckpt_path", str(ckpt),
                   env={**offline_env(netguard_log), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})  # fmt: skip
    assert proc.returncode != 0 and "was refused" in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists()


def test_plain_pickles_are_never_loaded(tmp_path):
    """The safe loader refuses a raw pickle of a payload too (not only torch.save's format)."""
    from tbd_lightning.checkpoint_file import load_checkpoint

    marker, path = tmp_path / "pwned", tmp_path / "raw.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    with pytest.raises(UserError):
        load_checkpoint(path)
    assert not marker.exists()


def test_yaml_configs_are_loaded_safely(tmp_path, netguard_log):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"trainer: !!python/object/apply:os.system ['touch {marker}']\n")
    proc = run_tbd("train", "--config", str(evil), env=offline_env(netguard_log))
    assert proc.returncode != 0
    assert not marker.exists()
