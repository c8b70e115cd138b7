"""Validate (and repair) an engine's answer against the FACS knowledge base and the request.

Outcomes: `accepted` (as generated), `repaired` (registry facts filled in or request metadata corrected;
every change listed), `rejected` (reasons listed; the clip goes to the reject ledger). Repairs never add
an AU: a missing core AU or an unknown AU id rejects. Grounding: an AU annotated at C or stronger that
the clip's measured evidence shows absent rejects. Faithfulness (`annotation.faithfulness`): a label the
evidence does not support, misquoted measurements, a clearly measured AU left out silently, degenerate
text, a copied few-shot answer and text about something other than the face reject; a global or region
sentence that contradicts the AU list (an unlisted AU, an intensity word against its AU's letter) is
rewritten from the list (a repair, listed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import ValidationError

from annotation import faithfulness
from annotation.facs import KnowledgeBase, load_kb
from annotation.reasoner import ABSENT_PEAK, global_description, region_sentences
from annotation.records import UNKNOWN, Generation, ThinkRequest, Validation
from annotation.schema import ChainOfThought

VALIDATOR_VERSION = "validator-4"  # bump when a rule changes: it enters the annotation version


def parse(generation: Generation) -> tuple[dict | None, list[str]]:
    """Raw text -> JSON object, or the reasons it is unusable."""
    if generation.error:
        return None, [f"engine error: {generation.error}"]
    if generation.finish_reason == "length":
        return None, ["truncated output (finish_reason=length): the JSON is incomplete; raise max_tokens"]
    try:
        data = json.loads(generation.text)
    except json.JSONDecodeError as err:
        return None, [f"invalid JSON: {err.msg} at char {err.pos}"]
    if not isinstance(data, dict):
        return None, [f"invalid JSON: expected an object, got {type(data).__name__}"]
    return data, []


def validate(
    data: dict, request: ThinkRequest, kb: KnowledgeBase | None = None, examples: Sequence[str] = ()
) -> tuple[ChainOfThought | None, Validation]:
    """Check a parsed answer; return the (repaired) CoT and the outcome. `examples`: the few-shot answers
    the model was shown (an answer that copies one is rejected)."""
    kb = kb or load_kb()
    changes: list[str] = []
    reasons: list[str] = []

    # Unknown AU ids reject before the schema is applied, with a clear message.
    units = data.get("action_units") if isinstance(data.get("action_units"), list) else []
    for unit in units:
        au = unit.get("au") if isinstance(unit, dict) else None
        if isinstance(au, int) and au not in kb.action_units:
            reasons.append(f"AU{au} does not exist in the FACS knowledge base")
    # Registry facts (name, muscle, region, movement) are repaired before the schema sees them.
    for unit in units:
        if isinstance(unit, dict) and unit.get("au") in kb.action_units:
            ref = kb.au(unit["au"])
            facts = {"name": ref.name, "muscle": ", ".join(ref.muscles), "region": ref.region}
            for field, value in facts.items():
                if unit.get(field) != value:
                    changes.append(f"AU{ref.au} {field}: {unit.get(field)!r} -> {value!r}")
                    unit[field] = value
            if not str(unit.get("movement") or "").strip():
                changes.append(f"AU{ref.au} movement filled from the registry")
                unit["movement"] = ref.movement
    if reasons:
        return None, Validation(outcome="rejected", reasons=reasons)
    try:
        cot = ChainOfThought.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        return None, Validation(outcome="rejected", reasons=[f"schema: {where}: {first['msg']}"])

    # Request metadata: the label and level are facts of the request, not the model's choice.
    expected_level = request.level if request.level is not None else cot.intensity_level
    if request.emotion != UNKNOWN and cot.emotion != request.emotion:
        changes.append(f"emotion: {cot.emotion!r} -> {request.emotion!r}")
        cot.emotion = request.emotion
    if cot.intensity_level != expected_level:
        changes.append(f"intensity_level: {cot.intensity_level} -> {expected_level}")
        cot.intensity_level = expected_level

    # Structure: steps and a global sentence must exist; duplicate AUs are dropped (never added).
    if not any(step.strip() for step in cot.reasoning):
        reasons.append("no reasoning steps")
    if not cot.global_description.strip():
        reasons.append("empty global description")
    seen, kept = set(), []
    for unit in cot.action_units:
        if (unit.au, unit.side) in seen:
            changes.append(f"AU{unit.au} ({unit.side}) listed twice: duplicate dropped")
            continue
        seen.add((unit.au, unit.side))
        kept.append(unit)
    cot.action_units = kept

    reasons += _plausibility(cot, request, kb)
    reasons += faithfulness.check(cot, request, kb, examples)
    if reasons:
        return None, Validation(outcome="rejected", reasons=reasons, changes=changes)

    # Region sentences: a region with AUs but no sentence is filled from the AUs' registry movements.
    generated = region_sentences(cot.action_units, kb)
    for region in kb.regions:
        if getattr(generated, region) and not getattr(cot.regions, region).strip():
            changes.append(f"regions.{region} filled from its AUs")
            setattr(cot.regions, region, getattr(generated, region))
    # Sentences that contradict the AU list (an unlisted AU, an intensity word against its AU's letter) are
    # rewritten from it, as the rule reasoner writes them: the texts Draw reads say what the AUs say.
    for field, why in faithfulness.sentence_conflicts(cot, kb).items():
        if field == "global_description":
            cot.global_description = global_description(cot.emotion, cot.action_units, _scale(cot, kb), kb)
        else:
            region = field.removeprefix("regions.")
            setattr(cot.regions, region, getattr(generated, region))
        changes.append(
            f"{field} rewritten from the AU list: " + "; ".join(w.removeprefix(field + " ") for w in why)
        )
    left = faithfulness.unfaithful_sentences(cot, kb)
    if left:  # a rewrite is consistent by construction; never accept one that is not
        return None, Validation(outcome="rejected", reasons=left, changes=changes)
    return cot, Validation(outcome="repaired" if changes else "accepted", changes=changes)


def _scale(cot: ChainOfThought, kb: KnowledgeBase) -> str:
    """The intensity letter a rewritten global sentence names: the level's, else the strongest AU's."""
    level = kb.mead_level_intensity.get(cot.intensity_level)
    return level or max((u.intensity for u in cot.action_units), default="C")


def _plausibility(cot: ChainOfThought, request: ThinkRequest, kb: KnowledgeBase) -> list[str]:
    reasons = []
    present = {u.au for u in cot.action_units}
    if request.emotion != UNKNOWN:
        proto = kb.prototype(request.emotion)
        measured = {}
        for ev in request.evidence:
            measured[ev.au] = max(measured.get(ev.au, 0.0), ev.peak)
        missing = [
            au for au in proto.core if au not in present and measured.get(au, ABSENT_PEAK) >= ABSENT_PEAK
        ]
        if missing:
            reasons.append(
                f"core AUs of {request.emotion} missing without contradicting evidence: "
                + ", ".join(f"AU{au}" for au in missing)
            )
        if proto.unilateral:
            both = [f"AU{u.au}" for u in cot.action_units if u.au in proto.core and u.side == "both"]
            if both:
                reasons.append(f"{request.emotion} is unilateral but {', '.join(both)} act on both sides")
    # Grounding: an AU annotated at C or stronger that the clip's measurements show absent is refused.
    for u in cot.action_units:
        peaks = [
            ev.peak
            for ev in request.evidence
            if ev.au == u.au and (u.side in ("both", ev.side) or ev.side == "both")
        ]
        if peaks and u.intensity >= "C" and max(peaks) < ABSENT_PEAK:
            reasons.append(f"AU{u.au} annotated at {u.intensity} but measured absent (peak {max(peaks):.1f})")
    for a, b in kb.contradictions:
        for ua in (u for u in cot.action_units if u.au == a and u.intensity >= "D"):
            for ub in (u for u in cot.action_units if u.au == b and u.intensity >= "D"):
                if ua.side == ub.side or "both" in (ua.side, ub.side):
                    reasons.append(
                        f"AU{a} ({ua.intensity}) contradicts AU{b} ({ub.intensity}) on the same side"
                    )
    return reasons
