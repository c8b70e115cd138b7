"""The demo corpus's compound expressions as evaluation clips (issue 38): AU combinations no training label names
(Du, Tao & Martinez, PNAS 2014; `annotation/data/facs_kb.yaml`), rendered for the held-out person only
(`tbd demo-corpus --compound_clips N`) and never ingested. `tbd evaluate --compound true` scores them instead
of a split's clips.

Each compound clip goes through the same per-clip preprocessing as the data folder's clips (`media.clip_media.
process_clip` with the folder's recorded media settings: crop, landmarks, speech features), in memory, so a
generated clip and the real render are seen exactly as the ingested clips are. The speaker is the data folder's
speaker of the corpus's held-out identity; the reference, as for every evaluated clip, is a frame of that
speaker's neutral clip (`tbd_lightning.references.ReferenceBank`). The clip's `emotion` is the compound's name
("angrily_disgusted"): Think reads it as free text (`evaluation.requests.think_requests`)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from evaluation.clips import Clip
from evaluation.config import EvaluateConfig
from tbd_core.errors import UserError

PREFIX = "compound"  # the clips' keys: compound_{name}_{clip:03d}


def category(key: str) -> str:
    """The compound expression a compound clip's key names ("compound_fearfully_angry_003" ->
    "fearfully_angry"): its clips share one request, so they are compared by category (`report.mean_by`)."""
    if not key.startswith(PREFIX + "_"):
        raise ValueError(f"{key!r} is not a compound clip's key ({PREFIX}_{{name}}_{{clip:03d}})")
    return key[len(PREFIX) + 1 :].rsplit("_", 1)[0]


def heldout_speaker(corpus: dict) -> str:
    """The speaker id (e.g. W003) of the corpus's held-out identity, the person the compounds were rendered on."""
    name = corpus["heldout"]["name"]
    for identity in corpus["identities"]:
        if identity["name"] == name:
            return identity["speaker"]
    raise UserError(f"the corpus's held-out identity {name!r} has no speaker among {corpus['identities']}")


def load_compound_clips(
    config: EvaluateConfig, size: int, version: str, skipped: dict[str, str]
) -> list[Clip]:
    """`max_clips` of the corpus's compound clips (evenly spaced over them, sorted by name), preprocessed with
    the data folder's media settings, cut to `max_frames`, at `size` px. A clip the preprocessing rejects
    is skipped with its reason (key -> reason in `skipped`). Raises `UserError` when the corpus has no
    compound clips (`tbd demo-corpus --compound_clips N`) or the speaker has no reference in the folder."""
    import cv2
    from scipy.io import wavfile

    from media.clip_media import MediaConfig, MediaSample, process_clip
    from media.face import FaceAnalyzer
    from pipelines.data_folder import DataFolder
    from tbd_core.records import ClipRef
    from tbd_lightning.data import decode_frames
    from tbd_lightning.references import ReferenceBank

    if config.groundtruth is None:
        raise UserError("--compound needs the demo corpus: give --groundtruth (the folder with corpus.json)")
    root = Path(config.groundtruth)
    corpus = json.loads((root / "corpus.json").read_text())
    listed = sorted(
        (c for c in corpus["clips"] if c["layout"] == "compound"), key=lambda c: (c["emotion"], c["clip"])
    )
    if not listed:
        raise UserError(
            f"{root} has no compound clips: render them with `tbd demo-corpus --compound_clips N`"
        )
    picks = sorted(
        set(np.linspace(0, len(listed) - 1, min(config.max_clips, len(listed))).round().astype(int))
    )
    speaker = heldout_speaker(corpus)
    folder = DataFolder(config.data)
    media = MediaConfig(**(folder.media_params() or {}).get("media", {}))
    bank = ReferenceBank.build(folder, folder.aligned_shards(version), set(folder.split_counts()))
    clips = []
    with FaceAnalyzer() as analyzer:
        for c in (listed[i] for i in picks):
            key = f"{PREFIX}_{c['emotion']}_{c['clip']:03d}"
            ref = ClipRef(key=key, dataset="mead", speaker=speaker, emotion=c["emotion"], level=c["level"],
                          clip=f"{c['clip']:03d}", video=str(root / c["video"]), audio=str(root / c["audio"]),
                          split="test")  # fmt: skip
            results = process_clip(ref, analyzer, media)
            samples = [r for r in results if isinstance(r, MediaSample)]
            reference = bank.pick(speaker, key, None)
            if len(samples) != 1 or reference is None:
                reasons = [r.reason for r in results if not isinstance(r, MediaSample)]
                skipped[key] = (
                    "; ".join(reasons) or f"no reference frame of speaker {speaker} in {config.data}"
                )
                continue
            [sample] = samples
            t = min(config.max_frames, int(sample.meta["frames"]))
            video = decode_frames(sample.mp4, 0, t, sample.meta["fps"])
            frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in video])
            _, wav = wavfile.read(io.BytesIO(sample.wav))
            wav = wav.astype(np.float32) / (32768.0 if wav.dtype == np.int16 else 1.0)
            meta = {
                **sample.meta,
                "video": str(root / c["video"]),
                "emotion": c["emotion"],
                "level": c["level"],
            }
            clips.append(Clip(key, meta, frames, sample.landmarks.astype(np.float32)[:t],
                              sample.audio.astype(np.float32)[:t], wav, {},
                              cv2.resize(reference.frame, (size, size), interpolation=cv2.INTER_AREA),
                              reference.landmarks, reference.key))  # fmt: skip
    return clips
