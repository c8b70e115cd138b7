"""Evaluation metrics: ideal values on identical inputs, a found lip-sync offset, FID plumbing with a local net."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation import metrics


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_identical_videos_score_ideal_values(video):
    assert metrics.psnr(video, video) == metrics.PSNR_CAP
    assert metrics.ssim(video, video) == pytest.approx(1.0, abs=1e-6)
    lm = np.random.default_rng(1).random((6, 468, 3))
    assert metrics.lmd(lm, lm, 32) == pytest.approx({"lmd_full": 0.0, "lmd_mouth": 0.0}, abs=1e-9)
    # Procrustes-aligned: the same face shifted, scaled and turned scores as identical.
    turn = np.array([[np.cos(0.2), -np.sin(0.2)], [np.sin(0.2), np.cos(0.2)]])
    moved = lm.copy()
    moved[..., :2] = 1.3 * lm[..., :2] @ turn.T + 0.05
    assert metrics.lmd(moved, lm, 32)["lmd_full"] < 1e-6


def test_different_videos_score_worse(video):
    noisy = np.clip(
        video.astype(int) + np.random.default_rng(2).integers(-40, 40, video.shape), 0, 255
    ).astype(np.uint8)
    assert 10 < metrics.psnr(video, noisy) < 40
    assert metrics.ssim(video, noisy) < 0.99  # random texture keeps SSIM high; identical is 1
    lm = np.random.default_rng(1).random((6, 468, 3))
    moved = lm.copy()
    moved[:, list(metrics.mouth_indices()), 1] += 0.1  # only the mouth moves, by 0.1 of the crop
    d = metrics.lmd(lm, moved, 32)
    # 3.2 px moved; the per-frame similarity alignment takes up a little of it (the mouth is ~9 % of points)
    assert 2.7 < d["lmd_mouth"] <= 3.2 and 0 < d["lmd_full"] < d["lmd_mouth"] / 3


def test_lipsync_finds_the_offset_of_shifted_audio():
    rng = np.random.default_rng(3)
    envelope = np.convolve(rng.random(120), np.ones(4) / 4, mode="same")
    mouth = np.concatenate([np.zeros(3), envelope[:-3]]) + 0.01 * rng.standard_normal(120)  # lags by 3 frames
    found = metrics.lipsync(mouth, envelope, max_offset=6)
    # The metric is the offset-0 correlation; the best offset is reported beside it.
    assert found["sync_offset"] == 3 and found["sync_corr_best"] > 0.9 > found["sync_corr"]
    assert metrics.lipsync(envelope, envelope)["sync_offset"] == 0
    assert metrics.lipsync(envelope, envelope)["sync_corr"] == pytest.approx(1.0)
    # A real pairing scores higher than the same mouth against the audio reversed in time.
    assert (
        metrics.lipsync(envelope, envelope)["sync_corr"]
        > metrics.lipsync(envelope, envelope[::-1])["sync_corr"]
    )


def test_psnr_is_the_mean_of_per_frame_psnr(video):
    other = video.copy()
    other[0] = np.clip(other[0].astype(int) + 50, 0, 255)  # one bad frame, the others identical
    per_frame = [metrics.psnr(video[i : i + 1], other[i : i + 1]) for i in range(len(video))]
    assert metrics.psnr(video, other) == pytest.approx(np.mean(per_frame))
    assert per_frame[1:] == [metrics.PSNR_CAP] * (len(video) - 1)
    whole_clip_mse = ((video.astype(float) - other.astype(float)) ** 2).mean()
    assert metrics.psnr(video, other) != pytest.approx(10 * np.log10(255.0**2 / whole_clip_mse))


def test_frechet_estimates_from_few_samples_say_so():
    assert metrics.frechet_note(8, 2048) is not None and "rank-deficient" in metrics.frechet_note(8, 2048)
    assert metrics.frechet_note(4096, 2048) is None


def test_au_control_and_series_errors():
    assert metrics.au_control_error({12: 3.0, 6: 2.0}, {12: [3.0, 4.0, None], 6: [2.0]}) == pytest.approx(
        1 / 3
    )
    assert metrics.au_control_error({12: 3.0}, {12: [None, None]}) is None
    assert metrics.au_control_error({12: 3.0}, {12: [3.0], 4: [1.0, 2.0]}) == pytest.approx(
        1.0
    )  # unrequested: 0
    assert metrics.au_series_error({12: [1.0, 2.0], 9: [5.0]}, {12: [1.5, None], 4: [3.0]}) == pytest.approx(
        0.5
    )


def test_the_nearest_facs_prototype_names_the_emotion():
    """`classify_emotion`: each prototype's own intensities (any level) give its emotion, nothing moving is
    neutral, contempt (AU12 on its own) is not happy (AU6 + AU12), and AUs the measure did not see do not count
    against a prototype."""
    from evaluation.measures import classify_emotion, prototype_templates

    seen = {au for aus in prototype_templates().values() for au in aus} - set(metrics.SPEECH_AUS)
    for (emotion, _), aus in prototype_templates().items():  # every AU measured, 0 outside the prototype
        assert classify_emotion({au: [aus.get(au, 0.0)] * 2 for au in seen}) == emotion
    assert classify_emotion({4: [0.1, 0.0], 12: [0.2, None]}) == "neutral"
    assert (
        classify_emotion({6: [3.0], 12: [3.2]}) == "happy"
        and classify_emotion({6: [0.0], 12: [3.0]}) == "contempt"
    )
    assert classify_emotion({1: [4.0], 4: [4.0], 15: [3.8]}) == "sad"  # AU17 and AU43 unseen: still sad
    assert classify_emotion({}) is None


def test_fid_with_a_local_feature_network(video):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    dark = (b // 4).astype(np.uint8)
    same = metrics.fid(a, b, net, input_size=64)
    far = metrics.fid(a, dark, net, input_size=64)
    assert far > 10 * max(same, 1e-6)
