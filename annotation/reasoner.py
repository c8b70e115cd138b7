"""The deterministic FACS reasoner: the Chain-of-Thought method of the prompt, executed by rules.

It follows the same steps the LLM is taught (appraise → select AUs from the knowledge base → weigh the
measured evidence → describe regions → one global sentence) and fills the same schema. It is the offline
default engine and the reference the validator compares LLM outputs against.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from annotation.facs import KnowledgeBase, compound_text, intensity_letter, intensity_value, load_kb
from annotation.records import UNKNOWN, AUEvidence, ThinkRequest
from annotation.schema import MAX_AUS, AUDescription, ChainOfThought, RegionDescriptions
from annotation.text_rules import phrase_problems
from tbd_core.errors import UserError

REASONER_VERSION = "facs-reasoner-5"  # bump when the rules change: it enters the annotation version
# A measured peak below FACS trace (A = 1.0) contradicts an AU. Was 0.5, under the measure's noise: on corpus 3's
# training people (W001/W002, the fit identities; 2026-12-06) 19 of the 23 core AUs its variation left out of a
# clip stayed in the clip's CoT (their peaks 0.52-0.94 where the AU was not rendered), so the CoT said what the
# label says. At 1.0: 14 of 23 left out, 1 of 113 rendered core AUs lost (AU5 of a surprised clip, peak 0.90);
# over every measured AU of those clips, present vs rendered: F1 0.932 (recall 0.99; the best threshold, 1.25:
# 0.941, recall 0.96). The validator's and the decoding schema's "measured absent" is this same level.
ABSENT_PEAK = 1.0
PRESENT_PEAK = 1.5  # measured peak at or above this supports adding an optional / observed AU
CLEAR_PEAK = 2.5  # clearly present: an answer that leaves such an AU out must say so (validator)
DEFAULT_SIDE = "right"  # unilateral AUs without side evidence: the subject's right
ADVERB = {"A": "barely", "B": "slightly", "C": "clearly", "D": "strongly", "E": "maximally"}
QUOTE_CHARS = 80  # the reasoning quotes at most this much of a free text


def peaks_by_side(evidence: tuple[AUEvidence, ...]) -> dict[int, dict[str, float]]:
    """AU -> {side: peak}, 'both' holding the maximum over sides."""
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for ev in evidence:
        out[ev.au][ev.side] = max(out[ev.au].get(ev.side, 0.0), ev.peak)
    for sides in out.values():
        sides["both"] = max(sides.values())
    return out


@dataclass(frozen=True)
class TextReading:
    """What the rule engine reads in free text (`read_text`)."""

    weights: dict[str, float]  # normalised emotion weights, strongest first; {} when nothing is recognised
    level: int | None  # from intensity words and hedges; None when the text gives none
    negated: tuple[str, ...] = ()  # emotion words a negation cancels ("no anger")
    hedged: tuple[str, ...] = ()  # emotion words a hedge weakens ("a little sad")


_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|[^\sa-z']")


def read_text(text: str, kb: KnowledgeBase) -> TextReading:
    """Free text -> emotion weights and level, by the lexicon and its modifiers: a negation cancels the
    emotion and intensity words after it (within `kb.modifier_scope` words of its clause), a hedge scales
    the next emotion word's weight and lowers the level to 1 when it weakens the dominant emotion. A text
    whose emotion words are all negated reads as neutral."""
    tokens = _TOKEN.findall(text.lower().replace("\u2019", "'"))
    weights: dict[str, float] = defaultdict(float)
    plain: set[str] = set()  # emotions read from at least one unhedged word
    levels, negated, hedged = [], [], []
    negation_left, hedge = 0, None  # words a negation still covers; the pending hedge's factor
    skip = False
    for i, tok in enumerate(tokens):
        if skip:  # the second word of a two-word hedge ("a little")
            skip = False
            continue
        if not tok[0].isalpha() or tok in kb.scope_breaks:  # punctuation or "but": the clause ends
            negation_left, hedge = 0, None
            continue
        pair = f"{tok} {tokens[i + 1]}" if i + 1 < len(tokens) else ""
        if tok in kb.negations or tok.endswith("n't"):
            negation_left = kb.modifier_scope
            continue
        if pair in kb.hedges or tok in kb.hedges:
            hedge, skip = kb.hedges.get(pair, kb.hedges.get(tok)), pair in kb.hedges
            if tok in kb.intensity_words:
                levels.append(kb.intensity_words[tok])
            continue
        if tok in kb.lexicon:
            if negation_left > 0:
                negated.append(tok)
            else:
                for emotion, weight in kb.lexicon[tok].items():
                    weights[emotion] += weight * (hedge if hedge is not None else 1.0)
                    if hedge is None:
                        plain.add(emotion)
                if hedge is not None:
                    hedged.append(tok)
                hedge = None  # a hedge weakens one emotion word
        elif tok in kb.intensity_words and negation_left <= 0:
            levels.append(kb.intensity_words[tok])
        negation_left -= 1
    if not weights and negated:
        weights["neutral"] = 1.0
    total = sum(weights.values()) or 1.0
    ranked = {e: w / total for e, w in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))}
    level = max(levels) if levels else None
    if ranked and next(iter(ranked)) not in plain and hedged:  # the dominant emotion is only hedged
        level = 1
    return TextReading(ranked, level, tuple(dict.fromkeys(negated)), tuple(dict.fromkeys(hedged)))


def text_cues(text: str, kb: KnowledgeBase) -> tuple[dict[str, float], int | None]:
    """Free text -> (normalised emotion weights, possibly empty; level from intensity words or None)."""
    reading = read_text(text, kb)
    return reading.weights, reading.level


def compound_named(text: str, kb: KnowledgeBase) -> str | None:
    """The compound expression category (`kb.compound_expressions`, Du, Tao & Martinez, PNAS 2014) a free text
    names, e.g. "happily surprised", "awed" (the longest name found as whole words, not after a negation in
    its clause); None when it names none."""
    reading = read_text(text, kb)
    words = " " + " ".join(_TOKEN.findall(text.lower().replace("\u2019", "'"))) + " "
    found = [name for name in kb.compound_expressions if f" {compound_text(name)} " in words]
    found = [name for name in found if not set(name.split("_")) & set(reading.negated)]
    return max(found, key=len, default=None)


def quote(text: str, limit: int = QUOTE_CHARS) -> str | None:
    """The user's text as the reasoning may quote it: immediate repeats collapsed ("I'm fine, I'm fine"
    -> "I'm fine"), cut to `limit` characters; None when even that would fail the validator's text rules
    (a repeated phrase, a placeholder-like token, a quoted measurement)."""

    words = text.split()
    norm = [re.sub(r"[^a-z0-9']", "", w.lower()) for w in words]
    i, kept = 0, []
    while i < len(words):
        for n in range(1, 9):
            if i + 2 * n <= len(words) and norm[i : i + n] == norm[i + n : i + 2 * n]:
                i += n  # keep the later copy (its punctuation closes the phrase)
                break
        else:
            kept.append(words[i])
            i += 1
    out = " ".join(kept)
    if len(out) > limit:
        out = out[: limit - 3].rsplit(" ", 1)[0] + "..."
    return None if phrase_problems(out) else out


def _closest_emotion(peaks: dict[int, dict[str, float]], kb: KnowledgeBase) -> str:
    """The prototype whose core AUs the evidence supports best (neutral when nothing is active)."""
    best, best_score = "neutral", 0.0
    for name, proto in kb.emotions.items():
        if not proto.core:
            continue
        score = sum(peaks.get(au, {}).get("both", 0.0) >= PRESENT_PEAK for au in proto.core) / len(proto.core)
        if score > best_score:
            best, best_score = name, score
    return best if best_score >= 0.5 else "neutral"


def think(request: ThinkRequest, kb: KnowledgeBase | None = None) -> ChainOfThought:
    """Reason from the request to a Chain-of-Thought by the knowledge base's rules."""
    kb = kb or load_kb()
    peaks = peaks_by_side(request.evidence)
    steps: list[str] = []

    # 1. Appraise the emotion and its intensity.
    reading = read_text(request.text, kb) if request.text else TextReading({}, None)
    weights, text_level = reading.weights, reading.level
    if request.emotion != UNKNOWN:
        weights = {request.emotion: 1.0}
    elif request.text and not weights:
        raise UserError(
            f"the facs engine does not recognise an emotion in {quote(request.text) or 'the text'!r}; name an "
            f"emotion word (e.g. {', '.join(list(kb.lexicon)[:6])}, ...) or use an LLM engine "
            "(--think.engine vllm|openai)"
        )
    elif not request.text:
        weights = {_closest_emotion(peaks, kb): 1.0}
    _check_blend(weights, kb)
    level = request.level or text_level or 2
    target = kb.level_intensity(level)
    label = " and ".join(weights)
    steps.append(_appraisal(request, reading, weights, label, level, target, kb))

    # 2. Select AUs from the prototypes (blends weight each prototype's intensity), or a named compound's set.
    chosen: dict[int, float] = {}
    optional: dict[int, float] = {}
    unilateral = False
    compound = compound_named(request.text, kb) if request.text and request.emotion == UNKNOWN else None
    if compound:
        chosen = dict.fromkeys(kb.compound_expressions[compound], float(intensity_value(target)))
        label = compound_text(compound)
    for emotion, w in weights.items() if not compound else ():
        proto = kb.prototype(emotion)
        unilateral |= proto.unilateral
        # The dominant emotion gets the target intensity; blended-in ones proportionally less.
        value = max(1.0, intensity_value(target) * (0.5 + 0.5 * w / max(weights.values())))
        for au in proto.core:
            chosen[au] = max(chosen.get(au, 0.0), value)
        for au in proto.optional:
            optional[au] = max(optional.get(au, 0.0), value)
    names = ", ".join(f"AU{au} {kb.au(au).name}" for au in chosen) or "no action units"
    source = f"the compound {label!r} (Du et al. 2014) gives" if compound else "the prototype gives"
    steps.append(f"Select: {source} {names}" + ("; contempt acts on one side only." if unilateral else "."))

    # 3. Weigh measured evidence: it may remove a core AU, add an optional one, and pull intensities.
    if peaks:
        confirmed, absent, added = [], [], []
        for au in list(chosen):
            peak = peaks.get(au, {}).get("both")
            if peak is None:
                continue
            if peak < ABSENT_PEAK:
                del chosen[au]
                absent.append(f"AU{au} ({peak:.1f})")
            else:
                chosen[au] = (chosen[au] + min(max(peak, 1.0), 5.0)) / 2
                confirmed.append(f"AU{au} ({peak:.1f})")
        for au, sides in sorted(peaks.items()):
            if (
                au not in chosen
                and sides["both"] >= PRESENT_PEAK
                and (au in optional or not weights_fixed(request))
                and len(chosen) < MAX_AUS  # the schema's bound: a full list is reported, not extended
            ):
                chosen[au] = sides["both"]
                added.append(f"AU{au} ({sides['both']:.1f})")
        outside = [f"AU{au} ({sides['both']:.1f})" for au, sides in sorted(peaks.items())
                   if au not in chosen and sides["both"] >= CLEAR_PEAK]  # fmt: skip
        notes = [
            f"{label} {', '.join(items)}"
            for label, items in (
                ("measured peaks confirm", confirmed),
                ("absent, so left out:", absent),
                ("added:", added),
                ("measured but not part of the expression asked for:", outside),
            )
            if items
        ]
        steps.append(
            "Evidence: " + ("; ".join(notes) or "the measurements neither add nor remove an AU") + "."
        )
    else:
        steps.append("Evidence: none measured; the prototype stands.")

    letters = {au: intensity_letter(v) for au, v in chosen.items()}
    _soften_contradictions(letters, kb)
    side = unilateral_side(peaks)
    units = [
        AUDescription(
            au=au,
            name=kb.au(au).name,
            intensity=letters[au],
            side=side if unilateral and au in _unilateral_core(weights, kb) else "both",
            region=kb.au(au).region,
            muscle=", ".join(kb.au(au).muscles),
            movement=kb.au(au).movement,
        )
        for au in sorted(letters)
    ]

    # 4. Describe each region; 5. one global sentence.
    regions = region_sentences(units, kb)
    active = [r for r in kb.regions if getattr(regions, r)]
    resting = [r for r in kb.regions if r not in active]
    steps.append(f"Regions: moving {', '.join(active) or 'none'}; at rest {', '.join(resting) or 'none'}.")
    dominant = max(weights, key=weights.get)
    global_sentence = global_description(
        label if len(weights) > 1 or compound else dominant, units, target, kb
    )
    strongest = max(units, key=lambda u: (u.intensity, -u.au), default=None)
    steps.append(
        "Global: "
        + (f"led by AU{strongest.au} in the {strongest.region}." if strongest else "a face at rest.")
    )
    return ChainOfThought(
        emotion=request.emotion if request.emotion != UNKNOWN else dominant,
        intensity_level=level,
        reasoning=[_fit(step) for step in steps],
        global_description=global_sentence,
        action_units=units,
        regions=regions,
    )


def _appraisal(
    request: ThinkRequest,
    reading: TextReading,
    weights: dict[str, float],
    label: str,
    level: int,
    target: str,
    kb: KnowledgeBase,
) -> str:
    """Step 1's sentence. The user's text is quoted once (repeats collapsed, cut to `QUOTE_CHARS`), or not
    at all where the quote would fail the validator's text rules: the reasoner never fails its own
    validator on a user's words."""

    mix = ", ".join(f"{e} {w:.0%}" for e, w in weights.items())
    notes = "".join(
        f"; {what}: {', '.join(words)}"
        for what, words in (("negated, so left out", reading.negated), ("hedged, so weaker", reading.hedged))
        if words and request.emotion == UNKNOWN
    )
    tail = f"; level {level} of 3 asks for FACS intensity {target} ({kb.intensity_scale[target]})."
    if not request.text:
        return f"Appraise: the emotion is {label}{tail}"
    quoted = quote(request.text)
    step = _fit(f"Appraise: the text {quoted!r} reads as {mix}{notes}{tail}") if quoted else ""
    return (
        step
        if step and not phrase_problems(step)
        else _fit(f"Appraise: the text reads as {mix}{notes}{tail}")
    )


def _check_blend(weights: dict[str, float], kb: KnowledgeBase) -> None:
    """A blend whose prototypes need more AUs than one annotation holds is a `UserError` naming how many
    emotions fit (strongest first)."""
    union: set[int] = set()
    fits = 0
    for emotion in weights:
        union |= set(kb.prototype(emotion).core)
        fits += len(union) <= MAX_AUS
    if len(union) > MAX_AUS:
        raise UserError(
            f"the text blends {len(weights)} emotions ({', '.join(weights)}), whose prototypes need "
            f"{len(union)} action units, more than the {MAX_AUS} one annotation holds; name at most "
            f"{fits} of them (e.g. {', '.join(list(weights)[:fits])})"
        )


def weights_fixed(request: ThinkRequest) -> bool:
    """A labelled request keeps to its prototype (only optional AUs may join); unlabelled ones follow evidence."""
    return request.emotion != UNKNOWN or request.text is not None


def _unilateral_core(weights: dict[str, float], kb: KnowledgeBase) -> set[int]:
    return {au for e in weights if kb.prototype(e).unilateral for au in kb.prototype(e).core}


UNILATERAL_AUS = (12, 14)  # contempt's core AUs, the ones that act on one side


def unilateral_side(peaks: dict[int, dict[str, float]]) -> str:
    """The side a unilateral expression (contempt) acts on: where its AUs (AU12, AU14) peak higher, else
    DEFAULT_SIDE. (AU12 alone decided it, so a contempt clip with AU14 on the left and no AU12, which corpus 3
    renders, was annotated on the right and rejected as measured absent there.)"""
    left = [peaks[au]["left"] for au in UNILATERAL_AUS if "left" in peaks.get(au, {})]
    right = [peaks[au]["right"] for au in UNILATERAL_AUS if "right" in peaks.get(au, {})]
    if left and right and max(left) > max(right):
        return "left"
    return DEFAULT_SIDE


def _soften_contradictions(letters: dict[int, str], kb: KnowledgeBase) -> None:
    """Contradictory pairs may not both be strong (>= D): the weaker (then the later) drops to C."""
    for a, b in kb.contradictions:
        if a in letters and b in letters and min(letters[a], letters[b]) >= "D":
            weaker = a if letters[a] < letters[b] else b
            letters[weaker] = "C"


def region_sentences(units: list[AUDescription], kb: KnowledgeBase) -> RegionDescriptions:
    """One sentence per region from its AUs' registry movements; shortened to the schema's bound when
    a region holds many AUs (first clause of each movement, then a word-boundary cut)."""
    limit = RegionDescriptions.model_fields["brows"].metadata[0].max_length
    by_region: dict[str, list[AUDescription]] = defaultdict(list)
    for u in units:
        by_region[u.region].append(u)

    def clause(u: AUDescription, short: bool) -> str:
        movement = u.movement.split(";")[0] if short else u.movement
        where = "" if u.side == "both" else f" on the {u.side} side only"
        return f"{ADVERB[u.intensity]}: {movement}{where} (AU{u.au})"

    sentences = {}
    for region in kb.regions:
        text = _sentence("; ".join(clause(u, False) for u in by_region[region]))
        if len(text) > limit:
            text = _sentence("; ".join(clause(u, True) for u in by_region[region]))
        sentences[region] = _fit(text)
    return RegionDescriptions(**sentences)


def _fit(text: str) -> str:
    """Cut a sentence at a word boundary to the schema's bound."""
    limit = RegionDescriptions.model_fields["brows"].metadata[0].max_length
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "."


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "." if text else ""


def global_description(emotion: str, units: list[AUDescription], target: str, kb: KnowledgeBase) -> str:
    if not units:
        return "A neutral, relaxed face; only speech moves the lips and jaw."
    parts = [kb.au(u.au).movement.split(";")[0] for u in units[:4]]
    return f"A {kb.intensity_scale[target]} {emotion} expression: " + ", ".join(parts) + "."
