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


def face_listing(faces) -> str:
    """`#0 at x=.. y=.., #1 ...` for faces as `FaceAnalyzer.detect_all` lists them (largest first)."""
    return ", ".join(f"#{i} at x={f.box[0]:.0f}-{f.box[2]:.0f} y={f.box[1]:.0f}-{f.box[3]:.0f}" for i, f in enumerate(faces))  # fmt: skip


def no_face_message(path: Path, h: int, w: int) -> str:
    """Why no face, naming the narrowest face the search can see in an h x w image and what to do."""
    from media.face_boxes import smallest_face

    return (
        f"{path}: no face found (give a photo with one face seen from the front; in this {w}x{h} image the "
        f"search sees faces down to about {smallest_face(h, w)} px wide: crop the photo around a smaller face)"
    )


def find_face(image: np.ndarray, path: Path, face_index: int | None = None):
    """(the chosen face's mesh, every face found) in an image: the one face finder of `tbd face`,
    `tbd generate` and the app. The whole image and, in a wide or tall one, its square tiles are searched,
    then, when they show no face, windows at finer scales (`FaceAnalyzer.detect_all(small_faces=True)`: a
    small face in a large phone photo); several faces: the largest is taken (and every face listed in a
    warning), or `face_index` (largest first). Raises UserError when there is no face or no such index."""
    from media.face import shared_analyzer

    fa = shared_analyzer()
    faces = fa.detect_all(image, small_faces=True)
    if not faces:
        raise UserError(no_face_message(path, *image.shape[:2]))
    listing = face_listing(faces)
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
    return mesh, faces


def prepare_portrait(
    path: Path, size: int, margin: float, face_index: int | None = None, max_roll_deg: float = 30.0
) -> Portrait:
    """The portrait's face crop and landmarks, made as preprocess makes training crops. The image is read
    as a viewer shows it (`media.images.read_image`), the face found by `find_face`. A face rolled beyond
    `max_roll_deg` (what preprocess lets into training) is warned about."""
    from media.face import roll_degrees
    from media.face_crops import crop_to, stable_crop
    from media.images import read_image

    image = read_image(path)
    mesh, _ = find_face(image, path, face_index)
    roll = roll_degrees(mesh.landmarks)
    if abs(roll) > max_roll_deg:
        log.warning("%s: the face is rolled by %.0f degrees; the model was trained on faces within %.0f "
                    "(is the photo on its side?)", path, roll, max_roll_deg)  # fmt: skip
    crop, lm = crop_to(
        image[None], mesh.landmarks[None].astype(np.float64), stable_crop([mesh], margin), size
    )
    return Portrait(crop[0], lm[0])


@dataclass
class Speech:
    audio: np.ndarray  # (N,) float32 16 kHz mono, as used (after any cut)
    frames: int  # video frames it covers
    seconds: float  # the whole recording's length
    cut: dict | None  # {"at_seconds", "dropped_seconds"} when `max_seconds` cut it, else None


def load_speech(path: Path, fps: int, max_seconds: float | None, silence_dbfs: float) -> Speech:
    """16 kHz mono float32 and the number of video frames it covers (round(seconds x fps)). `max_seconds`
    cuts it (an explicit choice: warned about, and returned as `cut`); None keeps all of it."""
    from media.clip_media import dbfs
    from media.video_io import AUDIO_RATE, read_audio

    if not Path(path).is_file():
        raise UserError(f"{path}: no such audio file")
    audio = read_audio(path)
    seconds, cut = len(audio) / AUDIO_RATE, None
    if max_seconds is not None and seconds > max_seconds:
        audio = audio[: int(max_seconds * AUDIO_RATE)]
        cut = {"at_seconds": max_seconds, "dropped_seconds": round(seconds - max_seconds, 3)}
        log.warning("%s: %.2f s of speech cut at --max_seconds %.2f: the last %.2f s are not drawn",
                    path, seconds, max_seconds, seconds - max_seconds)  # fmt: skip
    if len(audio) < AUDIO_RATE / fps:
        raise UserError(
            f"{path}: no audio samples (shorter than one video frame, 1/{fps} s): give longer speech"
        )
    level = dbfs(audio)
    if level < silence_dbfs:
        raise UserError(
            f"{path}: silent audio ({level:.1f} dBFS, threshold {silence_dbfs:.0f} dBFS): give a recording of speech"
        )
    return Speech(audio, round(len(audio) * fps / AUDIO_RATE), seconds, cut)
