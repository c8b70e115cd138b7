"""`TBDPipeline`: the Draw model as a diffusers pipeline (denoiser, training scheduler, optional VAE).

    pipe = TBDPipeline.from_pretrained("out/model").to("cuda")        # a folder written by `tbd export`
    video = pipe(crop, landmarks, audio_features, cot=cot, guidance=GuidanceConfig(steps=20)).frames

`save_pretrained` writes `model_index.json` (components and the plain values below), `denoiser/`,
`scheduler/` (the training `DDPMScheduler`; the sampler derives DDIM/Euler/DPM from it), `vae/` for
latent models and, for an SD denoiser taking the global text as token states, `prompt_encoder/` and
`prompt_tokenizer/` (the SD folder's CLIP text encoder and tokenizer). Plain values, restored by `from_pretrained`: `text_encoder` (a local sentence-transformers
or CLIP folder; None = the offline default asset), `media` (the `MediaConfig` the training shards were
made with: generation inputs must be made the same way), `conditioning` (window `frames`, pixel `size`,
prediction type, condition dropout), `annotation_version` (of the training CoTs) and `source` (checkpoint,
sha256, step, EMA, MLflow run).

A call: check inputs -> encode the texts (a CoT's global and per-AU sentences, as in training) -> region
mask of the CoT's AUs -> conditions in windows of the training length -> `ProgressiveSampler` -> decode
(VAE when present) -> frames (T, S, S, 3) uint8. `generate` does the same for several videos, their windows
denoised together (`tbd_lightning.video_batch`), each video as a lone call would give it.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from tbd_core.errors import UserError
from tbd_core.terminal import route_library_logs
from tbd_lightning.model import Conditions, TBDVideoDenoiser, latent_scale
from tbd_lightning.sampler import GuidanceConfig, ProgressiveSampler
from tbd_lightning.video_batch import VideoPlan, VideoRequest, sample_videos
from tbd_lightning.windows import seam_ratio, window_starts

OUTPUT_TYPES = ("np", "pt", "latent")
log = logging.getLogger(__name__)
route_library_logs()  # diffusers, imported above: its loading bars and console lines to the log file


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class TBDPipelineOutput(BaseOutput):
    """`frames`: (T, S, S, 3) uint8 ("np"), (T, 3, S, S) in [-1, 1] ("pt") or the sampled (T, C, h, w)
    ("latent"); the texts the video was conditioned on; the seam ratio (`tbd_lightning.windows`)."""

    frames: np.ndarray | torch.Tensor
    global_text: str
    local_text: list[str]
    seam_ratio: float | None = None  # frame change across window boundaries / inside windows (None: 1 window)
    windows: int = 1  # windows sampled (of the training length)
    motion_frames: int = 0  # frames each window took from the one before


class TBDPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "prompt_encoder->denoiser"
    _optional_components = ["vae", "prompt_encoder", "prompt_tokenizer"]

    def __init__(
        self,
        denoiser: TBDVideoDenoiser,
        scheduler,
        vae=None,
        text_encoder: str | None = None,
        media: dict | None = None,
        conditioning: dict | None = None,
        annotation_version: str | None = None,
        source: dict | None = None,
        prompt_encoder=None,
        prompt_tokenizer=None,
    ):
        """`prompt_encoder`, `prompt_tokenizer`: the SD folder's CLIP text encoder and tokenizer, for a
        denoiser taking the global text as their token states (`text_chunks`; `tbd_lightning.sd_text`)."""
        super().__init__()
        self.register_modules(denoiser=denoiser, scheduler=scheduler, vae=vae, prompt_encoder=prompt_encoder,
                              prompt_tokenizer=prompt_tokenizer)  # fmt: skip
        self.register_to_config(
            text_encoder=None if text_encoder is None else str(text_encoder), media=media,
            conditioning=conditioning, annotation_version=annotation_version, source=source,
        )  # fmt: skip
        self._embedder = None  # built on the first call (the text encoder is a reference, not a component)
        self._prompts = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> TBDPipeline:
        """A local folder written by `save_pretrained` / `tbd export` (a clear error for anything else)."""
        folder = Path(pretrained_model_name_or_path)
        if not (folder / "model_index.json").is_file():
            what = "does not exist" if not folder.exists() else "has no model_index.json"
            raise UserError(f"{folder} {what}: give a pipeline folder written by `tbd export`")
        import json

        library = json.loads((folder / "model_index.json").read_text()).get("denoiser", [None])[0]
        if isinstance(library, str) and library.startswith("tbd_lightning."):
            importlib.import_module(library)  # our own denoiser modules only (diffusers imports none itself)
        kwargs.setdefault("use_safetensors", True)  # weights as safetensors only: no pickled .bin is loaded
        if importlib.util.find_spec("accelerate") is None:
            kwargs.setdefault("low_cpu_mem_usage", False)  # what diffusers falls back to, without its warning
        return super().from_pretrained(str(folder), **kwargs)

    # -- what the model was trained on --------------------------------------------------------------------
    @property
    def media_config(self):
        """How the training media were made (fps, crop margin, audio features): `MediaConfig`."""
        from media.clip_media import MediaConfig

        return MediaConfig(**(self.config.media or {}))

    @property
    def fps(self) -> int:
        return self.media_config.fps

    @property
    def frames(self) -> int:
        """The training window: frames sampled together (longer audio is cut into windows)."""
        return int((self.config.conditioning or {}).get("frames") or self.denoiser.config.max_frames)

    @property
    def size(self) -> int:
        """Pixel size of the (square) frames."""
        return int((self.config.conditioning or {}).get("size") or self.media_config.crop_size)

    @property
    def vae_scale_factor(self) -> int:
        return latent_scale(self.vae)

    # -- steps ----------------------------------------------------------------------------------------------
    def check_inputs(self, reference, reference_landmarks, audio_features, cot, global_text, local_text,
                     regions, label_only, guidance, output_type) -> None:  # fmt: skip
        s, cfg = self.size, self.denoiser.config
        ok = (
            isinstance(reference, np.ndarray) and reference.dtype == np.uint8 and reference.shape == (s, s, 3)
        )
        if not ok:
            got = getattr(reference, "shape", type(reference).__name__)
            raise ValueError(f"reference must be a ({s}, {s}, 3) uint8 array (the model's crop), got {got}")
        lm = np.asarray(reference_landmarks)
        if lm.ndim != 2 or lm.shape[0] != 468 or lm.shape[1] < 2:  # the face mesh, x and y in [0, 1]
            raise ValueError(f"reference_landmarks must be (468, 3) crop-normalised, got {lm.shape}")
        feats = np.asarray(audio_features)
        if feats.ndim != 2 or len(feats) == 0 or feats.shape[1] != cfg.audio_dim:
            raise ValueError(f"audio_features must be (T >= 1, {cfg.audio_dim}), got {feats.shape}")
        if (cot is None) == (global_text is None):
            raise ValueError("give either a CoT (`cot`) or the texts (`global_text`, optional `local_text`)")
        if cot is None and label_only:
            raise ValueError("label_only applies to a CoT (its label replaces it); give `cot`")
        if cot is not None and (local_text is not None or regions is not None):
            raise ValueError("local_text and regions come from the CoT when `cot` is given")
        if local_text is not None and len(local_text) > cfg.max_local:
            raise ValueError(f"{len(local_text)} local sentences; the model takes at most {cfg.max_local}")
        if local_text and len(regions or ()) != len(local_text):
            raise ValueError("give one face region per local sentence (`regions`, in the same order)")
        if regions:
            from annotation.regions import region_landmarks

            known = set(region_landmarks())
            if set(regions) - known:
                raise ValueError(
                    f"unknown face regions {sorted(set(regions) - known)}; known: {sorted(known)}"
                )
        if not isinstance(guidance, GuidanceConfig):
            raise TypeError(f"guidance must be a GuidanceConfig, got {type(guidance).__name__}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r}; choose one of {OUTPUT_TYPES}")

    def text_embedder(self, device: torch.device):
        """The `TextEmbedder` of `config.text_encoder`, built once per device."""
        from tbd_lightning.text import TextEmbedder

        if self._embedder is None or self._embedder.device != str(device):
            self._embedder = TextEmbedder(self.config.text_encoder, device=str(device))
        return self._embedder

    def encode_text(self, sentences: list[str], device: torch.device) -> np.ndarray:
        emb = self.text_embedder(device).embed(sentences)
        if emb.shape[1] != self.denoiser.config.text_dim:
            raise ValueError(
                f"the text encoder gives {emb.shape[1]}-d vectors, the denoiser takes text_dim="
                f"{self.denoiser.config.text_dim}: use the encoder it was trained with"
            )
        return emb

    def prompt_states(self, sentence: str) -> torch.Tensor | None:
        """(chunks * 77, D) token states of the global sentence for a denoiser that takes them (None: it
        takes sentence vectors); a sentence over its windows is refused (`PromptEncoder.windows`)."""
        chunks = getattr(self.denoiser.config, "text_chunks", 0)
        if not chunks:
            return None
        if self.prompt_encoder is None or self.prompt_tokenizer is None:
            raise UserError("the denoiser takes SD text-encoder states but the pipeline has no prompt_encoder/: "
                            "export it again with `tbd export`")  # fmt: skip
        if self._prompts is None:
            from tbd_lightning.sd_text import PromptEncoder

            self._prompts = PromptEncoder(self.prompt_tokenizer, self.prompt_encoder, chunks)
        return self._prompts.encode([sentence])[0]

    @torch.no_grad()
    def encode_reference(self, pixels: torch.Tensor) -> torch.Tensor:
        """(3, S, S) in [-1, 1] -> what the denoiser is conditioned on (pixels, or scaled VAE latents)."""
        if self.vae is None:
            return pixels
        latents = self.vae.encode(pixels[None].to(self.vae.dtype)).latent_dist.mode()
        return (latents * self.vae.config.scaling_factor)[0].float()

    def prepare_conditions(self, reference, audio_features, emb, n_local, mask, tokens, device,
                           starts: list[int] | None = None, encoded: torch.Tensor | None = None,
                           global_states: torch.Tensor | None = None) -> Conditions:  # fmt: skip
        """One batch row per window of the training length starting at `starts` (default: back to back),
        the audio padded with the last frame's. `encoded`: the reference as `encode_reference` gave it
        (encoded here when None); `global_states`: the global text as token states (`prompt_states`),
        instead of `emb[0]`. Memory grows with len(starts): callers pass bounded chunks."""
        den, window = self.denoiser, self.frames
        starts = window_starts(len(audio_features), window) if starts is None else starts
        n_windows = len(starts)
        # Each window's rows, past the end the last frame's (only these rows are copied: not the whole speech)
        rows = np.minimum(np.asarray(starts)[:, None] + np.arange(window), len(audio_features) - 1)
        if encoded is None:
            ref = torch.from_numpy(np.ascontiguousarray(reference)).permute(2, 0, 1).float().div(127.5).sub(1)
            encoded = self.encode_reference(ref.to(device))
        local_text = torch.zeros(den.config.max_local, emb.shape[1])
        local_text[:n_local] = torch.from_numpy(emb[1:])
        return Conditions(
            reference=encoded[None].expand(n_windows, -1, -1, -1),
            audio=torch.from_numpy(np.asarray(audio_features)[rows]),
            global_text=(
                torch.from_numpy(emb[0])[None].expand(n_windows, -1)
                if global_states is None
                else global_states[None].expand(n_windows, -1, -1)
            ),  # fmt: skip
            local_text=local_text[None].expand(n_windows, -1, -1),
            local_valid=(torch.arange(den.config.max_local) < n_local)[None].expand(n_windows, -1),
            region_mask=mask[None, None, None].expand(n_windows, window, 1, *mask.shape),
            local_masks=tokens[None, None].expand(n_windows, window, *tokens.shape),
        ).map(lambda t: t.contiguous().to(device))

    @torch.no_grad()
    def decode(self, x: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """(N, C, h, w) samples -> (N, 3, S, S) pixels in [-1, 1]."""
        if self.vae is None:
            return x.clamp(-1, 1)
        sf = self.vae.config.scaling_factor
        parts = [self.vae.decode(c.to(self.vae.dtype) / sf).sample for c in x.split(chunk)]
        return torch.cat(parts).float().clamp(-1, 1)

    # -- the call -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        reference: np.ndarray,
        reference_landmarks: np.ndarray,
        audio_features: np.ndarray,
        cot: dict | None = None,
        global_text: str | None = None,
        local_text: list[str] | None = None,
        regions: tuple[str, ...] | None = None,
        label_only: bool = False,
        guidance: GuidanceConfig | None = None,
        seed: int = 0,
        generator: torch.Generator | None = None,
        progress_bar: bool = False,
        callback_on_step_end: Callable | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        max_frames_per_batch: int | None = 256,
    ) -> TBDPipelineOutput | tuple:
        """A video of len(audio_features) frames from a portrait crop, its speech and an emotion.

        reference: (S, S, 3) uint8 crop at the model's `size` (made as in training: `media.inputs`);
        reference_landmarks: its (468, 3) crop-normalised face mesh (for the AU region mask);
        audio_features: (T, A) per-frame features made as the training shards' (`media_config`);
        cot: a CoT as a dict (its global sentence, one sentence per AU, the AUs' regions) — or `global_text`
        with optional `local_text` sentences and each one's face region (`regions`, one per sentence: each
        sentence acts only inside its own region); label_only: the CoT's label only;
        guidance: steps, scheduler, scales, switch point, mode (default `GuidanceConfig()`);
        generator: on the execution device (default: seeded with `seed`);
        callback_on_step_end(pipe, step, timestep, {"latents": x}): after each step (of each batch of
        windows); may return a dict with replaced "latents";
        max_frames_per_batch: independent windows are denoised in batches of at most this many frames (times
        the guidance branches per forward pass), so memory does not grow with the speech; None: all at once.
        The result does not depend on it.
        """
        request = VideoRequest(reference, reference_landmarks, audio_features, cot, global_text, local_text,
                               regions, label_only)  # fmt: skip
        out = self.generate([request], guidance, seed, None if generator is None else [generator], progress_bar,
                            callback_on_step_end, output_type, max_frames_per_batch)[0]  # fmt: skip
        return out if return_dict else (out.frames,)

    @torch.no_grad()
    def generate(
        self,
        requests: list[VideoRequest],
        guidance: GuidanceConfig | None = None,
        seed: int = 0,
        generators: list[torch.Generator] | None = None,
        progress_bar: bool = False,
        callback_on_step_end: Callable | None = None,
        output_type: str = "np",
        max_frames_per_batch: int | None = 256,
    ) -> list[TBDPipelineOutput]:
        """Several videos with one guidance, their windows denoised together (`video_batch.sample_videos`:
        batches of at most `max_frames_per_batch` frames; with motion frames, window w of every video in one
        batch). Each video's noise comes from its own generator (default: each seeded with `seed`), so each
        equals what `__call__` gives for it alone. Arguments as `__call__`'s; one output per request."""
        guidance = GuidanceConfig() if guidance is None else guidance
        for r in requests:  # 1. Check inputs
            self.check_inputs(r.reference, r.reference_landmarks, r.audio_features, r.cot, r.global_text,
                              r.local_text, r.regions, r.label_only, guidance, output_type)  # fmt: skip
        device, den = self._execution_device, self.denoiser
        if generators is None:
            generators = [torch.Generator(device).manual_seed(seed) for _ in requests]
        # Windows of the training length overlap by the motion frames (given clean where trained so)
        trained = int((self.config.conditioning or {}).get("motion_frames") or 0)
        motion = min(trained if guidance.motion_frames is None else guidance.motion_frames, self.frames - 1)
        if trained and motion not in (0, trained):
            log.warning(
                "motion_frames %d: the model was trained with %d clean motion frames", motion, trained
            )
        # 2-4. Texts, region masks and windows of each video
        plans = [self.plan(r, device, motion, g) for r, g in zip(requests, generators, strict=True)]
        # 5. Sample with progressive guidance, the windows of all videos together
        sampler = ProgressiveSampler(den, self.scheduler.config, guidance)
        # One progress line for every window's steps (not a bar per window)
        bar = tqdm(desc="denoising", unit="step", disable=not progress_bar)

        def step_end(i, t, latents):
            bar.update(1)
            if callback_on_step_end is not None:
                return (callback_on_step_end(self, i, t, {"latents": latents}) or {}).get("latents")
            return None

        sample = lambda shape, cond, **kw: sampler.sample(  # noqa: E731
            shape, cond, progress_bar=False, callback=step_end, known_clean=trained > 0, **kw
        )
        h = self.size // self.vae_scale_factor
        window = (self.frames, den.config.in_channels, h, h)
        with bar:
            samples = sample_videos(plans, sample, window, motion, max_frames_per_batch)
        # 6. Decode; 7. offload, return
        outputs = []
        for x, plan in zip(samples, plans, strict=True):
            pixels = None if output_type == "latent" else self.decode(x)
            frames = x if pixels is None else (to_uint8(pixels) if output_type == "np" else pixels)
            shown = x if pixels is None else pixels  # the seam as sampled (latents) or as seen (pixels)
            seams = seam_ratio(shown.float().cpu().numpy(), self.frames, motion)
            outputs.append(TBDPipelineOutput(frames=frames, global_text=plan.global_text,
                                             local_text=plan.local_text, seam_ratio=seams,
                                             windows=len(plan.starts), motion_frames=motion))  # fmt: skip
        self.maybe_free_model_hooks()
        return outputs

    def plan(self, request: VideoRequest, device, motion: int, generator: torch.Generator) -> VideoPlan:
        """One video's texts (a CoT's sentences exactly as in training, or the given ones), region masks at
        the latent size, windows (overlapping by `motion` frames) and their conditions."""
        from media.au_measure import token_masks
        from tbd_lightning.text import cot_sentences, cot_token_regions

        den, r = self.denoiser, request
        if r.cot is not None:
            global_text, local = cot_sentences(
                r.cot, den.config.max_local, r.label_only, den.config.global_text
            )
            regions = cot_token_regions(r.cot, den.config.max_local) if local else ()
        else:
            global_text, local, regions = r.global_text, list(r.local_text or []), tuple(r.regions or ())
        emb = self.encode_text([global_text, *local], device)
        states = self.prompt_states(global_text)  # SD's text-encoder states, for a denoiser that takes them
        # Each local sentence's region mask, and their union (the sampler's M; zero without local sentences)
        union, tokens, _ = token_masks(np.asarray(r.reference_landmarks), self.size, regions,
                                       den.config.max_local, out=self.size // self.vae_scale_factor)  # fmt: skip
        mask, tokens = torch.from_numpy(union), torch.from_numpy(tokens)
        feats = np.asarray(r.audio_features, np.float32)
        ref = torch.from_numpy(np.ascontiguousarray(r.reference)).permute(2, 0, 1).float().div(127.5).sub(1)
        encoded = self.encode_reference(ref.to(device))

        def conditions(starts: list[int]) -> Conditions:
            return self.prepare_conditions(r.reference, feats, emb, len(local), mask, tokens, device, starts,
                                           encoded, states)  # fmt: skip

        starts = window_starts(len(feats), self.frames, motion)
        return VideoPlan(len(feats), starts, conditions, generator, global_text, local)
