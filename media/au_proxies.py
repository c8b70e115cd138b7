"""Measured AU proxies from 468-mesh geometry (approximate; FACS-trained detectors are optional backends).

Every proxy is a signed distance or ratio in units of the inter-ocular distance (IOD), computed per
frame in a face-aligned frame (origin between the eyes, x along the eye line towards the subject's
left, y down). Raw values depend on the identity: subtract a neutral baseline (`relative_to`) before
reading them as AU activity. Per side where FACS distinguishes sides ("_r" subject's right, "_l" left).

| proxy | formula (aligned frame, / IOD) | grows with |
|---|---|---|
| au1_r/l | inner-brow (55/285) height above the eye line | AU1 |
| au2_r/l | outer-brow (46/276) height above the eye line | AU2 |
| au4 | minus the inner-brow gap (55-285) | AU4 |
| au5_r/l | eyelid aperture (159-145, 386-374) | AU5 (falls with AU7/AU43) |
| au6_r/l | lower-lid (145/374) height above the eye line | AU6/AU7 |
| au9 | minus the nose-wing (98, 327) to upper-lip (0) height | AU9/AU10 |
| au12_r/l | mouth-corner (61/291) height above the mid-lip line (0,17) | AU12 (falls with AU15) |
| au17 | minus the lower-lip (17) to chin (152) height | AU17 |
| au20_r/l | mouth-corner (61/291) distance from the midline | AU20 (falls with AU14/AU23) |
| au23 | minus the lip-red thickness (0-13 plus 14-17) | AU23/AU24 |
| au25 | inner-lip gap (13-14) | AU25 |
| au26 | chin (152) distance below the eye line | AU26 |

The proxies are features, not intensities: `media.au_calibration` maps them to FACS intensity with a fit
against ground truth.
"""

from __future__ import annotations

import numpy as np

from annotation.regions import eye_centres

PROXIES: tuple[str, ...] = (
    "au1_r", "au1_l", "au2_r", "au2_l", "au4", "au5_r", "au5_l", "au6_r", "au6_l", "au9",
    "au12_r", "au12_l", "au17", "au20_r", "au20_l", "au23", "au25", "au26",
)  # fmt: skip


def face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The face-aligned frame of (..., 468, 2+) landmarks: origin (eye midpoint), unit axes ex (eye line,
    towards the subject's left) and ey (down), and the inter-ocular distance (..., 1)."""
    eye_r, eye_l = eye_centres(np.asarray(landmarks, np.float64))
    axis = eye_l - eye_r
    iod = np.linalg.norm(axis, axis=-1, keepdims=True)
    ex = axis / iod
    return (eye_r + eye_l) / 2, ex, np.stack([-ex[..., 1], ex[..., 0]], -1), iod


def aligned(landmarks: np.ndarray) -> np.ndarray:
    """(..., 468, 2+) landmarks -> (..., 468, 2) in the face-aligned, IOD-normalised frame."""
    xy = np.asarray(landmarks, np.float64)[..., :2]
    origin, ex, ey, iod = face_frame(xy)
    rel = xy - origin[..., None, :]
    return np.stack([(rel * ex[..., None, :]).sum(-1), (rel * ey[..., None, :]).sum(-1)], -1) / iod[..., None]


def au_proxies(landmarks: np.ndarray) -> np.ndarray:
    """(T, 468, 2+) -> (T, len(PROXIES)) raw proxy values (see module table)."""
    p = aligned(np.asarray(landmarks)[None] if np.ndim(landmarks) == 2 else landmarks)
    x, y = p[..., 0], p[..., 1]
    mid_lip = (y[..., 0] + y[..., 17]) / 2
    cols = [
        -y[..., 55],
        -y[..., 285],
        -y[..., 46],
        -y[..., 276],
        -(x[..., 285] - x[..., 55]),
        y[..., 145] - y[..., 159],
        y[..., 374] - y[..., 386],
        -y[..., 145],
        -y[..., 374],
        -(y[..., 0] - (y[..., 98] + y[..., 327]) / 2),
        mid_lip - y[..., 61],
        mid_lip - y[..., 291],
        -(y[..., 152] - y[..., 17]),
        -x[..., 61],
        x[..., 291],
        -((y[..., 13] - y[..., 0]) + (y[..., 17] - y[..., 14])),
        y[..., 14] - y[..., 13],
        y[..., 152],
    ]
    return np.stack(cols, -1).astype(np.float32)


def relative_to(values: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Subtract a neutral baseline (a (K,) vector, e.g. the median proxies of a neutral clip)."""
    return np.asarray(values) - np.asarray(baseline)[None]
