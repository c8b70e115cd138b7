"""Measured AU evidence for the Think stage: proxy statistics of a clip -> `AUEvidence` on the FACS scale.

Each proxy's change from the speaker's neutral baseline (median of the speaker's neutral clips; a clip
without one uses its own calmest frames, the 10th percentile) is divided by the change that FACS
intensity E produces and scaled to 0..5. The E-scales are approximate (IOD units, from typical adult
faces and the demo corpus's AU templates): proxies are evidence, not a FACS coder.
"""

from __future__ import annotations

import numpy as np

from annotation.records import AUEvidence
from annotation.schema import Side

# proxy -> [(AU, side, direction, change at intensity E in IOD units)]
PROXY_AUS: dict[str, list[tuple[int, Side, int, float]]] = {
    "au1_r": [(1, "right", +1, 0.18)],
    "au1_l": [(1, "left", +1, 0.18)],
    "au2_r": [(2, "right", +1, 0.18)],
    "au2_l": [(2, "left", +1, 0.18)],
    "au4": [(4, "both", +1, 0.18)],
    "au5_r": [(5, "right", +1, 0.05), (43, "right", -1, 0.08)],
    "au5_l": [(5, "left", +1, 0.05), (43, "left", -1, 0.08)],
    "au12_r": [(12, "right", +1, 0.12), (15, "right", -1, 0.10)],
    "au12_l": [(12, "left", +1, 0.12), (15, "left", -1, 0.10)],
    "au20": [(20, "both", +1, 0.22)],
    "au25": [(25, "both", +1, 0.09)],
    "au26": [(26, "both", +1, 0.20)],
}


def speaker_baselines(summaries: dict[str, dict]) -> dict[str, np.ndarray]:
    """Speaker -> median proxies over that speaker's neutral clips."""
    rows: dict[str, list] = {}
    for s in summaries.values():
        if s["emotion"] == "neutral":
            rows.setdefault(s["speaker"], []).append(s["au_p50"])
    return {speaker: np.median(np.array(v), axis=0) for speaker, v in rows.items()}


def clip_evidence(summary: dict, baseline: np.ndarray | None) -> tuple[AUEvidence, ...]:
    """Evidence for every AU a proxy measures (sides kept apart; 'both' for midline proxies)."""
    names = summary["au_names"]
    base = np.asarray(summary["au_p10"]) if baseline is None else np.asarray(baseline)
    mean, p10, p90 = (np.asarray(summary[k]) for k in ("au_mean", "au_p10", "au_p90"))
    out = []
    for i, name in enumerate(names):
        for au, side, direction, scale in PROXY_AUS.get(name, []):
            peak_delta = (p90[i] - base[i]) if direction > 0 else (base[i] - p10[i])
            mean_delta = direction * (mean[i] - base[i])
            peak = float(np.clip(peak_delta / scale * 5, 0, 5))
            avg = float(np.clip(mean_delta / scale * 5, 0, peak))
            out.append(AUEvidence(au=au, mean=round(avg, 2), peak=round(peak, 2), side=side))
    return tuple(out)
