"""`tbd evaluate`'s options (`EvaluateConfig`), below both modules that read them (`evaluation.clips`,
`evaluation.evaluate`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from tbd_lightning.sampler import GuidanceConfig


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    model: Path
    data: Path
    version: str | None = None
    split: str = "test"
    speakers: tuple[str, ...] | None = None
    """Only these speakers' clips of the split (e.g. [W010]: the held-out person alone, where the split also
    holds other speakers). None: every speaker of the split."""
    max_clips: int = 8
    max_frames: int = 50
    max_frames_per_batch: int | None = None
    """The clips of a row are sampled together, at most this many frames per denoiser call. None: 16 on CPU
    (larger batches were slower on 2 cores: `benchmarks/bench_evaluate.py`), 512 on a GPU."""
    chunk_clips: int = 8
    """Clips held in memory at once: each chunk's frames are drawn in every row, scored and dropped (FID and
    FVD keep running feature statistics), so memory does not grow with `max_clips`."""
    guidance: GuidanceConfig = GuidanceConfig(steps=20)  # ablations override only its mode
    seed: int = 0
    ablations: bool = False
    only_rows: tuple[str, ...] | None = None
    """Draw only these rows of the table (names as in it, e.g. [progressive, label-only]: a larger sample of the
    one comparison that needs it); the real clips and the still reference are always scored. None: every row."""
    out: Path | None = None
    fid_net: Path | None = None
    """A TorchScript feature network (e.g. a local InceptionV3), for FID."""
    # The standard metrics, each from the user's weights (`evaluation.standard`; protocols in the report):
    syncnet: Path | None = None
    """syncnet_python's syncnet_v2.model: Sync-C / Sync-D."""
    lpips_backbone: Path | None = None
    """torchvision's AlexNet ImageNet weights (alexnet-owt-7be5be79.pth): LPIPS v0.1 with lpips' heads."""
    fvd_net: Path | None = None
    """I3D as TorchScript (StyleGAN-V's i3d_torchscript.pt): FVD on 16-frame clips at 224 px."""
    arcface: Path | None = None
    """An ArcFace ONNX model (insightface's w600k_r50.onnx): CSIM to the reference portrait."""
    groundtruth: Path | None = None  # the demo corpus folder (its corpus.json and groundtruth/)
    compound: bool = False
    """Score the demo corpus's compound expressions (`evaluation.compound`: never trained, rendered for the
    held-out person) instead of the split's clips; needs `groundtruth`."""
    tracking_uri: str | None = None
    device: str | None = None
