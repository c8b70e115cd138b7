"""The standard metrics (Sync-C/D, LPIPS, FVD, CSIM) from user weights: loading the real file formats
(stand-ins of the same architectures with random weights, `tests.standins`), the protocols on inputs whose
answer is known, and clear errors for wrong files. Scores of random weights mean nothing and are never
asserted as values."""

import numpy as np
import pytest
import torch

from evaluation import standard, syncnet
from tbd_core.errors import UserError
from tests import standins


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    return {
        "syncnet": standins.save_syncnet(d / "syncnet_v2.model"),
        "lpips_backbone": standins.save_alexnet(d / "alexnet-owt.pth"),
        "i3d": standins.save_i3d(d / "i3d_torchscript.pt"),
        "arcface": standins.save_arcface(d / "w600k_stand_in.onnx"),
    }


def test_offset_search_finds_a_known_audio_shift():
    rng = np.random.default_rng(0)
    video = torch.from_numpy(rng.standard_normal((60, 16))).float()
    for shift in (-4, 0, 3):  # audio window m carries video window m + shift
        audio = torch.from_numpy(np.roll(video.numpy(), -shift, 0))
        s = syncnet.offset_search(video, audio)
        assert s["offset"] == shift and s["sync_d"] < 0.5 and s["sync_c"] > 4
    unrelated = syncnet.offset_search(video, torch.from_numpy(rng.standard_normal((60, 16))).float())
    assert unrelated["sync_c"] < 1  # no shift stands out


def test_mfcc_rate_and_energy_coefficient():
    tone = (3000 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.int16)
    m = syncnet.mfcc(tone)
    assert m.shape == (99, 13)  # 25 ms frames every 10 ms over 1 s
    frame = tone[800:1200].astype(np.float64)
    frame = np.append(frame[0], frame[1:] - 0.97 * frame[:-1])  # pre-emphasised as the frame is
    assert np.isclose(m[5, 0], np.log((np.abs(np.fft.rfft(frame, 512)) ** 2 / 512).sum()), atol=0.05)


@pytest.mark.parametrize("seconds", [0.02, 1.0, 2.37])
def test_mfcc_equals_python_speech_features(seconds):
    """SyncNet's MFCCs are `python_speech_features.mfcc(signal, 16000)` (syncnet_python's own call): the
    re-implementation equals the reference on speech-like noise, a silent start included (log of eps)."""
    from python_speech_features import mfcc as reference

    rng = np.random.default_rng(0)
    n = int(seconds * 16000)
    wav = (3000 * rng.standard_normal(n) * np.sin(np.linspace(0, 9, n)) ** 2).astype(np.int16)
    wav[: n // 10] = 0
    ours, theirs = syncnet.mfcc(wav), reference(wav, 16000)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


def test_syncnet_scores_a_video_by_the_protocol(weights):
    net = syncnet.load_syncnet(weights["syncnet"])
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    wav = (0.1 * rng.standard_normal(16000 * 2)).astype(np.float32)
    s = syncnet.sync_scores(net, frames, 25, wav)
    assert -15 <= s["offset"] <= 15 and s["sync_d"] > 0 and s["sync_c"] >= 0
    assert syncnet.sync_scores(net, frames, 25, wav) == s  # eval mode: deterministic
    assert syncnet.sync_scores(net, frames[:5], 25, wav) is None  # under one window past the protocol's last
    assert len(syncnet.resample_frames(frames, 50)) == 20  # 50 fps in: every other frame
    with pytest.raises(ValueError, match="16 kHz"):
        syncnet.sync_scores(net, frames, 25, wav, rate=48000)


def test_wrong_or_missing_weights_are_clear_errors(weights, tmp_path):
    with pytest.raises(UserError, match="not found"):
        syncnet.load_syncnet(tmp_path / "nothing.model")
    with pytest.raises(UserError, match="syncnet_v2"):
        syncnet.load_syncnet(weights["lpips_backbone"])  # AlexNet's keys
    with pytest.raises(UserError, match="AlexNet"):
        standard.LPIPS.from_files(weights["syncnet"], standard_heads())
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="ONNX"):
        standard.ArcFace(tmp_path / "junk.onnx")


def standard_heads():
    from tbd_core.assets import resolve

    return resolve("lpips_heads")


def test_lpips_uses_the_packaged_heads_over_the_user_backbone(weights):
    net = standard.LPIPS.from_files(weights["lpips_backbone"], standard_heads())
    heads = torch.load(standard_heads(), map_location="cpu", weights_only=True)
    assert all(torch.equal(lin.weight, heads[f"lin{k}.model.1.weight"]) for k, lin in enumerate(net.lins))
    backbone = torch.load(weights["lpips_backbone"], weights_only=True)
    assert torch.equal(net.features[3].weight, backbone["features.3.weight"])
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 64, generator=rng) * 2 - 1
    near = (x + 0.05 * torch.randn(x.shape, generator=rng)).clamp(-1, 1)
    far = (x + 0.5 * torch.randn(x.shape, generator=rng)).clamp(-1, 1)
    d_same, d_near, d_far = net(x, x), net(x, near), net(x, far)
    assert d_same.shape == (4,) and torch.all(d_same == 0)
    assert torch.all(d_near < d_far)


def test_fvd_on_16_frame_clips_at_224_px(weights):
    metrics = standard.StandardMetrics.load(i3d=weights["i3d"])  # its stand-in asserts the protocol's input
    rng = np.random.default_rng(2)
    real = [rng.integers(0, 256, (32, 48, 48, 3), dtype=np.uint8) for _ in range(3)]
    alike = [rng.integers(0, 256, (32, 48, 48, 3), dtype=np.uint8) for _ in range(3)]
    dark = [(v // 4).astype(np.uint8) for v in alike]
    near, off = metrics.fvd(real, alike), metrics.fvd(real, dark)
    assert near["fvd_clips"] == 6 and "rank-deficient" in near["fvd_note"]  # 6 clips, 400-d logits
    assert off["fvd"] > 10 * max(near["fvd"], 1e-6)
    short = metrics.fvd([v[:15] for v in real], [v[:15] for v in alike])
    assert "fvd" not in short and "16-frame" in short["fvd_note"]
    assert standard.StandardMetrics().fvd(real, alike) == {} and standard.StandardMetrics().protocols == {}


def test_csim_aligns_faces_to_the_arcface_template(weights, astronaut):
    from media.au_measure import track_video

    face = np.ascontiguousarray(astronaut[20:220, 130:330])  # a square face crop, as the model draws
    video = track_video(np.stack([face, face[:, ::-1].copy()]))
    assert video.found.all()
    xy = video.landmarks[0][:, :2] * 200
    five = np.stack([xy[list(ids)].mean(0) for ids in standard.FIVE_POINTS])
    m = standard.similarity_transform(five, standard.ARCFACE_TEMPLATE)
    moved = five @ m[:, :2].T + m[:, 2]
    assert np.abs(moved - standard.ARCFACE_TEMPLATE).max() < 6  # a face's 5 points land on the template
    metrics = standard.StandardMetrics.load(arcface=weights["arcface"])
    itself = track_video(face[None])
    row = metrics.score_clip(face[None], None, 25, None, itself, face, itself.landmarks[0])
    assert row["csim_frames"] == 1 and row["csim"] == pytest.approx(1.0, abs=1e-6)
    mirrored = track_video(face[None, :, ::-1].copy())
    other = metrics.score_clip(
        face[None, :, ::-1].copy(), None, 25, None, mirrored, face, itself.landmarks[0]
    )
    assert other["csim"] < 0.999  # a mirrored face embeds differently
    faceless = metrics.score_clip(face[None], None, 25, None, track_video(np.zeros_like(face)[None]), face,
                                  itself.landmarks[0])  # fmt: skip
    assert "csim" not in faceless  # frames without a face are not scored


def test_similarity_transform_recovers_a_known_one():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([4.0, -9.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = standard.similarity_transform(src, src @ rot.T + shift)
    assert np.allclose(m[:, :2], rot) and np.allclose(m[:, 2], shift)
