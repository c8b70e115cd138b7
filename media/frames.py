"""Decoded video frames to arrays: upright by their rotation metadata, converted to RGB through one
swscale converter per thread and process (`to_rgb`), or only the part a crop samples (`warp_crop`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import av
import numpy as np


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """A decoded frame as it is meant to be shown: `rotation` is PyAV's `VideoFrame.rotation` (degrees
    counter-clockwise that the display matrix turns the stored picture; phones record it)."""
    k = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k)) if k else frame


_local = threading.local()
# A forked child (a DataLoader worker) must neither use nor free its parent's converter: swscale's slice
# threads do not exist in the child, and converting or freeing waits for them forever. It makes its own and
# keeps the inherited one here, never freed.
_inherited: list = []


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as stored, (H, W, 3) uint8 RGB: `frame.to_ndarray(format="rgb24")`, the same pixels,
    through one converter per thread and process (`VideoReformatter`), which keeps its swscale context while
    frames keep their size. `to_ndarray` makes a new one for every frame: 2.8 ms per 128 px frame against
    0.03 ms (2026-12-07), most of preprocess's time on small clips and of the training loader's decode."""
    pid, reformatter = getattr(_local, "reformatter", (None, None))
    if pid != os.getpid():
        from av.video.reformatter import VideoReformatter

        _inherited.append(reformatter)
        reformatter = VideoReformatter()
        _local.reformatter = (os.getpid(), reformatter)
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


def rgb_upright(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB, upright (`upright`): the whole picture converted."""
    return upright(to_rgb(frame), frame.rotation)


def warp_crop(affine: np.ndarray, size: int) -> Callable[[av.VideoFrame], np.ndarray]:
    """A frame converter for `iter_frames` that returns only the (size, size, 3) uint8 RGB crop
    `cv2.warpAffine(rgb_upright(frame), affine, (size, size), flags=INTER_AREA | WARP_INVERSE_MAP)` takes,
    `affine` (2, 3) mapping crop pixels to the frame's: a yuv420p frame with even sides and no rotation has
    only the pixels the crop samples converted to RGB, by the same converter (swscale; a face crop is a
    fraction of a 1080p frame, whose whole conversion was the largest cost of preprocess's second pass);
    other frames, and crops that sample most of the frame, are converted whole. The same pixels either way."""
    import cv2

    m = np.asarray(affine, np.float64)
    flags = cv2.INTER_AREA | cv2.WARP_INVERSE_MAP
    corners = np.array([[0.0, 0.0, 1.0], [size, 0.0, 1.0], [0.0, size, 1.0], [size, size, 1.0]]) @ m.T

    def convert(frame: av.VideoFrame) -> np.ndarray:
        w, h = frame.width, frame.height
        if frame.format.name == "yuv420p" and not frame.rotation % 360 and not w % 2 and not h % 2:
            # the pixels the crop samples (bilinear: +-2), on even bounds (4:2:0 chroma), clipped to the frame
            x0, y0 = (np.clip(np.floor(corners.min(0)).astype(int) - 2, 0, [w - 2, h - 2]) // 2) * 2
            x1, y1 = np.clip((np.ceil(corners.max(0)).astype(int) + 4) // 2 * 2, [x0 + 2, y0 + 2], [w, h])
            if (x1 - x0) * (y1 - y0) <= w * h // 2:  # else most of the frame: converted whole (no copies)
                return _region(frame, x0, y0, x1, y1)
        return cv2.warpAffine(rgb_upright(frame), m, (size, size), flags=flags)

    def _region(frame: av.VideoFrame, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.planes]
        y = planes[0][y0:y1, x0:x1]
        u, v = (p[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] for p in planes[1:])
        i420 = np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape((y1 - y0) * 3 // 2, x1 - x0)
        rgb = to_rgb(av.VideoFrame.from_ndarray(i420, format="yuv420p"))  # swscale, as the whole frame
        shifted = m.copy()
        shifted[:, 2] -= (x0, y0)
        return cv2.warpAffine(rgb, shifted, (size, size), flags=flags)

    return convert
