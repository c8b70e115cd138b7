"""Sync-C / Sync-D (a.k.a. LSE-C / LSE-D) with SyncNet (`syncnet_v2`, Chung & Zisserman, "Out of time",
ACCV 2016 workshops), from the user's `syncnet_v2.model`; nothing is downloaded.

The architecture and protocol are those of `joonson/syncnet_python` (`SyncNetModel.py`,
`SyncNetInstance.evaluate`), which Wav2Lip's `scores_LSE`, Hallo and EchoMimic report: video at 25 fps as
5-frame windows of 224 x 224 BGR crops in 0..255; audio at 16 kHz as int16-scaled MFCCs (13 x 20 per window,
`python_speech_features.mfcc` defaults, re-implemented here bit for bit); features of every window; the
mean distance at each audio shift of -15..15 frames (zero vectors beyond the ends); Sync-D = the smallest
mean distance, Sync-C = median - smallest, offset = the best shift. One deviation, recorded in `PROTOCOL`:
our frames are already square face crops, so each is resized whole to 224 (as Wav2Lip's scorer does)
instead of S3FD's 2.8x face box; absolute values may differ from S3FD-cropped numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tbd_core.errors import UserError

FPS, RATE, WINDOW, VSHIFT = 25, 16000, 5, 15
PROTOCOL = (
    "syncnet_v2 (joonson/syncnet_python SyncNetInstance.evaluate): 25 fps, 16 kHz, 5-frame windows, "
    "audio shifts -15..15 frames; whole square face crop resized to 224 px (Wav2Lip's scorer), not S3FD's box"
)


class SyncNet(nn.Module):
    """`syncnet_v2`'s network `S`: lip (B, 3, 5, 224, 224) and audio (B, 1, 13, 20) -> (B, 1024) each. Module
    names are the state-dict keys of the released `syncnet_v2.model`."""

    def __init__(self, embedding: int = 1024):
        super().__init__()
        bn, r = nn.BatchNorm2d, lambda: nn.ReLU(inplace=True)  # noqa: E731
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, 1, 1), bn(64), r(), nn.MaxPool2d(1, 1),
            nn.Conv2d(64, 192, 3, 1, 1), bn(192), r(), nn.MaxPool2d(3, (1, 2)),
            nn.Conv2d(192, 384, 3, padding=1), bn(384), r(),
            nn.Conv2d(384, 256, 3, padding=1), bn(256), r(),
            nn.Conv2d(256, 256, 3, padding=1), bn(256), r(), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 512, (5, 4)), bn(512), nn.ReLU(),
        )  # fmt: skip
        self.netfcaud = self._head(embedding)
        self.netfclip = self._head(embedding)
        bn3 = nn.BatchNorm3d
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2), 0), bn3(96), r(), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), bn3(256), r(),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3(256), r(),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3(256), r(),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3(256), r(), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6), padding=0), bn3(512), r(),
        )  # fmt: skip

    @staticmethod
    def _head(embedding: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding))

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(x).flatten(1))


def load_state(path: Path | str, what: str):
    """A user's weight file read safely (`weights_only`); UserError naming `what` when missing or unreadable."""
    if not Path(path).is_file():
        raise UserError(f"{path} not found: give {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise UserError(f"{path} is not {what}: {e}") from e


def load_syncnet(path: Path | str) -> SyncNet:
    """The user's `syncnet_v2.model` (a state dict with the keys of `SyncNet`; `num_batches_tracked` may be
    absent, as in files saved by old torch). Raises `UserError` for a missing file or other keys."""
    state = load_state(path, "the syncnet_v2.model file of syncnet_python")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    net = SyncNet()
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except (RuntimeError, AttributeError) as e:
        raise UserError(f"{path} is not a syncnet_v2 state dict: {e}") from e
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(
            f"{path} is not a syncnet_v2 state dict: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    return net.eval()


def _mel_filters(n: int = 26, nfft: int = 512, rate: int = RATE) -> np.ndarray:
    hz2mel, mel2hz = lambda hz: 2595 * np.log10(1 + hz / 700.0), lambda m: 700 * (10 ** (m / 2595.0) - 1)  # noqa: E731
    bins = np.floor((nfft + 1) * mel2hz(np.linspace(hz2mel(0), hz2mel(rate / 2), n + 2)) / rate).astype(int)
    bank = np.zeros((n, nfft // 2 + 1))
    for j in range(n):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        bank[j, lo:mid] = (np.arange(lo, mid) - lo) / (mid - lo)
        bank[j, mid:hi] = (hi - np.arange(mid, hi)) / (hi - mid)
    return bank


def mfcc(signal: np.ndarray, rate: int = RATE) -> np.ndarray:
    """`python_speech_features.mfcc(signal, rate)` with its defaults (25 ms rectangular frames every 10 ms,
    26 mel filters, 512-point FFT, pre-emphasis 0.97, lifter 22, c0 = log frame energy): (T, 13), 100 rows
    per second, for `signal` in int16 units."""
    from scipy.fft import dct

    x = np.asarray(signal, np.float64)
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])
    length, step = round(0.025 * rate), round(0.01 * rate)
    n = 1 if len(x) <= length else 1 + math.ceil((len(x) - length) / step)
    x = np.concatenate([x, np.zeros((n - 1) * step + length - len(x))])
    frames = x[np.arange(length)[None] + step * np.arange(n)[:, None]]
    power = np.abs(np.fft.rfft(frames, 512)) ** 2 / 512
    tiny = np.finfo(float).eps
    energy = np.where(power.sum(1) == 0, tiny, power.sum(1))
    mel = power @ _mel_filters(rate=rate).T
    out = dct(np.log(np.where(mel == 0, tiny, mel)), type=2, axis=1, norm="ortho")[:, :13]
    out *= 1 + 11 * np.sin(np.pi * np.arange(13) / 22)
    out[:, 0] = np.log(energy)
    return out


def offset_search(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> dict:
    """The protocol's scores from per-window features (N, D) of video and audio: mean distance at each audio
    shift -vshift..vshift (zero vectors past the ends), Sync-D = its minimum, Sync-C = median - minimum,
    offset = vshift - argmin (positive: the audio comes late)."""
    win = 2 * vshift + 1
    padded = torch.nn.functional.pad(audio, (0, 0, vshift, vshift))
    dists = torch.stack([torch.nn.functional.pairwise_distance(video[[i]].repeat(win, 1), padded[i : i + win])
                         for i in range(len(video))], 1)  # fmt: skip
    mean = dists.mean(1)
    best, at = torch.min(mean, 0)
    return {"sync_c": float(torch.median(mean) - best), "sync_d": float(best), "offset": int(vshift - at)}


def resample_frames(frames: np.ndarray, fps: float, rate: float = FPS) -> np.ndarray:
    """(T, ...) frames at `fps` -> frames at `rate`: at each output time the nearest earlier-or-equal frame."""
    if abs(fps - rate) < 1e-6:
        return frames
    n = int(math.floor(len(frames) * rate / fps + 1e-9))
    return frames[np.minimum((np.arange(n) * fps / rate + 1e-9).astype(int), len(frames) - 1)]


@torch.no_grad()
def sync_scores(net: SyncNet, frames: np.ndarray, fps: float, wav: np.ndarray, rate: int = RATE,
                batch: int = 20) -> dict | None:  # fmt: skip
    """Sync-C / Sync-D / offset of a talking-head video: `frames` (T, S, S, 3) uint8 RGB square face crops at
    `fps`, `wav` mono float in [-1, 1] at `rate` (16 kHz). None when shorter than 6 frames at 25 fps (one
    window needs 5, the protocol's last window is dropped)."""
    import cv2

    if rate != RATE:
        raise ValueError(f"SyncNet's protocol takes 16 kHz audio, not {rate} Hz")
    frames = resample_frames(frames, fps)
    pcm = np.clip(np.round(np.asarray(wav, np.float64) * 32768), -32768, 32767)
    usable = min(len(frames), len(pcm) // (RATE // FPS))
    if usable - WINDOW < 1:
        return None
    device = next(net.parameters()).device
    bgr = np.stack(
        [cv2.resize(f[..., ::-1], (224, 224), interpolation=cv2.INTER_LINEAR) for f in frames[:usable]]
    )
    video = torch.from_numpy(bgr).float().permute(3, 0, 1, 2)[None]  # (1, 3, T, 224, 224), 0..255
    cep = torch.from_numpy(mfcc(pcm).T.astype(np.float32))[None, None]  # (1, 1, 13, 100 per s)
    lip, aud = [], []
    for i in range(0, usable - WINDOW, batch):
        idx = range(i, min(usable - WINDOW, i + batch))
        lip.append(net.forward_lip(torch.cat([video[:, :, v : v + WINDOW] for v in idx]).to(device)).cpu())
        aud.append(net.forward_aud(torch.cat([cep[..., 4 * v : 4 * v + 20] for v in idx]).to(device)).cpu())
    return offset_search(torch.cat(lip), torch.cat(aud))
