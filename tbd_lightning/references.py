"""Reference frames for training and evaluation: per speaker, the first frame of one of their neutral clips,
never of the target clip (`ReferenceBank`), decoded when first picked."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.data_folder import AlignedShard, DataFolder
from pipelines.shards import ShardIndex, npy_member


@dataclass(frozen=True)
class Reference:
    key: str  # the clip the frame comes from
    frame: np.ndarray  # (S, S, 3) uint8, the clip's first frame
    landmarks: np.ndarray  # (468, 3) crop-normalised, of that frame


class ReferenceBank:
    """Reference frames per speaker for training and evaluation: the first frame of one of the speaker's
    neutral clips (another clip of the speaker only when the target is its one neutral clip, or it has
    none), never of the target clip itself.

    MEAD's emotional clips show the emotion from their first frame: a reference taken from the target clip
    would let the model copy the expression instead of following the text.

    `build` reads only the sidecars; a reference is decoded the first time it is picked and kept (per
    process: each DataLoader worker decodes those it picks). Decoding every speaker's candidates at start-up
    made training's start grow with the dataset (a 5,000-clip rehearsal, `benchmarks/bench_scale.py`)."""

    def __init__(self, by_speaker: dict[str, list[str]], neutral: set[str], tars: dict[str, Path]):
        self.by_speaker, self.neutral, self.tars = by_speaker, neutral, tars  # speaker -> keys; key -> tar
        self._loaded: dict[str, Reference] = {}

    @classmethod
    def build(cls, folder: DataFolder, shards: list[AlignedShard], splits: set[str], per_speaker: int = 4):
        summaries = folder.media_summaries()
        tars = {key: shard.media_tar for shard in shards for key in shard.keys}
        keys_of: dict[str, list[str]] = {}
        for key, summary in sorted(summaries.items()):
            if summary["split"] in splits:
                keys_of.setdefault(summary["speaker"], []).append(key)
        chosen = {}
        for speaker, keys in keys_of.items():
            neutral = [k for k in keys if summaries[k]["emotion"] == "neutral"][:per_speaker]
            others = [k for k in keys if k not in neutral][:2]  # for a target that is the only neutral clip
            chosen[speaker] = [k for k in neutral + others if k in tars]
        neutral = {k for k, v in summaries.items() if v["emotion"] == "neutral"}
        return cls(chosen, neutral, {k: tars[k] for keys in chosen.values() for k in keys})

    def pick(self, speaker: str, key: str, rng: random.Random | None) -> Reference | None:
        """A reference of `speaker` from another clip than `key` (the first such, without `rng`)."""
        others = [k for k in self.by_speaker.get(speaker, []) if k != key]
        candidates = [k for k in others if k in self.neutral] or others
        if not candidates:
            return None
        return self.load(rng.choice(candidates) if rng is not None else candidates[0])

    def load(self, key: str) -> Reference:
        """The reference of clip `key` (one of `by_speaker`'s): its first frame and landmarks."""
        if key not in self._loaded:
            index = ShardIndex(self.tars[key])  # only this clip's members are read
            try:
                lm = npy_member(index.read(key, "landmarks.npy")).astype(np.float32)[0]
                self._loaded[key] = Reference(key, first_frame(index.read(key, "mp4")), lm)
            finally:
                index.close()
        return self._loaded[key]


def first_frame(data: bytes) -> np.ndarray:
    import av

    from media.frames import to_rgb

    with av.open(io.BytesIO(data)) as container:
        return to_rgb(next(container.decode(video=0)))
