"""The conditioning check's effects (`evaluation.conditioning`): what one swapped condition changed in a
generated video, measured against what it should change (see that module's docstring)."""

from __future__ import annotations

import numpy as np


def au_vector(video, baseline) -> dict[int, float]:
    """Mean calibrated AU intensity over the frames with a face, per measurable AU (speech AUs left out)."""
    from evaluation.measures import mean_intensities
    from evaluation.metrics import SPEECH_AUS
    from media.au_measure import measured_aus

    return {
        au: v for au, v in mean_intensities(measured_aus(video, baseline)).items() if au not in SPEECH_AUS
    }


def au_projection(new: dict, old: dict, target_new: dict, target_old: dict) -> float | None:
    """`projection` of the AU change new - old onto target_new - target_old, over the AUs all four carry."""
    aus = sorted(set(new) & set(old) & set(target_new) & set(target_old))
    if not aus:
        return None
    vec = lambda a, b: np.array([a[u] - b[u] for u in aus])  # noqa: E731
    return projection(vec(new, old), vec(target_new, target_old))


def projection(delta: np.ndarray, target: np.ndarray) -> float | None:
    """<delta, target> / |target|^2: 0 = no change, 1 = the whole way; None when the target is no change."""
    norm = float(target @ target)
    return float(delta @ target / norm) if norm > 1e-9 else None


def speech_effect(swapped: np.ndarray, own_video, partner, clip) -> dict:
    """`speech`: corr(change of the inner-lip gap, change of the speech envelope) over the frames with a
    face in both videos; the swapped video's lip-sync proxy with the new and with the old audio."""
    from evaluation.metrics import lipsync, mouth_opening
    from media.au_measure import track_video
    from media.video_io import frame_envelope

    video, t = track_video(swapped), len(swapped)
    both = video.found & own_video.found
    if both.sum() <= 2:
        return {}
    env_new, env_old = frame_envelope(partner.wav, t)[both], frame_envelope(clip.wav, t)[both]
    gap = mouth_opening(video.landmarks[both])
    return {
        # the lip-sync proxy at offset 0 (Pearson r, 0 when a side does not change) of the two changes
        "speech": lipsync(gap - mouth_opening(own_video.landmarks[both]), env_new - env_old, 0)["sync_corr"],
        "sync_new_audio": lipsync(gap, env_new)["sync_corr"],
        "sync_old_audio": lipsync(gap, env_old)["sync_corr"],
    }


def text_effect(swapped: np.ndarray, own: np.ndarray, own_aus: dict, partner, clip, size: int) -> dict:
    """`text`: the calibrated AU change the partner's CoT caused, projected onto the real clips' AU
    difference (partner - own, same speaker and reference); `text_inside_share`: the share of the pixel change
    inside the two CoTs' face regions, beside `text_region_share`, the regions' share of the frame."""
    from media.au_measure import token_masks, track_video
    from tbd_lightning.text import cot_token_regions

    base = clip.reference_video.baseline()
    effect = au_projection(au_vector(track_video(swapped), base), own_aus,
                           au_vector(partner.real_video, base), au_vector(clip.real_video, base))  # fmt: skip
    regions = tuple(dict.fromkeys(cot_token_regions(clip.cot, 99) + cot_token_regions(partner.cot, 99)))
    inside = token_masks(clip.reference_landmarks, size, regions, 1)[0] > 0.5
    change = np.abs(swapped.astype(np.float32) - own.astype(np.float32)).mean((0, 3))
    return {"text": effect, "text_inside_share": float(change[inside].sum() / max(change.sum(), 1e-9)),
            "text_region_share": float(inside.mean())}  # fmt: skip


def varied_aus(cots: dict[str, dict], emotions: dict[str, str]) -> dict[str, set[int]]:
    """Per clip key: the AUs of its CoT that another checked clip of the same emotion goes without, i.e. the
    sentences the checked clips show both with and without under one label (empty when none: one clip of the
    emotion, or a corpus whose AUs follow the label)."""
    aus = {k: {u["au"] for u in cot["action_units"]} for k, cot in cots.items()}
    out = {}
    for key, mine in aus.items():
        same = [aus[k] for k in aus if k != key and emotions[k] == emotions[key]]
        out[key] = {a for a in mine if any(a not in other for other in same)}
    return out


def local_edit(cot: dict, measurable, varied: set[int]) -> tuple[dict, int] | None:
    """(the CoT without its last AU sentence outside the mouth and jaw whose AU is `measurable` and `varied`
    (`varied_aus`: one the label is also seen without), that AU): the global sentence and every other AU as
    they were. The mouth and jaw are left alone (speech moves them); None when no such AU is there. Only a
    corpus made with `--variation true` has such AUs (AU4 in sad, AU5 in angry and surprised): a model can
    learn them from the local text alone, as it cannot an AU its label always carries."""
    units = cot["action_units"]
    for i in reversed(range(len(units))):
        u = units[i]
        if u["region"] not in ("mouth", "jaw") and u["au"] in measurable and u["au"] in varied:
            return {**cot, "action_units": units[:i] + units[i + 1 :]}, u["au"]
    return None


def local_effect(edited: np.ndarray, own_aus: dict, clip, au: int) -> dict:
    """`local`: how far the removed AU fell, -Δ[au] in calibrated intensity units (edited video minus own, same
    seed); `local_leak`: mean |Δ| over the measured AUs of the other regions (what one sentence must not move)."""
    from annotation.facs import load_kb
    from media.au_measure import track_video

    kb = load_kb()
    a = au_vector(track_video(edited), clip.reference_video.baseline())
    delta = {u: a[u] - own_aus[u] for u in set(a) & set(own_aus)}
    if au not in delta:
        return {"local_au": au}
    region = kb.action_units[au].region
    outside = [abs(v) for u, v in delta.items() if kb.action_units[u].region != region]
    return {"local": -delta[au], "local_leak": float(np.mean(outside)) if outside else 0.0, "local_au": au}


def reference_effect(judge, swapped: np.ndarray, own: np.ndarray, own_video, partner, clip) -> dict:
    """`reference`: the change of the video's appearance (mean frame, RGB) projected onto the new minus the
    old reference (0: the reference changed nothing, 1: the frames changed as much as the references differ);
    `reference_real`: the same projection of the partner's real clip minus the clip's own (the ceiling the
    real data reach, expression and speech differences included); `reference_identity`: the dlib identity
    descriptor's change projected onto the references' (None without a face). The pass criterion is the
    appearance: dlib cannot tell the demo corpus's identities apart (one photograph mirrored and stretched:
    descriptor distances 0.13-0.25, below its 0.6 same-person threshold), which made its projection noise."""
    from media.au_measure import track_video

    mean = lambda v: v.astype(np.float32).mean(0).ravel()  # noqa: E731
    target = mean(partner.reference[None]) - mean(clip.reference[None])
    d_new = judge.video_descriptor(swapped, track_video(swapped).landmarks)
    d_own = judge.video_descriptor(own, own_video.landmarks)
    refs = [judge.descriptor(c.reference, c.reference_video.landmarks[0]) for c in (partner, clip)]
    identity = None
    if d_new is not None and d_own is not None and all(r is not None for r in refs):
        identity = projection(d_new - d_own, refs[0] - refs[1])
    return {
        "reference": projection(mean(swapped) - mean(own), target),
        "reference_real": projection(mean(partner.frames) - mean(clip.frames), target),
        "reference_identity": identity,
    }
