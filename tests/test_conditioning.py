"""Conditioning that can be spatial, probed like unit tests: each local token acts only inside its own
region, and the global emotion text can act differently in different places."""

from __future__ import annotations

import pytest
import torch

from tbd_lightning.model import ConditionedTransformer, RegionMasks, TBDVideoDenoiser
from tests.conftest import tiny_conditions


def _layer_inputs(g: torch.Generator, masks: torch.Tensor, local: torch.Tensor):
    bt, tokens = 2, local.shape[1]
    x = torch.randn(bt, 32, 8, 8, generator=g)
    audio = torch.randn(bt, 5, 32, generator=g)
    global_tok = torch.randn(bt, 4, 32, generator=g)
    bias = torch.zeros(bt, 1, tokens)
    return x, 1, audio, global_tok, local, bias, RegionMasks(masks)


def test_a_local_token_has_no_influence_outside_its_own_region():
    torch.manual_seed(0)
    layer = ConditionedTransformer(32, 32, heads=4, groups=8, max_frames=4).eval()
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, 2, 8, 8)  # token 1 (AU of the brows): top rows; token 2 (mouth): bottom rows
    masks[:, 0, :3] = 1.0
    masks[:, 1, 5:] = 1.0
    local = torch.randn(2, 3, 32, generator=g)  # null token + 2 local tokens
    inputs = _layer_inputs(g, masks, local)
    changed = local.clone()
    changed[:, 2] = torch.randn(2, 32, generator=g)  # another text for the mouth token only
    with torch.no_grad():
        a = layer(*inputs)
        b = layer(*inputs[:4], changed, *inputs[5:])
    diff = (a - b).abs().amax(dim=(0, 1))  # (h, w)
    assert diff[:5].max() == 0  # outside the mouth region: exactly no influence
    assert diff[5:].min() > 1e-4  # inside it: the new text acts
    unmasked = (inputs[:4], changed, inputs[5], None)
    with torch.no_grad():
        c = layer(*unmasked[0], unmasked[1], unmasked[2], None) - layer(*inputs[:6], None)
    assert c.abs().amax(dim=(0, 1))[:5].max() > 1e-4  # without masks the token acts everywhere


def test_global_text_can_act_differently_in_different_places():
    """With one pooled key, cross-attention adds the same vector at every position; with several global
    tokens the attention weights, and so what the text adds, differ from place to place."""
    torch.manual_seed(0)
    model = TBDVideoDenoiser.from_preset("tiny", block_channels=(16, 32), attention_levels=(True, True))
    layer = model.down[0].attentions[0]
    g = torch.Generator().manual_seed(1)
    y = torch.randn(1, 64, 16, generator=g)
    tokens = model.global_proj(torch.randn(1, 384, generator=g)).reshape(1, model.config.global_tokens, -1)
    with torch.no_grad():
        added = layer.global_attn(layer.norms["global"](y), encoder_hidden_states=tokens)
    assert model.config.global_tokens > 1
    assert added.std(dim=1).mean() > 1e-3  # varies over positions


@pytest.mark.parametrize("path", ["speech", "text", "reference"])
def test_a_path_broken_on_purpose_carries_nothing_and_the_others_still_act(path):
    """`tbd check-conditioning --break_path`: the condition is dropped in every branch (its null tokens, as
    classifier-free training knows them), so changing it changes nothing; the other conditions still act."""
    import dataclasses

    from evaluation.conditioning import BrokenPath

    torch.manual_seed(0)
    model = TBDVideoDenoiser.from_preset(
        "tiny", block_channels=(16, 32), attention_levels=(True, True)
    ).eval()
    cond = tiny_conditions()
    fields = {"speech": ["audio"], "text": ["global_text", "local_text"], "reference": ["reference"]}
    swapped = {c: dataclasses.replace(cond, **{f: torch.randn_like(getattr(cond, f)) for f in fs})
               for c, fs in fields.items()}  # fmt: skip
    x, t = torch.randn(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(4)), torch.tensor([500])
    with torch.no_grad(), BrokenPath(model, path):
        own = model(x, t, cond)
        change = {c: (model(x, t, s) - own).abs().max().item() for c, s in swapped.items()}
    assert change.pop(path) == 0
    assert all(v > 1e-4 for v in change.values()), change
    with torch.no_grad():  # after the check the model is whole again
        assert (model(x, t, swapped[path]) - model(x, t, cond)).abs().max() > 1e-4
