"""Stable Diffusion's own text conditioning for the global emotion sentence: the per-token hidden states of
the SD folder's CLIP text encoder (`text_encoder/`, `tokenizer/`), the input SD's cross-attention was
trained on, exactly as `StableDiffusionPipeline.encode_prompt` makes them (padded to 77 tokens, last
hidden state).

A sentence longer than one window (75 tokens between BOS and EOS) is split into consecutive windows, each
encoded alone and the states concatenated (the long-prompt scheme of the A1111 web UI and `compel`), up to
`chunks` windows; shorter sentences are padded with windows of the empty prompt (SD's unconditional), so
every sentence gives (chunks * 77, D). A sentence needing more than `chunks` windows is refused with its
token count: nothing is cut silently.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from tbd_core.errors import UserError

WINDOW = 77  # CLIP's context: BOS + 75 tokens + EOS


def load_clip_text(folder: str | Path, tokenizer_only: bool = False):
    """(CLIPTokenizer, CLIPTextModel or None) of a Stable-Diffusion folder's `tokenizer/`, `text_encoder/`."""
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    if not (folder / "text_encoder" / "config.json").is_file():
        raise UserError(f"{folder} has no text_encoder/ (a Stable-Diffusion folder in diffusers layout)")
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    if tokenizer_only:
        return tokenizer, None
    return tokenizer, CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)


class PromptEncoder:
    """`encode(sentences) -> (N, chunks * 77, D)` float32 tensor; each distinct sentence encoded once
    (memory, and `cache_dir` across processes)."""

    def __init__(self, tokenizer, text_encoder, chunks: int = 1, cache_dir: str | Path | None = None):
        if chunks < 1:
            raise ValueError(f"chunks must be >= 1, not {chunks}")
        self.tokenizer, self.model, self.chunks = tokenizer, text_encoder.eval(), chunks
        self.dim = int(text_encoder.config.hidden_size)
        self.cache_dir = Path(cache_dir) / self._id() if cache_dir else None
        self._memory: dict[str, torch.Tensor] = {}

    @classmethod
    def from_sd(
        cls, folder: str | Path, chunks: int = 1, cache_dir=None, device: str = "cpu"
    ) -> PromptEncoder:
        """From a Stable-Diffusion folder in diffusers layout (its `tokenizer/` and `text_encoder/`)."""
        tokenizer, model = load_clip_text(folder)
        return cls(tokenizer, model.to(device), chunks, cache_dir)

    def _id(self) -> str:
        """The encoder's identity for the disk cache: its weights' checksum and the window count."""
        digest = hashlib.sha1()
        for name, p in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(p.detach().float().cpu().numpy().tobytes()[:4096])
        return f"clip-states-{digest.hexdigest()[:12]}-x{self.chunks}"

    def windows(self, sentence: str) -> list[list[int]]:
        """The token ids of `sentence` in windows of at most 75 (no BOS/EOS); UserError beyond `chunks`."""
        ids = self.tokenizer(sentence, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        inner = WINDOW - 2
        parts = [ids[i : i + inner] for i in range(0, len(ids), inner)] or [[]]
        if len(parts) > self.chunks:
            raise UserError(
                f"the text has {len(ids)} CLIP tokens, more than {self.chunks} window(s) of {inner} "
                f"(--model.model_overrides.text_chunks): shorten it or train with more windows: {sentence[:80]!r}..."
            )
        return parts + [[]] * (self.chunks - len(parts))

    @staticmethod
    def check_lengths(folder: str | Path, sentences: list[str], chunks: int) -> None:
        """Refuse, before training starts, when any of `sentences` needs more than `chunks` windows: how
        many do and how many windows the longest needs (the SD folder's tokenizer only, nothing encoded)."""
        tokenizer, _ = load_clip_text(folder, tokenizer_only=True)
        unique = sorted(set(sentences))
        lengths = [
            len(ids) for ids in tokenizer(unique, add_special_tokens=False, verbose=False)["input_ids"]
        ]
        windows = [max(1, -(-n // (WINDOW - 2))) for n in lengths]
        over = [(w, n, s) for w, n, s in zip(windows, lengths, unique, strict=True) if w > chunks]
        if over:
            w, n, s = max(over)
            raise UserError(
                f"{len(over)} of {len(unique)} distinct texts need more than {chunks} window(s) of 75 CLIP tokens "
                f"(the longest: {n} tokens, {w} windows: {s[:60]!r}...): train with --model.model_overrides.text_chunks {w}"
            )

    @torch.no_grad()
    def _encode(self, sentence: str) -> torch.Tensor:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        rows = [[tok.bos_token_id, *w, tok.eos_token_id] for w in self.windows(sentence)]
        ids = torch.tensor([r + [pad] * (WINDOW - len(r)) for r in rows], device=self.model.device)
        states = self.model(ids)[0]  # (chunks, 77, D): last hidden state, as encode_prompt (clip_skip None)
        return states.reshape(-1, self.dim).float().cpu()

    def encode(self, sentences: list[str]) -> torch.Tensor:
        out = []
        for s in sentences:
            if s not in self._memory:
                f = (
                    None
                    if self.cache_dir is None
                    else self.cache_dir / (hashlib.sha1(s.encode()).hexdigest() + ".npy")
                )
                if f is not None and f.is_file():
                    self._memory[s] = torch.from_numpy(np.load(f).astype(np.float32))
                else:  # kept as the disk cache keeps it (float16), so a cached run gives the same states
                    self._memory[s] = self._encode(s).half().float()
                    if f is not None:
                        f.parent.mkdir(parents=True, exist_ok=True)
                        tmp = f.with_suffix(f".{id(s)}.tmp.npy")
                        np.save(tmp, self._memory[s].half().numpy())
                        tmp.replace(f)
            out.append(self._memory[s])
        return torch.stack(out) if out else torch.zeros(0, self.chunks * WINDOW, self.dim)
