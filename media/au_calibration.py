"""The calibrated AU measure: landmark proxies -> FACS intensity (0 absent .. 5 = E), fitted to ground truth.

Model, per output channel c (an AU, or an AU on one side: `AU12_R` is the subject's right):

    I_c(frame) = clip(w_c . (x - b), 0, 5)

x: the frame's features (`features`: the landmark proxies of `media.au_proxies`, in IOD units, and the
appearance of the face aligned by its eyes: HOG, as OpenFace's AU intensity models use, and its grey
levels at 20 x 20, as active appearance models use, which carry folds, shading and the mouth's interior;
the mesh alone barely follows brows and lids), b: the same person's neutral features, w_c: one ridge-regression
row fitted on frames whose AU intensities are known (renders from the demo
corpus, or a user's DISFA-style labelled frames: `pipelines.calibrate`, `tbd calibrate`). Linear, so a
clip's statistics can be taken before the baseline is known: `percentiles(w.x) - w.b` equals the
percentiles of `w.(x - b)`; preprocess stores the former, annotate subtracts the speaker's neutral median.

What the detector sees depends on how many pixels the face has, so a calibration holds one fit per
*view* (the inter-ocular distance, in source pixels, it was fitted at) and `view(iod_px)` picks the
nearest on a log scale. The subjects play three parts (`pipelines.calibrate`): the weights are fitted
on the *fit* identities; the ridge penalty and which channels are measurable are chosen on a *selection*
identity; every published error is on a *test* identity nothing was fitted or chosen on (the provenance
names all three). Each channel carries its quality on the test identity (Pearson r, mean absolute error,
the error of the uncalibrated proxies it replaces, the noise floor on frames where the truth is 0, and the
smallest true intensity whose median reading clears that floor) and, in `selection`, the r and smallest
detectable intensity on the selection identity that decided it: channels there below `MIN_R` or that
cannot tell `MAX_DETECTABLE` from 0 are *unmeasurable*: they are never reported as evidence or scored.
The shipped fit is `media/data/au_calibration.json`, with its provenance.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from media.au_proxies import PROXIES
from tbd_core.errors import UserError

SHIPPED = Path(__file__).with_name("data") / "au_calibration.json"
MIN_R = 0.6  # correlation with the truth on the selection identity below this: unmeasurable
MAX_DETECTABLE = 3.0  # a channel that cannot tell intensity C-D (3) from 0: unmeasurable
# `ridge()`'s default penalty on standardised features, for callers that fit without choosing one;
# `tbd calibrate` chooses each view's penalty on its selection identity (`ViewFit.penalty`).
RIDGE = 1000.0
SIDES = {"R": "right", "L": "left"}


APPEARANCE_SIZE = 64  # aligned face crop side (pixels) for the appearance features
APPEARANCE_CELL = 8  # HOG cell side (pixels): 8 x 8 cells x 9 orientations = 576 features
APPEARANCE_GREY = 20  # grey levels of the aligned crop, area-averaged to 20 x 20 = 400 features


def appearance(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Appearance features (T, 976) of the face aligned by its landmarks: a similarity transform puts the
    eye centres at fixed points of a 64 px grayscale crop (brows to chin), as OpenFace's AU intensity
    models do (Baltrusaitis et al. 2015); its HOG (576) and its grey levels in [0, 1] at 20 x 20 (400).
    Frames (T, H, W, 3) uint8 RGB; landmarks (T, 468, 2+) in their pixels."""
    import cv2

    from annotation.regions import eye_centres

    s = APPEARANCE_SIZE
    want_r, want_l = np.array([0.3 * s, 0.3 * s]), np.array([0.7 * s, 0.3 * s])
    crops, greys = [], []
    for frame, lm in zip(frames, np.asarray(landmarks, np.float64), strict=True):
        eye_r, eye_l = eye_centres(lm)
        src, dst = eye_l - eye_r, want_l - want_r
        scale = np.linalg.norm(dst) / np.linalg.norm(src)
        angle = np.arctan2(dst[1], dst[0]) - np.arctan2(src[1], src[0])
        c, si = scale * np.cos(angle), scale * np.sin(angle)
        m = np.array([[c, -si, 0.0], [si, c, 0.0]])
        m[:, 2] = want_r - m[:, :2] @ eye_r
        # Only the source pixels the crop samples are made grey (a 1080p frame's face is a fraction of it):
        # the output's corners mapped back, plus the interpolation's neighbours, clipped to the frame.
        corners = np.array([[0.0, 0.0], [s, 0.0], [0.0, s], [s, s]])
        inv = cv2.invertAffineTransform(m)
        src = corners @ inv[:, :2].T + inv[:, 2]
        h, w = frame.shape[:2]
        x0, y0 = np.clip(np.floor(src.min(0)).astype(int) - 2, 0, [w - 1, h - 1])
        x1, y1 = np.clip(np.ceil(src.max(0)).astype(int) + 3, [x0 + 1, y0 + 1], [w, h])
        gray = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
        m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
        crop = cv2.warpAffine(gray, m, (s, s), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        crops.append(crop)
        greys.append(
            cv2.resize(crop.astype(np.float32), (APPEARANCE_GREY,) * 2, interpolation=cv2.INTER_AREA).ravel()
            / 255.0
        )
    if not crops:
        return np.zeros((0, N_APPEARANCE), np.float32)
    return np.concatenate([hog(np.stack(crops)), np.stack(greys)], 1).astype(np.float32)


def hog(crops: np.ndarray) -> np.ndarray:
    """HOG (T, 576) of grey crops (T, 64, 64) uint8: `skimage.feature.hog(crop, orientations=9,
    pixels_per_cell=(8, 8), cells_per_block=(1, 1))` (L2-Hys) of each, the same numbers (to float rounding)
    computed for all frames and cells at once (skimage normalises its 64 blocks per crop in a Python loop:
    12 % of preprocess at 1080p). Gradients by central differences (0 on the border), each pixel's
    magnitude into the 20-degree bin of its unsigned orientation, averaged per 8 x 8 cell, then per cell
    L2-normalised, clipped at 0.2 and L2-normalised again (Dalal & Triggs 2005)."""
    x = np.asarray(crops, np.float64)
    t, size, c, bins = len(x), x.shape[1], APPEARANCE_CELL, 9
    n = size // c
    g_row, g_col = np.zeros_like(x), np.zeros_like(x)
    g_row[:, 1:-1] = x[:, 2:] - x[:, :-2]
    g_col[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    magnitude = np.hypot(g_col, g_row)[:, : n * c, : n * c]
    orientation = (np.rad2deg(np.arctan2(g_row, g_col)) % 180)[:, : n * c, : n * c]
    which = (orientation // (180.0 / bins)).astype(np.int64)  # 9 only for 180.0 itself: in no bin, as skimage
    cell = (np.arange(n * c) // c)[:, None] * n + (np.arange(n * c) // c)[None, :]  # (n*c, n*c) cell index
    index = ((np.arange(t)[:, None, None] * n * n + cell) * (bins + 1) + which).ravel()
    hist = np.bincount(index, magnitude.ravel(), t * n * n * (bins + 1)).reshape(t, n * n, bins + 1)
    hist = hist[..., :bins] / (c * c)
    eps2 = 1e-5**2
    out = np.minimum(hist / np.sqrt((hist**2).sum(-1, keepdims=True) + eps2), 0.2)
    return (out / np.sqrt((out**2).sum(-1, keepdims=True) + eps2)).reshape(t, -1)


N_HOG = (APPEARANCE_SIZE // APPEARANCE_CELL) ** 2 * 9
N_APPEARANCE = N_HOG + APPEARANCE_GREY**2
FEATURES: tuple[str, ...] = (
    *PROXIES,
    *(f"hog{i}" for i in range(N_HOG)),
    *(f"grey{i}" for i in range(APPEARANCE_GREY**2)),
)


def features(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(T, len(FEATURES)) float32: the proxies and appearance features of frames (T, H, W, 3) uint8 with
    their landmarks (T, 468, 2+) in the frames' pixels."""
    from media.au_proxies import au_proxies

    return np.concatenate([au_proxies(landmarks), appearance(frames, landmarks)], 1).astype(np.float32)


def channel_au(channel: str) -> tuple[int, str]:
    """`AU12_R` -> (12, 'right'); `AU4` -> (4, 'both')."""
    name, _, side = channel.partition("_")
    return int(name[2:]), SIDES.get(side, "both")


@dataclass
class ChannelFit:
    """One channel's weights over the features and its quality on the test identity; `measurable` was
    decided on the selection identity (`selection`), not on the test one."""

    weights: list[float]
    r: float  # Pearson correlation with the truth on the test identity's frames
    mae: float  # mean |calibrated - truth| on the test identity's frames (FACS units)
    mae_proxy: float | None  # the same for the uncalibrated proxy scale it replaces (None: it had none)
    floor: float  # 95th percentile of the reading on test frames whose truth is 0
    min_detectable: float  # the smallest true intensity whose median reading exceeds `floor` (inf: none)
    measurable: bool  # on the selection identity: r >= MIN_R and min_detectable <= MAX_DETECTABLE
    # The selection identity's r, mae and min_detectable (None: none) that decided `measurable`, and its floor
    # (the reading's 95th percentile where the truth is 0: `evaluation.au_request` reads an AU present above it).
    selection: dict = field(default_factory=dict)


@dataclass
class ViewFit:
    name: str
    iod_px: float  # median inter-ocular distance (source pixels) of the frames it was fitted on
    channels: dict[str, ChannelFit]
    frames: dict[str, int] = field(default_factory=dict)  # fit / select / test frame counts
    # The test identity's demo-corpus clips (`pipelines.calibrate.clip_quality`): MAE calibrated vs old scales.
    clips: dict = field(default_factory=dict)
    penalty: float | None = None  # the ridge penalty, chosen on the selection identity
    penalties: dict[str, float] = field(default_factory=dict)  # penalty tried -> selection MAE (all channels)

    def matrix(self, channels: list[str] | None = None) -> np.ndarray:
        """(C, K) weights of `channels` (default: all, in order)."""
        names = list(self.channels) if channels is None else channels
        return np.array([self.channels[c].weights for c in names], np.float64)

    def measurable(self) -> list[str]:
        return [c for c, f in self.channels.items() if f.measurable]


@dataclass
class Calibration:
    features: list[str]
    views: list[ViewFit]
    provenance: dict

    @functools.cached_property
    def id(self) -> str:
        """Content hash of the fit (weights, views, proxies): recorded wherever a measure is used. Computed
        once per object (a fit's JSON is ~0.5 MB: hashing it per clip was 29 % of preprocess at 1080p)."""
        body = json.dumps([self.features, [asdict(v) for v in self.views]], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:12]

    def view(self, iod_px: float | None) -> ViewFit:
        """The fit for a face of `iod_px` source pixels between the eyes (None: the largest view)."""
        if iod_px is None or not np.isfinite(iod_px) or iod_px <= 0:
            return max(self.views, key=lambda v: v.iod_px)
        return min(self.views, key=lambda v: abs(np.log(v.iod_px / iod_px)))

    def linear(self, feats: np.ndarray, iod_px: float | None) -> tuple[list[str], np.ndarray]:
        """Every channel of the view and its uncentred readings w.x, (T, C), for features (T, F)."""
        fit = self.view(iod_px)
        names = list(fit.channels)
        return names, np.asarray(feats, np.float64) @ fit.matrix(names).T

    def measure(self, feats: np.ndarray, baseline: np.ndarray, iod_px: float | None) -> dict[str, np.ndarray]:
        """Measurable channel -> per-frame intensity (T,) in 0..5, for features (T, F) against a neutral
        baseline (F,) of the same person, seen the same way."""
        rel = np.atleast_2d(np.asarray(feats, np.float64)) - np.asarray(baseline, np.float64)[None]
        names, values = self.linear(rel, iod_px)
        keep = set(self.view(iod_px).measurable())
        return {c: np.clip(values[:, i], 0, 5) for i, c in enumerate(names) if c in keep}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"id": self.id, "features": self.features, "provenance": self.provenance,
                "views": [asdict(v) for v in self.views]}  # fmt: skip
        path.write_text(json.dumps(body, separators=(",", ":"), default=_json_default) + "\n")

    def table(self) -> str:
        """The calibration table (Markdown): one row per channel and view."""
        p = self.provenance
        fit, select, test = ", ".join(p.get("fit", [])) or "?", p.get("select", "?"), p.get("test", "?")
        penalties = ", ".join(f"{v.name} {v.penalty:g}" for v in self.views if v.penalty is not None)
        lines = [
            f"Calibration `{self.id}` ({p.get('fitted_on', '?')}). Weights fitted on {fit}; ridge penalty "
            f"({penalties or '?'}) and measurable channels chosen on the selection identity {select}; every "
            f"error below (r, MAE, floor, smallest intensity, clips) is on the test identity {test}, on which "
            "nothing was fitted or chosen.",
            "",
            f"| channel | view (IOD px) | r | MAE | MAE of the old proxy scale | noise floor | smallest intensity told from 0 | r on {select} | measurable (on {select}) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for v in self.views:
            for c, f in v.channels.items():
                old = "-" if f.mae_proxy is None else f"{f.mae_proxy:.2f}"
                det = "-" if not np.isfinite(f.min_detectable) else f"{f.min_detectable:.1f}"
                sel = "-" if "r" not in f.selection else f"{f.selection['r']:.2f}"
                lines.append(f"| {c} | {v.name} ({v.iod_px:.0f}) | {f.r:.2f} | {f.mae:.2f} | {old} | {f.floor:.2f} | "
                             f"{det} | {sel} | {'yes' if f.measurable else 'no'} |")  # fmt: skip
        for v in self.views:
            if v.clips:
                c = v.clips
                lines.append(
                    f"\nTest identity's clips at {v.name} ({c['frames']} frames): MAE {c['mae']:.2f} vs the old scales' "
                    f"{c['mae_old']:.2f} (x{c['mae'] / c['mae_old']:.2f}) over the {c['channels_measured']} "
                    f"measurable channels both read; {c['mae_all']:.2f} vs {c['mae_old_all']:.2f} "
                    f"(x{c['mae_all'] / c['mae_old_all']:.2f}) over all {c['channels_all']} the old scales read."
                    + (f" A reading of 0 everywhere: {c['mae_zero']:.2f} and {c['mae_zero_all']:.2f}."
                       if "mae_zero" in c else "")
                )  # fmt: skip
        return "\n".join(lines)


def _json_default(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


def from_json(body: dict) -> Calibration:
    views = []
    for v in body["views"]:
        channels = {}
        for c, f in v["channels"].items():
            f = dict(f)
            f["min_detectable"] = float("inf") if f["min_detectable"] is None else f["min_detectable"]
            channels[c] = ChannelFit(**f)
        views.append(ViewFit(v["name"], v["iod_px"], channels, v.get("frames", {}), v.get("clips", {}),
                             v.get("penalty"), v.get("penalties", {})))  # fmt: skip
    cal = Calibration(list(body["features"]), views, body.get("provenance", {}))
    if list(cal.features) != list(FEATURES):
        raise UserError(
            f"the AU calibration's {len(cal.features)} features are not this version's {len(FEATURES)} "
            f"(proxies {', '.join(PROXIES)}, {N_HOG} HOG values, {APPEARANCE_GREY**2} grey levels): fit it again with `tbd calibrate`"
        )
    return cal


@functools.cache
def load(path: str | None = None) -> Calibration:
    """The calibration at `path` (default: `$TBD_AU_CALIBRATION`, else the shipped fit)."""
    import os

    where = Path(path or os.environ.get("TBD_AU_CALIBRATION") or SHIPPED)
    if not where.is_file():
        raise UserError(f"AU calibration {where} not found; fit one with `tbd calibrate --out {where}`")
    return from_json(json.loads(where.read_text()))


def ridge(x: np.ndarray, y: np.ndarray, penalty: float = RIDGE) -> np.ndarray:
    """(K, C) ridge weights without intercept (a neutral face reads 0) on standardised columns of x."""
    scale = x.std(0) + 1e-9
    z = x / scale
    w = np.linalg.solve(z.T @ z + penalty * np.eye(z.shape[1]), z.T @ y)
    return w / scale[:, None]


def quality(pred: np.ndarray, truth: np.ndarray, legacy: np.ndarray | None) -> ChannelFit:
    """Quality of one channel's readings `pred` against `truth` (both (N,), FACS 0..5) on frames it was
    not fitted on; `measurable` by this quality (the caller decides on which identity it counts)."""
    pred, truth = np.clip(pred, 0, 5), np.asarray(truth, np.float64)
    r = float(np.corrcoef(pred, truth)[0, 1]) if pred.std() > 0 and truth.std() > 0 else 0.0
    zero = truth < 0.25
    floor = float(np.percentile(pred[zero], 95)) if zero.any() else 0.0
    detectable = float("inf")
    for level in np.arange(0.5, 5.01, 0.5):
        band = np.abs(truth - level) <= 0.25
        if band.sum() >= 5 and np.median(pred[band]) > floor:
            detectable = float(level)
            break
    mae_proxy = None if legacy is None else round(float(np.abs(np.clip(legacy, 0, 5) - truth).mean()), 4)
    return ChannelFit(
        weights=[],
        r=round(r, 4),
        mae=round(float(np.abs(pred - truth).mean()), 4),
        mae_proxy=mae_proxy,
        floor=round(floor, 4),
        min_detectable=detectable,
        measurable=bool(r >= MIN_R and detectable <= MAX_DETECTABLE),
    )
