"""Render expression frames by warping a portrait with displaced mesh vertices (piecewise affine).

The Delaunay triangulation of the neutral mesh (plus zero-displacement anchors on the frame border)
is built once per identity, with every output pixel's triangle and barycentric weights. A frame is then
a gather (the displacement field on the grid), a 3-step fixed-point inversion (backward map), one
`cv2.remap`, and the mouth interior painted where the inner lips part.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import Delaunay

from pipelines.demo_corpus.au_templates import contours

MOUTH = np.array([48, 18, 24], np.float32)
TEETH = np.array([205, 198, 188], np.float32)
FOLD_DARKNESS = 0.45  # a fold at depth 1 darkens the skin under its line by this fraction

# Skin folds FACS names as appearance cues, each drawn where the (displaced) mesh puts it:
# brow furrows (AU4: vertical lines between the brows), forehead lines (AU1/AU2), nasolabial folds
# (AU9/AU10/AU11/AU12: from the nose wing to beside the mouth corner).
FOLDS = ("furrow", "forehead", "nasolabial_r", "nasolabial_l")


def fold_curves(name: str, lm: np.ndarray, iod: float) -> list[np.ndarray]:
    """Polylines (pixel coordinates) of one fold for landmarks `lm` (468, 2) of a face of `iod` pixels."""
    eye_r, eye_l = lm[[33, 133]].mean(0), lm[[362, 263]].mean(0)
    ex = (eye_l - eye_r) / np.linalg.norm(eye_l - eye_r)
    ey = np.array([-ex[1], ex[0]])
    glabella = (lm[55] + lm[285]) / 2
    if name == "furrow":
        return [np.stack([glabella + s * 0.09 * iod * ex + t * iod * ey for t in (-0.12, 0.08)])
                for s in (-1, 1)]  # fmt: skip
    if name == "forehead":
        top = glabella - 0.32 * iod * ey
        return [np.stack([top + (k * 0.09 * iod) * ey + s * iod * ex for s in np.linspace(-0.45, 0.45, 7)])
                for k in (0, 1)]  # fmt: skip
    wing, corner, out = (lm[98], lm[61], -1) if name == "nasolabial_r" else (lm[327], lm[291], 1)
    start = wing + out * 0.06 * iod * ex
    end = corner + out * 0.10 * iod * ex + 0.08 * iod * ey
    bow = (start + end) / 2 + out * 0.06 * iod * ex
    t = np.linspace(0, 1, 8)[:, None]
    return [(1 - t) ** 2 * start + 2 * (1 - t) * t * bow + t**2 * end]


class FaceWarper:
    def __init__(self, image: np.ndarray, neutral: np.ndarray, anchors_per_side: int = 6):
        self.image = np.ascontiguousarray(image)
        h, w = image.shape[:2]
        self.neutral = np.asarray(neutral, np.float64)[:, :2]
        edge = np.linspace(0, 1, anchors_per_side + 1)[:-1]
        border = np.concatenate(
            [
                np.stack([edge * (w - 1), np.zeros_like(edge)], 1),
                np.stack([np.full_like(edge, w - 1), edge * (h - 1)], 1),
                np.stack([(1 - edge) * (w - 1), np.full_like(edge, h - 1)], 1),
                np.stack([np.zeros_like(edge), (1 - edge) * (h - 1)], 1),
            ]
        )
        points = np.concatenate([self.neutral, border])
        self.n_anchor = len(border)
        tri = Delaunay(points)
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
        grid = np.stack([gx.ravel(), gy.ravel()], 1)
        simplex = tri.find_simplex(grid)
        simplex[simplex < 0] = 0  # only exactly-on-corner round-off; anchors cover the frame
        t = tri.transform[simplex]
        b = np.einsum("nij,nj->ni", t[:, :2], grid - t[:, 2])
        self.bary = np.concatenate([b, 1 - b.sum(1, keepdims=True)], 1).astype(np.float32)
        self.verts = tri.simplices[simplex]
        self.grid = np.stack([gx, gy], -1).astype(np.float32)
        k = contours()
        self.mouth_ring = np.array(list(k["upper_inner"]) + list(k["lower_inner"])[::-1][1:-1])
        self.upper_inner = np.array(k["upper_inner"])

    def render(self, displacement: np.ndarray, folds: dict[str, float] | None = None) -> np.ndarray:
        """Frame for (468, 2) pixel displacements of the mesh vertices; `folds` (name -> depth 0..1, see
        `FOLDS`) darkens skin folds along the displaced mesh."""
        h, w = self.image.shape[:2]
        d = np.concatenate([np.asarray(displacement, np.float32), np.zeros((self.n_anchor, 2), np.float32)])
        field = (self.bary[:, :, None] * d[self.verts]).sum(1).reshape(h, w, 2)
        src = self.grid.copy()
        for _ in range(3):  # backward map: src + field(src) = grid
            step = cv2.remap(
                field, src[..., 0], src[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            src = self.grid - step
        frame = cv2.remap(
            self.image, src[..., 0], src[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
        ).astype(np.float32)
        lm = self.neutral + displacement
        self._paint_mouth(frame, lm)
        if folds:
            self._shade_folds(frame, lm, folds)
        return np.clip(frame, 0, 255).astype(np.uint8)

    def _shade_folds(self, frame: np.ndarray, lm: np.ndarray, folds: dict[str, float]) -> None:
        iod = float(np.linalg.norm(lm[263] - lm[33])) * 0.75
        shade = np.zeros(frame.shape[:2], np.float32)
        for name, depth in folds.items():
            if depth <= 0.02:
                continue
            layer = np.zeros_like(shade)
            for curve in fold_curves(name, lm, iod):
                cv2.polylines(layer, [np.round(curve * 4).astype(np.int32)], False, 1.0,
                              thickness=max(1, round(iod * 0.035)), lineType=cv2.LINE_AA, shift=2)  # fmt: skip
            shade = np.maximum(shade, layer * min(depth, 1.0))
        if shade.any():
            k = max(3, round(iod * 0.08) | 1)
            frame *= 1 - FOLD_DARKNESS * cv2.GaussianBlur(shade, (k, k), 0)[..., None]

    def _paint_mouth(self, frame: np.ndarray, lm: np.ndarray) -> None:
        if lm[14, 1] - lm[13, 1] < 0.5:  # lips closed (or pressed past each other): no mouth interior
            return
        ring = lm[self.mouth_ring]
        mask = np.zeros(frame.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(ring * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
        if not mask.any():
            return
        upper = lm[self.upper_inner]
        gap = float(np.linalg.norm(lm[14] - lm[13]))
        teeth = np.concatenate([upper, (upper + [0, 0.35 * gap])[::-1]])
        tmask = np.zeros_like(mask)
        cv2.fillPoly(tmask, [np.round(teeth * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
        a = cv2.GaussianBlur(mask.astype(np.float32) / 255, (3, 3), 0)[..., None]
        t = (np.minimum(mask, tmask).astype(np.float32) / 255)[..., None]
        inside = MOUTH * (1 - t) + TEETH * t
        frame[:] = frame * (1 - a) + inside * a
