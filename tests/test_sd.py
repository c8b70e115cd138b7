"""Draw at 512 px without the real weights: a tiny folder in exactly the Stable-Diffusion-1.5 diffusers layout
(`tbd tiny-sd`) loads as SD, lands every UNet (and motion-module) weight in the video model by name, its
conditioning processors act where they should, the reference is computed once per video, long videos
continue from motion frames, and the whole chain train -> export -> generate -> evaluate runs through the
same commands as the pixel model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tbd_lightning.model import Conditions, RegionMasks
from tests.conftest import offline_env, run_tbd

SD_TINY = str(Path(__file__).parents[1] / "configs" / "train" / "sd-tiny.yaml")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    from tbd_lightning.tiny_sd import write_tiny_sd

    return write_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def denoiser(tiny_sd):
    from tbd_lightning.sd_model import SDVideoDenoiser

    torch.manual_seed(0)
    model = SDVideoDenoiser.from_sd(tiny_sd, tiny_sd / "motion_adapter", max_frames=8).eval()
    for (
        p
    ) in model.parameters():  # the zero-initialised values, motion outputs and gates would hide every effect
        if p.dim() > 1 and p.abs().max() == 0:
            torch.nn.init.normal_(p, std=0.05)
        elif p.dim() == 0:  # the reference gates: 1 = Animate Anyone's concatenation
            p.data.fill_(1.0)
    return model


def conditions(b: int = 1, t: int = 4, s: int = 8, g: torch.Generator | None = None) -> Conditions:
    g = g or torch.Generator().manual_seed(0)
    masks = torch.zeros(b, t, 8, 2 * s, 2 * s)
    masks[:, :, 0, : s // 2] = 1.0  # token 1: top rows
    masks[:, :, 1, s + s // 2 :] = 1.0  # token 2: bottom rows
    return Conditions(
        torch.randn(b, 4, s, s, generator=g), torch.randn(b, t, 80, generator=g), torch.randn(b, 77, 32, generator=g),
        torch.randn(b, 8, 384, generator=g), (torch.arange(8) < 2)[None].expand(b, -1), masks.amax(2, keepdim=True),
        None, masks,
    )  # fmt: skip


def test_tiny_sd_is_a_stable_diffusion_folder(tiny_sd):
    from diffusers import StableDiffusionPipeline

    assert {p.name for p in tiny_sd.iterdir()} >= {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True, safety_checker=None)
    ids = pipe.tokenizer("a bittersweet smile").input_ids
    assert pipe.tokenizer.decode(ids, skip_special_tokens=True).strip() == "a bittersweet smile"
    image = pipe("a smile", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_every_unet_and_motion_weight_lands_by_name(tiny_sd):
    from diffusers import MotionAdapter, UNet2DConditionModel

    from tbd_lightning.sd_model import SDVideoDenoiser

    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").state_dict()
    adapter = MotionAdapter.from_pretrained(tiny_sd / "motion_adapter").state_dict()
    video = SDVideoDenoiser.from_sd(tiny_sd, tiny_sd / "motion_adapter").unet.state_dict()
    assert all(torch.equal(video[k], v) for k, v in unet.items()), [k for k in unet if k not in video][:5]
    assert len(adapter) > 0 and all(torch.equal(video[k], v) for k, v in adapter.items())
    fresh = SDVideoDenoiser.from_sd(tiny_sd).unet.state_dict()  # no adapter: new motion modules, output zero
    outs = [v for k, v in fresh.items() if "motion_modules" in k and "proj_out" in k]
    assert outs and all(v.abs().max() == 0 for v in outs)
    assert all(torch.equal(fresh[k], v) for k, v in unet.items())


def test_a_new_denoiser_is_the_pretrained_unet_until_its_new_parts_learn(tiny_sd):
    """Reference attention on (the default): zero-initialised reference gates, audio/local values and motion
    outputs make a new video model's output for each frame the image UNet's for that frame, with the global
    sentence as SD's own text encoder's states (what its cross-attention was trained on)."""
    from diffusers import UNet2DConditionModel

    from tbd_lightning.sd_model import SDVideoDenoiser
    from tbd_lightning.sd_text import PromptEncoder

    model = SDVideoDenoiser.from_sd(tiny_sd).eval()
    assert model.config.reference_attention and model.config.text_chunks == 1
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").eval()
    states = PromptEncoder.from_sd(tiny_sd).encode(["a slight, one-sided smile of contempt"])
    cond = dataclasses.replace(conditions(t=2), global_text=states)
    x = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(x, torch.tensor(400), cond)
        theirs = unet(x[0], torch.tensor(400), encoder_hidden_states=states.expand(2, -1, -1)).sample
        assert model.reference_passes == 1  # the reference was written and read, through gates at 0
        for p in model.parameters():
            if p.dim() == 0:
                p.data.fill_(0.5)
        gated = model(x, torch.tensor(400), cond)
    assert torch.allclose(ours[0], theirs, atol=1e-5)
    assert (gated[0] - theirs).abs().max() > 1e-4  # open gates: the reference acts


def test_sd_text_states_are_encode_prompt_and_long_texts_split_or_refused(tiny_sd):
    """The global text's states are `StableDiffusionPipeline.encode_prompt`'s; a text over one 77-token
    window is split into windows (`text_chunks`) or refused with its token count, never cut."""
    from diffusers import StableDiffusionPipeline

    from tbd_core.errors import UserError
    from tbd_lightning.sd_text import PromptEncoder

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_sd, safety_checker=None, requires_safety_checker=False
    )
    sentence = "the brows draw together"
    theirs, _ = pipe.encode_prompt(sentence, "cpu", 1, do_classifier_free_guidance=False)
    one = PromptEncoder.from_sd(tiny_sd)
    assert torch.allclose(one.encode([sentence]), theirs.half().float())
    long = " ".join(["smile"] * 20)  # the tiny tokenizer's tokens are bytes: 100 tokens, two windows
    with pytest.raises(UserError, match="100 CLIP tokens, more than 1 window"):
        one.encode([long])
    two = PromptEncoder.from_sd(tiny_sd, chunks=2)
    states = two.encode([long, sentence])
    assert states.shape == (2, 154, 32)
    first, _ = pipe.encode_prompt(" ".join(["smile"] * 15), "cpu", 1, do_classifier_free_guidance=False)
    assert torch.allclose(states[0, :77], first.half().float()[0])  # window 1: the first 75 tokens
    empty, _ = pipe.encode_prompt("", "cpu", 1, do_classifier_free_guidance=False)
    assert torch.allclose(
        states[1, 77:], empty.half().float()[0]
    )  # a short text padded with the empty prompt


def test_a_local_token_acts_only_inside_its_own_region(denoiser):
    attn = denoiser.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    g = torch.Generator().manual_seed(1)
    side, dim = 8, attn.to_k.in_features
    hidden = torch.randn(2, side * side, attn.to_q.in_features, generator=g)
    masks = torch.zeros(2, 2, side, side)
    masks[:, 0, :3], masks[:, 1, 5:] = 1.0, 1.0  # token 1: top rows; token 2: bottom rows
    local = torch.randn(2, 3, dim, generator=g)
    extra = {"audio": torch.randn(2, 5, dim, generator=g), "local": local, "local_bias": torch.zeros(2, 1, 3), "masks": RegionMasks(masks)}  # fmt: skip
    text = torch.randn(2, 4, dim, generator=g)
    changed = local.clone()
    changed[:, 2] = torch.randn(2, dim, generator=g)
    with torch.no_grad():
        a = attn(hidden, encoder_hidden_states=text, tbd=extra)
        b = attn(hidden, encoder_hidden_states=text, tbd={**extra, "local": changed})
    diff = (a - b).abs().amax(dim=(0, 2)).reshape(side, side)
    assert diff[:5].max() == 0 and diff[5:].min() > 1e-5


def test_reference_attention_and_its_cache(denoiser):
    cond = conditions()
    x = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    other = Conditions(**{**cond.__dict__, "reference": torch.randn_like(cond.reference)})
    denoiser._cache = None
    with torch.no_grad():
        passes = denoiser.reference_passes
        a = denoiser(x, torch.tensor(300), cond)
        again = denoiser(x, torch.tensor(600), cond)  # same reference tensor: no new write pass
        assert denoiser.reference_passes == passes + 1
        b = denoiser(x, torch.tensor(300), other)
        assert denoiser.reference_passes == passes + 2
        assert (a - b).abs().max() > 1e-4  # the reference is seen
        dropped = {"reference": torch.tensor([False])}
        c = denoiser(x, torch.tensor(300), Conditions(**{**cond.__dict__, "keep": dropped}))
        d = denoiser(x, torch.tensor(300), Conditions(**{**other.__dict__, "keep": dropped}))
        assert torch.allclose(c, d, atol=1e-6)  # dropped: not seen at all
        denoiser._cache = None  # a fresh write pass gives what the cache gave
        assert torch.allclose(denoiser(x, torch.tensor(600), cond), again, atol=1e-6)


def test_the_reference_cache_follows_the_weights(denoiser):
    """Weights swapped under no_grad as Lightning's EMA swap does it (`WeightAveraging` copies with
    `param.data.copy_`, which leaves the version counter alone), then a forward pass: the swapped model's
    output, not the one of features cached from the weights before."""
    cond = conditions()
    x = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    saved = [p.detach().clone() for p in denoiser.parameters()]
    g = torch.Generator().manual_seed(4)
    averaged = [p + 0.02 * torch.randn(p.shape, generator=g) for p in saved]
    denoiser._cache = None
    try:
        with torch.no_grad():
            before = denoiser(x, torch.tensor(300), cond)  # caches these weights' reference features
            for p, a in zip(denoiser.parameters(), averaged, strict=True):
                p.data.copy_(a)
            swapped = denoiser(x, torch.tensor(300), cond)
            denoiser._cache = None
            fresh = denoiser(x, torch.tensor(300), cond)
        assert torch.allclose(swapped, fresh, atol=1e-6) and not torch.allclose(swapped, before, atol=1e-4)
    finally:
        with torch.no_grad():
            for p, a in zip(denoiser.parameters(), saved, strict=True):
                p.data.copy_(a)
        denoiser._cache = None


def test_epsilon_prediction_with_zero_terminal_snr_is_refused():
    from tbd_core.errors import UserError
    from tbd_lightning.module import TBDModule

    with pytest.raises(UserError, match="epsilon with rescale_zero_snr"):
        TBDModule(prediction_type="epsilon", rescale_zero_snr=True)
    TBDModule(prediction_type="epsilon", rescale_zero_snr=False)  # the classic pairing stays allowed


def test_progressive_sampling_computes_the_reference_once_per_video(denoiser):
    from diffusers import DDPMScheduler

    from tbd_lightning.sampler import GuidanceConfig, ProgressiveSampler

    train = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    sampler = ProgressiveSampler(denoiser, train, GuidanceConfig(steps=6, switch=0.4))
    denoiser._cache = None  # an earlier test may have left this very reference's features
    passes = denoiser.reference_passes
    out = sampler.sample((1, 4, 4, 8, 8), conditions(), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()
    assert sampler.forward_passes == 6
    assert denoiser.reference_passes - passes == 1  # not once per step (6) nor per branch set (2)


def test_motion_frames_are_kept_and_windows_overlap():
    from tbd_lightning.windows import boundaries, seam_ratio, window_starts

    assert window_starts(20, 8) == [0, 8, 16] and window_starts(20, 8, motion=2) == [0, 6, 12]
    assert boundaries(20, 8) == [7, 15] and boundaries(20, 8, motion=2) == [7, 13]
    smooth = np.cumsum(np.ones((24, 4, 4, 3)), 0)  # the same change between every pair of frames
    assert seam_ratio(smooth, 8) == pytest.approx(1.0)
    jumpy = smooth.copy()
    jumpy[8:] += 6.0  # a jump of 7x the usual change where window 2 starts
    assert seam_ratio(jumpy, 8) > 2 and seam_ratio(jumpy[:8], 8) is None
    with pytest.raises(ValueError):
        window_starts(20, 8, motion=8)


def test_the_sampler_keeps_known_frames(denoiser):
    from diffusers import DDPMScheduler

    from tbd_lightning.sampler import GuidanceConfig, ProgressiveSampler

    train = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    known = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    for scheduler in ("ddim", "euler"):
        sampler = ProgressiveSampler(denoiser, train, GuidanceConfig(steps=3, scheduler=scheduler))
        out = sampler.sample(
            (1, 4, 4, 8, 8), conditions(), generator=torch.Generator().manual_seed(0), known=known
        )
        assert torch.equal(out[:, :2], known) and torch.isfinite(out).all()


def test_tiny_sd_train_export_generate_evaluate(tiny_sd, datasets, demo_corpus, tmp_path, netguard_log):
    """The acceptance chain through the commands (random SD weights: no faces expected, only the path)."""
    data = datasets["mead"]["data"]
    env = {**offline_env(netguard_log), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}

    def tbd(*args):
        proc = run_tbd(*args, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        return json.loads(last) if last.startswith("{") else {}

    root = tmp_path / "train"
    tbd("train", "--config", SD_TINY, "--model.pretrained", str(tiny_sd), "--model.motion_adapter",
        str(tiny_sd / "motion_adapter"), "--data.data", str(data), "--trainer.max_steps", "4",
        "--trainer.default_root_dir", str(root), "--data.num_workers", "0", "--data.size", "32",
        "--trainer.limit_val_batches", "1", "--data.text_cache", str(tmp_path / "text"))  # fmt: skip
    exported = tbd("export", str(root / "checkpoints" / "last.ckpt"), str(tmp_path / "model"))
    assert exported["vae"] is True
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert (
        index["denoiser"] == ["tbd_lightning.sd_model", "SDVideoDenoiser"]
        and index["vae"][1] == "AutoencoderKL"
    )
    portrait = demo_corpus / json.loads((demo_corpus / "corpus.json").read_text())["heldout"]["image"]
    audio = demo_corpus / "mead" / "W003" / "audio" / "contempt" / "level_3" / "000.m4a"
    report = tbd("generate", "--image", str(portrait), "--audio", str(audio), "--emotion", "happy", "--level", "2",
                 "--model", str(tmp_path / "model"), "--out", str(tmp_path / "gen" / "happy.mp4"),
                 "--guidance.steps", "2", "--guidance.motion_frames", "2", "--max_seconds", "1.2")  # fmt: skip
    assert report["windows"] >= 3 and report["seam_ratio"] is not None
    assert (tmp_path / "gen" / "happy.mp4").stat().st_size > 0
    result = tbd("evaluate", "--model", str(tmp_path / "model"), "--data", str(data), "--split", "val",
                 "--max_clips", "1", "--max_frames", "12", "--guidance.steps", "2", "--out", str(tmp_path / "eval"))  # fmt: skip
    progressive = result["results"]["progressive"]
    assert progressive["clips"] == 1 and progressive["seam_ratio"] is not None
    assert np.isfinite(progressive["psnr"])


def test_gradient_checkpointing_gives_the_same_gradients(denoiser):
    """The reference and conditions reach the processors through the call, so a checkpointed block
    recomputes in backward exactly what it computed in forward."""
    x, cond = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(4)), conditions()

    def grads():
        denoiser.zero_grad()
        denoiser(x, torch.tensor([300]), cond).square().mean().backward()
        return {n: p.grad.clone() for n, p in denoiser.named_parameters() if p.grad is not None}

    try:
        plain = grads()
        denoiser.enable_gradient_checkpointing()
        checkpointed = grads()
    finally:
        denoiser.disable_gradient_checkpointing()
        denoiser.zero_grad()
    assert plain.keys() == checkpointed.keys() and len(plain) > 100
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)


def test_texts_too_long_for_the_windows_stop_training_before_it_starts(tiny_sd, datasets, tmp_path):
    """The loader serves SD's text-encoder states of the global and label sentences; a corpus whose
    sentences need more windows than the model has is refused at setup, with the count to set. The whole
    global sentence (`global_text="description"`, as models saved before the global / local split read it)
    is what outgrows one window: the emotion alone fits in it."""
    from tbd_core.errors import UserError
    from tbd_lightning.data import TBDDataModule

    kw = dict(
        data=str(datasets["mead"]["data"]),
        prompt_encoder=str(tiny_sd),
        text_cache=str(tmp_path),
        frames=4,
        global_text="description",
    )
    with pytest.raises(UserError, match=r"distinct texts need more than 1 window.*text_chunks 2"):
        TBDDataModule(text_chunks=1, **kw).setup("fit")
    TBDDataModule(text_chunks=1, **{**kw, "global_text": "emotion"}).setup("fit")  # the emotion fits one
    dm = TBDDataModule(text_chunks=2, **kw)
    dm.setup("fit")
    item = next(iter(dm.train_dataloader().dataset))
    assert item["global_text"].shape == item["label_text"].shape == (154, 32)
    assert item["local_text"].shape[-1] == 384  # local sentences stay sentence vectors
