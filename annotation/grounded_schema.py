"""A decoding schema per request: what the knowledge base and the clip's measurements allow, and nothing else.

`decoding_schema()` admits any emotion word, any AU, any intensity and free text with numbers; a small model
uses that freedom to copy the prompt ("not labelled"), misquote a measurement or loop. `request_schema`
narrows it for one `ThinkRequest`, so the decoder (vLLM's structured outputs, an OpenAI-compatible server's
`response_format`) rules those answers out before the validator sees them:

- `emotion`: the label when there is one; for an unlabelled clip the emotions its measurements support
  (at least half of the prototype's core AUs present) and `neutral`; for free text the emotions it reads as.
- `intensity_level`: the request's level when given.
- `action_units`: first, in order, the AUs the answer must contain (the label's core AUs that the evidence
  does not contradict, then every AU measured clearly present); after them at most the candidates (the
  prototypes' AUs and the AUs measured present), never an AU measured absent. Each AU's name, muscle and
  region are fixed to its id, its movement is one of the registry's clauses; intensity letters lie within
  one letter of the measured peak (measured AUs) or of the level's intensity; sides: one for a unilateral
  prototype (contempt), the same for all its AUs (where AU12 peaks higher, else the subject's right, as the
  rule reasoner chooses), the measured side for an AU measured on one side only, else both.
- the texts Draw reads are filled-in templates of the registry's phrases for the candidate AUs: the global
  sentence ("A severe happy expression: cheeks lifted, lips parted.", the level's intensity word, at most
  two clauses), one sentence per moving region ("Strongly: lips parted."), "" for a region at rest. A
  135M model wrote fluent text about something else into free fields (the validator's `off_topic_text`).
- the reasoning steps are free text without digits except the candidates' AU names ("AU12"), braces or
  angle brackets: nothing to misquote, no placeholder numbers ("}}" and "<br>" came from a penalised model).
- contradictory pairs: the weaker AU stays at C or below, so the two are never both D or E.

The validator still judges every answer (schemas are narrowing, not trust). Field order is the record's
(reasoning first). `SCHEMA_RULES` enters the schema hash, so a change gives new annotation versions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re

from annotation.facs import INTENSITY_LETTERS, KnowledgeBase, intensity_letter, load_kb
from annotation.faithfulness import measured_peaks, measured_support
from annotation.reasoner import (
    ABSENT_PEAK,
    ADVERB,
    CLEAR_PEAK,
    PRESENT_PEAK,
    peaks_by_side,
    text_cues,
    unilateral_side,
)
from annotation.records import UNKNOWN, ThinkRequest
from annotation.schema import MAX_AUS, decoding_schema

SCHEMA_RULES = "grounded-9"  # bump when the rules below change (9: ABSENT_PEAK 0.5 -> 1.0)


def measured(request: ThinkRequest) -> dict[int, float]:
    """AU -> highest measured peak over sides."""
    return {au: peak for au, (peak, _) in measured_peaks(request).items()}


def absent_sides(request: ThinkRequest, au: int) -> set[str]:
    """The sides the clip's measurements show `au` absent on (the validator's grounding rule)."""
    out = set()
    for side in ("left", "right"):
        peaks = [ev.peak for ev in request.evidence if ev.au == au and ev.side in (side, "both")]
        if peaks and max(peaks) < ABSENT_PEAK:
            out.add(side)
    return out


def allowed_emotions(request: ThinkRequest, kb: KnowledgeBase) -> list[str]:
    if request.emotion != UNKNOWN:
        return [request.emotion]
    if request.text:
        weights, _ = text_cues(request.text, kb)
        return sorted(weights) or sorted(kb.emotions)
    supported = []
    for emotion in kb.emotions:
        core, present = measured_support(emotion, request, kb)
        if core and len(present) >= len(core) / 2:  # what `unsupported_label` accepts
            supported.append(emotion)
    return sorted({*supported, "neutral"})


def _free_text(max_length: int, aus: list[int]) -> dict:
    """Text without digits (but the names of `aus`: "AU12"), braces or angle brackets."""
    names = "|".join(str(au) for au in sorted(aus, key=lambda a: -a))  # longest first: AU12 before AU1
    char = f"(?:[^0-9{{}}<>]|AU(?:{names}))" if names else "[^0-9{}<>]"
    return {"type": "string", "maxLength": max_length, "pattern": f"^{char}*$"}


def _escape(phrase: str) -> str:
    return re.sub(r"([.^$*+?()\[\]{}|\\-])", r"\\\1", phrase)  # regex metacharacters only (not spaces)


def _alternatives(phrases) -> str:
    return "(?:" + "|".join(_escape(p) for p in sorted(set(phrases), key=lambda p: (-len(p), p))) + ")"


def _clauses(aus, kb: KnowledgeBase) -> list[str]:
    """The registry's movement clauses of `aus` ("lip corners pulled up and back obliquely", ...)."""
    return [c.strip() for au in aus for c in kb.au(au).movement.split(";") if c.strip()]


def _templates(emotions: list[str], aus: list[int], kb: KnowledgeBase, level: str | None) -> dict:
    """The texts Draw reads, as templates the model fills with knowledge-base phrases: the global sentence
    ("A marked happy expression: cheeks lifted, lip corners pulled up and back obliquely.") and one
    sentence per moving region ("Clearly: lips parted."), or "" for a region at rest."""
    clause = _alternatives(_clauses(aus, kb))
    scale = _alternatives([kb.intensity_scale[level]] if level else kb.intensity_scale.values())
    listed = f"(?:: {clause}(?:, {clause})?)?" if _clauses(aus, kb) else ""  # no AUs: no list
    glob = f"^A {scale} {_alternatives(emotions)} expression{listed}\\.$"
    adverb = _alternatives(a.capitalize() for a in ADVERB.values())
    regions = {}
    for region in kb.regions:
        mine = _alternatives(_clauses([au for au in aus if kb.au(au).region == region], kb))
        side = "(?: on the (?:left|right) side only)?"
        regions[region] = f"^(?:{adverb}: {mine}{side}(?:; {mine}{side})?\\.)?$"  # two clauses: no loops
    return {"global": glob, "regions": regions}


def _band(letter: str) -> list[str]:
    i = INTENSITY_LETTERS.index(letter)
    return list(INTENSITY_LETTERS[max(0, i - 1) : i + 2])


def _unit(au: int, kb: KnowledgeBase, letters: list[str], sides: list[str]) -> dict:
    """One AU's item: its registry facts fixed, its intensity and side among `letters` and `sides`."""
    ref = kb.au(au)
    props = {
        "au": {"type": "integer", "enum": [au]},
        "name": {"type": "string", "enum": [ref.name]},
        "intensity": {"type": "string", "enum": letters},
        "side": {"type": "string", "enum": sides},
        "region": {"type": "string", "enum": [ref.region]},
        "muscle": {"type": "string", "enum": [", ".join(ref.muscles)]},
        "movement": {"type": "string", "enum": sorted({ref.movement, *_clauses([au], kb)})},
    }
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def request_schema(request: ThinkRequest, kb: KnowledgeBase | None = None) -> dict:
    """The JSON schema the decoder enforces for `request` (see the module docstring)."""
    kb = kb or load_kb()
    schema = copy.deepcopy(decoding_schema())
    props = schema["properties"]
    emotions = allowed_emotions(request, kb)
    peaks = measured(request)
    protos = [kb.prototype(e) for e in emotions]
    must = [
        au
        for au in (protos[0].core if request.emotion != UNKNOWN else ())
        if peaks.get(au, 5.0) >= ABSENT_PEAK
    ]
    must += [
        au for au, p in sorted(peaks.items()) if p >= CLEAR_PEAK and au not in must and au in kb.action_units
    ]
    candidates = {au for p in protos for au in (*p.core, *p.optional)} | {
        au for au, p in peaks.items() if p >= PRESENT_PEAK
    }
    may = sorted(
        au for au in candidates - set(must) if peaks.get(au, 5.0) >= ABSENT_PEAK and au in kb.action_units
    )
    level_letter = kb.level_intensity(request.level) if request.level is not None else None
    unilateral = {au for p in protos if p.unilateral for au in p.core}
    one_side = unilateral_side(peaks_by_side(request.evidence))  # all of them on the rule reasoner's side

    # Of a contradictory pair among the AUs, the weaker (by measurement, then not required) stays at C or
    # below, so the two can never both be D or E (the validator's rule).
    capped = set()
    for a, b in kb.contradictions:
        if a in candidates | set(must) and b in candidates | set(must):
            capped.add(min((a, b), key=lambda au: (peaks.get(au, 0.0), au in must, -au)))

    def unit(au: int) -> dict:
        if au in peaks:
            letters = _band(intensity_letter(max(peaks[au], 1.0)))
        else:
            letters = _band(level_letter) if level_letter else list(INTENSITY_LETTERS)
        if au in capped:
            letters = [x for x in letters if x <= "C"] or ["C"]
        sides = [one_side] if au in unilateral and request.emotion != UNKNOWN else ["both"]
        gone = absent_sides(request, au)  # a side measured absent is no choice (both: when one side acts)
        if len(gone) == 1:  # measured on one side only: that side
            sides = [s for s in ("left", "right") if s not in gone]
        return _unit(au, kb, letters, sides)

    aus = sorted({*must, *may})
    props["emotion"] = {"type": "string", "enum": emotions}
    if request.level is not None:
        props["intensity_level"] = {"type": "integer", "enum": [request.level]}
    props["reasoning"]["items"] = _free_text(props["reasoning"]["items"]["maxLength"], aus)
    templates = _templates(emotions, aus, kb, level_letter)
    props["global_description"] = {"type": "string", "maxLength": props["global_description"]["maxLength"],
                                   "pattern": templates["global"]}  # fmt: skip
    moving = {kb.au(au).region for au in aus}
    for name, field in props["regions"]["properties"].items():  # at rest: ""; moving: its AUs' clauses
        region = {"type": "string", "maxLength": field["maxLength"], "pattern": templates["regions"][name]}
        props["regions"]["properties"][name] = region if name in moving else {"type": "string", "enum": [""]}
    units = {"type": "array", "minItems": len(must), "maxItems": min(MAX_AUS, len(must) + len(may))}
    if must:
        units["prefixItems"] = [unit(au) for au in must]
    units["items"] = {"anyOf": [unit(au) for au in may]} if may else False
    props["action_units"] = units
    return schema


def schema_rules_hash() -> str:
    """What the schema of every request is made from: the base schema, the rules and the evidence levels they
    read (provenance: the levels are the rule reasoner's, so moving one changes every LLM version too)."""
    body = json.dumps(
        [decoding_schema(), SCHEMA_RULES, ABSENT_PEAK, PRESENT_PEAK, CLEAR_PEAK], sort_keys=True
    )
    return SCHEMA_RULES + "-" + hashlib.sha256(body.encode()).hexdigest()[:12]
