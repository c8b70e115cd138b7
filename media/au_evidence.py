"""Measured AU evidence for the Think stage: a clip's calibrated AU readings -> `AUEvidence` (FACS 0-5).

Preprocess stores per-clip statistics of the uncentred calibrated readings (`media.au_calibration`:
linear, so a constant baseline can be subtracted from any percentile). Evidence subtracts the speaker's
neutral baseline (median of the speaker's neutral clips; a clip without one uses its own calmest frames,
the 10th percentile): peak = 90th percentile, mean = mean, clipped to 0..5. Only channels the calibration
marks measurable at the clip's face size become evidence: an AU it cannot see is neither confirmed nor
contradicted (the validator then keeps a prototype's core AU without evidence).
"""

from __future__ import annotations

import numpy as np

from annotation.records import AUEvidence
from media.au_calibration import channel_au


def speaker_baselines(summaries: dict[str, dict]) -> dict[str, np.ndarray]:
    """Speaker -> median proxies over that speaker's neutral clips."""
    rows: dict[str, list] = {}
    for s in summaries.values():
        if s["emotion"] == "neutral":
            rows.setdefault(s["speaker"], []).append(s["au_p50"])
    return {speaker: np.median(np.array(v), axis=0) for speaker, v in rows.items()}


def clip_evidence(summary: dict, baseline: np.ndarray | None) -> tuple[AUEvidence, ...]:
    """Evidence for every measurable channel (sides kept apart; 'both' for midline AUs)."""
    names, measurable = summary["au_names"], set(summary["au_measurable"])
    base = _baseline(summary, baseline)
    mean, p90 = np.asarray(summary["au_mean"]), np.asarray(summary["au_p90"])
    out = []
    for i, name in enumerate(names):
        if name in measurable:
            au, side = channel_au(name)
            peak = float(np.clip(p90[i] - base[i], 0, 5))
            avg = float(np.clip(mean[i] - base[i], 0, peak))
            out.append(AUEvidence(au=au, mean=round(avg, 2), peak=round(peak, 2), side=side))
    return tuple(out)


def _baseline(summary: dict, baseline: np.ndarray | None) -> np.ndarray:
    return np.asarray(summary["au_p10"]) if baseline is None else np.asarray(baseline)


def clip_timeline(readings: np.ndarray, summary: dict, baseline: np.ndarray | None) -> dict[int, list[float]]:
    """Per-frame FACS 0-5 of every measurable AU (the stronger side) from a clip's readings (T, C) (its
    `au.npy`), against the baseline `clip_evidence` uses: what the evidence's mean and peak summarise."""
    base, readings, measurable = (
        _baseline(summary, baseline),
        np.asarray(readings),
        set(summary["au_measurable"]),
    )
    out: dict[int, np.ndarray] = {}
    for i, name in enumerate(summary["au_names"]):
        if name in measurable:
            au, _ = channel_au(name)
            series = np.clip(readings[:, i] - base[i], 0, 5)
            out[au] = np.maximum(out[au], series) if au in out else series
    return {au: [round(float(v), 3) for v in series] for au, series in sorted(out.items())}
