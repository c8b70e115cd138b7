"""Draw: the conditioned video diffusion model, its Lightning training, the progressive sampler and the
diffusers pipeline (`TBDPipeline`). The names below are imported on first use: `import tbd_lightning` stays cheap.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "TBDPipeline": "tbd_lightning.pipeline",
    "TBDPipelineOutput": "tbd_lightning.pipeline",
    "TBDVideoDenoiser": "tbd_lightning.model",
    "SDVideoDenoiser": "tbd_lightning.sd_model",
    "GuidanceConfig": "tbd_lightning.sampler",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
