"""Ingest: discover MEAD / HDTF clips, parse speaker/emotion/level, split by identity, write the manifest.

Layouts (the demo corpus uses the same):
- MEAD: `{speaker}/video/front/{emotion}/level_{n}/{clip}.mp4` + `{speaker}/audio/{emotion}/level_{n}/{clip}.m4a`
- HDTF: `{WRA|WDA|RD}_{Name}_{nnn}.mp4` (audio muxed; no emotion labels)

Output: the data folder's clip manifest (one `ClipRef` per clip, sorted by key) and its `ingest` ledger
(files that are not clips of the layout, e.g. an unknown emotion folder or a missing audio file, and
entries that cannot be read: a dangling link, a folder where a file is expected, no permission).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from annotation.facs import MEAD_EMOTIONS
from pipelines.data_folder import DataFolder
from tbd_core.errors import UserError
from tbd_core.records import ClipRef, Dataset, Reject, Split, clip_key

log = logging.getLogger(__name__)

MEAD_PATTERN = (
    "{speaker}/video/front/{emotion}/level_{n}/{clip}.mp4 (+ {speaker}/audio/{emotion}/level_{n}/{clip}.m4a)"
)
HDTF_PATTERN = "{WRA|WDA|RD}_{Name}_{nnn}.mp4"
_HDTF_NAME = re.compile(r"^(WRA|WDA|RD)_(.+)_(\d+)\.mp4$", re.IGNORECASE)
VIDEO_SUFFIX, AUDIO_SUFFIX = ".mp4", ".m4a"  # matched in any case (`002.MP4`)
_LEVEL = re.compile(r"^level_(\d+)$")


class IngestConfig(BaseModel):
    model_config = ConfigDict(frozen=True)
    dataset: Dataset
    root: Path
    out: Path
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_salt: str = "tbd-split-v1"
    split_overrides: dict[str, Split] = {}  # speaker -> split, e.g. a small corpus's validation speaker


def split_of(speaker: str, config: IngestConfig) -> Split:
    """Deterministic split by identity: a hash of the speaker, so adding speakers never moves others
    (an explicit override wins)."""
    if speaker in config.split_overrides:
        return config.split_overrides[speaker]
    u = int(hashlib.sha256(f"{config.split_salt}:{speaker}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if u < config.test_fraction:
        return "test"
    return "val" if u < config.test_fraction + config.val_fraction else "train"


def _layout_error(config: IngestConfig, expected: str) -> UserError:
    seen = sorted(p.name for p in config.root.iterdir())[:8] if config.root.is_dir() else []
    return UserError(
        f"{config.root} does not look like a {config.dataset.upper()} folder: expected {expected}; "
        f"found {seen or 'nothing'}"
    )


def _files(folder: Path, pattern: str) -> list[Path]:
    """Every visible entry the pattern matches, readable or not (links, dangling ones too, and folders)."""
    return sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))


def unreadable(path: Path) -> str:
    """Why `path` cannot be read as a file (a dangling link, a folder, no permission, ...), or ""."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"dangling link to {os.readlink(path)}" if path.is_symlink() else "file vanished"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if stat.S_ISDIR(mode):
        return "a folder where a file is expected"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    try:
        with open(path, "rb"):
            return ""
    except OSError as err:
        return f"cannot be read ({err.strerror})"


def _not_a_clip(key: str, path: Path, wanted: str) -> Reject:
    return Reject(key=key, stage="ingest", source=str(path),
                  reason=f"not a clip: {path.suffix or 'no extension'} file where {wanted} files are expected")  # fmt: skip


def discover_mead(config: IngestConfig) -> tuple[list[ClipRef], list[Reject]]:
    clips, rejects = [], []
    for video in _files(config.root, "*/video/front/*/*/*"):
        rel = video.relative_to(config.root)
        speaker, _, _, emotion, level_dir, _ = rel.parts
        level_match = _LEVEL.match(level_dir)
        key = clip_key("mead", speaker, emotion, int(level_match.group(1)) if level_match else 0, video.stem)
        if problem := unreadable(video):
            rejects.append(Reject(key=key, stage="ingest", reason=problem, source=str(video)))
            continue
        if video.suffix.lower() != VIDEO_SUFFIX:
            rejects.append(_not_a_clip(key, video, VIDEO_SUFFIX))
            continue
        audio_dir = config.root / speaker / "audio" / emotion / level_dir
        audio = next(
            (
                a
                for a in _files(audio_dir, f"{glob_escape(video.stem)}.*")
                if a.suffix.lower() == AUDIO_SUFFIX
            ),
            None,
        )
        audio_problem = unreadable(audio) if audio is not None else ""
        reason = (
            f"unknown emotion folder {emotion!r} (MEAD emotions: {', '.join(MEAD_EMOTIONS)})"
            if emotion not in MEAD_EMOTIONS
            else f"level folder {level_dir!r} is not level_1..level_3"
            if not level_match or int(level_match.group(1)) not in (1, 2, 3)
            else f"missing audio file {(audio_dir / (video.stem + AUDIO_SUFFIX)).relative_to(config.root)}"
            if audio is None
            else f"audio file {audio.relative_to(config.root)}: {audio_problem}"
            if audio_problem
            else ""
        )
        if reason:
            rejects.append(Reject(key=key, stage="ingest", reason=reason, source=str(video)))
            continue
        clips.append(
            ClipRef(
                key=key, dataset="mead", speaker=speaker, emotion=emotion, level=int(level_match.group(1)),
                clip=video.stem, video=str(video.resolve()), audio=str(audio.resolve()), split=split_of(speaker, config),
            )
        )  # fmt: skip
    if not clips and not rejects:
        raise _layout_error(config, MEAD_PATTERN)
    return clips, rejects


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def discover_hdtf(config: IngestConfig) -> tuple[list[ClipRef], list[Reject]]:
    clips, rejects = [], []
    files = _files(config.root, "*")
    for video in files:
        m = _HDTF_NAME.match(video.name)
        speaker = f"{m.group(1).upper()}_{m.group(2)}" if m else video.stem
        key = clip_key("hdtf", speaker, "unknown", 0, m.group(3) if m else "x")
        if problem := unreadable(video):
            rejects.append(Reject(key=key, stage="ingest", reason=problem, source=str(video)))
            continue
        if video.suffix.lower() != VIDEO_SUFFIX:
            rejects.append(_not_a_clip(key, video, VIDEO_SUFFIX))
            continue
        if not m:
            rejects.append(
                Reject(
                    key=key, stage="ingest", reason=f"name does not match {HDTF_PATTERN}", source=str(video)
                )
            )
            continue
        clips.append(
            ClipRef(
                key=key, dataset="hdtf", speaker=speaker,
                emotion="unknown", level=0, clip=m.group(3), video=str(video.resolve()), audio=None,
                split=split_of(speaker, config),
            )
        )  # fmt: skip
    if not any(f.suffix.lower() == VIDEO_SUFFIX for f in files):
        raise _layout_error(config, HDTF_PATTERN)
    return clips, rejects


def ingest(config: IngestConfig) -> tuple[list[ClipRef], list[Reject]]:
    """Discover, then write the clip manifest and the `ingest` ledger of the data folder `config.out`."""
    if not config.root.is_dir():
        raise UserError(f"dataset root {config.root} is not a folder")
    clips, rejects = (discover_mead if config.dataset == "mead" else discover_hdtf)(config)
    by_key: dict[str, list[str]] = {}
    for c in clips:
        by_key.setdefault(c.key, []).append(c.video)
    same = {k: v for k, v in by_key.items() if len(v) > 1}
    if same:
        key, videos = next(iter(same.items()))
        raise UserError(
            f"{config.root}: {len(same)} clip key(s) name more than one file, e.g. {key}: {', '.join(videos)} "
            f"(rename one; keys ignore the case of the extension)"
        )
    clips.sort(key=lambda c: c.key)
    folder = DataFolder(config.out)
    folder.write_clips(clips)
    folder.write_ledger("ingest", rejects)
    splits = pd.Series([c.split for c in clips]).value_counts().to_dict()
    log.info(
        "ingest %s: %d clips %s, %d rejected -> %s",
        config.dataset,
        len(clips),
        splits,
        len(rejects),
        config.out,
    )
    return clips, rejects


def ingest_summary(config: IngestConfig) -> dict:
    """`tbd ingest`: run ingest, and say where the clips and the rejects went."""
    clips, rejects = ingest(config)
    folder = DataFolder(config.out)
    return {"clips": len(clips), "rejected": len(rejects), "rejects_in": str(folder.ledger_path("ingest"))}
