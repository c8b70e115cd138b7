"""Generation inputs made the way the training media were: the portrait crop and landmarks, the speech."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tbd_core.errors import UserError


@dataclass
class Portrait:
    crop: np.ndarray  # (S, S, 3) uint8
    landmarks: np.ndarray  # (468, 3) crop-normalised


def prepare_portrait(path: Path, size: int, margin: float) -> Portrait:
    from PIL import Image, UnidentifiedImageError

    from media.clip_media import crop_to
    from media.face import FaceAnalyzer, stable_crop

    try:
        image = np.asarray(Image.open(path).convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path}: not a readable image ({err})") from err
    with FaceAnalyzer() as fa:
        result = fa.analyze(image)
    if result.mesh is None:
        raise UserError(f"{path}: no face found ({result.reason})")
    crop, lm = crop_to(
        image[None], result.mesh.landmarks[None].astype(np.float64), stable_crop([result.mesh], margin), size
    )
    return Portrait(crop[0], lm[0])


def load_speech(path: Path, fps: int, max_seconds: float, silence_dbfs: float) -> tuple[np.ndarray, int]:
    """16 kHz mono float32 and the number of video frames it covers."""
    from media.clip_media import dbfs
    from media.video_io import AUDIO_RATE, read_audio

    if not Path(path).is_file():
        raise UserError(f"{path}: no such audio file")
    audio = read_audio(path)[: int(max_seconds * AUDIO_RATE)]
    if len(audio) < AUDIO_RATE // fps:
        raise UserError(f"{path}: no audio samples")
    level = dbfs(audio)
    if level < silence_dbfs:
        raise UserError(f"{path}: silent audio ({level:.1f} dBFS, threshold {silence_dbfs:.0f} dBFS)")
    return audio, len(audio) * fps // AUDIO_RATE
