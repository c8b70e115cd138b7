"""Progressive guidance: global emotion first, local muscles inside their regions after a switch point.

With ε(·) the denoiser under a set of kept conditions (∅ = the reference alone; a = audio + reference;
g = global emotion text; l = local muscle text: `tbd_lightning.branches`, the chain training drops along) and M the soft union of the annotated AUs' region masks, at progress
p = i/(N - 1) of step i of N (0 at the first step, from pure noise; 1 at the last; one step: p = 0), so the
switch point and the floor are reached as stated at any step count (1 - t/T with trailing timesteps never
reaches 1: at 8 steps w_g ended at 0.445, not the floor):

    ε = ε(∅) + s_a·(ε(a) − ε(∅)) + w_g(p)·s_g·(ε(a,g) − ε(a)) + w_l(p)·s_l·M⊙(ε(a,g,l) − ε(a,g))

w_g is 1 until the switch point p* and then falls linearly to `global_floor` at p = 1; w_l is 0 before
p* and 1 after. All branches of a step run as one batched forward pass; the local branch is skipped while
w_l = 0. Ablations of the same sampler: `single-stage` (w_g = w_l = 1 at every step), `no-masks` (M = 1, and
no local masks in the model either: each local token acts everywhere);
`label-only` concerns the text and is made by the caller (global text = the label caption, no locals; training
sees that caption in its `label` branch).
`cfg` is the plain two-branch baseline, ε(∅) + s_a·(ε(a,g,l) − ε(∅)) (training previews, benchmarks); with
s_a = s_g = s_l it is `single-stage` without M: the matched-strength comparison.

`interval` (p_lo, p_hi) limits guidance to part of the trajectory (Kynkäänniemi et al. 2024, "Applying guidance
in a limited interval"): outside it each step evaluates one branch, the conditions the stage admits, unguided
(ε(a,g) before p*, ε(a,g,l) after; `cfg`: ε(a,g,l)). The cost per step is linear in the branches evaluated
(`benchmarks/bench_sampler.py` profiles it), so this is where the time goes when guidance time matters.
Works with any diffusers scheduler that has `set_timesteps`/`scale_model_input`/`step` (DDIM, Euler, DPM).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from tbd_lightning.branches import BRANCHES
from tbd_lightning.model import CONDITIONS, Conditions

MODES = ("progressive", "single-stage", "no-masks", "cfg")


@dataclass(frozen=True)
class GuidanceConfig:
    steps: int = 40
    scheduler: str = "ddim"  # ddim | euler | dpm
    audio_scale: float = 3.5  # s_a: audio + reference against nothing
    global_scale: float = 3.0  # s_g
    local_scale: float = 3.0  # s_l
    switch: float = 0.4  # p*: where local muscle control starts and global guidance starts to fade
    global_floor: float = 0.3  # w_g at the last step
    mode: str = "progressive"
    guidance_rescale: float = (
        0.0  # Lin et al. 2023 (diffusers' guidance_rescale): 0 off, ~0.7 against oversaturation
    )
    # long videos: frames each window takes from the previous one (0: independent windows; None: as many as
    # the model was trained with, `TBDModule(motion_frames=)`, recorded in the pipeline's conditioning)
    motion_frames: int | None = None
    interval: tuple[float, float] = (0.0, 1.0)  # progress range where guidance applies (outside: 1 branch)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"guidance mode {self.mode!r}; choose one of {MODES}")
        if not 0 <= self.switch <= 1:
            raise ValueError(f"switch point {self.switch} must be in [0, 1]")
        lo, hi = self.interval
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"guidance interval {self.interval} must satisfy 0 <= lo < hi <= 1")
        if self.motion_frames is not None and self.motion_frames < 0:
            raise ValueError(f"motion_frames {self.motion_frames} must be >= 0")

    def weights(self, progress: float) -> tuple[float, float]:
        """(w_g, w_l) at progress p in [0, 1]."""
        if self.mode == "single-stage":
            return 1.0, 1.0
        if progress < self.switch:
            return 1.0, 0.0
        span = max(1e-8, 1 - self.switch)
        return 1.0 - (1.0 - self.global_floor) * (progress - self.switch) / span, 1.0


def step_progress(i: int, steps: int) -> float:
    """Progress p of step i of `steps`: i / (steps - 1), 0 at the first step and 1 at the last (0 with one step)."""
    return i / (steps - 1) if steps > 1 else 0.0


def make_scheduler(name: str, train_config: dict):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    classes = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpm": DPMSolverMultistepScheduler}
    if name not in classes:
        raise ValueError(f"scheduler {name!r}; choose one of {sorted(classes)}")
    return classes[name].from_config(dict(train_config), timestep_spacing="trailing")


def _with_keep(cond: Conditions, kept: tuple[str, ...], masks: bool = True) -> Conditions:
    """`cond` with only the `kept` conditions; `masks=False` also takes the local masks away from the model
    (the no-masks ablation: local tokens act everywhere, and the sampler's M is 1)."""
    b = cond.audio.shape[0]
    keep = {c: torch.full((b,), c in kept, dtype=torch.bool, device=cond.audio.device) for c in CONDITIONS}
    return dataclasses.replace(cond, keep=keep, local_masks=cond.local_masks if masks else None)


class ProgressiveSampler:
    """`sample(shape, cond)` -> denoised samples; `guided(x, t, cond, progress)` -> (ε, terms) for one step."""

    def __init__(self, denoiser: torch.nn.Module, train_scheduler_config: dict, config: GuidanceConfig):
        self.denoiser, self.config = denoiser, config
        self.scheduler = make_scheduler(config.scheduler, train_scheduler_config)
        self.forward_passes = 0  # batched model calls (one per step)
        self.branch_evaluations = 0  # branch rows evaluated (what the cost of a step is linear in)

    def _branches(self, w_l: float) -> list[str]:
        c = self.config
        if c.mode == "cfg":
            return ["none", "agl"]
        names = ["none", "a"]
        if c.global_scale != 0 or (w_l != 0 and c.local_scale != 0):
            names.append("ag")
        if w_l != 0 and c.local_scale != 0:
            names.append("agl")
        return names

    def evaluate(
        self, x, t, cond: Conditions, names: list[str], batched: bool = True
    ) -> dict[str, torch.Tensor]:
        """The denoiser's output under each named branch; one forward pass when `batched`."""
        b, masks = x.shape[0], self.config.mode != "no-masks"
        self.branch_evaluations += len(names)
        if not batched:
            return {n: self.denoiser(x, t.expand(b), _with_keep(cond, BRANCHES[n], masks)) for n in names}
        out = self.denoiser(torch.cat([x] * len(names)), t.expand(b * len(names)),
                            Conditions.cat([_with_keep(cond, BRANCHES[n], masks) for n in names]))  # fmt: skip
        self.forward_passes += 1
        return dict(zip(names, out.chunk(len(names)), strict=True))

    def guided(self, x, t, cond: Conditions, progress: float, batched: bool = True):
        """Guided model output for one step, and its terms (for inspection and tests)."""
        c = self.config
        w_g, w_l = c.weights(progress)
        if not c.interval[0] <= progress <= c.interval[1]:  # unguided: the conditions the stage admits
            name = "agl" if c.mode == "cfg" or (w_l != 0 and c.local_scale != 0) else "ag"
            e = self.evaluate(x, t, cond, [name], batched)
            return e[name], {"conditional": e[name]}
        e = self.evaluate(x, t, cond, self._branches(w_l), batched)
        if c.mode == "cfg":
            terms = {"base": e["none"], "all": c.audio_scale * (e["agl"] - e["none"])}
            return self._rescale(sum(terms.values()), e), terms
        terms = {"base": e["none"], "audio": c.audio_scale * (e["a"] - e["none"])}
        if "ag" in e:
            terms["global"] = w_g * c.global_scale * (e["ag"] - e["a"])
        if "agl" in e:
            mask = cond.region_mask if (c.mode != "no-masks" and cond.region_mask is not None) else None
            local = w_l * c.local_scale * (e["agl"] - e["ag"])
            if mask is not None:
                local = local * torch.nn.functional.adaptive_avg_pool2d(
                    mask.flatten(0, 1), x.shape[-2:]
                ).reshape(*x.shape[:2], 1, *x.shape[-2:])
            terms["local"] = local
        return self._rescale(sum(terms.values()), e), terms

    def _rescale(self, guided: torch.Tensor, e: dict[str, torch.Tensor]) -> torch.Tensor:
        """Guidance rescale (Lin et al. 2023): pull the guided output's std per sample back towards the
        fullest conditional branch's, mixing by `guidance_rescale` (0 = off)."""
        if not self.config.guidance_rescale:
            return guided
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

        full = e[next(n for n in ("agl", "ag", "a") if n in e)]
        return rescale_noise_cfg(guided, full, guidance_rescale=self.config.guidance_rescale)

    @torch.no_grad()
    def sample(
        self, shape: tuple[int, ...], cond: Conditions, generator: torch.Generator | None = None,
        batched: bool = True, progress_bar: bool = False, callback=None, known: torch.Tensor | None = None,
        noise: torch.Tensor | None = None, known_clean: bool = False, known_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Denoise from seeded noise. `callback(step, t, x)` runs after each step and may return a new x.
        `known` (B, k, C, h, w): the first k frames are these (motion frames of the previous window). With
        `known_clean` (a model trained with motion frames: `TBDModule(motion_frames=)`) the model sees them
        clean at every step, as in training; otherwise they are replaced by `known` noised to the step's level
        (RePaint's replacement), so the rest is sampled around them. Either way they are the output's first k.
        `noise` (`shape`), `known_noise` (`known`'s shape): the starting noise and the noise that brings `known`
        to each step's level (default: drawn from `generator`, in that order)."""
        device = cond.audio.device
        sched = self.scheduler
        sched.set_timesteps(self.config.steps, device=device)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=device)
        x = noise.to(device) * sched.init_noise_sigma
        timesteps = sched.timesteps
        if known is not None:
            k = known.shape[1]
            if known_noise is None:
                known_noise = torch.randn(known.shape, generator=generator, device=device)
            x = torch.cat([sched.add_noise(known, known_noise, timesteps[:1]), x[:, k:]], 1)
        for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress_bar)):
            progress = step_progress(i, len(timesteps))
            model_input = sched.scale_model_input(x, t)
            if known is not None and known_clean:  # in the model's input space, as training gives them
                model_input = torch.cat([known.to(model_input.dtype), model_input[:, k:]], 1)
            eps, _ = self.guided(model_input, t, cond, progress, batched)
            x = sched.step(eps, t, x).prev_sample
            if known is not None:
                last = i == len(timesteps) - 1
                level = known if last else sched.add_noise(known, known_noise, timesteps[i + 1 : i + 2])
                x = torch.cat([level.to(x.dtype), x[:, k:]], 1)
            if callback is not None:
                replaced = callback(i, t, x)
                x = x if replaced is None else replaced
        return x
