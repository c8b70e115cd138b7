"""Condition dropout follows the guidance chain, so every branch the sampler evaluates is trained often."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tbd_lightning import branches as chain


def test_branch_frequencies_follow_the_config():
    probs = {"none": 0.1, "a": 0.15, "ag": 0.05, "label": 0.1}
    drawn = Counter(chain.draw(probs, 40_000, torch.Generator().manual_seed(0)))
    for name, p in {**probs, "agl": 1 - sum(probs.values())}.items():
        assert drawn[name] / 40_000 == pytest.approx(p, abs=0.01), name


def test_every_branch_keeps_the_reference_and_nests():
    keep = chain.keep_masks(["none", "a", "ag", "agl", "label"])
    assert keep["reference"].all()  # identity is conditioning, never extrapolated
    assert keep["audio"].tolist() == [False, True, True, True, True]
    assert keep["global"].tolist() == [False, False, True, True, True]
    assert keep["local"].tolist() == [False, False, False, True, False]


def test_bad_probabilities_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        chain.check_probabilities({"audio": 0.1})
    with pytest.raises(ValueError, match="sum to at most 1"):
        chain.check_probabilities({"none": 0.6, "a": 0.6})


def test_the_module_trains_the_branches_and_the_label_caption():
    from tbd_lightning.module import TBDModule

    module = TBDModule(model_overrides={"block_channels": (16, 32), "attention_levels": (False, True)},
                       branches={"none": 0.25, "a": 0.25, "ag": 0.25, "label": 0.25})  # fmt: skip
    keep, label = module.draw_branches(4000, torch.Generator().manual_seed(1), "cpu")
    assert keep["reference"].all()
    assert keep["audio"].float().mean() == pytest.approx(0.75, abs=0.03)
    assert label.float().mean() == pytest.approx(0.25, abs=0.03)
    assert not (keep["local"] & label).any() and (keep["global"][label]).all()
    b = 2
    batch = {
        "reference": torch.zeros(b, 3, 16, 16), "audio": torch.zeros(b, 2, 80),
        "global_text": torch.ones(b, 384), "label_text": -torch.ones(b, 384), "local_text": torch.zeros(b, 8, 384),
        "local_valid": torch.zeros(b, 8, dtype=torch.bool),
    }  # fmt: skip
    cond = module.conditions(batch, None, torch.tensor([True, False]))
    assert (cond.global_text[0] == -1).all() and (cond.global_text[1] == 1).all()
