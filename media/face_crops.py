"""Clip-level face crops (steady or following the head) and FACS region masks, from `media.face`'s meshes."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from annotation.regions import eye_centres, region_landmarks
from media.face import FaceMesh, crop_transform


# -- clip-level crop --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropBox:
    """A square crop (centre x, centre y, side) in image pixels."""

    cx: float
    cy: float
    size: float

    def affine(self, out: int) -> np.ndarray:
        return crop_transform(np.array([self.cx, self.cy]), self.size, 0.0, out)


def smooth_series(values: np.ndarray, window: int = 5) -> np.ndarray:
    """Centred moving average along axis 0, edges padded by repetition."""
    values = np.asarray(values, np.float64)
    if window <= 1 or len(values) < 2:
        return values
    pad = window // 2
    padded = np.concatenate([values[:1].repeat(pad, 0), values, values[-1:].repeat(pad, 0)])
    kernel = np.ones(window) / window
    return np.stack([np.convolve(padded[:, j], kernel, mode="valid") for j in range(values.shape[1])], 1)


def stable_crop(meshes: list[FaceMesh | None], margin: float = 1.8) -> CropBox | None:
    """One steady square crop for a whole clip: median landmark-box centre, 90th-percentile size x margin."""
    boxes = np.array([m.box for m in meshes if m is not None])
    if len(boxes) == 0:
        return None
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    sides = (boxes[:, 2:] - boxes[:, :2]).max(1)
    cx, cy = np.median(centres, axis=0)
    return CropBox(float(cx), float(cy), float(np.percentile(sides, 90) * margin))


def smoothed_crops(
    meshes: list[FaceMesh | None], margin: float = 1.8, window: int = 9
) -> list[CropBox] | None:
    """A per-frame crop that follows the head, smoothed over `window` frames; gaps take the last box."""
    if not any(m is not None for m in meshes):
        return None
    rows, last = [], None
    for m in meshes:
        if m is not None:
            x0, y0, x1, y1 = m.box
            last = [(x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * margin]
        rows.append(last)
    first = next(r for r in rows if r is not None)
    rows = [r if r is not None else first for r in rows]
    return [CropBox(*map(float, r)) for r in smooth_series(np.array(rows), window)]


def crop_landmarks(landmarks: np.ndarray, crop, size: int) -> np.ndarray:
    """(..., 468, 3) image-pixel landmarks -> normalised to the crop (x, y in [0, 1]; z in the same scale)."""
    to_crop = cv2.invertAffineTransform(crop.affine(size))
    xy = landmarks[..., :2] @ to_crop[:, :2].T + to_crop[:, 2]
    scale = np.linalg.norm(to_crop[0, :2])
    return np.concatenate([xy / size, landmarks[..., 2:] * scale / size], -1).astype(np.float32)


def crop_to(frames: np.ndarray, landmarks: np.ndarray, crop, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) frames and (T, 468, 3) image-pixel landmarks -> (T, size, size, 3) crops and landmarks
    normalised to the crop (x, y in [0, 1]; z in the same scale)."""
    flags, m = cv2.INTER_AREA | cv2.WARP_INVERSE_MAP, crop.affine(size)
    crops = [cv2.warpAffine(f, m, (size, size), flags=flags) for f in frames]
    return np.stack(crops), crop_landmarks(landmarks, crop, size)


# -- region masks -----------------------------------------------------------------------------------
def region_masks(
    landmarks: np.ndarray,
    height: int,
    width: int,
    regions: tuple[str, ...] | None = None,
    dilate: float = 0.08,
    soften: float = 0.06,
) -> dict[str, np.ndarray]:
    """Soft masks in [0, 1] (H x W float32) per FACS region, rasterised from the convex hull of each of
    the region's landmark groups, grown by `dilate` and blurred by `soften` (both x inter-ocular distance)."""
    groups = region_landmarks()
    xy = np.asarray(landmarks, np.float32)[:, :2]
    right, left = eye_centres(xy)
    iod = float(np.linalg.norm(left - right)) or 1.0
    grow = max(1, int(round(dilate * iod)))
    sigma = max(0.5, soften * iod)
    out = {}
    for name in regions or tuple(groups):
        mask = np.zeros((height, width), np.uint8)
        for group in groups[name]:
            hull = cv2.convexHull(np.round(xy[list(group)]).astype(np.int32))
            cv2.fillConvexPoly(mask, hull, 255)
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
        out[name] = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), sigma)
    return out
