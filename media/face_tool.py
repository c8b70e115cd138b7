"""`tbd face IMAGE`: detect the face and its mesh; optionally draw landmarks and region masks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from media.images import read_image, write_image


@dataclass(frozen=True)
class FaceConfig:
    image: Path
    """A portrait image (read as `tbd generate` reads it: 16-bit, grayscale, palette, CMYK, alpha, EXIF)."""
    face_index: int | None = None
    """Several faces: which one to mesh (largest first). Default: the largest."""
    draw: Path | None = None
    """Write the image with landmarks and region masks drawn (PNG)."""
    json: Path | None = None
    """Write landmarks, box and every face found as JSON."""


def describe_face(config: FaceConfig) -> str:
    from media.face_crops import region_masks
    from media.inputs import face_listing, find_face

    image = read_image(config.image)
    mesh, faces = find_face(image, config.image, config.face_index)
    if config.json:
        Path(config.json).write_text(
            json.dumps(
                {
                    "box": mesh.box,
                    "presence": mesh.presence,
                    "landmarks": mesh.landmarks.round(2).tolist(),
                    "faces": [{"box": list(f.box), "score": f.score} for f in faces],
                }  # fmt: skip
            )
        )
    if config.draw:
        canvas = image.astype(np.float32)
        colours = np.array(
            [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]]
        )
        masks = region_masks(mesh.landmarks, *image.shape[:2]).items()
        for (_name, mask), colour in zip(masks, colours, strict=True):
            canvas = canvas * (1 - 0.35 * mask[..., None]) + colour * 0.35 * mask[..., None]
        for x, y in mesh.landmarks[:, :2].astype(int):
            canvas[max(0, y - 1) : y + 1, max(0, x - 1) : x + 1] = (255, 255, 255)
        write_image(config.draw, canvas.clip(0, 255).astype(np.uint8))
    chosen = config.face_index or 0
    found = (
        f"{len(faces)} faces found ({face_listing(faces)}), #{chosen} meshed"
        if len(faces) > 1
        else "face found"
    )
    return (
        f"{config.image}: {found}, presence {mesh.presence:.3f}, box {[round(v, 1) for v in mesh.box]}, "
        f"inter-ocular {mesh.interocular:.1f}px, {len(mesh.landmarks)} landmarks"
    )
