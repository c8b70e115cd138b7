"""`tbd face IMAGE`: detect the face and its mesh; optionally draw landmarks and region masks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipelines.images import read_image, write_image
from tbd.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="portrait image (png/jpg)")
    p.add_argument("--draw", metavar="PNG", help="write the image with landmarks and region masks drawn")
    p.add_argument("--json", metavar="FILE", help="write landmarks and box as JSON")


def run(args: argparse.Namespace) -> int:
    from pipelines.face import FaceAnalyzer, region_masks

    image = read_image(args.image)
    with FaceAnalyzer() as fa:
        result = fa.analyze(image)
    if not result.found:
        raise UserError(f"{args.image}: {result.reason}")
    mesh = result.mesh
    print(
        f"{args.image}: face found, presence {mesh.presence:.3f}, box {[round(v, 1) for v in mesh.box]}, "
        f"inter-ocular {mesh.interocular:.1f}px, {len(mesh.landmarks)} landmarks"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"box": mesh.box, "presence": mesh.presence, "landmarks": mesh.landmarks.round(2).tolist()}
            )
        )
    if args.draw:
        canvas = image.astype(np.float32)
        colours = np.array(
            [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]]
        )
        for (_name, mask), colour in zip(
            region_masks(mesh.landmarks, *image.shape[:2]).items(), colours, strict=True
        ):
            canvas = canvas * (1 - 0.35 * mask[..., None]) + colour * 0.35 * mask[..., None]
        for x, y in mesh.landmarks[:, :2].astype(int):
            canvas[max(0, y - 1) : y + 1, max(0, x - 1) : x + 1] = (255, 255, 255)
        write_image(args.draw, canvas.clip(0, 255).astype(np.uint8))
    return 0
