"""Face geometry: MediaPipe face detection and the 468-point mesh (clip crops and region masks:
`media.face_crops`).

Detection is MediaPipe Tasks `FaceDetector` (BlazeFace short range). The mesh is MediaPipe's
`face_landmark.tflite` run through `ai_edge_litert` on a rotated square crop of the face (192x192 RGB
in [0, 1]; 468x3 landmarks in crop pixels plus a face-presence logit out), mapped back to image pixels.
Over a clip the crop of frame t comes from the mesh of frame t-1 (as MediaPipe's own graph does), and
detection runs again only when the face is lost. A single photo whose whole image shows no face is also
searched at finer scales (`detect_all(small_faces=True)`, windows from `media.face_boxes`: a small face in
a large phone photo). When the user supplies the official `face_landmarker.task`, Tasks `FaceLandmarker`
is used instead and blendshapes are returned too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from annotation.regions import eye_centres
from media.face_boxes import SMALLEST_WINDOW, FaceBox, iou, merge_boxes, small_face_windows, window_corners
from tbd_core import assets

MESH_INPUT = 192
DETECTION_SCALE = 1.5  # square crop side = 1.5 x the longer side of the detection box
TRACKING_SCALE = 1.5  # from the landmark box, as MediaPipe's face_landmark_front graph
SETTLE_PASSES = 12  # a new detection's mesh, tracked again on its own frame (`FaceTracker`)
NO_FACE = "no face detected"
FACE_LOST = "face-presence score below threshold"


@dataclass(frozen=True)
class FaceMesh:
    """468 landmarks in image pixels (x, y, z; z in the same pixel scale, towards the camera negative)."""

    landmarks: np.ndarray  # (468, 3) float32
    presence: float
    blendshapes: dict[str, float] | None = None

    @property
    def box(self) -> tuple[float, float, float, float]:
        xy = self.landmarks[:, :2]
        return (*xy.min(0).tolist(), *xy.max(0).tolist())

    @property
    def interocular(self) -> float:
        """Distance between the eye centres (mean of each eye's two corners), in pixels."""
        right, left = eye_centres(self.landmarks)
        return float(np.linalg.norm(left - right))


@dataclass(frozen=True)
class FaceResult:
    """Outcome for one image: a mesh, or none with the reason (never an exception for 'no face')."""

    mesh: FaceMesh | None
    reason: str = ""
    detection: FaceBox | None = field(default=None, repr=False)

    @property
    def found(self) -> bool:
        return self.mesh is not None


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def roll_degrees(landmarks: np.ndarray) -> float:
    """In-plane rotation of a face (degrees, 0 = upright, positive = clockwise in the image) from its eye
    line; about +-90 for a video or photo turned on its side."""
    right, left = eye_centres(np.asarray(landmarks)[:, :2])
    return float(np.degrees(np.arctan2(left[1] - right[1], left[0] - right[0])))


def crop_transform(center: np.ndarray, size: float, angle: float, out: int = MESH_INPUT) -> np.ndarray:
    """2x3 affine from crop pixels (out x out) to image pixels: a square of side `size`, rotated by `angle`."""
    s = size / out
    c, si = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -si], [si, c]]) * s
    offset = np.asarray(center, float) - rot @ np.array([out / 2, out / 2])
    return np.hstack([rot, offset[:, None]]).astype(np.float64)


def _sigprof_cannot_kill() -> None:
    """SIGPROF's default (kill) -> ignore (libmediapipe.so sets timers; our 24-min test process died of it)."""
    import contextlib
    import signal

    with contextlib.suppress(ValueError):  # outside the main thread handlers cannot be set
        if signal.getsignal(signal.SIGPROF) == signal.SIG_DFL:
            signal.signal(signal.SIGPROF, signal.SIG_IGN)


class FaceAnalyzer:
    """Detects a face and its mesh. Use as a context manager (or call `close`)."""

    def __init__(
        self,
        min_detection_confidence: float = 0.5,
        min_presence: float = 0.5,
        num_threads: int = 1,
        use_landmarker: bool | None = None,
    ):
        from ai_edge_litert.interpreter import Interpreter
        from mediapipe.tasks.python import BaseOptions, vision

        _sigprof_cannot_kill()
        self.min_presence = min_presence
        self._detector = vision.FaceDetector.create_from_options(
            vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_path=str(assets.resolve("face_detector"))),
                min_detection_confidence=min_detection_confidence,
            )
        )
        self._mesh = Interpreter(model_path=str(assets.resolve("face_mesh")), num_threads=num_threads)
        self._mesh.allocate_tensors()
        self._in = self._mesh.get_input_details()[0]["index"]
        outs = {o["name"]: o["index"] for o in self._mesh.get_output_details()}
        self._out_landmarks, self._out_presence = outs["conv2d_21"], outs["conv2d_31"]
        self._landmarker = None
        if use_landmarker is None:
            use_landmarker = assets.user_path("face_landmarker") is not None
        if use_landmarker:
            self._landmarker = vision.FaceLandmarker.create_from_options(
                vision.FaceLandmarkerOptions(
                    base_options=BaseOptions(model_asset_path=str(assets.resolve("face_landmarker"))),
                    output_face_blendshapes=True,
                    num_faces=1,
                )
            )

    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for task in (self._detector, self._landmarker):
            if task is not None:
                task.close()
        self._detector = self._landmarker = None

    # -- detection ---------------------------------------------------------------------------------
    def _detect_in(self, image: np.ndarray, dx: int = 0, dy: int = 0) -> list[FaceBox]:
        """Every detection in `image` (a tile whose top-left corner is at (dx, dy) in the full image)."""
        import mediapipe as mp

        h, w = image.shape[:2]
        result = self._detector.detect(
            mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        )
        boxes = []
        for d in result.detections:
            b = d.bounding_box
            kps = np.array([[k.x * w + dx, k.y * h + dy] for k in d.keypoints], np.float32)
            box = (b.origin_x + dx, b.origin_y + dy, b.origin_x + b.width + dx, b.origin_y + b.height + dy)
            boxes.append(
                FaceBox(box=tuple(map(float, box)), score=float(d.categories[0].score), keypoints=kps)
            )
        return boxes

    def detect_all(self, image: np.ndarray, small_faces: bool = False) -> list[FaceBox]:
        """Every face, largest first. The short-range detector sees the whole image squeezed into its square
        input, so in a wide or tall image (two people side by side) small faces go unseen: overlapping square
        tiles along the long side are searched too, and duplicates merged. `small_faces`: when that finds
        nothing, search overlapping windows at finer scales (`small_face_windows`; a face ~70 px wide in a
        4000x3000 phone photo), coarse to fine, stopping at the first scale with a face."""
        image = _rgb_uint8(image)
        h, w = image.shape[:2]
        boxes = self._detect_in(image)
        side, long = min(h, w), max(h, w)
        if long > 1.2 * side:
            for o in np.linspace(0, long - side, int(np.ceil(2 * long / side)) - 1).round().astype(int):
                tile = image[:, o : o + side] if w > h else image[o : o + side]
                boxes += self._detect_in(tile, o if w > h else 0, 0 if w > h else o)
        if small_faces and not boxes:
            boxes = self._detect_small(image)
        return merge_boxes(boxes)

    def _detect_small(self, image: np.ndarray) -> list[FaceBox]:
        """Detections in the windows of each `small_face_windows` side, coarse to fine, until a scale has one
        that the mesh confirms (face-presence score): hundreds of windows of texture or noise turn up false
        faces that the single whole-image pass does not."""
        h, w = image.shape[:2]
        for side in small_face_windows(h, w):
            windows = ((image[y : y + side, x : x + side], x, y) for x, y in window_corners(h, w, side))
            boxes = [self._refine(image, b) for window in windows for b in self._detect_in(*window)]
            if boxes := [b for b in boxes if self.mesh_from_detection(image, b) is not None]:
                return boxes
        return []

    def _refine(self, image: np.ndarray, det: FaceBox) -> FaceBox:
        """`det` detected again in a window 4x its width around it (a face at the edge of what a window
        shows gets a loose box); `det` itself when that finds nothing overlapping it."""
        (h, w), (x0, y0, x1, y1) = image.shape[:2], det.box
        side = int(min(h, w, max(SMALLEST_WINDOW, 4 * (x1 - x0))))
        x = int(np.clip((x0 + x1 - side) / 2, 0, w - side))
        y = int(np.clip((y0 + y1 - side) / 2, 0, h - side))
        again = [
            b for b in self._detect_in(image[y : y + side, x : x + side], x, y) if iou(b.box, det.box) > 0.3
        ]
        return max(again, key=lambda b: b.score, default=det)

    # -- mesh ----------------------------------------------------------------------------------------
    def _run_mesh(self, image: np.ndarray, affine: np.ndarray) -> FaceMesh | None:
        to_crop = cv2.invertAffineTransform(affine)
        crop = cv2.warpAffine(
            image, to_crop, (MESH_INPUT, MESH_INPUT), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        self._mesh.set_tensor(self._in, (crop.astype(np.float32) / 255.0)[None])
        self._mesh.invoke()
        raw = self._mesh.get_tensor(self._out_landmarks).reshape(468, 3)
        presence = 1.0 / (1.0 + math.exp(-float(self._mesh.get_tensor(self._out_presence).ravel()[0])))
        if presence < self.min_presence:
            return None
        xy = raw[:, :2] @ affine[:, :2].T + affine[:, 2]
        scale = math.hypot(affine[0, 0], affine[1, 0])
        lm = np.concatenate([xy, raw[:, 2:3] * scale], axis=1).astype(np.float32)
        return FaceMesh(landmarks=lm, presence=presence)

    def mesh_from_detection(self, image: np.ndarray, det: FaceBox) -> FaceMesh | None:
        x0, y0, x1, y1 = det.box
        eye_r, eye_l = det.keypoints[0], det.keypoints[1]
        angle = math.atan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0])
        size = max(x1 - x0, y1 - y0) * DETECTION_SCALE
        center = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        return self._run_mesh(_rgb_uint8(image), crop_transform(center, size, angle))

    def mesh_from_previous(self, image: np.ndarray, prev: FaceMesh) -> FaceMesh | None:
        """Track: crop around the previous frame's mesh, rotated by its eye line."""
        xy = prev.landmarks[:, :2]
        eye_r, eye_l = eye_centres(xy)
        angle = math.atan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0])
        c, s = math.cos(-angle), math.sin(-angle)
        centre = (xy.min(0) + xy.max(0)) / 2
        rotated = (xy - centre) @ np.array([[c, s], [-s, c]])
        size = float((rotated.max(0) - rotated.min(0)).max()) * TRACKING_SCALE
        centre = centre + np.array([[c, -s], [s, c]]) @ ((rotated.max(0) + rotated.min(0)) / 2)
        return self._run_mesh(_rgb_uint8(image), crop_transform(centre, size, angle))

    def _landmarker_result(self, image: np.ndarray) -> FaceResult:
        import mediapipe as mp

        h, w = image.shape[:2]
        res = self._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
        if not res.face_landmarks:
            return FaceResult(None, NO_FACE)
        lms = np.array([[p.x * w, p.y * h, p.z * w] for p in res.face_landmarks[0][:468]], np.float32)
        shapes = (
            {c.category_name: float(c.score) for c in res.face_blendshapes[0]}
            if res.face_blendshapes
            else None
        )
        return FaceResult(FaceMesh(landmarks=lms, presence=1.0, blendshapes=shapes))

    def analyze(self, image: np.ndarray) -> FaceResult:
        """Detect + mesh one image (the largest face, searched as `detect_all` searches). No face is a result
        with a reason, not an exception."""
        image = _rgb_uint8(image)
        if self._landmarker is not None:
            return self._landmarker_result(image)
        faces = self.detect_all(image)  # the whole image and, in a wide or tall one, its square tiles
        if not faces:
            return FaceResult(None, NO_FACE)
        det = faces[0]  # the largest
        mesh = self.mesh_from_detection(image, det)
        return FaceResult(mesh, "" if mesh else FACE_LOST, detection=det)

    def track(self, frames) -> list[FaceResult]:
        """Mesh every frame of a clip; detection only on the first frame and whenever tracking is lost."""
        tracker = FaceTracker(self)
        return [tracker(frame) for frame in frames]


class FaceTracker:
    """`FaceAnalyzer.track` one frame at a time (for streams): each call meshes a frame from the previous
    frame's mesh, detecting again on the first frame and whenever tracking is lost.

    A face just detected is meshed again from its own mesh `settle` times on the same frame before it is
    returned: the mesh from a detection box sits differently from one tracked from a mesh, and tracking
    takes about 10 frames to settle (the astronaut's still, held 100 frames, read AU2 0.0 over its first
    4 tracked frames and 1.1-1.2 from the 10th on), so without this a video's first frames, and a still's
    baseline, were seen differently from the rest."""

    def __init__(self, analyzer: FaceAnalyzer, settle: int = SETTLE_PASSES):
        self.analyzer, self.prev, self.settle = analyzer, None, settle

    def __call__(self, frame: np.ndarray) -> FaceResult:
        fa, frame = self.analyzer, _rgb_uint8(frame)
        tracking = fa._landmarker is None
        mesh = fa.mesh_from_previous(frame, self.prev) if self.prev is not None and tracking else None
        if mesh is not None:
            result = FaceResult(mesh)
        else:
            result = fa.analyze(frame)
            for _ in range(self.settle if result.found and tracking else 0):
                again = fa.mesh_from_previous(frame, result.mesh)
                if again is None:
                    break
                result = FaceResult(again, detection=result.detection)
        self.prev = result.mesh
        return result


_shared: FaceAnalyzer | None = None


def shared_analyzer() -> FaceAnalyzer:
    """This process's analyzer, built on first use and closed at exit: building one costs ~85 ms and a
    block of LiteRT start-up lines, and evaluation tracks every clip of every mode. Not thread-safe."""
    global _shared
    if _shared is None:
        import threading

        _shared = FaceAnalyzer()
        # MediaPipe closes through a thread pool, which `atexit` callbacks find shut down already
        # ("cannot schedule new futures after shutdown"); threading's exit hooks run before that, newest
        # first. (CPython's hook for exactly this; `atexit` where it is missing.)
        register = getattr(threading, "_register_atexit", None)
        if register is None:
            import atexit

            register = atexit.register
        register(_shared.close)
    return _shared
