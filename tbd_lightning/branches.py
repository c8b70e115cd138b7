"""The guidance chain ∅ ⊂ a ⊂ a,g ⊂ a,g,l shared by training (condition dropout) and sampling (guidance).

Every branch keeps the reference portrait: identity is conditioning, never extrapolated. Training draws
one branch per sample with the configured probabilities (the rest of the mass trains the full branch), so
every branch the sampler evaluates is trained often. `label` trains the label-only caption ("contempt,
level 2" as the global text, no local text), so the label-only ablation is in distribution.
"""

from __future__ import annotations

import torch

from tbd_lightning.model import CONDITIONS

# Branch name -> conditions kept.
BRANCHES: dict[str, tuple[str, ...]] = {
    "none": ("reference",),
    "a": ("reference", "audio"),
    "ag": ("reference", "audio", "global"),
    "agl": ("reference", "audio", "global", "local"),
    "label": ("reference", "audio", "global"),  # global = the label caption
}
DEFAULT_TRAIN_BRANCHES = {"none": 0.1, "a": 0.1, "ag": 0.1, "label": 0.05}  # the rest: agl


def check_probabilities(probs: dict[str, float]) -> dict[str, float]:
    unknown = set(probs) - (set(BRANCHES) - {"agl"})
    if unknown:
        raise ValueError(f"branches: unknown {sorted(unknown)}; known: {sorted(set(BRANCHES) - {'agl'})}")
    if any(p < 0 for p in probs.values()) or sum(probs.values()) > 1:
        raise ValueError(f"branch probabilities must be >= 0 and sum to at most 1 (got {probs})")
    return dict(probs)


def draw(probs: dict[str, float], n: int, generator: torch.Generator | None = None, device=None) -> list[str]:
    """One branch per sample: `probs[name]` each, `agl` for the rest."""
    u = torch.rand(n, generator=generator, device=device).tolist()
    names, edges, total = [], [], 0.0
    for name, p in probs.items():
        total += p
        names.append(name)
        edges.append(total)
    return [next((nm for nm, e in zip(names, edges, strict=True) if x < e), "agl") for x in u]


def keep_masks(branches: list[str], device=None) -> dict[str, torch.Tensor]:
    """Condition -> (B,) bool kept, for one branch name per sample."""
    return {c: torch.tensor([c in BRANCHES[b] for b in branches], device=device) for c in CONDITIONS}
