"""Still-image IO with one-line errors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tbd_core.errors import UserError


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such image file")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"{path}: unreadable image (not a png/jpg/bmp/webp file, or corrupt)")
    return bgr[..., ::-1].copy()


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    import cv2

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise UserError(f"{path}: could not write image")
