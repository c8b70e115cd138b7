"""`tbd face IMAGE`: detect the face and its mesh; optionally draw landmarks and region masks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from media.images import read_image, write_image
from tbd_core.errors import UserError


@dataclass(frozen=True)
class FaceConfig:
    image: Path  # a portrait image (png/jpg)
    draw: Path | None = None  # write the image with landmarks and region masks drawn (PNG)
    json: Path | None = None  # write landmarks and box as JSON


def describe_face(config: FaceConfig) -> str:
    from media.face import FaceAnalyzer, region_masks

    image = read_image(config.image)
    with FaceAnalyzer() as fa:
        result = fa.analyze(image)
    if not result.found:
        raise UserError(f"{config.image}: {result.reason}")
    mesh = result.mesh
    if config.json:
        Path(config.json).write_text(
            json.dumps(
                {"box": mesh.box, "presence": mesh.presence, "landmarks": mesh.landmarks.round(2).tolist()}
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
    return (
        f"{config.image}: face found, presence {mesh.presence:.3f}, box {[round(v, 1) for v in mesh.box]}, "
        f"inter-ocular {mesh.interocular:.1f}px, {len(mesh.landmarks)} landmarks"
    )
