"""Long videos in windows of the training length, and the seam they may leave.

With `motion` frames (> 0) every window after the first starts with the last `motion` frames of the one
before (motion frames: imposed at each step's noise level, or, for a model trained with clean leading
frames, `TBDModule(motion_frames=)`, given clean as trained: `ProgressiveSampler.sample(known=, known_clean=)`),
so consecutive windows share frames and are sampled one after another. Without, windows are independent
and sampled as one batch.

The seam ratio measures what a viewer sees at window boundaries: the mean frame-to-frame change across
a boundary divided by the mean change between frames inside windows (1 = no seam).
"""

from __future__ import annotations

import numpy as np


def window_starts(n_frames: int, window: int, motion: int = 0) -> list[int]:
    """First frame of each window covering `n_frames` (windows overlap by `motion` frames)."""
    if not 0 <= motion < window:
        raise ValueError(f"motion frames ({motion}) must be >= 0 and fewer than the window ({window})")
    stride, starts = window - motion, [0]
    while starts[-1] + window < n_frames:
        starts.append(starts[-1] + stride)
    return starts


def boundaries(n_frames: int, window: int, motion: int = 0) -> list[int]:
    """Frames i whose change to frame i + 1 crosses from one window's frames to the next one's new frames."""
    starts = window_starts(n_frames, window, motion)
    return [s + motion - 1 for s in starts[1:] if s + motion < n_frames]


def seam_ratio(frames: np.ndarray, window: int, motion: int = 0, chunk: int = 64) -> float | None:
    """Mean |frame i+1 − frame i| at window boundaries over the mean inside windows; None for one window.
    The changes are taken `chunk` frames at a time: the memory beside `frames` does not grow with them."""
    if len(frames) < 3:
        return None
    change = np.empty(len(frames) - 1, np.float32)
    for a in range(0, len(change), chunk):
        x = np.asarray(frames[a : a + chunk + 1], np.float32)
        change[a : a + len(x) - 1] = np.abs(np.diff(x, axis=0)).reshape(len(x) - 1, -1).mean(1)
    return seam_ratio_of_changes(change, window, motion)


def seam_ratio_of_changes(change: np.ndarray, window: int, motion: int = 0) -> float | None:
    """`seam_ratio` from the (T - 1,) mean frame-to-frame changes (a video streamed frame by frame)."""
    if len(change) < 2:
        return None
    at = np.zeros(len(change), bool)
    at[boundaries(len(change) + 1, window, motion)] = True
    if not at.any() or at.all():
        return None
    inside = float(change[~at].mean())
    return float(change[at].mean() / inside) if inside > 0 else None
