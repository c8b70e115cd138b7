"""Preprocess's crop pass without decoding a segment a second time (issue 39: at 1080p the second decode
was the stage's largest cost left).

The segment's steady crop (`face_crops.stable_crop`) is known only after every frame is tracked, so the
two-pass stage decoded the frames again to cut it. Instead pass 1 keeps, for every output frame, the
source-resolution yuv420p pixels around its face (the face box x the crop margin x `SLACK`, copied out of
the decoded frame), and the crops are cut from those: converted and warped exactly as `frames.warp_crop`
cuts them from the decoded frame, so the pixels are the same. When that cannot be done the caller decodes
again (`crops` returns None, with the reason in `reason`): the kept pixels would pass `KEEP_BYTES` (a minute
of 1080p with a 400 px face: about 2 GB), a frame is not yuv420p with even sides and upright, no face was tracked before a
frame, or the steady crop reaches outside a frame's kept region (the head moved more than the slack).
"""

from __future__ import annotations

from collections.abc import Iterator

import av
import numpy as np

from media.face_crops import CropBox
from media.frames import color_of, croppable, i420_warp, planes, sampled_bounds, shifted

KEEP_BYTES = 512 << 20  # per segment: a 400 px face at 1080p keeps 1.3 MB a frame (a 4 s clip 130 MB)
SLACK = 1.3  # the kept region's side over a frame's own crop side (margin x its face box)


class KeptRegions:
    """Per output frame, the yuv420p region around its face (`add`), then the segment's crops (`crops`)."""

    def __init__(self, margin: float, frames: int = 0, budget: int | None = None, slack: float = SLACK):
        """`frames`: how many the segment will have (0: unknown), so that one whose first frame's pixels
        times that pass the budget gives up at once instead of when the budget is reached."""
        self.margin, self.frames, self.slack = margin, frames, slack
        self.budget = KEEP_BYTES if budget is None else budget
        self.kept: list[tuple] = []  # per frame: x0, y0, Y, U, V, its colour tags (`frames.color_of`)
        self.shape: tuple[int, int] | None = None  # the frames' (width, height)
        self.reason = ""  # why the crops are not cut from kept pixels ("": they are)
        self.bytes = 0
        self._box = None  # the last face box, (x0, y0, x1, y1) image px
        self._frame = None  # the last frame kept (one shown twice is kept once)

    def add(self, frame: av.VideoFrame, box: tuple[float, float, float, float] | None) -> None:
        """Keep `frame`'s region around `box` (its face box in image px; None: no face, the last box)."""
        if self.reason:
            return
        if frame is self._frame:
            self.kept.append(self.kept[-1])
            return
        self._box = box if box is not None else self._box
        if not croppable(frame):
            return self._give_up(f"a {frame.format.name} frame ({frame.width}x{frame.height}, rotation "
                                 f"{frame.rotation}): only upright yuv420p frames with even sides are cut")  # fmt: skip
        if self.shape not in (None, (frame.width, frame.height)):
            return self._give_up(f"the frame size changed ({self.shape} -> {frame.width}x{frame.height})")
        if self._box is None:
            return self._give_up(f"frame {len(self.kept)} comes before any tracked face")
        self.shape = w, h = frame.width, frame.height
        x0, y0, x1, y1 = self._box
        around = CropBox((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * self.margin * self.slack)
        # what a crop that size around the face samples; most of the frame: all of it (as warp_crop converts)
        bx0, by0, bx1, by1 = sampled_bounds(around.affine(1), 1, w, h) or (0, 0, w, h)
        y, u, v = planes(frame)
        cut = (
            y[by0:by1, bx0:bx1].copy(),
            u[by0 // 2 : by1 // 2, bx0 // 2 : bx1 // 2].copy(),
            v[by0 // 2 : by1 // 2, bx0 // 2 : bx1 // 2].copy(),
        )
        self.bytes += sum(p.nbytes for p in cut)
        if not self.kept and self.bytes * self.frames > self.budget:
            return self._give_up(f"its {self.frames} frames would keep about {self.bytes * self.frames >> 20} MB "
                                 f"(more than {self.budget >> 20} MB)")  # fmt: skip
        if self.bytes > self.budget:
            return self._give_up(f"the kept regions passed {self.budget >> 20} MB at frame {len(self.kept)}")
        self.kept.append((int(bx0), int(by0), *cut, color_of(frame)))
        self._frame = frame

    def crops(self, affine: np.ndarray, size: int) -> Iterator[np.ndarray] | None:
        """The (size, size, 3) uint8 RGB crops, one per frame added, equal to `frames.warp_crop(affine,
        size)` of each decoded frame; each frame's pixels are released as its crop is made. None (and
        `reason` set) when some frame's kept region does not hold what the crop samples."""
        if self.reason or not self.kept:
            self.reason = self.reason or "no frame was kept"
            return None
        w, h = self.shape
        need = sampled_bounds(affine, size, w, h) or (0, 0, w, h)  # None: the whole frame is converted
        for i, (x0, y0, y, *_) in enumerate(self.kept):
            if not (
                x0 <= need[0] and y0 <= need[1] and need[2] <= x0 + y.shape[1] and need[3] <= y0 + y.shape[0]
            ):
                self._give_up(f"the steady crop reaches outside the region kept of frame {i}")
                return None
        return self._cut(np.asarray(affine, np.float64), size, need)

    def _cut(self, affine: np.ndarray, size: int, need: tuple[int, int, int, int]) -> Iterator[np.ndarray]:
        nx0, ny0, nx1, ny1 = need
        kept, self.kept = self.kept, []
        for i in range(len(kept)):
            x0, y0, y, u, v, color = kept[i]
            kept[i] = None  # released once no later frame repeats it
            a, b, c, d = nx0 - x0, ny0 - y0, nx1 - x0, ny1 - y0
            yield i420_warp(
                y[b:d, a:c], u[b // 2 : d // 2, a // 2 : c // 2], v[b // 2 : d // 2, a // 2 : c // 2],
                shifted(affine, nx0, ny0), size, color,
            )  # fmt: skip

    def _give_up(self, reason: str) -> None:
        self.reason, self.kept, self.bytes = reason, [], 0
