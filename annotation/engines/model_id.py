"""A stable identity for a local model folder, so annotation versions agree across machines and paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

_META = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
_EDGE = 1 << 16  # bytes hashed at each end of a weight file (its header names every tensor)


def model_id(model: str) -> str:
    """`name@fingerprint` for a local folder (metadata files, weight file sizes and edges); a hub id as is."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return model
    h = hashlib.sha256()
    for name in _META:
        if (path / name).is_file():
            h.update(name.encode() + (path / name).read_bytes())
    for weights in (
        sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + sorted(path.glob("*.gguf"))
    ):
        size = weights.stat().st_size
        h.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as fh:
            h.update(fh.read(_EDGE))
            fh.seek(max(size - _EDGE, 0))
            h.update(fh.read(_EDGE))
    return f"{path.resolve().name}@{h.hexdigest()[:12]}"
