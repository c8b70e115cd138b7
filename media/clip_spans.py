"""The spans of a clip (seconds, the video's clock): where its video and audio overlap, the segments of
that span, the unpaired seconds around it, and the check that samples and rejects cover the input."""

from __future__ import annotations

import math
import re

from tbd_core.records import Reject

PART = re.compile(r"_(seg\d{3,}|av-head|av-tail)$")  # the key suffix of a segment or an unpaired span


def segment_spans(duration: float, length: float) -> list[tuple[float, float]]:
    """Consecutive [start, end) spans (s) of at most `length` that cover `duration` exactly."""
    n = max(1, math.ceil(duration / length - 1e-6))
    return [(i * length, min((i + 1) * length, duration)) for i in range(n)]


def pair_spans(
    duration: float, a0: float, a1: float, fps: int, overhang: float
) -> tuple[tuple[float, float], list[tuple[str, float, float, str]]]:
    """Where a video [0, duration) and its audio [a0, a1) overlap, in whole output frames at `fps`, and the
    unpaired spans around it as (key suffix, start, end, reason). Video without audio for under one output
    frame stays in (the last frame's rounding, as for any length); audio without video for up to
    `overhang` s is not ledgered. No overlap: an empty span (c0 >= c1)."""
    eps = 1e-3
    c0 = math.ceil(a0 * fps - eps) / fps if a0 * fps >= 1 - eps else 0.0
    c1 = c0 + math.floor((a1 - c0) * fps + eps) / fps if (duration - a1) * fps >= 1 - eps else duration
    unpaired = []
    if c0 > 0:
        why = f"audio starts at {a0:.2f} s of a {duration:.2f} s video: 0.00-{c0:.2f} s without speech"
        unpaired.append(("av-head", 0.0, c0, why))
    elif a0 < -overhang:
        why = f"audio starts {-a0:.2f} s before the video: {a0:.2f}-0.00 s of audio without picture"
        unpaired.append(("av-head", a0, 0.0, why))
    if c1 < duration:
        why = (
            f"audio ends at {a1:.2f} s of a {duration:.2f} s video: {c1:.2f}-{duration:.2f} s without speech"
        )
        unpaired.append(("av-tail", c1, duration, why))
    elif a1 > duration + overhang:
        why = (f"audio runs to {a1:.2f} s, past the {duration:.2f} s video: {duration:.2f}-{a1:.2f} s of "
               f"audio without picture")  # fmt: skip
        unpaired.append(("av-tail", duration, a1, why))
    return (c0, c1), unpaired


def span_of(result) -> tuple[float, float]:
    """A reject's span, or a sample's (`media.clip_media.MediaSample`, from its meta)."""
    return (
        (result.start, result.end)
        if isinstance(result, Reject)
        else (result.meta["start"], result.meta["end"])
    )


def check_accounted(results: list, lo: float, hi: float) -> None:
    """Samples and rejects cover the input [lo, hi) end to end: every second is in one of them."""
    edges = [lo, *(t for r in results for t in span_of(r)), hi]  # lo, s0, e0, s1, e1, ..., hi
    assert all(abs(a - b) < 1e-6 for a, b in zip(edges[::2], edges[1::2], strict=True)), (lo, edges, hi)
