"""Frame-aligned audio features: log-mel (default, no weights) or a pretrained speech encoder from a
local folder (e.g. wav2vec2-base saved with `save_pretrained`; Hallo/EmoCAST use wav2vec2), its last
hidden states resampled to the video frame rate. Nothing is downloaded: the folder must exist."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from media.video_io import AUDIO_RATE
from tbd_core.errors import UserError


def log_mel(audio: np.ndarray, n_frames: int, n_mels: int, fps: int = 25, chunk: int = 250) -> np.ndarray:
    """(T, n_mels) log-mel features, one row per video frame (hop = 16000 / fps samples). A rate that does
    not divide 16 kHz (30 fps: 533.3 samples) is computed on a 10 ms grid and row k taken at k / fps s, so
    the features stay on the video's clock over any length. Computed `chunk` rows at a time (the same
    values): the working memory does not grow with the speech."""
    if AUDIO_RATE % fps:
        fine_hop = AUDIO_RATE // 100
        fine = log_mel(audio, int(np.ceil(n_frames * 100 / fps)) + 1, n_mels, 100, chunk)
        return fine[
            np.minimum(np.round(np.arange(n_frames) * AUDIO_RATE / fps / fine_hop).astype(int), len(fine) - 1)
        ]
    from threadpoolctl import threadpool_limits
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    hop, n_fft = AUDIO_RATE // fps, 1024
    n = n_frames * hop  # the audio as used: cut, or zero-padded, to the frames
    mel = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=20.0,
        max_frequency=AUDIO_RATE / 2, sampling_rate=AUDIO_RATE, norm="slaney", mel_scale="slaney",
    )  # fmt: skip
    window = window_function(n_fft, "hann")
    out = np.empty((n_frames, n_mels), np.float16)
    # One BLAS thread: the product is small, and idle OpenBLAS threads spin after it, stealing a core from
    # whatever runs next (video decode: 4x slower in the preprocess stage on 2 cores).
    with threadpool_limits(limits=1, user_api="blas"):
        for a in range(0, n_frames, chunk):
            b = min(n_frames, a + chunk)
            # Rows a..b-1 are the frames of samples [a * hop, (b - 1) * hop + n_fft) of the centred audio:
            # the used audio reflected by n_fft // 2 at both ends (the spectrogram's `center`)
            t = np.abs(np.arange(a * hop, (b - 1) * hop + n_fft) - n_fft // 2)
            t = np.where(t >= n, 2 * (n - 1) - t, t)
            if n <= n_fft // 2 or len(audio) == 0:  # too short for one reflection: as the spectrogram pads
                used = np.pad(audio, (0, max(0, n - len(audio))))[:n]
                span = np.pad(used, n_fft // 2, mode="reflect")[a * hop : (b - 1) * hop + n_fft]
            else:
                span = np.where(t < len(audio), np.asarray(audio)[np.minimum(t, len(audio) - 1)], 0)
            out[a:b] = spectrogram(
                span, window, frame_length=n_fft, hop_length=hop, power=2.0, mel_filters=mel,
                log_mel="log10", center=False,
            ).T  # fmt: skip
    return out


@functools.cache
def _encoder(path: str):
    import torch
    from transformers import AutoFeatureExtractor, AutoModel

    if not Path(path).is_dir():
        raise UserError(f"audio encoder folder {path} does not exist (give a local save_pretrained folder)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    return AutoFeatureExtractor.from_pretrained(path, local_files_only=True), model, device


def encoder_features(audio: np.ndarray, n_frames: int, path: str) -> np.ndarray:
    """(T, D) last hidden states of the encoder at `path`, linearly resampled to `n_frames` rows."""
    import torch

    extractor, model, device = _encoder(path)
    inputs = extractor(audio, sampling_rate=AUDIO_RATE, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(inputs["input_values"].to(device)).last_hidden_state[0].float().cpu().numpy()
    src = np.linspace(0, 1, len(hidden))
    dst = np.linspace(0, 1, n_frames)
    return np.stack([np.interp(dst, src, hidden[:, d]) for d in range(hidden.shape[1])], 1).astype(np.float16)


def audio_features(
    audio: np.ndarray, n_frames: int, n_mels: int, fps: int, encoder: str | None
) -> np.ndarray:
    return encoder_features(audio, n_frames, encoder) if encoder else log_mel(audio, n_frames, n_mels, fps)
