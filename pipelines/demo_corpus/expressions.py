"""A demo clip's expression: per-frame FACS intensities of the renderer's AU channels. By default the label's
prototype (the same AUs in every clip of an (emotion, level)); with `ClipSpec.variation` the clip's own AUs,
intensities, side and timing drawn within its label, or a compound expression's AUs (`expression_plan`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from annotation.facs import intensity_value, load_kb
from pipelines.demo_corpus.au_templates import BILATERAL, CHANNELS
from tbd_core.errors import UserError

FPS = 25


@dataclass
class ClipSpec:
    layout: str  # mead | hdtf | compound
    identity: str
    speaker: str
    emotion: str  # the expression rendered (for HDTF it is hidden from the dataset: 'unknown' there)
    level: int
    clip: int
    seed: int
    video: str  # relative paths
    audio: str | None
    groundtruth: str
    variation: bool = False  # its AUs drawn within the label (`expression_plan`), not the label's prototype
    speech_seed: int | None = None  # its speech's seed (None: `seed`); one take's clips share it (plan_clips)


# Within-label variation (`--variation true`; our choice of spread, 2026-12-04). The AUs without which the label
# does not read (our choice: the smile, the sad brow and corners, the raised brows, the fear brows and
# stretched lips, the lowered brow and tight lids, the nose wrinkle, the one-sided dimple) are always present;
# the prototype's other core AUs each with `core_p`, its optional AUs with `optional_p` (those the renderer has
# templates for, never one that contradicts a present AU); each AU's apex intensity independently within
# +- `band` of the level's FACS value; onset start and rise time drawn, and with `release_p` a release that
# ends the expression before the clip does. Unilateral AUs on a side drawn per clip.
DEFINING: dict[str, tuple[int, ...]] = {"happy": (12,), "sad": (1, 15), "surprised": (1, 2), "fear": (1, 2, 20),
                                        "angry": (4, 7), "disgusted": (9,), "contempt": (14,)}  # fmt: skip
VARIATION = {"core_p": 0.6, "optional_p": 0.3, "band": 0.6, "start": (0.0, 0.4), "rise": (0.15, 0.6),
             "release_p": 0.35, "release_at": (0.55, 0.85), "release_len": (0.25, 0.5)}  # fmt: skip


def _channels(au: int, side: str | None) -> list[str]:
    """The renderer's channels of one AU: one side for a unilateral AU, both sides of a sided one."""
    if au not in BILATERAL:
        return [f"AU{au}"] if f"AU{au}" in CHANNELS else []
    return [f"AU{au}_{side}"] if side else [f"AU{au}_R", f"AU{au}_L"]


def expression_plan(spec: ClipSpec, rng: np.random.Generator) -> dict[str, float]:
    """A varied clip's expression: renderer channel -> apex FACS intensity (0..5), drawn within its label
    (MEAD emotions) or all of a compound expression's AUs (`spec.layout == 'compound'`). See VARIATION."""
    kb = load_kb()
    base = intensity_value(kb.level_intensity(spec.level))
    if spec.layout == "compound":
        aus, side = list(kb.compound_expressions[spec.emotion]), None
    else:
        proto = kb.prototype(spec.emotion)
        side = str(rng.choice(["L", "R"])) if proto.unilateral else None
        defining = DEFINING.get(spec.emotion, ())
        unseen = {frozenset(c) for c in kb.compound_expressions.values()}
        for _ in range(1000):  # a compound expression's AUs are never a training clip's: drawn again (rare)
            aus = [a for a in proto.core if a in defining or rng.random() < VARIATION["core_p"]]
            for a in proto.optional:
                clash = any({a, b} == set(pair) for b in aus for pair in kb.contradictions)
                if _channels(a, side) and not clash and rng.random() < VARIATION["optional_p"]:
                    aus.append(a)
            if frozenset(aus) not in unseen:
                break
        else:
            raise UserError(
                f"{spec.emotion}: every draw of its AUs is a compound expression's (see VARIATION)"
            )
    band = VARIATION["band"]
    return {
        name: float(np.clip(base + rng.uniform(-band, band), 0.5, 5))
        for a in aus
        for name in _channels(a, side)
    }


def expression_course(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T,) 0..1: a drawn onset start and rise, the apex, and with `release_p` a release before the end."""
    t = np.arange(n_frames) / FPS
    start, rise = rng.uniform(*VARIATION["start"]), rng.uniform(*VARIATION["rise"])
    course = np.clip((t - start) / rise, 0, 1)
    if rng.random() < VARIATION["release_p"]:
        at, length = (
            rng.uniform(*VARIATION["release_at"]) * n_frames / FPS,
            rng.uniform(*VARIATION["release_len"]),
        )
        course *= np.clip(1 - (t - at) / length, 0, 1)
    return course


def expression_timeline(spec: ClipSpec, n_frames: int) -> np.ndarray:
    """(T, len(CHANNELS)) FACS intensities (0..5) of the expression alone (no speech)."""
    kb = load_kb()
    rng = np.random.default_rng(spec.seed)
    t = np.arange(n_frames) / FPS
    au = np.zeros((n_frames, len(CHANNELS)), np.float32)
    if spec.variation:
        plan = expression_plan(spec, rng)
        course = expression_course(n_frames, rng)
        for name, level in plan.items():
            wobble = 1 + 0.06 * np.sin(2 * np.pi * 0.5 * t + rng.uniform(0, 6.28))
            au[:, CHANNELS.index(name)] = level * course * wobble
        return au
    proto = kb.prototype(spec.emotion)  # the label's prototype: the same AUs in every clip of a level
    base = intensity_value(kb.level_intensity(spec.level))
    side = "L" if spec.seed % 2 else "R"
    onset = np.clip(t / 0.32, 0, 1)
    for a in proto.core:
        level = np.clip(base + rng.uniform(-0.3, 0.3), 0.5, 5)
        wobble = 1 + 0.06 * np.sin(2 * np.pi * 0.5 * t + rng.uniform(0, 6.28))
        for name in _channels(a, side if proto.unilateral else None):
            au[:, CHANNELS.index(name)] = level * onset * wobble
    return au


def au_timeline(spec: ClipSpec, n_frames: int, envelope: np.ndarray) -> np.ndarray:
    """(T, len(CHANNELS)) FACS intensities (0..5): the expression (`expression_timeline`), plus speech on
    AU25/26."""
    au = expression_timeline(spec, n_frames)
    env = envelope / max(float(envelope.max()), 1e-6)
    au[:, CHANNELS.index("AU25")] += 3.0 * env
    au[:, CHANNELS.index("AU26")] += 2.0 * env
    return np.clip(au, 0, 5)
