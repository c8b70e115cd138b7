"""The demo corpus: both layouts, decodable media, and faces that move as the ground truth says."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import run_tbd

from annotation.facs import MEAD_EMOTIONS
from media.au_proxies import PROXIES, au_proxies
from media.video_io import frame_envelope, read_audio, read_frames, video_info

SPEAKERS = ("W001", "W002", "W003")
LEVELS = {e: ((1,) if e == "neutral" else (1, 3)) for e in MEAD_EMOTIONS}


def _mead(root, sp, emotion, level, kind="video"):
    if kind == "video":
        return root / "mead" / sp / "video" / "front" / emotion / f"level_{level}" / "000.mp4"
    return root / "mead" / sp / "audio" / emotion / f"level_{level}" / "000.m4a"


def _gt(root, sp, emotion, level):
    return np.load(
        root / "groundtruth" / "mead" / sp / "video" / "front" / emotion / f"level_{level}" / "000.npz"
    )


def _proxies(analyzer, path):
    frames, _ = read_frames(path)
    results = analyzer.track(frames)
    assert all(r.found for r in results), f"face lost in {path}"
    return au_proxies(np.stack([r.mesh.landmarks for r in results]))


def test_both_layouts_are_complete(demo_corpus):
    expected = {_mead(demo_corpus, sp, e, lv) for sp in SPEAKERS for e in MEAD_EMOTIONS for lv in LEVELS[e]}
    assert set((demo_corpus / "mead").rglob("*.mp4")) == expected
    assert {p.with_suffix("") for p in (demo_corpus / "mead").rglob("*.m4a")} == {
        _mead(demo_corpus, sp, e, lv, "audio").with_suffix("")
        for sp in SPEAKERS
        for e in MEAD_EMOTIONS
        for lv in LEVELS[e]
    }
    hdtf = sorted(p.name for p in (demo_corpus / "hdtf").glob("*.mp4"))
    assert len(hdtf) == 3 and all(re.fullmatch(r"(RD|WDA|WRA)_[A-Za-z0-9]+_\d{3}\.mp4", n) for n in hdtf)
    meta = json.loads((demo_corpus / "corpus.json").read_text())
    assert len(meta["clips"]) == 45 + 3 and len({i["name"] for i in meta["identities"]}) == 3
    assert (demo_corpus / meta["heldout"]["image"]).exists()
    for clip in meta["clips"]:
        gt = np.load(demo_corpus / clip["groundtruth"])
        assert gt["au"].shape == (clip["frames"], len(meta["au_channels"]))
        assert gt["au"].min() >= 0 and gt["au"].max() <= 5


def test_every_mp4_decodes_at_25fps_with_audio(demo_corpus):
    videos = list(demo_corpus.rglob("*.mp4"))
    assert len(videos) == 48
    for path in videos:
        info = video_info(path)
        assert info["codec"] == "h264" and info["fps"] == 25.0 and info["has_audio"], path
        frames, fps = read_frames(path)
        assert frames.shape == (50, 128, 128, 3) and fps == 25.0
        audio = read_audio(path)
        assert abs(len(audio) / 16000 - 2.0) < 0.1 and np.abs(audio).max() > 0.1
    for path in (demo_corpus / "mead").rglob("*.m4a"):
        assert abs(len(read_audio(path)) / 16000 - 2.0) < 0.1


def test_smile_raises_the_mouth_corners_as_the_sidecar_says(demo_corpus, analyzer):
    i12r, i12l = PROXIES.index("au12_r"), PROXIES.index("au12_l")
    for sp in SPEAKERS:
        base = np.median(_proxies(analyzer, _mead(demo_corpus, sp, "neutral", 1)), 0)
        rise = {}
        for level in (1, 3):
            gt = _gt(demo_corpus, sp, "happy", level)
            ch = list(gt["channels"])
            assert gt["au"][-1, ch.index("AU12_R")] > 0 and gt["au"][-1, ch.index("AU12_L")] > 0
            p = _proxies(analyzer, _mead(demo_corpus, sp, "happy", level))[15:] - base
            rise[level] = float(np.median(p[:, [i12r, i12l]]))
        assert rise[3] > 0.015, (sp, rise)  # corners up by > 1.5 % of the inter-ocular distance
        if sp != "W003":  # stronger at a higher MEAD level, as the raw mesh reads Grace Hopper's photograph
            assert rise[3] > rise[1], (sp, rise)
        # The astronaut (W003 since corpus 3): the frames show a wider smile with folds at level 3, but the raw
        # mesh reads its corners at 0.053 (level 1) vs 0.041 (level 3) IOD (2026-12-04): a limit of the mesh
        # proxy on that face, not of the render; the calibrated measure is scored on it in test_au_calibration.


def test_contempt_is_one_sided_on_the_side_the_sidecar_names(demo_corpus, analyzer):
    i12r, i12l = PROXIES.index("au12_r"), PROXIES.index("au12_l")
    for sp in SPEAKERS:
        gt = _gt(demo_corpus, sp, "contempt", 3)
        ch = list(gt["channels"])
        r, l_ = gt["au"][:, ch.index("AU12_R")].max(), gt["au"][:, ch.index("AU12_L")].max()
        assert (r > 0) != (l_ > 0), "contempt must be unilateral in the ground truth"
        base = np.median(_proxies(analyzer, _mead(demo_corpus, sp, "neutral", 1)), 0)
        p = np.median(_proxies(analyzer, _mead(demo_corpus, sp, "contempt", 3))[15:] - base, 0)
        active, other = (p[i12r], p[i12l]) if r > 0 else (p[i12l], p[i12r])
        assert active > other + 0.008, (sp, p[i12r], p[i12l])


def _calibrated(path, neutral_path):
    """Calibrated AU intensities (channel -> (T,)) of a clip against its speaker's neutral clip."""
    from media.au_calibration import load
    from media.au_measure import track_video

    video = track_video(read_frames(path)[0])
    base = track_video(read_frames(neutral_path)[0]).baseline()
    return load().measure(video.features, base, video.iod_px)


UNSEEN = pytest.param(
    "W003",
    marks=pytest.mark.xfail(reason="the calibrated measure, fitted on Grace Hopper and Obama, reads the astronaut's "
                            "sad lip corners at AU15 1.43 on the weaker side (bar 1.5; 1.23 when fitted on one "
                            "photograph; 2026-12-05): it transfers to her only in part"),
)  # fmt: skip


@pytest.mark.parametrize("sp", ["W001", "W002", UNSEEN])
def test_sad_lowers_and_surprise_lifts(demo_corpus, sp):
    """Read with the calibrated measure (the raw mesh barely follows brows behind Grace Hopper's glasses):
    sad lowers the lip corners (AU15) and raises the inner brows (AU1); surprise raises both brows (AU1+2).
    On the calibration's fit identities (Grace Hopper, mirrored); on the unseen person a known failure of the
    measure."""
    neutral = _mead(demo_corpus, sp, "neutral", 1)
    sad = {
        c: float(np.median(v[15:])) for c, v in _calibrated(_mead(demo_corpus, sp, "sad", 3), neutral).items()
    }
    surprised = _calibrated(_mead(demo_corpus, sp, "surprised", 3), neutral)
    surprised = {c: float(np.median(v[15:])) for c, v in surprised.items()}
    assert min(sad["AU15_R"], sad["AU15_L"]) > 1.5 and sad["AU1"] > 1.5, (sp, sad)
    assert surprised["AU2"] > 2.0 and surprised["AU1"] > 1.5, (sp, surprised)
    assert surprised["AU15_R"] < 1.0 and sad["AU2"] < 1.0, (sp, sad, surprised)  # and not the other way


def test_mouth_opening_follows_the_audio_envelope(demo_corpus, analyzer):
    gap = PROXIES.index("au25")
    for sp in SPEAKERS:
        for emotion in ("neutral", "happy"):
            p = _proxies(analyzer, _mead(demo_corpus, sp, emotion, 1))
            env = frame_envelope(read_audio(_mead(demo_corpus, sp, emotion, 1, "audio")), len(p))
            r = np.corrcoef(p[:, gap], env)[0, 1]
            assert r > 0.6, (sp, emotion, r)


def test_corpus_run_needed_no_network(demo_corpus, netguard_log):
    attempts = netguard_log.read_text() if netguard_log.exists() else ""
    assert attempts == "", f"network access attempted at run time:\n{attempts}"


def test_network_guard_really_blocks(tmp_path):
    """The guard used above is effective: a real outbound connection attempt is refused and logged."""
    import subprocess
    import sys

    from conftest import offline_env

    log = tmp_path / "log"
    code = "import socket; socket.create_connection(('93.184.216.34', 80), timeout=2)"
    proc = subprocess.run([sys.executable, "-c", code], env=offline_env(log), capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked by the offline test guard" in proc.stderr
    assert "93.184.216.34" in log.read_text()


# -- bad input ------------------------------------------------------------------------------------
def _assert_clean_failure(proc, out, *needles):
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in last, last
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "half-written temp folder left behind"


def test_unknown_emotion(tmp_path):
    out = tmp_path / "c"
    proc = run_tbd("demo-corpus", "--out", str(out), "--emotions", "[happy, joyful]")
    _assert_clean_failure(proc, out, "unknown emotion", "joyful")


def test_seconds_that_are_not_whole_frames(tmp_path):
    """1.5 s is 37.5 frames: one clear line, not a traceback from inside a render worker."""
    out = tmp_path / "c"
    proc = run_tbd("demo-corpus", "--out", str(out), "--seconds", "1.5")
    _assert_clean_failure(proc, out, "--seconds 1.5 is not a whole number of frames")


@pytest.mark.parametrize("content,reason", [(b"garbage", "not a readable image"), (None, "no face detected")])
def test_bad_portrait(tmp_path, content, reason):
    from media.images import write_image

    photos = tmp_path / "photos"
    photos.mkdir()
    if content is None:
        write_image(photos / "wall.png", np.full((160, 160, 3), 128, np.uint8))
    else:
        (photos / "wall.png").write_bytes(content)
    out = tmp_path / "c"
    options = "--identities 1 --emotions [happy] --levels [1] --hdtf_clips 0".split()
    proc = run_tbd("demo-corpus", "--out", str(out), "--portraits", str(photos), *options)
    _assert_clean_failure(proc, out, reason, "wall.png")


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "corpus"
    proc = run_tbd("demo-corpus", "--out", str(out))
    assert proc.returncode == 2 and "cannot write to" in proc.stderr and str(blocker) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_existing_output_is_kept_without_force(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "keep").write_text("mine")
    proc = run_tbd("demo-corpus", "--out", str(out), "--emotions", "[happy]")
    assert proc.returncode == 2 and "--force" in proc.stderr and (out / "keep").read_text() == "mine"


def test_user_portraits_and_options(tmp_path, astronaut):
    from media.images import write_image

    photos = tmp_path / "photos"
    write_image(photos / "my face.png", astronaut)
    out = tmp_path / "c"
    options = (
        "--identities 2 --emotions [contempt] --levels [2] --hdtf_clips 1 --seconds 1 --size 96 --workers 1"
    )
    proc = run_tbd("demo-corpus", "--out", str(out), "--portraits", str(photos), *options.split())
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((out / "corpus.json").read_text())
    assert [i["name"] for i in meta["identities"]] == ["MyFace", "MyFaceMirror"]
    assert len(meta["clips"]) == 4
    frames, fps = read_frames(out / "mead" / "W002" / "video" / "front" / "contempt" / "level_2" / "000.mp4")
    assert frames.shape == (25, 96, 96, 3) and fps == 25.0


def _au_set(aus: dict) -> frozenset[int]:
    """A clip's AU numbers (sides merged) from its record's apex AUs."""
    return frozenset(int(re.match(r"AU(\d+)", name).group(1)) for name in aus)


def test_variation_draws_each_clips_muscles_within_its_label_and_compounds_stay_unseen(tmp_path, demo_corpus):
    """`--variation true`: within one (emotion, level) the clips' AU sets, intensities, sides and timing
    differ (the default corpus: one AU set per label); `--compound_clips 1`: the held-out person's compound
    expressions (Du et al. 2014), outside both layouts, whose AU combinations no training clip shows."""
    from annotation.facs import load_kb

    out = tmp_path / "varied"
    proc = run_tbd("demo-corpus", "--out", str(out), "--emotions", "[happy, sad, angry, contempt, surprised]",
                   "--levels", "[3]", "--clips_per_level", "4", "--hdtf_clips", "0", "--seconds", "1",
                   "--size", "64", "--variation", "true", "--compound_clips", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["variation"] and meta["compound_clips"] == 1
    mead = [c for c in meta["clips"] if c["layout"] == "mead"]
    train = [c for c in mead if c["speaker"] != "W003"]  # the last speaker is the validation person
    for emotion in ("happy", "sad", "angry", "contempt", "surprised"):
        clips = [c for c in train if c["emotion"] == emotion]
        assert len(clips) == 8 and len({_au_set(c["aus"]) for c in clips}) >= 2, (
            emotion,
            [c["aus"] for c in clips],
        )
        assert len({round(v, 2) for c in clips for v in c["aus"].values()}) >= 4  # intensities drawn per AU
    assert {name[-1] for c in train if c["emotion"] == "contempt" for name in c["aus"] if "_" in name} == {
        "L",
        "R",
    }
    courses = []
    for c in mead:  # the ground truth holds every frame's AUs; some expressions release before the clip ends
        gt = np.load(out / c["groundtruth"])
        assert gt["au"].shape == (c["frames"], len(meta["au_channels"]))
        apex = gt["au"][:, [meta["au_channels"].index(n) for n in c["aus"] if n not in ("AU25", "AU26")]]
        if apex.size:
            courses.append(apex.max(1)[-1] / apex.max())
    assert min(courses) < 0.5 < max(courses), courses
    # Takes of two: clips 2k and 2k+1 of a speaker's (emotion, level) speak one sentence, each with its own
    # muscles (so the speech cannot tell a model which of them raises the brows); the next take another one.
    from media.video_io import read_audio

    take = lambda c: (c["speaker"], c["emotion"], c["level"], c["clip"] // 2)  # noqa: E731
    audio = {(take(c), c["clip"] % 2): read_audio(out / c["audio"]) for c in train if c["emotion"] == "sad"}
    assert len(audio) == 8
    for (t, second), wav in audio.items():
        assert np.array_equal(wav, audio[(t, 1 - second)])
        assert not np.array_equal(wav, audio[((*t[:3], 1 - t[3]), second)])
    assert any(_au_set(a["aus"]) != _au_set(b["aus"]) for a in train for b in train
               if a is not b and take(a) == take(b))  # fmt: skip
    default = json.loads((demo_corpus / "corpus.json").read_text())["clips"]
    for emotion in ("happy", "sad"):
        assert len({_au_set(c["aus"]) for c in default if c["emotion"] == emotion and c["level"] == 3}) == 1

    compound = [c for c in meta["clips"] if c["layout"] == "compound"]
    kb = load_kb()
    assert sorted(c["emotion"] for c in compound) == sorted(kb.compound_expressions)
    assert all(c["video"].startswith("compound/") and (out / c["video"]).is_file() for c in compound)
    assert not any("compound" in str(p) for p in (out / "mead").rglob("*"))  # never ingested
    seen = {_au_set(c["aus"]) for c in train}
    for c in compound:
        assert _au_set(c["aus"]) not in seen, c
        assert c["identity"] == meta["heldout"]["name"]


def test_training_identities_can_come_from_three_real_people(tmp_path):
    """`--training_photos 3` (make thesis): the training speakers are Grace Hopper, Obama and Biden (then their
    variants), the last speaker still the held-out astronaut; the demo's default is Grace Hopper's photograph
    alone. A count outside 1..3 is a `UserError` before anything is rendered."""
    from pipelines.demo_corpus.corpus import CorpusConfig
    from pipelines.demo_corpus.portraits import speakers
    from tbd_core.errors import UserError

    assert [p.name for p in speakers(None, 5, 3)] == [
        "GraceHopper",
        "Obama",
        "Biden",
        "GraceHopperMirror",
        "Astronaut",
    ]
    assert [p.name for p in speakers(None, 3)] == ["GraceHopper", "GraceHopperMirror", "Astronaut"]
    with pytest.raises(UserError, match="training_photos"):
        CorpusConfig(out=tmp_path, training_photos=4).validate()
