"""Generation inputs made the way the training media were: the portrait crop and landmarks, the speech."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tbd_core.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Portrait:
    crop: np.ndarray  # (S, S, 3) uint8
    landmarks: np.ndarray  # (468, 3) crop-normalised


def prepare_portrait(
    path: Path, size: int, margin: float, face_index: int | None = None, max_roll_deg: float = 30.0
) -> Portrait:
    """The portrait's face crop and landmarks, made as preprocess makes training crops. EXIF orientation is
    applied. Several faces: the largest is taken (and said), or `face_index` (faces ordered largest
    first). A face rolled beyond `max_roll_deg` (what preprocess lets into training) is warned about."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from media.clip_media import crop_to
    from media.face import FaceAnalyzer, roll_degrees, stable_crop

    try:
        with Image.open(path) as im:
            image = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path}: not a readable image ({err})") from err
    with FaceAnalyzer() as fa:
        faces = fa.detect_all(image)
        if not faces:
            raise UserError(f"{path}: no face found (give a photo with one face seen from the front)")
        listing = ", ".join(f"#{i} at x={f.box[0]:.0f}-{f.box[2]:.0f} y={f.box[1]:.0f}-{f.box[3]:.0f}" for i, f in enumerate(faces))  # fmt: skip
        if face_index is not None and not 0 <= face_index < len(faces):
            raise UserError(f"{path}: face_index {face_index}, but {len(faces)} face(s) found ({listing})")
        if face_index is None and len(faces) > 1:
            log.warning("%s: %d faces found (%s, largest first); using #0, choose another with "
                        "--face_index", path, len(faces), listing)  # fmt: skip
        mesh = fa.mesh_from_detection(image, faces[face_index or 0])
    if mesh is None:
        raise UserError(
            f"{path}: no face found (face #{face_index or 0}: face-presence score below threshold)"
        )
    roll = roll_degrees(mesh.landmarks)
    if abs(roll) > max_roll_deg:
        log.warning("%s: the face is rolled by %.0f degrees; the model was trained on faces within %.0f "
                    "(is the photo on its side?)", path, roll, max_roll_deg)  # fmt: skip
    crop, lm = crop_to(
        image[None], mesh.landmarks[None].astype(np.float64), stable_crop([mesh], margin), size
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
        raise UserError(
            f"{path}: no audio samples (shorter than one video frame, 1/{fps} s): give longer speech"
        )
    level = dbfs(audio)
    if level < silence_dbfs:
        raise UserError(
            f"{path}: silent audio ({level:.1f} dBFS, threshold {silence_dbfs:.0f} dBFS): give a recording of speech"
        )
    return audio, len(audio) * fps // AUDIO_RATE
