"""Preprocess's pass over a segment's frames (`media.clip_media`): the face tracked, AU features, the
one-speaker checks, timestamps, and the pixels around the face kept for the crops (`media.kept_regions`)."""

from __future__ import annotations

import numpy as np

from media.face import FaceAnalyzer
from media.face_boxes import box_inside
from media.kept_regions import KeptRegions

IDENTITY_EVERY = 125  # frames between the second-face checks (and the first and last frame)


def second_face(image: np.ndarray, index: int, analyzer: FaceAnalyzer, config) -> str:
    """Why frame `index` shows more than one speaker, or "". Policy: a second face at least
    `max_second_face` of the first's width rejects the clip (the tracker could swap to it and mix
    identities); smaller background faces are ignored, and so are detections lying mostly (over half their
    area) inside the first face's box: a part of that face (a spectacle lens with an eye and brow behind it
    reads as a face to the detector), not another speaker."""
    faces = analyzer.detect_all(image)
    faces = faces[:1] + [f for f in faces[1:] if box_inside(f.box, faces[0].box) <= 0.5]
    if len(faces) > 1:
        widths = [f.box[2] - f.box[0] for f in faces]
        if widths[1] >= config.max_second_face * widths[0]:
            return (f"{len(faces)} faces in frame {index} (the second {widths[1] / widths[0]:.0%} the width of "
                    f"the first): one speaker per clip, identities could mix")  # fmt: skip
    return ""


class SegmentScan:
    """Pass 1 over a segment's frames: face tracking, AU features, second-face checks, timestamps, kept
    pixels. `add` takes `iter_frames`' frames whose `image` is (RGB picture, the decoded `av.VideoFrame`);
    `config` is the stage's `clip_media.MediaConfig` (not imported: that module imports this one)."""

    def __init__(self, analyzer: FaceAnalyzer, config, frames: int = 0):
        self.analyzer, self.config = analyzer, config
        self.meshes, self.times, self.sources, self.identity = [], [], [], ""
        self.au = None
        self.last = None
        self.kept = KeptRegions(config.crop_margin, frames)  # the crop pass's pixels: no second decode

    def add(self, frame) -> None:
        from media.au_measure import AUStream
        from media.face import FaceTracker

        i, (image, decoded) = len(self.meshes), frame.image
        if self.au is None:
            self.tracker = FaceTracker(self.analyzer)
            self.au = AUStream(*image.shape[:2], tracked=True)
        mesh = self.tracker(image).mesh
        self.meshes.append(mesh)
        self.kept.add(decoded, mesh.box if mesh is not None else None)
        self.au.add(image, mesh.landmarks if mesh is not None else None)
        self.times.append(frame.time)
        self.sources.append(frame.source)
        if i % IDENTITY_EVERY == 0 and not self.identity:
            self.identity = second_face(image, i, self.analyzer, self.config)
        self.last = image

    def finish(self) -> None:
        n = len(self.meshes)
        if n and (n - 1) % IDENTITY_EVERY and not self.identity:
            self.identity = second_face(self.last, n - 1, self.analyzer, self.config)
        self.last = None


def roll_problem(meshes: list, config) -> str:
    """A face rolled beyond `max_roll_deg` (a video on its side without rotation metadata), or ""."""
    from media.face import roll_degrees

    roll = float(np.median([roll_degrees(m.landmarks) for m in meshes]))
    if abs(roll) > config.max_roll_deg:
        return (f"face rolled by {roll:.0f} degrees (limit {config.max_roll_deg:.0f}): a video on its side "
                f"without rotation metadata? Turn it upright first")  # fmt: skip
    return ""
