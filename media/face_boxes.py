"""Face boxes and the small-face search's windows (pure geometry; the detector runs in `media.face`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The detector squeezes its window into 128x128 and reliably sees a face a window/8 wide (measured: 1/9
# sometimes, 1/10 rarely). The small-face search tiles the image with windows halving from half its short
# side, down to SMALLEST_WINDOW or until a scale would take over MAX_TILES detector runs.
FACE_SHARE = 1 / 8
SMALLEST_WINDOW = 192
MAX_TILES = 300


@dataclass(frozen=True)
class FaceBox:
    """Detection in image pixels: box (x0, y0, x1, y1), score, 6 keypoints (subject's right eye first)."""

    box: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray  # (6, 2): right eye, left eye, nose tip, mouth, right ear, left ear


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def box_inside(a, b) -> float:
    """The share of box `a`'s area that lies inside box `b` (boxes x0, y0, x1, y1)."""
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    return inter / max(1e-9, _area(a))


def iou(a, b) -> float:
    return (inter := box_inside(a, b) * _area(a)) / max(1e-9, _area(a) + _area(b) - inter)


def merge_boxes(boxes: list[FaceBox]) -> list[FaceBox]:
    """Duplicates (IoU >= 0.3) merged, the higher score kept; largest first."""
    kept: list[FaceBox] = []
    for b in sorted(boxes, key=lambda b: b.score, reverse=True):
        if all(iou(b.box, k.box) < 0.3 for k in kept):
            kept.append(b)
    return sorted(kept, key=lambda b: _area(b.box), reverse=True)


def _offsets(length: int, window: int) -> np.ndarray:
    """Window starts along one side, overlapping by a third of a window (a face up to window/3 wide lies
    whole in one)."""
    return np.linspace(0, length - window, int(np.ceil((length - window) / (window * 2 / 3))) + 1)


def window_corners(h: int, w: int, window: int) -> list[tuple[int, int]]:
    """Top-left corners (x, y) of the square windows of side `window` that cover an h x w image."""
    return [(int(round(x)), int(round(y))) for y in _offsets(h, window) for x in _offsets(w, window)]


def small_face_windows(h: int, w: int) -> list[int]:
    """Window sides of `detect_all(small_faces=True)`'s search, coarse to fine: halving from half the short
    side, while at least SMALLEST_WINDOW and at most MAX_TILES windows per scale."""
    windows, window = [], min(h, w) // 2
    while window >= SMALLEST_WINDOW and len(window_corners(h, w, window)) <= MAX_TILES:
        windows.append(window)
        window //= 2
    return windows


def smallest_face(h: int, w: int, small_faces: bool = True) -> int:
    """About the narrowest face (detection box width, pixels) `detect_all` reliably finds in an h x w image."""
    side, long = min(h, w), max(h, w)
    window = side if long > 1.2 * side else long
    windows = small_face_windows(h, w) if small_faces else []
    return int(np.ceil(min([window, *windows]) * FACE_SHARE))
