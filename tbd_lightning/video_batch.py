"""Several videos through one sampler: what `TBDPipeline.generate` batches, and how.

Each video is planned alone (`VideoPlan`: its texts, its windows of the training length and a function
giving the conditions of any of them), then `sample_videos` denoises the windows of all videos together:

- independent windows (no motion frames): every window of every video, in batches of at most
  `max_frames` frames;
- with motion frames: window w of every video that has one, in one batch (each continues from the last
  frames of its own window w - 1), windows in order.

Each video's noise is drawn from its own generator, window by window in the order a lone call draws it and
only when the window's batch is sampled, so a video comes out the same whether it is sampled alone or beside
others, in one batch or many (up to float rounding). (On the CPU, window-by-window draws equal one draw for
every window when a window holds a multiple of 16 values.)

Memory does not grow with the videos' length beyond their samples: each video's frames are one tensor,
allocated at its first batch and filled batch by batch; nothing else of a batch outlives it. (Kept batch
outputs, and the noise of every window drawn before the first batch, sat among the forward passes' freed
buffers, and the heap grew with the number of batches.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np
import torch

from tbd_lightning.model import Conditions


@dataclass
class VideoRequest:
    """One video to generate: `TBDPipeline.__call__`'s inputs (shapes and meaning there)."""

    reference: np.ndarray
    reference_landmarks: np.ndarray
    audio_features: np.ndarray
    cot: dict | None = None
    global_text: str | None = None
    local_text: list[str] | None = None
    regions: tuple[str, ...] | None = None
    label_only: bool = False


@dataclass
class VideoPlan:
    """A planned video: `n_frames`, its windows' first frames `starts`, `conditions(starts)` for any of
    them, the `generator` its noise comes from, and the texts it is conditioned on."""

    n_frames: int
    starts: list[int]
    conditions: Callable[[list[int]], Conditions]
    generator: torch.Generator
    global_text: str
    local_text: list[str] = field(default_factory=list)


Sample = Callable[..., torch.Tensor]  # sample(shape, cond, noise=, known=None, known_noise=None)


def sample_videos(plans: list[VideoPlan], sample: Sample, window: tuple[int, ...], motion: int,
                  max_frames: int | None) -> list[torch.Tensor]:  # fmt: skip
    """Each plan's samples (n_frames, C, h, w). `window` = (frames, C, h, w) of one window; `sample` is the
    sampler call (`ProgressiveSampler.sample` with the pipeline's settings bound); `max_frames`: at most
    this many frames per call (None: all windows of a step at once)."""
    out: list[torch.Tensor | None] = [None] * len(plans)
    for v, w, x in sample_windows(plans, sample, window, motion, max_frames):
        plan, new = plans[v], motion if w else 0  # a window after the first repeats `motion` frames
        if out[v] is None:
            out[v] = x.new_empty((plan.n_frames, *x.shape[1:]))
        at = plan.starts[w] + new
        rows = x[new : new + max(0, plan.n_frames - at)]
        out[v][at : at + len(rows)] = rows
    return out


def sample_windows(plans: list[VideoPlan], sample: Sample, window: tuple[int, ...], motion: int,
                   max_frames: int | None) -> Iterator[tuple[int, int, torch.Tensor]]:  # fmt: skip
    """`sample_videos` window by window: (video, window, its samples (frames, C, h, w)) as each batch is
    sampled (windows after the first begin with the `motion` frames they continue from; the last window
    of a video runs past its `n_frames`)."""
    device = plans[0].generator.device
    per = max(1, (max_frames or 10**9) // window[0])
    if motion == 0:
        rows = [(v, i) for v, p in enumerate(plans) for i in range(len(p.starts))]
        for b in range(0, len(rows), per):
            chunk = rows[b : b + per]
            groups = [(v, [i for _, i in g]) for v, g in groupby(chunk, key=lambda r: r[0])]
            cond = Conditions.cat(
                [plans[v].conditions([plans[v].starts[i] for i in idx]) for v, idx in groups]
            )
            noise = torch.cat(
                [torch.randn((1, *window), generator=plans[v].generator, device=device) for v, _ in chunk]
            )  # each window's noise in its video's order, as a lone call draws it
            x = sample((len(chunk), *window), cond, noise=noise)
            yield from ((v, i, row) for (v, i), row in zip(chunk, x, strict=True))
        return
    last: list[torch.Tensor | None] = [None] * len(plans)  # each video's latest window
    for w in range(max(len(p.starts) for p in plans)):
        active = [v for v, p in enumerate(plans) if w < len(p.starts)]
        for b in range(0, len(active), per):
            chunk = active[b : b + per]
            noise, known_noise = [], []
            for v in chunk:  # a lone call's order: the window's noise, then its known frames' noise
                g = plans[v].generator
                noise.append(torch.randn((1, *window), generator=g, device=device))
                if w:
                    known_noise.append(torch.randn((1, motion, *window[1:]), generator=g, device=device))
            cond = Conditions.cat([plans[v].conditions(plans[v].starts[w : w + 1]) for v in chunk])
            known = torch.cat([last[v][None, -motion:] for v in chunk]) if w else None
            x = sample((len(chunk), *window), cond, noise=torch.cat(noise), known=known,
                       known_noise=torch.cat(known_noise) if w else None)  # fmt: skip
            for v, row in zip(chunk, x, strict=True):
                last[v] = row
                yield v, w, row
