"""Typed, versioned access to the FACS knowledge base (`annotation/data/facs_kb.yaml`)."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from tbd_core.errors import UserError

Region = Literal["brows", "eyes", "nose", "cheeks", "mouth", "jaw"]
Intensity = Literal["A", "B", "C", "D", "E"]
INTENSITY_LETTERS: tuple[str, ...] = ("A", "B", "C", "D", "E")


class ActionUnit(BaseModel):
    model_config = ConfigDict(frozen=True)
    au: int
    name: str
    muscles: tuple[str, ...]
    region: Region
    movement: str


class EmotionPrototype(BaseModel):
    model_config = ConfigDict(frozen=True)
    emotion: str
    core: tuple[int, ...]
    optional: tuple[int, ...] = ()
    unilateral: bool = False


class KnowledgeBase(BaseModel):
    model_config = ConfigDict(frozen=True)
    version: str
    regions: tuple[Region, ...]
    action_units: dict[int, ActionUnit]
    emotions: dict[str, EmotionPrototype]
    mead_level_intensity: dict[int, Intensity]
    contradictions: tuple[tuple[int, int], ...]
    intensity_scale: dict[Intensity, str]
    lexicon: dict[str, dict[str, float]]
    intensity_words: dict[str, int]
    negations: tuple[str, ...] = ()
    hedges: dict[str, float] = {}
    scope_breaks: tuple[str, ...] = ()
    modifier_scope: int = 3
    compound_expressions: dict[str, tuple[int, ...]] = {}  # category -> prototypical AUs (Du et al. 2014)

    def au(self, au_id: int) -> ActionUnit:
        if au_id not in self.action_units:
            raise UserError(
                f"AU{au_id} is not in the FACS knowledge base (known: {sorted(self.action_units)})"
            )
        return self.action_units[au_id]

    def prototype(self, emotion: str) -> EmotionPrototype:
        key = emotion.strip().lower()
        if key not in self.emotions:
            raise UserError(f"unknown emotion {emotion!r}; MEAD emotions are: {', '.join(self.emotions)}")
        return self.emotions[key]

    def region_landmarks(self, region: str) -> tuple[tuple[int, ...], ...]:
        """The 468-mesh landmark groups of a region (one group per side for bilateral regions)."""
        from annotation.regions import region_landmarks

        if region not in self.regions:
            raise UserError(f"unknown face region {region!r}; regions are: {', '.join(self.regions)}")
        return region_landmarks()[region]

    def contradicts(self, a: int, b: int) -> bool:
        return (a, b) in self.contradictions or (b, a) in self.contradictions

    def level_intensity(self, level: int) -> Intensity:
        if level not in self.mead_level_intensity:
            raise UserError(f"intensity level {level!r} is out of range; MEAD levels are 1, 2, 3")
        return self.mead_level_intensity[level]


def compound_text(name: str) -> str:
    """The free text that names a compound expression category of `compound_expressions`, as a user types
    it: "happily_surprised" -> "happily surprised" (`reasoner.compound_named` reads it back)."""
    return name.replace("_", " ")


def intensity_value(letter: str) -> int:
    """FACS letter A..E -> 1..5 (0 means absent)."""
    return INTENSITY_LETTERS.index(letter) + 1


def intensity_letter(value: float) -> Intensity:
    """FACS scale value (1..5, rounded and clipped) -> letter A..E."""
    return INTENSITY_LETTERS[min(max(round(value), 1), 5) - 1]  # type: ignore[return-value]


@functools.cache
def load_kb() -> KnowledgeBase:
    raw_bytes = resources.files("annotation").joinpath("data/facs_kb.yaml").read_bytes()
    raw = yaml.safe_load(raw_bytes)
    return KnowledgeBase(
        version="facs-" + hashlib.sha256(raw_bytes).hexdigest()[:12],
        regions=tuple(raw["regions"]),
        action_units={int(k): ActionUnit(au=int(k), **v) for k, v in raw["action_units"].items()},
        emotions={k: EmotionPrototype(emotion=k, **v) for k, v in raw["emotions"].items()},
        mead_level_intensity={int(k): v for k, v in raw["mead_level_intensity"].items()},
        contradictions=tuple(tuple(p) for p in raw["contradictions"]),
        intensity_scale=raw["intensity_scale"],
        lexicon=raw["lexicon"],
        intensity_words=raw["intensity_words"],
        negations=tuple(raw.get("negations", ())),
        hedges=raw.get("hedges", {}),
        scope_breaks=tuple(raw.get("scope_breaks", ())),
        modifier_scope=raw.get("modifier_scope", 3),
        compound_expressions={k: tuple(v) for k, v in raw.get("compound_expressions", {}).items()},
    )


MEAD_EMOTIONS: tuple[str, ...] = (
    "angry",
    "contempt",
    "disgusted",
    "fear",
    "happy",
    "neutral",
    "sad",
    "surprised",
)
