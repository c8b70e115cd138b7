"""What each evaluated row is given: information kept apart from guidance design.

No row is conditioned on anything computed from its target clip's frames (the shards' annotations of
validation clips carry the target's measured AUs as evidence: evaluation never reads them). Besides the
reference portrait and the speech, a row has one of three texts:

- `label`: the emotion label and level as a caption (`label-only`);
- `label CoT`: the CoT the default engine thinks from the label alone, as `tbd generate` does (`think-label`);
- `AU specification`: on the demo corpus, the AU set and intensities the renderer was asked for (its
  ground-truth sidecar, speech AUs left out) given to Think as a user's AU specification (the request's
  evidence) with the label; without ground truth, the label CoT stands in.

The rows that compare guidance designs (`progressive`, `single-stage`, `cfg`, `global-only`: the CoT's global
sentence without its local sentences; `no-masks`) all get the same CoT, the specification's. Rows without
local sentences (`label-only`, `global-only`) are sampled with w_g = 1 at every step (`single-stage`): they
have no local stage to hand over to, so their text guidance keeps the strength the other rows' has. Every
model row is scored against the same request: the specification's AUs (else the label CoT's)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from evaluation.clips import Clip
from tbd_lightning.sampler import GuidanceConfig

log = logging.getLogger(__name__)
STILL = "reference-still"  # the floor: the reference frame repeated (no model)
THINK = "think-label"  # the deployed setting: the CoT thought from the label alone, as `tbd generate` does
REAL = "real"  # the ceiling: the real clip scored as if it were generated
LABEL_ONLY, GLOBAL_ONLY = "label-only", "global-only"
DESIGNS = ("progressive", "single-stage", GLOBAL_ONLY, "cfg")  # one CoT; no-masks for a maskless model


@dataclass(frozen=True)
class Row:
    """One table row: its name, guidance (None: no model), and which text it is given (`text`: `spec` the
    AU specification's CoT, `label` the label CoT, `caption` the label as a caption, `global` the
    specification's global sentence alone, None: no model)."""

    name: str
    guidance: GuidanceConfig | None
    text: str | None


def information(row: Row, have_spec: bool) -> str:
    """What the row had besides the reference portrait and the speech, in words (the table's column)."""
    spec = "AU specification (renderer's request) via Think" if have_spec else "label CoT (no ground truth)"
    return {
        "spec": f"{spec}: global + local sentences",
        "global": f"{spec}: global sentence only",
        "label": "label CoT (Think from the label alone)",
        "caption": "label caption (emotion, level)",
        None: "none (real clip)" if row.name == REAL else "none (reference held still)",
    }[row.text]


def rows(guidance: GuidanceConfig, ablations: bool, region_masks: bool = True) -> list[Row]:
    """The table's rows: the configured guidance on the specification (or, with `ablations`, every design
    on it, and label-only), then think-label, the real clips (ceiling) and the still reference (floor).
    A model trained without region masks samples with mode `no-masks`."""
    g = guidance
    if not region_masks and g.mode != "no-masks":
        log.warning("the model was trained without region masks: sampling with guidance mode no-masks")
        g = replace(g, mode="no-masks")
    if ablations and len({g.audio_scale, g.global_scale, g.local_scale}) > 1:
        log.warning("cfg is not at matched strength: audio/global/local scales %s/%s/%s differ (cfg uses the "
                    "audio scale for every condition)", g.audio_scale, g.global_scale, g.local_scale)  # fmt: skip
    no_locals = replace(g, mode="single-stage") if g.mode != "cfg" else g
    bounds = [Row(THINK, g, "label"), Row(REAL, None, None), Row(STILL, None, None)]
    if not ablations:
        return [Row(g.mode, g, "spec"), *bounds]
    first = "progressive" if region_masks else "no-masks"
    design = [Row(first, replace(g, mode=first), "spec"), Row("single-stage", replace(g, mode="single-stage"), "spec"),
              Row(GLOBAL_ONLY, no_locals, "global"), Row("cfg", replace(g, mode="cfg"), "spec"),
              Row(LABEL_ONLY, no_locals, "caption")]  # fmt: skip
    return [*design, *bounds]


def video_request(clip: Clip, row: Row, global_text: str = "emotion"):
    """The `VideoRequest` of `clip` in `row`: its reference, speech features and the row's text, never
    anything of the target clip's frames or of its shard annotation. `global_text`: the model's config field
    of that name (the global-only row's sentence is the model's global condition, as in training)."""
    from tbd_lightning.text import cot_sentences
    from tbd_lightning.video_batch import VideoRequest

    cot = clip.label_cot if row.text in ("label", "caption") else clip.spec_cot
    base = VideoRequest(clip.reference, clip.reference_landmarks, clip.audio_features)
    if row.text == "global":
        only = cot_sentences(cot, 0, global_text=global_text)[0]
        return replace(base, global_text=only, local_text=[], regions=())
    return replace(base, cot=cot, label_only=row.text == "caption")


def spec_evidence(groundtruth: Path) -> tuple:
    """The AU specification of a demo-corpus clip as Think's evidence: every non-speech AU channel of its
    ground-truth sidecar (the intensities the renderer was asked for, 0..5) as mean and peak over the clip;
    an AU with sides (`AU12_R`, the subject's right) gives one item per side. AUs at 0 are in it too: a
    full specification says which AUs do not move."""
    from annotation.records import AUEvidence
    from evaluation.metrics import SPEECH_AUS

    data = np.load(groundtruth)
    out = []
    for i, channel in enumerate(data["channels"]):
        name, _, side = str(channel)[2:].partition("_")
        if int(name) in SPEECH_AUS:
            continue
        values = np.clip(data["au"][:, i].astype(float), 0, 5)
        out.append(AUEvidence(au=int(name), mean=round(float(values.mean()), 3), peak=round(float(values.max()), 3),
                              side={"R": "right", "L": "left"}.get(side, "both")))  # fmt: skip
    return tuple(out)


def think_requests(clips: list[Clip], groundtruth: dict[str, Path]) -> None:
    """Each clip's `label_cot` (the default engine from its label and level) and `spec_cot` (the same engine
    from the label with the clip's AU specification, `spec_evidence`; the label CoT where the clip has no
    ground truth); None where Think rejects it. A clip whose emotion is no MEAD label (a compound expression,
    `evaluation.compound`) is asked by its name as free text. `groundtruth`: resolved source video path ->
    sidecar."""
    from annotation.engines.spec import EngineSpec
    from annotation.facs import MEAD_EMOTIONS, compound_text
    from annotation.records import ThinkRequest

    asks, where = [], []
    for c in clips:
        level = c.meta["level"] or None
        if c.meta["emotion"] in MEAD_EMOTIONS:
            label = ThinkRequest(key=c.key, emotion=c.meta["emotion"], level=level)
        else:  # a compound expression's name, read as free text ("angrily disgusted")
            label = ThinkRequest(key=c.key, text=compound_text(c.meta["emotion"]), level=level)
        gt = groundtruth.get(str(Path(c.meta["video"]).resolve()))
        asks.append(label)
        where.append((c, ("label_cot",) if gt else ("label_cot", "spec_cot")))
        if gt is not None:
            asks.append(label.model_copy(update={"evidence": spec_evidence(gt)}))
            where.append((c, ("spec_cot",)))
    with EngineSpec().make() as engine:
        for (clip, fields), ann in zip(where, engine.annotate(asks), strict=True):
            for field in fields:
                setattr(clip, field, ann.cot.model_dump(mode="json") if ann.accepted else None)
