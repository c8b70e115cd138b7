"""Faithfulness: an answer must say what the request and the clip's measurements say, not only be well formed.

Each rule returns the reasons it rejects an answer (empty: it passes):
- `unsupported_label`: an unlabelled clip (HDTF) may be given an emotion only if the measurements support
  it (at least half of its prototype's core AUs measured present); free text may not be turned into an
  emotion the text does not read as.
- `misquoted_numbers`: a measurement the reasoning quotes ("AU12 (2.4)") must match the clip's evidence.
- `omitted_aus`: an AU measured clearly present is annotated or at least discussed, never silently left out.
- `degenerate_text`: a phrase repeated until the output is cut, placeholder tokens (`region_id_1000000`).
  (Runaway lists and sentences are refused earlier, by the schema's bounds.)
- `copied_example`: an answer (nearly) identical to one of the prompt's few-shot answers.
- `off_topic_text`: a region sentence that names nothing of its region, a global description that names
  neither the emotion nor a word for it (fluent text about something else passed every rule above).
- `sentence_conflicts`: a global or region sentence that describes an AU the list does not hold ("AU9",
  "nose wrinkler", "wrinkles along the nose"), or an intensity word two or more letters from its AU's
  ("maximally" of an AU at A): a prompt injection into SmolLM2 produced both. The validator repairs these
  (the sentence is rewritten from the AU list), so no accepted annotation keeps one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from difflib import SequenceMatcher

from annotation.facs import INTENSITY_LETTERS, KnowledgeBase
from annotation.reasoner import CLEAR_PEAK, PRESENT_PEAK, compound_named, text_cues
from annotation.records import UNKNOWN, ThinkRequest
from annotation.schema import ChainOfThought
from annotation.text_rules import QUOTE as _QUOTE
from annotation.text_rules import phrase_problems

NUMBER_TOLERANCE = 0.3  # a quoted measurement may differ from the evidence by this much (rounding)
COPY_SIMILARITY = 0.9  # text similarity to a few-shot answer at or above this is a copy

# Words a sentence about a region names (substring, case-insensitive). Every registry movement clause names
# one (tested), so the region sentences the per-request schema builds from them pass this rule.
REGION_WORDS: dict[str, tuple[str, ...]] = {
    "brows": ("brow", "forehead"),
    "eyes": ("eye", "lid", "gaze", "sclera", "iris"),
    "nose": ("nose", "nostril"),
    "cheeks": ("cheek", "crow", "nasolabial", "lid"),
    "mouth": ("lip", "mouth", "corner", "smile", "dimple", "nasolabial"),
    "jaw": ("jaw", "chin", "mouth"),
}


def texts(cot: ChainOfThought) -> dict[str, str]:
    """Every free-text field of a CoT, by name."""
    out = {f"reasoning[{i}]": s for i, s in enumerate(cot.reasoning)}
    out["global_description"] = cot.global_description
    out |= {f"regions.{k}": v for k, v in cot.regions.model_dump().items() if v}
    return out


def measured_peaks(request: ThinkRequest) -> dict[int, tuple[float, float]]:
    """AU -> (highest peak, highest mean) over sides."""
    out: dict[int, tuple[float, float]] = {}
    for ev in request.evidence:
        peak, mean = out.get(ev.au, (0.0, 0.0))
        out[ev.au] = (max(peak, ev.peak), max(mean, ev.mean))
    return out


def measured_support(emotion: str, request: ThinkRequest, kb: KnowledgeBase) -> tuple[list[int], list[int]]:
    """(the prototype's core AUs, those measured present): an unlabelled clip may be called `emotion` when
    at least half are present. A text that names a compound expression (`reasoner.compound_named`) is
    supported by those of the compound's AUs the evidence measures (the speech AUs 25/26 of "angrily
    surprised", AU4+25+26, are not measured: unmeasured, they would have rejected every such clip)."""
    compound = compound_named(request.text, kb) if request.text else None
    peaks = measured_peaks(request)
    if compound:
        core = [au for au in kb.compound_expressions[compound] if au in peaks]
    else:
        core = list(kb.prototype(emotion).core)
    return core, [au for au in core if peaks.get(au, (0.0, 0.0))[0] >= PRESENT_PEAK]


def unsupported_label(cot: ChainOfThought, request: ThinkRequest, kb: KnowledgeBase) -> list[str]:
    if cot.emotion not in kb.emotions and cot.emotion != UNKNOWN:
        return [f"emotion {cot.emotion!r} is not one of the knowledge base's ({', '.join(kb.emotions)})"]
    if request.emotion != UNKNOWN or cot.emotion in ("neutral", UNKNOWN):
        return []
    if request.evidence:
        core, present = measured_support(cot.emotion, request, kb)
        peaks = measured_peaks(request)
        if core and len(present) < len(core) / 2:
            measured = (
                ", ".join(f"AU{au} {peaks[au][0]:.1f}" for au in core if au in peaks) or "none measured"
            )
            return [f"unlabelled clip called {cot.emotion}, but only {len(present)} of its {len(core)} core AUs "
                    f"are measured present ({measured})"]  # fmt: skip
        return []
    if request.text:
        weights, _ = text_cues(request.text, kb)
        if weights and cot.emotion not in weights:
            reads = ", ".join(f"{e} {w:.0%}" for e, w in weights.items())
            return [f"the text {request.text!r} reads as {reads}; the answer says {cot.emotion}"]
    return []


def misquoted_numbers(cot: ChainOfThought, request: ThinkRequest) -> list[str]:
    peaks, reasons = measured_peaks(request), []
    for field, text in texts(cot).items():
        for m in _QUOTE.finditer(text):
            au, quoted = int(m.group(1)), float(m.group(2))
            if au not in peaks:
                what = "was not measured" if peaks else "no measurements were given"
                reasons.append(f"{field} quotes AU{au} at {quoted:g}, but {what}")
            elif all(abs(quoted - v) > NUMBER_TOLERANCE for v in peaks[au]):
                reasons.append(f"{field} quotes AU{au} at {quoted:g}; measured peak {peaks[au][0]:.1f}, "
                               f"mean {peaks[au][1]:.1f}")  # fmt: skip
    return reasons


def omitted_aus(cot: ChainOfThought, request: ThinkRequest) -> list[str]:
    annotated = {u.au for u in cot.action_units}
    said = " ".join(texts(cot).values())
    return [
        f"AU{au} measured clearly present (peak {peak:.1f}) but neither annotated nor discussed"
        for au, (peak, _) in sorted(measured_peaks(request).items())
        if peak >= CLEAR_PEAK and au not in annotated and not re.search(rf"\bAU{au}\b", said)
    ]


def degenerate_text(cot: ChainOfThought) -> list[str]:
    reasons = []
    for field, text in texts(cot).items():
        for problem in phrase_problems(text):
            if problem != "a quoted measurement":  # `misquoted_numbers` judges those against the evidence
                what, _, detail = problem.partition(": ")
                reasons.append(f"{what} in {field}: {detail}")
    return reasons


def _signature(cot: dict) -> str:
    return " ".join([*cot.get("reasoning", []), cot.get("global_description", "")]).lower()


def copied_example(cot: ChainOfThought, examples: Sequence[str]) -> list[str]:
    """`examples`: the few-shot assistant answers (JSON text) the model was shown."""
    mine = _signature(cot.model_dump())
    for i, text in enumerate(examples):
        try:
            example = json.loads(text)
        except json.JSONDecodeError:
            continue
        ratio = SequenceMatcher(None, mine, _signature(example), autojunk=False).ratio()
        if ratio >= COPY_SIMILARITY:
            return [f"copies few-shot example {i} (text similarity {ratio:.2f})"]
    return []


def emotion_words(emotion: str, kb: KnowledgeBase) -> tuple[str, ...]:
    """The emotion's name and the lexicon's words for it ("happy": happiness, joy, smile, ...)."""
    return (emotion, *sorted(w for w, reads in kb.lexicon.items() if emotion in reads))


def off_topic_text(cot: ChainOfThought, kb: KnowledgeBase) -> list[str]:
    reasons = []
    for region, text in cot.regions.model_dump().items():
        if text.strip() and not any(w in text.lower() for w in REGION_WORDS[region]):
            reasons.append(f"regions.{region} does not describe the {region} (names none of: "
                           f"{', '.join(REGION_WORDS[region])})")  # fmt: skip
    if cot.emotion in kb.emotions:
        words = emotion_words(cot.emotion, kb)
        if not any(w in cot.global_description.lower() for w in words):
            reasons.append(
                f"global_description names neither {cot.emotion} nor a word for it ({', '.join(words[1:4])}, ...)"
            )
    return reasons


# Intensity words a sentence may use, by the FACS letter they say: the scale's, the rule reasoner's adverbs
# (`ADVERB`) and common variants.
SENTENCE_INTENSITY: dict[str, str] = {
    **{w: "A" for w in ("trace", "barely", "faint", "faintly", "minimal", "minimally")},
    **{w: "B" for w in ("slight", "slightly", "mild", "mildly", "subtle", "subtly", "weak", "weakly")},
    **{w: "C" for w in ("marked", "markedly", "clearly", "moderate", "moderately", "noticeably")},
    **{w: "D" for w in ("severe", "severely", "strong", "strongly", "pronounced", "intense", "intensely")},
    **{w: "E" for w in ("maximum", "maximal", "maximally", "extreme", "extremely")},
}
INTENSITY_TOLERANCE = 1  # a sentence's intensity word may be this many letters from its AU's letter
_AU_NAME = re.compile(r"\bAU ?(\d+)\b", re.I)


def described_aus(text: str, kb: KnowledgeBase) -> list[set[int]]:
    """The AUs a sentence describes, one set per mention: "AU9" names AU9; a FACS name ("nose wrinkler")
    or a registry movement clause ("wrinkles along the nose") names the AUs it belongs to (longest phrase
    first, so a clause is not read again as a shorter one inside it)."""
    groups = [{int(m.group(1))} for m in _AU_NAME.finditer(text)]
    owners: dict[str, set[int]] = {}
    for au, ref in kb.action_units.items():
        for phrase in (ref.name, *ref.movement.split(";")):
            if phrase.strip():
                owners.setdefault(phrase.strip().lower(), set()).add(au)
    low = text.lower()
    for phrase in sorted(owners, key=len, reverse=True):
        pattern = rf"(?<![a-z]){re.escape(phrase)}(?![a-z])"
        if re.search(pattern, low):
            groups.append(owners[phrase])
            low = re.sub(pattern, " ", low)
    return groups


def _au_label(aus: set[int], kb: KnowledgeBase) -> str:
    return " or ".join(
        f"AU{au} ({kb.action_units[au].name})" if au in kb.action_units else f"AU{au}" for au in sorted(aus)
    )


def sentence_conflicts(cot: ChainOfThought, kb: KnowledgeBase) -> dict[str, list[str]]:
    """Where the texts Draw reads contradict the AU list, by field: a global or region sentence may describe
    only listed AUs (by number, FACS name or registry clause), and an intensity word may be at most
    `INTENSITY_TOLERANCE` letters from the letter of the AU it describes (in a region sentence, a clause
    without its own word takes the previous clause's: "Strongly: lips parted; jaw lowered"; a clause that
    names no AU speaks of the region's listed AUs). The global sentence's word may also be the level's own
    (the expression asked for: "A severe happy expression")."""
    letters: dict[int, set[str]] = {}
    for u in cot.action_units:
        letters.setdefault(u.au, set()).add(u.intensity)
    out: dict[str, list[str]] = {}

    def add(field: str, reason: str) -> None:
        if reason not in out.setdefault(field, []):
            out[field].append(reason)

    sentences = {"global_description": cot.global_description}
    sentences |= {f"regions.{r}": t for r, t in cot.regions.model_dump().items() if t.strip()}
    for field, text in sentences.items():
        for group in described_aus(text, kb):
            if not group & letters.keys():
                add(field, f"{field} describes {_au_label(group, kb)}, which the action units do not list")

    def said(words: list[str], aus: set[int], field: str) -> None:
        for word in words:
            value = INTENSITY_LETTERS.index(SENTENCE_INTENSITY[word])
            near = [
                abs(value - INTENSITY_LETTERS.index(x)) <= INTENSITY_TOLERANCE
                for au in aus
                for x in letters[au]
            ]
            if near and not any(near):
                have = ", ".join(f"AU{au} at {'/'.join(sorted(letters[au]))}" for au in sorted(aus))
                add(field, f"{field} says {word!r} ({SENTENCE_INTENSITY[word]}) of {have}")

    def words_of(text: str) -> list[str]:
        return [w for w in re.findall(r"[a-z]+", text.lower()) if w in SENTENCE_INTENSITY]

    level = kb.mead_level_intensity.get(cot.intensity_level)
    said([w for w in words_of(cot.global_description) if SENTENCE_INTENSITY[w] != level], set(letters),
         "global_description")  # fmt: skip
    for region, text in cot.regions.model_dump().items():
        current: list[str] = []
        for clause in re.split(r"[;.]", text):
            current = words_of(clause) or current
            groups = [g & letters.keys() for g in described_aus(clause, kb)]
            groups = [g for g in groups if g] or [{au for au in letters if kb.au(au).region == region}]
            for group in groups:
                said(current, group, f"regions.{region}")
    return out


def unfaithful_sentences(cot: ChainOfThought, kb: KnowledgeBase) -> list[str]:
    """`sentence_conflicts` as a list of reasons (the validator rewrites those sentences from the AU list)."""
    return [reason for reasons in sentence_conflicts(cot, kb).values() for reason in reasons]


def check(
    cot: ChainOfThought, request: ThinkRequest, kb: KnowledgeBase, examples: Sequence[str] = ()
) -> list[str]:
    """All faithfulness reasons for one answer (sentences that contradict the AU list are not among them:
    the validator rewrites those, `sentence_conflicts`)."""
    return [
        *unsupported_label(cot, request, kb),
        *misquoted_numbers(cot, request),
        *omitted_aus(cot, request),
        *degenerate_text(cot),
        *copied_example(cot, examples),
        *off_topic_text(cot, kb),
    ]
