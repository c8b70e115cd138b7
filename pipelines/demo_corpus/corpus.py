"""Build the demo corpus: clips in the real MEAD and HDTF layouts, plus a ground-truth sidecar.

out/
  mead/{speaker}/video/front/{emotion}/level_{n}/{clip:03d}.mp4   H.264 25 fps, AAC muxed
  mead/{speaker}/audio/{emotion}/level_{n}/{clip:03d}.m4a         AAC 16 kHz mono
  hdtf/{WRA|WDA|RD}_{Name}_{nnn}.mp4                             H.264 25 fps, AAC muxed
  groundtruth/...same relative path....npz                        per-frame AU intensities (evaluation only)
  compound/{category}/{clip:03d}.mp4 (+ .m4a)                     `--compound_clips N`: the held-out person's
                                                                  compound expressions (test only, never ingested)
  portraits/{Name}.png, portraits/heldout/{Name}.png              the identities' stills; an unseen one
  corpus.json                                                     every clip, its parameters, apex AUs and files

By default every clip of an (emotion, level) shows the same AUs: the emotion's core AUs at the level's intensity.
`--variation true` draws each clip's own AUs within its label (`expression_plan`): the label then no longer
determines the muscles, which is what a muscle-level description can add (the thesis experiment's corpus).
Written into a temporary sibling folder and renamed into place, so a failure leaves nothing behind.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from annotation.facs import MEAD_EMOTIONS, load_kb
from media.face import FaceAnalyzer, crop_transform
from pipelines.demo_corpus.au_templates import CHANNELS
from pipelines.demo_corpus.expressions import FPS, VARIATION, ClipSpec, au_timeline, expression_timeline
from pipelines.demo_corpus.portraits import (
    Portrait,
    heldout_portrait,
    load_portraits,
    speakers,
    variant,
)
from tbd_core.errors import UserError

log = logging.getLogger(__name__)
HDTF_PREFIXES = ("WRA", "WDA", "RD")
CORPUS_VERSION = 3  # 2: stronger AU templates (au_templates.GAINS); 3: the last speaker is another person


@dataclass
class CorpusConfig:
    out: Path
    portraits: Path | None = None
    identities: int = 3
    emotions: tuple[str, ...] = MEAD_EMOTIONS
    levels: tuple[int, ...] = (1, 3)
    clips_per_level: int = 1
    hdtf_clips: int = 1
    seconds: float = 2.0
    size: int = 128
    seed: int = 0
    variation: bool = False  # each clip's own AUs, intensities and timing within its label (VARIATION)
    # clips per compound expression of the KB (Du, Tao & Martinez 2014), all of the held-out person
    compound_clips: int = 0
    # the built-in training identities are variants of this many real people's photographs: 1 Grace Hopper
    # (the demo), 2 and Obama, 3 and Biden (face_recognition's test images, `make setup`); with --portraits unused
    training_photos: int = 1
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    force: bool = False

    def validate(self) -> None:
        kb = load_kb()
        for e in self.emotions:
            kb.prototype(e)  # raises UserError naming the unknown emotion
        for lv in self.levels:
            kb.level_intensity(lv)
        if self.identities < 1 or self.clips_per_level < 1 or self.hdtf_clips < 0 or self.compound_clips < 0:
            raise UserError(
                "--identities and --clips-per-level must be >= 1, --hdtf-clips and --compound_clips >= 0"
            )
        if not 1 <= self.training_photos <= 3:
            raise UserError(f"--training_photos {self.training_photos}: 1 .. 3 built-in photographs")
        if not (0.5 <= self.seconds <= 60):
            raise UserError(f"--seconds {self.seconds} is out of range (0.5 .. 60)")
        if abs(self.seconds * FPS - round(self.seconds * FPS)) > 1e-6:  # speech and video of one length
            raise UserError(
                f"--seconds {self.seconds} is not a whole number of frames at {FPS} fps (0.04 s steps)"
            )
        if self.size % 16 or not (64 <= self.size <= 1024):
            raise UserError(f"--size {self.size} must be a multiple of 16 in 64 .. 1024")


def _seed(*parts) -> int:
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def plan_clips(cfg: CorpusConfig, names: list[str]) -> list[ClipSpec]:
    specs = []
    for i, name in enumerate(names):
        speaker = f"W{i + 1:03d}"
        for emotion in cfg.emotions:
            for level in (1,) if emotion == "neutral" else cfg.levels:
                for c in range(cfg.clips_per_level):
                    rel = f"{speaker}/video/front/{emotion}/level_{level}/{c:03d}"
                    # A varied corpus records each sentence in takes of two (clips 2k and 2k+1 of an emotion
                    # and level speak the same sentence), each take with its own muscles: only their CoTs tell
                    # the two faces apart, so a model cannot read the brows off the speech (it did: an overfit
                    # of one sentence per clip drew AU4 without its sentence, 0.10 of 1.3 units gone).
                    take = cfg.variation and emotion != "neutral"
                    specs.append(
                        ClipSpec(
                            "mead",
                            name,
                            speaker,
                            emotion,
                            level,
                            c,
                            _seed(cfg.seed, rel),
                            f"mead/{rel}.mp4",
                            f"mead/{speaker}/audio/{emotion}/level_{level}/{c:03d}.m4a",
                            f"groundtruth/mead/{rel}.npz",
                            cfg.variation,
                            _seed(cfg.seed, speaker, emotion, level, "take", c // 2) if take else None,
                        )
                    )
        for c in range(cfg.hdtf_clips):
            stem = f"{HDTF_PREFIXES[i % len(HDTF_PREFIXES)]}_{name}_{c:03d}"
            rng = np.random.default_rng(_seed(cfg.seed, stem))
            emotion = str(rng.choice(["neutral", "happy", "sad", "surprised"]))
            specs.append(
                ClipSpec(
                    "hdtf",
                    name,
                    stem,
                    emotion,
                    1,
                    c,
                    _seed(cfg.seed, stem, "clip"),
                    f"hdtf/{stem}.mp4",
                    None,
                    f"groundtruth/hdtf/{stem}.npz",
                    cfg.variation,
                )
            )
    return specs


def plan_compound(cfg: CorpusConfig, name: str) -> list[ClipSpec]:
    """`cfg.compound_clips` clips of each compound expression of the KB, all of the held-out person `name`
    (level 2): AU combinations that no label of the training clips names (test only)."""
    specs = []
    for category in load_kb().compound_expressions:
        for c in range(cfg.compound_clips):
            rel = f"compound/{category}/{c:03d}"
            specs.append(ClipSpec("compound", name, "heldout", category, 2, c, _seed(cfg.seed, rel),
                                  f"{rel}.mp4", f"{rel}.m4a", f"groundtruth/{rel}.npz", True))  # fmt: skip
    return specs


def clip_signals(spec: ClipSpec, portrait_name: str, seconds: float):
    """A clip's speech (audio at `AUDIO_RATE`, its envelope per frame (T,)) and its AU timeline (T, C)."""
    from media.video_io import AUDIO_RATE
    from pipelines.demo_corpus.speech import synth_speech

    n_frames = int(round(seconds * FPS))
    rng = np.random.default_rng(spec.seed if spec.speech_seed is None else spec.speech_seed)
    f0 = 150 + 60 * (_seed(portrait_name) % 100) / 100
    audio, env = synth_speech(seconds, rng, f0=f0)
    env_frames = env[: n_frames * (AUDIO_RATE // FPS)].reshape(n_frames, -1).mean(1)
    return audio, env_frames, au_timeline(spec, n_frames, env_frames)


@dataclass
class IdentityJob:
    portrait_name: str
    image: np.ndarray  # the face crop at 2x the output size
    neutral: np.ndarray  # (468, 3) landmarks in that crop
    specs: list[ClipSpec]
    out: str
    size: int
    seconds: float


def render_identity(job: IdentityJob) -> list[dict]:
    """Worker: render, encode and write every clip of one identity. Returns the clip records."""
    from media.video_io import write_m4a, write_mp4

    renderer = ExpressionRenderer(job.image, job.neutral)
    records = []
    for spec in job.specs:
        audio, env_frames, au = clip_signals(spec, job.portrait_name, job.seconds)
        n_frames = len(au)
        frames = np.stack(
            [cv2.resize(f, (job.size, job.size), interpolation=cv2.INTER_AREA) for f in renderer.frames(au)]
        )
        out = Path(job.out)
        for rel in (spec.video, spec.audio, spec.groundtruth):
            if rel:
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
        write_mp4(out / spec.video, frames, FPS, audio)
        if spec.audio:
            write_m4a(out / spec.audio, audio)
        np.savez_compressed(
            out / spec.groundtruth,
            au=au,
            channels=np.array(CHANNELS),
            envelope=env_frames,
            emotion=spec.emotion,
            level=spec.level,
        )
        apex = expression_timeline(spec, n_frames).max(0)  # the expression's own AUs (speech left out)
        aus = {c: round(float(v), 2) for c, v in zip(CHANNELS, apex, strict=True) if v > 0}
        records.append({**asdict(spec), "frames": n_frames, "aus": aus})
    return records


class ExpressionRenderer:
    """One identity's frames for given AU intensities: the portrait's closed-mouth neutral base
    (`neutral_base`) warped by the AU templates, with the skin folds they name."""

    def __init__(self, image: np.ndarray, landmarks: np.ndarray):
        from pipelines.demo_corpus.au_templates import basis, to_image

        self.warper, self.neutral = neutral_base(image, landmarks)
        self.unit = to_image(basis(self.neutral), self.neutral) / 5.0  # pixels per intensity unit (K, 468, 2)

    def frames(self, intensities: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 frames at the portrait crop's size for (T, len(CHANNELS)) FACS intensities."""
        from pipelines.demo_corpus.au_templates import fold_depths

        disp = np.einsum("tk,knd->tnd", intensities, self.unit)
        return np.stack(
            [self.warper.render(d, fold_depths(a)) for d, a in zip(disp, intensities, strict=True)]
        )


def neutral_base(image: np.ndarray, landmarks: np.ndarray):
    """A warper over the portrait turned neutral (mouth closed, smile relaxed: `au_templates.neutralising`)
    and that neutral face's landmarks (468, 3): every clip of the identity is rendered from this base."""
    from pipelines.demo_corpus.au_templates import neutralising, to_image
    from pipelines.demo_corpus.render import FaceWarper

    hidden = FaceWarper(image, landmarks).render(to_image(neutralising(landmarks, overlap=0.15), landmarks))
    neutral = np.array(landmarks, np.float64)
    neutral[:, :2] += to_image(neutralising(landmarks), landmarks)
    return FaceWarper(hidden, neutral), neutral.astype(np.float32)


def _prepare(fa: FaceAnalyzer, portrait: Portrait, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Face crop (2*size square) of a portrait and its neutral mesh in crop pixels."""
    result = fa.analyze(portrait.image)
    if not result.found:
        raise UserError(f"portrait {portrait.source}: {result.reason}")
    x0, y0, x1, y1 = result.mesh.box
    side = max(x1 - x0, y1 - y0) * 1.9
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2 + 0.04 * side])
    hi = 2 * size
    to_crop = cv2.invertAffineTransform(crop_transform(centre, side, 0.0, hi))
    crop = cv2.warpAffine(
        portrait.image, to_crop, (hi, hi), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT101
    )
    lm = result.mesh.landmarks.astype(np.float64).copy()
    lm[:, :2] = lm[:, :2] @ to_crop[:, :2].T + to_crop[:, 2]
    lm[:, 2] *= hi / side
    return crop, lm.astype(np.float32)


def build(cfg: CorpusConfig) -> Path:
    """Render the corpus into cfg.out (atomically). Returns the output folder."""
    from tqdm import tqdm

    from media.images import write_image

    cfg.validate()
    out = Path(cfg.out).resolve()
    if out.exists() and not cfg.force:
        raise UserError(f"{out} already exists; pass --force true to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as err:
        raise UserError(f"cannot write to {out.parent}: {err.strerror}") from err
    started = time.time()
    try:
        people = speakers(cfg.portraits, cfg.identities, cfg.training_photos)
        # An unseen face for `tbd generate`: the built-in corpus's last speaker (validation only, never
        # trained on); with the user's photos a further variant of the first.
        heldout = (
            variant(load_portraits(cfg.portraits)[0], cfg.identities + 1)
            if cfg.portraits
            else heldout_portrait()
        )
        specs = plan_clips(cfg, [p.name for p in people])
        jobs = []
        with FaceAnalyzer() as fa:
            for person in people:
                crop, neutral = _prepare(fa, person, cfg.size)
                write_image(tmp / "portraits" / f"{person.name}.png", person.image)
                jobs.append(
                    IdentityJob(
                        person.name,
                        crop,
                        neutral,
                        [s for s in specs if s.identity == person.name],
                        str(tmp),
                        cfg.size,
                        cfg.seconds,
                    )
                )
            crop, neutral = _prepare(fa, heldout, cfg.size)  # the held-out portrait must have a face too
            compound = plan_compound(cfg, heldout.name)
            if compound:  # rendered from the held-out photo itself, as `tbd generate` is given it
                jobs.append(
                    IdentityJob(heldout.name, crop, neutral, compound, str(tmp), cfg.size, cfg.seconds)
                )
                specs += compound
        write_image(tmp / "portraits" / "heldout" / f"{heldout.name}.png", heldout.image)
        records = []
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(tqdm(total=len(specs), desc="demo corpus clips", unit="clip"))
            mapper = map
            if cfg.workers > 1:  # spawn, not fork: the parent holds MediaPipe's threads
                ctx = mp.get_context("spawn")
                mapper = stack.enter_context(cf.ProcessPoolExecutor(cfg.workers, mp_context=ctx)).map
            for recs in mapper(render_identity, jobs):
                records.extend(recs)
                bar.update(len(recs))
        meta = {
            "version": CORPUS_VERSION,
            "fps": FPS,
            "size": cfg.size,
            "seconds": cfg.seconds,
            "seed": cfg.seed,
            "variation": VARIATION if cfg.variation else None,
            "compound_clips": cfg.compound_clips,
            "training_photos": None if cfg.portraits else cfg.training_photos,
            "au_channels": list(CHANNELS),
            "kb_version": load_kb().version,
            "identities": [
                {"name": p.name, "speaker": f"W{i + 1:03d}", "source": p.source} for i, p in enumerate(people)
            ],
            "heldout": {
                "name": heldout.name,
                "image": f"portraits/heldout/{heldout.name}.png",
                "source": heldout.source,
            },
            "clips": sorted(records, key=lambda r: r["video"]),
        }
        (tmp / "corpus.json").write_text(json.dumps(meta, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "demo corpus: %d clips (%d identities) in %.1fs -> %s",
        len(records),
        len(people),
        time.time() - started,
        out,
    )
    return out


def build_and_describe(cfg: CorpusConfig) -> str:
    """`tbd demo-corpus`: render, and say where each part went."""
    out = build(cfg)
    return (
        f"demo corpus written to {out}\n  MEAD layout: {out / 'mead'}\n  HDTF layout: {out / 'hdtf'}\n"
        f"  ground truth (evaluation only): {out / 'groundtruth'}\n  index: {out / 'corpus.json'}"
    )
