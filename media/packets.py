"""Packets without the whole decode: the audio's span from its timestamps, and frames decoded packet by
packet so that damaged data loses its own packets (named, with their seconds) and decoding goes on."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import av

from tbd_core.errors import UserError


def probe_audio(path: str | Path) -> tuple[float, float]:
    """The first audio stream's [start, end) in the file's presentation time (s), from its timestamps
    without decoding (an encoder's priming before the stream's start time excluded). Raises UserError for
    an unreadable file, no audio stream or no packets."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise UserError(f"{path}: no audio stream")
            stream = c.streams.audio[0]
            tb, first, last = stream.time_base, math.inf, -math.inf
            for packet in c.demux(stream):
                if packet.size and packet.pts is not None:
                    first = min(first, packet.pts)
                    last = max(last, packet.pts + max(packet.duration or 0, 0))
            if last == -math.inf:
                raise UserError(f"{path}: audio has no packets")
            if stream.start_time is not None:
                first = max(first, stream.start_time)
    except (av.FFmpegError, OSError) as err:
        raise UserError(f"{path}: unreadable audio ({err})") from err
    return float(first * tb), float(last * tb)


def decoded(container, stream, damaged: list[tuple[float, float]]) -> Iterator:
    """The stream's frames decoded packet by packet: a packet the decoder refuses (damaged data) adds its
    (time, duration) in seconds of the file's clock to `damaged`, and decoding goes on from the next one."""
    tb, t = stream.time_base, -math.inf
    for packet in container.demux(stream):
        stamp = packet.pts if packet.pts is not None else packet.dts
        t = float(stamp * tb) if stamp is not None else t
        try:
            frames = packet.decode()
        except av.InvalidDataError:
            damaged.append((t, float((packet.duration or 0) * tb)))
            continue
        yield from frames


def damage_report(kind: str, damaged: list[tuple[float, float]]) -> str:
    """`damaged video: 21 packets at 2.60-3.44 s cannot be decoded` for (time, duration) pairs."""
    lo, hi = min(t for t, _ in damaged), max(t + d for t, d in damaged)
    return f"damaged {kind}: {len(damaged)} packets at {lo:.2f}-{hi:.2f} s cannot be decoded"
