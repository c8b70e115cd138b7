"""What AU F1 scores each evaluated clip against (issue 38): the clip's AU specification as the demo corpus
rendered it, the sizes the measure tells from 0 at its face size, the person's floor from their neutral
clips, and those neutral clips for every row to draw its own neutral (`evaluation.evaluate.row_neutrals`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from evaluation.clips import Clip, load_clips
from evaluation.config import EvaluateConfig


class AUTargets:
    """`au_specifications` a few clips at a time (`tbd evaluate` holds one chunk of clips in memory): `add`
    each chunk; a speaker's neutral clips and floor are made when the speaker is first seen (with a clip
    that is not neutral), the scored clips' specifications and label AU F1 as they come."""

    def __init__(self, config: EvaluateConfig, size: int, version: str):
        from evaluation.measures import groundtruth_specs, prototype_templates
        from pipelines.data_folder import DataFolder

        self.config, self.size, self.version = config, size, version
        self.groundtruth = groundtruth_specs(config.groundtruth)
        self.summaries = DataFolder(config.data).media_summaries() if self.groundtruth else {}
        self.prototypes = prototype_templates()
        self.floors: dict[str, list] = {}  # speaker -> their neutral clips' readings
        self.specs: dict[str, tuple] = {}  # key -> (spec, least, present)
        self.label_f1: dict[str, float] = {}

    def add(self, clips: list[Clip]) -> list[Clip]:
        """Record `clips`' specifications; returns the neutral clips of the speakers first seen in them (with
        the reference of the speaker's first non-neutral clip in place of their own, tracked), for every
        row to draw (`row_neutrals`). Nothing without a ground truth."""
        from evaluation.au_request import detectable, expression_aus, person_floor, presence, score_request
        from media.au_measure import track_video

        if not self.groundtruth:
            return []
        reference = {}  # the scored clips' reference (a neutral clip's frame; a neutral clip's own is another's)
        for c in clips:
            if c.meta["emotion"] != "neutral" and c.meta["speaker"] not in self.floors:
                reference.setdefault(c.meta["speaker"], c)
        neutral_keys = [k for k, s in sorted(self.summaries.items())
                        if s["emotion"] == "neutral" and s["speaker"] in reference]  # fmt: skip
        have = {c.key: c for c in clips}  # a neutral clip of this chunk is not loaded or tracked again
        missing = [k for k in neutral_keys if k not in have]
        for c in load_clips(self.config, self.size, self.version, {}, keys=missing) if missing else []:
            c.real_video = track_video(c.frames)
            have[c.key] = c
        neutrals = []
        for speaker in reference:
            self.floors[speaker] = []
        for key in neutral_keys:
            ref = reference[self.summaries[key]["speaker"]]
            neutral = dataclasses.replace(have[key], reference=ref.reference, reference_landmarks=ref.reference_landmarks,
                                          reference_key=ref.reference_key, reference_video=ref.reference_video,
                                          reference_identity=ref.reference_identity)  # fmt: skip
            neutrals.append(neutral)
            self.floors[ref.meta["speaker"]].append(
                expression_aus(neutral.real_video, ref.reference_video.baseline())
            )
        for c in clips:
            spec = self.groundtruth.get(str(Path(c.meta["video"]).resolve()))
            if spec is None or c.meta["emotion"] == "neutral":
                continue
            iod = c.real_video.iod_px
            floor = person_floor(self.floors.get(c.meta["speaker"], []))
            least, present = detectable(iod), presence(iod, floor)
            self.specs[c.key] = (spec, least, present)
            label_emotion = (c.label_cot or {}).get(
                "emotion", c.meta["emotion"]
            )  # a compound's: Think's label
            proto = self.prototypes.get((label_emotion, c.meta["level"] or 1))
            if proto is not None:
                self.label_f1[c.key] = score_request(spec, proto, least, present)["au_f1"]
        return neutrals


def au_specifications(
    clips: list[Clip], config: EvaluateConfig, size: int, version: str
) -> tuple[dict, dict[str, float], list[Clip]]:
    """What AU F1 scores each clip against (issue 38; `evaluation.au_request`, validated by `tbd check-measures`):
    key -> (its AU specification as the demo corpus rendered it, `detectable` and `presence` at its real
    clip's face size, with its person's floor: `person_floor` over the speaker's neutral clips in the data
    folder, measured against the same reference as the scored clips), key -> the AU F1 of the label's
    FACS prototype drawn perfectly (what a label alone can request: for a compound expression, the label Think
    reads in its name, e.g. disgusted for "angrily disgusted"), and the speaker's neutral clips with
    the scored clips' reference in place of their own (tracked: `real_video`), which each row draws for its
    own neutral (`row_neutrals`). Neutral clips are not scored: their readings are the person's floor.
    Empty without a ground truth (`config.groundtruth`). All clips at once: `AUTargets` one chunk at a time."""
    targets = AUTargets(config, size, version)
    neutrals = targets.add(clips)
    return targets.specs, targets.label_f1, neutrals
