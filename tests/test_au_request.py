"""AU F1 against a requested AU specification (`evaluation.au_request`), on the shipped calibration."""

from __future__ import annotations

import pytest

from evaluation.au_request import (
    PRESENT,
    channels_au,
    clip_levels,
    detectable,
    f1,
    person_floor,
    presence,
    score_request,
)
from media.au_calibration import load

IOD = {v.name: v.iod_px for v in load().views}  # the calibration's views: between the eyes, px


def test_only_aus_the_measure_can_see_at_that_size_are_scored():
    """Speech AUs (25-27) are lip sync's, and channels unmeasurable at the view (AU15 at 48 px: r 0.49-0.52
    on the test person, not measurable on the selection person, 2026-12-05) are never scored; a larger face
    sees more (AU15 at 256 px)."""
    small, large = detectable(IOD["48px"]), detectable(IOD["256px"])
    assert {1, 2, 4, 12} <= set(small) and not {15, 25, 26, 27} & set(small)
    assert 15 in large and not {25, 26, 27} & set(large)
    assert all(0 < v <= 3 for v in small.values())  # the calibration's MAX_DETECTABLE


def test_a_request_too_faint_to_tell_from_0_is_neither_a_hit_nor_a_miss():
    least = {4: 2.5, 12: 1.5}
    faint = score_request({4: 1.0, 12: 4.0}, {4: 0.0, 12: 3.0}, least)
    assert faint["au_unscored"] == [4] and faint["au_f1"] == 1.0
    strong = score_request({4: 3.0, 12: 4.0}, {4: 0.0, 12: 3.0}, least)  # the same video, AU4 asked clearly
    assert (
        strong["au_requested"] == [4, 12]
        and strong["au_recall"] == 0.5
        and strong["au_f1"] == pytest.approx(2 / 3)
    )
    assert strong["au_intensity_error"] == pytest.approx((3.0 + 1.0) / 2)


def test_an_au_raised_that_was_not_requested_is_leakage():
    least = {1: 2.5, 4: 2.5, 12: 1.5}
    clean = score_request({12: 4.0}, {1: 0.2, 4: 0.1, 12: 3.5}, least)
    leaky = score_request({12: 4.0}, {1: 0.2, 4: 2.0, 12: 3.5}, least)
    assert (clean["au_f1"], clean["au_leakage"]) == (1.0, 0)
    assert leaky["au_leakage"] == 1 and leaky["au_precision"] == 0.5 and leaky["au_f1"] < clean["au_f1"]


def test_nothing_requested_and_nothing_raised_is_a_perfect_neutral():
    assert f1(set(), set()) == 1.0 and f1(set(), {4}) == 0.0 and f1({4}, set()) == 0.0


def test_the_clip_level_reads_an_expression_that_releases_before_the_end():
    """An AU held for the first 40 % of the frames, then released, is still present at the clip level; a
    single-frame spike (tracking noise) is not; frames without a face (None) are left out."""
    held = [3.0] * 8 + [0.0] * 12
    spike = [0.0] * 19 + [4.0]
    levels = clip_levels({4: held, 12: spike, 1: [None, None, 2.0, 2.0]})
    assert levels[4] >= 0.75 and levels[12] < 0.75 and levels[1] == 2.0


def test_a_face_found_in_under_half_the_frames_is_a_lost_face():
    """A clip whose face is found in 2 of 20 frames (the thesis run's CoT "wins" were read on such clips,
    2026-12-06) has no AU level, so every AU reads absent and a request scores as missed; at half the frames
    the level is read."""
    few = [None] * 18 + [3.0, 3.0]
    half = [None] * 10 + [3.0] * 10
    assert clip_levels({4: few}) == {} and clip_levels({4: half}) == {4: 3.0}
    least = {4: 0.5}
    assert score_request({4: 3.0}, clip_levels({4: few}), least)["au_f1"] == 0.0
    assert score_request({4: 3.0}, clip_levels({4: half}), least)["au_f1"] == 1.0


def test_sided_channels_take_the_larger_side():
    assert channels_au({"AU12_L": 3.1, "AU12_R": 0.0, "AU4": 2.0}) == {12: 3.1, 4: 2.0}


def test_an_au_reads_present_only_above_its_persons_noise_floor():
    """A person whose neutral (talking) clips read AU2 up to 1.3 does not have AU2 at a clip level of 1.0; a
    person whose neutral clips read it near 0 does. The level is never below `PRESENT` nor the calibration's
    floor of the selection person, and frames without a face are left out of the floor."""
    iod = IOD["48px"]
    noisy = person_floor([{2: [0.2, 1.3, 1.3, 1.3, None]}, {2: [1.3] * 20}])
    quiet = person_floor([{2: [0.0, 0.1, 0.05, None] * 5}])
    assert noisy[2] == pytest.approx(1.3) and quiet[2] < 0.2
    calibration = presence(iod)
    assert all(v >= PRESENT for v in calibration.values())
    assert presence(iod, quiet) == calibration and presence(iod, noisy)[2] == pytest.approx(1.3)
    least = detectable(iod)
    clip = {1: 0.0, 2: 1.0, 4: 0.0, 12: 0.0}
    assert score_request({}, clip, least, presence(iod, noisy))["au_present"] == []
    assert score_request({}, clip, least, presence(iod, quiet))["au_present"] == [2]
