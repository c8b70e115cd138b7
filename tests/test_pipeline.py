"""`TBDPipeline`: a diffusers pipeline that saves and loads (in a fresh process), whose call is the progressive
sampler (same frames as sampling by hand), with plain values that round-trip, an optional VAE, clear input
errors, and the `LogPipeline` callback that puts the trained (EMA) pipeline into the MLflow run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from tbd_lightning.model import Conditions, TBDVideoDenoiser
from tbd_lightning.pipeline import TBDPipeline, to_uint8
from tbd_lightning.sampler import GuidanceConfig, ProgressiveSampler

SIZE, WINDOW = 32, 4
MEDIA = {"fps": 25, "crop_size": SIZE, "crop_margin": 1.8, "n_mels": 80, "audio_encoder": None}
CONDITIONING = {"frames": WINDOW, "size": SIZE, "prediction_type": "v_prediction", "drop": {"audio": 0.1}}
GUIDANCE = GuidanceConfig(steps=2, switch=0.3)


def make_pipeline(vae=None, **values) -> TBDPipeline:
    torch.manual_seed(0)
    channels = {} if vae is None else {"in_channels": 4, "out_channels": 4, "ref_channels": 4}
    denoiser = TBDVideoDenoiser.from_preset("tiny", max_frames=8, **channels).eval()
    scheduler = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", rescale_betas_zero_snr=True
    )
    values = {"media": MEDIA, "conditioning": CONDITIONING, "annotation_version": "v-test", **values}
    return TBDPipeline(denoiser, scheduler, vae=vae, **values)


def inputs(frames: int = 6, seed: int = 0):
    """A portrait crop, stand-in crop-normalised landmarks (a region mask needs only their geometry) and
    per-frame audio features."""
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    landmarks = np.concatenate([rng.uniform(0.25, 0.75, (468, 2)), np.zeros((468, 1))], 1).astype(np.float32)
    return reference, landmarks, rng.standard_normal((frames, 80)).astype(np.float32)


TEXTS = {"global_text": "a contemptuous look", "local_text": ["AU14 dimpler, slight: lip corner tightens"],
         "regions": ("mouth",)}  # fmt: skip


@pytest.fixture(scope="module")
def pipe():
    return make_pipeline()


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "model"
    pipe.save_pretrained(out)
    return out


def test_saved_folder_is_a_diffusers_pipeline_that_loads_and_generates_in_a_fresh_process(
    pipe, saved, netguard_log
):
    from tests.conftest import offline_env

    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "TBDPipeline"
    # diffusers names a component of a library outside its own list by the class's module
    assert index["denoiser"] == ["tbd_lightning.model", "TBDVideoDenoiser"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"] and index["vae"] == [None, None]
    assert (saved / "denoiser" / "diffusion_pytorch_model.safetensors").is_file()
    assert (saved / "scheduler" / "scheduler_config.json").is_file()

    reference, landmarks, feats = inputs()
    np.savez(saved.parent / "inputs.npz", reference=reference, landmarks=landmarks, feats=feats)
    code = f"""
import json, sys, numpy as np
from tbd_lightning import TBDPipeline, GuidanceConfig
pipe = TBDPipeline.from_pretrained({str(saved)!r})
x = np.load({str(saved.parent / "inputs.npz")!r})
out = pipe(x["reference"], x["landmarks"], x["feats"], guidance=GuidanceConfig(steps=2, switch=0.3), seed=3,
           **json.loads(sys.argv[1]))
np.save({str(saved.parent / "frames.npy")!r}, out.frames)
print(type(pipe.denoiser).__name__, pipe.frames, pipe.size, pipe.fps)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(TEXTS)], capture_output=True, text=True, timeout=300,
        env=offline_env(netguard_log), cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["TBDVideoDenoiser", str(WINDOW), str(SIZE), "25"]
    frames = np.load(saved.parent / "frames.npy")
    assert frames.shape == (len(feats), SIZE, SIZE, 3) and frames.dtype == np.uint8
    here = pipe(reference, landmarks, feats, guidance=GUIDANCE, seed=3, **TEXTS).frames
    # Same weights, seed and inputs; loaded weights may take another SIMD path: at most a rounding step.
    assert np.abs(frames.astype(int) - here).max() <= 1


def test_the_call_is_the_progressive_sampler(pipe):
    """Frames of the pipeline = the sampler run by hand on conditions built by hand (2 windows, the last
    padded), with the same seed: the call adds no sampling of its own."""
    reference, landmarks, feats = inputs(frames=6)
    out = pipe(reference, landmarks, feats, guidance=GUIDANCE, seed=5, output_type="latent", **TEXTS)

    from media.au_measure import token_masks

    emb = pipe.text_embedder(torch.device("cpu")).embed([TEXTS["global_text"], *TEXTS["local_text"]])
    union, tokens, _ = token_masks(
        landmarks, SIZE, TEXTS["regions"], 8
    )  # per local sentence, and their union
    mask, tokens = torch.from_numpy(union), torch.from_numpy(tokens)
    local = torch.zeros(8, emb.shape[1])
    local[:1] = torch.from_numpy(emb[1:])
    padded = np.concatenate([feats, feats[-1:], feats[-1:]])
    ref = torch.from_numpy(reference).permute(2, 0, 1).float() / 127.5 - 1
    cond = Conditions(
        ref[None].expand(2, -1, -1, -1), torch.from_numpy(padded).reshape(2, WINDOW, 80),
        torch.from_numpy(emb[0])[None].expand(2, -1), local[None].expand(2, -1, -1),
        (torch.arange(8) < 1)[None].expand(2, -1), mask[None, None, None].expand(2, WINDOW, 1, SIZE, SIZE),
        local_masks=tokens[None, None].expand(2, WINDOW, 8, SIZE, SIZE),
    )  # fmt: skip
    sampler = ProgressiveSampler(pipe.denoiser, pipe.scheduler.config, GUIDANCE)
    by_hand = sampler.sample((2, WINDOW, 3, SIZE, SIZE), cond, generator=torch.Generator().manual_seed(5))
    by_hand = by_hand.flatten(0, 1)[: len(feats)]
    assert torch.equal(out.frames, by_hand)
    frames = pipe(reference, landmarks, feats, guidance=GUIDANCE, seed=5, **TEXTS).frames
    assert np.array_equal(frames, to_uint8(by_hand))
    assert out.global_text == TEXTS["global_text"] and out.local_text == TEXTS["local_text"]


def test_batches_of_windows_give_the_video_of_one_batch(pipe):
    """`max_frames_per_batch` bounds memory, not the result: 4 windows in batches of one window give the
    frames of all 4 in one batch (every window's noise is drawn before the first batch)."""
    reference, landmarks, feats = inputs(frames=4 * WINDOW - 1)
    run = lambda per: pipe(reference, landmarks, feats, guidance=GUIDANCE, seed=5, output_type="latent",  # noqa: E731
                           max_frames_per_batch=per, **TEXTS).frames  # fmt: skip
    whole, one_by_one = run(None), run(WINDOW)
    assert whole.shape[0] == len(feats) and torch.allclose(whole, one_by_one, atol=1e-5)


@pytest.mark.parametrize("motion", [0, 2])
def test_videos_generated_together_equal_each_generated_alone(pipe, motion):
    """`generate` (evaluation's batched sampling) samples the windows of several videos together, yet each
    video is the one a lone call gives: different lengths, texts and references, in batches that mix videos
    (max 3 windows per call), and with motion frames, where window w of every video forms a batch."""
    from tbd_lightning.video_batch import VideoRequest

    guidance = GuidanceConfig(steps=2, switch=0.3, motion_frames=motion)
    requests = [VideoRequest(*inputs(frames=n, seed=n), **texts)
                for n, texts in ((7, TEXTS), (13, {"global_text": "a broad smile"}), (4, TEXTS))]  # fmt: skip
    together = pipe.generate(
        requests, guidance, seed=3, output_type="latent", max_frames_per_batch=3 * WINDOW
    )
    for r, out in zip(requests, together, strict=True):
        alone = pipe(r.reference, r.reference_landmarks, r.audio_features, global_text=r.global_text,
                     local_text=r.local_text, regions=r.regions, guidance=guidance, seed=3, output_type="latent")  # fmt: skip
        assert out.frames.shape == alone.frames.shape and out.windows == alone.windows
        assert torch.allclose(out.frames, alone.frames, atol=1e-5), (out.frames - alone.frames).abs().max()
        assert out.global_text == alone.global_text
        assert (out.seam_ratio is None) == (alone.seam_ratio is None)


def test_a_cot_conditions_as_in_training_and_label_only_drops_it(pipe):
    from tbd_lightning.text import cot_sentences, cot_token_regions

    cot = {
        "emotion": "contempt", "intensity_level": 2, "global_description": "a one-sided sneer",
        "action_units": [{"au": 14, "name": "dimpler", "intensity": "B", "movement": "right corner tightens",
                          "region": "mouth"}],
    }  # fmt: skip
    reference, landmarks, feats = inputs(frames=3)
    out = pipe(reference, landmarks, feats, cot=cot, guidance=GUIDANCE, seed=1)
    global_text, local = cot_sentences(cot, 8)
    same = pipe(reference, landmarks, feats, global_text=global_text, local_text=local, regions=cot_token_regions(cot, 8),
                guidance=GUIDANCE, seed=1)  # fmt: skip
    assert np.array_equal(out.frames, same.frames)
    label = pipe(reference, landmarks, feats, cot=cot, label_only=True, guidance=GUIDANCE, seed=1)
    assert label.global_text == "contempt, level 2" and label.local_text == []


def test_the_global_condition_names_the_emotion_and_leaves_the_muscles_to_the_local_sentences():
    """The paper's split: the global text is the emotion, each muscle is a local sentence. Think's global
    sentence lists the movements too ("A severe sad expression: inner brow corners raised, ..."); given
    whole, the global condition carries every local sentence and a local sentence adds nothing."""
    from annotation.reasoner import think
    from annotation.records import ThinkRequest
    from tbd_lightning.text import cot_sentences

    for emotion in ("sad", "contempt", "surprised"):
        cot = think(ThinkRequest(emotion=emotion, level=3)).model_dump()
        global_text, local = cot_sentences(cot, 8)
        assert emotion in global_text and local, (global_text, local)
        for unit in cot["action_units"]:
            movement = unit["movement"].split(";")[0].strip().lower()
            assert movement not in global_text.lower(), (movement, global_text)
        assert cot_sentences(cot, 8, global_text="description")[0] == cot["global_description"]


def test_a_model_saved_before_the_split_keeps_its_whole_global_sentence(tmp_path):
    """A saved denoiser config without `global_text` was trained on the whole global sentence: it is given
    that sentence still; a model built now (`TBDModule`: "emotion") is given the emotion."""
    cot = {
        "emotion": "contempt", "intensity_level": 2,
        "global_description": "A marked contempt expression: lip corner tightened and raised on one side.",
        "action_units": [{"au": 14, "name": "dimpler", "intensity": "C", "movement": "right corner tightens",
                          "region": "mouth"}],
    }  # fmt: skip
    reference, landmarks, feats = inputs(frames=3)
    pipe = make_pipeline()
    pipe.denoiser.register_to_config(global_text="emotion")
    out = pipe(reference, landmarks, feats, cot=cot, guidance=GUIDANCE, seed=1)
    assert out.global_text == "A marked contempt expression."
    pipe.save_pretrained(tmp_path / "model")
    config = tmp_path / "model" / "denoiser" / "config.json"
    values = json.loads(config.read_text())
    assert values.pop("global_text") == "emotion"
    config.write_text(json.dumps(values))  # as saved before the field existed
    old = TBDPipeline.from_pretrained(tmp_path / "model")
    assert old.denoiser.config.global_text == "description"
    assert (
        old(reference, landmarks, feats, cot=cot, guidance=GUIDANCE, seed=1).global_text
        == cot["global_description"]
    )


def test_plain_values_round_trip(tmp_path):
    source = {"checkpoint": "/ckpt/last.ckpt", "sha256": "ab" * 32, "global_step": 7, "ema": True}
    pipe = make_pipeline(text_encoder="/models/clip-vit-l14", source=source)
    pipe.save_pretrained(tmp_path / "model")
    loaded = TBDPipeline.from_pretrained(tmp_path / "model")
    for key, value in (("text_encoder", "/models/clip-vit-l14"), ("media", MEDIA), ("conditioning", CONDITIONING),
                       ("annotation_version", "v-test"), ("source", source)):  # fmt: skip
        assert loaded.config[key] == value, key
    shape = (loaded.size, loaded.frames, loaded.fps, loaded.media_config.crop_margin)
    assert shape == (SIZE, WINDOW, 25, 1.8)
    assert loaded.vae is None
    bare = TBDPipeline(loaded.denoiser, loaded.scheduler)  # no values: the model's and MediaConfig's defaults
    assert (bare.frames, bare.size, bare.fps, bare.config.text_encoder) == (8, 256, 25, None)


def test_a_latent_model_decodes_through_its_vae(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=SIZE,
    ).eval()  # fmt: skip
    make_pipeline(vae=vae).save_pretrained(tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    pipe = TBDPipeline.from_pretrained(tmp_path / "model")
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.vae_scale_factor == 2
    reference, landmarks, feats = inputs(frames=5)
    latents = pipe(reference, landmarks, feats, guidance=GUIDANCE, output_type="latent", **TEXTS).frames
    assert latents.shape == (5, 4, SIZE // 2, SIZE // 2)
    frames = pipe(reference, landmarks, feats, guidance=GUIDANCE, **TEXTS).frames
    assert frames.shape == (5, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, to_uint8(pipe.decode(latents)))


def test_step_callback_sees_every_step_and_may_replace_the_sample(pipe):
    reference, landmarks, feats = inputs(frames=4)
    seen = []

    def callback(p, step, timestep, tensors):
        seen.append((step, int(timestep), tuple(tensors["latents"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])} if step == GUIDANCE.steps - 1 else None

    out = pipe(reference, landmarks, feats, guidance=GUIDANCE, callback_on_step_end=callback, **TEXTS)
    assert [s for s, _, _ in seen] == [0, 1] and seen[0][1] > seen[1][1]
    assert seen[0][2] == (1, WINDOW, 3, SIZE, SIZE)
    assert (out.frames == 128).all()  # the replaced last sample: zeros -> mid-grey


@pytest.mark.parametrize(
    "change, message",
    [
        ({"reference": np.zeros((16, 16, 3), np.uint8)}, "reference must be a (32, 32, 3) uint8"),
        ({"reference_landmarks": np.zeros((68, 2))}, "reference_landmarks must be (468, 3)"),
        ({"audio_features": np.zeros((4, 12), np.float32)}, "audio_features must be (T >= 1, 80)"),
        ({"cot": {"emotion": "happy"}}, "give either a CoT"),
        ({"regions": ("elbow",)}, "unknown face regions ['elbow']"),
        ({"local_text": ["x"] * 9}, "at most 8"),
        ({"label_only": True}, "label_only applies to a CoT"),
        ({"output_type": "pil"}, "output_type 'pil'"),
    ],
)
def test_bad_inputs_are_clear_errors(pipe, change, message):
    reference, landmarks, feats = inputs()
    kwargs = {
        "reference": reference,
        "reference_landmarks": landmarks,
        "audio_features": feats,
        **TEXTS,
        **change,
    }
    with pytest.raises(ValueError) as err:
        pipe(**kwargs)
    assert message in str(err.value)


def test_a_folder_without_model_index_is_a_clear_error(tmp_path):
    from tbd_core.errors import UserError

    with pytest.raises(UserError, match="has no model_index.json"):
        TBDPipeline.from_pretrained(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        TBDPipeline.from_pretrained(tmp_path / "missing")


def test_log_pipeline_puts_the_ema_pipeline_into_the_mlflow_run_and_registers_it(tmp_path):
    """A real (tiny, 2-step) Lightning fit with EMA and an MLflow sqlite store. `LogPipeline` is listed before
    `EMAWeightAveraging` on purpose: it still logs the averaged weights."""
    import lightning.pytorch as pl
    import mlflow
    from lightning.pytorch.callbacks import EMAWeightAveraging
    from lightning.pytorch.loggers import MLFlowLogger

    from tbd_lightning.callbacks import LogPipeline
    from tbd_lightning.module import TBDModule

    class Data(pl.LightningDataModule):
        def __init__(self, frames=WINDOW, size=SIZE, media=MEDIA, text_encoder=None, version="v-test"):
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            sample = lambda i: {  # noqa: E731
                "key": f"clip{i}", "video": torch.rand(WINDOW, 3, SIZE, SIZE, generator=g) * 2 - 1,
                "reference": torch.rand(3, SIZE, SIZE, generator=g) * 2 - 1,
                "audio": torch.randn(WINDOW, 80, generator=g), "global_text": torch.randn(384, generator=g),
                "local_text": torch.randn(8, 384, generator=g), "local_valid": torch.arange(8) < 2,
                "mask": torch.rand(1, SIZE, SIZE, generator=g),  # static over the window, as the loader gives it
            }  # fmt: skip
            return torch.utils.data.DataLoader([sample(i) for i in range(4)], batch_size=2)

    class RawWeights(pl.Callback):  # listed before the EMA callback: sees the weights it replaces
        def on_train_end(self, trainer, pl_module):
            self.state = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

    torch.manual_seed(0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ema, raw = EMAWeightAveraging(decay=0.5), RawWeights()
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=2, limit_val_batches=0,
        logger=MLFlowLogger("t", tracking_uri=uri, artifact_location=(tmp_path / "mlartifacts").as_uri()),
        callbacks=[LogPipeline(registered_model_name="tbd-test"), raw, ema], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    module = TBDModule(warmup_steps=0)
    trainer.fit(module, Data())

    client = mlflow.MlflowClient(uri)
    run_id = trainer.logger.run_id
    assert "pipeline/model_index.json" in {a.path for a in client.list_artifacts(run_id, "pipeline")}
    folder = client.download_artifacts(run_id, "pipeline", str(tmp_path / "download"))
    pipe = TBDPipeline.from_pretrained(folder)
    assert pipe.config.annotation_version == "v-test" and (pipe.frames, pipe.size) == (WINDOW, SIZE)
    assert pipe.config.source["ema"] is True and pipe.config.source["mlflow_run_id"] == run_id
    averaged = ema._average_model.module.model.state_dict()
    logged = pipe.denoiser.state_dict()
    assert all(torch.equal(v, averaged[k]) for k, v in logged.items())
    assert not all(torch.equal(v, raw.state[k]) for k, v in logged.items())  # not the last step's weights
    [version] = client.search_model_versions("name = 'tbd-test'")
    assert version.run_id == run_id and version.source.endswith("/pipeline")
