"""Prompt templates: a fixed system prompt (the CoT method + the knowledge base), few-shot turns whose
answers the deterministic reasoner writes, and a per-request user part. Versioned by content hash."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from annotation.facs import KnowledgeBase, load_kb
from annotation.records import UNKNOWN, ThinkRequest
from annotation.schema import ChainOfThought
from tbd_core.errors import UserError


class Shot(BaseModel):
    model_config = ConfigDict(frozen=True)
    user: str
    assistant: str
    emotion: str = UNKNOWN  # the example's label: not shown for a request of the same emotion


class PromptTemplate(BaseModel):
    """A rendered template: `system` and `few_shot` are the same bytes for every request."""

    model_config = ConfigDict(frozen=True)
    name: str
    system: str
    user: str
    few_shot: tuple[Shot, ...]

    @property
    def hash(self) -> str:
        body = json.dumps([self.system, self.user, [s.model_dump() for s in self.few_shot]])
        return f"{self.name}-" + hashlib.sha256(body.encode()).hexdigest()[:12]

    def render_user(self, request: ThinkRequest) -> str:
        kb = load_kb()
        if request.level is None:
            level = "not given (infer it from the text or the evidence)"
        else:
            letter = kb.level_intensity(request.level)
            level = f"{request.level} of 3 (FACS {letter}, {kb.intensity_scale[letter]})"
        evidence = "; ".join(
            f"AU{e.au}{'' if e.side == 'both' else ' ' + e.side} mean {e.mean:.1f} peak {e.peak:.1f}"
            for e in request.evidence
        )
        if request.emotion != UNKNOWN:
            emotion = request.emotion
        else:  # nothing quotable: the emotions the decoder allows for this request
            from annotation.grounded_schema import allowed_emotions

            emotion = "choose one of " + ", ".join(allowed_emotions(request, kb))
        return self.user.format(
            emotion=emotion,
            level=level,
            text=request.text or "none",
            evidence=evidence or "none (no clip measured)",
        ).strip()

    @property
    def answers(self) -> tuple[str, ...]:
        """The few-shot assistant answers (JSON text)."""
        return tuple(shot.assistant for shot in self.few_shot)

    def messages(self, request: ThinkRequest) -> list[dict[str, str]]:
        """Chat messages for one request: system, the few-shot turns of other emotions (a small model copies
        an example of its own emotion), then the request."""
        msgs = [{"role": "system", "content": self.system}]
        for shot in self.few_shot:
            if request.emotion != UNKNOWN and shot.emotion == request.emotion:
                continue
            msgs += [{"role": "user", "content": shot.user}, {"role": "assistant", "content": shot.assistant}]
        msgs.append({"role": "user", "content": self.render_user(request)})
        return msgs


def _system(text: str, kb: KnowledgeBase) -> str:
    au_table = "\n".join(
        f"AU{a.au} | {a.name} | {', '.join(a.muscles)} | {a.region} | {a.movement}"
        for a in kb.action_units.values()
    )
    prototypes = "\n".join(
        f"{p.emotion}: {'+'.join(map(str, p.core)) or 'none'}; {'+'.join(map(str, p.optional)) or 'none'}"
        + (" (one side only)" if p.unilateral else "")
        for p in kb.emotions.values()
    )
    return text.format(
        levels=", ".join(f"{lvl} -> {letter}" for lvl, letter in kb.mead_level_intensity.items()),
        scale=", ".join(f"{k} {v}" for k, v in kb.intensity_scale.items()),
        contradictions=", ".join(f"AU{a}/AU{b}" for a, b in kb.contradictions),
        au_table=au_table,
        prototypes=prototypes,
    ).strip()


_MEASUREMENT = re.compile(r"\s*\(\d+(?:\.\d+)?\)")  # "AU12 (2.4)": a quoted measurement
_DIGIT = re.compile(r"(?<![AU0-9])\d+")
_WORDS = {"0": "zero", "1": "one", "2": "two", "3": "three"}


def without_numbers(cot: ChainOfThought) -> ChainOfThought:
    """A few-shot answer as the per-request schema lets a model write it: free text without numbers
    (measurements dropped, levels in words), AU names ("AU12") kept."""

    def clean(text: str) -> str:
        return _DIGIT.sub(lambda m: _WORDS.get(m.group(0), ""), _MEASUREMENT.sub("", text))

    units = [u.model_copy(update={"movement": clean(u.movement)}) for u in cot.action_units]
    regions = cot.regions.model_copy(update={k: clean(v) for k, v in cot.regions.model_dump().items()})
    return cot.model_copy(update={"reasoning": [clean(r) for r in cot.reasoning], "action_units": units,
                                  "global_description": clean(cot.global_description), "regions": regions})  # fmt: skip


@functools.cache
def load_template(path: str | None = None) -> PromptTemplate:
    """Load and render a template (default: the packaged `data/prompt_cot.yaml`)."""
    from annotation.reasoner import think

    if path is None:
        raw = resources.files("annotation").joinpath("data/prompt_cot.yaml").read_text()
    elif not Path(path).is_file():
        raise UserError(f"prompt template {path} does not exist")
    else:
        raw = Path(path).read_text()
    spec = yaml.safe_load(raw)
    missing = {"name", "system", "user", "few_shot"} - set(spec)
    if missing:
        raise UserError(f"prompt template {path or 'prompt_cot.yaml'} lacks {sorted(missing)}")
    kb = load_kb()
    partial = PromptTemplate(
        name=spec["name"], system=_system(spec["system"], kb), user=spec["user"], few_shot=()
    )
    shots = []
    for example in spec["few_shot"]:
        request = ThinkRequest(**example)
        answer = without_numbers(think(request, kb)).model_dump_json()
        shots.append(Shot(user=partial.render_user(request), assistant=answer, emotion=request.emotion))
    return partial.model_copy(update={"few_shot": tuple(shots)})
