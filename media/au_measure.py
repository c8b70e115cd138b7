"""AU intensity measured on video (generated or real) from landmark proxies, against what a CoT requested,
and the requested-vs-measured plot. Shared by `tbd generate` and `tbd evaluate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def requested_aus(cot: dict) -> dict[int, int]:
    """AU -> the FACS value (1..5) a CoT asks for (the stronger side when an AU is listed twice)."""
    from annotation.facs import intensity_value

    out: dict[int, int] = {}
    for u in cot["action_units"]:
        out[u["au"]] = max(out.get(u["au"], 0), intensity_value(u["intensity"]))
    return out


def token_masks(
    landmarks: np.ndarray, size: int, token_regions: tuple[str, ...], slots: int, extra: tuple[str, ...] = ()
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """For crop-normalised landmarks (468, 3) at `size` pixels: the union (S, S) of `token_regions`, one
    mask per local token (slots, S, S; token i inside `token_regions[i]`, zeros in unused slots), and the
    `extra` regions' masks (e.g. the mouth for the loss weight), all rasterised in one pass."""
    from media.face import region_masks

    wanted = tuple(dict.fromkeys((*token_regions, *extra)))
    masks = region_masks(landmarks[:, :2] * size, size, size, wanted) if wanted else {}
    zero = np.zeros((size, size), np.float32)
    union = np.max(np.stack([masks[r] for r in token_regions]), 0) if token_regions else zero
    per_token = np.zeros((slots, size, size), np.float32)
    for i, region in enumerate(token_regions[:slots]):
        per_token[i] = masks[region]
    return union, per_token, {r: masks[r] for r in extra}


def track_generated(frames: np.ndarray, size: int = 256) -> np.ndarray:
    """Crop-normalised landmarks (T, 468, 3) of generated frames (upscaled to `size` for the face
    model); NaN rows where no face is found."""
    import cv2

    from media.face import FaceAnalyzer

    with FaceAnalyzer() as fa:
        results = fa.track([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in frames])
    nan = np.full((468, 3), np.nan, np.float32)
    return np.stack([r.mesh.landmarks / size if r.mesh is not None else nan for r in results]).astype(
        np.float32
    )


def measured_aus(landmarks: np.ndarray, baseline_landmarks: np.ndarray) -> dict[int, list[float | None]]:
    """Per-frame FACS 0-5 estimates from the landmark proxies against a neutral baseline (the portrait);
    None where a frame has no face."""
    from media.au_evidence import PROXY_AUS
    from media.au_proxies import PROXIES, au_proxies

    base = au_proxies(baseline_landmarks[None])[0]
    aus = sorted({a for entries in PROXY_AUS.values() for a, *_ in entries})
    out: dict[int, list] = {au: [] for au in aus}
    for lm in landmarks:
        per_au: dict[int, float] = {}
        values = None if np.isnan(lm).any() else au_proxies(lm[None])[0]
        for i, name in enumerate(PROXIES):
            for au, _side, direction, scale in PROXY_AUS.get(name, []):
                if values is not None:
                    v = float(np.clip(direction * (values[i] - base[i]) / scale * 5, 0, 5))
                    per_au[au] = max(per_au.get(au, 0.0), v)
        for au in aus:
            out[au].append(per_au.get(au) if values is not None else None)
    return out


def plot_aus(requested: dict[int, float], measured: dict[int, list], fps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unmeasured = sorted(set(requested) - set(measured))  # no landmark proxy measures these
    aus = sorted(set(requested) | set(measured)) if unmeasured else sorted(set(requested) & set(measured))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, au in enumerate(aus):
        color = f"C{i % 10}"
        series = measured.get(au, [])
        if series:
            t = np.arange(len(series)) / fps
            ax.plot(t, [np.nan if v is None else v for v in series], color=color, label=f"AU{au} measured")
        if au in requested:
            ax.axhline(requested[au], color=color, linestyle="--", linewidth=1, label=f"AU{au} requested")
    n = max((len(v) for v in measured.values()), default=0)
    notes = []
    if not any(v is not None for series in measured.values() for v in series):
        notes.append("no face found in the generated frames")
    if unmeasured:
        notes.append(", ".join(f"AU{a}" for a in unmeasured) + ": requested, no landmark proxy measures it")
    for k, note in enumerate(notes):
        ax.text(0.5, 0.55 - 0.1 * k, note, transform=ax.transAxes, ha="center")
    ax.set(xlabel="seconds", ylabel="FACS intensity (0-5)", ylim=(0, 5.2), xlim=(0, max(n - 1, 1) / fps),
           title="requested vs measured AUs")  # fmt: skip
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
