"""Draw learns: a brief training run on the demo shards, then the pipeline draws faces (plumbing tests on
untrained weights cannot show that), at the issue's bar: faces in >= 90 % of the frames where the real clip
has them in all. Slow: about two minutes on 2 cores."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def mead(datasets):
    return datasets["mead"]["data"], datasets["mead"]["annotate"]["version"]


@pytest.mark.slow
def test_a_briefly_trained_model_draws_faces(mead, tmp_path):
    from media.au_measure import track_generated
    from tbd_lightning.data import TBDDataModule
    from tbd_lightning.module import TBDModule
    from tbd_lightning.pipeline import TBDPipeline
    from tbd_lightning.sampler import GuidanceConfig

    data, version = mead
    torch.manual_seed(0)
    dm = TBDDataModule(str(data), version, frames=4, batch_size=4, train_batches=STEPS, size=32,
                       text_cache=str(tmp_path / "text"))  # fmt: skip
    module = TBDModule(prediction_type="sample", lr=2e-3, warmup_steps=10)  # as configs/train/tiny.yaml
    opt = torch.optim.AdamW(module.model.parameters(), lr=2e-3)
    for batch in dm.train_dataloader():
        loss = module.diffusion_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    pipe = TBDPipeline(module.model.eval(), module.scheduler, media={"fps": 25, "crop_size": 64},
                       conditioning={"frames": 4, "size": 32})  # fmt: skip
    val = next(iter(dm.val_dataloader()))
    reference = ((val["reference"][0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    landmarks = val["landmarks"][0, 0].numpy()
    frames = pipe(reference, landmarks, val["audio"][0].numpy(), global_text="a face, speaking",
                  guidance=GuidanceConfig(steps=10, audio_scale=1.5, global_scale=1.0, local_scale=1.0)).frames  # fmt: skip
    found = ~np.isnan(track_generated(frames)).any(axis=(1, 2))
    real = ~np.isnan(
        track_generated(((val["video"][0].permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy())
    ).any(axis=(1, 2))
    assert real.mean() == 1.0
    assert found.mean() >= 0.9, f"faces in {found.mean():.0%} of generated frames"


STEPS = 150
