"""Faces at phone-photo scales: a ~70 px face in a 4000x3000 photo is found by the one face finder of
`tbd face`, `tbd generate` and the app (`media.inputs.find_face`), or refused naming the smallest face seen."""

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

FACE_WIDTH = 70  # detection-box width of the pasted face, pixels
AT = (2400, 1100)  # where the face crop's top-left corner goes in the 4000x3000 photo


@pytest.fixture(scope="module")
def phone_photo(analyzer, astronaut):
    """(a 4000x3000 noisy photo with the astronaut's face ~70 px wide pasted in, the face's expected box)."""
    x0, y0, x1, y1 = analyzer.analyze(astronaut).detection.box
    pad = (x1 - x0) / 2  # the crop keeps half a face width around the detection box
    crop = astronaut[int(y0 - pad) : int(y1 + pad), int(x0 - pad) : int(x1 + pad)]
    k = FACE_WIDTH / (x1 - x0)
    small = cv2.resize(crop, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    photo = np.random.default_rng(0).integers(60, 200, (3000, 4000, 3), dtype=np.uint8)
    photo[AT[1] : AT[1] + small.shape[0], AT[0] : AT[0] + small.shape[1]] = small
    ox, oy = AT[0] + (x0 - int(x0 - pad)) * k, AT[1] + (y0 - int(y0 - pad)) * k
    return photo, (ox, oy, ox + FACE_WIDTH, oy + (y1 - y0) * k)


@pytest.fixture(scope="module")
def phone_jpeg(phone_photo, tmp_path_factory) -> Path:
    from media.images import write_image

    path = tmp_path_factory.mktemp("phone") / "phone.jpg"
    write_image(path, phone_photo[0])
    return path


def assert_in_place(box, expected, tolerance: float = 0.2):
    """Centre and width of `box` within `tolerance` x the expected face width."""
    (ax, ay), (bx, by) = (((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in (box, expected))
    assert abs(ax - bx) < tolerance * FACE_WIDTH and abs(ay - by) < tolerance * FACE_WIDTH, (box, expected)
    assert abs((box[2] - box[0]) - FACE_WIDTH) < tolerance * FACE_WIDTH, (box, expected)


def test_a_70px_face_in_a_4000x3000_photo_is_found_in_place(phone_photo):
    from media.inputs import find_face

    photo, expected = phone_photo
    mesh, faces = find_face(photo, Path("phone.jpg"))
    assert len(faces) == 1
    assert_in_place(faces[0].box, expected)
    x0, y0, x1, y1 = mesh.box  # the mesh spans forehead to chin, around the detection box's centre
    cx, cy = (expected[0] + expected[2]) / 2, (expected[1] + expected[3]) / 2
    assert x0 < cx < x1 and y0 < cy < y1 and x1 - x0 < 2 * FACE_WIDTH


def test_tbd_face_and_the_generate_portrait_find_it(phone_jpeg, phone_photo, tmp_path):
    """`tbd face` (a subprocess) and `prepare_portrait` (what `tbd generate` and the app call)."""
    from conftest import run_tbd

    from media.inputs import prepare_portrait

    out = tmp_path / "face.json"
    proc = run_tbd("face", str(phone_jpeg), "--json", str(out), timeout=300)
    assert proc.returncode == 0 and "face found" in proc.stdout, proc.stderr[-2000:]
    assert_in_place(json.loads(out.read_text())["faces"][0]["box"], phone_photo[1])
    portrait = prepare_portrait(phone_jpeg, 128, 1.8)
    assert portrait.crop.shape == (128, 128, 3)
    xy = portrait.landmarks[:, :2]  # crop-normalised: the face fills the middle of the crop
    assert (xy > 0).all() and (xy < 1).all() and 0.35 < xy.mean() < 0.65


def test_no_face_names_the_smallest_face_searched_for_and_what_to_do():
    from media.inputs import find_face
    from tbd_core.errors import UserError

    with pytest.raises(UserError) as err:
        find_face(np.full((3000, 4000, 3), 128, np.uint8), Path("wall.jpg"))
    message = str(err.value)
    assert message.startswith("wall.jpg: no face found") and "4000x3000" in message
    assert "crop the photo around" in message and "\n" not in message
    smallest = int(re.search(r"down to about (\d+) px wide", message).group(1))
    assert 20 <= smallest < FACE_WIDTH  # the pasted face above is within reach


def test_an_ordinary_photo_takes_the_one_pass_it_always_took(analyzer, astronaut):
    """A 640x480 photo with a face: the small-face search adds no detector run."""
    photo = np.full((480, 640, 3), 128, np.uint8)
    photo[:, 64:576] = cv2.resize(astronaut, (512, 480))
    calls = []
    detect_in = analyzer._detect_in

    def counted(*args):
        calls.append(1)
        return detect_in(*args)

    analyzer._detect_in = counted
    try:
        coarse = analyzer.detect_all(photo)
        runs = len(calls)
        fine = analyzer.detect_all(photo, small_faces=True)
    finally:
        del analyzer._detect_in
    assert coarse and len(calls) == 2 * runs and fine[0].box == coarse[0].box
