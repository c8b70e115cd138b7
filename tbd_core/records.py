"""Typed records between the pipeline stages (see ARCHITECTURE.md "Records")."""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

Dataset = Literal["mead", "hdtf"]
Split = Literal["train", "val", "test"]
Stage = Literal["ingest", "decode", "audio", "face", "encode", "annotate"]
_KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def clip_key(dataset: str, speaker: str, emotion: str, level: int, clip: str) -> str:
    """`{dataset}_{speaker}_{emotion}_{level}_{clip}` with no dots (WebDataset splits names at dots). A part
    with other characters (dots, spaces, non-ASCII letters) keeps a trace of its original spelling, so
    `Zoë` and `Zoé` stay two keys: `Zo-1a2b`, `Zo-3c4d` (4 hex digits of the name's sha1)."""

    def safe(part: str) -> str:
        clean = _KEY_SAFE.sub("-", part)
        if clean == part:
            return part
        return f"{clean}-{hashlib.sha1(part.encode()).hexdigest()[:4]}"

    return "_".join(safe(p) for p in (dataset, speaker, emotion, str(level), clip))


class ClipRef(BaseModel):
    """One input clip as ingest found it."""

    model_config = ConfigDict(frozen=True)
    key: str
    dataset: Dataset
    speaker: str
    emotion: str  # MEAD's eight or "unknown"
    level: int  # 1..3; 0 when unknown (HDTF)
    clip: str
    video: str
    audio: str | None  # None: the audio is muxed in the video
    split: Split
    # The span of the video this sample covers, seconds from its first frame (a segment of a long video;
    # ingest's refs cover the whole video: 0, None).
    start: float = 0.0
    end: float | None = None


class Reject(BaseModel):
    """A reject-ledger row: the clip, the stage that refused it, and why."""

    model_config = ConfigDict(frozen=True)
    key: str
    stage: Stage
    reason: str
    source: str = ""  # the input file (or annotation version) concerned
    # The span of the source refused, seconds from its first frame (a segment of a video); None: all of it.
    start: float | None = None
    end: float | None = None


class ShardRecord(BaseModel):
    """One finished shard: its keys in order and the sha256 of its tar."""

    name: str
    keys: list[str]
    sha256: str
    bytes: int
    rejects: list[Reject] = []
