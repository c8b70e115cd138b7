"""Attention processors of the latent Draw denoiser (`tbd_lightning.sd_model`), the diffusers way.

`ReferenceAttnProcessor` (attn1): in "write" mode keeps its input (the reference's features at this
layer) in the call's bank; in "read" mode it attends over the frame's own tokens plus the reference's
(repeated per frame) and blends: out = own + gate * (joint - own), `gate` a learned scalar per layer
starting at 0 (a new model is exactly the pretrained UNet; at 1 it is Animate Anyone's concatenation);
samples whose reference is dropped do not see those tokens. The blend costs one more attention over the
frame's own tokens per layer.

`ConditionCrossAttnProcessor` (attn2): out = to_out(A(q, text) + A(q, audio) + A(q, local)) with SD's
own keys/values for the (global emotion) text and new ones for audio and local tokens (as IP-Adapter
adds image keys/values); the local attention's bias keeps each local token inside its own region
(`tbd_lightning.model.RegionMasks`) and a null token is always attendable. Without `tbd` conditions
(the reference write pass, or plain SD use) it is SD's cross-attention.
Everything a processor needs comes through `cross_attention_kwargs={"tbd": ...}`, never from state set
around the call: gradient checkpointing recomputes blocks during backward, after the forward has returned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _attend(q, k, v, heads: int, bias=None) -> torch.Tensor:
    out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads), attn_mask=bias)
    return out.transpose(1, 2).flatten(2)


class ReferenceAttnProcessor(nn.Module):
    """attn1 with gated reference attention; what to do comes in the call's `tbd` conditions (so a gradient-
    checkpointed block recomputes exactly what it computed): `mode` write | read, `bank` (layer -> features),
    `frames`, `keep` (B,) bool."""

    def __init__(self, name: str, enabled: bool = True):
        super().__init__()
        self.name, self.enabled = name, enabled
        self.gate = nn.Parameter(torch.zeros(()))  # 0: the reference changes nothing until it is learned

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 tbd: dict | None = None, **kwargs):  # fmt: skip
        mode = (tbd or {}).get("mode") if self.enabled else None
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        out = _attend(q, k, v, attn.heads)
        if mode == "write":
            tbd["bank"][self.name] = hidden_states
        elif mode == "read":
            frames, keep, bias = tbd["frames"], tbd["keep"], None
            ref = tbd["bank"][self.name].repeat_interleave(frames, 0)
            if keep is not None and not bool(keep.all()):
                seen = keep.repeat_interleave(frames, 0)[:, None, None, None]  # (BT, 1, 1, 1)
                n, m = hidden_states.shape[1], ref.shape[1]
                floor = torch.finfo(hidden_states.dtype).min
                ref_bias = torch.where(seen, 0.0, floor).to(hidden_states.dtype).expand(-1, 1, 1, m)
                bias = torch.cat([torch.zeros_like(ref_bias[..., :1]).expand(-1, 1, 1, n), ref_bias], -1)
            joint = _attend(
                q, torch.cat([k, attn.to_k(ref)], 1), torch.cat([v, attn.to_v(ref)], 1), attn.heads, bias
            )
            out = out + self.gate.to(out.dtype) * (joint - out)
        return attn.to_out[1](attn.to_out[0](out.to(hidden_states.dtype)))


class ConditionCrossAttnProcessor(nn.Module):
    def __init__(self, hidden: int, cross: int):
        super().__init__()
        self.to_k_audio, self.to_v_audio = (
            nn.Linear(cross, hidden, bias=False),
            nn.Linear(cross, hidden, bias=False),
        )
        self.to_k_local, self.to_v_local = (
            nn.Linear(cross, hidden, bias=False),
            nn.Linear(cross, hidden, bias=False),
        )
        nn.init.zeros_(self.to_v_audio.weight)  # the pretrained UNet's output is unchanged at the start
        nn.init.zeros_(self.to_v_local.weight)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 tbd: dict | None = None, **kwargs):  # fmt: skip
        text = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        q = attn.to_q(hidden_states)
        out = _attend(q, attn.to_k(text), attn.to_v(text), attn.heads)
        if tbd is not None and "audio" in tbd:
            audio = tbd["audio"].to(q.dtype)
            out = out + _attend(q, self.to_k_audio(audio), self.to_v_audio(audio), attn.heads)
            local, bias = (
                tbd["local"].to(q.dtype),
                tbd["local_bias"].to(q.dtype),
            )  # (BT, 1+L, D), (BT, 1, 1+L)
            if tbd["masks"] is not None:
                side = math.isqrt(hidden_states.shape[1])  # square frames
                bias = bias + tbd["masks"].bias(side, side, q.dtype)
            out = out + _attend(q, self.to_k_local(local), self.to_v_local(local), attn.heads, bias[:, None])
        return attn.to_out[1](attn.to_out[0](out.to(hidden_states.dtype)))
