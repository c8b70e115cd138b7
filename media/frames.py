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


def sampled_bounds(
    affine: np.ndarray, size: int, width: int, height: int
) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the pixels a (size, size) crop with `affine` (crop pixels -> frame pixels)
    samples in a width x height frame (bilinear INTER_AREA: +-2 px), on even bounds (4:2:0 chroma) and
    clipped to the frame; None when that is over half the frame (then converting the whole frame is
    cheaper than copying a region)."""
    corners = np.array([[0.0, 0.0, 1.0], [size, 0.0, 1.0], [0.0, size, 1.0], [size, size, 1.0]])
    corners = corners @ np.asarray(affine, np.float64).T
    x0, y0 = (np.clip(np.floor(corners.min(0)).astype(int) - 2, 0, [width - 2, height - 2]) // 2) * 2
    x1, y1 = np.clip((np.ceil(corners.max(0)).astype(int) + 4) // 2 * 2, [x0 + 2, y0 + 2], [width, height])
    if (x1 - x0) * (y1 - y0) > width * height // 2:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def planes(frame: av.VideoFrame) -> list[np.ndarray]:
    """A yuv420p frame's Y, U, V planes as (rows, line size) uint8 views (no copy; the frame owns them)."""
    return [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.planes]


def color_of(frame: av.VideoFrame) -> tuple[int, int]:
    """A frame's (colorspace, color_range) tags, which swscale's YUV -> RGB matrix and range follow."""
    return frame.colorspace, frame.color_range


def i420_warp(
    y: np.ndarray, u: np.ndarray, v: np.ndarray, shifted: np.ndarray, size: int, color: tuple[int, int]
) -> np.ndarray:
    """The (size, size, 3) uint8 RGB crop of a yuv420p picture given as planes (Y (h, w), U and V
    (h / 2, w / 2)) with its source frame's `color_of` tags, `shifted` mapping crop pixels to this
    picture's: converted by swscale (`to_rgb`, as the decoded frame is: without the tags a BT.709 video
    was converted as BT.601, up to 33 levels off) and warped (INTER_AREA)."""
    import cv2

    h, w = y.shape
    i420 = np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(h * 3 // 2, w)
    picture = av.VideoFrame.from_ndarray(i420, format="yuv420p")
    picture.colorspace, picture.color_range = color
    rgb = to_rgb(picture)
    return cv2.warpAffine(rgb, shifted, (size, size), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP)


def shifted(affine: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """`affine` (crop -> frame pixels) for the frame's region starting at (x0, y0)."""
    m = np.array(affine, np.float64)
    m[:, 2] -= (x0, y0)
    return m


def croppable(frame: av.VideoFrame) -> bool:
    """Whether a frame's crop can be converted from a region of its planes: yuv420p, even sides, upright."""
    return (
        frame.format.name == "yuv420p"
        and not frame.rotation % 360
        and not frame.width % 2
        and not frame.height % 2
    )


def warp_crop(affine: np.ndarray, size: int) -> Callable[[av.VideoFrame], np.ndarray]:
    """A frame converter for `iter_frames` that returns only the (size, size, 3) uint8 RGB crop
    `cv2.warpAffine(rgb_upright(frame), affine, (size, size), flags=INTER_AREA | WARP_INVERSE_MAP)` takes,
    `affine` (2, 3) mapping crop pixels to the frame's: a yuv420p frame with even sides and no rotation has
    only the pixels the crop samples (`sampled_bounds`) converted to RGB, by the same converter (swscale; a
    face crop is a fraction of a 1080p frame, whose whole conversion was the largest cost of preprocess's
    second pass); other frames, and crops that sample most of the frame, are converted whole. The same
    pixels either way."""
    import cv2

    m = np.asarray(affine, np.float64)

    def convert(frame: av.VideoFrame) -> np.ndarray:
        bounds = sampled_bounds(m, size, frame.width, frame.height) if croppable(frame) else None
        if bounds is None:
            flags = cv2.INTER_AREA | cv2.WARP_INVERSE_MAP
            return cv2.warpAffine(rgb_upright(frame), m, (size, size), flags=flags)
        x0, y0, x1, y1 = bounds
        y, u, v = planes(frame)
        return i420_warp(
            y[y0:y1, x0:x1], u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2],
            shifted(m, x0, y0), size, color_of(frame),
        )  # fmt: skip

    return convert
