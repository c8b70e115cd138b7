"""What evaluation reads besides the generated frames: the emotion of a video from its calibrated AU
intensities (the nearest FACS prototype: a rule classifier fitted on nothing) and the demo corpus's
ground-truth AU timelines and renders (the counterfactual test). Shared by `tbd evaluate` and
`tbd check-measures`."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np


@functools.cache
def prototype_templates() -> dict[tuple[str, int], dict[int, float]]:
    """Each emotion's FACS prototype as AU intensities, per MEAD level: (emotion, level) -> {AU: the level's
    FACS intensity (levels 1, 2, 3 = B, C, D = 2, 3, 4)} over its core AUs; neutral: no AU."""
    from annotation.facs import MEAD_EMOTIONS, intensity_value, load_kb

    kb = load_kb()
    out = {}
    for emotion in MEAD_EMOTIONS:
        for level in (1,) if emotion == "neutral" else sorted(kb.mead_level_intensity):
            value = float(intensity_value(kb.level_intensity(level)))
            out[(emotion, level)] = {au: value for au in kb.prototype(emotion).core}
    return out


def classify_emotion(measured: dict[int, list]) -> str | None:
    """A video's emotion from its calibrated AU intensities (`media.au_measure.measured_aus`, speech AUs left
    out): the emotion of the FACS prototype, at any level, nearest to its mean intensities over the AUs
    measured (`nearest`). EMFACS-style: it was fitted on nothing, so it reads real, generated and still
    clips alike, and a training split cannot bias it. On the demo's 15 real validation clips at 48 px
    (whole clips): 15 of 15; the nearest-centroid classifier fitted on the training clips it replaced: 12-13.
    On the demo corpus the prototypes are what was rendered; on real faces it is a rule, not a fit."""
    key = nearest(prototype_templates(), measured)
    return None if key is None else key[0]


def groundtruth_index(corpus: Path | None) -> dict[str, Path]:
    """Source video path (resolved) -> ground-truth npz, from the demo corpus index."""
    if corpus is None:
        return {}
    index = json.loads((corpus / "corpus.json").read_text())
    return {str((corpus / c["video"]).resolve()): corpus / c["groundtruth"] for c in index["clips"]}


def groundtruth_specs(corpus: Path | None) -> dict[str, dict[int, float]]:
    """Source video path (resolved) -> the clip's AU specification {AU: apex FACS intensity} as the demo
    corpus rendered it (its `aus`, the larger side of a sided AU)."""
    from evaluation.au_request import channels_au

    if corpus is None:
        return {}
    index = json.loads((corpus / "corpus.json").read_text())
    return {str((corpus / c["video"]).resolve()): channels_au(c["aus"]) for c in index["clips"]}


def groundtruth_aus(path: Path, frames: int) -> dict[int, list[float]]:
    data = np.load(path)
    out: dict[int, list[float]] = {}
    for i, channel in enumerate(data["channels"]):
        au = int(str(channel)[2:].split("_")[0])
        values = data["au"][:frames, i]
        out[au] = list(np.maximum(out.get(au, np.zeros(len(values))), values))
    return out


def emotion_templates(corpus: Path | None) -> dict[tuple[str, int], dict[str, dict[int, float]]]:
    """The counterfactual test's references: per (speaker, level), each emotion's ground-truth AU
    intensities averaged over its render's frames (neutral: its level-1 render stands for every level).
    Empty without a demo corpus."""
    if corpus is None:
        return {}
    index = json.loads((corpus / "corpus.json").read_text())
    clips = [c for c in index["clips"] if c["layout"] == "mead"]
    out: dict[tuple[str, int], dict[str, dict[int, float]]] = {}
    levels = {c["level"] for c in clips if c["emotion"] != "neutral"}
    for c in clips:
        truth = groundtruth_aus(corpus / c["groundtruth"], c["frames"])
        mean = {au: float(np.mean(v)) for au, v in truth.items()}
        for level in levels if c["emotion"] == "neutral" else (c["level"],):
            out.setdefault((c["speaker"], level), {})[c["emotion"]] = mean
    return out


def mean_intensities(measured: dict[int, list]) -> dict[int, float]:
    """Each AU's mean over the frames where it was measured (None elsewhere); AUs never measured left out."""
    out = {}
    for au, series in measured.items():
        values = [v for v in series if v is not None]
        if values:
            out[au] = float(np.mean(values))
    return out


def counterfactual_emotion(templates: dict[str, dict[int, float]], measured: dict[int, list]) -> str | None:
    """The emotion whose ground-truth render (`emotion_templates`) is nearest to the video's mean measured
    AU intensities: a generated clip passes the counterfactual test when this is the emotion it was asked
    for, i.e. it is closer to that render than to the other emotions' renders of its speaker."""
    return nearest(templates, measured)


def nearest(templates: dict, measured: dict[int, list]):
    """The key of the template ({AU: intensity}) nearest (Euclidean, over the AUs measured; an AU a template
    does not name counts as 0) to the video's mean measured AU intensities; among templates equally near,
    the one that asks least of the AUs not measured (nothing unseen is assumed to move). None without
    measured AUs or with fewer than two templates."""
    means = mean_intensities(measured)
    aus = sorted(means)
    if not aus or len(templates) < 2:
        return None
    video = np.array([means[au] for au in aus])

    def distance(key) -> tuple[float, float]:
        t = templates[key]
        near = np.linalg.norm(video - np.array([t.get(au, 0.0) for au in aus]))
        unseen = np.linalg.norm([v for au, v in t.items() if au not in means] or [0.0])
        return round(float(near), 9), float(unseen)

    return min(templates, key=distance)
