"""Typed records between the pipeline stages (see ARCHITECTURE.md "Records")."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

Dataset = Literal["mead", "hdtf"]
Split = Literal["train", "val", "test"]
Stage = Literal["ingest", "decode", "audio", "face", "encode", "annotate"]
_KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def clip_key(dataset: str, speaker: str, emotion: str, level: int, clip: str) -> str:
    """`{dataset}_{speaker}_{emotion}_{level}_{clip}` with no dots (WebDataset splits names at dots)."""
    parts = [dataset, speaker, emotion, str(level), clip]
    return "_".join(_KEY_SAFE.sub("-", p) for p in parts)


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


class Reject(BaseModel):
    """A reject-ledger row: the clip, the stage that refused it, and why."""

    model_config = ConfigDict(frozen=True)
    key: str
    stage: Stage
    reason: str
    source: str = ""  # the input file (or annotation version) concerned


class ShardRecord(BaseModel):
    """One finished shard: its keys in order and the sha256 of its tar."""

    name: str
    keys: list[str]
    sha256: str
    bytes: int
    rejects: list[Reject] = []
