"""`tbd check-conditioning`: before a long job, does each condition change the output where it should?

1. Overfit: the model of a `tbd train` config is trained on a handful of clips (`clips`; by default three
   clips of distinct emotions from each of two training speakers) for `steps` steps, tracked in MLflow like
   any training run, and exported. Or `model` names an exported pipeline to check as it is.
2. Swap one condition at a time: every clip is generated with its own conditions, then with one of them
   taken from a partner clip, same seed, and the change the swap caused (Δ) is compared with the change it
   should cause (Δ*), where it should act:

   - speech (audio features of a partner with other speech): Δ = the generated inner-lip gap with the new
     audio minus with the old, per frame; Δ* = the partner's speech envelope minus the clip's own;
     effect = corr(Δ, Δ*). Beside it, the lip-sync proxy of the swapped video with the new and the old audio.
   - emotion text (the CoT of a partner of the same speaker with another emotion): Δ = the swapped video's
     calibrated AUs (mean over frames, against the reference; speech AUs left out) minus the own video's;
     Δ* = the partner's real clip's AUs minus the clip's real AUs; effect = <Δ, Δ*> / |Δ*|² (0: the text
     changed nothing, 1: all the way to the partner's expression). Beside it, how much of the pixel change
     lies inside the CoTs' face regions (`inside_share`) against the regions' share of the frame.
   - reference (a frame of another speaker): Δ = the change of the video's mean frame (RGB), Δ* = new
     reference minus old; effect = <Δ, Δ*> / |Δ*|². Beside it the same projection of the real clips (the
     ceiling) and of the dlib identity descriptor (informative only: see `reference_effect`).

   - local text (the clip's own CoT without its last AU sentence outside the mouth and jaw that the AU
     measure reads and that another checked clip of its emotion goes without (`varied_aus`: e.g. AU4 of a
     sad take whose other take lacks it); the global sentence and every other AU as they were): `local` =
     how far that AU fell (-Δ, calibrated intensity units 0..5), `local_leak` = mean |Δ| over the measured
     AUs of the other regions. Declared before it was first measured (2026-12-05): it acts when local >= 0.25
     and local_leak <= 0.15. Gating only when `thresholds` names `local`: a model can learn a sentence that
     comes and goes within a label only from a corpus where it does (`tbd demo-corpus --variation true`,
     whose takes of two speak one sentence with different muscles); in the default demo corpus every clip's
     AUs follow its label and there is no such sentence (n = 0). On corpus 3 an overfit of 500 steps does
     not tell a take's two faces apart (local 0.13) unless the loss weighs the AU regions (`region_weight` 5:
     1.1-1.7, tests/test_conditioning_check.py); its leak, 0.09-0.19, is reported (real takes move AU5 too).

   A condition the model ignores gives Δ = 0, so each effect is 0 on a broken path (the reference's near 0,
   1.1e-3 on 2026-12-06: the other clip's landmarks still place the pose and the local regions). `break_path`
   breaks one on purpose (inside the denoiser's forward the condition is dropped in every branch, as if it
   never reached the model: the fault a check must catch, named so), which is how the test shows that each
   threshold fails while the other conditions still act.
3. `OUT/conditioning.json`, a strip (real, own, the speech / text / reference swaps and the local edit of the
   first clip), a printed table, an MLflow run; the exit status is 1 when an effect is below its threshold.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict

from evaluation.condition_effects import (
    au_vector,
    local_edit,
    local_effect,
    reference_effect,
    speech_effect,
    text_effect,
    varied_aus,
)
from tbd_core.errors import UserError
from tbd_lightning.sampler import GuidanceConfig

log = logging.getLogger(__name__)
CONDITIONS = ("speech", "text", "reference", "local")
LOCAL_BAR = {"local": 0.25, "local_leak": 0.15}  # declared before the first measurement (see the docstring)
THRESHOLDS = {"speech": 0.2, "text": 0.25, "reference": 0.25}  # the gating conditions by default
# What `break_path` cuts: the `Conditions.keep` entries set False in every branch, so the denoiser gets that
# condition's dropped form (the null tokens classifier-free training learns; a zero reference), as a loader
# that loses the condition would give it. Text is both sentences (no local token is then attendable, so their
# regions cannot act either).
BREAKABLE = {
    "speech": ("audio",),
    "text": ("global", "local"),
    "reference": ("reference",),
    "local": ("local",),
}
DROPPED_CALLBACKS = ("SampleVideos", "LearningRateMonitor")  # previews of a handful of clips: time only


class CheckConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    data: Path
    train_config: Path = Path("configs/train/tiny.yaml")  # the `tbd train` config to overfit with
    model: Path | None = None  # an exported pipeline to check instead of overfitting one
    version: str | None = None
    clips: list[str] | None = None  # clip keys; default: 3 emotions x 2 speakers of the training split
    # 250 steps at lr 3e-3 (tiny.yaml: 1e-3): speech reliance 1.57 vs 2.03 at 500 steps of 1e-3, every gating
    # effect passing (speech 0.44, text 1.08, reference 0.91), in half the time (2026-12-06, benchmarks/README.md)
    steps: int = 250
    lr: float | None = 3e-3  # the overfit's learning rate; None: the train config's
    batch_size: int = 4
    max_frames: int = 32
    # 4 steps: the effects of 8 within 0.02 on both demo overfits (2026-12-04), in half the time
    guidance: GuidanceConfig = GuidanceConfig(steps=4, mode="cfg", audio_scale=1.5)
    seed: int = 0
    thresholds: dict[str, float] = THRESHOLDS  # the conditions it gates on: name local to gate on it too
    break_path: str | None = None  # speech | text | reference | local: dropped on purpose (the test)
    out: Path = Path("out/check-conditioning")
    tracking_uri: str | None = None


def pick_clips(data: Path, version: str, per_speaker: int = 3, speakers: int = 2) -> list[str]:
    """Clips of distinct emotions (highest level first, neutral last) from the first `speakers` training
    speakers with at least two such clips: enough for a text swap within a speaker and a reference swap
    across speakers."""
    from pipelines.data_folder import DataFolder

    folder = DataFolder(data)
    summaries = folder.media_summaries()
    by_speaker: dict[str, list[str]] = {}
    for key, s in sorted(summaries.items()):
        if s["split"] == "train":
            by_speaker.setdefault(s["speaker"], []).append(key)
    chosen = []
    for keys in by_speaker.values():
        ranked = sorted(
            keys, key=lambda k: (summaries[k]["emotion"] == "neutral", -(summaries[k].get("level") or 0), k)
        )
        seen, mine = set(), []
        for key in ranked:
            if summaries[key]["emotion"] not in seen:
                seen.add(summaries[key]["emotion"])
                mine.append(key)
        if len(mine) >= 2:
            chosen.append(mine[:per_speaker])
        if len(chosen) == speakers:
            break
    if len(chosen) < 2:
        raise UserError(f"{data}: the check needs two training speakers with two emotions each; name --clips")
    return [k for keys in chosen for k in keys]


def overfit(config: CheckConfig, clips: list[str], version: str) -> Path:
    """Train `config.train_config`'s model on `clips` for `steps` steps (MLflow-tracked); returns the exported folder."""
    import subprocess

    from tbd_lightning.export import export

    base = yaml.safe_load(Path(config.train_config).read_text())
    trainer = base.setdefault("trainer", {})
    trainer["callbacks"] = [c for c in trainer.get("callbacks", []) if not str(c.get("class_path")).endswith(DROPPED_CALLBACKS)]  # fmt: skip
    trainer.update(max_steps=config.steps, limit_val_batches=0, default_root_dir=str(config.out / "train"),
                   enable_model_summary=False)  # fmt: skip
    for cb in trainer["callbacks"]:
        if str(cb.get("class_path")).endswith("ModelCheckpoint"):
            cb.setdefault("init_args", {}).update(dirpath=None, every_n_train_steps=config.steps)
    logger = trainer.get("logger")
    if isinstance(logger, dict) and "init_args" in logger:
        logger["init_args"].update(run_name="check-conditioning", tracking_uri=config.tracking_uri)
    if config.lr is not None:
        base.setdefault("model", {})["lr"] = config.lr
    data = base.setdefault("data", {})
    data.update(data=str(config.data), version=version, clips=clips, batch_size=config.batch_size,
                train_batches=config.steps,  # one epoch: the loader's workers start once
                text_cache=data.get("text_cache") or str(config.out / "text-cache"))  # fmt: skip
    config.out.mkdir(parents=True, exist_ok=True)
    if (config.out / "train").exists():  # the check's own scratch run: every check overfits afresh
        log.info("removing the previous check's training folder %s", config.out / "train")
        shutil.rmtree(config.out / "train")
    overlay = config.out / "overfit.yaml"
    overlay.write_text(yaml.safe_dump(base, sort_keys=False))
    log.info("overfitting %d clips for %d steps (%s)", len(clips), config.steps, overlay)
    # As a user would; its lines and progress bar to our terminal (stdout carries this check's report)
    try:
        terminal = sys.stderr if sys.stderr.fileno() >= 0 else None
    except (AttributeError, OSError, ValueError):  # a captured stream (pytest) has no descriptor
        terminal = None
    proc = subprocess.run(
        [sys.executable, "-m", "tbd", "train", "--config", str(overlay)], stdout=terminal, stderr=terminal
    )
    if proc.returncode != 0:  # train's own error is on the terminal above: no traceback of this call
        raise UserError(
            f"the overfit's `tbd train --config {overlay}` failed (exit status {proc.returncode})"
        )
    export(config.out / "train" / "checkpoints" / "last.ckpt", config.out / "model")
    return config.out / "model"


def partners(clips) -> dict[str, dict[str, object]]:
    """For each clip: a `speech` partner (another sentence), a `text` partner (same speaker, other emotion)
    and a `reference` partner (another speaker), each the next such clip in order."""
    out = {}
    for i, clip in enumerate(clips):
        order = clips[i + 1 :] + clips[:i]
        same = [c for c in order if c.meta["speaker"] == clip.meta["speaker"]]
        out[clip.key] = {
            "speech": next((c for c in same + order if not np.array_equal(c.wav, clip.wav)), None),
            "text": next((c for c in same if c.meta["emotion"] != clip.meta["emotion"]), None),
            "reference": next((c for c in order if c.meta["speaker"] != clip.meta["speaker"]), None),
        }
    return out


class BrokenPath:
    """Drops one condition in every branch inside the denoiser's forward (a deliberate fault, for the check's
    own test): the model then cannot see that condition at all, and sees the others as it was trained to."""

    def __init__(self, denoiser, condition: str | None):
        if condition is not None and condition not in BREAKABLE:
            raise UserError(f"break_path {condition!r}; choose one of {sorted(BREAKABLE)}")
        self.denoiser, self.condition, self.forward = denoiser, condition, denoiser.forward

    def __enter__(self):
        if self.condition is not None:
            import torch

            def broken(sample, timestep, cond):
                cut = {c: torch.zeros_like(cond.kept(c)) for c in BREAKABLE[self.condition]}
                return self.forward(
                    sample, timestep, dataclasses.replace(cond, keep={**(cond.keep or {}), **cut})
                )

            self.denoiser.forward = broken
        return self

    def __exit__(self, *exc):
        self.denoiser.__dict__.pop("forward", None)  # the class's forward again


def run_check(config: CheckConfig) -> dict:
    import torch
    from PIL import Image

    from evaluation.clips import load_clips
    from evaluation.config import EvaluateConfig
    from evaluation.judges import IdentityJudge
    from evaluation.report import strip
    from media.au_measure import track_still, track_video
    from pipelines.data_folder import DataFolder
    from tbd_core.tracking import job_run, tracking_uri
    from tbd_lightning.pipeline import TBDPipeline

    version = DataFolder(config.data).pick_version(config.version)
    keys = config.clips or pick_clips(config.data, version)
    model = config.model or overfit(config, keys, version)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = TBDPipeline.from_pretrained(model).to(device)
    eval_config = EvaluateConfig(model=model, data=config.data, max_frames=config.max_frames)
    clips = load_clips(eval_config, pipe.size, version, {}, keys=keys)
    pairs = partners(clips)
    judge = IdentityJudge()
    for clip in clips:
        clip.real_video = track_video(clip.frames)
        clip.reference_video = track_still(clip.reference)

    def generate(clip, reference_of=None, audio_of=None, cot_of=None, cot=None) -> np.ndarray:
        ref, audio = reference_of or clip, audio_of or clip
        t = len(clip.frames)
        cot = cot or (cot_of or clip).cot
        return pipe(ref.reference, ref.reference_landmarks, audio.audio_features[:t], cot=cot,
                    guidance=config.guidance, seed=config.seed).frames  # fmt: skip

    varied = varied_aus({c.key: c.cot for c in clips if c.cot}, {c.key: c.meta["emotion"] for c in clips})
    rows, strips = [], []
    with BrokenPath(pipe.denoiser, config.break_path):
        for clip in clips:
            own = generate(clip)
            own_video = track_video(own)
            own_aus = au_vector(
                own_video, clip.reference_video.baseline()
            )  # the text and local effects' base
            row, shown = {"key": clip.key}, [clip.frames, own]
            speech, text, other = (pairs[clip.key][c] for c in ("speech", "text", "reference"))
            if speech is not None:
                shown.append(generate(clip, audio_of=speech))
                row.update(speech_effect(shown[-1], own_video, speech, clip), speech_partner=speech.key)
            if text is not None:
                shown.append(generate(clip, cot_of=text))
                row.update(text_effect(shown[-1], own, own_aus, text, clip, pipe.size), text_partner=text.key)
            edit = local_edit(clip.cot, own_aus, varied[clip.key]) if clip.cot else None
            if edit is not None:
                edited = generate(clip, cot=edit[0])
                row.update(local_effect(edited, own_aus, clip, edit[1]))
            if other is not None:
                shown.append(generate(clip, reference_of=other))
                row.update(reference_effect(judge, shown[-1], own, own_video, other, clip))
                row["reference_partner"] = other.key
            if edit is not None:  # shown last: the own video's AU sentence removed
                shown.append(edited)
            rows.append(row)
            strips.append(shown)
            log.info("check %s: %s", clip.key, {k: v for k, v in row.items() if k != "key"})

    effects = {}
    for c in CONDITIONS:
        values = [r[c] for r in rows if r.get(c) is not None]
        mean = float(np.mean(values)) if values else None
        threshold = config.thresholds.get(c, THRESHOLDS.get(c, LOCAL_BAR.get(c)))
        passed = mean is not None and mean >= threshold
        effects[c] = {"effect": mean, "n": len(values), "threshold": threshold, "passed": passed,
                      "gating": c in config.thresholds}  # fmt: skip
        if c == "local":
            leaks = [r["local_leak"] for r in rows if r.get("local") is not None]
            leak = float(np.mean(leaks)) if leaks else None
            effects[c].update(leak=leak, leak_bound=LOCAL_BAR["local_leak"],
                              passed=passed and leak <= LOCAL_BAR["local_leak"])  # fmt: skip
    report = {"model": str(model), "data": str(config.data), "version": version, "clips": keys,
              "break_path": config.break_path, "guidance": dataclasses.asdict(config.guidance),
              "effects": effects, "passed": all(e["passed"] for e in effects.values() if e["gating"]),
              "per_clip": rows}  # fmt: skip
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "conditioning.json").write_text(json.dumps(report, indent=2))
    image = Image.fromarray(strip(strips[0], columns=6))  # real, own, each swap, the local edit
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(config.out / "conditioning.png")
    for c, e in effects.items():
        shown = "n/a" if e["effect"] is None else f"{e['effect']:+.3f}"
        leak = (
            ""
            if "leak" not in e
            else f", leak {'n/a' if e['leak'] is None else round(e['leak'], 3)} <= {e['leak_bound']}"
        )
        verdict = (
            ("ok" if e["passed"] else "FAILED")
            if e["gating"]
            else ("acts" if e["passed"] else "does not act") + ", reported only"
        )
        print(
            f"{c:10s} effect {shown} (threshold {e['threshold']}{leak}, n={e['n']}): {verdict}",
            file=sys.stderr,
        )
    uri = tracking_uri(config.tracking_uri, Path(config.data))
    with job_run(
        "check-conditioning",
        uri,
        {"model": str(model), "clips": len(keys), "break_path": str(config.break_path)},
    ) as mlflow:
        mlflow.log_metrics(
            {f"{c}_effect": e["effect"] for c, e in effects.items() if e["effect"] is not None}
        )
        mlflow.log_artifact(str(config.out / "conditioning.json"))
        mlflow.log_artifact(str(config.out / "conditioning.png"))
    return report


def check(config: CheckConfig) -> dict:
    """The command: the report, and exit status 1 when an effect is below its threshold."""
    report = run_check(config)
    if not report["passed"]:
        failed = [c for c, e in report["effects"].items() if e["gating"] and not e["passed"]]
        raise SystemExit(f"conditioning check failed for {failed}: see {config.out / 'conditioning.json'}")
    return report
