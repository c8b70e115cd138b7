"""Evaluation metrics for generated talking heads, each a small function on arrays.

- `psnr`, `ssim`: frame fidelity (torchmetrics), uint8 videos (T, H, W, 3); PSNR is capped at 100 dB
  (identical videos) so results stay finite in JSON and MLflow.
- `lmd`: landmark distance in pixels after a per-frame Procrustes (similarity) alignment, full face and
  mouth (the KB's mouth region groups).
- `lipsync`: correlation of mouth opening with the speech envelope at the best frame offset (a proxy
  for SyncNet, which needs user-supplied weights).
- `au_control_error`: mean |measured - requested| AU intensity (FACS 0-5) over the measurable AUs
  (requested 0 when not requested) and frames with a face; `au_series_error` against true timelines.
- `fid`: only with a user-supplied network (e.g. a local InceptionV3 as TorchScript); nothing is downloaded;
  `FrechetStats` keeps a Fréchet fit as running sums (FID and FVD over any number of clips). The standard Sync-C/D, LPIPS, FVD and CSIM: `evaluation.standard`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

PSNR_CAP = 100.0
SPEECH_AUS = (25, 26, 27)  # moved by speech: scored by the lip-sync metric, not as emotion


def _float_video(video: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float() / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """The mean over frames of each frame's PSNR (as papers report it), each capped at `PSNR_CAP` dB."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    per_frame = np.where(mse == 0, PSNR_CAP, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)))
    return float(np.minimum(per_frame, PSNR_CAP).mean())


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure

    kernel = min(11, a.shape[1] - (1 - a.shape[1] % 2), a.shape[2] - (1 - a.shape[2] % 2))
    return float(
        structural_similarity_index_measure(
            _float_video(a), _float_video(b), data_range=1.0, kernel_size=kernel
        )
    )


@functools.cache
def mouth_indices() -> tuple[int, ...]:
    from annotation.facs import load_kb

    return tuple(sorted({i for group in load_kb().region_landmarks("mouth") for i in group}))


def _similarity_align(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`a` (N, 2) moved onto `b` (N, 2) by the least-squares similarity transform (Umeyama 1991)."""
    ma, mb = a.mean(0), b.mean(0)
    a0, b0 = a - ma, b - mb
    u, sig, vt = np.linalg.svd(b0.T @ a0)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, d]) @ vt
    scale = (sig * [1.0, d]).sum() / max((a0**2).sum(), 1e-12)
    return scale * a0 @ rot.T + mb


def lmd(a: np.ndarray, b: np.ndarray, size: int) -> dict[str, float]:
    """Mean Euclidean distance (pixels at `size`) of crop-normalised landmarks (T, 468, 2+), each frame of
    `a` first aligned to `b` by a similarity (Procrustes) transform, so a shifted or scaled face is not
    counted as a wrong expression."""
    a, b = np.asarray(a, np.float64)[..., :2], np.asarray(b, np.float64)[..., :2]
    aligned = np.stack([_similarity_align(x, y) for x, y in zip(a, b, strict=True)])
    d = np.linalg.norm((aligned - b) * size, axis=-1)
    return {"lmd_full": float(d.mean()), "lmd_mouth": float(d[:, list(mouth_indices())].mean())}


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap per frame (landmarks 13/14), in the landmarks' units."""
    lm = np.asarray(landmarks)
    return lm[:, 14, 1] - lm[:, 13, 1]


def lipsync(mouth: np.ndarray, envelope: np.ndarray, max_offset: int = 6) -> dict[str, float]:
    """Pearson correlation of mouth opening and speech envelope. The metric is `sync_corr`, at offset 0
    (the best of 13 offsets is biased upwards); beside it `sync_corr_best` and its `sync_offset`
    (> 0: the mouth lags the audio by that many frames)."""
    mouth, envelope = np.asarray(mouth, np.float64), np.asarray(envelope, np.float64)
    scores = {}
    for k in range(-max_offset, max_offset + 1):
        m, e = (mouth[k:], envelope[: len(envelope) - k]) if k >= 0 else (mouth[:k], envelope[-k:])
        n = min(len(m), len(e))
        if n > 2 and m[:n].std() > 0 and e[:n].std() > 0:
            scores[k] = float(np.corrcoef(m[:n], e[:n])[0, 1])
    if not scores:
        return {"sync_corr": 0.0, "sync_corr_best": 0.0, "sync_offset": 0}
    best = max(scores, key=scores.get)
    return {"sync_corr": scores.get(0, 0.0), "sync_corr_best": scores[best], "sync_offset": best}


def au_control_error(
    requested: dict[int, float], measured: dict[int, Sequence[float | None]]
) -> float | None:
    """Mean |measured - requested| over every measured AU and frame; an AU not requested should be 0."""
    errors = [
        abs(v - requested.get(au, 0.0)) for au, series in measured.items() for v in series if v is not None
    ]
    return float(np.mean(errors)) if errors else None


def au_series_error(
    truth: dict[int, Sequence[float]], measured: dict[int, Sequence[float | None]]
) -> float | None:
    """Mean |measured - true| per frame over the AUs both have (ground-truth AU timelines)."""
    errors = [abs(m - g) for au in truth.keys() & measured.keys()
              for m, g in zip(measured[au], truth[au], strict=False) if m is not None]  # fmt: skip
    return float(np.mean(errors)) if errors else None


def fid_features(frames: np.ndarray, feature_net: torch.nn.Module, input_size: int = 299) -> np.ndarray:
    """(N, D) features of frames (N, H, W, 3) uint8 from `feature_net` (float input in [0, 1], resized to
    `input_size`, as torchmetrics' FID feeds a custom network)."""
    x = torch.nn.functional.interpolate(_float_video(frames), size=(input_size, input_size), mode="bilinear")
    with torch.no_grad():
        return feature_net(x).reshape(len(frames), -1).double().numpy()


def fid(real: np.ndarray, fake: np.ndarray, feature_net: torch.nn.Module, input_size: int = 299) -> float:
    """Fréchet distance between frame sets (N, H, W, 3) uint8, features from `feature_net` (`fid_features`)."""
    a, b = FrechetStats(), FrechetStats()
    a.update(fid_features(real, feature_net, input_size))
    b.update(fid_features(fake, feature_net, input_size))
    return a.distance(b)


class FrechetStats:
    """A Gaussian fit of feature rows kept as running sums (count, sum, sum of outer products, float64), so
    FID / FVD over any number of clips hold D + D^2 numbers, not the features (issue 39)."""

    def __init__(self):
        self.n, self.sum, self.outer = 0, None, None

    def update(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        rows = np.asarray(rows, np.float64).reshape(len(rows), -1)
        if self.sum is None:
            self.sum, self.outer = np.zeros(rows.shape[1]), np.zeros((rows.shape[1],) * 2)
        self.n += len(rows)
        self.sum += rows.sum(0)
        self.outer += rows.T @ rows

    @property
    def dims(self) -> int:
        return 0 if self.sum is None else len(self.sum)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.sum / self.n
        return mean, (self.outer - self.n * np.outer(mean, mean)) / (self.n - 1)

    def distance(self, other: FrechetStats) -> float:
        """|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) (Heusel et al. 2017)."""
        from scipy import linalg

        (mu_a, cov_a), (mu_b, cov_b) = self.mean_cov(), other.mean_cov()
        root = linalg.sqrtm(cov_a @ cov_b)
        root = root.real if np.iscomplexobj(root) else root
        return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def frechet_note(samples: int, features: int) -> str | None:
    """What a Fréchet distance from `samples` rows of `features`-d features can be trusted for: with no more
    samples than dimensions the covariance is rank-deficient and the value is biased (and unstable)."""
    if samples > features:
        return None
    return (
        f"rank-deficient estimate: {samples} samples for {features}-d features (covariance rank <= "
        f"{samples - 1}); compare only runs with the same counts, not with published numbers"
    )


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between two Gaussian fits of feature rows (N, D)."""
    fits = FrechetStats(), FrechetStats()
    for fit, rows in zip(fits, (a, b), strict=True):
        fit.update(rows)
    return fits[0].distance(fits[1])
