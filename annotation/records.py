"""Typed records of the Think stage: what goes in (`ThinkRequest`), what comes out (`Annotation`)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from annotation.facs import MEAD_EMOTIONS, load_kb
from annotation.schema import ChainOfThought, Side
from tbd_core.errors import UserError

UNKNOWN = "unknown"
MAX_TEXT_CHARS = 500  # free-text emotion: a sentence or two (the prompt and the reasoning quote it)
Outcome = Literal["accepted", "repaired", "rejected"]


class AUEvidence(BaseModel):
    """Measured activity of one AU in a clip, on the FACS scale (0 absent, 1 = A ... 5 = E)."""

    model_config = ConfigDict(frozen=True)
    au: int
    mean: float = Field(ge=0.0, le=5.0)
    peak: float = Field(ge=0.0, le=5.0)
    side: Side = "both"

    @model_validator(mode="after")
    def _check(self) -> AUEvidence:
        load_kb().au(self.au)
        if self.peak < self.mean:
            raise UserError(f"AU{self.au} evidence: peak {self.peak} is below mean {self.mean}")
        return self


class ThinkRequest(BaseModel):
    """One thing to think about: an emotion label and/or free text, a level, and optional evidence.

    `level` is MEAD's 1..3 (None: not given). `emotion` is one of MEAD's eight or "unknown" (HDTF,
    free text); `text` holds at most `MAX_TEXT_CHARS` characters. Bad input raises `UserError` with the
    accepted values.
    """

    model_config = ConfigDict(frozen=True)
    key: str = ""
    emotion: str = UNKNOWN
    level: int | None = None
    text: str | None = None
    evidence: tuple[AUEvidence, ...] = ()

    @field_validator("emotion", mode="before")
    @classmethod
    def _emotion(cls, value) -> str:
        value = (value or UNKNOWN).strip().lower()
        if value != UNKNOWN and value not in MEAD_EMOTIONS:
            raise UserError(
                f"unknown emotion {value!r}; use one of {', '.join(MEAD_EMOTIONS)} or free --text"
            )
        return value

    @field_validator("level")
    @classmethod
    def _level(cls, value):
        if value is not None:
            load_kb().level_intensity(value)
        return value

    @field_validator("text")
    @classmethod
    def _text(cls, value):
        if value is not None and not value.strip():
            raise UserError("the emotion text is empty; give a description such as 'a bittersweet smile'")
        if value is not None and len(value.strip()) > MAX_TEXT_CHARS:
            raise UserError(
                f"the emotion text is {len(value):,} characters long; at most {MAX_TEXT_CHARS} are "
                "accepted: describe the emotion in a sentence or two, e.g. 'a bittersweet smile'"
            )
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _something(self) -> ThinkRequest:
        if self.emotion == UNKNOWN and self.text is None and not self.evidence:
            raise UserError(
                "nothing to think about: give an emotion label, free text or measured AU evidence"
            )
        return self

    def fingerprint(self) -> str:
        """Identity of the request's content (the key excluded): equal requests share one generation."""
        body = self.model_dump(exclude={"key"}, mode="json")
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


class Generation(BaseModel):
    """An engine's raw answer to one request. `attempt` 0 is the version's own sampling; a retry k
    samples with `sampling` (another seed, a temperature above zero)."""

    text: str
    finish_reason: str | None = None
    error: str | None = None
    attempt: int = 0
    sampling: dict | None = None  # the attempt's sampling where it differs from the version's


class EarlierAttempt(BaseModel):
    """A rejected attempt that a retry replaced: kept with the annotation, nothing is lost."""

    attempt: int
    sampling: dict | None
    raw: str
    reasons: list[str]

    @classmethod
    def of(cls, annotation: Annotation) -> EarlierAttempt:
        return cls(
            attempt=annotation.attempt,
            sampling=annotation.sampling,
            raw=annotation.raw,
            reasons=annotation.validation.reasons,
        )


class Validation(BaseModel):
    outcome: Outcome
    changes: list[str] = []
    reasons: list[str] = []


class Provenance(BaseModel):
    """Everything that determines an annotation; `annotation_version` hashes it (outcome excluded).

    `engine` is the decoder (`vllm`, `facs`, or `openai` for an endpoint that is not a vLLM server);
    `route` says how requests reached it (`vllm` in-process, `ray-llm`, `openai` endpoint) and is kept
    out of the version: the same weights, prompt, schema and sampling decode the same annotations
    whichever way they are sent.
    """

    annotation_version: str
    engine: str
    model_id: str
    template_hash: str
    schema_hash: str
    sampling: dict
    kb_version: str
    validator_version: str
    route: str = ""

    @staticmethod
    def version_of(**fields) -> str:
        fields.pop("route", None)
        return "ann-" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


class Annotation(BaseModel):
    """One annotated request: the (possibly repaired) CoT, the raw text, provenance and the outcome."""

    key: str
    request: ThinkRequest
    cot: ChainOfThought | None
    raw: str
    finish_reason: str | None
    validation: Validation
    provenance: Provenance
    attempt: int = 0  # 0: the version's sampling; k > 0: the k-th retry (`sampling` says how it sampled)
    sampling: dict | None = None
    earlier: list[EarlierAttempt] = []  # the rejected attempts before this one, oldest first

    @property
    def accepted(self) -> bool:
        return self.validation.outcome != "rejected"
