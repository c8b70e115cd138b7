"""Local stand-ins (random weights) for the weight files users give `tbd evaluate` for the standard metrics,
each in the real file's format and of the real network's architecture (I3D and IResNet at reduced width):
`syncnet_v2.model` (a state dict), torchvision's AlexNet weights (`features.N.*`, `classifier.*`),
`i3d_torchscript.pt` (TorchScript, `forward(x, rescale, resize, return_features)` -> 400 logits) and an
ArcFace IResNet exported to ONNX. Nothing here is a trained network: tests check the plumbing and the
protocols, never a score's value."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def calibrate(net: nn.Module, *inputs: torch.Tensor) -> nn.Module:
    """Batch-norm statistics from one batch of `inputs` (as training leaves them), then eval mode: random
    weights with the default 0 / 1 statistics let activations vanish through deep stacks, and every input
    would give the same output."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain average
    net.train()
    with torch.no_grad():
        net(*inputs)
    return net.eval()


def save_syncnet(path: Path, seed: int = 0) -> Path:
    from evaluation.syncnet import SyncNet

    torch.manual_seed(seed)
    net = SyncNet()
    calibrate(net.netcnnlip, torch.rand(4, 3, 5, 224, 224) * 255)
    calibrate(net.netcnnaud, torch.randn(4, 1, 13, 20) * 10)
    calibrate(net.netfclip, torch.randn(4, 512))
    calibrate(net.netfcaud, torch.randn(4, 512))
    state = {
        k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")
    }  # as released
    torch.save(state, path)
    return path


def save_alexnet(path: Path, seed: int = 0) -> Path:
    """torchvision `alexnet()`'s state dict layout: features 0/3/6/8/10 convolutions and the classifier."""
    from evaluation.standard import LPIPS

    torch.manual_seed(seed)
    state = {f"features.{k}": v for k, v in LPIPS().features.state_dict().items()}
    for i, (n_in, n_out) in {1: (9216, 4096), 4: (4096, 4096), 6: (4096, 1000)}.items():
        state[f"classifier.{i}.weight"], state[f"classifier.{i}.bias"] = (
            torch.randn(n_out, n_in) * 0.01,
            torch.zeros(n_out),
        )
    torch.save(state, path)
    return path


class _Unit(nn.Sequential):
    def __init__(self, cin: int, cout: int, k=(1, 1, 1), s=(1, 1, 1)):
        super().__init__(nn.Conv3d(cin, cout, k, s, tuple(x // 2 for x in k), bias=False),
                         nn.BatchNorm3d(cout, eps=1e-3), nn.ReLU())  # fmt: skip


class _Mixed(nn.Module):
    def __init__(self, cin: int, c: list[int]):
        super().__init__()
        self.b0 = _Unit(cin, c[0])
        self.b1 = nn.Sequential(_Unit(cin, c[1]), _Unit(c[1], c[2], (3, 3, 3)))
        self.b2 = nn.Sequential(_Unit(cin, c[3]), _Unit(c[3], c[4], (3, 3, 3)))
        self.b3 = nn.Sequential(nn.MaxPool3d(3, 1, 1), _Unit(cin, c[5]))

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1(x), self.b2(x), self.b3(x)], 1)


class InceptionI3d(nn.Module):
    """I3D (Carreira & Zisserman 2017; Mixed_3b ... Mixed_5c, Kinetics-400 logits averaged over time), its
    channels divided by `div`, with the TorchScript call of StyleGAN-V's `i3d_torchscript.pt`."""

    MIXED = {"3b": [64, 96, 128, 16, 32, 32], "3c": [128, 128, 192, 32, 96, 64], "4b": [192, 96, 208, 16, 48, 64],
             "4c": [160, 112, 224, 24, 64, 64], "4d": [128, 128, 256, 24, 64, 64], "4e": [112, 144, 288, 32, 64, 64],
             "4f": [256, 160, 320, 32, 128, 128], "5b": [256, 160, 320, 32, 128, 128], "5c": [384, 192, 384, 48, 128, 128]}  # fmt: skip

    def __init__(self, div: int = 8):
        super().__init__()
        d = lambda c: max(1, c // div)  # noqa: E731
        layers: list[nn.Module] = [_Unit(3, d(64), (7, 7, 7), (2, 2, 2)), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
                                   _Unit(d(64), d(64)), _Unit(d(64), d(192), (3, 3, 3)),
                                   nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))]  # fmt: skip
        cin = d(192)
        for name, c in self.MIXED.items():
            if name in ("4b", "5b"):
                layers.append(nn.MaxPool3d(3 if name == "4b" else 2, 2, 1 if name == "4b" else 0))
            layers.append(_Mixed(cin, [d(x) for x in c]))
            cin = d(c[0]) + d(c[2]) + d(c[4]) + d(c[5])
        self.body = nn.Sequential(*layers)
        self.logits = nn.Conv3d(cin, 400, 1)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:  # fmt: skip
        assert not rescale and not resize, "the standard protocol calls with rescale=False, resize=False"
        assert x.shape[1] == 3 and x.shape[2] == 16 and x.shape[3] == 224 and x.shape[4] == 224, (
            "(N, 3, 16, 224, 224)"
        )
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0, "input in [-1, 1]"
        h = self.body(x)
        logits = self.logits(h.mean((3, 4), keepdim=True)).mean((2, 3, 4))  # (N, 400)
        return logits if return_features else logits.softmax(1)


def save_i3d(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = InceptionI3d()
    calibrate(net.body, torch.rand(2, 3, 16, 224, 224) * 2 - 1)
    torch.jit.script(net).save(str(path))
    return path


class _IBlock(nn.Module):
    def __init__(self, cin: int, c: int, stride: int):
        super().__init__()
        self.bn1, self.conv1, self.bn2 = (
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
        )
        self.prelu, self.conv2, self.bn3 = (
            nn.PReLU(c),
            nn.Conv2d(c, c, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c),
        )
        self.downsample = (nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))
                           if stride != 1 or cin != c else None)  # fmt: skip

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """insightface's `arcface_torch` IResNet (112 px in, 512-d out), `blocks` per stage, `width` channels."""

    def __init__(self, blocks=(2, 2, 2, 2), width=(8, 16, 32, 64), embedding: int = 512):
        super().__init__()
        self.conv1, self.bn1, self.prelu = (
            nn.Conv2d(3, width[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(width[0]),
            nn.PReLU(width[0]),
        )
        stages, cin = [], width[0]
        for n, c in zip(blocks, width, strict=True):
            stages.append(nn.Sequential(_IBlock(cin, c, 2), *[_IBlock(c, c, 1) for _ in range(n - 1)]))
            cin = c
        self.layers = nn.Sequential(*stages)
        self.bn2, self.fc, self.features = (
            nn.BatchNorm2d(cin),
            nn.Linear(cin * 49, embedding),
            nn.BatchNorm1d(embedding),
        )

    def forward(self, x):
        x = self.layers(self.prelu(self.bn1(self.conv1(x))))
        return self.features(self.fc(self.bn2(x).flatten(1)))


def save_arcface(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = calibrate(IResNet(), torch.rand(4, 3, 112, 112) * 2 - 1)
    torch.onnx.export(net, (torch.randn(1, 3, 112, 112),), str(path), dynamo=False, opset_version=17,
                      input_names=["input.1"], output_names=["embedding"],
                      dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}})  # fmt: skip
    return path
