"""Face regions of the FACS knowledge base as groups of MediaPipe 468-mesh landmark indices.

Derived, not typed by hand: brows, eyes, mouth and nose are MediaPipe's own connection sets
(`FaceLandmarksConnections`); cheeks and jaw grow over the mesh tessellation graph from the FACS
reference points (cheeks 50 / 280; chin 152), excluding the other regions. Each region is a tuple of
groups (one per side for bilateral regions) so a mask can rasterise each group's own hull.
"""

from __future__ import annotations

import functools
from collections import deque

NUM_LANDMARKS = 468
# Reference points (MediaPipe indices, see shared FACS notes): subject's right first.
CHEEK_SEEDS = (50, 280)
CHIN = 152
MOUTH_CORNERS = (61, 291)
INNER_LIPS = (13, 14)
EYE_CORNERS = ((33, 133), (362, 263))  # (outer, inner) right eye; (inner, outer) left eye
CHEEK_HOPS = 3
CHIN_HOPS = 2
JAW_OVAL_STEPS = 8


def eye_centres(landmarks):
    """Centres of the subject's right and left eye (mean of each eye's corners) for (..., 468, 2+) landmarks."""
    (r0, r1), (l0, l1) = EYE_CORNERS
    xy = landmarks[..., :2]
    return (xy[..., r0, :] + xy[..., r1, :]) / 2, (xy[..., l0, :] + xy[..., l1, :]) / 2


def _indices(connections) -> set[int]:
    return {i for c in connections for i in (c.start, c.end) if i < NUM_LANDMARKS}


def _graph(connections) -> dict[int, set[int]]:
    g: dict[int, set[int]] = {}
    for c in connections:
        g.setdefault(c.start, set()).add(c.end)
        g.setdefault(c.end, set()).add(c.start)
    return g


def _within_hops(graph: dict[int, set[int]], seed: int, hops: int) -> set[int]:
    seen, queue = {seed: 0}, deque([seed])
    while queue:
        v = queue.popleft()
        if seen[v] == hops:
            continue
        for n in graph.get(v, ()):
            if n not in seen:
                seen[n] = seen[v] + 1
                queue.append(n)
    return set(seen)


def _oval_arc(oval_connections, centre: int, steps: int) -> set[int]:
    """Vertices of the face-oval cycle within `steps` of `centre` along the cycle."""
    return _within_hops(_graph(oval_connections), centre, steps)


@functools.cache
def region_landmarks() -> dict[str, tuple[tuple[int, ...], ...]]:
    """Region name -> groups of landmark indices (sorted), for the six FACS regions."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as C

    brows = (_indices(C.FACE_LANDMARKS_RIGHT_EYEBROW), _indices(C.FACE_LANDMARKS_LEFT_EYEBROW))
    eyes = (_indices(C.FACE_LANDMARKS_RIGHT_EYE), _indices(C.FACE_LANDMARKS_LEFT_EYE))
    mouth = _indices(C.FACE_LANDMARKS_LIPS)
    nose = _indices(C.FACE_LANDMARKS_NOSE)
    oval = _indices(C.FACE_LANDMARKS_FACE_OVAL)
    mesh = _graph(C.FACE_LANDMARKS_TESSELATION)
    taken = set().union(*brows, *eyes, mouth, nose)
    cheeks = tuple(_within_hops(mesh, s, CHEEK_HOPS) - taken - oval for s in CHEEK_SEEDS)
    jaw = (
        _oval_arc(C.FACE_LANDMARKS_FACE_OVAL, CHIN, JAW_OVAL_STEPS) | _within_hops(mesh, CHIN, CHIN_HOPS)
    ) - mouth
    groups = {
        "brows": brows,
        "eyes": eyes,
        "nose": (nose,),
        "cheeks": cheeks,
        "mouth": (mouth,),
        "jaw": (jaw,),
    }
    return {k: tuple(tuple(sorted(g)) for g in v) for k, v in groups.items()}
