"""Several videos through one sampler: what `TBDPipeline.generate` batches, and how.

Each video is planned alone (`VideoPlan`: its texts, its windows of the training length and a function
giving the conditions of any of them), then `sample_videos` denoises the windows of all videos together:

- independent windows (no motion frames): every window of every video, in batches of at most
  `max_frames` frames;
- with motion frames: window w of every video that has one, in one batch (each continues from the last
  frames of its own window w - 1), windows in order.

Each video's noise is drawn from its own generator in the order a lone call draws it, so a video comes out
the same whether it is sampled alone or beside others, in one batch or many (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable
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
    device = plans[0].generator.device
    per = max(1, (max_frames or 10**9) // window[0])
    if motion == 0:
        noise = [torch.randn((len(p.starts), *window), generator=p.generator, device=device) for p in plans]
        rows = [(v, i) for v, p in enumerate(plans) for i in range(len(p.starts))]
        done: list[torch.Tensor] = []
        for b in range(0, len(rows), per):
            chunk = rows[b : b + per]
            groups = [(v, [i for _, i in g]) for v, g in groupby(chunk, key=lambda r: r[0])]
            cond = Conditions.cat(
                [plans[v].conditions([plans[v].starts[i] for i in idx]) for v, idx in groups]
            )
            done.append(
                sample((len(chunk), *window), cond, noise=torch.cat([noise[v][i : i + 1] for v, i in chunk]))
            )
        x = torch.cat(done)
        out, at = [], 0
        for p in plans:
            out.append(x[at : at + len(p.starts)].flatten(0, 1)[: p.n_frames])
            at += len(p.starts)
        return out
    parts: list[list[torch.Tensor]] = [[] for _ in plans]
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
            known = torch.cat([parts[v][-1][None, -motion:] for v in chunk]) if w else None
            x = sample((len(chunk), *window), cond, noise=torch.cat(noise), known=known,
                       known_noise=torch.cat(known_noise) if w else None)  # fmt: skip
            for v, row in zip(chunk, x, strict=True):
                parts[v].append(row)
    return [
        torch.cat([p[0], *(q[motion:] for q in p[1:])])[: plan.n_frames]
        for p, plan in zip(parts, plans, strict=True)
    ]
