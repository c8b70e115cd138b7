"""The evaluation table: per-mode means with their spread (std and a bootstrap 95 % interval over clips),
whether the modes' AU-control errors can be told apart, the printed table and the strip / AU plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

METRICS = ("psnr", "ssim", "lmd_full", "lmd_mouth", "sync_corr", "sync_corr_best", "sync_offset",
           "au_control_error", "au_gt_error", "au_f1", "au_intensity_error", "au_leakage", "au_f1_vs_reference", "au_leakage_vs_reference", "emotion_correct", "counterfactual_correct", "fer_accuracy",
           "identity_similarity",
           "identity_distance", "face_rate", "seam_ratio",
           "sync_c", "sync_d", "syncnet_offset", "lpips", "csim")  # the last five: `evaluation.standard`  # fmt: skip


def bootstrap_interval(values: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean over clips, resampling clips with replacement."""
    v = np.asarray(values, np.float64)
    means = v[np.random.default_rng(seed).integers(0, len(v), (draws, len(v)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def aggregate(rows: list[dict]) -> dict:
    """Mean, std, bootstrap 95 % interval and count (clips with a value) of every metric."""
    out: dict = {"clips": len(rows)}
    for m in METRICS:
        values = [r[m] for r in rows if r.get(m) is not None]
        out[m] = float(np.mean(values)) if values else None
        out[f"{m}_std"] = float(np.std(values)) if values else None
        out[f"{m}_ci95"] = list(bootstrap_interval(values)) if len(values) > 1 else None
        out[f"{m}_n"] = len(values)
    return out


def separable(
    results: dict[str, dict], metric: str = "au_control_error", per_clip: dict | None = None
) -> dict:
    """Which pairs of modes can be told apart by `metric`. `pairs`: their 95 % intervals over clips do not
    overlap. `paired` (with `per_clip`): every mode ran on the same clips and seeds, so the per-clip
    differences are compared; a pair is told apart when the bootstrap 95 % interval of the mean difference
    excludes 0 (much more sensitive than overlapping intervals when clips differ more than modes do) and the
    exact two-sided sign test over the clips that differ (`differ`, `favour` of them positive) gives
    `sign_p` < 0.05: a percentile bootstrap of a mean carried by a few clips excludes 0 whenever none of them
    goes the other way (4 of 84 clips, all one way: interval above 0, sign test p = 0.125)."""
    from scipy.stats import binomtest

    modes = [m for m, r in results.items() if r.get(f"{metric}_ci95")]
    pairs, paired = {}, {}
    for i, a in enumerate(modes):
        for b in modes[i + 1 :]:
            (lo_a, hi_a), (lo_b, hi_b) = results[a][f"{metric}_ci95"], results[b][f"{metric}_ci95"]
            pairs[f"{a} vs {b}"] = hi_a < lo_b or hi_b < lo_a
            if per_clip is not None:
                va = {r["key"]: r.get(metric) for r in per_clip[a]}
                diffs = [va[r["key"]] - r[metric] for r in per_clip[b]
                         if r.get(metric) is not None and va.get(r["key"]) is not None]  # fmt: skip
                if len(diffs) > 1:
                    lo, hi = bootstrap_interval(diffs)
                    differ, favour = sum(d != 0 for d in diffs), sum(d > 0 for d in diffs)
                    sign_p = float(binomtest(favour, differ).pvalue) if differ else 1.0
                    paired[f"{a} - {b}"] = {"mean": float(np.mean(diffs)), "ci95": [lo, hi], "n": len(diffs),
                                            "differ": differ, "favour": favour, "sign_p": sign_p,
                                            "told_apart": (lo > 0 or hi < 0) and sign_p < 0.05}  # fmt: skip
    told = any(pairs.values()) or any(p["told_apart"] for p in paired.values())
    return {"metric": metric, "pairs": pairs, "paired": paired, "any": told}


def mean_by(per_clip: dict[str, list[dict]], group) -> dict[str, list[dict]]:
    """Per mode, one row per group of clips (`group(key)` names it: e.g. `compound.category`, whose clips all
    carry one request), each metric the mean over the group's clips that have it; `key` is the group's name.
    Clips that share a request are not independent samples of the design: compare their groups
    (`separable(..., per_clip=mean_by(...))`)."""
    out = {}
    for mode, rows in per_clip.items():
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(group(r["key"]), []).append(r)
        out[mode] = [{"key": name, "clips": len(members),
                      **{m: float(np.mean(v)) for m in METRICS
                         if (v := [r[m] for r in members if r.get(m) is not None])}}
                     for name, members in groups.items()]  # fmt: skip
    return out


def print_table(results: dict[str, dict], information: dict[str, str] | None = None) -> None:
    """The table on stderr: one row per metric, one column per mode (mean ± std, n), then each mode's
    information (`requests.information`) in a line of its own."""
    import sys

    from rich.console import Console
    from rich.table import Table

    table = Table(title="evaluation: mean ± std over clips (n = clips with a value)")
    table.add_column("metric")
    for mode in results:
        table.add_column(mode, justify="right")
    shown = [m for m in (*METRICS, "fid", "fvd") if any(r.get(m) is not None for r in results.values())]
    for m in shown:
        cells = []
        for r in results.values():
            v, sd, n = r.get(m), r.get(f"{m}_std"), r.get(f"{m}_n")
            cell = "-" if v is None else f"{v:.3f}" + (f"±{sd:.3f}" if sd is not None else "")
            cells.append(cell + (f" ({n})" if n is not None and v is not None else ""))
        table.add_row(m, *cells)
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 240)  # logs: never truncated
    console.print(table)
    for mode, text in (information or {}).items():
        console.print(f"{mode}: {text}", highlight=False, soft_wrap=True)


def strip(videos: list[np.ndarray], columns: int = 8) -> np.ndarray:
    """One row per video (T, H, W, 3), `columns` frames evenly spaced over the shortest: an (rows*H, columns*W, 3)
    image."""
    t = min(len(v) for v in videos)
    picks = np.linspace(0, t - 1, min(columns, t)).round().astype(int)
    return np.concatenate([np.concatenate(list(v[picks]), axis=1) for v in videos], axis=0)


def au_strip(
    blocks: list[tuple[str, list[tuple[str, np.ndarray, str]]]], columns: int = 8, scale: int = 2
) -> np.ndarray:
    """What each row drew of a request: per clip a title, then one row per video (its `strip`, upscaled
    `scale` x, nearest) with a caption under it ("label-only: read AU12"). `blocks`: [(title, [(row name,
    (T, H, W, 3) uint8 video, caption)])]. Returns an (H', W', 3) uint8 image; white text on black."""
    band, images = 14, []
    for title, rows in blocks:
        width = columns * rows[0][1].shape[2] * scale
        images.append(_caption(title, width, band))
        for name, video, caption in rows:
            pic = strip([video], columns).repeat(scale, 0).repeat(scale, 1)
            images += [pic[:, :width], _caption(f"{name}: {caption}", width, band)]
    width = max(i.shape[1] for i in images)
    return np.concatenate([np.pad(i, ((0, 0), (0, width - i.shape[1]), (0, 0))) for i in images])


def _caption(text: str, width: int, height: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height))
    ImageDraw.Draw(image).text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(image)


def plots(
    out: Path, real: np.ndarray, generated: dict[str, np.ndarray], requested: dict, measured: dict, fps: int
):
    """`strip.png`: the real clip, then one row per mode (8 frames); `au_timeline.png`: requested vs measured."""
    from PIL import Image

    from media.au_measure import plot_aus

    Image.fromarray(strip([real, *generated.values()])).save(out / "strip.png")
    plot_aus(requested, measured, fps, out / "au_timeline.png")
