"""What each evaluated row is given (`evaluation.requests`): nothing computed from its target clip's frames,
the same CoT for every guidance design, and the label alone for label-only."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from evaluation.clips import Clip
from evaluation.evaluate import EvaluateConfig, draw
from evaluation.requests import DESIGNS, GLOBAL_ONLY, LABEL_ONLY, THINK, information, rows, think_requests
from pipelines.demo_corpus.au_templates import CHANNELS
from tbd_lightning.sampler import GuidanceConfig

T, S = 8, 32


class CapturingPipe:
    """Records the requests a row sends to the model (no model runs)."""

    device = SimpleNamespace(type="cpu")
    denoiser = SimpleNamespace(config=SimpleNamespace(global_text="emotion"))

    def __init__(self):
        self.requests = []

    def generate(self, requests, guidance, seed, max_frames_per_batch=None):
        self.requests.extend(requests)
        return [SimpleNamespace(frames=np.zeros((T, S, S, 3), np.uint8), seam_ratio=None) for _ in requests]


def _annotation(au: int, name: str) -> dict:
    """A shard annotation as `tbd annotate` writes one for a validation clip: its AU comes from the
    target's measured evidence."""
    unit = {"au": au, "name": name, "intensity": "D", "side": "both", "region": "mouth", "muscle": "m",
            "movement": f"measured on the target: {name}"}  # fmt: skip
    return {"emotion": "happy", "intensity_level": 3, "reasoning": ["measured"], "action_units": [unit],
            "global_description": f"target evidence {name}", "regions": {}}  # fmt: skip


def _clip(tmp_path, seed: int, annotation: dict) -> Clip:
    """A happy level-3 clip: `seed` changes only what is measured on the target (its frames, landmarks and
    shard annotation); its inputs (reference, its landmarks, speech) are the same for every seed."""
    rng, fixed = np.random.default_rng(seed), np.random.default_rng(0)
    video = tmp_path / "W003_happy_3.mp4"
    meta = {"emotion": "happy", "level": 3, "speaker": "W003", "video": str(video)}
    return Clip(key="mead_W003_happy_3_000", meta=meta, frames=rng.integers(0, 255, (T, S, S, 3), np.uint8),
                landmarks=rng.random((T, 468, 3), np.float32), audio_features=fixed.random((T, 12), np.float32),
                wav=fixed.random(T * 640, np.float32), cot=annotation,
                reference=fixed.integers(0, 255, (S, S, 3), np.uint8),
                reference_landmarks=fixed.random((468, 3), np.float32), reference_key="mead_W003_neutral_1_000")  # fmt: skip


def _groundtruth(tmp_path) -> dict:
    """The renderer's request for the clip: AU6 and AU12 on both sides (happy's prototype), speech on 25/26."""
    au = np.zeros((T, len(CHANNELS)), np.float32)
    for name, value in (("AU6", 3.5), ("AU12_R", 4.0), ("AU12_L", 4.0), ("AU25", 2.0), ("AU26", 1.0)):
        au[:, CHANNELS.index(name)] = value
    path = tmp_path / "gt.npz"
    np.savez(path, au=au, channels=np.array(CHANNELS))
    return {str((tmp_path / "W003_happy_3.mp4").resolve()): path}


def _canonical(request) -> tuple:
    return tuple(v.tobytes() if isinstance(v, np.ndarray) else repr(v) for v in dataclasses.astuple(request))


def test_no_model_row_is_given_anything_computed_from_its_target(tmp_path):
    """Two clips that differ in everything measured on the target (frames, landmarks, the shard annotation
    carrying its measured AUs) get identical requests in every model row; the designs get the AU
    specification's CoT (the renderer's request through Think), never the annotation's. Fails when a row
    reads `clip.cot` (as every design row did before: they compared target-measured text with no text)."""
    gt = _groundtruth(tmp_path)
    clips = [
        _clip(tmp_path, 1, _annotation(9, "Nose Wrinkler")),
        _clip(tmp_path, 2, _annotation(15, "Lip Corner Depressor")),
    ]
    think_requests(clips, gt)
    config = EvaluateConfig(model=tmp_path, data=tmp_path)
    table = rows(GuidanceConfig(steps=2, audio_scale=2, global_scale=2, local_scale=2), ablations=True)
    assert [r.name for r in table if r.guidance is not None] == [*DESIGNS, LABEL_ONLY, THINK]
    for row in table:
        if row.guidance is None:
            continue
        pipe = CapturingPipe()
        for clip in clips:
            draw(pipe, [clip], row, config)
        first, second = pipe.requests
        assert _canonical(first) == _canonical(second), row.name
        text = repr(dataclasses.astuple(first))
        assert "measured on the target" not in text and "target evidence" not in text, row.name
        assert information(row, have_spec=True)
    spec_aus = {u["au"] for u in clips[0].spec_cot["action_units"]}
    assert spec_aus == {6, 12}, clips[0].spec_cot["action_units"]  # the specification, speech AUs left out
    by_name = {r.name: r for r in table}
    pipe = CapturingPipe()
    for name in ("progressive", GLOBAL_ONLY, LABEL_ONLY):
        draw(pipe, clips[:1], by_name[name], config)
    progressive, global_only, label_only = pipe.requests
    assert progressive.cot == clips[0].spec_cot and not progressive.label_only
    assert global_only.cot is None and global_only.global_text.startswith("A ")  # the model's global text:
    assert "happy" in global_only.global_text  # the emotion, none of the movements the local sentences carry
    assert not any(
        u["movement"].split(";")[0] in global_only.global_text for u in clips[0].spec_cot["action_units"]
    )
    assert global_only.local_text == []
    assert label_only.label_only and label_only.cot == clips[0].label_cot


def test_rows_without_local_sentences_keep_full_text_guidance():
    """label-only and global-only have no local stage to hand over to: they are sampled with w_g = 1 at every
    step (single-stage), not faded to the floor as the progressive row's global term is."""
    g = GuidanceConfig(steps=8, audio_scale=2, global_scale=2, local_scale=2)
    by_name = {r.name: r for r in rows(g, ablations=True)}
    for name in (LABEL_ONLY, GLOBAL_ONLY):
        assert by_name[name].guidance.mode == "single-stage"
        assert by_name[name].guidance.weights(1.0)[0] == 1.0
    assert by_name["progressive"].guidance.weights(1.0)[0] == pytest.approx(g.global_floor)
    without = {r.name for r in rows(g, ablations=True, region_masks=False)}
    assert "no-masks" in without and "progressive" not in without
