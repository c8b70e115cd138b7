"""The clips `tbd evaluate` and `tbd check-conditioning` score: frames at the model's size, landmarks, audio
features and waveform, the CoT, and a reference frame that never lies inside the scored frames."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tbd_core.errors import UserError

if TYPE_CHECKING:
    from evaluation.config import EvaluateConfig


@dataclass
class Clip:
    key: str
    meta: dict
    frames: np.ndarray  # (T, S, S, 3) uint8 at the model's size
    landmarks: np.ndarray  # (T, 468, 3) crop-normalised
    audio_features: np.ndarray  # (T, A)
    wav: np.ndarray  # 16 kHz mono
    cot: dict  # the shard's annotation (the conditioning check's training clips); evaluation never reads it
    reference: np.ndarray  # (S, S, 3) uint8: a frame of another (neutral) clip of the same speaker
    reference_landmarks: np.ndarray  # (468, 3) crop-normalised
    reference_key: str  # the clip it comes from
    real_video: object = None  # `media.au_measure.VideoAUs` of `frames` (set before scoring)
    reference_video: object = None  # the same for the reference frame
    reference_identity: np.ndarray | None = None  # the identity judge's descriptor of the reference
    label_cot: dict | None = None  # the CoT thought from the label alone (the facs engine, no evidence)
    spec_cot: dict | None = None  # the CoT thought from the label and its AU specification (`requests`)


@dataclass
class ClipChoice:
    """The clips `load_clips` chose, before any is decoded: (shard index, key) in order, each key's CoT, the
    aligned shards and the reference bank. `load` decodes any of them, so a caller can hold a few at a time."""

    config: EvaluateConfig
    shards: list
    references: object  # tbd_lightning.references.ReferenceBank
    picks: list[tuple[int, str]]
    cots: dict[str, dict]

    @property
    def keys(self) -> list[str]:
        return [k for _, k in self.picks]

    def load(self, size: int, skipped: dict[str, str], keys: list[str] | None = None) -> list[Clip]:
        """The chosen clips (or those of them in `keys`) decoded at `size`, in choice order; a clip whose
        reference would lie inside its scored frames is skipped (key -> reason in `skipped`)."""
        from pipelines.shards import ShardIndex

        wanted = set(self.keys if keys is None else keys)
        picks = [(i, k) for i, k in self.picks if k in wanted]
        clips = {}
        for index in sorted({i for i, _ in picks}):
            shard = ShardIndex(self.shards[index].media_tar)  # only the wanted clips' members are read
            try:
                for key in [k for i, k in picks if i == index]:
                    members = {ext: shard.read(key, ext) for ext in shard.members[key]}
                    clip = self._decode(key, members, size, skipped)
                    if clip is not None:
                        clips[key] = clip
            finally:
                shard.close()
        return [clips[k] for _, k in picks if k in clips]

    def _decode(self, key: str, members: dict[str, bytes], size: int, skipped: dict[str, str]) -> Clip | None:
        import cv2
        from scipy.io import wavfile

        from tbd_lightning.data import decode_frames

        meta = json.loads(members["json"])
        total = int(meta["frames"])  # only the scored frames are decoded (and a reference frame, below)
        video = decode_frames(members["mp4"], 0, min(self.config.max_frames, total), meta["fps"])
        t = len(video)
        frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in video])
        _, wav = wavfile.read(io.BytesIO(members["wav"]))
        wav = wav.astype(np.float32) / (32768.0 if wav.dtype == np.int16 else 1.0)
        lm = np.load(io.BytesIO(members["landmarks.npy"])).astype(np.float32)[:t]
        feats = np.load(io.BytesIO(members["audio.npy"])).astype(np.float32)[:t]
        ref = self.references.pick(meta["speaker"], key, None)
        if ref is None and total <= t:  # one clip, no frame outside the scored window: skipped
            skipped[key] = f"speaker {meta['speaker']} has no other clip and no frame outside the scored {t}"
            return None
        if ref is None:  # one clip: its last frame, outside the scored window, said so in the key
            full_lm = np.load(io.BytesIO(members["landmarks.npy"])).astype(np.float32)
            last = decode_frames(members["mp4"], total - 1, 1, meta["fps"])[0]
            ref_frame = cv2.resize(last, (size, size), interpolation=cv2.INTER_AREA)
            ref_lm, ref_key = full_lm[total - 1], f"{key}@frame{total - 1}"
        else:
            ref_frame = cv2.resize(ref.frame, (size, size), interpolation=cv2.INTER_AREA)
            ref_lm, ref_key = ref.landmarks, ref.key
        return Clip(key, meta, frames, lm, feats, wav, self.cots[key], ref_frame, ref_lm, ref_key)


def choose_clips(config: EvaluateConfig, version: str, keys: list[str] | None = None) -> ClipChoice:
    """`max_clips` clips of the split (of its `speakers`, when given), evenly spaced over it (so a sorted corpus
    still covers its emotions), or exactly the clips `keys` (any split), from sidecars and annotations only
    (nothing decoded). A speaker with no clip in the split is a UserError."""
    from pipelines.data_folder import DataFolder
    from tbd_lightning.references import ReferenceBank

    folder = DataFolder(config.data)
    shards = folder.aligned_shards(version)
    references = ReferenceBank.build(folder, shards, set(folder.split_counts()) if keys else {config.split})
    summaries = folder.media_summaries()
    speakers = set(config.speakers or ())
    in_split = {s["speaker"] for s in summaries.values() if s["split"] == config.split}
    if speakers - in_split:
        raise UserError(f"speakers {sorted(speakers - in_split)} have no clip in split {config.split!r} of "
                        f"{config.data} (its speakers: {sorted(in_split)})")  # fmt: skip

    def speaker_ok(key: str) -> bool:
        return not speakers or summaries[key]["speaker"] in speakers

    eligible, cots = [], {}
    for index, shard in enumerate(shards):
        anns = folder.annotation_members(version, shard.name)
        for key in shard.keys:
            wanted = key in keys if keys else summaries[key]["split"] == config.split and speaker_ok(key)
            if wanted and anns[key]["validation"]["outcome"] != "rejected":
                eligible.append((index, key))
                cots[key] = anns[key]["cot"]
    if keys and len(eligible) < len(keys):
        missing = sorted(set(keys) - {k for _, k in eligible})
        raise UserError(f"clips {missing} are not in {config.data} or their annotation was rejected")
    if not eligible:
        raise UserError(
            f"no usable clips of split {config.split!r} in {config.data} (clips per split: {folder.split_counts()})"
        )
    picks = eligible if keys else [eligible[i] for i in sorted(set(np.linspace(0, len(eligible) - 1, min(config.max_clips, len(eligible))).round().astype(int)))]  # fmt: skip
    return ClipChoice(config, shards, references, picks, cots)


def load_clips(config: EvaluateConfig, size: int, version: str, skipped: dict[str, str],
               keys: list[str] | None = None) -> list[Clip]:  # fmt: skip
    """`choose_clips`, decoded at `size` (`ClipChoice.load`). The reference never lies inside the scored
    frames: a speaker with a single clip takes its last frame when the clip is longer than `max_frames`,
    else the clip is skipped (key -> reason in `skipped`)."""
    return choose_clips(config, version, keys).load(size, skipped)
