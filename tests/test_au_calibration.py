"""The calibrated AU measure: recomputed on fresh renders of the test identity (a person nothing was fitted
or chosen on), the shipped fit beats the old proxy scales and matches its published error; the fit records
its fit / selection / test identities; the measurability rule fails a channel that carries no signal, a
DISFA-style folder refits it, and evidence reports only what the measure can see."""

from __future__ import annotations

import numpy as np
import pytest

from media.au_calibration import MAX_DETECTABLE, MIN_R, Calibration, ViewFit, channel_au, load, quality

VALIDATOR_AUS = {1, 2, 4, 12, 15}  # core AUs of sad / surprise / happy / contempt it must see


def test_shipped_fit_beats_the_old_proxy_scales_on_fresh_renders_of_the_test_identity():
    """Recompute the error instead of reading it from the JSON: 200 frames of the test identity (the
    astronaut) with random AU intensities (a seed the calibration did not draw), seen at 48 px as the
    pipeline sees them (H.264, tracked upscaled), read by `Calibration.measure` against the person's
    neutral frames. Measured 2026-12-05 (fit on Grace Hopper and Obama, selected on Biden; seeds 1-3): MAE
    over the 5 measurable channels (all read by the old scales) 0.81-0.87 vs their 0.88-0.97 (x0.89-0.94),
    published 0.86; mean r 0.61-0.67, published 0.64 (the fit selected on a mirror of its own photograph,
    2026-12-04: r 0.49-0.51). A reading of 0 everywhere scores 0.81-0.92: at 48 px the measure correlates
    with the truth on a person it was not fitted on, but its intensities are no closer than 0."""
    from media.face import FaceAnalyzer
    from pipelines.calibrate import _view, legacy_reading, random_intensities
    from pipelines.demo_corpus.au_templates import CHANNELS
    from pipelines.demo_corpus.corpus import ExpressionRenderer, _prepare
    from pipelines.demo_corpus.portraits import calibration_people

    cal = load()
    person = calibration_people(None, 6)[-1]
    assert person.name == cal.provenance["test"]
    truth = random_intensities(np.random.default_rng(1), 200)
    with FaceAnalyzer() as fa:
        crop, lm = _prepare(fa, person, 128)
    rest = np.zeros((4, len(CHANNELS)))  # neutral frames: the person's baseline, as `render_sets` takes it
    feats, iod = _view(ExpressionRenderer(crop, lm).frames(np.concatenate([rest, truth])), 48, 20)
    base, seen = np.median(feats[: len(rest)], 0), feats[len(rest) :]
    view = cal.view(iod)
    assert view.name == "48px", (view.name, iod)
    read = cal.measure(seen, base, iod)
    assert set(read) == set(view.measurable()) and len(read) >= 5
    cal_err, old_err, every, r = [], [], [], []
    for c, values in read.items():
        want = truth[:, CHANNELS.index(c)]
        every.append(np.abs(values - want).mean())
        r.append(np.corrcoef(values, want)[0, 1] if values.std() > 0 else 0.0)
        old = legacy_reading(c, seen - base)
        if old is not None:
            cal_err.append(every[-1])
            old_err.append(np.abs(old - want).mean())
    cal_mae, old_mae, mae, mean_r = np.mean(cal_err), np.mean(old_err), np.mean(every), np.mean(r)
    published = np.mean([view.channels[c].mae for c in read])
    published_r = np.mean([view.channels[c].r for c in read])
    assert len(cal_err) >= 5 and cal_mae < 0.93 * old_mae, (cal_mae, old_mae)
    assert abs(mae - published) < 0.1 and abs(mean_r - published_r) < 0.1, (
        mae,
        published,
        mean_r,
        published_r,
    )
    assert mean_r > 0.35, r


def test_the_fit_records_its_fit_selection_and_test_identities():
    """Fitted on the first identities, ridge penalty and measurable channels chosen on the second-to-last,
    errors published on the last: the astronaut, the demo's validation speaker, a person in no fit identity."""
    from pipelines.calibrate import PENALTIES
    from pipelines.demo_corpus.portraits import calibration_people, heldout_portrait

    cal = load()
    p = cal.provenance
    names = [s.name for s in calibration_people(None, 6)]
    assert "renders" in p["fitted_on"]
    assert p["fit"] == names[:-2] and p["select"] == names[-2] and p["test"] == names[-1]
    assert len({*p["fit"], p["select"], p["test"]}) == len(p["fit"]) + 2  # disjoint
    assert p["test"] == heldout_portrait().name == "Astronaut"
    for v in cal.views:
        assert v.penalty in PENALTIES and set(v.penalties) == {f"{x:g}" for x in PENALTIES}
        assert v.penalties[f"{v.penalty:g}"] == min(v.penalties.values())  # the selection's best
        assert (
            v.frames["select"] == v.frames["test"] > 0 and v.frames["fit"] == len(p["fit"]) * v.frames["test"]
        )
        for c, f in v.channels.items():  # measurability was decided on the selection identity
            det = f.selection["min_detectable"]
            on_select = f.selection["r"] >= MIN_R and det is not None and det <= MAX_DETECTABLE
            assert f.measurable == on_select, (v.name, c, f.selection)
    table = cal.table()
    assert f"test identity {p['test']}" in table and f"selection identity {p['select']}" in table
    assert "| AU12_R |" in table and "Test identity's clips at 48px" in table


def test_the_calibration_is_fitted_selected_and_tested_on_different_people():
    """dlib (a judge nobody here trained) puts the built-in calibration's selection person (Biden), its test
    person (the astronaut) and each fit identity at least its same-person threshold (0.6) apart, and the two
    fitted photographs (Grace Hopper, Obama) too; a fit photograph's mirrored variant is the same person
    (augmentation within the fit). Before 2026-12-05 the selection identity was Grace Hopper's photograph
    mirrored (0.21 from the fit identity), and the measure chosen there did not transfer to the astronaut."""
    from pipelines.demo_corpus.portraits import calibration_people
    from tests.conftest import face_descriptors

    split = load().provenance  # its names are calibration_people's: test_the_fit_records_its_fit_...
    d = face_descriptors({p.name: p.image for p in calibration_people(None, 6)})

    def dist(a: str, b: str) -> float:
        return float(np.linalg.norm(d[a] - d[b]))

    assert dist(split["select"], split["test"]) >= 0.6
    for fit in split["fit"]:
        assert dist(fit, split["select"]) >= 0.6 and dist(fit, split["test"]) >= 0.6, fit
    assert dist("GraceHopper", "Obama") >= 0.6
    assert dist("GraceHopper", "GraceHopperMirror") < 0.6 and dist("Obama", "ObamaMirror") < 0.6


def test_shipped_fit_measures_the_validators_aus():
    cal = load()
    at_corpus_size = cal.view(30.0)  # the demo corpus's 128 px frames: ~30 px between the eyes
    seen = {channel_au(c)[0] for c in at_corpus_size.measurable()}
    assert VALIDATOR_AUS <= seen, seen
    # The tiny model's 48 px frames (IOD 12). AU15 (sad, disgust) is not measurable below 128 px since the
    # selection identity is another person (Biden: r 0.47-0.57 at 48 px; 2026-12-05); AU9 and AU15 were, while
    # it was the fitted photograph mirrored.
    at_model_size = {channel_au(c)[0] for c in cal.view(12.0).measurable()}
    assert {1, 2, 4, 12} <= at_model_size, at_model_size
    assert not {25, 26} & seen  # speech AUs are not told apart from each other: left to lip sync


@pytest.mark.xfail(strict=True, reason="AU6 at 48 px: r 0.20 on the selection person, Biden (bar 0.6), 0.60 on the "
                   "test person (2026-12-05); measurable only while the fit was chosen on its test clips")  # fmt: skip
def test_the_cheek_raiser_is_measurable_at_the_models_size():
    assert 6 in {channel_au(c)[0] for c in load().view(12.0).measurable()}


def test_calibration_needs_fit_selection_and_test_subjects(tmp_path):
    from pipelines.calibrate import CalibrateConfig, run_calibrate
    from tbd_core.errors import UserError

    with pytest.raises(UserError, match="at least 3 subjects"):
        run_calibrate(CalibrateConfig(identities=2, out=tmp_path / "fit.json"))


def test_a_channel_without_signal_is_unmeasurable():
    rng = np.random.default_rng(0)
    truth = np.where(rng.random(400) < 0.5, rng.uniform(0.5, 5, 400), 0.0)
    good = quality(truth + rng.normal(0, 0.3, 400), truth, None)
    noise = quality(rng.permutation(truth), truth, None)  # a reading that ignores the face
    assert good.measurable and good.r > 0.9 and good.min_detectable <= 1.0
    assert not noise.measurable and abs(noise.r) < 0.2


def test_measure_reports_only_measurable_channels_and_reads_zero_at_baseline():
    cal = load()
    view = cal.view(30.0)
    base = np.zeros(len(cal.features))
    readings = cal.measure(base[None], base, 30.0)
    assert set(readings) == set(view.measurable()) and all(v[0] == 0 for v in readings.values())


def test_evidence_only_for_measurable_channels():
    from media.au_evidence import clip_evidence

    names = ["AU4", "AU5", "AU12_R"]
    summary = {"au_names": names, "au_measurable": ["AU4", "AU12_R"], "au_mean": [1.0, 3.0, 0.5],
               "au_p10": [0.0, 0.0, 0.0], "au_p90": [2.0, 4.0, 1.0]}  # fmt: skip
    evidence = {(e.au, e.side): e for e in clip_evidence(summary, np.array([0.5, 0.5, 0.5]))}
    assert set(evidence) == {(4, "both"), (12, "right")}  # AU5 is not seen: no evidence either way
    assert evidence[(4, "both")].peak == 1.5 and evidence[(4, "both")].mean == 0.5


def _labelled_subject(folder, name: str, fa, person, n: int, rng, size: int = 128) -> None:
    """A DISFA-style subject: `name`.mp4 of `n` rendered frames of `person` at `size` px (the first 5
    neutral) with AU2 and AU12 at random, and their label files `name`_au2.txt, `name`_au12.txt."""
    import cv2

    from media.video_io import write_mp4
    from pipelines.demo_corpus.au_templates import CHANNELS
    from pipelines.demo_corpus.corpus import ExpressionRenderer, _prepare

    crop, lm = _prepare(fa, person, 128)
    au2 = np.where(rng.random(n) < 0.5, rng.uniform(1, 5, n), 0.0)
    au12 = np.where(rng.random(n) < 0.5, rng.uniform(1, 5, n), 0.0)
    au2[:5] = au12[:5] = 0  # neutral frames
    x = np.zeros((n, len(CHANNELS)))
    x[:, CHANNELS.index("AU2")] = au2
    x[:, CHANNELS.index("AU12_R")] = x[:, CHANNELS.index("AU12_L")] = au12
    renderer = ExpressionRenderer(crop, lm)
    frames = (cv2.resize(f, (size, size)) for f in renderer.frames(x))
    write_mp4(folder / f"{name}.mp4", frames, fps=25, crf=18)
    for au, values in ((2, au2), (12, au12)):
        (folder / f"{name}_au{au}.txt").write_text(
            "\n".join(f"{i + 1},{v:.2f}" for i, v in enumerate(values))
        )


def test_disfa_style_labels_refit_the_measure(tmp_path):
    """Three 'subjects' (rendered identities: fit, selection, test) with DISFA-style per-AU label files: the
    fit recovers AU2 and AU12 on the test subject and records what it was fitted on."""
    from media.face import FaceAnalyzer
    from pipelines.calibrate import CalibrateConfig, run_calibrate
    from pipelines.demo_corpus.portraits import builtin_portraits, identities

    rng = np.random.default_rng(1)
    with FaceAnalyzer() as fa:
        for k, person in enumerate(identities(builtin_portraits(), 3)):
            _labelled_subject(tmp_path, f"SN00{k}", fa, person, 60, rng)
    cal = run_calibrate(CalibrateConfig(labels=tmp_path, out=tmp_path / "fit.json"))
    [view] = cal.views
    assert (
        set(view.channels) == {"AU2", "AU12"}
        and view.channels["AU2"].r > 0.8
        and view.channels["AU12"].r > 0.8
    )
    again = load(str(tmp_path / "fit.json"))
    assert again.id == cal.id and "DISFA-style" in again.provenance["fitted_on"]
    # Each channel's noise floor on the selection subject is kept: AU F1's presence level uses it
    assert all(0 <= c.selection["floor"] <= 5 for c in again.views[0].channels.values())
    assert (again.provenance["fit"], again.provenance["select"], again.provenance["test"]) == (
        ["SN000"],
        "SN001",
        "SN002",
    )


def test_a_fit_from_another_feature_set_is_refused(tmp_path):
    import json

    from media.au_calibration import from_json
    from tbd_core.errors import UserError

    cal = Calibration(["au1_r"], [ViewFit("v", 30.0, {})], {})
    cal.save(tmp_path / "old.json")
    with pytest.raises(UserError, match="tbd calibrate"):
        from_json(json.loads((tmp_path / "old.json").read_text()))


def test_a_still_reads_no_action_against_its_own_baseline():
    """The floor: the neutral frame held still (the evaluation's still reference) measured against its own
    baseline reads no AU. The baseline is taken from the still tracked as a video (`track_still`); from the one
    frame alone the mesh came from detection rather than tracking and the astronaut's still read AUs against
    itself (every clip's still classified 'contempt' by check-measures, 2026-12-04)."""
    import cv2

    from annotation.reasoner import ABSENT_PEAK
    from media.au_measure import measured_aus, track_still, track_video
    from media.face import FaceAnalyzer
    from pipelines.demo_corpus.au_templates import CHANNELS
    from pipelines.demo_corpus.corpus import ExpressionRenderer, _prepare
    from pipelines.demo_corpus.portraits import speakers

    for person in speakers(None, 3)[::-2]:  # the astronaut (test) and Grace Hopper (fit)
        with FaceAnalyzer() as fa:
            crop, lm = _prepare(fa, person, 128)
        neutral = ExpressionRenderer(crop, lm).frames(np.zeros((1, len(CHANNELS))))[0]
        frame = cv2.resize(neutral, (48, 48), interpolation=cv2.INTER_AREA)
        still = track_video(np.repeat(frame[None], 16, 0))
        readings = measured_aus(still, track_still(frame).baseline())
        peak = max(max(v for v in series if v is not None) for series in readings.values())
        # Below the level at which Think takes an AU to be absent (the tracker settles over a still's first
        # frames: 0.47 at most on the astronaut, 2026-12-04; with the one-frame baseline 0.64).
        assert peak < ABSENT_PEAK, (person.name, {au: max(s) for au, s in readings.items()})


def test_a_preprocessed_still_held_long_reads_no_action_against_its_own_baseline(datasets):
    """As the check above, on the frame evaluation really uses (the held-out speaker's neutral clip as
    preprocess wrote it, at the model's 48 px) and for as long as a clip lasts (50 frames, not 16). Before
    the face tracker settled each new detection (`media.face.FaceTracker`'s `settle`), the still's baseline
    was taken from its first, unsettled frames and this frame read AU2 1.1-1.2 from the 10th frame on
    (2026-12-05); settled, at most 0.22 over 60 frames (2026-12-06)."""
    from annotation.reasoner import ABSENT_PEAK
    from evaluation.check_measures import iter_split, split_clips
    from media.au_measure import measured_aus, track_still, track_video

    data = datasets["mead"]["data"]
    [neutral] = [k for k, s in split_clips(data, "val").items() if s["emotion"] == "neutral"]
    [frame] = [frames[0] for _, _, frames in iter_split(data, [neutral], 48)]
    readings = measured_aus(track_video(np.repeat(frame[None], 50, 0)), track_still(frame).baseline())
    peaks = {au: max(v for v in series if v is not None) for au, series in readings.items()}
    assert max(peaks.values()) < ABSENT_PEAK, peaks


def test_a_labelled_video_is_tracked_one_frame_at_a_time(tmp_path):
    """`tbd calibrate --labels` streams each subject's video (issue 39: a DISFA subject, 4,845 frames of
    1024x768, is 11 GB decoded): reading a 400-frame 256 px subject (79 MB decoded) allocates under a
    quarter of that at its peak (the code before held every frame, then stacked them: twice the video), and
    every frame's features and labels arrive."""
    import tracemalloc

    from media.face import FaceAnalyzer
    from pipelines.calibrate import label_sets
    from pipelines.demo_corpus.portraits import builtin_portraits, identities

    n, size = 400, 256
    with FaceAnalyzer() as fa:
        _labelled_subject(
            tmp_path, "SN001", fa, identities(builtin_portraits(), 1)[0], n, np.random.default_rng(2), size
        )
    tracemalloc.start()
    try:
        per, channels, _ = label_sets(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    decoded = n * size * size * 3
    assert peak < decoded / 4, f"peak {peak / 1e6:.0f} MB of a {decoded / 1e6:.0f} MB video"
    feats, truth = per["SN001"]
    assert (
        channels == ["AU2", "AU12"] and len(feats) == len(truth) == n and truth[:5].max() == 0 < truth.max()
    )
