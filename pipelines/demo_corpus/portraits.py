"""Portrait sources for the demo corpus: real photos shipped by packages, or a folder of the user's.

When there are fewer photos than identities, further identities are distinct variants of the photos:
mirrored (a real face is not symmetric), a horizontal stretch, and a colour transform. With the built-in
photos (`speakers`), every training identity is one person (Grace Hopper's photograph, varied) and the
last speaker, the one a demo validates on, is another real person (`heldout_portrait`, the astronaut):
the result on it rests on one unseen person. Every identity is rendered from a closed-mouth neutral base
(`corpus.neutral_base`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from media.images import read_image
from tbd_core.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass(frozen=True)
class Portrait:
    name: str  # CamelCase, letters and digits only (used in HDTF-style file names and keys)
    image: np.ndarray  # HxWx3 uint8 RGB
    source: str


def builtin_portraits() -> list[Portrait]:
    """Grace Hopper's official US Navy portrait (public domain), which matplotlib ships as sample data: a
    closed-mouth, near-neutral face, so the rendered emotions read as themselves (an independent FER2013
    judge calls the smiling astronaut photo 'happy' whatever is rendered on it)."""
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return [
        Portrait(
            "GraceHopper",
            read_image(path),
            "matplotlib sample_data grace_hopper.jpg (US Navy, public domain)",
        )
    ]


def registry_portraits() -> list[Portrait]:
    """Two more real people, the photographs the PyPI sdist face_recognition ships as test images (assets
    `portrait_obama`, `portrait_biden`, fetched by `make setup`): Barack Obama (smiling; the renderer's
    neutral base relaxes it) and Joe Biden (a small face in a full-length photograph)."""
    from tbd_core.assets import REGISTRY, resolve

    return [
        Portrait(name, read_image(resolve(asset)), REGISTRY[asset].description)
        for name, asset in (("Obama", "portrait_obama"), ("Biden", "portrait_biden"))
    ]


def heldout_portrait() -> Portrait:
    """A real person who is in no training identity: the astronaut Eileen Collins (NASA, public domain),
    which scikit-image ships as `skimage.data.astronaut`."""
    from skimage import data

    return Portrait(
        "Astronaut", data.astronaut(), "skimage.data.astronaut (Eileen Collins, NASA, public domain)"
    )


def _camel(stem: str) -> str:
    name = "".join(part.capitalize() for part in "".join(c if c.isalnum() else " " for c in stem).split())
    return name or "Portrait"


def load_portraits(folder: str | Path) -> list[Portrait]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: portraits folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{folder}: no portrait images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [Portrait(_camel(p.stem), read_image(p), str(p)) for p in files]


_VARIANTS = (  # (suffix, mirror, horizontal stretch, colour matrix on RGB)
    ("", False, 1.0, None),
    ("Mirror", True, 0.94, np.array([[1.05, 0.05, 0.0], [0.02, 0.98, 0.0], [0.0, 0.02, 0.88]])),
    ("Wide", False, 1.07, np.array([[0.9, 0.0, 0.05], [0.0, 1.0, 0.04], [0.03, 0.05, 1.08]])),
    ("MirrorWarm", True, 1.03, np.array([[1.1, 0.06, 0.0], [0.03, 0.95, 0.0], [0.0, 0.0, 0.8]])),
    ("Narrow", False, 0.9, np.array([[0.95, 0.05, 0.0], [0.05, 0.95, 0.0], [0.05, 0.0, 0.95]])),
)


def variant(p: Portrait, k: int) -> Portrait:
    suffix, mirror, stretch, colour = _VARIANTS[k % len(_VARIANTS)]
    if k >= len(_VARIANTS):
        suffix += str(k // len(_VARIANTS) + 1)
    img = p.image[:, ::-1] if mirror else p.image
    if stretch != 1.0:
        h, w = img.shape[:2]
        m = np.array([[stretch, 0, (1 - stretch) * w / 2], [0, 1, 0]], np.float32)
        img = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), borderMode=cv2.BORDER_REFLECT101)
    if colour is not None:
        img = np.clip(img.astype(np.float32) @ colour.T, 0, 255).astype(np.uint8)
    return Portrait(
        p.name + suffix, np.ascontiguousarray(img), f"{p.source} (variant {suffix or 'original'})"
    )


def identities(portraits: list[Portrait], n: int) -> list[Portrait]:
    """`n` distinct identities: each photo first, then variants of the photos in turn."""
    return [variant(portraits[i % len(portraits)], i // len(portraits)) for i in range(n)]


def speakers(folder: str | Path | None, n: int, photos: int = 1) -> list[Portrait]:
    """The corpus's `n` speakers (W001 ... in order): `identities` of the user's photos in `folder`; with the
    built-in photos, `n - 1` identities of the first `photos` real people (Grace Hopper; Obama, Biden:
    `registry_portraits`) and, last, the held-out person (the astronaut), so the speaker a demo validates on
    is not a variant of any training identity (dlib puts Grace Hopper's photograph 0.69 from her, above its
    0.6 same-person threshold; `tests/test_evaluate.py` asserts it)."""
    if folder:
        return identities(load_portraits(folder), n)
    if n < 2:
        raise UserError(
            "the built-in corpus needs at least 2 identities (training ones and a held-out person)"
        )
    people = [*builtin_portraits(), *registry_portraits()] if photos > 1 else builtin_portraits()
    return [*identities(people[:photos], n - 1), heldout_portrait()]


def calibration_people(folder: str | Path | None, n: int) -> list[Portrait]:
    """The AU calibration's `n` identities in order (fit ..., selection, test): `identities` of the user's
    photos in `folder`; with the built-in photos, `n - 2` fit identities from Grace Hopper's and Obama's
    photographs (each person, then their variants: mirrored, stretched, recoloured), then the selection
    person (Biden) and, last, the demo's held-out person (the astronaut): the selection and test identities
    are people in no fit identity, and each other (dlib, asserted in tests/test_au_calibration.py)."""
    if folder:
        return identities(load_portraits(folder), n)
    if n < 3:
        raise UserError(f"calibration needs at least 3 identities (fit, selection, test), got {n}")
    grace, obama, biden = [*builtin_portraits(), *registry_portraits()]
    return [*identities([grace, obama], n - 2), biden, heldout_portrait()]
