"""`tbd calibrate`: fit the AU measure (`media.au_calibration`) against ground truth, and print its table.

Two sources of frames with known AU intensities:
- renders (default): the demo corpus's renderer warps each identity (`portraits.calibration_people`: the
  real people the registry ships, Grace Hopper, Obama, Biden, then the demo's held-out astronaut; or the
  identities of the user's `--portraits`) with random AU intensities (every channel on its own, prototype
  combinations and speech mixed in), so every channel's effect can be told apart. Each frame is seen as the pipeline sees
  it: resized to a view's size, H.264-encoded at the preprocess CRF, decoded, tracked by the face model
  (upscaled to 256 px below that, as generated frames are).
- `--labels DIR` (DISFA-style): videos `DIR/{subject}.mp4|avi` with per-AU intensity files
  `DIR/{subject}_au{N}.txt` (lines `frame,intensity`, frames counted from 1, intensity 0-5), subjects in
  sorted order. One view at the videos' own resolution.

Fit, select, test: with the subjects in order, the last is the *test* identity (with the built-in photos the
demo's validation speaker, the astronaut, another person than every other identity), the second-to-last
the *selection* identity (built-in: Biden), the rest the *fit* identities (built-in: Grace Hopper, Obama).
Before 2026-12-05 the built-in fit and selection identities were variants of one photograph (Grace Hopper
mirrored): a measure chosen on the person it was fitted on, which did not transfer to the astronaut. Per
view, ridge weights are fitted on the fit identities for each penalty in `PENALTIES`; the one with the
lowest mean absolute error on the selection identity is kept, and each channel's `measurable` flag is
decided by its quality on the selection identity.
Every published error (each channel's r, MAE, floor, smallest detectable intensity; the demo-corpus clips)
is on the test identity alone, on which nothing was fitted or chosen. The shipped weights are those fitted on
the fit identities (no refit). The fit records all this in its provenance; `--out` writes it (the shipped
fit is `media/data/au_calibration.json`).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from media.au_calibration import FEATURES, SHIPPED, Calibration, ChannelFit, ViewFit, quality, ridge
from media.au_proxies import PROXIES
from tbd_core.errors import UserError

log = logging.getLogger(__name__)

# The uncalibrated proxy scales this measure replaced (proxy, direction, change at intensity E, IOD units),
# kept only to report how much the calibration gains over them.
LEGACY_SCALES: dict[str, list[tuple[str, int, float]]] = {
    "AU1": [("au1_r", 1, 0.18), ("au1_l", 1, 0.18)], "AU2": [("au2_r", 1, 0.18), ("au2_l", 1, 0.18)],
    "AU4": [("au4", 1, 0.18)], "AU5": [("au5_r", 1, 0.05), ("au5_l", 1, 0.05)],
    "AU43": [("au5_r", -1, 0.08), ("au5_l", -1, 0.08)], "AU12_R": [("au12_r", 1, 0.12)],
    "AU12_L": [("au12_l", 1, 0.12)], "AU15_R": [("au12_r", -1, 0.10)], "AU15_L": [("au12_l", -1, 0.10)],
    "AU20_R": [("au20_r", 1, 0.11)], "AU20_L": [("au20_l", 1, 0.11)], "AU25": [("au25", 1, 0.09)],
    "AU26": [("au26", 1, 0.20)],
}  # fmt: skip
# Ridge penalties tried; each view keeps the one with the lowest error on the selection identity.
PENALTIES = (10.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)


class CalibrateConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    out: Path = SHIPPED
    labels: Path | None = None  # a DISFA-style folder (see the module doc); None: renders
    portraits: Path | None = None  # renders: the demo corpus's identities from these photos
    # renders: `portraits.calibration_people`; >= 3: the last is the test identity (the demo's validation
    # speaker), the second-to-last the selection identity, the rest are fitted on
    identities: int = 6
    frames: int = 400  # renders: random frames per identity
    sizes: tuple[int, ...] = (256, 128, 64, 48)  # renders: views (frame side in pixels)
    crf: int = 20
    seed: int = 0


def legacy_reading(channel: str, rel: np.ndarray) -> np.ndarray | None:
    """What the old fixed proxy scales read for `channel` from baseline-relative proxies (N, K)."""
    spec = LEGACY_SCALES.get(channel)
    if spec is None:
        return None
    reads = [d * rel[:, PROXIES.index(p)] / scale * 5 for p, d, scale in spec]
    return np.clip(np.max(reads, 0), 0, 5)


def split_subjects(subjects: list[str]) -> tuple[list[str], str, str]:
    """Subjects in order -> (fit identities, selection identity, test identity): the last is the test one,
    the second-to-last the selection one."""
    if len(subjects) < 3:
        raise UserError(
            f"calibration needs at least 3 subjects (fit on the first, choose the ridge penalty and the "
            f"measurable channels on the second-to-last, publish the error on the last), got {len(subjects)}"
        )
    return list(subjects[:-2]), subjects[-2], subjects[-1]


def fit_view(name: str, iod_px: float, fit: tuple, select: tuple, test: tuple, channels: list[str],
             clips: tuple | None = None, penalties: tuple[float, ...] = PENALTIES) -> ViewFit:  # fmt: skip
    """Fit every channel on `fit` = (relative features (N, K), truth (N, C)) for each penalty; keep the one
    with the lowest mean absolute error on `select` over all channels and decide each channel's
    measurability there; score it on `test`, and on the test identity's `clips` (same form) when given
    (`clip_quality`). The weights are the ones fitted on `fit` alone."""
    (x, y), (xs, ys), (xt, yt) = fit, select, test
    tried = {p: ridge(x, y, p) for p in penalties}
    errors = {p: float(np.abs(np.clip(xs @ w, 0, 5) - ys).mean()) for p, w in tried.items()}
    penalty = min(errors, key=errors.get)
    weights = tried[penalty]
    fits: dict[str, ChannelFit] = {}
    for i, c in enumerate(channels):
        chosen = quality(xs @ weights[:, i], ys[:, i], None)
        f = quality(xt @ weights[:, i], yt[:, i], legacy_reading(c, xt))
        f.weights = [float(f"{w:.5g}") for w in weights[:, i]]
        f.measurable = chosen.measurable
        det = chosen.min_detectable
        f.selection = {"r": chosen.r, "mae": chosen.mae, "min_detectable": det if np.isfinite(det) else None,
                       "floor": chosen.floor}  # fmt: skip
        fits[c] = f
    view = ViewFit(name, round(float(iod_px), 2), fits, {"fit": len(x), "select": len(xs), "test": len(xt)},
                   penalty=penalty, penalties={f"{p:g}": round(e, 4) for p, e in errors.items()})  # fmt: skip
    if clips is not None:
        view.clips = clip_quality(view, *clips)
    return view


def clip_quality(view: ViewFit, rel: np.ndarray, truth: np.ndarray) -> dict:
    """Mean absolute error against the truth of the calibrated measure and of the old proxy scales on
    the test identity's clips (relative features (N, K), truth (N, C)), over the channels both read (the
    measurable ones the old scales covered) and over every channel the old scales covered; `mae_zero`:
    the error of a reading that is 0 everywhere (the floor any measure must beat)."""
    both, every = {"cal": [], "old": [], "zero": []}, {"cal": [], "old": [], "zero": []}
    for i, (c, fit) in enumerate(view.channels.items()):
        old = legacy_reading(c, rel)
        if old is None:
            continue
        cal = np.clip(rel @ np.asarray(fit.weights), 0, 5)
        for into in (both, every) if fit.measurable else (every,):
            into["cal"].append(float(np.abs(cal - truth[:, i]).mean()))
            into["old"].append(float(np.abs(old - truth[:, i]).mean()))
            into["zero"].append(float(np.abs(truth[:, i]).mean()))
    return {"frames": len(rel), "channels_measured": len(both["cal"]),
            "mae": round(float(np.mean(both["cal"])), 4), "mae_old": round(float(np.mean(both["old"])), 4),
            "mae_zero": round(float(np.mean(both["zero"])), 4),
            "channels_all": len(every["cal"]), "mae_all": round(float(np.mean(every["cal"])), 4),
            "mae_old_all": round(float(np.mean(every["old"])), 4),
            "mae_zero_all": round(float(np.mean(every["zero"])), 4)}  # fmt: skip


# -- renders ------------------------------------------------------------------------------------------
def random_intensities(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, len(CHANNELS)): a third of the frames an emotion prototype at a random level, the rest each
    channel on its own with probability 0.3; speech opens the mouth (AU25/26) in half of all frames."""
    from annotation.facs import MEAD_EMOTIONS, load_kb
    from pipelines.demo_corpus.au_templates import BILATERAL, CHANNELS

    kb = load_kb()
    au = np.where(rng.random((n, len(CHANNELS))) < 0.3, rng.uniform(0.5, 5, (n, len(CHANNELS))), 0.0)
    for t in np.flatnonzero(rng.random(n) < 1 / 3):
        au[t] = 0
        proto = kb.prototype(str(rng.choice(MEAD_EMOTIONS)))
        level, side = rng.uniform(1, 5), str(rng.choice(["R", "L"]))
        for a in proto.core:
            sides = ([side] if proto.unilateral else ["R", "L"]) if a in BILATERAL else [""]
            for s in sides:
                au[t, CHANNELS.index(f"AU{a}_{s}" if s else f"AU{a}")] = level
    speech = rng.random(n) < 0.5
    for c, amp in (("AU25", 3.0), ("AU26", 2.0)):
        k = CHANNELS.index(c)
        au[:, k] = np.where(speech, np.maximum(au[:, k], amp * rng.random(n)), au[:, k])
    au[:, CHANNELS.index("AU43")] *= rng.random(n) < 0.3  # eyes closed: rarer
    return au


def _view(frames: np.ndarray, size: int, crf: int) -> tuple[np.ndarray, float]:
    """Frames (N, H, W, 3) seen at `size` px after H.264 (`track_video`): features (N, F), median IOD."""
    import cv2

    from media.au_measure import track_video
    from media.video_io import read_frames, write_mp4

    small = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
    with tempfile.TemporaryDirectory() as tmp:
        write_mp4(Path(tmp) / "v.mp4", small, fps=25, crf=crf)
        decoded, _ = read_frames(Path(tmp) / "v.mp4")
    video = track_video(decoded)
    if not video.found.all():
        lost = int((~video.found).sum())
        raise UserError(
            f"the face model lost the face in {lost}/{len(frames)} calibration frames at {size} px"
        )
    return video.features, video.iod_px


def heldout_clips(name: str, renderer) -> tuple[np.ndarray, np.ndarray]:
    """Frames (N, H, W, 3) and truth (N, C) of every MEAD clip the default demo corpus renders for its last
    speaker, the held-out one (each emotion at levels 1 and 3, with speech, as `tbd demo-corpus` plans them),
    drawn on identity `name`: the test identity's."""
    from pipelines.demo_corpus.corpus import CorpusConfig, clip_signals, plan_clips

    corpus = CorpusConfig(out=Path("."), hdtf_clips=0)
    names = [f"Training{i}" for i in range(corpus.identities - 1)] + [name]
    truth = [clip_signals(spec, name, corpus.seconds)[2]
             for spec in plan_clips(corpus, names) if spec.identity == name]  # fmt: skip
    truth_all = np.concatenate(truth)
    return renderer.frames(truth_all), truth_all


def render_sets(cfg: CalibrateConfig) -> tuple[dict, list[str], dict, dict]:
    """view name -> {identity: (features relative to its neutral (N, K), truth (N, C))} in the corpus's
    speaker order, the channels, the views' IODs, and view name -> the test (last) identity's demo-corpus
    clips (relative, truth)."""
    from media.face import FaceAnalyzer
    from pipelines.demo_corpus.au_templates import CHANNELS
    from pipelines.demo_corpus.corpus import ExpressionRenderer, _prepare
    from pipelines.demo_corpus.portraits import calibration_people

    people = calibration_people(cfg.portraits, cfg.identities)
    rng = np.random.default_rng(cfg.seed)
    sets: dict[str, dict] = {f"{s}px": {} for s in cfg.sizes}
    iods: dict[str, list[float]] = {f"{s}px": [] for s in cfg.sizes}
    clips: dict[str, tuple] = {}
    with FaceAnalyzer() as fa:
        for person in people:
            crop, lm = _prepare(fa, person, 128)
            renderer = ExpressionRenderer(crop, lm)
            truth = random_intensities(rng, cfg.frames)
            rest = np.zeros((4, len(CHANNELS)))  # neutral frames: the person's baseline
            frames = renderer.frames(np.concatenate([rest, truth]))
            held = person is people[-1]  # the test identity
            if held:
                clip_frames, clip_truth = heldout_clips(person.name, renderer)
                frames = np.concatenate([frames, clip_frames])
            for s in cfg.sizes:
                proxies, iod = _view(frames, s, cfg.crf)
                base = np.median(proxies[: len(rest)], 0)
                n = len(rest) + len(truth)
                sets[f"{s}px"][person.name] = (proxies[len(rest) : n] - base, truth)
                if held:
                    clips[f"{s}px"] = (proxies[n:] - base, clip_truth)
                iods[f"{s}px"].append(iod)
            log.info("calibration renders: %s, %d frames x %d views", person.name, cfg.frames, len(cfg.sizes))
    return sets, list(CHANNELS), {k: float(np.median(v)) for k, v in iods.items()}, clips


# -- DISFA-style labels -------------------------------------------------------------------------------
def label_sets(folder: Path) -> tuple[dict, list[str], float]:
    """{subject: (relative proxies, truth)}, channels (`AU{N}`), median IOD of a DISFA-style folder. Each
    video is decoded and tracked a frame at a time: memory follows its features, not its pixels."""
    from media.au_measure import track_frames
    from media.video_io import decode_frames

    if not folder.is_dir():
        raise UserError(f"{folder}: labels folder does not exist")
    labels: dict[str, dict[int, Path]] = {}
    for f in sorted(folder.iterdir()):
        m = re.fullmatch(r"(.+)_au(\d+)\.txt", f.name, re.I)
        if m:
            labels.setdefault(m.group(1), {})[int(m.group(2))] = f
    if not labels:
        raise UserError(f"{folder}: no label files named {{subject}}_au{{N}}.txt")
    aus = sorted({a for per in labels.values() for a in per})
    out, iods = {}, []
    for subject, files in labels.items():
        video = next((folder / f"{subject}{ext}" for ext in (".mp4", ".avi", ".MP4", ".AVI")
                      if (folder / f"{subject}{ext}").exists()), None)  # fmt: skip
        if video is None:
            raise UserError(f"{folder}: labels for {subject} but no video {subject}.mp4 or .avi")
        seen = track_frames(decode_frames(video))  # one frame held at a time
        truth = np.zeros((len(seen.features), len(aus)))
        for j, a in enumerate(aus):
            if a not in files:
                raise UserError(f"{subject}: no labels for AU{a} ({next(iter(files.values())).name} exists)")
            for line in files[a].read_text().split():
                frame, value = line.split(",")[:2]
                if 1 <= int(frame) <= len(truth):
                    truth[int(frame) - 1, j] = float(value)
        if not seen.found.any():
            raise UserError(f"{video}: no face found")
        feats, truth = seen.features[seen.found], truth[seen.found]
        calm = truth.max(1) == 0
        if not calm.any():
            raise UserError(f"{subject}: no frame with every AU at 0 to serve as the neutral baseline")
        out[subject] = (feats - np.median(feats[calm], 0), truth)
        iods.append(seen.iod_px)
    return out, [f"AU{a}" for a in aus], float(np.median(iods))


def run_calibrate(cfg: CalibrateConfig) -> Calibration:
    from annotation.facs import load_kb

    if not cfg.labels and cfg.identities < 3:
        split_subjects([f"W{i + 1:03d}" for i in range(cfg.identities)])  # refuse before rendering
    if cfg.labels:
        per, channels, iod = label_sets(Path(cfg.labels))
        sets, iods, clips = {"labels": per}, {"labels": iod}, {}
        source = f"DISFA-style labels in {cfg.labels}"
    else:
        sets, channels, iods, clips = render_sets(cfg)
        source = (f"demo-corpus renders ({cfg.frames} random-AU frames per identity, views {list(cfg.sizes)} px, "
                  f"H.264 crf {cfg.crf}, seed {cfg.seed}, portraits {cfg.portraits or 'built-in'})")  # fmt: skip
    views = []
    for name, per in sets.items():
        subjects = sorted(per) if cfg.labels else list(per)
        fit, select, test = split_subjects(subjects)
        train = tuple(np.concatenate([per[s][i] for s in fit]) for i in (0, 1))
        views.append(fit_view(name, iods[name], train, per[select], per[test], channels, clips.get(name)))
    cal = Calibration(list(FEATURES), sorted(views, key=lambda v: -v.iod_px),
                      {"fitted_on": source, "fit": fit, "select": select, "test": test,
                       "penalties_tried": list(PENALTIES), "kb_version": load_kb().version,
                       "model": "ridge on baseline-relative features (proxies, HOG, grey levels), no intercept, clipped to 0..5; "
                                "penalty and measurable channels chosen on the selection identity, errors on the test identity"})  # fmt: skip
    cal.save(Path(cfg.out))
    print(cal.table())
    print(f"wrote {cfg.out}")
    return cal
