"""Synthetic speech-like audio: voiced syllables at a speaking rate, 16 kHz mono.

A glottal pulse train (F0 with a slow intonation drift) is shaped by two formant resonators per
syllable (vowel table) and gated by a syllable envelope (raised-cosine bumps, ~4-5 per second, with
pauses). The envelope at video frame rate drives the jaw (AU25/26) of the rendered face, so lip-sync
is measurable: mouth opening follows the audio energy.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from media.video_io import AUDIO_RATE

VOWELS = {"a": (730, 1090), "e": (530, 1840), "i": (270, 2290), "o": (570, 840), "u": (300, 870)}


def _resonator(x: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    r = np.exp(-np.pi * bandwidth / sr)
    theta = 2 * np.pi * freq / sr
    return lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)


def syllable_envelope(
    seconds: float, rng: np.random.Generator, sr: int = AUDIO_RATE, lead_in: float = 0.2
) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """Envelope (N,) in [0, 1] and syllables as (start, end, vowel) sample spans."""
    n = int(round(seconds * sr))
    env = np.zeros(n)
    spans, t = [], lead_in
    while t < seconds - 0.12:
        dur = rng.uniform(0.14, 0.30)
        if rng.random() < 0.18:  # a pause between words
            t += rng.uniform(0.12, 0.25)
            continue
        a, b = int(t * sr), min(n, int((t + dur) * sr))
        peak = rng.uniform(0.55, 1.0)
        env[a:b] = peak * np.sin(np.linspace(0, np.pi, b - a)) ** 2
        spans.append((a, b, str(rng.choice(list(VOWELS)))))
        t += dur + rng.uniform(0.02, 0.08)
    return env, spans


def synth_speech(
    seconds: float, rng: np.random.Generator, f0: float = 160.0, sr: int = AUDIO_RATE
) -> tuple[np.ndarray, np.ndarray]:
    """Return (audio (N,) float32 in [-1, 1], envelope (N,) in [0, 1])."""
    n = int(round(seconds * sr))
    env, spans = syllable_envelope(seconds, rng, sr)
    t = np.arange(n) / sr
    pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6.28)))
    phase = np.cumsum(pitch / sr)
    source = (phase % 1.0) * 2 - 1  # sawtooth: a crude glottal source, rich in harmonics
    source += 0.05 * rng.standard_normal(n)
    out = np.zeros(n)
    for a, b, vowel in spans:
        f1, f2 = VOWELS[vowel]
        seg = source[a:b]
        voiced = _resonator(seg, f1, 90, sr) + 0.6 * _resonator(seg, f2, 120, sr)
        out[a:b] = voiced / (
            np.sqrt((voiced**2).mean()) + 1e-9
        )  # equal loudness: energy follows the envelope
    out *= env
    peak = np.abs(out).max()
    audio = (0.7 * out / peak) if peak > 0 else out
    return audio.astype(np.float32), env.astype(np.float32)
