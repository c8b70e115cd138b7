"""What evaluation reads besides the generated frames: the emotion classifier on calibrated AU intensities
(fitted on the training split's sidecars, applied to any tracked video) and the demo corpus's ground-truth
AU timelines. Shared by `tbd evaluate` and `benchmarks/bench_measure.py`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def emotion_classifier(data: Path):
    """Nearest-centroid emotion classifier on calibrated AU intensities (mean and 90th percentile per
    channel, against each speaker's neutral median) of the training split's clips; `clf.channels` names the
    channels it reads. None when the training split has fewer than two emotions."""
    from evaluation.metrics import AUEmotionClassifier
    from media.au_evidence import speaker_baselines
    from pipelines.data_folder import DataFolder

    summaries = DataFolder(data).media_summaries()
    baselines = speaker_baselines(summaries)
    train = [s for s in summaries.values() if s["split"] == "train"]
    if len({s["emotion"] for s in train}) < 2:
        return None
    names = list(train[0]["au_names"])
    keep = [names.index(c) for c in train[0]["au_measurable"]]

    def row(s):
        base = baselines.get(s["speaker"], np.asarray(s["au_p10"]))
        return np.concatenate(
            [(np.asarray(s["au_mean"]) - base)[keep], (np.asarray(s["au_p90"]) - base)[keep]]
        )

    clf = AUEmotionClassifier().fit(np.stack([row(s) for s in train]), [s["emotion"] for s in train])
    clf.channels = [names[i] for i in keep]
    return clf


def intensities(video, baseline: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Every calibrated channel's centred intensity (T_found, C) of a tracked video against a baseline."""
    from media.au_calibration import load

    names, values = load().linear(video.features[video.found] - baseline[None], video.iod_px)
    return names, values


def classifier_row(clf, video, baseline: np.ndarray) -> np.ndarray | None:
    """The classifier's feature row (mean and 90th percentile of its channels) for a tracked video."""
    if not video.found.any():
        return None
    names, values = intensities(video, baseline)
    cols = values[:, [names.index(c) for c in clf.channels]]
    return np.concatenate([cols.mean(0), np.percentile(cols, 90, axis=0)])


def groundtruth_index(corpus: Path | None) -> dict[str, Path]:
    """Source video path (resolved) -> ground-truth npz, from the demo corpus index."""
    if corpus is None:
        return {}
    index = json.loads((corpus / "corpus.json").read_text())
    return {str((corpus / c["video"]).resolve()): corpus / c["groundtruth"] for c in index["clips"]}


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
    """The emotion whose ground-truth render is nearest (Euclidean, over the measured AUs) to the video's
    mean measured AU intensities: a generated clip passes the counterfactual test when this is the emotion it
    was asked for, i.e. it is closer to that render than to the other emotions' renders of its speaker."""
    means = mean_intensities(measured)
    aus = sorted(means)
    if not aus or len(templates) < 2:
        return None
    video = np.array([means[au] for au in aus])
    dist = {
        e: float(np.linalg.norm(video - np.array([t.get(au, 0.0) for au in aus])))
        for e, t in templates.items()
    }
    return min(dist, key=dist.get)
