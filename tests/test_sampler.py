"""Progressive guidance sampler: the formula, its schedule, masks, batching, ablations and schedulers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDPMScheduler

from tbd_lightning.branches import BRANCHES
from tbd_lightning.model import CONDITIONS, TBDVideoDenoiser
from tbd_lightning.sampler import MODES, GuidanceConfig, ProgressiveSampler, _with_keep
from tests.conftest import tiny_conditions


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TBDVideoDenoiser.from_preset("tiny", block_channels=(16, 32), attention_levels=(True, True)).eval()


@pytest.fixture(scope="module")
def train_config():
    return DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", rescale_betas_zero_snr=True
    ).config


SHAPE = (1, 2, 3, 16, 16)


def test_zero_scales_equal_the_unguided_sampler(model, train_config):
    cond = tiny_conditions(torch.ones(1, 2, 1, 16, 16))
    cfg = GuidanceConfig(steps=5, audio_scale=0, global_scale=0, local_scale=0)
    sampler = ProgressiveSampler(model, train_config, cfg)
    guided = sampler.sample(SHAPE, cond, generator=torch.Generator().manual_seed(0))

    plain = ProgressiveSampler(model, train_config, cfg).scheduler  # the same scheduler, driven by hand
    plain.set_timesteps(5)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * plain.init_noise_sigma
    none = _with_keep(cond, BRANCHES["none"])  # ∅ = the reference alone
    with torch.no_grad():
        for t in plain.timesteps:
            x = plain.step(model(x, t.expand(1), none), t, x).prev_sample
    torch.testing.assert_close(guided, x, rtol=0, atol=1e-5)


def test_local_term_is_exactly_zero_outside_the_mask(model, train_config):
    mask = torch.zeros(1, 2, 1, 16, 16)
    mask[..., 8:] = 1  # right half
    sampler = ProgressiveSampler(model, train_config, GuidanceConfig(switch=0.4))
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, terms = sampler.guided(x, torch.tensor(200), tiny_conditions(mask), progress=0.8)
    assert torch.count_nonzero(terms["local"][..., :8]) == 0
    assert terms["local"][..., 8:].abs().mean() > 0
    no_masks = ProgressiveSampler(model, train_config, GuidanceConfig(mode="no-masks"))
    with torch.no_grad():
        _, terms = no_masks.guided(x, torch.tensor(200), tiny_conditions(mask), progress=0.8)
    assert terms["local"][..., :8].abs().mean() > 0  # the ablation ignores the mask


def test_schedule_global_first_then_local(model, train_config):
    cfg = GuidanceConfig(switch=0.4, global_floor=0.3)
    assert cfg.weights(0.0) == (1.0, 0.0) and cfg.weights(0.39) == (1.0, 0.0)
    w_g, w_l = cfg.weights(1.0)
    assert w_l == 1.0 and w_g == pytest.approx(0.3)
    assert GuidanceConfig(mode="single-stage").weights(0.0) == (1.0, 1.0)
    sampler = ProgressiveSampler(model, train_config, cfg)
    x = torch.randn(SHAPE)
    with torch.no_grad():
        _, early = sampler.guided(x, torch.tensor(900), tiny_conditions(), progress=0.1)
        _, late = sampler.guided(x, torch.tensor(100), tiny_conditions(), progress=0.9)
    assert set(early) == {"base", "audio", "global"}  # the local branch is not even evaluated
    assert set(late) == {"base", "audio", "global", "local"}
    assert sampler.forward_passes == 2  # every branch of a step in one batched call
    with pytest.raises(ValueError, match="guidance mode"):
        GuidanceConfig(mode="sideways")


def test_batched_and_unbatched_branches_agree(model, train_config):
    sampler = ProgressiveSampler(model, train_config, GuidanceConfig(steps=4, switch=0.3))
    cond = tiny_conditions(torch.rand(1, 2, 1, 16, 16, generator=torch.Generator().manual_seed(2)))
    a = sampler.sample(SHAPE, cond, generator=torch.Generator().manual_seed(5), batched=True)
    b = sampler.sample(SHAPE, cond, generator=torch.Generator().manual_seed(5), batched=False)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_single_stage_without_masks_telescopes_to_plain_cfg(model, train_config):
    """With equal scales, the nested single-stage formula is plain CFG over all conditions (a sum that
    telescopes): two implementations of the same number."""
    s = 2.5
    nested = GuidanceConfig(audio_scale=s, global_scale=s, local_scale=s, mode="single-stage")
    plain = GuidanceConfig(audio_scale=s, mode="cfg")
    x, cond = torch.randn(SHAPE), tiny_conditions(None)
    with torch.no_grad():
        a, _ = ProgressiveSampler(model, train_config, nested).guided(x, torch.tensor(500), cond, 0.5)
        b, _ = ProgressiveSampler(model, train_config, plain).guided(x, torch.tensor(500), cond, 0.5)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm"])
def test_diffusers_schedulers(model, train_config, scheduler):
    sampler = ProgressiveSampler(model, train_config, GuidanceConfig(steps=4, scheduler=scheduler))
    out = sampler.sample(
        SHAPE, tiny_conditions(torch.ones(1, 2, 1, 16, 16)), generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == SHAPE and torch.isfinite(out).all()
    assert sampler.forward_passes == 4
    assert set(CONDITIONS) == {"audio", "global", "local", "reference"}


def test_every_ablation_mode_gives_a_different_output_from_the_same_seed(model, train_config):
    """The ablations must be what they say: progressive, single-stage, no-masks (no masks in the sampler
    nor in the model), plain cfg, and label-only (other text) all sample differently from one seed."""
    union = torch.zeros(1, 2, 1, 16, 16)
    union[..., 8:, :] = 1  # lower half: the mouth
    per_token = torch.zeros(1, 2, 8, 16, 16)
    per_token[:, :, :3, 8:, :] = 1
    cond = dataclasses.replace(tiny_conditions(union), local_masks=per_token)
    label = dataclasses.replace(cond, global_text=torch.randn(1, 384, generator=torch.Generator().manual_seed(9)),
                                local_valid=torch.zeros(1, 8, dtype=torch.bool))  # fmt: skip
    outputs = {}
    for mode in MODES:
        sampler = ProgressiveSampler(model, train_config, GuidanceConfig(steps=4, mode=mode, switch=0.3))
        outputs[mode] = sampler.sample(SHAPE, cond, generator=torch.Generator().manual_seed(0))
    sampler = ProgressiveSampler(model, train_config, GuidanceConfig(steps=4, switch=0.3))
    outputs["label-only"] = sampler.sample(SHAPE, label, generator=torch.Generator().manual_seed(0))
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(outputs[a], outputs[b], atol=1e-4), (a, b)


def test_no_masks_mode_takes_the_masks_away_from_the_model_too(model, train_config):
    per_token = torch.zeros(1, 2, 8, 16, 16)
    cond = dataclasses.replace(tiny_conditions(torch.ones(1, 2, 1, 16, 16)), local_masks=per_token)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        masked = ProgressiveSampler(model, train_config, GuidanceConfig(switch=0.0))
        unmasked = ProgressiveSampler(model, train_config, GuidanceConfig(switch=0.0, mode="no-masks"))
        a = masked.evaluate(x, torch.tensor(300), cond, ["ag", "agl"])
        b = unmasked.evaluate(x, torch.tensor(300), cond, ["ag", "agl"])
    assert torch.allclose(a["agl"], a["ag"], atol=1e-6)  # zero masks: local text cannot act anywhere
    assert not torch.allclose(b["agl"], b["ag"], atol=1e-4)  # no-masks: it acts everywhere


def test_guidance_rescale_pulls_the_std_back_to_the_conditional_branch(model, train_config):
    cond = tiny_conditions(torch.ones(1, 2, 1, 16, 16))
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    strong = GuidanceConfig(audio_scale=7, global_scale=7, local_scale=7, switch=0.0)
    with torch.no_grad():
        plain, _ = ProgressiveSampler(model, train_config, strong).guided(x, torch.tensor(500), cond, 0.9)
        sampler = ProgressiveSampler(model, train_config, dataclasses.replace(strong, guidance_rescale=1.0))
        rescaled, _ = sampler.guided(x, torch.tensor(500), cond, 0.9)
        full = sampler.evaluate(x, torch.tensor(500), cond, ["agl"])["agl"]
    assert rescaled.std() == pytest.approx(full.std().item(), rel=1e-3)
    assert abs(plain.std() - full.std()) > abs(rescaled.std() - full.std())


def test_outside_the_guidance_interval_a_step_is_the_unguided_conditional_branch(model, train_config):
    """Guidance limited to p in [0.2, 0.8]: outside, one branch (the conditions the stage admits), unguided;
    inside, the full progressive formula. The cfg baseline gets the same treatment (like with like)."""
    cond = tiny_conditions(torch.ones(1, 2, 1, 16, 16))
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(500)
    limited = ProgressiveSampler(model, train_config, GuidanceConfig(switch=0.4, interval=(0.2, 0.8)))
    full = ProgressiveSampler(model, train_config, GuidanceConfig(switch=0.4))
    with torch.no_grad():
        for progress, branch in ((0.1, "ag"), (0.9, "agl")):
            eps, terms = limited.guided(x, t, cond, progress)
            assert set(terms) == {"conditional"}
            torch.testing.assert_close(
                eps, model(x, t.expand(1), _with_keep(cond, BRANCHES[branch])), atol=1e-5, rtol=0
            )
        rows = limited.branch_evaluations
        torch.testing.assert_close(limited.guided(x, t, cond, 0.5)[0], full.guided(x, t, cond, 0.5)[0])
        assert limited.branch_evaluations - rows == 4 and rows == 2
        cfg = ProgressiveSampler(model, train_config, GuidanceConfig(mode="cfg", interval=(0.0, 0.8)))
        eps, terms = cfg.guided(x, t, cond, 0.9)
        assert set(terms) == {"conditional"} and cfg.branch_evaluations == 1
    with pytest.raises(ValueError, match="interval"):
        GuidanceConfig(interval=(0.8, 0.2))


@pytest.mark.parametrize("steps", [2, 5, 8, 20])
def test_the_schedule_reaches_the_switch_and_the_floor_at_any_step_count(model, train_config, steps):
    """Progress comes from the step index: the first step is at 0, the last at 1, so w_g ends at the
    documented floor and local guidance acts from the first step at or past the switch point (with
    1 - t/T over trailing timesteps the last step was at 0.876 at 8 steps: w_g ended at 0.445, not 0.3)."""
    cfg = GuidanceConfig(steps=steps, switch=0.4, global_floor=0.3)
    sampler = ProgressiveSampler(model, train_config, cfg)
    seen: list[float] = []
    guided = sampler.guided

    def record(x, t, cond, progress, batched=True):
        seen.append(progress)
        return guided(x, t, cond, progress, batched)

    sampler.guided = record
    sampler.sample(
        SHAPE, tiny_conditions(torch.ones(1, 2, 1, 16, 16)), generator=torch.Generator().manual_seed(0)
    )
    assert len(seen) == steps and seen[0] == 0.0 and seen[-1] == 1.0
    weights = [cfg.weights(p) for p in seen]
    assert weights[-1] == pytest.approx((0.3, 1.0))
    assert sum(w_l for _, w_l in weights) == sum(i / (steps - 1) >= 0.4 for i in range(steps))
