"""Still-image IO with one-line errors naming the file: one loader for every command that reads a photo
(`tbd face`, `tbd generate`, the app, the demo corpus's portraits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tbd_core.errors import UserError

BACKGROUND = 255  # what transparent pixels are shown over (white, as image viewers do)


def to_rgb8(im) -> np.ndarray:
    """A Pillow image as (H, W, 3) uint8 RGB the way a viewer shows it: EXIF orientation applied, 16-bit
    and 32-bit grayscale scaled to 8 bits (not clipped to white), float images from [0, 1], palette and
    CMYK converted, alpha composited over white."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, np.float64)
        if im.mode == "F":
            top = 1.0 if a.max() <= 1.0 else 65535.0 if a.max() <= 65535 else a.max()
        else:
            top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        gray = np.clip(a / top * 255, 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, -1)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (BACKGROUND,) * 3 + (255,))
        return np.asarray(Image.alpha_composite(flat, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (`to_rgb8`). Raises UserError for a missing, unreadable
    or corrupt file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            return np.ascontiguousarray(to_rgb8(im))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable image ({err})") from err


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    import cv2

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise UserError(f"{path}: could not write image")
