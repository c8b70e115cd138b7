"""Draw, part 1: the tiny denoiser trains on the demo shards through the real `tbd train` (LightningCLI,
MLflow sqlite store, checkpoints), resumes at the right step in the same MLflow run, exports to a
diffusers folder that reproduces the checkpoint's outputs, overfits a fixed batch, and runs DDP on two
CPU processes over uneven shards without hanging."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tbd_core.errors import UserError
from tbd_core.tracking import run_ref
from tests.conftest import offline_env, run_tbd

CONFIG = str(Path(__file__).parents[1] / "configs" / "train" / "tiny.yaml")
FAST = (
    "--data.frames",
    "4",
    "--data.train_batches",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.log_every_n_steps",
    "1",
    "--data.size",
    "32",
    "--data.num_workers",
    "0",
)


@pytest.fixture(scope="module")
def mead(datasets):
    return datasets["mead"]["data"], datasets["mead"]["annotate"]["version"]


def train(*args, root: Path, data: Path, log: Path, mlflow_db: Path, timeout: int = 600):
    env = {**offline_env(log), "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}"}
    proc = run_tbd(
        "train", "--config", CONFIG, "--data.data", str(data), "--data.text_cache", str(root.parent / "text"),
        "--trainer.default_root_dir", str(root), *FAST, *args, env=env, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


def test_train_resume_track_and_export(mead, tmp_path, netguard_log):
    import av
    import mlflow

    data, version = mead
    root, db = tmp_path / "run", tmp_path / "mlflow.db"
    train("--trainer.max_steps", "4", root=root, data=data, log=netguard_log, mlflow_db=db)
    last = root / "checkpoints" / "last.ckpt"
    assert step_of(last) == 4

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    [run] = client.search_runs(client.get_experiment_by_name("tbd-train").experiment_id)
    params = run.data.params
    assert run.data.tags["tbd.version"] == version  # linked to the runs that made its data
    assert run.data.tags["tbd.annotate_run"] == run_ref(data / "annotations" / version) != ""
    assert run.data.tags["tbd.preprocess_run"] == run_ref(data / "media") != ""
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert params["model"] == "tiny" and params["prediction_type"] == "sample"
    assert (
        params["annotation_version"] == version and params["frames"] == "4"
    )  # data module hparams, resolved
    assert {"train/loss", "val/loss"} <= set(run.data.metrics)
    config = yaml.safe_load(
        Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
    )
    assert config["trainer"]["max_steps"] == 4 and config["data"]["data"] == str(data)
    samples = [a.path for step in client.list_artifacts(run.info.run_id, "samples") for a in client.list_artifacts(run.info.run_id, step.path)]  # fmt: skip
    mp4s = [p for p in samples if p.endswith(".mp4")]
    assert mp4s and len(mp4s) == len([p for p in samples if p.endswith(".png")])
    with av.open(client.download_artifacts(run.info.run_id, mp4s[0], str(tmp_path))) as video:
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (64, 32, 3)  # ground truth over sample, 32 px

    proc = train(
        "--trainer.max_steps", "7", "--ckpt_path", "last", "--model.lr", "0.0005",
        root=root, data=data, log=netguard_log, mlflow_db=db,
    )  # fmt: skip
    # Our line names the checkpoint it resumes (Lightning's own "Restored all states" is in the log file)
    assert re.search(r"resuming \S+last\.ckpt: MLflow run", proc.stderr), proc.stderr[-2000:]
    assert step_of(last) == 7
    runs = client.search_runs(client.get_experiment_by_name("tbd-train").experiment_id)
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # the resumed run continues the same MLflow run
    resumed = client.get_run(run.info.run_id).data
    assert resumed.params["lr"] == "0.001" and resumed.tags["changed_on_resume.lr"] == "0.0005"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "lr-AdamW")]
    assert steps == sorted(steps) and max(steps) >= 5  # continued past step 4, never restarted at 0

    # A fresh run into the same folder would write last-v1.ckpt and leave the old last.ckpt to be exported.
    env = {**offline_env(netguard_log), "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    proc = run_tbd("train", "--config", CONFIG, "--data.data", str(data), "--trainer.default_root_dir", str(root),
                   *FAST, "--trainer.max_steps", "2", env=env, timeout=600)  # fmt: skip
    assert (
        proc.returncode == 2
        and "already holds checkpoints" in proc.stderr
        and "--ckpt_path last" in proc.stderr
    )
    assert sorted(p.name for p in (root / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]

    out = tmp_path / "export"
    proc = run_tbd("export", str(last), str(out), env=offline_env(netguard_log))
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "TBDPipeline" and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert index["source"]["global_step"] == 7 and index["source"]["ema"] is True
    assert index["annotation_version"] == version and index["conditioning"]["frames"] == 4

    from diffusers import DDPMScheduler

    from tbd_lightning.model import Conditions, TBDVideoDenoiser
    from tbd_lightning.module import TBDModule
    from tbd_lightning.pipeline import TBDPipeline

    # The end of training logged the same pipeline (EMA weights of step 7) into the run (`LogPipeline`).
    logged = TBDPipeline.from_pretrained(
        client.download_artifacts(run.info.run_id, "pipeline", str(tmp_path))
    )
    assert logged.config.source["global_step"] == 7 and logged.config.annotation_version == version

    state = torch.load(last, map_location="cpu", weights_only=False)
    module = TBDModule(**{k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")})
    module.load_state_dict(state["state_dict"])
    exported = TBDPipeline.from_pretrained(out)
    assert isinstance(exported.denoiser, TBDVideoDenoiser)
    assert DDPMScheduler.from_pretrained(out / "scheduler").config.prediction_type == "sample"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 32, 32, generator=g)
    cond = Conditions(
        torch.randn(1, 3, 32, 32, generator=g), torch.randn(1, 4, 80, generator=g), torch.randn(1, 384, generator=g),
        torch.randn(1, 8, 384, generator=g), torch.arange(8)[None] < 3, torch.rand(1, 4, 1, 32, 32, generator=g),
    )  # fmt: skip
    with torch.no_grad():
        a = module.model.eval()(x, torch.tensor([500]), cond)
        b = exported.denoiser(x, torch.tensor([500]), cond)
    # Identical weights (checked bitwise below); the outputs agree to float32 rounding (mmap-loaded weights can
    # take another SIMD path than freshly allocated ones).
    assert all(
        torch.equal(v, exported.denoiser.state_dict()[k]) for k, v in module.model.state_dict().items()
    )
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    assert all(
        torch.equal(v, exported.denoiser.state_dict()[k]) for k, v in logged.denoiser.state_dict().items()
    )


def test_loss_decreases_on_a_fixed_batch(mead, tmp_path):
    from tbd_lightning.data import TBDDataModule
    from tbd_lightning.module import TBDModule

    data, version = mead
    torch.manual_seed(0)
    dm = TBDDataModule(
        str(data), version, frames=4, size=32, batch_size=2, train_batches=1, text_cache=str(tmp_path)
    )
    batch = next(iter(dm.train_dataloader()))
    module = TBDModule(branches={}, lr=1e-3, warmup_steps=0)
    opt = module.configure_optimizers()["optimizer"]

    def fixed_loss() -> float:  # the same noise and timesteps every time
        with torch.no_grad():
            gens = [torch.Generator().manual_seed(s) for s in range(4)]
            return float(np.mean([module.diffusion_loss(batch, generator=g, dropout=False) for g in gens]))

    before = fixed_loss()
    for _ in range(40):
        module.diffusion_loss(batch).backward()
        opt.step()
        opt.zero_grad()
    after = fixed_loss()
    assert after < 0.5 * before, (before, after)


def test_condition_dropout_and_local_masking(mead, tmp_path):
    """Dropped conditions are replaced by null tokens (so guidance branches differ), and local text can only
    change the output through its region: with all-zero local masks the local text is inert."""
    from tbd_lightning.model import CONDITIONS, Conditions, TBDVideoDenoiser

    torch.manual_seed(0)
    model = TBDVideoDenoiser.from_preset(
        "tiny", block_channels=(16, 32), attention_levels=(True, True), norm_groups=8
    ).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 3, 16, 16, generator=g)
    base = dict(
        reference=torch.randn(2, 3, 16, 16, generator=g), audio=torch.randn(2, 3, 80, generator=g),
        global_text=torch.randn(2, 384, generator=g), local_text=torch.randn(2, 8, 384, generator=g),
        local_valid=torch.arange(8)[None].expand(2, 8) < 2,
    )  # fmt: skip
    t = torch.tensor([300, 300])
    with torch.no_grad():
        full = model(x, t, Conditions(**base))
        for name in CONDITIONS:
            keep = {name: torch.tensor([False, True])}
            out = model(x, t, Conditions(**base, keep=keep))
            assert not torch.allclose(out[0], full[0]), name  # dropping changes sample 0 ...
            assert torch.allclose(out[1], full[1], atol=1e-6), name  # ... and only sample 0
        zero = torch.zeros(2, 3, 8, 16, 16)
        other_local = {**base, "local_text": torch.randn(2, 8, 384, generator=g)}
        a = model(x, t, Conditions(**base, local_masks=zero))
        b = model(x, t, Conditions(**other_local, local_masks=zero))
        assert torch.allclose(a, b, atol=1e-6)
        c = model(x, t, Conditions(**other_local, local_masks=torch.ones_like(zero)))
        assert not torch.allclose(a, c)


def test_gradient_checkpointing_gives_the_same_gradients():
    from tbd_lightning.model import Conditions, TBDVideoDenoiser

    torch.manual_seed(0)
    model = TBDVideoDenoiser.from_preset("tiny")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 3, 16, 16, generator=g)
    cond = Conditions(
        torch.randn(1, 3, 16, 16, generator=g), torch.randn(1, 2, 80, generator=g), torch.randn(1, 384, generator=g),
        torch.randn(1, 8, 384, generator=g), torch.arange(8)[None] < 2,
    )  # fmt: skip

    def grads():
        model.zero_grad()
        model(x, torch.tensor([100]), cond).square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    for a, b in zip(plain, grads(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_feature_size_mismatch_is_a_clear_error(mead, tmp_path):
    from tbd_lightning.data import TBDDataModule
    from tbd_lightning.module import TBDModule

    data, version = mead
    dm = TBDDataModule(
        str(data), version, frames=4, size=32, batch_size=1, train_batches=1, text_cache=str(tmp_path)
    )
    batch = next(iter(dm.train_dataloader()))
    module = TBDModule(model_overrides={"text_dim": 768})
    with pytest.raises(ValueError, match="global_text features are 384-d but the model expects text_dim=768"):
        module.diffusion_loss(batch)


def _drop_last_shard(data: Path, version: str, out: Path) -> int:
    """A copy of the shards with one shard fewer (5: uneven over 2 ranks x 2 workers)."""
    shutil.copytree(data / "media", out / "media")
    shutil.copytree(data / "annotations" / version, out / "annotations" / version)
    for manifest in (out / "media" / "manifest.json", out / "annotations" / version / "manifest.json"):
        m = json.loads(manifest.read_text())
        m["shards"] = m["shards"][:-1]
        manifest.write_text(json.dumps(m))
    return len(m["shards"])


@pytest.mark.slow
def test_ddp_two_cpu_processes_on_uneven_shards(mead, tmp_path, netguard_log):
    data, version = mead
    copy = tmp_path / "data"
    assert _drop_last_shard(data, version, copy) == 5
    root = tmp_path / "run"
    train(
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--data.num_workers", "2", "--data.train_batches", "3", "--trainer.max_steps", "3",
        root=root, data=copy, log=netguard_log, mlflow_db=tmp_path / "mlflow.db", timeout=420,
    )  # fmt: skip
    assert step_of(root / "checkpoints" / "last.ckpt") == 3


@pytest.mark.slow
def test_ray_train_two_workers(mead, tmp_path, netguard_log):
    """`tbd train --ray-workers 2`: the same CLI on Ray Train's TorchTrainer (local Ray, gloo)."""
    data, _ = mead
    root = tmp_path / "run"
    proc = train(
        "--ray-workers", "2", "--ray-storage", str(tmp_path / "ray"), "--trainer.max_steps", "3",
        "--data.train_batches", "3", root=root, data=data, log=netguard_log, mlflow_db=tmp_path / "mlflow.db",
        timeout=420,
    )  # fmt: skip
    assert "world_size=2" in proc.stderr + proc.stdout
    assert step_of(root / "checkpoints" / "last.ckpt") == 3
    reported = list((tmp_path / "ray" / "tbd-train").glob("checkpoint_*/checkpoint.ckpt"))
    assert reported and step_of(reported[-1]) == 3  # Ray Train's own checkpoint (restart after failures)


def build_tiny_clip(out: Path, tokenizer_dir: Path) -> Path:
    """A random-init CLIP text model with a locally trained tokenizer: a stand-in for CLIP ViT-L/14."""
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        projection_dim=24, max_position_embeddings=77, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    CLIPTextModelWithProjection(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_clip_text_encoder_from_a_local_folder(tiny_llm, tmp_path):
    from tbd_lightning.text import TextEmbedder

    clip = build_tiny_clip(tmp_path / "clip", tiny_llm)
    emb = TextEmbedder(clip, cache_dir=tmp_path / "cache")
    out = emb.embed(["lips corners pulled up", "", "brows lowered", "lips corners pulled up"])
    assert emb.dim == 24 and out.shape == (4, 24) and emb.computed == 2
    assert np.allclose(np.linalg.norm(out[[0, 2]], axis=1), 1, atol=1e-5) and not out[1].any()
    assert not np.allclose(out[0], out[2]) and np.array_equal(out[0], out[3])
    assert emb.encoder_id.startswith("clip-") and emb.encoder_id.endswith("-24")
    assert (tmp_path / "cache" / emb.encoder_id).is_dir()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEmbedder(tmp_path / "nowhere")
    with pytest.raises(UserError, match="over the 77 the text encoder .* reads"):  # CLIP's context: never cut
        emb.embed(["the brows draw together " * 20])
    with pytest.raises(UserError, match="over the 256 the text encoder"):  # the default MiniLM's limit
        TextEmbedder().embed(["the brows draw together " * 80])


def test_latent_training_with_a_local_vae_and_init_from_weights(tmp_path):
    """base/full train on latents of a user-supplied VAE folder (a small one built here) and can start from
    saved denoiser weights; the frozen VAE stays out of the checkpoint."""
    from diffusers import AutoencoderKL

    from tbd_lightning.module import TBDModule

    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32,
    ).save_pretrained(tmp_path / "vae")  # fmt: skip
    latent = dict(in_channels=4, out_channels=4, ref_channels=4)
    module = TBDModule(vae_path=str(tmp_path / "vae"), model_overrides=latent)
    b, t = 2, 4
    batch = synthetic_batch(b, t, 32)
    assert module.encode(batch["video"]).shape == (b, t, 4, 16, 16)
    module.diffusion_loss(batch).backward()
    assert all(p.grad is None for p in module.vae.parameters())
    assert not any(k.startswith("vae") or "_vae" in k for k in module.state_dict())
    assert module.preview(batch, steps=2).shape == (b, t, 3, 32, 32)

    module.model.save_pretrained(tmp_path / "denoiser")
    again = TBDModule(
        vae_path=str(tmp_path / "vae"), model_overrides=latent, init_weights=str(tmp_path / "denoiser")
    )
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in module.model.state_dict().items())
    partial = TBDModule(model_overrides={**latent, "text_dim": 512}, init_weights=str(tmp_path / "denoiser"))
    same = [k for k, v in partial.model.state_dict().items() if torch.equal(v, module.model.state_dict()[k])]
    assert (
        0 < len(same) < len(module.model.state_dict())
    )  # text projections differ in shape: left as initialised


@pytest.mark.parametrize(
    "name,model,overlay",
    [("tiny", "tiny", None), ("base", "base", None), ("full", "full", None), ("sd15", "sd", "fsdp")],
)
def test_train_configs_parse(name, model, overlay, capsys):
    """`tbd train --print_config` on every shipped config (in-process: the same LightningCLI parser; the
    `tbd train` entry point itself runs in the training tests)."""
    from tbd.cli import main

    extra = ("--config", CONFIG.replace("tiny", overlay)) if overlay else ()
    with pytest.raises(SystemExit) as exited:
        main(["train", "--config", CONFIG.replace("tiny", name), *extra, "--print_config"])
    assert exited.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["model"] == model and config["trainer"]["logger"]["class_path"].endswith(
        "MLFlowLogger"
    )
    if overlay == "fsdp":  # the overlay swaps the strategy and leaves EMA out
        assert config["trainer"]["strategy"]["class_path"].endswith("FSDPStrategy")
        assert not any("EMA" in c["class_path"] for c in config["trainer"]["callbacks"])


def test_last_checkpoint_is_the_final_step(tmp_path):
    """Periodic saves at step 3, training stops at 5: last.ckpt (what the demo exports) holds step 5.
    Lightning's own ModelCheckpoint keeps step 3 there."""
    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel

    from tbd_lightning.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_last=True, save_top_k=-1)
    trainer = pl.Trainer(max_steps=5, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                         limit_val_batches=0, accelerator="cpu")  # fmt: skip
    trainer.fit(BoringModel())
    assert step_of(tmp_path / "last.ckpt") == 5
    assert step_of(tmp_path / "epoch=0-step=3.ckpt") == 3


@pytest.mark.parametrize("callback", ["warmup", "plain-0.99"])
def test_ema_export_after_a_short_run_is_the_trained_weights(callback, tmp_path):
    """After 60 steps, the weights the checkpoint (and so `tbd export`) holds are near the trained ones with
    `WarmupEMA`; Lightning's plain EMA at decay 0.99 (the old tiny.yaml) still holds ~55 % of the initial
    weights (0.99^60), which the same bound rejects: shown as the expected failure of the old path."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from tbd_lightning.callbacks import EMADecay, WarmupEMA

    class Regress(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(8, 8)

        def training_step(self, batch, _):
            return (self.net(batch) - 3 * batch).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.2)

    class RawWeights(pl.Callback):  # listed before the EMA callback: sees the weights it replaces
        def on_train_end(self, trainer, pl_module):
            self.weight = pl_module.net.weight.detach().clone()

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.randn(240, 8), batch_size=4)
    module, raw = Regress(), RawWeights()
    initial = module.net.weight.detach().clone()
    ema = WarmupEMA(decay=0.9999) if callback == "warmup" else EMAWeightAveraging(decay=0.99)
    trainer = pl.Trainer(accelerator="cpu", max_steps=60, logger=False, callbacks=[raw, ema], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    exported = module.net.weight.detach()  # the averaged weights replace the model's at the end of fit
    assert (raw.weight - 3 * torch.eye(8)).norm() < 0.5  # training itself got there
    share_initial = float((exported - raw.weight).norm() / (initial - raw.weight).norm())
    if callback == "warmup":
        assert share_initial < 0.2, share_initial
        assert EMADecay(0.9999).at(0) == 0 and 0.97 < EMADecay(0.9999).at(200) < 0.975
        assert EMADecay(0.9999, use_warmup=False).at(10) == 11 / 20
    else:
        assert share_initial > 0.2, share_initial  # the old path fails the bound the new one passes


def _ema_net():
    """A small LightningModule with a frozen layer, BatchNorm buffers and a trained stack (EMA tests)."""
    import lightning.pytorch as pl

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.frozen = torch.nn.Linear(8, 8).requires_grad_(False)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 8)
            )

        def forward(self, x):
            return self.net(self.frozen(x))

        def training_step(self, batch, _):
            return (self(batch) - batch.flip(1)).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.net.parameters(), lr=0.1)

    return Net()


def test_foreach_ema_equals_the_per_tensor_average_and_leaves_frozen_weights_alone(tmp_path):
    """Issue 39: the EMA `WarmupEMA` exports (`ForeachEMA`: one foreach lerp, no host sync per tensor) equals
    torch's `AveragedModel(avg_fn=EMADecay)` (the EMA until 2026-12-07, a Python loop with a host sync per
    tensor) replayed over the same run's weights, step by step: parameters and floating buffers (BatchNorm's
    running statistics). A frozen layer is not averaged: the EMA holds the model's own tensor (no copy)."""
    import lightning.pytorch as pl
    from torch.optim.swa_utils import AveragedModel

    from tbd_lightning.callbacks import EMADecay, WarmupEMA

    class Weights(pl.Callback):  # listed before the EMA callback: the raw weights of every step
        def __init__(self):
            self.states = []

        def on_train_batch_end(self, trainer, pl_module, *_):
            self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    torch.manual_seed(0)
    module, weights = _ema_net(), Weights()
    replay = _ema_net()
    replay.load_state_dict(module.state_dict())
    old = AveragedModel(replay, avg_fn=EMADecay(0.999), use_buffers=True)
    ema = WarmupEMA(decay=0.999)
    data = torch.utils.data.DataLoader(torch.randn(160, 8), batch_size=8)
    trainer = pl.Trainer(accelerator="cpu", max_steps=20, logger=False, callbacks=[weights, ema], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    for state in weights.states:
        replay.load_state_dict(state)
        old.update_parameters(replay)
    exported = module.state_dict()  # the averaged weights replace the model's at the end of fit
    expected = old.module.state_dict()
    assert len(weights.states) == 20
    for name, value in exported.items():
        if value.is_floating_point():
            assert torch.allclose(value, expected[name], rtol=1e-5, atol=1e-6), name
    assert not torch.allclose(exported["net.0.weight"], weights.states[-1]["net.0.weight"])  # an average
    averaged = ema._average_model.module
    assert averaged.frozen.weight.data_ptr() == module.frozen.weight.data_ptr()  # shared, not averaged
    assert averaged.net[0].weight.data_ptr() != module.net[0].weight.data_ptr()


def test_a_resumed_run_continues_the_ema_where_it_stopped(tmp_path):
    """10 steps, then 10 more resumed from the checkpoint: the EMA exported is the per-tensor average
    (`AveragedModel(avg_fn=EMADecay)`) replayed over all 20 steps' raw weights: the update count (and so
    the decay) is restored with the averaged weights (`ForeachEMA` keeps a host copy of it)."""
    import lightning.pytorch as pl
    from torch.optim.swa_utils import AveragedModel

    from tbd_lightning.callbacks import EMADecay, WarmupEMA

    states = []

    class Weights(pl.Callback):  # listed before the EMA callback: the raw weights of every step
        def on_train_batch_end(self, trainer, pl_module, *_):
            states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    torch.manual_seed(0)
    replay = _ema_net()
    initial = {k: v.clone() for k, v in replay.state_dict().items()}

    def fit(steps: int, root: Path, ckpt: str | None = None) -> dict:
        module = _ema_net()
        module.load_state_dict(initial)
        data = torch.utils.data.DataLoader(
            torch.randn(80, 8, generator=torch.Generator().manual_seed(1)), batch_size=8
        )
        trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, callbacks=[Weights(), WarmupEMA(decay=0.999)],
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)  # fmt: skip
        trainer.fit(module, data, ckpt_path=ckpt)
        return module.state_dict()

    fit(10, tmp_path / "first")
    (checkpoint,) = (tmp_path / "first").rglob("*.ckpt")
    resumed = fit(20, tmp_path / "resumed", str(checkpoint))
    assert len(states) == 20
    old = AveragedModel(replay, avg_fn=EMADecay(0.999), use_buffers=True)
    for state in states:
        replay.load_state_dict(state)
        old.update_parameters(replay)
    for name, value in old.module.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, resumed[name], rtol=1e-5, atol=1e-6), name


def test_motion_frames_are_given_clean_and_not_scored():
    """With motion frames (as sampling continues a long video) the first k frames enter the model clean
    and carry no loss: the loss is the same whatever the model predicts there."""
    from tbd_lightning.module import TBDModule

    torch.manual_seed(0)
    module = TBDModule(prediction_type="sample", motion_frames=2, motion_prob=1.0)
    batch = synthetic_batch(2, 4, 16)
    module.model = spy = Spy(module.model)
    loss = module.diffusion_loss(batch, generator=torch.Generator().manual_seed(1))
    assert torch.equal(spy.seen[:, :2], batch["video"][:, :2])  # clean (pixel space: x0 is the video)
    assert not torch.allclose(spy.seen[:, 2:], batch["video"][:, 2:])  # the rest noised
    spy.first = 99.0  # whatever the model says about the given frames
    assert torch.allclose(module.diffusion_loss(batch, generator=torch.Generator().manual_seed(1)), loss)
    plain = TBDModule(prediction_type="sample", motion_frames=0)
    plain.model = spy = Spy(plain.model)
    plain.diffusion_loss(batch, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(spy.seen[:, :2], batch["video"][:, :2])  # without: every frame noised


class Spy(torch.nn.Module):
    """The real denoiser, recording its input; `first` replaces its output on the first two frames."""

    def __init__(self, inner, first: float | None = None):
        super().__init__()
        self.inner, self.first, self.seen = inner, first, None

    @property
    def config(self):
        return self.inner.config

    def forward(self, x, t, cond):
        self.seen = x
        out = self.inner(x, t, cond)
        return out if self.first is None else torch.cat([out[:, :2] * 0 + self.first, out[:, 2:]], 1)


def synthetic_batch(b: int, t: int, s: int) -> dict:
    """A batch as the loader serves it (random values): frames, reference, audio, texts, masks."""
    g = torch.Generator().manual_seed(0)
    return dict(
        video=torch.rand(b, t, 3, s, s, generator=g) * 2 - 1, reference=torch.rand(b, 3, s, s, generator=g) * 2 - 1,
        audio=torch.randn(b, t, 80, generator=g), global_text=torch.randn(b, 384, generator=g),
        label_text=torch.randn(b, 384, generator=g), local_text=torch.randn(b, 8, 384, generator=g),
        local_valid=torch.arange(8)[None].expand(b, 8) < 2, mask=torch.rand(b, t, 1, s, s, generator=g),
        mouth=torch.rand(b, t, 1, s, s, generator=g), key=[str(i) for i in range(b)],
    )  # fmt: skip


def test_the_loss_weighs_the_mouth_and_the_au_regions_as_configured():
    """`loss_weight`: 1 outside, `mouth_weight` inside the mouth, `region_weight` inside the CoT's AU regions
    (the brows, where a local sentence such as AU4's acts), the two added where they overlap; pooled to the
    prediction's size; region_weight 1 (the default) leaves the mouth-only weighting as it was."""
    from tbd_lightning.module import loss_weight

    mouth = torch.zeros(1, 2, 1, 8, 8)
    mouth[..., 6:8, 2:6] = 1  # the mouth, both frames
    region = torch.zeros(1, 1, 8, 8)
    region[..., 1:3, 1:7] = 1  # the brows
    region[..., 7:8, 4:6] = 1  # ... and a corner of the mouth (AU15's region)
    batch, x0 = {"mouth": mouth, "mask": region}, torch.zeros(1, 2, 3, 8, 8)
    w = loss_weight(batch, x0, mouth_weight=10, region_weight=5)
    assert w.shape == (1, 2, 1, 8, 8)
    assert (
        w[0, 1, 0, 0, 0] == 1 and w[0, 1, 0, 1, 3] == 5 and w[0, 0, 0, 6, 2] == 10 and w[0, 0, 0, 7, 4] == 14
    )
    assert torch.equal(loss_weight(batch, x0, 10, 1.0)[0, :, 0], 1 + 9 * mouth[0, :, 0])
    half = loss_weight(batch, torch.zeros(1, 2, 3, 4, 4), 1, 5)  # a 4x4 prediction: cells half brow
    assert half[0, 0, 0, 0, 0] == 1 + 4 * 0.25 and half[0, 0, 0, 1, 1] == 1 + 4 * 0.5
