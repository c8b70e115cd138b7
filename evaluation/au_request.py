"""AU F1: a video's measured action units against the AU specification it was drawn from (issue 38).

A clip's specification is {AU: requested apex intensity, FACS 0-5} (the demo corpus's `aus` per clip, a
compound expression's AU set, or what Think wrote for a prompt). It is scored over the AUs the calibrated
measure can see at the video's face size (`media.au_calibration`: channels measurable at that view, chosen on
the selection identity), speech AUs (25-27) left out:
- a requested AU counts when its intensity reaches the level the measure can tell from 0 at that view (the
  channel's `min_detectable` on the selection identity); a fainter request is left out of the clip's score
  (neither a hit nor a miss: the measure could not say);
- an AU is measured present when its clip level (the `QUANTILE` of its per-frame reading over the frames
  with a face: an expression may release before the end) reaches `PRESENT`.
`QUANTILE` and `PRESENT` were chosen on the demo corpus's training identities (the fit / select people) and
are validated on the held-out person by `tbd check-measures`: real clips (the ceiling) against the still
(the floor) and against the label's prototype (what a label alone could request).
"""

from __future__ import annotations

import numpy as np

from evaluation.metrics import SPEECH_AUS

QUANTILE = 0.75  # the clip level: this quantile of an AU's per-frame reading (frames with a face)
PRESENT = 0.75  # FACS units: a clip level at or above this reads as the AU present


def channels_au(values: dict[str, float]) -> dict[int, float]:
    """{renderer or calibration channel ("AU12_L", "AU4"): value} -> {AU: the larger side's value}."""
    out: dict[int, float] = {}
    for channel, v in values.items():
        au = int(channel[2:].split("_")[0])
        out[au] = max(out.get(au, 0.0), float(v))
    return out


def detectable(iod_px: float | None) -> dict[int, float]:
    """{AU: the smallest intensity the measure tells from 0} over the AUs measurable at this face size
    (`iod_px` source pixels between the eyes), speech AUs left out; an AU with sides takes its better side."""
    from media.au_calibration import load

    view = load().view(iod_px)
    out: dict[int, float] = {}
    for channel in view.measurable():
        au = int(channel[2:].split("_")[0])
        least = view.channels[channel].selection.get("min_detectable")
        if au not in SPEECH_AUS and least is not None:
            out[au] = min(out.get(au, np.inf), float(least))
    return out


def clip_levels(measured: dict[int, list], quantile: float = QUANTILE) -> dict[int, float]:
    """{AU: the `quantile` of its per-frame reading over the frames with a face} (`measured_aus` output)."""
    out = {}
    for au, series in measured.items():
        values = [v for v in series if v is not None]
        if values:
            out[au] = float(np.quantile(values, quantile))
    return out


def f1(requested: set[int], present: set[int]) -> float:
    """2 TP / (2 TP + FP + FN); 1.0 when nothing was requested and nothing is present."""
    tp, wrong = len(requested & present), len(requested ^ present)
    return 1.0 if tp + wrong == 0 else 2 * tp / (2 * tp + wrong)


def score_request(
    request: dict[int, float],
    levels: dict[int, float],
    least: dict[int, float],
    present: float = PRESENT,
) -> dict:
    """A clip's AU F1 and its parts. `request` {AU: intensity}, `levels` (`clip_levels`) and `least`
    (`detectable`) as above. Returns au_f1, au_precision / au_recall (None when undefined), au_intensity_error
    (mean |level - requested| over the requested AUs scored), au_leakage (how many AUs present were not
    requested), and the sets scored (`au_requested`, `au_present`, `au_unscored`: requested too faintly)."""
    scored = {au for au in least if au in levels}
    wanted = {au for au, v in request.items() if au in scored and v >= least[au]}
    unscored = {au for au, v in request.items() if au in scored and v < least[au]}
    seen = {au for au in scored - unscored if levels[au] >= present}
    tp = len(wanted & seen)
    errors = [abs(levels[au] - request[au]) for au in wanted]
    return {
        "au_f1": f1(wanted, seen),
        "au_precision": tp / len(seen) if seen else None,
        "au_recall": tp / len(wanted) if wanted else None,
        "au_intensity_error": float(np.mean(errors)) if errors else None,
        "au_leakage": len(seen - wanted),
        "au_requested": sorted(wanted),
        "au_present": sorted(seen),
        "au_unscored": sorted(unscored),
    }
