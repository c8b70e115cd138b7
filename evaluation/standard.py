"""The metrics papers' tables report, each computed only from weights the user gives (nothing is downloaded):

- Sync-C / Sync-D (`evaluation.syncnet`): the user's `syncnet_v2.model`.
- LPIPS v0.1 (Zhang et al., CVPR 2018) over AlexNet: the linear heads the PyPI package `lpips` 0.1.4 ships
  (`weights/v0.1/alex.pth`, asset `lpips_heads`) over the user's torchvision AlexNet ImageNet weights
  (`alexnet-owt-7be5be79.pth`, keys `features.N.*`); generated frame t vs real frame t, mean over frames.
- FVD: the user's I3D as TorchScript (`i3d_torchscript.pt` of StyleGAN-V / fvd-comparison), called as
  `net(x, rescale=False, resize=False, return_features=True)` on (N, 3, 16, 224, 224) clips in [-1, 1]
  (bilinear resize), the 400-d Kinetics logits; every video cut into consecutive 16-frame clips.
- CSIM: cosine similarity of ArcFace embeddings (the user's ONNX model, e.g. insightface's
  `w600k_r50.onnx`) of the reference portrait and each generated frame, faces aligned to ArcFace's 112 px
  5-point template from the MediaPipe mesh (eye centres = mean of the eye corners 33/133 and 362/263, nose
  tip 4, mouth corners 61/291; not insightface's SCRFD points, so values are close to, not identical with,
  insightface-aligned CSIM). Frames without a face are left out and counted.

Each appears in `evaluation.json` only when its weights are given, its protocol beside it (`PROTOCOLS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evaluation.syncnet import PROTOCOL as SYNC_PROTOCOL
from evaluation.syncnet import load_state
from tbd_core.errors import UserError

FVD_FRAMES, FVD_SIZE = 16, 224
PROTOCOLS = {
    "sync": SYNC_PROTOCOL,
    "lpips": "LPIPS v0.1, AlexNet backbone (user's torchvision weights) + lpips 0.1.4 linear heads; frame t "
    "vs real frame t at the model's size, mean over frames",
    "fvd": "I3D TorchScript, 400-d logits (return_features=True), consecutive 16-frame clips, bilinear to "
    "224 px, [-1, 1]; Frechet distance with np.cov (N - 1)",
    "csim": "ArcFace ONNX, 112 px 5-point alignment from the MediaPipe mesh, cosine(reference, frame), mean "
    "over frames with a face",
}
ARCFACE_TEMPLATE = np.array(  # insightface `face_align.arcface_dst`: 112 x 112, image-left eye first
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
FIVE_POINTS = ((33, 133), (362, 263), (4,), (61,), (291,))  # MediaPipe mesh indices per template point
_ALEX = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))


class LPIPS(nn.Module):
    """LPIPS v0.1 with AlexNet: (N, 3, H, W) RGB in [-1, 1] pairs -> (N,) distances. `features` is
    torchvision's `AlexNet.features` layer for layer (so its state dict loads as is); the five taps are
    the ReLUs after each convolution, as in `lpips.pretrained_networks.alexnet`."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (cin, cout, k, s, p) in enumerate(_ALEX):
            layers += [nn.Conv2d(cin, cout, k, s, p), nn.ReLU(inplace=False)]
            if i < 2:
                layers.append(nn.MaxPool2d(3, 2))
        self.features = nn.Sequential(*layers, nn.MaxPool2d(3, 2))
        self.taps = (1, 4, 7, 9, 11)
        self.lins = nn.ModuleList(nn.Conv2d(c[1], 1, 1, bias=False) for c in _ALEX)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    @classmethod
    def from_files(cls, backbone: Path, heads: Path) -> LPIPS:
        """`backbone`: torchvision AlexNet state dict (keys `features.N.*`, `classifier.*` ignored);
        `heads`: lpips' `weights/v0.1/alex.pth` (keys `lin{k}.model.1.weight`)."""
        net = cls()
        sd = load_state(backbone, "a torchvision AlexNet state dict (alexnet-owt-7be5be79.pth)")
        feats = {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
        lins = load_state(heads, "lpips' weights/v0.1/alex.pth")
        try:
            net.features.load_state_dict(feats)
            for k, lin in enumerate(net.lins):
                lin.weight.data.copy_(lins[f"lin{k}.model.1.weight"])
        except (RuntimeError, KeyError) as e:
            raise UserError(f"LPIPS weights {backbone} / {heads} do not fit AlexNet's: {e}") from e
        return net.eval().requires_grad_(False)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        total = 0
        for lin, f0, f1 in zip(self.lins, self._taps(x0), self._taps(x1), strict=True):
            f0 = f0 / (f0.square().sum(1, keepdim=True).sqrt() + 1e-10)
            f1 = f1 / (f1.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((f0 - f1).square()).mean((1, 2, 3))
        return total

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, out = (x - self.shift) / self.scale, []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 least-squares similarity (Umeyama 1991) taking points `src` (N, 2) onto `dst` (N, 2)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    flip = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ flip @ vt
    scale = float((sig * np.diag(flip)).sum() / s.var(0).sum())
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


class ArcFace:
    """An ArcFace ONNX model (input (N, 3, 112, 112) RGB as (x - 127.5) / 127.5, output (N, D) embeddings)."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        if not Path(path).is_file():
            raise UserError(
                f"ArcFace model {path} not found: give an ONNX file (e.g. insightface's w600k_r50.onnx)"
            )
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for unreadable files
            raise UserError(f"{path} is not an ONNX model onnxruntime can run: {e}") from e
        self.input = self.session.get_inputs()[0].name

    def embed(self, frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB frames with crop-normalised MediaPipe landmarks (N, 468, 3) -> (N, D)
        unit embeddings of the aligned faces."""
        import cv2

        crops = []
        for frame, lm in zip(frames, landmarks, strict=True):
            xy = lm[:, :2] * np.array([frame.shape[1], frame.shape[0]])
            five = np.stack([xy[list(ids)].mean(0) for ids in FIVE_POINTS])
            m = similarity_transform(five, ARCFACE_TEMPLATE)
            crops.append(cv2.warpAffine(frame, m, (112, 112), borderValue=0.0))
        x = (np.stack(crops).astype(np.float32) - 127.5) / 127.5
        (emb,) = self.session.run(None, {self.input: x.transpose(0, 3, 1, 2)})
        return emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)


def fvd_features(net: torch.nn.Module, videos: list[np.ndarray]) -> np.ndarray:
    """(N, 400) I3D logits of every consecutive 16-frame clip of `videos` ((T, S, S, 3) uint8 each)."""
    rows = []
    with torch.no_grad():
        for v in videos:
            for start in range(0, len(v) - FVD_FRAMES + 1, FVD_FRAMES):
                x = torch.from_numpy(np.ascontiguousarray(v[start : start + FVD_FRAMES])).permute(0, 3, 1, 2)
                x = torch.nn.functional.interpolate(x.float(), size=(FVD_SIZE, FVD_SIZE), mode="bilinear")
                x = (x / 127.5 - 1).permute(1, 0, 2, 3)[None]  # (1, 3, 16, 224, 224) in [-1, 1]
                rows.append(net(x, rescale=False, resize=False, return_features=True).reshape(-1).numpy())
    return np.stack(rows) if rows else np.zeros((0, 0))


@dataclass
class StandardMetrics:
    """The standard metrics whose weights were given (others None)."""

    syncnet: nn.Module | None = None
    lpips: LPIPS | None = None
    i3d: torch.nn.Module | None = None
    arcface: ArcFace | None = None

    @classmethod
    def load(cls, syncnet=None, lpips_backbone=None, i3d=None, arcface=None) -> StandardMetrics:
        from evaluation.syncnet import load_syncnet
        from tbd_core.assets import resolve

        net = None
        if i3d:
            if not Path(i3d).is_file():
                raise UserError(f"I3D model {i3d} not found: give i3d_torchscript.pt (TorchScript)")
            net = torch.jit.load(str(i3d), map_location="cpu").eval()
        return cls(
            syncnet=load_syncnet(syncnet) if syncnet else None,
            lpips=LPIPS.from_files(lpips_backbone, resolve("lpips_heads")) if lpips_backbone else None,
            i3d=net,
            arcface=ArcFace(arcface) if arcface else None,
        )

    @property
    def protocols(self) -> dict[str, str]:
        given = {"sync": self.syncnet, "lpips": self.lpips, "fvd": self.i3d, "csim": self.arcface}
        return {name: PROTOCOLS[name] for name, v in given.items() if v is not None}

    def score_clip(self, frames, real, fps, wav, video, reference, reference_landmarks) -> dict:
        """Per-clip values: `frames` the scored video (T, S, S, 3) uint8, `real` the real clip's frames,
        `wav` its 16 kHz speech, `video` the scored video's tracked `VideoAUs`, `reference` the portrait
        (S, S, 3) with its landmarks (468, 3) or None."""
        from evaluation.syncnet import sync_scores

        row: dict = {}
        if self.syncnet is not None:
            scores = sync_scores(self.syncnet, frames, fps, wav)
            if scores is not None:
                row.update(sync_c=scores["sync_c"], sync_d=scores["sync_d"], syncnet_offset=scores["offset"])
        if self.lpips is not None:
            to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
            with torch.no_grad():
                row["lpips"] = float(self.lpips(to(real[: len(frames)]), to(frames)).mean())
        if self.arcface is not None and reference_landmarks is not None:
            found = np.flatnonzero(video.found)
            if len(found):
                ref = self.arcface.embed(reference[None], reference_landmarks[None])[0]
                emb = self.arcface.embed(frames[found], video.landmarks[found])
                row.update(csim=float((emb @ ref).mean()), csim_frames=int(len(found)))
        return row

    def fvd(self, reals: list[np.ndarray], fakes: list[np.ndarray]) -> dict:
        """FVD between the real and generated videos' 16-frame clips (`fvd_result`); {} without I3D."""
        from evaluation.metrics import FrechetStats

        fits = FrechetStats(), FrechetStats()
        for fit, videos in zip(fits, (reals, fakes), strict=True):
            for video in videos:
                self.fvd_update(fit, video)
        return self.fvd_result(*fits)

    def fvd_update(self, fit, video: np.ndarray) -> None:
        """Add `video`'s 16-frame clips' I3D features to `fit` (`metrics.FrechetStats`); nothing without I3D."""
        if self.i3d is not None:
            fit.update(fvd_features(self.i3d, [video]))

    def fvd_result(self, real, fake) -> dict:
        """FVD between two `metrics.FrechetStats` of 16-frame clips, the clip count and a note when too few
        clips make the estimate rank-deficient; {} without I3D."""
        from evaluation.metrics import frechet_note

        if self.i3d is None:
            return {}
        if real.n < 2 or fake.n < 2:
            return {"fvd_note": f"FVD needs two 16-frame clips or more: {fake.n} generated"}
        return {"fvd": real.distance(fake), "fvd_clips": fake.n, "fvd_note": frechet_note(fake.n, real.dims)}
