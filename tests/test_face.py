import numpy as np
import pytest

from annotation.regions import CHEEK_SEEDS, CHIN, MOUTH_CORNERS, NUM_LANDMARKS, region_landmarks
from media.face import NO_FACE
from media.face_crops import region_masks, smoothed_crops, stable_crop


def test_astronaut_face_and_468_landmarks_inside_the_face_box(analyzer, astronaut):
    result = analyzer.analyze(astronaut)
    assert result.found and result.reason == ""
    lm = result.mesh.landmarks
    assert lm.shape == (468, 3) and np.isfinite(lm).all()
    x0, y0, x1, y1 = result.detection.box
    assert result.detection.score > 0.8
    # The detector box spans brows to mouth; the mesh also covers forehead and chin: allow 25% margin.
    mx, my = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
    assert (lm[:, 0] > x0 - mx).all() and (lm[:, 0] < x1 + mx).all()
    assert (lm[:, 1] > y0 - my).all() and (lm[:, 1] < y1 + my).all()
    for idx in (1, 13, 14, *MOUTH_CORNERS, 33, 263):  # nose tip, lips, mouth corners, eye corners
        assert x0 <= lm[idx, 0] <= x1 and y0 <= lm[idx, 1] <= y1
    # Anatomy: subject's right eye is on the image left; the mouth is below the nose, the chin below both.
    assert lm[33, 0] < lm[263, 0]
    assert lm[33, 1] < lm[1, 1] < lm[13, 1] < lm[CHIN, 1]


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((256, 256, 3), np.uint8),
        np.full((200, 300, 3), 200, np.uint8),
        np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8),
    ],
)
def test_no_face_is_a_result_not_an_exception(analyzer, image):
    result = analyzer.analyze(image)
    assert not result.found and result.reason == NO_FACE


def test_tracking_agrees_with_per_frame_detection(analyzer, astronaut):
    ref = analyzer.analyze(astronaut).mesh.landmarks
    tracked = analyzer.track([astronaut] * 4)
    assert all(r.found for r in tracked)
    iod = analyzer.analyze(astronaut).mesh.interocular
    assert np.abs(tracked[-1].mesh.landmarks[:, :2] - ref[:, :2]).max() < 0.1 * iod


def test_tracking_recovers_after_the_face_is_lost(analyzer, astronaut):
    blank = np.zeros_like(astronaut)
    results = analyzer.track([astronaut, blank, astronaut])
    assert [r.found for r in results] == [True, False, True]


def test_stable_and_smoothed_crops_contain_the_face(analyzer, astronaut):
    meshes = [r.mesh for r in analyzer.track([astronaut] * 3)] + [None]
    crop = stable_crop(meshes)
    x0, y0, x1, y1 = meshes[0].box
    half = crop.size / 2
    assert crop.cx - half <= x0 and x1 <= crop.cx + half and crop.cy - half <= y0 and y1 <= crop.cy + half
    crops = smoothed_crops(meshes)
    assert len(crops) == 4 and abs(crops[-1].cx - crop.cx) < 1.0
    assert stable_crop([None, None]) is None


def test_region_groups_are_valid_and_anatomical():
    groups = region_landmarks()
    assert set(groups) == {"brows", "eyes", "nose", "cheeks", "mouth", "jaw"}
    flat = {k: set().union(*map(set, v)) for k, v in groups.items()}
    for name, idx in flat.items():
        assert idx and all(0 <= i < NUM_LANDMARKS for i in idx), name
    assert set(MOUTH_CORNERS) | {13, 14} <= flat["mouth"]
    assert set(CHEEK_SEEDS) <= flat["cheeks"] and CHIN in flat["jaw"]
    assert not flat["cheeks"] & (flat["mouth"] | flat["eyes"] | flat["nose"])
    assert len(groups["brows"]) == len(groups["eyes"]) == len(groups["cheeks"]) == 2  # one group per side


def test_region_masks_are_soft_and_in_anatomical_order(analyzer, astronaut):
    lm = analyzer.analyze(astronaut).mesh.landmarks
    masks = region_masks(lm, *astronaut.shape[:2])
    ys = np.arange(astronaut.shape[0])[:, None]
    centre_y = {k: float((m * ys).sum() / m.sum()) for k, m in masks.items()}
    assert centre_y["brows"] < centre_y["eyes"] < centre_y["nose"] < centre_y["mouth"] < centre_y["jaw"]
    for name, m in masks.items():
        assert m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1.0 + 1e-6, name
        assert ((m > 0.05) & (m < 0.95)).any(), f"{name} mask is not soft"
    # Cheek mask sits beside the nose, on both sides.
    xs = np.arange(astronaut.shape[1])[None, :]
    nose_x = lm[1, 0]
    cheeks = masks["cheeks"]
    assert (cheeks * (xs < nose_x)).sum() > 0.3 * cheeks.sum() and (
        cheeks * (xs > nose_x)
    ).sum() > 0.3 * cheeks.sum()


def test_face_cli_reports_and_fails_clearly(tmp_path, astronaut):
    from conftest import run_tbd

    from media.images import write_image

    write_image(tmp_path / "a.png", astronaut)
    write_image(tmp_path / "blank.png", np.zeros((128, 128, 3), np.uint8))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    ok = run_tbd("face", str(tmp_path / "a.png"), "--draw", str(tmp_path / "drawn.png"))
    assert ok.returncode == 0 and "face found" in ok.stdout and (tmp_path / "drawn.png").exists()
    for name, reason in (
        ("blank.png", "no face found"),
        ("junk.png", "not a readable image"),
    ):  # as generate says
        bad = run_tbd("face", str(tmp_path / name))
        assert bad.returncode == 2
        lines = bad.stderr.strip().splitlines()
        assert reason in lines[-1] and name in lines[-1] and "Traceback" not in bad.stderr


def test_the_shared_analyzer_is_one_per_process_and_closes_cleanly_at_exit():
    """One analyzer per process (LiteRT's start-up once); at exit it closes before MediaPipe's thread pool
    shuts down (with `atexit` it printed "cannot schedule new futures after shutdown")."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from media.face import shared_analyzer\n"
        "a = shared_analyzer(); a.track([np.zeros((64, 64, 3), np.uint8)])\n"
        "assert shared_analyzer() is a\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-2000:]
