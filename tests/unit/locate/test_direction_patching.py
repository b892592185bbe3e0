import pytest
import torch
from builders import random_unit

import lensteer
from lensteer.core.vectors import ablate_direction, add_direction
from lensteer.locate.direction_patching import patch_direction

PROMPTS = ["hello there", "a longer prompt than that", "mid one"]


def test_ablation_removes_the_component_and_is_idempotent():
    u = random_unit(16, seed=0)
    h = torch.randn(2, 3, 16)
    once = ablate_direction(h, u)
    assert torch.allclose(once @ u, torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(ablate_direction(once, u), once, atol=1e-6)
    assert torch.allclose(add_direction(h, u, 0.0), h)


def _readout_direction(model, a, b, layer):
    w = model.W_U[:, a] - model.W_U[:, b]
    return lensteer.Direction(unit=w / w.norm(), layer=layer, raw_norm=1.0)


def test_adding_the_readout_direction_moves_the_metric_and_random_does_not(tiny_llama_bridge):
    metric = lensteer.locate.logit_diff_metric(10, 11)
    d = _readout_direction(tiny_llama_bridge, 10, 11, layer=1)
    res = patch_direction(tiny_llama_bridge, PROMPTS, d, metric, mode="add", scale=5.0)
    assert res.effect > 0.5 and abs(res.control_effect) < res.effect / 2
    lo, hi = res.effect_ci()
    assert lo <= res.effect <= hi and lo > 0
    zero = patch_direction(tiny_llama_bridge, PROMPTS, d, metric, mode="add", scale=0.0)
    assert torch.equal(zero.patched, zero.baseline)
    assert res.to_dict()["mode"] == "add"


def test_ablation_everywhere_hooks_every_layer(tiny_llama_bridge):
    metric = lensteer.locate.logit_diff_metric(10, 11)
    d = _readout_direction(tiny_llama_bridge, 10, 11, layer=0)
    res = patch_direction(tiny_llama_bridge, PROMPTS, d, metric, mode="ablate", layers="all")
    assert res.layers == (0, 1)
    single = patch_direction(tiny_llama_bridge, PROMPTS, d, metric, mode="ablate")
    assert single.layers == (0,) and torch.equal(single.baseline, res.baseline)


def test_direction_patching_errors(tiny_llama_bridge):
    metric = lensteer.locate.logit_diff_metric(10, 11)
    wrong = lensteer.Direction(unit=random_unit(8, seed=1), layer=0)
    with pytest.raises(lensteer.ConfigError, match="width 8, the model d_model 32"):
        patch_direction(tiny_llama_bridge, PROMPTS, wrong, metric)
    d = lensteer.Direction(unit=random_unit(32, seed=1), layer=0)
    with pytest.raises(lensteer.ConfigError, match="mode must be 'ablate' or 'add'"):
        getattr(patch_direction, "__wrapped__", patch_direction)(
            tiny_llama_bridge, PROMPTS, d, metric, mode="flip"
        )
    with pytest.raises(lensteer.HookSiteError, match="layer 5 is out of range"):
        patch_direction(tiny_llama_bridge, PROMPTS, d, metric, layers=[5])
    with pytest.raises(lensteer.DataError, match="non-empty list"):
        patch_direction(tiny_llama_bridge, [], d, metric)
