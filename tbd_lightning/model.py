"""The Draw denoiser: a spatio-temporal UNet over frame stacks, built from diffusers blocks.

Input `sample` (B, T, C, H, W) is pixels (tiny) or VAE latents (base/full). Per frame, every UNet level
runs a `ResnetBlock2D` and, where the config asks for attention, a `ConditionedTransformer`:

    spatial self-attention -> per-frame audio cross-attention -> global-text cross-attention
    -> local-text cross-attention (each token inside its own AU region) -> temporal self-attention -> FF

Each condition has its own projection and attention (so each can be guided on its own) and learned
null tokens that replace it when dropped (`keep` per sample), which is what classifier-free guidance
evaluates as "without this condition". The reference portrait enters by channel concatenation.
The global emotion sentence becomes `global_tokens` tokens, so its cross-attention can act differently
in different places (one key would add the same vector everywhere). Each local (per-AU) token can only
be attended inside its own region: the attention bias of token j at a position is log m_j there
(-inf where m_j = 0), with a null token always attendable, so outside its region token j has exactly
no influence on the layer's output. No masks given (`local_masks=None`) = every token everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import SinusoidalPositionalEmbedding, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn

from tbd_lightning.text import check_global_text

CONDITIONS = ("audio", "global", "local", "reference")
MAX_LOCAL = 8  # local (per-AU) sentences per sample, padded: the default of `max_local`

# Named sizes; `TBDVideoDenoiser.from_preset(name, **overrides)`. tiny: CPU, 32-64 px pixels; base: one GPU,
# 128 px pixels; full: 512 px through a VAE (latents 64 x 64 x 4), many GPUs.
PRESETS: dict[str, dict] = {
    "tiny": dict(block_channels=(32, 64, 64), attention_levels=(False, True, True), layers_per_block=1, heads=4,
                 cond_dim=64, norm_groups=8),
    "base": dict(block_channels=(64, 128, 256, 256), attention_levels=(False, True, True, True),
                 layers_per_block=2, heads=8, cond_dim=256, norm_groups=32),
    "full": dict(in_channels=4, out_channels=4, ref_channels=4, block_channels=(320, 640, 1280, 1280),
                 attention_levels=(True, True, True, False), layers_per_block=2, heads=8, cond_dim=768,
                 norm_groups=32, max_frames=32),
}  # fmt: skip


@dataclass
class Conditions:
    """Everything the denoiser is conditioned on, batch-first. `keep_*` (B,) bool: False = dropped."""

    reference: torch.Tensor  # (B, C_ref, H, W)
    audio: torch.Tensor  # (B, T, A) per-frame audio features
    global_text: torch.Tensor  # (B, D_text) a sentence vector, or (B, S, D) token states (SD's text encoder)
    local_text: torch.Tensor  # (B, L, D_text)
    local_valid: torch.Tensor  # (B, L) bool
    region_mask: torch.Tensor | None = None  # (B, T, 1, H, W) union of the AU regions (the sampler's M)
    keep: dict[str, torch.Tensor] | None = None  # condition -> (B,) bool
    local_masks: torch.Tensor | None = None  # (B, T, L, H, W) each local token's region; None = everywhere

    def kept(self, name: str) -> torch.Tensor:
        b = self.audio.shape[0]
        if self.keep is None or name not in self.keep:
            return torch.ones(b, dtype=torch.bool, device=self.audio.device)
        return self.keep[name].to(self.audio.device)

    def map(self, fn) -> Conditions:
        """Apply `fn` to every tensor (e.g. `lambda t: t.to(device)`, `lambda t: t[idx]`)."""
        keep = None if self.keep is None else {k: fn(v) for k, v in self.keep.items()}
        opt = lambda t: None if t is None else fn(t)  # noqa: E731
        fields = (self.reference, self.audio, self.global_text, self.local_text, self.local_valid)
        return Conditions(*(fn(x) for x in fields), opt(self.region_mask), keep, opt(self.local_masks))

    @staticmethod
    def cat(conds: list[Conditions]) -> Conditions:
        """The batches of `conds` one after another (optional fields present in all, or in none)."""

        def cat(name):
            parts = [getattr(c, name) for c in conds]
            return None if parts[0] is None else torch.cat(parts)

        keep = (
            None
            if conds[0].keep is None
            else {k: torch.cat([c.keep[k] for c in conds]) for k in conds[0].keep}
        )
        names = ("reference", "audio", "global_text", "local_text", "local_valid", "region_mask")
        return Conditions(*(cat(n) for n in names), keep, cat("local_masks"))


def latent_scale(vae) -> int:
    """Pixels per latent cell along a side of a diffusers `AutoencoderKL` (None: pixel space, 1)."""
    return 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)


class ConditionTokens:
    """Condition projections and null tokens shared by the denoisers (a mixin of `nn.Module`s): speech as
    each frame's features with `audio_context` neighbours, the global sentence as `global_tokens` tokens,
    one token per local sentence after a null token that is always attendable. With `project_global`
    False the global text comes as token states already (B, `global_tokens`, D: SD's own text encoder's)."""

    def _init_condition_tokens(
        self, text_dim: int, audio_dim: int, audio_context: int, global_tokens: int, dim: int,
        project_global: bool = True,
    ):  # fmt: skip
        self.audio_proj = nn.Sequential(nn.Linear(audio_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.audio_pos = nn.Parameter(torch.zeros(2 * audio_context + 1, dim))
        if project_global:
            self.global_proj = nn.Sequential(
                nn.Linear(text_dim, dim), nn.SiLU(), nn.Linear(dim, dim * global_tokens)
            )
        self.local_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.ParameterDict({n: nn.Parameter(torch.randn(k, dim) * 0.02) for n, k in (("audio", 1), ("global", global_tokens), ("local", 1))})  # fmt: skip

    @property
    def global_text_shape(self) -> tuple[int, ...]:
        """One sample's global text as the model takes it: (text_dim,) sentence vector, or (S, D) states."""
        return (self.config.text_dim,) if hasattr(self, "global_proj") else tuple(self.null["global"].shape)

    def condition_tokens(self, cond: Conditions, frames: int, dtype: torch.dtype):
        """Per frame (BT first): audio (BT, 2k+1, D), global (BT, G, D), local (BT, 1+L, D), the local
        tokens' validity bias (BT, 1, 1+L) and each local token's region (BT, L, H, W) or None; dropped
        conditions (`cond.keep`) are their null tokens."""
        b, k = cond.audio.shape[0], self.config.audio_context
        a = F.pad(cond.audio.to(dtype).transpose(1, 2), (k, k), mode="replicate").transpose(1, 2)
        a = a.unfold(1, 2 * k + 1, 1).transpose(2, 3)  # (B, T, 2k+1, A): each frame with its neighbours
        a = self.audio_proj(a) + self.audio_pos
        a = torch.where(cond.kept("audio")[:, None, None, None], a, self.null["audio"].to(dtype))
        if cond.global_text.dim() == 3:  # token states (SD's text encoder): its cross-attention's own input
            g = cond.global_text.to(dtype)
            if g.shape[1] != self.null["global"].shape[0]:
                raise ValueError(
                    f"{g.shape[1]} global text tokens; the model takes {self.null['global'].shape[0]}"
                )
        else:
            g = self.global_proj(cond.global_text.to(dtype)).reshape(b, self.config.global_tokens, -1)
        g = torch.where(cond.kept("global")[:, None, None], g, self.null["global"].to(dtype))
        loc = torch.cat(
            [self.null["local"].to(dtype).expand(b, 1, -1), self.local_proj(cond.local_text.to(dtype))], 1
        )
        valid = cond.local_valid.bool() & cond.kept("local")[:, None]
        valid = torch.cat([torch.ones_like(valid[:, :1]), valid], 1)
        bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(
            ~valid, torch.finfo(dtype).min
        )
        per_frame = lambda t: t.repeat_interleave(frames, 0)  # noqa: E731
        masks = None if cond.local_masks is None else RegionMasks(cond.local_masks.to(dtype).flatten(0, 1))
        return a.flatten(0, 1), per_frame(g), per_frame(loc), per_frame(bias[:, None]), masks  # fmt: skip


class ConditionedTransformer(nn.Module):
    """Spatial, audio, global, local (masked) and temporal attention on (B*T, C, h, w) features."""

    def __init__(self, channels: int, cond_dim: int, heads: int, groups: int, max_frames: int):
        super().__init__()
        dim_head = channels // heads
        self.norm_in = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)

        def attn(cross: int | None) -> Attention:
            return Attention(
                channels, cross_attention_dim=cross, heads=heads, dim_head=dim_head, out_bias=True
            )

        self.norms = nn.ModuleDict({n: nn.LayerNorm(channels) for n in ("self", "audio", "global", "local", "temporal", "ff")})  # fmt: skip
        self.self_attn = attn(None)
        self.audio_attn, self.global_attn, self.local_attn = attn(cond_dim), attn(cond_dim), attn(cond_dim)
        self.frame_pos = SinusoidalPositionalEmbedding(channels, max_frames)
        self.temporal_attn = attn(None)
        nn.init.zeros_(self.temporal_attn.to_out[0].weight)  # starts as a per-frame image model
        nn.init.zeros_(self.temporal_attn.to_out[0].bias)
        self.ff = FeedForward(channels, activation_fn="geglu")
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x, frames, audio, global_tok, local_tok, local_bias, masks):
        bt, c, h, w = x.shape
        residual = x
        y = self.proj_in(self.norm_in(x).permute(0, 2, 3, 1).reshape(bt, h * w, c))
        y = y + self.self_attn(self.norms["self"](y))
        y = y + self.audio_attn(self.norms["audio"](y), encoder_hidden_states=audio)
        y = y + self.global_attn(self.norms["global"](y), encoder_hidden_states=global_tok)
        bias = local_bias if masks is None else local_bias + masks.bias(h, w, local_bias.dtype)
        y = y + self.local_attn(self.norms["local"](y), encoder_hidden_states=local_tok, attention_mask=bias)
        b = bt // frames  # temporal attention: one sequence of T frames per spatial position
        z = y.reshape(b, frames, h * w, c).permute(0, 2, 1, 3).reshape(b * h * w, frames, c)
        z = z + self.temporal_attn(self.frame_pos(self.norms["temporal"](z)))
        y = z.reshape(b, h * w, frames, c).permute(0, 2, 1, 3).reshape(bt, h * w, c)
        y = y + self.ff(self.norms["ff"](y))
        return residual + self.proj_out(y).reshape(bt, h, w, c).permute(0, 3, 1, 2)


def region_bias(masks: torch.Tensor, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """(BT, L, H, W) per-token masks -> (BT, h*w, 1 + L) attention bias: 0 for the null token, log m_j for
    local token j (the dtype's minimum where m_j is 0: token j is not attended there at all)."""
    m = F.adaptive_avg_pool2d(masks.to(dtype), (h, w)).flatten(2).transpose(1, 2)  # (BT, h*w, L)
    floor = torch.finfo(dtype).min
    log_m = torch.where(m > 1e-4, m.clamp_min(1e-4).log(), torch.full_like(m, floor))
    return torch.cat([torch.zeros_like(log_m[..., :1]), log_m], -1)


class RegionMasks:
    """Each local token's region (BT, L, H, W) and its attention bias per resolution, computed once per
    forward pass (`region_bias`) and shared by every attention layer at that resolution."""

    def __init__(self, masks: torch.Tensor):
        self.masks, self._bias = masks, {}

    def bias(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        key = (h, w, dtype)
        if key not in self._bias:
            self._bias[key] = region_bias(self.masks, h, w, dtype)
        return self._bias[key]


class Level(nn.Module):
    """`layers` resnet(+transformer) pairs at one resolution; a checkpointing unit."""

    def __init__(self, chans: list[tuple[int, int]], temb: int, attention: bool, cfg: dict):
        super().__init__()
        g = cfg["norm_groups"]
        self.resnets = nn.ModuleList(ResnetBlock2D(in_channels=i, out_channels=o, temb_channels=temb, groups=g) for i, o in chans)  # fmt: skip
        self.attentions = nn.ModuleList(
            ConditionedTransformer(o, cfg["cond_dim"], cfg["heads"], g, cfg["max_frames"]) if attention else nn.Identity()
            for _, o in chans
        )  # fmt: skip
        self.attention = attention

    def step(self, i, x, temb, ctx, skip=None):
        if skip is not None:
            x = torch.cat([x, skip], 1)
        x = self.resnets[i](x, temb)
        return self.attentions[i](x, *ctx) if self.attention else x


class TBDVideoDenoiser(ModelMixin, ConfigMixin, ConditionTokens):
    """Predicts noise (or v) for a frame stack given timestep and `Conditions` (see module docstring)."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ref_channels: int = 3,
        block_channels: tuple[int, ...] = (32, 64),
        attention_levels: tuple[bool, ...] = (False, True),
        layers_per_block: int = 1,
        heads: int = 4,
        cond_dim: int = 64,
        text_dim: int = 384,
        audio_dim: int = 80,
        audio_context: int = 2,
        max_local: int = MAX_LOCAL,
        max_frames: int = 32,
        norm_groups: int = 8,
        global_tokens: int = 4,
        global_text: str = "description",
    ):
        """`global_text`: what the global text condition is (`tbd_lightning.text.cot_sentences`); the default
        is what a saved config without the field means (models trained before the global / local split);
        `TBDModule` builds new models with "emotion"."""
        super().__init__()
        check_global_text(global_text)
        if len(block_channels) != len(attention_levels):
            raise ValueError("block_channels and attention_levels must have the same length")
        cfg = dict(cond_dim=cond_dim, heads=heads, norm_groups=norm_groups, max_frames=max_frames)
        ch0, temb = block_channels[0], block_channels[0] * 4
        self.gradient_checkpointing = False
        self.time_proj = Timesteps(ch0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch0, temb)
        self._init_condition_tokens(text_dim, audio_dim, audio_context, global_tokens, cond_dim)
        self.conv_in = nn.Conv2d(in_channels + ref_channels, ch0, 3, padding=1)

        self.down, self.downsamplers, skips, prev = nn.ModuleList(), nn.ModuleList(), [ch0], ch0
        for i, (ch, att) in enumerate(zip(block_channels, attention_levels, strict=True)):
            chans = [(prev if j == 0 else ch, ch) for j in range(layers_per_block)]
            self.down.append(Level(chans, temb, att, cfg))
            skips += [ch] * layers_per_block
            prev = ch
            last = i == len(block_channels) - 1
            self.downsamplers.append(
                nn.Identity() if last else Downsample2D(ch, use_conv=True, padding=1, name="op")
            )
            if not last:
                skips.append(ch)
        self.mid = Level([(prev, prev), (prev, prev)], temb, True, cfg)
        self.up, self.upsamplers = nn.ModuleList(), nn.ModuleList()
        for i, (ch, att) in enumerate(reversed(list(zip(block_channels, attention_levels, strict=True)))):
            chans = []
            for _ in range(layers_per_block + 1):
                chans.append((prev + skips.pop(), ch))
                prev = ch
            self.up.append(Level(chans, temb, att, cfg))
            last = i == len(block_channels) - 1
            self.upsamplers.append(nn.Identity() if last else Upsample2D(ch, use_conv=True))
        self.norm_out = nn.GroupNorm(norm_groups, ch0, eps=1e-6)
        self.conv_out = nn.Conv2d(ch0, out_channels, 3, padding=1)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TBDVideoDenoiser:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: Conditions) -> torch.Tensor:
        b, t, c, h, w = sample.shape
        if t > self.config.max_frames:
            raise ValueError(f"{t} frames exceed the model's max_frames={self.config.max_frames}")
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        temb = self.time_embedding(self.time_proj(timestep).to(sample.dtype)).repeat_interleave(t, 0)
        tokens = self.condition_tokens(cond, t, self.conv_in.weight.dtype)
        ctx = (t, *tokens)
        ref = torch.where(cond.kept("reference")[:, None, None, None], cond.reference, 0)
        x = torch.cat([sample, ref[:, None].expand(-1, t, -1, -1, -1)], 2).flatten(0, 1)
        x = self.conv_in(x.to(self.conv_in.weight.dtype))
        skips = [x]
        for level, down in zip(self.down, self.downsamplers, strict=True):
            for i in range(len(level.resnets)):
                x = self._run(level, i, x, temb, ctx)
                skips.append(x)
            if not isinstance(down, nn.Identity):
                x = down(x)
                skips.append(x)
        x = self._run(self.mid, 0, x, temb, ctx)
        x = self._run(self.mid, 1, x, temb, ctx)
        for level, up in zip(self.up, self.upsamplers, strict=True):
            for i in range(len(level.resnets)):
                x = self._run(level, i, x, temb, ctx, skips.pop())
            x = up(x)
        x = self.conv_out(F.silu(self.norm_out(x)))
        return x.reshape(b, t, -1, h, w)

    def _run(self, level: Level, i, x, temb, ctx, skip=None):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(level.step, i, x, temb, ctx, skip)
        return level.step(i, x, temb, ctx, skip)
